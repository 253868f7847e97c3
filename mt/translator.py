"""`Translator`: the one inference path. The CLI, the evaluation, validation during training and the
service all translate through it.

Data flows one way: text -> source tokenizer -> encoder -> search over decoder steps -> target
tokenizer -> text. Sentences are decoded in batches of similar length and returned in input order.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mt.checkpoint import load_model_dir
from mt.config import DecodeConfig
from mt.model import Seq2Seq, pad_batch
from mt.search import Hypothesis, beam_search, greedy_search
from mt.tokenizer import BOS, EOS, Tokenizer


@dataclass
class Candidate:
    text: str
    score: float  # length-normalized log-probability
    pieces: list[str]  # target pieces
    attention: torch.Tensor  # (len(pieces), len(source_pieces)): where each target piece looked


@dataclass
class Translation:
    source_pieces: list[str]  # the pieces the encoder read, ending in </s>
    candidates: list[Candidate]  # n-best, best first

    @property
    def text(self) -> str:
        return self.candidates[0].text


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; anything else as torch understands it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name} was asked for, but CUDA is not available on this machine")
    return device


def quantize_int8(model: Seq2Seq) -> Seq2Seq:
    """Dynamic int8 quantization of the linear layers and RNNs for CPU inference: weights are stored
    in int8, activations quantized on the fly per batch. Embeddings and attention scores stay fp32.

    Linear layers get a scale per output row, as they are in Marian's and CTranslate2's int8. The
    attention's energy layer v stays fp32: it maps each (hypothesis, source position) to one number,
    and in int8 it quantized a (rows, src_len, attn_size) activation for a matrix-vector product at
    every step, 12% of int8 beam search (Multi30k test in random batches of 16, 2 cores). On Multi30k
    validation (models/de-en, beam 5) this keeps 91.2% of translations identical to fp32's, against
    90.3% with one scale per layer and v in int8.
    """
    spec: dict[type[nn.Module] | str, object] = {
        nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig,
        "decoder.attention.energy_layer": None,
    }
    for recurrent in (nn.GRU, nn.LSTM, nn.GRUCell, nn.LSTMCell):
        spec[recurrent] = torch.ao.quantization.default_dynamic_qconfig
    with warnings.catch_warnings():  # torch.ao's eager-mode API is deprecated in favour of torchao, which
        warnings.simplefilter("ignore")  # has no int8 GRU/LSTM cells; it still works in the torch we pin
        quantized = torch.ao.quantization.quantize_dynamic(model.float().eval(), spec, dtype=torch.qint8)
    assert isinstance(quantized, Seq2Seq)
    return quantized


def transpose_weights(model: Seq2Seq) -> Seq2Seq:
    """Lays out in memory each weight W that multiplies from the right (x W^T) as its transpose, for
    inference on the CPU: the same values and results, a faster product at the few rows of a search step.

    PyTorch computes x W^T from W as stored, row-major (out, in): the "NT" case of the CPU's sgemm,
    which ran 1.2-2.6x slower at 5-50 rows than the "NN" case of a W^T stored row-major (2 threads:
    the output layer, 6000 x 256, 254 against 128 us at 5 rows; a GRU's 1536 x 512 recurrence 450
    against 170 us at 16). The encoder's GRU over 16 sentences of 20 pieces took 16.8 ms, and 9.5 ms
    after. A tied output layer stays tied: the target embedding's lookups then read its rows strided,
    18 us more per step at 80 rows, less than the output layer gains.
    """
    with torch.no_grad():
        for module in model.modules():
            if type(module) is nn.Linear:
                weights = [module.weight]
            elif type(module) in (nn.GRU, nn.LSTM, nn.GRUCell, nn.LSTMCell):
                weights = [w for name, w in module.named_parameters(recurse=False) if name.startswith("weight_")]
            else:
                continue
            for weight in weights:
                weight.data = weight.data.t().contiguous().t()
    return model


class Translator:
    def __init__(
        self,
        *,
        model: Seq2Seq,
        src_tokenizer: Tokenizer,
        tgt_tokenizer: Tokenizer,
        decode: DecodeConfig | None = None,
        source_lang: str = "",
        target_lang: str = "",
    ) -> None:
        self.model = model
        self.source_lang, self.target_lang = source_lang, target_lang
        self.src_tokenizer = src_tokenizer
        self.tgt_tokenizer = tgt_tokenizer
        self.decode = decode or DecodeConfig()  # the model's defaults; each call may override
        self.device = next(model.parameters()).device

    @classmethod
    def from_dir(cls, path: str | Path, *, device: str = "auto", int8: bool = False) -> Translator:
        """The model directory at `path`, on `device`; `int8` quantizes it for faster CPU inference."""
        resolved = resolve_device(device)
        if int8 and resolved.type != "cpu":
            raise ValueError(f"int8 inference runs on the CPU, not on {resolved}: leave out int8 or use device cpu")
        loaded = load_model_dir(path, device=resolved)
        if int8:
            model = quantize_int8(loaded.model)
        elif resolved.type == "cpu":
            model = transpose_weights(loaded.model)
        else:
            model = loaded.model
        return cls(
            model=model,
            src_tokenizer=loaded.src_tokenizer,
            tgt_tokenizer=loaded.tgt_tokenizer,
            decode=loaded.config.decode,
            source_lang=loaded.config.data.src,
            target_lang=loaded.config.data.tgt,
        )

    def translate(
        self, texts: list[str], decode: DecodeConfig | None = None, *, deadline: float | None = None
    ) -> list[Translation]:
        """Translate `texts`; the result at index i is the translation of texts[i].

        deadline: a `time.monotonic()` time; past it, SearchTimeout is raised and nothing is returned.
        """
        return self.translate_encoded(self.encode(texts), decode, deadline=deadline)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """What the encoder reads of each text: its source piece ids, ending in </s>."""
        return [ids + [EOS] for ids in self.src_tokenizer.encode([t.strip() for t in texts])]

    def translate_encoded(
        self, sources: list[list[int]], decode: DecodeConfig | None = None, *, deadline: float | None = None
    ) -> list[Translation]:
        """`translate` for texts already encoded by `encode`."""
        decode = decode or self.decode
        decode.validate()
        results: list[Translation | None] = [None] * len(sources)
        order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
        was_training = self.model.training  # validation during training translates with this model
        if was_training:  # eval() and train() walk every module: not on each request of a server
            self.model.eval()
        try:
            for start in range(0, len(order), decode.batch_size):
                chunk = order[start : start + decode.batch_size]
                found = self._search([sources[i] for i in chunk], decode, deadline)
                for index, hypotheses in zip(chunk, found, strict=True):
                    results[index] = self._translation(sources[index], hypotheses)
        finally:
            if was_training:
                self.model.train()
        return [r for r in results if r is not None]

    def _search(self, sources: list[list[int]], decode: DecodeConfig, deadline: float | None) -> list[list[Hypothesis]]:
        with torch.inference_mode():
            src, lengths = pad_batch(sources, device=self.device)
            state = self.model.encode(src, lengths)
            max_lengths = (lengths.float() * decode.max_len_a + decode.max_len_b).floor().long()
            if decode.beam_size == 1:
                return greedy_search(
                    self.model.decoder.step,
                    state,
                    max_lengths=max_lengths,
                    bos=BOS,
                    eos=EOS,
                    length_penalty_alpha=decode.length_penalty,
                    deadline=deadline,
                )
            return beam_search(
                self.model.decoder.step,
                state,
                max_lengths=max_lengths,
                beam_size=decode.beam_size,
                bos=BOS,
                eos=EOS,
                length_penalty_alpha=decode.length_penalty,
                n_best=decode.n_best,
                deadline=deadline,
            )

    def _translation(self, source: list[int], hypotheses: list[Hypothesis]) -> Translation:
        source_pieces = self.src_tokenizer.pieces(source[:-1]) + ["</s>"]
        empty = Candidate(text="", score=0.0, pieces=[], attention=torch.zeros(0, len(source)))
        if len(source) == 1 or not hypotheses:  # nothing but </s> in, or search found nothing finite
            return Translation(source_pieces, [empty])
        candidates = [
            Candidate(
                text=self.tgt_tokenizer.decode(h.tokens),
                score=h.score if math.isfinite(h.score) else float("-inf"),
                pieces=self.tgt_tokenizer.pieces(h.tokens),
                attention=torch.nan_to_num(h.attention[:, : len(source)].float().cpu()),
            )
            for h in hypotheses
        ]
        return Translation(source_pieces, candidates)
