from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

from app.registry import ModelsError
from mt.cpu import PackedLinear, bf16_supported
from mt.translator import Translator

from .conftest import client_for


def test_json_string_in_string_out(client: TestClient) -> None:
    response = client.post("/translate", json={"q": "alpha bravo charlie", "source": "src", "target": "tgt"})
    assert response.status_code == 200
    assert response.json() == {"translatedText": "CHARLIE BRAVO ALPHA"}


def test_list_in_list_out_in_order(client: TestClient) -> None:
    q = ["alpha bravo golf", "kilo lima echo", "india juliet kilo lima"]
    response = client.post("/translate", json={"q": q, "source": "src", "target": "tgt"})
    alone = [
        client.post("/translate", json={"q": text, "source": "src", "target": "tgt"}).json()["translatedText"]
        for text in q
    ]
    assert response.json()["translatedText"] == alone
    assert len(set(alone)) == len(q)  # three different answers, so their order shows
    assert alone[0] == "GOLF BRAVO ALPHA"  # (the tiny model's errors on longer ones vary with the CPU's float rounding)


def test_form_data_is_accepted_like_libretranslate(client: TestClient) -> None:
    response = client.post(
        "/translate", data={"q": "alpha bravo golf", "source": "src", "target": "tgt", "format": "text"}
    )
    assert response.status_code == 200
    assert response.json() == {"translatedText": "GOLF BRAVO ALPHA"}


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("q=alpha fährt bravo&source=src&target=tgt".encode(), "application/x-www-form-urlencoded"),  # curl -d
        (b"q=alpha+f%C3%A4hrt+bravo&source=src&target=tgt", "application/x-www-form-urlencoded"),  # a browser
        (
            "q=alpha fährt bravo&source=src&target=tgt".encode("latin-1"),
            "application/x-www-form-urlencoded; charset=latin-1",
        ),
        # not UTF-8 and no charset: Latin-1, as older clients mean and as Starlette read every form
        ("q=alpha fährt bravo&source=src&target=tgt".encode("latin-1"), "application/x-www-form-urlencoded"),
        (b"q=alpha+f%E4hrt+bravo&source=src&target=tgt", "application/x-www-form-urlencoded"),
        # declared, quoted and in mixed case; Latin-9's 0xa4 is the euro sign, Latin-1's the currency sign
        (b"q=alpha+\xa4+bravo&source=src&target=tgt", 'Application/X-WWW-Form-Urlencoded; Charset="iso-8859-15"'),
    ],
    ids=[
        "raw UTF-8",
        "percent-encoded UTF-8",
        "declared Latin-1",
        "Latin-1 undeclared",
        "%-Latin-1 undeclared",
        "quoted, mixed case",
    ],
)
def test_form_data_is_read_in_its_charset(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, body: bytes, content_type: str
) -> None:
    translator = client.app.state.service.models[("src", "tgt")].translator  # type: ignore[attr-defined]
    real, texts = translator.encode, []

    def recorded(batch: list[str]) -> list[list[int]]:
        texts.extend(batch)
        return real(batch)  # type: ignore[no-any-return]

    monkeypatch.setattr(translator, "encode", recorded)
    response = client.post("/translate", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200
    assert texts == ["alpha \u20ac bravo" if "8859-15" in content_type else "alpha fährt bravo"]


def test_a_form_field_that_is_no_text_is_400(client: TestClient) -> None:
    """UTF-7 spells a lone surrogate, which would fail the tokenizer and every request in its batch."""
    response = client.post(
        "/translate",
        content=b"q=Hund+2AA-&source=src&target=tgt",
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-7"},
    )
    assert response.status_code == 400
    assert response.json() == {"error": "form data holds a lone UTF-16 surrogate, which is not text"}


@pytest.mark.parametrize("charset", ["no-such-charset", "utf-8"])
def test_a_form_its_charset_cannot_read_is_400(client: TestClient, charset: str) -> None:
    response = client.post(
        "/translate",
        content=b"q=alpha%FF&source=src&target=tgt",
        headers={"Content-Type": f"application/x-www-form-urlencoded; charset={charset}"},
    )
    assert response.status_code == 400
    assert response.json() == {"error": "form data cannot be decoded in the charset it declares"}


def test_multipart_form_data_is_accepted(client: TestClient) -> None:
    response = client.post(
        "/translate", files={"q": (None, "alpha bravo golf"), "source": (None, "src"), "target": (None, "tgt")}
    )
    assert response.json() == {"translatedText": "GOLF BRAVO ALPHA"}


def test_answers_match_the_library(client: TestClient, models_dir: Path) -> None:
    q = ["hotel india juliet kilo", "delta"]
    expected = [t.text for t in Translator.from_dir(models_dir / "src-tgt", device="cpu").translate(q)]
    assert (
        client.post("/translate", json={"q": q, "source": "src", "target": "tgt"}).json()["translatedText"] == expected
    )


def test_alternatives_are_distinct_n_best_entries(client: TestClient) -> None:
    body = client.post(
        "/translate", json={"q": "alpha bravo", "source": "src", "target": "tgt", "alternatives": 3}
    ).json()
    assert len(body["alternatives"]) == 3
    assert len({body["translatedText"], *body["alternatives"]}) == 4
    listed = client.post(
        "/translate", json={"q": ["alpha", "bravo"], "source": "src", "target": "tgt", "alternatives": 2}
    ).json()
    assert [len(a) for a in listed["alternatives"]] == [2, 2]


def test_alignments_give_pieces_and_attention_rows(client: TestClient) -> None:
    body = client.post(
        "/translate", json={"q": "alpha bravo", "source": "src", "target": "tgt", "alignments": True, "beam_size": 1}
    ).json()
    alignment = body["alignments"]
    assert alignment["source_pieces"][-1] == "</s>"
    assert len(alignment["attention"]) == len(alignment["target_pieces"])
    for row in alignment["attention"]:
        assert len(row) == len(alignment["source_pieces"])
        assert sum(row) == pytest.approx(1.0, abs=1e-3)
        assert all(weight == round(weight, 4) for weight in row)  # 4 decimals, not float32's long repr


def test_alignments_too_large_for_one_response_are_400(models_dir: Path) -> None:
    body = {"q": ["alpha bravo", "kilo lima echo golf"], "source": "src", "target": "tgt", "beam_size": 1}
    with client_for(models_dir, max_alignment_weights=20) as client:
        response = client.post("/translate", json={**body, "alignments": True})
        assert response.status_code == 400
        assert "attention weights; at most 20 per request" in response.json()["error"]
        assert client.post("/translate", json=body).status_code == 200  # without alignments, the same texts


def test_empty_text_translates_to_empty_text(client: TestClient) -> None:
    assert client.post("/translate", json={"q": "", "source": "src", "target": "tgt"}).json() == {"translatedText": ""}
    both = client.post(
        "/translate", json={"q": ["", "alpha bravo golf", "  "], "source": "src", "target": "tgt"}
    ).json()
    assert both["translatedText"] == ["", "GOLF BRAVO ALPHA", ""]


def test_unknown_language_pair_is_400_listing_the_available_pairs(client: TestClient) -> None:
    response = client.post("/translate", json={"q": "x", "source": "src", "target": "fr"})
    assert response.status_code == 400
    assert response.json() == {"error": "language pair src->fr is not available; available: src->tgt, tgt->src"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"source": "src", "target": "tgt"}, "q: Field required"),
        ({"q": "x", "source": "src"}, "target: Field required"),
        ({"q": 5, "source": "src", "target": "tgt"}, "q"),
        ({"q": "x", "source": "src", "target": "tgt", "alternatives": -1}, "alternatives"),
        ({"q": "x", "source": "src", "target": "tgt", "format": "html"}, "format"),
        ({"q": "x", "source": "src", "target": "tgt", "beam_size": 0}, "beam_size"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_malformed_body_is_400_naming_the_field(client: TestClient, body: object, message: str) -> None:
    response = client.post("/translate", json=body)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_invalid_json_is_400(client: TestClient) -> None:
    response = client.post("/translate", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]


def test_empty_body_is_400(client: TestClient) -> None:
    response = client.post("/translate", content=b"", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "empty" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"q": ["a"] * 6}, "q holds 6 texts; at most 5"),
        ({"q": ["ok", "x" * 201]}, "q[1] has 201 characters; at most 200"),
        ({"q": "alpha", "beam_size": 11}, "beam_size 11 is over the limit of 10"),
        ({"q": "alpha", "alternatives": 6}, "alternatives 6 is over the limit of 5"),
    ],
)
def test_limits_are_400_with_the_limit(client: TestClient, body: dict[str, object], message: str) -> None:
    response = client.post("/translate", json={"source": "src", "target": "tgt", **body})
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_a_request_larger_than_the_queue_is_400_not_retry_forever(models_dir: Path) -> None:
    with client_for(models_dir, max_texts=100, max_queued_sentences=8) as small_queue:
        response = small_queue.post("/translate", json={"q": ["alpha"] * 9, "source": "src", "target": "tgt"})
        assert response.status_code == 400
        assert "q holds 9 texts; at most 8 per request" in response.json()["error"]
        response = small_queue.post("/translate", json={"q": ["alpha"] * 8, "source": "src", "target": "tgt"})
        assert response.status_code == 200


