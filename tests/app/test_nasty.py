"""Hand-written bad input for the HTTP API: broken encodings, odd text, huge and deep bodies, wrong
types and content types, wrong methods and paths. Each answer is the status a client should get, a
4xx says what is wrong in a JSON `error`, and the server translates normally afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from mt.translator import Translator

from .conftest import client_for, post_and_leave

SERVED = {"source": "src", "target": "tgt"}
_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def client(models_dir: Path) -> Iterator[TestClient]:
    """The default limits (5,000 characters and 100 texts per request, 1 MB bodies), and a 500 is
    answered rather than raised, as a real server would."""
    with client_for(models_dir, raise_server_exceptions=False) as test_client:
        yield test_client


class Response(Protocol):
    """What the checks read of an answer (the test client's httpx, or httpx2, Response)."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def text(self) -> str: ...
    def json(self) -> Any: ...


def assert_error(response: Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    for word in words:
        assert word in body["error"]


def assert_translated(response: Response) -> str:
    assert response.status_code == 200, response.text[:300]
    text = response.json()["translatedText"]
    assert isinstance(text, str)
    return text


@dataclass
class Raw:
    """A request as bytes on the wire: what a JSON client library would never send."""

    content: bytes
    content_type: str = "application/json"


def _raw(body: str) -> Raw:
    return Raw(body.encode())


# --- bodies that are not (valid) JSON, or not UTF-8 ---------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        pytest.param(Raw(b'{"q": "\xff\xfe", "source": "src", "target": "tgt"}'), ["not valid JSON"], id="not UTF-8"),
        pytest.param(Raw(b'{"q": "caf\xe9", "source": "src", "target": "tgt"}'), ["not valid JSON"], id="Latin-1"),
        pytest.param(Raw(b"\x00\x01\x02\xff"), ["not valid JSON"], id="binary"),
        pytest.param(Raw(b"[" * 100_000 + b"]" * 100_000), ["not valid JSON"], id="nested 100,000 deep"),
        pytest.param(
            Raw(b'{"q": ' + b"[" * 100_000 + b"]" * 100_000 + b', "source": "src", "target": "tgt"}'),
            ["not valid JSON"],
            id="q nested 100,000 deep",
        ),
        pytest.param(Raw(b'{"a": ' * 100_000 + b"1" + b"}" * 100_000), ["not valid JSON"], id="objects 100,000 deep"),
        pytest.param(_raw('{"q": "alpha", "source": "src", "target": "tgt"'), ["not valid JSON"], id="cut short"),
        pytest.param(_raw('{"q": "alpha", "source": "src", "target": "tgt"} x'), ["not valid JSON"], id="trailing"),
        pytest.param(_raw("'q'"), ["not valid JSON"], id="single quotes"),
        pytest.param(Raw(b""), ["empty"], id="empty"),
        pytest.param(Raw(b"", content_type=""), ["empty"], id="empty, no content type"),
        pytest.param(_raw("null"), ["must be a JSON object"], id="null"),
        pytest.param(_raw('"alpha"'), ["must be a JSON object"], id="string"),
        pytest.param(_raw("5"), ["must be a JSON object"], id="number"),
        pytest.param(_raw("[1, 2]"), ["must be a JSON object"], id="list"),
        pytest.param(
            Raw(b"<q>alpha</q><source>src</source><target>tgt</target>", "application/xml"),
            ["not valid JSON"],
            id="XML",
        ),
        pytest.param(Raw(b"alpha bravo", "text/plain"), ["not valid JSON"], id="plain text"),
        pytest.param(
            Raw(b"q=alpha&source=src&target=tgt", "application/octet-stream"), ["not valid JSON"], id="octet-stream"
        ),
    ],
)
def test_a_body_that_is_not_a_json_object_is_400(client: TestClient, request_: Raw, words: list[str]) -> None:
    headers = {"Content-Type": request_.content_type} if request_.content_type else {}
    response = client.post("/translate", content=request_.content, headers=headers)
    assert_error(response, 400, *words)


def test_a_missing_body_is_400(client: TestClient) -> None:
    assert_error(client.post("/translate"), 400, "empty")


