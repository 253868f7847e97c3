"""The real server: `mt serve` in a subprocess on a free localhost port."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from mt.translator import Translator

from ..conftest import reverse_task


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(models_dir: Path, stdout: int = subprocess.DEVNULL, **env: str) -> Server:
    """`stdout=subprocess.PIPE` keeps the access log (uvicorn writes it to stdout) for the test to read."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mt", "serve", "--models", str(models_dir), "--port", str(port), "--device", "cpu"],
        env={**os.environ, **env},
        stdout=stdout,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read().decode() if process.stderr else ''}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1):
                return Server(url, process)
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("server did not start within 60 s")


def post(url: str, body: dict[str, object], timeout: float = 60) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        f"{url}/translate", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def server(models_dir: Path) -> Iterator[Server]:
    running = start_server(models_dir, MT_BATCH_WAIT_MS="50")
    yield running
    running.process.terminate()
    running.process.wait(timeout=30)


def test_concurrent_requests_each_get_their_own_answer_and_share_batches(server: Server, models_dir: Path) -> None:
    sentences = [row["src"] for row in reverse_task(24, seed=11)]
    expected = [t.text for t in Translator.from_dir(models_dir / "src-tgt", device="cpu").translate(sentences)]
    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(pool.map(lambda s: post(server.url, {"q": s, "source": "src", "target": "tgt"}), sentences))
    assert [status for status, _ in answers] == [200] * 24
    assert [body["translatedText"] for _, body in answers] == expected

    with urllib.request.urlopen(f"{server.url}/metrics") as response:
        metrics = response.read().decode()
    batches = next(
        float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("mt_batch_sentences_count")
    )
    sentences_in_batches = next(
        float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("mt_batch_sentences_sum")
    )
    assert sentences_in_batches == 24
    assert batches < 24  # several requests were decoded together


def test_concurrent_mixed_requests_each_get_exactly_their_own_translations(server: Server, models_dir: Path) -> None:
    """Different pairs, beam sizes, alternatives and list lengths at once: each answer is what its
    texts translate to alone."""
    rng = random.Random(5)
    translators = {pair: Translator.from_dir(models_dir / pair, device="cpu") for pair in ("src-tgt", "tgt-src")}
    requests = []
    for index in range(48):
        pair = rng.choice(sorted(translators))
        rows = reverse_task(rng.randint(1, 4), seed=100 + index)
        texts = [row["src"] if pair == "src-tgt" else row["tgt"] for row in rows]
        requests.append((pair, texts, rng.choice([1, 2, 5]), rng.choice([0, 1])))

    def send(pair: str, texts: list[str], beam_size: int, alternatives: int) -> tuple[int, dict[str, object]]:
        source, target = pair.split("-")
        body = {"q": texts, "source": source, "target": target, "beam_size": beam_size, "alternatives": alternatives}
        return post(server.url, body)

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda request: send(*request), requests))

    for (pair, texts, beam_size, alternatives), (status, answer) in zip(requests, answers, strict=True):
        assert status == 200
        translator = translators[pair]
        decode = replace(translator.decode, beam_size=max(beam_size, alternatives + 1), n_best=alternatives + 1)
        alone = [translator.translate([text], decode)[0] for text in texts]
        assert answer["translatedText"] == [t.text for t in alone]
        if alternatives:
            assert answer["alternatives"] == [[c.text for c in t.candidates[1:]] for t in alone]


def test_libretranslate_client_gets_a_translation(server: Server) -> None:
    libretranslatepy = pytest.importorskip("libretranslatepy")
    client = libretranslatepy.LibreTranslateAPI(server.url + "/")
    assert client.translate("alpha bravo golf", "src", "tgt") == "GOLF BRAVO ALPHA"
    assert {language["code"] for language in client.languages()} == {"src", "tgt"}


def test_sigterm_lets_the_requests_in_flight_finish(models_dir: Path) -> None:
    running = start_server(models_dir)
    # 16 requests of 100 texts with beam 10, decoded one after another (about 30 ms each): the signal
    # comes as the first is answered, while one decodes and the others wait
    texts = [row["src"] for row in reverse_task(100, seed=12)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        body = {"q": texts, "source": "src", "target": "tgt", "beam_size": 10}
        pending = [pool.submit(post, running.url, body) for _ in range(16)]
        wait(pending, return_when=FIRST_COMPLETED)
        running.process.send_signal(signal.SIGTERM)
        answers = [request.result(timeout=60) for request in pending]
    assert [status for status, _ in answers] == [200] * 16
    assert all(len(body["translatedText"]) == 100 for _, body in answers)  # type: ignore[arg-type]
    # uvicorn re-raises SIGTERM after its graceful shutdown, so a supervisor sees why it stopped
    assert running.process.wait(timeout=30) in (0, -signal.SIGTERM)
    assert running.process.stderr is not None
    log = running.process.stderr.read().decode()
    assert "Waiting for connections to close" in log  # requests were still in flight at the signal