def test_body_over_the_size_limit_is_413(client: TestClient) -> None:
    def counted() -> str:
        sample = 'mt_requests_total{route="/translate",status="413"}'
        return next((line for line in client.get("/metrics").text.splitlines() if line.startswith(sample)), "")

    before = counted()
    response = client.post("/translate", json={"q": "a" * 6000, "source": "src", "target": "tgt"})
    assert response.status_code == 413
    assert "larger than 5000 bytes" in response.json()["error"]
    # refused on its declared length before routing, it is still counted under its route
    assert counted() != before


def test_unknown_fields_are_ignored_for_client_compatibility(client: TestClient) -> None:
    response = client.post(
        "/translate", json={"q": "alpha", "source": "src", "target": "tgt", "api_key": "k", "something_new": 1}
    )
    assert response.status_code == 200


def test_internal_failure_is_500_without_a_stack_trace(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with client_for(models_dir, raise_server_exceptions=False) as client:
        translator = client.app.state.service.models[("src", "tgt")].translator  # type: ignore[attr-defined]

        def broken(sources: list[list[int]], decode: object, *, deadline: float) -> list[object]:
            raise RuntimeError("secret internals")

        monkeypatch.setattr(translator, "translate_encoded", broken)
        response = client.post("/translate", json={"q": "alpha", "source": "src", "target": "tgt"})
        assert response.status_code == 500
        assert response.json() == {"error": "internal server error"}
        assert 'mt_requests_total{route="/translate",status="500"} 1.0' in client.get("/metrics").text
        monkeypatch.undo()  # the server lives on
        assert client.post("/translate", json={"q": "alpha", "source": "src", "target": "tgt"}).status_code == 200


def test_unknown_routes_and_methods_use_the_error_shape(client: TestClient) -> None:
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    response = client.get("/translate")
    assert response.status_code == 405
    assert "error" in response.json()


@pytest.mark.parametrize("payload", [b"[" * 100_000 + b"]" * 100_000, b'{"q": ' + b"9" * 5000 + b"}"])
def test_pathological_json_is_400_not_500(models_dir: Path, payload: bytes) -> None:
    with client_for(models_dir, raise_server_exceptions=False) as client:
        response = client.post("/translate", content=payload, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "error" in response.json()


def test_a_chunked_body_over_the_limit_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"q": "'
        for _ in range(10):
            yield b"a" * 1000
        yield b'", "source": "src", "target": "tgt"}'

    response = client.post("/translate", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json() == {"error": "request body is larger than 5000 bytes"}


def test_empty_form_fields_and_nulls_take_their_defaults(client: TestClient) -> None:
    form = {"q": "alpha bravo golf", "source": "src", "target": "tgt", "format": "", "alternatives": "", "api_key": ""}
    assert client.post("/translate", data=form).json() == {"translatedText": "GOLF BRAVO ALPHA"}
    body = {"q": "alpha bravo golf", "source": "src", "target": "tgt", "format": None, "beam_size": None}
    assert client.post("/translate", json=body).json() == {"translatedText": "GOLF BRAVO ALPHA"}


def test_a_batch_with_missing_results_fails_instead_of_shifting_answers(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with client_for(models_dir, raise_server_exceptions=False) as client:
        translator = client.app.state.service.models[("src", "tgt")].translator  # type: ignore[attr-defined]
        real = translator.translate_encoded
        monkeypatch.setattr(translator, "translate_encoded", lambda *args, **kwargs: real(*args, **kwargs)[:-1])
        response = client.post("/translate", json={"q": ["alpha", "bravo"], "source": "src", "target": "tgt"})
        assert response.status_code == 500
        assert 'status="500"' in client.get("/metrics").text


def test_a_sentence_over_the_piece_limit_is_400_naming_its_text(models_dir: Path) -> None:
    with client_for(models_dir, max_pieces=5) as client:
        texts = ["alpha. bravo", "kilo. alpha bravo golf kilo lima echo"]  # the second sentence of the second
        response = client.post("/translate", json={"q": texts, "source": "src", "target": "tgt"})
    assert response.status_code == 400
    assert response.json()["error"].startswith("q[1] has a sentence of ")
    assert "at most 5 per sentence" in response.json()["error"]


def served_translator(models_dir: Path, *, int8: bool = False, bf16: bool = False) -> Translator:
    """The src->tgt translator of a server in int8 or bf16, once it has translated a request."""
    with client_for(models_dir, int8=int8, bf16=bf16) as client:
        response = client.post("/translate", json={"q": "alpha bravo golf", "source": "src", "target": "tgt"})
        assert response.status_code == 200
        assert response.json()["translatedText"]
        translator: Translator = client.app.state.service.models[("src", "tgt")].translator  # type: ignore[attr-defined]
        return translator


def test_an_int8_server_translates(models_dir: Path) -> None:
    translator = served_translator(models_dir, int8=True)
    fp32 = [name for name, m in translator.model.named_modules() if type(m) is nn.Linear]
    assert fp32 == ["decoder.attention.energy_layer"]  # the one layer int8 would slow down


@pytest.mark.skipif(not bf16_supported(), reason="this CPU has no native bfloat16 (AMX or AVX512-BF16)")
def test_a_bf16_server_translates(models_dir: Path) -> None:
    translator = served_translator(models_dir, bf16=True)
    assert {m.dtype for m in translator.model.modules() if type(m) is PackedLinear} == {torch.bfloat16}


def test_int8_and_bf16_together_stop_the_server_naming_the_model(models_dir: Path) -> None:
    message = r"cannot serve .*src-tgt: int8 and bf16 .* choose one"
    with pytest.raises(ModelsError, match=message), client_for(models_dir, int8=True, bf16=True):
        pass