@pytest.mark.parametrize(
    "body",
    [
        b'{"q": "\\ud800", "source": "src", "target": "tgt"}',
        b'{"q": ["alpha", "\\udfff bravo"], "source": "src", "target": "tgt"}',
        b'{"q": "alpha", "source": "\\ud800", "target": "tgt"}',
        b'{"q": "alpha", "source": "src", "target": "tgt", "api_key": "\\udc00"}',
        b'{"q": "alpha", "source": "src", "target": "tgt", "unknown\\ud800": 1}',
        b'{"q": "\xed\xa0\x80", "source": "src", "target": "tgt"}',  # U+D800 encoded as UTF-8 would be
    ],
    ids=["q", "q[1]", "source", "api_key", "unknown key", "UTF-8 bytes"],
)
def test_lone_surrogates_are_400_wherever_they_are(client: TestClient, body: bytes) -> None:
    """JSON may spell UTF-16 surrogates as escapes, and Python's JSON reader lets UTF-8-encoded ones
    through; alone they are not text, and neither the tokenizer nor a JSON answer can encode them."""
    response = client.post("/translate", content=body, headers={"Content-Type": "application/json"})
    assert_error(response, 400, "surrogate")


def test_an_escaped_surrogate_pair_is_the_character_it_spells(client: TestClient) -> None:
    body = '{"q": "\\ud83d\\ude00 alpha", "source": "src", "target": "tgt"}'
    response = client.post("/translate", content=body.encode(), headers={"Content-Type": "application/json"})
    assert assert_translated(response)


def test_a_byte_order_mark_before_json_is_accepted(client: TestClient) -> None:
    body = b'\xef\xbb\xbf{"q": "alpha bravo golf", "source": "src", "target": "tgt"}'
    response = client.post("/translate", content=body, headers={"Content-Type": "application/json"})
    assert assert_translated(response) == "GOLF BRAVO ALPHA"


def test_json_sent_as_text_plain_is_read_as_json(client: TestClient) -> None:
    """Lenient like LibreTranslate: the body decides, so `curl -d '{...}'` without a type works too."""
    body = json.dumps({"q": "alpha bravo golf", **SERVED}).encode()
    response = client.post("/translate", content=body, headers={"Content-Type": "text/plain"})
    assert assert_translated(response) == "GOLF BRAVO ALPHA"


# --- wrong types and values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"q": 5}, ["q"]),
        ({"q": {"a": 1}}, ["q"]),
        ({"q": [1, 2]}, ["q"]),
        ({"q": ["alpha", None]}, ["q"]),
        ({"q": [["alpha"]]}, ["q"]),
        ({"q": None}, ["q"]),
        ({"q": True}, ["q"]),
        ({"source": 7}, ["source"]),
        ({"source": ["src"]}, ["source"]),
        ({"target": {"code": "tgt"}}, ["target"]),
        ({"alternatives": "x"}, ["alternatives"]),
        ({"alternatives": -1}, ["alternatives"]),
        ({"alternatives": 1.5}, ["alternatives"]),
        ({"alternatives": 10**30}, ["alternatives", "over the limit"]),
        ({"beam_size": -1}, ["beam_size"]),
        ({"beam_size": 0}, ["beam_size"]),
        ({"beam_size": "wide"}, ["beam_size"]),
        ({"beam_size": 10**30}, ["beam_size", "over the limit"]),
        ({"alignments": "maybe"}, ["alignments"]),
        ({"alignments": [True]}, ["alignments"]),
        ({"format": "html"}, ["format"]),
        ({"format": 1}, ["format"]),
        ({"api_key": 5}, ["api_key"]),
    ],
    ids=repr,
)
def test_a_field_of_the_wrong_type_or_value_is_400_naming_it(
    client: TestClient, fields: dict[str, Any], words: list[str]
) -> None:
    response = client.post("/translate", json={"q": "alpha", **SERVED, **fields})
    assert_error(response, 400, *words)


@pytest.mark.parametrize(
    "body",
    [
        '{"q": "alpha", "source": "src", "target": "tgt", "alternatives": 1e400}',  # inf
        '{"q": "alpha", "source": "src", "target": "tgt", "beam_size": -1e400}',
        '{"q": "alpha", "source": "src", "target": "tgt", "alternatives": NaN}',  # Python's json reads it
        '{"q": "alpha", "source": "src", "target": "tgt", "beam_size": Infinity}',
        '{"q": "alpha", "source": "src", "target": "tgt", "beam_size": ' + "9" * 5000 + "}",  # over int's limit
    ],
    ids=["1e400", "-1e400", "NaN", "Infinity", "5000 digits"],
)
def test_numbers_json_cannot_hold_are_400(client: TestClient, body: str) -> None:
    response = client.post("/translate", content=body.encode(), headers={"Content-Type": "application/json"})
    assert_error(response, 400)


