from __future__ import annotations

import pytest
import torch

from mt.config import ModelConfig
from mt.model import Seq2Seq, pad_batch
from mt.tokenizer import EOS, PAD


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
