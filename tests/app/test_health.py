from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.registry import ModelsError
from mt.config import DecodeConfig
from mt.translator import Translation, Translator

from .conftest import client_for, hold_decoding


def test_health_reports_device_and_models(client: TestClient) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["device"] == "cpu"
    assert [(m["source"], m["target"]) for m in body["models"]] == [("src", "tgt"), ("tgt", "src")]


@pytest.mark.parametrize(
    ("settings", "beam"),
    [({}, 5), ({"default_beam_size": 1}, 1), ({"max_beam_size": 2, "max_alternatives": 1}, 2)],
    ids=["the model's", "MT_DEFAULT_BEAM_SIZE", "capped by MT_MAX_BEAM_SIZE"],
)
def test_health_reports_the_beam_a_request_without_one_gets(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch, settings: dict[str, Any], beam: int
) -> None:
    with client_for(models_dir, **settings) as client:
        translator = client.app.state.service.models[("src", "tgt")].translator  # type: ignore[attr-defined]
        assert translator.decode.beam_size == 5
        real, beams = translator.translate_encoded, []

        def recorded(sources: list[list[int]], decode: DecodeConfig, *, deadline: float) -> list[Translation]:
            beams.append(decode.beam_size)
            return real(sources, decode, deadline=deadline)  # type: ignore[no-any-return]

        monkeypatch.setattr(translator, "translate_encoded", recorded)
        assert client.post("/translate", json={"q": "alpha", "source": "src", "target": "tgt"}).status_code == 200
        assert beams == [beam]
        assert {m["beam_size"] for m in client.get("/health").json()["models"]} == {beam}


def test_metrics_count_requests_batches_and_sentences(client: TestClient) -> None:
    def values() -> dict[str, float]:
        samples = [line.rsplit(" ", 1) for line in client.get("/metrics").text.splitlines() if line[:1] != "#"]
        return {name: float(value) for name, value in samples}

    before = values()
    client.post("/translate", json={"q": ["alpha", "bravo"], "source": "src", "target": "tgt"})
    client.post("/translate", json={"q": "x", "source": "src", "target": "nope"})
    client.get("/probe-4711")  # a scanner's guesses must not each become a label of their own
    after = values()

    def added(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert added('mt_requests_total{route="/translate",status="200"}') == 1
    assert added('mt_requests_total{route="/translate",status="400"}') == 1
    assert added('mt_request_seconds_count{route="/translate"}') == 2
    assert added("mt_batch_sentences_count") == 1  # the two sentences in one batch
    assert added("mt_batch_sentences_sum") == 2
    assert added('mt_sentences_translated_total{pair="src->tgt"}') == 2
    assert added('mt_requests_total{route="other",status="404"}') == 1
    assert not any("probe-4711" in name for name in after)


def test_openapi_documents_the_translate_body(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/translate"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/x-www-form-urlencoded"} <= set(content)
    assert {"q", "source", "target"} <= set(content["application/json"]["schema"]["properties"])


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "models folder .* does not exist"),
        ("empty", "holds no model directory"),
        ("broken", "cannot serve .*broken.*has no model.safetensors"),
    ],
)
def test_start_up_stops_on_a_bad_models_folder(setup: str, message: str, tmp_path: Path, models_dir: Path) -> None:
    folder = tmp_path / "models"
    if setup != "missing":
        folder.mkdir()
    if setup == "broken":
        (folder / "broken").mkdir()
        (folder / "broken" / "config.json").write_text((models_dir / "src-tgt" / "config.json").read_text())
    with pytest.raises(ModelsError, match=message), client_for(folder):
        pass


def test_health_answers_while_a_translation_is_decoding(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with client_for(models_dir) as client:
        translator: Translator = client.app.state.service.models[("src", "tgt")].translator  # type: ignore[attr-defined]
        decoding, release = hold_decoding(translator, monkeypatch)
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(
                client.post, "/translate", json={"q": "alpha bravo golf", "source": "src", "target": "tgt"}
            )
            assert decoding.wait(timeout=30)
            assert client.get("/health").status_code == 200  # while the decoding thread is busy
            assert not pending.done()
            release.set()
            assert pending.result(timeout=30).json() == {"translatedText": "GOLF BRAVO ALPHA"}


def test_int8_serves_on_the_cpu_on_a_gpu_machine_too(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MT_DEVICE=auto, the default, with MT_INT8=1 on a machine with a GPU: the service starts, on the CPU."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    with client_for(models_dir, device="auto", int8=True) as client:
        assert client.get("/health").json()["device"] == "cpu"
        assert client.post("/translate", json={"q": "alpha", "source": "src", "target": "tgt"}).status_code == 200
