from __future__ import annotations

import pytest
import torch
from torch import nn

from mt.config import ModelConfig
from mt.decoder import upgrade_weights
from mt.model import Seq2Seq, pad_batch, source_mask
from mt.tokenizer import BOS, EOS, PAD


def tiny(cell: str = "gru", **overrides: object) -> Seq2Seq:
    torch.manual_seed(0)
    config = ModelConfig(cell=cell, emb_size=8, enc_hidden=8, dec_hidden=12, attn_size=6)  # type: ignore[arg-type]
    for key, value in overrides.items():
        setattr(config, key, value)
    return Seq2Seq.from_config(config, src_vocab=25, tgt_vocab=30).eval()


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("layers", [1, 2])
def test_logits_have_one_row_per_target_position(cell: str, layers: int) -> None:
    model = tiny(cell, enc_layers=layers, dec_layers=layers)
    src, lengths = pad_batch([[5, 6, 7, EOS], [8, EOS]])
    logits = model(src, lengths, torch.tensor([[2, 9, 10], [2, 11, PAD]]))
    assert logits.shape == (2, 3, 30)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_padding_in_the_source_changes_no_output(cell: str) -> None:
    """A sentence gets the same logits alone and beside a longer one, whatever fills the padding."""
    model = tiny(cell)
    tgt = torch.tensor([[2, 9, 10]])
    alone = model(*pad_batch([[8, 9, EOS]]), tgt)
    src, lengths = pad_batch([[8, 9, EOS], [5, 6, 7, 8, 9, 10, EOS]])
    src[0, 3:] = torch.tensor([20, 21, 22, 23])  # garbage where padding would be
    batched = model(src, lengths, tgt.expand(2, -1))
    assert torch.allclose(alone[0], batched[0], atol=1e-5)


def test_tied_output_layer_is_the_target_embedding() -> None:
    model = tiny(tie_embeddings=True)
    assert model.decoder.output.weight is model.decoder.embedding.weight
    untied = tiny(tie_embeddings=False)
    assert untied.decoder.output.weight is not untied.decoder.embedding.weight
    assert model.num_parameters() < untied.num_parameters()


def test_padding_embeddings_start_at_zero() -> None:
    model = tiny()
    assert torch.all(model.encoder.embedding.weight[PAD] == 0)
    assert torch.all(model.decoder.embedding.weight[PAD] == 0)


def test_search_steps_never_propose_padding_or_start_symbols() -> None:
    model = tiny()
    src, lengths = pad_batch([[5, 6, EOS]])
    log_probs, _, _ = model.decoder.step(torch.tensor([2]), model.encode(src, lengths))
    assert log_probs[0, PAD] == float("-inf") and log_probs[0, 2] == float("-inf")
    assert torch.isclose(log_probs.exp().sum(), torch.tensor(1.0))


def test_search_state_holds_the_projected_source_at_real_positions_and_zeros_at_padding() -> None:
    model = tiny()
    src, lengths = pad_batch([[5, 6, 7, EOS], [8, EOS], [9, 10, EOS]])
    state = model.encode(src, lengths)
    annotations, _ = model.encoder(src, lengths)
    real = source_mask(src, lengths).unsqueeze(-1)
    assert torch.allclose(state.keys, model.decoder.attention.project_keys(annotations) * real, atol=1e-6)
    assert torch.allclose(state.values, model.decoder.context_proj(annotations) * real, atol=1e-6)
    assert torch.all(state.values[~real.squeeze(-1)] == 0)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("layers", [1, 2])
def test_weights_of_the_older_layout_load_and_the_decoder_computes_what_its_layers_did(cell: str, layers: int) -> None:
    """Before 0.2 the decoder's first layer was an nn.GRUCell or nn.LSTMCell over [E y; c] and its readout
    one linear layer over [s; c; E y]. Such weights load, and a step gives what those layers computed."""
    model = tiny(cell, enc_layers=layers, dec_layers=layers)
    emb, enc, hidden, readout = 8, 16, 12, 8
    torch.manual_seed(1)
    cell_type = nn.GRUCell if cell == "gru" else nn.LSTMCell
    cells = [cell_type(emb + enc, hidden)] + [cell_type(hidden, hidden) for _ in range(1, layers)]
    old_readout = nn.Linear(hidden + enc + emb, readout)
    old = {name: w for name, w in model.state_dict().items() if name.split(".")[1] not in SPLIT_LAYERS}
    old |= {f"decoder.cells.{i}.{name}": w for i, c in enumerate(cells) for name, w in c.state_dict().items()}
    old |= {f"decoder.readout.{name}": w for name, w in old_readout.state_dict().items()}
    model.load_state_dict(upgrade_weights(old))

    src, lengths = pad_batch([[5, 6, 7, EOS], [8, EOS]])
    prev = torch.tensor([9, 10])
    log_probs, weights, state = model.decoder.step(prev, model.encode(src, lengths))

    annotations, summary = model.encoder(src, lengths)
    decoder = model.decoder
    hiddens = torch.tanh(decoder.bridge(summary)).view(2, layers, hidden).unbind(1)
    keys, mask = decoder.attention.project_keys(annotations), src != PAD
    context, expected_weights = decoder.attention(hiddens[-1], keys, annotations, mask)
    embedded = decoder.embedding(prev)
    layer_input, new_hiddens = torch.cat([embedded, context], dim=-1), []
    for c, h in zip(cells, hiddens, strict=True):
        layer_input = c(layer_input, (h, h))[0] if cell == "lstm" else c(layer_input, h)  # an LSTM starts with c = h
        new_hiddens.append(layer_input)
    logits = decoder.output(torch.tanh(old_readout(torch.cat([layer_input, context, embedded], dim=-1))))
    logits[:, [PAD, BOS]] = float("-inf")
    assert torch.allclose(weights, expected_weights)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(state.hidden, new_hiddens, strict=True))
    assert torch.allclose(log_probs, torch.log_softmax(logits, dim=-1), atol=1e-5)


