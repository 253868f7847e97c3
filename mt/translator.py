"""`Translator`: the one inference path. The CLI, the evaluation, validation during training and the
service all translate through it.

Data flows one way: text -> source tokenizer -> encoder -> search over decoder steps -> target
tokenizer -> text. Sentences are decoded in batches of similar length and returned in input order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from mt.checkpoint import load_model_dir
from mt.config import DecodeConfig
from mt.cpu import prepare_for_cpu, quantize_int8, require_bf16
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


def _max_lengths(lengths: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """floor(a x length + b) per sentence, as written in decimal: 0.21 x 300 is 63, though 0.21 in binary
    is a little less (float64, and 1e-9 of slack for what it still rounds down)."""
    return (lengths.double() * a + b + 1e-9).floor().long()


def resolve_device(name: str, *, int8: bool = False) -> torch.device:
    """'auto' -> CUDA when present, else CPU (the CPU for `int8`, which runs nowhere else); else 'cpu',
    'cuda' or 'cuda:N' for a GPU this machine has."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() and not int8 else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name} was asked for, but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name} was asked for, but this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def require_native_bf16(device: torch.device) -> None:
    """Refuse bf16 inference where `device` would only emulate it: a CPU without AMX or AVX512-BF16, a
    GPU older than Ampere (compute capability 8.0)."""
    if device.type == "cpu":
        require_bf16()
    elif device.type != "cuda":
        raise ValueError(f"bf16 inference runs on the CPU or CUDA, not on {device}: leave out bf16")
    elif (capability := torch.cuda.get_device_capability(device)) < (8, 0):
        raise ValueError(
            f"bf16 inference needs a GPU that multiplies bfloat16 natively (compute capability 8.0, Ampere, or "
            f"newer); {torch.cuda.get_device_name(device)} is {capability[0]}.{capability[1]}: leave out bf16"
        )


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
        num_parameters: int | None = None,
        autocast_bf16: bool = False,
    ) -> None:
        self.model = model
        self.autocast_bf16 = autocast_bf16  # search under bf16 autocast (GPUs; a CPU's bf16 is in its packed layers)
        # as trained: packed and quantized layers hold their weights outside model.parameters()
        self.num_parameters = model.num_parameters() if num_parameters is None else num_parameters
        self.source_lang, self.target_lang = source_lang, target_lang
        self.src_tokenizer = src_tokenizer
        self.tgt_tokenizer = tgt_tokenizer
        self.decode = decode or DecodeConfig()  # the model's defaults; each call may override
        self.device = next(model.parameters()).device

    @classmethod
    def from_dir(cls, path: str | Path, *, device: str = "auto", int8: bool = False, bf16: bool = False) -> Translator:
        """The model directory at `path`, on `device`. `int8` quantizes it for faster CPU inference; `bf16`
        multiplies in bfloat16: under autocast on a GPU, in the decoder step's packed layers on a CPU with
        AMX or AVX512-BF16. The encoder's RNN stays fp32."""
        resolved = resolve_device(device, int8=int8)
        if int8 and resolved.type != "cpu":
            raise ValueError(f"int8 inference runs on the CPU, not on {resolved}: leave out int8 or use device cpu")
        if int8 and bf16:
            raise ValueError("int8 and bf16 are two precisions for inference: choose one")
        if bf16:
            require_native_bf16(resolved)  # before loading anything
        loaded = load_model_dir(path, device=resolved)
        num_parameters = loaded.model.num_parameters()
        loaded.model.decoder.tabulate_embedded_terms()  # this model only translates: its weights stay as loaded
        if int8:
            model = quantize_int8(loaded.model)
        elif resolved.type == "cpu":
            model = prepare_for_cpu(loaded.model, bf16=bf16)
        else:
            model = loaded.model
        return cls(
            model=model,
            src_tokenizer=loaded.src_tokenizer,
            tgt_tokenizer=loaded.tgt_tokenizer,
            decode=loaded.config.decode,
            source_lang=loaded.config.data.src,
            target_lang=loaded.config.data.tgt,
            num_parameters=num_parameters,
            autocast_bf16=bf16 and resolved.type != "cpu",
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
        with torch.inference_mode(), torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast_bf16):
            src, lengths = pad_batch(sources, device=self.device)
            state = self.model.encode(src, lengths)  # the encoder's RNN stays fp32 (Encoder.forward)
            max_lengths = _max_lengths(lengths, decode.max_len_a, decode.max_len_b)
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
