"""A client of the app on the models folder of two tiny trained models (`models_dir`, in tests/conftest.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from mt.config import DecodeConfig
from mt.translator import Translation, Translator


def client_for(models_dir: Path, *, raise_server_exceptions: bool = True, **settings: object) -> TestClient:
    settings = {"device": "cpu", **settings}  # tests run on the CPU unless they say otherwise
    app = create_app(Settings(models_dir=str(models_dir), **settings))  # type: ignore[arg-type]
    return TestClient(app, raise_server_exceptions=raise_server_exceptions)


def hold_decoding(translator: Translator, monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Make `translator`'s decodes wait until released: returns (decoding, release), the first set once
    a decode has begun, the second to set to let it (and every later one) go on."""
    real, decoding, release = translator.translate_encoded, threading.Event(), threading.Event()

    def held(sources: list[list[int]], decode: DecodeConfig, *, deadline: float | None = None) -> list[Translation]:
        decoding.set()
        release.wait(timeout=30)
        return real(sources, decode, deadline=deadline)

    monkeypatch.setattr(translator, "translate_encoded", held)
    return decoding, release


def post_and_leave(client: TestClient, messages: list[dict[str, Any]]) -> list[int]:
    """POST /translate (JSON) straight to the app as a client whose `receive` gives `messages`, the last
    of them (a disconnect) ever after: the statuses the app answered it with."""
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if len(messages) > 1 else messages[0]

    async def send(message: Mapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/translate", "raw_path": b"/translate", "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1), "server": ("test", 80),
    }  # fmt: skip
    client.portal.call(client.app, scope, receive, send)  # type: ignore[union-attr]
    return statuses


@pytest.fixture(scope="module")
def client(models_dir: Path) -> Iterator[TestClient]:
    with client_for(models_dir, max_texts=5, max_chars=200, max_body_bytes=5000) as test_client:
        yield test_client
