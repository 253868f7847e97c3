from __future__ import annotations

from fastapi.testclient import TestClient


def test_languages_lists_each_source_with_its_targets(client: TestClient) -> None:
    assert client.get("/languages").json() == [
        {"code": "src", "name": "src", "targets": ["tgt"]},
        {"code": "tgt", "name": "tgt", "targets": ["src"]},
    ]