def test_unknown_fields_are_ignored(client: TestClient) -> None:
    body = {"q": "alpha bravo golf", **SERVED, "colour": "blue", "nested": {"deep": [1, {"x": None}]}, "": 0}
    assert assert_translated(client.post("/translate", json=body)) == "GOLF BRAVO ALPHA"


def test_a_repeated_json_key_takes_its_last_value(client: TestClient) -> None:
    body = b'{"q": "kilo", "q": "alpha bravo golf", "source": "src", "target": "tgt"}'
    response = client.post("/translate", content=body, headers={"Content-Type": "application/json"})
    assert assert_translated(response) == "GOLF BRAVO ALPHA"


# --- sizes -------------------------------------------------------------------------------------------


def test_a_100_kb_text_is_400_naming_the_limit(client: TestClient) -> None:
    response = client.post("/translate", json={"q": "alpha " * 17_000, **SERVED})
    assert_error(response, 400, "q has 102000 characters; at most 5000 per text")


def test_10000_texts_are_400_naming_the_limit(client: TestClient) -> None:
    response = client.post("/translate", json={"q": ["alpha"] * 10_000, **SERVED})
    assert_error(response, 400, "q holds 10000 texts; at most 100 per request")


def test_a_body_over_1_mb_is_413(client: TestClient) -> None:
    response = client.post("/translate", json={"q": ["alpha"] * 200_000, **SERVED})
    assert_error(response, 413, "larger than 1000000 bytes")


def test_5000_repeated_tokens_are_400_over_max_chars(client: TestClient) -> None:
    assert_error(client.post("/translate", json={"q": "a " * 5000, **SERVED}), 400, "at most 5000")


def test_a_long_repetitive_text_is_refused_for_its_pieces_or_comes_back_bounded(
    client: TestClient, models_dir: Path
) -> None:
    """Within MT_MAX_CHARS, over MT_MAX_PIECES: refused. At the piece limit: translated, never unboundedly."""
    assert_error(client.post("/translate", json={"q": "a " * 2400, **SERVED}), 400, "at most 400 per sentence")
    translator = Translator.from_dir(models_dir / "src-tgt", device="cpu")
    words = max(n for n in range(1, 401) if len(translator.encode(["a " * n])[0]) - 1 <= 400)
    pieces = len(translator.encode(["a " * words])[0])  # with </s>
    response = client.post("/translate", json={"q": "a " * words, "alignments": True, **SERVED})
    assert response.status_code == 200, response.text[:300]
    assert len(response.json()["alignments"]["target_pieces"]) <= 1.5 * pieces + 10  # decode.max_len_a/b


# --- odd text ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "q",
    [
        "\x00",
        "alpha\x00bravo",
        "\x1b[31malpha\x1b[0m",
        "\u202ealpha bravo",  # right-to-left override
        "\ufeffalpha",
        "\u200b",  # zero-width space: not whitespace to str.strip()
        "\x07\x08\x7f\x85",
        "😀🚀👍🏽 👨‍👩‍👧‍👦",
        "翻訳してください。中文测试",
        "مرحبا بالعالم",
        "שלום עולם",
        "Z̸̡̢̛̩̗̀͂a̶̧̛͎̓l̵̠̈́g̷̱̈ö̴̙́",
        "!!!???...",
        ".,;:-()[]{}<>\"'`~@#$%^&*_+=|\\/",
        "\U0010ffff\U000e0001",
        "alpha " * 100,
    ],
    ids=lambda q: ascii(q)[:30],
)
def test_odd_text_is_translated_to_a_string(client: TestClient, q: str) -> None:
    translated = assert_translated(client.post("/translate", json={"q": q, **SERVED}))
    assert len(translated.split()) <= 1.5 * (len(q) + 1) + 10


@pytest.mark.parametrize("q", ["", " ", "   \t\n\r  ", "\u00a0\u2003\u3000", "\n" * 4000])
def test_text_that_is_only_whitespace_translates_to_nothing(client: TestClient, q: str) -> None:
    assert assert_translated(client.post("/translate", json={"q": q, **SERVED})) == ""