SPLIT_LAYERS = {"embedded_proj", "context_proj", "hidden_proj", "readout_proj", "upper_cells"}


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("layers", [1, 2])  # one layer: the query and the recurrence in one product
def test_teacher_forcing_gives_the_log_probabilities_of_search_steps(cell: str, layers: int) -> None:
    model = tiny(cell, dec_layers=layers)
    src, lengths = pad_batch([[5, 6, 7, EOS], [8, EOS]])
    tgt_in = torch.tensor([[2, 9, 10], [2, 11, 12]])
    logits = model(src, lengths, tgt_in)
    logits[:, :, [PAD, BOS]] = float("-inf")  # search never proposes <pad> or <s>
    forced = torch.log_softmax(logits, dim=-1)
    state = model.encode(src, lengths)
    for t in range(3):
        log_probs, _, state = model.decoder.step(tgt_in[:, t], state)
        assert torch.allclose(log_probs, forced[:, t], atol=1e-5)


def test_a_tabulated_decoder_steps_as_its_layers_do_and_trains_on_the_layers() -> None:
    model, untabulated = tiny(), tiny()
    model.decoder.tabulate_embedded_terms()
    src, lengths = pad_batch([[5, 6, 7, EOS], [8, EOS]])
    with torch.inference_mode():  # as search runs: with gradients on, the layers compute
        state, expected_state = model.encode(src, lengths), untabulated.encode(src, lengths)
        for prev in ([BOS, BOS], [9, 29], [EOS, 11]):
            log_probs, _, state = model.decoder.step(torch.tensor(prev), state)
            expected, _, expected_state = untabulated.decoder.step(torch.tensor(prev), expected_state)
            assert torch.allclose(log_probs, expected, atol=1e-6)
    assert "decoder.embedded_table" not in model.state_dict()  # derived from the weights: never saved

    table = model.decoder.embedded_table
    assert table is not None
    model.train()  # the table would not follow the weights: training computes with the layers
    with torch.no_grad():
        model.decoder.embedded_proj.bias.add_(1.0)
    assert not torch.allclose(model.decoder.embedded_terms(torch.tensor([9])), table[9])


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("layers", [1, 2])
def test_training_unrolls_the_encoder_rnn_into_its_annotations_and_gradients(
    cell: str, layers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = tiny(cell, enc_layers=layers, dropout=0.0, emb_dropout=0.0).train().encoder
    # unsorted lengths, two equal, and a sentence of </s> alone
    src, lengths = pad_batch([[5, 6, EOS], [7, 8, 9, 10, 11, EOS], [EOS], [13, 14, 15, 16, EOS], [17, 18, EOS]])
    assert encoder._unrolls(src.device)
    torch.manual_seed(1)
    annotations_grad, summary_grad = torch.randn(5, 6, 16), torch.randn(5, 16)

    def forward_backward() -> list[torch.Tensor]:
        annotations, summary = encoder(src, lengths)
        loss = (annotations * annotations_grad).sum() + (summary * summary_grad).sum()
        return [annotations, summary, *torch.autograd.grad(loss, list(encoder.parameters()))]

    unrolled = forward_backward()
    monkeypatch.setattr(encoder, "_unrolls", lambda device: False)  # nn.GRU / nn.LSTM itself
    for got, expected in zip(unrolled, forward_backward(), strict=True):
        assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("training", [True, False])
def test_the_encoder_rnn_runs_in_fp32_under_bf16_autocast(training: bool) -> None:
    encoder = tiny(dropout=0.0, emb_dropout=0.0).train(training).encoder
    src, lengths = pad_batch([[5, 6, EOS], [7, 8, 9, 10, 11, EOS], [EOS]])
    with torch.no_grad():
        fp32 = encoder(src, lengths)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = encoder(src, lengths)
    for got, expected in zip(autocast, fp32, strict=True):
        assert got.dtype == torch.float32
        assert torch.equal(got, expected)  # not rounded to bf16 at any step
