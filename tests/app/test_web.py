from __future__ import annotations

from fastapi.testclient import TestClient


def test_page_has_the_form_and_the_heatmap(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    for element in ('id="text"', 'id="source"', 'id="target"', 'id="translate"', 'id="heatmap"', 'id="api-key"'):
        assert element in response.text


def test_monitors_may_ask_for_the_page_with_head(client: TestClient) -> None:
    response = client.head("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
