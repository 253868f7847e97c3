from __future__ import annotations

from pathlib import Path

import pytest
import sacrebleu
import torch
from torch import nn

from mt.checkpoint import load_model_dir
from mt.config import DecodeConfig
from mt.cpu import PER_SOURCE_POSITION, PackedLinear, bf16_supported
from mt.translator import Translator, _max_lengths, resolve_device

from .conftest import reverse_task


def test_int8_translator_quantizes_every_linear_layer_and_rnn_and_keeps_its_quality(models_dir: Path) -> None:
    fp32 = Translator.from_dir(models_dir / "src-tgt", device="cpu")
    int8 = Translator.from_dir(models_dir / "src-tgt", device="cpu", int8=True)
    float_layers = [
        name
        for name, m in int8.model.named_modules()
        if type(m) in (nn.Linear, nn.GRU, nn.GRUCell, nn.LSTM, nn.LSTMCell)
    ]
    assert float_layers == ["decoder.attention.energy_layer"]  # a matrix-vector product: faster in fp32
    assert type(int8.model.decoder.readout_proj).__module__.startswith("torch.ao.nn.quantized.dynamic")
    output = int8.model.decoder.output
    assert isinstance(output, torch.ao.nn.quantized.dynamic.Linear)
    assert output.weight().qscheme() == torch.per_channel_affine  # a scale per output row

    rows = reverse_task(100, seed=21)
    sources, references = [row["src"] for row in rows], [row["tgt"] for row in rows]
    decode = DecodeConfig(beam_size=5)
    bleu = {
        name: sacrebleu.corpus_bleu([t.text for t in translator.translate(sources, decode)], [references]).score
        for name, translator in (("fp32", fp32), ("int8", int8))
    }
    assert bleu["fp32"] > 60  # the tiny model has learned the task: the comparison means something
    assert bleu["int8"] > bleu["fp32"] - 5


def test_a_cpu_translator_packs_its_linear_layers_and_translates_as_the_model_as_saved(models_dir: Path) -> None:
    translator = Translator.from_dir(models_dir / "src-tgt", device="cpu")
    loaded = load_model_dir(models_dir / "src-tgt", device=torch.device("cpu"))
    as_saved = Translator(model=loaded.model, src_tokenizer=loaded.src_tokenizer, tgt_tokenizer=loaded.tgt_tokenizer)
    model = translator.model
    packed = [name for name, m in model.named_modules() if type(m) is PackedLinear]
    assert {"decoder.output", "decoder.hidden_proj", "decoder.attention.query_layer"} <= set(packed)
    assert sorted(name for name, m in model.named_modules() if type(m) is nn.Linear) == sorted(PER_SOURCE_POSITION)
    for name, weight in [*model.encoder.rnn.named_parameters(), *model.decoder.attention.named_parameters()]:
        if name.rsplit(".", 1)[-1].startswith("weight"):
            assert weight.t().is_contiguous(), name
    assert translator.num_parameters == as_saved.num_parameters == as_saved.model.num_parameters()

    sources = [row["src"] for row in reverse_task(20, seed=5)]
    for beam_size in (1, 4):
        ours = translator.translate(sources, DecodeConfig(beam_size=beam_size, n_best=2 if beam_size > 1 else 1))
        theirs = as_saved.translate(sources, DecodeConfig(beam_size=beam_size, n_best=2 if beam_size > 1 else 1))
        assert [[c.text for c in t.candidates] for t in ours] == [[c.text for c in t.candidates] for t in theirs]
        for a, b in zip(ours, theirs, strict=True):
            assert a.candidates[0].score == pytest.approx(b.candidates[0].score, abs=1e-4)
            assert torch.allclose(a.candidates[0].attention, b.candidates[0].attention, atol=1e-5)


def test_a_packed_linear_layer_computes_what_the_linear_layer_does() -> None:
    torch.manual_seed(0)
    for bias in (True, False):
        linear = nn.Linear(24, 40, bias=bias)
        packed = PackedLinear(linear)
        for x in (torch.randn(1, 24), torch.randn(7, 24), torch.randn(3, 5, 24)):
            assert torch.allclose(packed(x), linear(x), atol=1e-5)
    assert "in_features=24, out_features=40, bias=False, dtype=torch.float32" in repr(packed)


needs_bf16 = pytest.mark.skipif(not bf16_supported(), reason="this CPU has no native bfloat16 (AMX or AVX512-BF16)")


@needs_bf16
def test_a_bf16_packed_linear_layer_multiplies_in_bfloat16_and_answers_in_fp32() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 40)
    packed = PackedLinear(linear, torch.bfloat16)
    x = torch.randn(7, 64)
    out = packed(x)
    assert out.dtype == torch.float32
    rounded = nn.functional.linear(
        x.bfloat16().float(), linear.weight.bfloat16().float(), linear.bias.bfloat16().float()
    )
    assert torch.allclose(out, rounded, atol=0.05)  # bf16 inputs and weights; the result rounded to bf16 once
    assert not torch.allclose(out, linear(x), atol=1e-5)  # it did not multiply in fp32
    assert "dtype=torch.bfloat16" in repr(packed)