def test_odd_texts_in_one_list_keep_their_places(client: TestClient) -> None:
    q = ["", "alpha bravo golf", "\x00", "😀", "   ", "alpha bravo golf"]
    response = client.post("/translate", json={"q": q, **SERVED})
    assert response.status_code == 200
    translated = response.json()["translatedText"]
    assert len(translated) == len(q)
    assert translated[0] == translated[4] == ""
    assert translated[1] == translated[5] == "GOLF BRAVO ALPHA"


def test_odd_language_codes_are_400_listing_the_available_pairs(client: TestClient) -> None:
    for source in (" ", "SRC", "src\x00", "../../etc/passwd", "😀", "x" * 32):
        response = client.post("/translate", json={"q": "alpha", "source": source, "target": "tgt"})
        assert_error(response, 400, "available: src->tgt, tgt->src")


def test_a_language_code_longer_than_any_real_one_is_400_and_not_echoed(client: TestClient) -> None:
    response = client.post("/translate", json={"q": "alpha", "source": "x" * 10_000, "target": "tgt"})
    assert_error(response, 400, "source: String should have at most 32 characters")
    assert len(response.text) < 200


# --- form data ---------------------------------------------------------------------------------------


def test_a_repeated_form_field_q_is_a_list(client: TestClient) -> None:
    form = [("q", "alpha bravo golf"), ("q", "kilo"), ("source", "src"), ("target", "tgt")]
    response = client.post(
        "/translate", content="&".join(f"{k}={v}" for k, v in form).replace(" ", "+").encode(), headers=_FORM
    )
    assert response.status_code == 200
    assert response.json()["translatedText"][0] == "GOLF BRAVO ALPHA"


def test_a_repeated_form_field_that_takes_one_value_is_400(client: TestClient) -> None:
    response = client.post("/translate", content=b"q=alpha&source=src&source=tgt&target=tgt", headers=_FORM)
    assert_error(response, 400, "source")


@pytest.mark.parametrize(
    "body",
    [
        b"q=%ff%fe&source=src&target=tgt",  # not UTF-8
        b"q=%ed%a0%80&source=src&target=tgt",  # a UTF-8-encoded surrogate
        b"q=%00&source=src&target=tgt",
        b"q=%%%&source=src&target=tgt",  # broken escapes
        b"q&source=src&target=tgt",  # a field without '='
        b"&&&=&q=alpha&source=src&target=tgt",
    ],
)
def test_odd_urlencoded_forms_are_200_or_400(client: TestClient, body: bytes) -> None:
    response = client.post("/translate", content=body, headers=_FORM)
    if response.status_code != 200:
        assert_error(response, 400)


def test_a_file_upload_as_q_is_400(client: TestClient) -> None:
    files = {"q": ("q.txt", b"alpha bravo", "text/plain")}
    assert_error(client.post("/translate", files=files, data=SERVED), 400, "q")


def test_a_binary_file_upload_as_q_is_400(client: TestClient) -> None:
    files = {"q": ("q.bin", bytes(range(256)) * 10, "application/octet-stream")}
    assert_error(client.post("/translate", files=files, data=SERVED), 400, "q")


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'--b\r\nContent-Disposition: form-data; name="q"\r\n\r\nalpha', "multipart/form-data; boundary=b"),
        (b"anything", "multipart/form-data"),  # no boundary
        (b"garbage without boundaries", "multipart/form-data; boundary=xyz"),
        (b"", "multipart/form-data; boundary=xyz"),
    ],
    ids=["cut short", "no boundary", "no parts", "empty"],
)
def test_broken_multipart_is_400(client: TestClient, content: bytes, content_type: str) -> None:
    assert_error(client.post("/translate", content=content, headers={"Content-Type": content_type}), 400)


# a charset whose decoding error is a UnicodeError, not the UnicodeDecodeError Starlette catches
_PUNYCODE_FORM = (
    b'--B\r\nContent-Disposition: form-data; name="q"\r\n\r\n\\x\r\n--B--\r\n',
    "multipart/form-data; boundary=B; charset=punycode",
)


def test_a_form_that_its_charset_cannot_decode_is_400(client: TestClient) -> None:
    content, content_type = _PUNYCODE_FORM
    response = client.post("/translate", content=content, headers={"Content-Type": content_type})
    assert_error(response, 400, "form data cannot be decoded in the charset it declares")


