"""Access control (app/auth.py): API keys from settings or a file, where a client may send one, rate
limits per key or client address, CORS, and the places a key must never show up."""

from __future__ import annotations

import logging
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from app.auth import ApiKeys, ApiKeysError, RedactKeysInUrls, split_list
from app.main import create_app
from app.settings import Settings
from mt.cli import main

from .conftest import client_for
from .test_rate_limit import FakeClock
from .test_server import start_server

KEY = "k-3f9a1c7e5b2d40681e"
SECOND_KEY = "k-77aa0b1c9d"
BODY = {"q": "alpha bravo golf", "source": "src", "target": "tgt"}
TRANSLATED = {"translatedText": "GOLF BRAVO ALPHA"}


@pytest.fixture(scope="module")
def keyed(models_dir: Path) -> Iterator[TestClient]:
    with client_for(models_dir, api_keys=f"{KEY},{SECOND_KEY}") as test_client:
        yield test_client


# --- keys ---------------------------------------------------------------------------------------------


def test_without_keys_the_api_is_open(client: TestClient) -> None:
    assert client.post("/translate", json=BODY).json() == TRANSLATED
    assert client.post("/translate", json={**BODY, "api_key": "anything"}).json() == TRANSLATED


def test_a_missing_key_is_403_saying_how_to_send_one(keyed: TestClient) -> None:
    response = keyed.post("/translate", json=BODY)
    assert response.status_code == 403
    assert response.json() == {
        "error": "an API key is required: send it as api_key in the body, an X-API-Key header or Authorization: Bearer"
    }


def test_a_wrong_key_is_403_without_echoing_it(keyed: TestClient) -> None:
    for response in (
        keyed.post("/translate", json={**BODY, "api_key": "wrong-key-1234"}),
        keyed.post("/translate", json=BODY, headers={"X-API-Key": "wrong-key-1234"}),
        keyed.post("/translate", json={**BODY, "api_key": KEY + "x"}),
    ):
        assert response.status_code == 403
        assert response.json() == {"error": "the API key is not valid"}


@pytest.mark.parametrize(
    "request_args",
    [
        {"json": {**BODY, "api_key": KEY}},
        {"json": {**BODY, "api_key": SECOND_KEY}},
        {"data": {**BODY, "api_key": KEY}},  # what LibreTranslate clients send
        {"files": {name: (None, value) for name, value in {**BODY, "api_key": KEY}.items()}},
        {"json": BODY, "headers": {"X-API-Key": KEY}},
        {"json": BODY, "headers": {"Authorization": f"Bearer {KEY}"}},
    ],
    ids=["json", "second-key", "form", "multipart", "x-api-key", "bearer"],
)
def test_a_valid_key_is_accepted_in_the_body_or_a_header(keyed: TestClient, request_args: dict[str, object]) -> None:
    response = keyed.post("/translate", **request_args)  # type: ignore[arg-type]
    assert response.status_code == 200
    assert response.json() == TRANSLATED


def test_a_key_in_the_url_is_refused_saying_why(keyed: TestClient) -> None:
    response = keyed.post(f"/translate?api_key={KEY}", json=BODY)
    assert response.status_code == 403
    assert "not accepted in the URL" in response.json()["error"]