@needs_bf16
def test_bf16_translator_packs_its_search_layers_in_bfloat16_and_keeps_its_quality(models_dir: Path) -> None:
    fp32 = Translator.from_dir(models_dir / "src-tgt", device="cpu")
    bf16 = Translator.from_dir(models_dir / "src-tgt", device="cpu", bf16=True)
    packed = {name: m.dtype for name, m in bf16.model.named_modules() if type(m) is PackedLinear}
    assert packed and set(packed.values()) == {torch.bfloat16}
    assert bf16.model.encoder.rnn.weight_hh_l0.dtype == torch.float32  # the encoder stays fp32
    assert not bf16.autocast_bf16  # on the CPU, bf16 is in the packed layers, not autocast

    rows = reverse_task(100, seed=21)
    sources, references = [row["src"] for row in rows], [row["tgt"] for row in rows]
    decode = DecodeConfig(beam_size=5)
    hypotheses = {
        name: [t.text for t in translator.translate(sources, decode)]
        for name, translator in (("fp32", fp32), ("bf16", bf16))
    }
    bleu = {name: sacrebleu.corpus_bleu(texts, [references]).score for name, texts in hypotheses.items()}
    assert bleu["fp32"] > 60
    assert bleu["bf16"] > bleu["fp32"] - 5


def test_search_under_bf16_autocast_as_on_a_gpu_translates_like_fp32(models_dir: Path) -> None:
    """The path `bf16` takes on CUDA, run here under the CPU's autocast: the same search code."""
    loaded = load_model_dir(models_dir / "src-tgt", device=torch.device("cpu"))
    fp32, autocast = (
        Translator(
            model=loaded.model, src_tokenizer=loaded.src_tokenizer, tgt_tokenizer=loaded.tgt_tokenizer, autocast_bf16=on
        )
        for on in (False, True)
    )
    rows = reverse_task(50, seed=8)
    sources, references = [row["src"] for row in rows], [row["tgt"] for row in rows]
    for beam_size in (1, 4):
        decode = DecodeConfig(beam_size=beam_size, n_best=2 if beam_size > 1 else 1)
        theirs, ours = fp32.translate(sources, decode), autocast.translate(sources, decode)
        assert all(len(t.candidates) == decode.n_best for t in ours)
        scores = [(a.candidates[0].score, b.candidates[0].score) for a, b in zip(theirs, ours, strict=True)]
        assert any(abs(a - b) > 1e-6 for a, b in scores)  # it did multiply in bfloat16
        bleu = [sacrebleu.corpus_bleu([t.text for t in found], [references]).score for found in (theirs, ours)]
        assert bleu[0] > 60 and bleu[1] > bleu[0] - 5


def test_int8_and_bf16_together_are_refused(models_dir: Path) -> None:
    with pytest.raises(ValueError, match="choose one"):
        Translator.from_dir(models_dir / "src-tgt", device="cpu", int8=True, bf16=True)


def test_int8_on_the_automatic_device_is_the_cpu_on_a_gpu_machine_too(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """int8 runs on the CPU only: 'auto' (the service's default) must not pick the GPU and refuse to start."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert (resolve_device("auto"), resolve_device("auto", int8=True)) == (torch.device("cuda"), torch.device("cpu"))
    assert Translator.from_dir(models_dir / "src-tgt", device="auto", int8=True).device == torch.device("cpu")


def test_bf16_is_refused_on_a_cpu_without_native_bfloat16(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mt.cpu.bf16_supported", lambda: False)
    with pytest.raises(ValueError, match="needs AMX or AVX512-BF16"):
        Translator.from_dir(models_dir / "src-tgt", device="cpu", bf16=True)


def test_bf16_is_refused_on_a_gpu_without_native_bfloat16(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: the translator is made to see a Volta (7.0), which would emulate bf16."""
    monkeypatch.setattr("mt.translator.resolve_device", lambda name, **_: torch.device("cuda"))
    monkeypatch.setattr("torch.cuda.get_device_capability", lambda device: (7, 0))
    monkeypatch.setattr("torch.cuda.get_device_name", lambda device: "Tesla V100")
    with pytest.raises(ValueError, match=r"compute capability 8.0.*Tesla V100 is 7.0"):
        Translator.from_dir(models_dir / "src-tgt", device="cuda", bf16=True)


@pytest.mark.parametrize(
    ("length", "a", "b", "bound"),
    [(300, 0.21, 0, 63), (30, 2.1, 0, 63), (50, 1.06, 0, 53), (90, 1.3, 0, 117), (100, 0.29, 0, 29), (7, 1.5, 10, 20)],
)
def test_the_output_bound_is_a_times_length_plus_b_as_written(length: int, a: float, b: float, bound: int) -> None:
    """0.21 is a little less than 0.21 in binary: in float32, 0.21 x 300 came out 62."""
    assert _max_lengths(torch.tensor([length]), a, b).tolist() == [bound]