# --- methods and paths -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/translate", 405),
        ("PUT", "/translate", 405),
        ("DELETE", "/translate", 405),
        ("PATCH", "/translate", 405),
        ("OPTIONS", "/translate", 405),
        ("POST", "/languages", 405),
        ("POST", "/health", 405),
        ("GET", "/nowhere", 404),
        ("POST", "/nowhere", 404),
        ("GET", "/translate/more", 404),
        ("GET", "/%ff%fe", 404),
        ("GET", "/" + "a" * 10_000, 404),
    ],
)
def test_wrong_methods_and_paths_are_json_errors(client: TestClient, method: str, path: str, status: int) -> None:
    response = client.request(method, path)
    assert_error(response, status)
    if status == 405:
        assert "Allow" in response.headers


def test_a_trailing_slash_is_redirected_keeping_the_method(client: TestClient) -> None:
    """Starlette's redirect to the canonical path: a 307, so the POST and its body are sent again."""
    response = client.post("/translate/", json={"q": "alpha bravo golf", **SERVED}, follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"].endswith("/translate")
    assert assert_translated(client.post("/translate/", json={"q": "alpha bravo golf", **SERVED})) == "GOLF BRAVO ALPHA"


@pytest.mark.parametrize("path", ["/health", "/languages", "/translate", "/nowhere"])
def test_head_answers_without_a_body_and_no_5xx(client: TestClient, path: str) -> None:
    response = client.head(path)
    assert response.status_code < 500
    assert response.content == b""


# --- with API keys required ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_client(models_dir: Path) -> Iterator[TestClient]:
    with client_for(models_dir, raise_server_exceptions=False, api_keys=SecretStr("the-key")) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"q": "alpha", "source": "src", "target": "tgt", "api_key": "\\ud800"}', 403),
        (b'{"q": "alpha", "source": "src", "target": "tgt", "api_key": "\xed\xa0\x80"}', 403),
        (b'{"q": "alpha", "source": "src", "target": "tgt", "api_key": ["the-key"]}', 403),
        (b'{"q": "alpha", "source": "src", "target": "tgt", "api_key": {"key": "the-key"}}', 403),
        (b"[" * 100_000 + b"]" * 100_000, 403),
        (b'{"q": "\\ud800", "source": "src", "target": "tgt", "api_key": "the-key"}', 400),
        (b'{"q": "alpha bravo golf", "source": "src", "target": "tgt", "api_key": "the-key"}', 200),
    ],
    ids=["surrogate escape", "surrogate bytes", "list", "object", "deep", "surrogate in q", "valid"],
)
def test_odd_api_keys_in_the_body_are_refused_not_500(keyed_client: TestClient, body: bytes, status: int) -> None:
    response = keyed_client.post("/translate", content=body, headers={"Content-Type": "application/json"})
    if status == 200:
        assert assert_translated(response) == "GOLF BRAVO ALPHA"
    else:
        assert_error(response, status)


def test_a_form_that_its_charset_cannot_decode_gets_no_key_through(keyed_client: TestClient) -> None:
    content, content_type = _PUNYCODE_FORM
    assert_error(keyed_client.post("/translate", content=content, headers={"Content-Type": content_type}), 403)


def test_a_malformed_multipart_body_without_a_key_is_403(keyed_client: TestClient) -> None:
    response = keyed_client.post("/translate", content=b"anything", headers={"Content-Type": "multipart/form-data"})
    assert_error(response, 403)


def test_the_server_still_translates_after_all_that(client: TestClient, keyed_client: TestClient) -> None:
    response = client.post("/translate", json={"q": ["alpha bravo golf", "kilo lima echo"], **SERVED})
    assert response.json() == {"translatedText": ["GOLF BRAVO ALPHA", "ECHO LIMA KILO"]}
    assert 'status="500"' not in client.get("/metrics").text
    assert 'status="500"' not in keyed_client.get("/metrics").text


def test_a_client_that_leaves_mid_body_is_no_internal_error(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The client sends half a body and disconnects: nothing is logged as an error, and the metrics
    count a 499 (nginx's "client closed request"), not a 500."""
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"q": "alph', "more_body": True},
        {"type": "http.disconnect"},
    ]
    assert post_and_leave(client, messages) == [499]
    assert not [record for record in caplog.records if record.levelname in ("ERROR", "CRITICAL")]
    metrics = client.get("/metrics").text
    assert 'mt_requests_total{route="/translate",status="499"} 1.0' in metrics