def test_without_a_key_a_malformed_body_is_403_not_400(keyed: TestClient) -> None:
    response = keyed.post("/translate", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 403
    assert keyed.post("/translate", json={"api_key": KEY}).status_code == 400  # with a key, the usual 400


def test_a_key_sent_without_a_bearer_scheme_is_not_taken(keyed: TestClient) -> None:
    response = keyed.post("/translate", json=BODY, headers={"Authorization": f"Basic {KEY}"})
    assert response.status_code == 403


def test_languages_health_metrics_and_the_page_stay_open(keyed: TestClient) -> None:
    for path in ("/languages", "/health", "/metrics", "/", "/openapi.json"):
        assert keyed.get(path).status_code == 200, path


def test_the_openapi_document_offers_both_ways_of_sending_a_key(keyed: TestClient) -> None:
    schemes = keyed.get("/openapi.json").json()["components"]["securitySchemes"]
    assert {"type": "apiKey", "in": "header", "name": "X-API-Key"}.items() <= schemes["APIKeyHeader"].items()
    assert schemes["HTTPBearer"]["scheme"] == "bearer"


# --- where keys come from -------------------------------------------------------------------------------


def test_settings_read_comma_separated_keys_and_origins_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MT_API_KEYS", f" {KEY}, {SECOND_KEY},")
    monkeypatch.setenv("MT_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("MT_RATE_LIMIT_PER_MINUTE", "30")
    settings = Settings()
    keys = ApiKeys.from_settings(settings)
    assert len(keys) == 2
    assert keys.identify(KEY) and keys.identify(SECOND_KEY)
    assert keys.identify(f" {KEY}") is None
    assert split_list(settings.cors_origins) == ["https://a.example", "https://b.example"]
    assert settings.rate_limit_per_minute == 30
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())


def test_keys_file_skips_comments_and_blank_lines_and_adds_to_the_listed_keys(models_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(
        f"# team A\n{KEY}   # alice\n\n   \n  # retired: old-key\n{SECOND_KEY}  \nkey#with-hash\n", encoding="utf-8"
    )
    with client_for(models_dir, api_keys_file=str(path), api_keys="listed-key") as client:
        assert client.post("/translate", json={**BODY, "api_key": "key"}).status_code == 403  # '#' inside a key
        for key in (KEY, SECOND_KEY, "listed-key", "key#with-hash"):
            assert client.post("/translate", json={**BODY, "api_key": key}).status_code == 200, key
        for not_a_key in ("# team A", "# retired: old-key", "old-key", f"{KEY}   # alice"):
            assert client.post("/translate", json={**BODY, "api_key": not_a_key}).status_code == 403


def test_a_keys_files_byte_order_mark_is_not_part_of_its_first_line(models_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_bytes(f"\ufeff# one key per line\n{KEY}\n".encode())
    with client_for(models_dir, api_keys_file=str(path)) as client:
        assert client.post("/translate", json={**BODY, "api_key": KEY}).status_code == 200
        for not_a_key in ("\ufeff# one key per line", "# one key per line"):
            assert client.post("/translate", json={**BODY, "api_key": not_a_key}).status_code == 403
    path.write_bytes(f"\ufeff{KEY}\n".encode())
    with client_for(models_dir, api_keys_file=str(path)) as client:
        assert client.post("/translate", json={**BODY, "api_key": KEY}).status_code == 200


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("", "holds no key"),
        ("# only a comment\n\n", "holds no key"),
        (b"\xff\xfe key", "is not UTF-8 text"),
        ("directory", "cannot be read: Is a directory"),
    ],
)
def test_a_bad_keys_file_stops_start_up_with_a_clear_error(
    tmp_path: Path, content: str | bytes | None, message: str
) -> None:
    path = tmp_path / "keys"
    if content == "directory":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ApiKeysError, match=f"API keys file {path} {message}"):
        create_app(Settings(api_keys_file=str(path)), models={})


def test_keys_set_to_nothing_but_commas_stop_start_up() -> None:
    with pytest.raises(ApiKeysError, match="MT_API_KEYS holds no key"):
        create_app(Settings(api_keys=" , "), models={})  # type: ignore[arg-type]


