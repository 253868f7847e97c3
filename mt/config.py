"""Typed configuration for every component, with defaults that train a good de->en Multi30k model.

A run's configuration is one `Config`: it is read from a YAML file, overridden field by field on the
command line (`--train.lr 0.001`), and stored as `config.json` in every model directory, so that a
model directory always says how it was built.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

_LANGUAGE_CODE = re.compile(r"[A-Za-z0-9_-]{1,32}")
# far past any recurrent model worth training, and below what only overflows or takes minutes to build
MAX_LAYERS = 64
MAX_WIDTH = 65_536

Cell = Literal["gru", "lstm"]


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message says which key and why."""


@dataclass
class DataConfig:
    path: str = "../shared/data/multi30k"  # hub id, folder of {split}.jsonl, or folder of {split}.{lang}
    src: str = "de"
    tgt: str = "en"
    max_len: int = 100  # drop training pairs longer than this many words (either side)
    max_ratio: float = 3.0  # drop training pairs whose word-length ratio exceeds this


@dataclass
class VocabConfig:
    src_size: int = 6000  # SentencePiece pieces; smaller is better on small corpora
    tgt_size: int = 6000
    joint: bool = False  # one vocabulary for both sides (required to tie source and target embeddings)
    model_type: Literal["unigram", "bpe"] = "unigram"  # unigram allows subword sampling
    character_coverage: float = 1.0  # all characters of this small corpus are kept
    sampling_alpha: float = 0.0  # > 0 enables subword regularization in training (Kudo 2018); 0.1-0.5 is typical


@dataclass
class ModelConfig:
    cell: Cell = "gru"  # "lstm" costs ~1/3 more compute per step
    emb_size: int = 256
    enc_hidden: int = 512  # per direction
    enc_layers: int = 1
    dec_hidden: int = 512
    dec_layers: int = 1
    attn_size: int = 512  # width of the additive attention's hidden layer
    dropout: float = 0.3  # on RNN outputs and the output layer
    emb_dropout: float = 0.3  # on input embeddings
    tie_embeddings: bool = True  # output projection shares the target embedding (readout size = emb_size)


@dataclass
class TrainConfig:
    batch_tokens: int = 2500  # target tokens per update (across all ranks under torchrun); similar lengths together
    lr: float = 0.001
    max_epochs: int = 60
    max_minutes: float = 0.0  # stop after this much training time (0 = no limit)
    clip_norm: float = 1.0
    label_smoothing: float = 0.1
    weight_decay: float = 0.0
    lr_decay: float = 0.5  # multiply the learning rate by this when validation BLEU plateaus
    lr_patience: int = 2  # evaluations without improvement before the learning rate decays
    min_lr: float = 1e-5  # training stops once the learning rate decays below this
    patience: int = 8  # early stopping: evaluations without a new best BLEU
    eval_every: int = 0  # validate every N steps (0 = once per epoch)
    save_every_minutes: float = 5.0  # write the `last` checkpoint at least this often
    seed: int = 1234
    device: str = "auto"  # "auto" picks CUDA when present, else CPU
    threads: int = 0  # CPU threads for torch (0 = torch's default)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: matrix products in bfloat16 under autocast (weights,
    # optimizer, the encoder's RNN and the loss stay fp32); on large products about 2x the fp32 rate with
    # AVX512-BF16 (AMD EPYC) and 6-7x with AMX (Intel Xeon)
    eval_max_sentences: int = 0  # validate BLEU on the first N validation sentences (0 = all)


