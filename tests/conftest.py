"""Shared fixtures: tiny synthetic corpora and tiny models that the tests make themselves."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from mt.checkpoint import export_model_dir
from mt.config import Config
from mt.train import Trainer

ROOT = Path(__file__).parents[1]  # the repository, where test subprocesses run `python -m mt`
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # the environment of such subprocesses

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()


def reverse_task(n: int, seed: int) -> list[dict[str, str]]:
    """Pairs whose target is the source reversed and upper-cased: learnable only with attention."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 7))]
        rows.append({"src": " ".join(words), "tgt": " ".join(w.upper() for w in reversed(words))})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


@pytest.fixture(scope="session")
def reverse_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("reverse")
    write_jsonl(folder / "train.jsonl", reverse_task(3000, seed=1))
    write_jsonl(folder / "validation.jsonl", reverse_task(100, seed=2))
    write_jsonl(folder / "test.jsonl", reverse_task(100, seed=3))
    return folder


def tiny_config(data: Path, **train: object) -> Config:
    """A model small enough to train in seconds on two cores."""
    config = Config()
    config.data.path, config.data.src, config.data.tgt = str(data), "src", "tgt"
    config.vocab.src_size = config.vocab.tgt_size = 40
    m = config.model
    m.emb_size, m.enc_hidden, m.dec_hidden, m.attn_size = 16, 16, 32, 16
    m.dropout = m.emb_dropout = 0.0
    config.train.batch_tokens = 400
    config.train.lr = 0.01
    config.train.save_every_minutes = 1000.0
    config.train.threads = 1
    for key, value in train.items():
        setattr(config.train, key, value)
    return config


@pytest.fixture(scope="session")
def models_dir(reverse_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with two tiny trained models: src->tgt and tgt->src."""
    root = tmp_path_factory.mktemp("served")
    for src, tgt in (("src", "tgt"), ("tgt", "src")):
        config = tiny_config(reverse_corpus, max_epochs=3)
        config.data.src, config.data.tgt = src, tgt
        Trainer(config, root / f"run-{src}", max_steps=200).fit()
        export_model_dir([root / f"run-{src}" / "best"], root / "models" / f"{src}-{tgt}")
    return root / "models"


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Smaller than `reverse_corpus`, for tests that start many processes: each reads, cleans and encodes it."""
    folder = tmp_path_factory.mktemp("small")
    write_jsonl(folder / "train.jsonl", reverse_task(600, seed=1))
    write_jsonl(folder / "validation.jsonl", reverse_task(30, seed=2))
    return folder