def test_mt_serve_with_a_missing_keys_file_is_a_one_line_error(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-keys"
    args = ["serve", "--models", str(models_dir), "--device", "cpu", "--api-keys-file", str(missing)]
    assert main(args) == 2
    assert capsys.readouterr().err == f"mt serve: error: API keys file {missing} does not exist\n"


# --- rate limits ----------------------------------------------------------------------------------------


def test_over_the_rate_limit_is_429_with_retry_after_then_it_recovers(models_dir: Path) -> None:
    with client_for(models_dir, rate_limit_per_minute=2) as client:
        clock = FakeClock()
        client.app.state.access.limiter.clock = clock  # type: ignore[attr-defined]
        assert [client.post("/translate", json=BODY).status_code for _ in range(2)] == [200, 200]
        limited = client.post("/translate", json=BODY)
        assert limited.status_code == 429
        assert limited.headers["Retry-After"] == "30"
        assert limited.json() == {"error": "rate limit of 2 requests per minute reached: retry in 30 s"}
        clock.now += 29.5
        assert client.post("/translate", json=BODY).headers["Retry-After"] == "1"  # rounded up, never 0
        clock.now += 0.5
        assert client.post("/translate", json=BODY).json() == TRANSLATED
        assert client.get("/languages").status_code == 200  # only the work is limited


def test_without_keys_each_client_address_has_its_own_budget(models_dir: Path) -> None:
    app = create_app(Settings(models_dir=str(models_dir), device="cpu", rate_limit_per_minute=1))
    # as behind a reverse proxy: uvicorn's middleware takes the client address from X-Forwarded-For
    with TestClient(ProxyHeadersMiddleware(app, trusted_hosts="*")) as client:  # type: ignore[arg-type]
        app.state.access.limiter.clock = FakeClock()

        def status(address: str, body: dict[str, str] = BODY) -> int:
            return client.post("/translate", json=body, headers={"X-Forwarded-For": address}).status_code

        assert [status("203.0.113.7"), status("203.0.113.7")] == [200, 429]
        assert status("198.51.100.1") == 200
        assert status("198.51.100.1", {**BODY, "api_key": "made-up"}) == 429  # keys are off: no fresh budget
        assert [status("2001:db8:1:2::a"), status("2001:db8:1:2::b")] == [200, 429]  # one /64, one budget
        assert status("2001:db8:1:3::a") == 200
        # an IPv4 client seen through an IPv6 socket is its IPv4 address, not one /64 for every such client
        assert status("::ffff:203.0.113.7") == 429
        assert status("::ffff:203.0.113.9") == 200


def test_with_keys_each_key_has_its_own_budget_and_wrong_keys_spend_the_address(models_dir: Path) -> None:
    with client_for(models_dir, api_keys=f"{KEY},{SECOND_KEY}", rate_limit_per_minute=1) as client:
        client.app.state.access.limiter.clock = FakeClock()  # type: ignore[attr-defined]
        assert client.post("/translate", json={**BODY, "api_key": KEY}).status_code == 200
        assert client.post("/translate", json={**BODY, "api_key": KEY}).status_code == 429
        assert client.post("/translate", json={**BODY, "api_key": SECOND_KEY}).status_code == 200
        # guessing: each made-up key draws on the address's budget, not a fresh one
        assert client.post("/translate", json={**BODY, "api_key": "guess-1"}).status_code == 403
        assert client.post("/translate", json={**BODY, "api_key": "guess-2"}).status_code == 429


# --- where keys must never show up ----------------------------------------------------------------------


def test_keys_never_reach_the_logs_or_the_metrics(models_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with client_for(
        models_dir, raise_server_exceptions=False, api_keys=f"{KEY},{SECOND_KEY}", rate_limit_per_minute=3
    ) as client:
        statuses = [
            client.post("/translate", json={**BODY, "api_key": KEY}).status_code,
            client.post("/translate", data={**BODY, "api_key": SECOND_KEY}).status_code,
            client.post("/translate", json=BODY, headers={"Authorization": f"Bearer {KEY}"}).status_code,
            client.post("/translate", json={"api_key": KEY, "q": 5}).status_code,
            client.post("/translate", json=BODY, headers={"X-API-Key": KEY}).status_code,
            client.post(f"/translate?api_key={KEY}", json=BODY).status_code,
            client.post("/translate", json={**BODY, "api_key": KEY[:-1]}).status_code,
        ]
        metrics = client.get("/metrics").text
    assert statuses == [200, 200, 200, 400, 429, 403, 403]
    server_logs = "\n".join(
        r.getMessage() for r in caplog.records if not r.name.startswith("httpx")
    )  # not the client's
    assert "API key required (2 keys), at most 3 requests per minute per key" in server_logs
    assert 'status="429"' in metrics
    for key in (KEY, SECOND_KEY):
        assert key not in server_logs
        assert key not in metrics


def test_the_access_log_masks_a_key_in_the_url() -> None:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "POST", f"/translate?x=1&api_key={KEY}&API%5FKEY={KEY}&y=2&%61pi_k%65y={KEY}", "1.1", 403),
        None,
    )  # fmt: skip
    assert RedactKeysInUrls().filter(record)
    assert record.getMessage() == (
        '127.0.0.1:5000 - "POST /translate?x=1&api_key=[redacted]&API%5FKEY=[redacted]&y=2&%61pi_k%65y=[redacted] '
        'HTTP/1.1" 403'
    )


