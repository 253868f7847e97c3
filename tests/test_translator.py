from __future__ import annotations

from pathlib import Path

import sacrebleu
import torch
from torch import nn

from mt.config import DecodeConfig
from mt.translator import Translator

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
