"""A client of the app on the models folder of two tiny trained models (`models_dir`, in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings


def client_for(models_dir: Path, *, raise_server_exceptions: bool = True, **settings: object) -> TestClient:
    app = create_app(Settings(models_dir=str(models_dir), device="cpu", **settings))  # type: ignore[arg-type]
    return TestClient(app, raise_server_exceptions=raise_server_exceptions)


@pytest.fixture(scope="module")
def client(models_dir: Path) -> Iterator[TestClient]:
    with client_for(models_dir, max_texts=5, max_chars=200, max_body_bytes=5000) as test_client:
        yield test_client