def test_the_real_server_takes_a_libretranslate_clients_key_and_logs_no_key(models_dir: Path) -> None:
    libretranslatepy = pytest.importorskip("libretranslatepy")
    server = start_server(models_dir, stdout=subprocess.PIPE, MT_API_KEYS=KEY)
    try:
        with_key = libretranslatepy.LibreTranslateAPI(server.url, api_key=KEY)
        assert with_key.translate("alpha bravo golf", "src", "tgt") == "GOLF BRAVO ALPHA"
        with pytest.raises(urllib.error.HTTPError) as refused:
            libretranslatepy.LibreTranslateAPI(server.url).translate("alpha bravo golf", "src", "tgt")
        assert refused.value.code == 403
        with pytest.raises(urllib.error.HTTPError) as in_url:
            urllib.request.urlopen(urllib.request.Request(f"{server.url}/translate?api_key={KEY}", data=b"q=a"))
        assert in_url.value.code == 403
    finally:
        server.process.terminate()
        out, err = server.process.communicate(timeout=30)
    logs = out.decode() + err.decode()
    assert "POST /translate?api_key=[redacted] HTTP/1.1" in logs
    assert "API key required (1 key)" in logs
    assert KEY not in logs


# --- CORS -----------------------------------------------------------------------------------------------

PREFLIGHT = {
    "Origin": "https://app.example",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "content-type, x-api-key",
}


def test_cors_is_off_by_default(client: TestClient) -> None:
    preflight = client.options("/translate", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in preflight.headers
    response = client.post("/translate", json=BODY, headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in response.headers


def test_configured_origins_may_call_the_api_and_read_its_errors(models_dir: Path) -> None:
    origins = "https://app.example, https://other.example"
    with client_for(models_dir, cors_origins=origins, api_keys=KEY) as client:
        preflight = client.options("/translate", headers=PREFLIGHT)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-api-key" in preflight.headers["access-control-allow-headers"].lower()
        denied = client.post("/translate", json=BODY, headers={"Origin": "https://app.example"})
        assert denied.status_code == 403
        assert denied.headers["access-control-allow-origin"] == "https://app.example"
        assert "retry-after" in denied.headers["access-control-expose-headers"].lower()
        stranger = client.options("/translate", headers={**PREFLIGHT, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in stranger.headers


def test_a_star_lets_pages_from_any_origin_call_the_api(models_dir: Path) -> None:
    with client_for(models_dir, cors_origins="*") as client:
        for origin in ("https://app.example", "http://localhost:5173"):
            preflight = client.options("/translate", headers={**PREFLIGHT, "Origin": origin})
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] in ("*", origin)
            response = client.post("/translate", json=BODY, headers={"Origin": origin})
            assert response.status_code == 200
            assert response.headers["access-control-allow-origin"] in ("*", origin)


def test_a_page_can_read_an_internal_error_too(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 500 carries the CORS headers like any other answer: without them the browser hides it from the page."""
    with client_for(models_dir, cors_origins="https://app.example", raise_server_exceptions=False) as client:
        translator = client.app.state.service.models[("src", "tgt")].translator  # type: ignore[attr-defined]

        def broken(sources: list[list[int]], decode: object, *, deadline: float) -> list[object]:
            raise RuntimeError("secret internals")

        monkeypatch.setattr(translator, "translate_encoded", broken)
        response = client.post("/translate", json=BODY, headers={"Origin": "https://app.example"})
        assert response.status_code == 500
        assert response.json() == {"error": "internal server error"}
        assert response.headers["access-control-allow-origin"] == "https://app.example"
