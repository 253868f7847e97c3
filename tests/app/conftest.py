"""A models folder with two tiny trained models (src->tgt, tgt->src) and a client of the app on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from mt.checkpoint import export_model_dir
from mt.train import Trainer

from ..conftest import tiny_config


@pytest.fixture(scope="session")
def models_dir(reverse_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served")
    for src, tgt in (("src", "tgt"), ("tgt", "src")):
        config = tiny_config(reverse_corpus, max_epochs=3)
        config.data.src, config.data.tgt = src, tgt
        Trainer(config, root / f"run-{src}", max_steps=200).fit()
        export_model_dir([root / f"run-{src}" / "best"], root / "models" / f"{src}-{tgt}")
    return root / "models"


def client_for(models_dir: Path, *, raise_server_exceptions: bool = True, **settings: object) -> TestClient:
    app = create_app(Settings(models_dir=str(models_dir), device="cpu", **settings))  # type: ignore[arg-type]
    return TestClient(app, raise_server_exceptions=raise_server_exceptions)


@pytest.fixture(scope="module")
def client(models_dir: Path) -> Iterator[TestClient]:
    with client_for(models_dir, max_texts=5, max_chars=200, max_body_bytes=5000) as test_client:
        yield test_client