@dataclass
class DecodeConfig:
    beam_size: int = 5  # 1 is greedy search
    length_penalty: float = 1.0  # GNMT alpha; 0 ranks hypotheses by raw log-probability
    max_len_a: float = 1.5  # output is at most a * source_pieces + b pieces, the source counted with its </s>
    max_len_b: int = 10
    n_best: int = 1  # hypotheses returned per sentence (<= beam_size)
    batch_size: int = 64  # sentences decoded together

    def validate(self) -> None:
        # a beam of 100,000 ran for minutes before any error; beams past 10 rarely gain anything
        _require(1 <= self.beam_size <= 100, f"decode.beam_size must be between 1 and 100, got {self.beam_size}")
        _require(
            1 <= self.n_best <= self.beam_size,
            f"decode.n_best must be between 1 and decode.beam_size ({self.beam_size}), got {self.n_best}",
        )
        _require(self.batch_size >= 1, f"decode.batch_size must be at least 1, got {self.batch_size}")
        _require(
            0 <= self.length_penalty <= 10, f"decode.length_penalty must be between 0 and 10, got {self.length_penalty}"
        )
        _require(
            0 <= self.max_len_a <= 100 and 0 <= self.max_len_b <= 10_000 and self.max_len_a + self.max_len_b > 0,
            "decode.max_len_a must be between 0 and 100 and decode.max_len_b between 0 and 10000, not both 0; "
            f"got {self.max_len_a} and {self.max_len_b}",
        )


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def validate(self, *, training: bool = True) -> None:
        """Refuse values no run can use, naming the key; called before training and translating. A model
        loaded to translate (`training=False`) is held only to what translating reads: its model, vocabulary
        sizes and decoding settings, not the training settings it was trained with under older rules."""
        for section in ("vocab", "model", "train") if training else ("vocab", "model"):
            for key, kind in section_fields(section).items():
                value = getattr(getattr(self, section), key)
                if kind is int and key in ("eval_every", "threads", "eval_max_sentences"):  # 0: off, or automatic
                    _require(value >= 0, f"{section}.{key} must be at least 0, got {value}")
                elif kind is int and key == "seed":  # what SentencePiece and NumPy take
                    _require(0 <= value < 2**32, f"{section}.seed must be between 0 and 2**32 - 1, got {value}")
                elif kind is int:
                    _require(value >= 1, f"{section}.{key} must be at least 1, got {value}")
        for key in ("src", "tgt"):  # file names and the service's language pairs are made of them
            code = getattr(self.data, key)
            _require(
                isinstance(code, str) and _LANGUAGE_CODE.fullmatch(code) is not None,
                f"data.{key} must be a language code of letters, digits, '-' and '_' (at most 32), got {code!r}",
            )
        for key in ("enc_layers", "dec_layers"):
            value = getattr(self.model, key)
            _require(value <= MAX_LAYERS, f"model.{key} must be at most {MAX_LAYERS}, got {value}")
        for key in ("emb_size", "enc_hidden", "dec_hidden", "attn_size"):
            value = getattr(self.model, key)
            _require(value <= MAX_WIDTH, f"model.{key} must be at most {MAX_WIDTH:,}, got {value}")
        for key in ("dropout", "emb_dropout"):
            value = getattr(self.model, key)
            _require(0 <= value < 1, f"model.{key} must be in [0, 1), got {value}")
        self.decode.validate()
        if not training:
            return
        train = self.train
        _require(0 <= train.label_smoothing < 1, "train.label_smoothing must be in [0, 1)")
        # NaN fails every comparison, so these also refuse it
        for key, value in (
            ("lr", train.lr),
            ("clip_norm", train.clip_norm),
            ("save_every_minutes", train.save_every_minutes),
        ):
            _require(0 < value < math.inf, f"train.{key} must be positive and finite, got {value}")
        for key, value in (
            ("weight_decay", train.weight_decay),
            ("min_lr", train.min_lr),
            ("max_minutes", train.max_minutes),
        ):
            _require(0 <= value < math.inf, f"train.{key} must be >= 0 and finite, got {value}")
        _require(
            train.min_lr <= train.lr,
            f"train.lr ({train.lr:g}) is below train.min_lr ({train.min_lr:g}), where training stops: "
            "lower train.min_lr",
        )
        _require(0 < train.lr_decay < 1, f"train.lr_decay must be in (0, 1), got {train.lr_decay}")
        _require(self.data.max_len >= 1, f"data.max_len must be at least 1, got {self.data.max_len}")
        _require(self.data.max_ratio >= 1, f"data.max_ratio must be at least 1, got {self.data.max_ratio}")
        alpha = self.vocab.sampling_alpha
        _require(0 <= alpha < math.inf, f"vocab.sampling_alpha must be >= 0 and finite, got {alpha}")
        coverage = self.vocab.character_coverage
        _require(0 < coverage <= 1, f"vocab.character_coverage must be in (0, 1], got {coverage}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        unknown = set(raw) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config section(s) {sorted(unknown)}; known: {section_names()}")
        config = cls()
        for name, values in raw.items():
            if not isinstance(values, dict):
                raise ConfigError(f"config section '{name}' must be a mapping, got {type(values).__name__}")
            for key, value in values.items():
                set_field(config, f"{name}.{key}", value)
        return config

    @classmethod
    def load(cls, path: str | Path) -> Config:
        """Read a YAML (or JSON, a subset of YAML) config file; missing keys keep their defaults."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not UTF-8 text") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
        try:
            return cls.from_dict(raw)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from error

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def section_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def section_fields(section: str) -> dict[str, Any]:
    """Field name -> resolved type for one section, e.g. section_fields("train")["lr"] is float."""
    section_type = typing.get_type_hints(Config)[section]
    return typing.get_type_hints(section_type)


def get_field(config: Config, dotted: str) -> Any:
    """The value of `section.key`."""
    section, _, key = dotted.partition(".")
    return getattr(getattr(config, section), key)


def set_field(config: Config, dotted: str, value: Any) -> None:
    """Set `section.key` to `value`, converting strings (from the command line) to the field's type."""
    section, _, key = dotted.partition(".")
    if section not in section_names():
        raise ConfigError(f"unknown config section '{section}' in '{dotted}'; known: {section_names()}")
    fields = section_fields(section)
    if key not in fields:
        raise ConfigError(f"unknown config key '{dotted}'; {section} has {sorted(fields)}")
    setattr(getattr(config, section), key, coerce(value, fields[key], dotted))


def coerce(value: Any, kind: Any, name: str) -> Any:
    """Convert `value` to `kind` (bool, int, float, str or a Literal of strings) or say why not."""
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")
        return value
    if isinstance(kind, types.UnionType):
        raise ConfigError(f"{name}: union types are not supported in configs")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "1", "yes", "false", "0", "no"}:
            return value.lower() in {"true", "1", "yes"}
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if kind in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        try:
            number = kind(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: int() of an infinite float
            raise ConfigError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return number
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{name}: unsupported config type {kind!r}")
