"""Bounded load: a full queue and a spent time budget are answered 503 with Retry-After, at once."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app import batcher as batcher_module
from app.batcher import RETURN_SECONDS, Batcher, Overloaded, TextTooLong, _Job
from app.settings import Settings
from mt.config import DecodeConfig
from mt.search import Hypothesis, SearchTimeout
from mt.translator import Translation, Translator

from .conftest import client_for, hold_decoding, post_and_leave

REQUEST = {"q": ["alpha bravo golf", "kilo lima echo"], "source": "src", "target": "tgt"}


def test_a_request_the_full_queue_refuses_is_503_with_retry_after(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The route's answer to Overloaded (the queue's own bound: test_queue_refuses_beyond_its_bound_and_drains)."""
    with client_for(models_dir) as client:
        batcher = client.app.state.service.batchers[("src", "tgt")]  # type: ignore[attr-defined]

        async def full(texts: list[str], decode: DecodeConfig, **options: object) -> list[Translation]:
            raise Overloaded("64 sentences are waiting; at most 64 may wait")

        with monkeypatch.context() as patch:
            patch.setattr(batcher, "translate", full)
            response = client.post("/translate", json=REQUEST)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert "the server is busy (64 sentences are waiting; at most 64 may wait)" in response.json()["error"]
        assert client.post("/translate", json=REQUEST).status_code == 200


def test_the_servers_queue_bound_sheds_load_with_503_and_serves_the_rest(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MT_MAX_QUEUED_SENTENCES reaches the server's batcher: with one decode held and 2 sentences
    waiting, a third is refused at once, and the held and waiting ones are then translated."""
    with client_for(models_dir, max_queued_sentences=2) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        decoding, release = hold_decoding(service.models[("src", "tgt")].translator, monkeypatch)
        post = functools.partial(client.post, "/translate")
        with ThreadPoolExecutor(max_workers=2) as pool:
            first = pool.submit(post, json={**REQUEST, "q": "alpha bravo golf"})
            assert decoding.wait(timeout=30)  # taken from the queue, decoding
            waiting = pool.submit(post, json=REQUEST)  # 2 sentences: the queue is full
            for _ in range(3000):
                if service.batchers[("src", "tgt")].queued_sentences == 2:
                    break
                time.sleep(0.01)
            refused = post(json={**REQUEST, "q": "kilo lima echo"})
            assert refused.status_code == 503
            assert refused.headers["Retry-After"] == "1"
            assert "2 sentences are waiting; at most 2 may wait" in refused.json()["error"]
            release.set()
            assert first.result(timeout=30).json() == {"translatedText": "GOLF BRAVO ALPHA"}
            assert waiting.result(timeout=30).json() == {"translatedText": ["GOLF BRAVO ALPHA", "ECHO LIMA KILO"]}


def test_a_request_whose_client_left_while_it_waited_is_never_decoded(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one decode held, a second client sends its request and disconnects: once the held decode
    ends, the second request is answered 499 (to no one), and its sentence is never decoded."""
    monkeypatch.setattr(batcher_module, "CHECK_CLIENT_AFTER_SECONDS", 0.0)  # ask of every request, at once
    with client_for(models_dir) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        translator = service.models[("src", "tgt")].translator
        decoding, release = hold_decoding(translator, monkeypatch)
        decoded: list[list[list[int]]] = []
        held = translator.translate_encoded

        def recorded(sources: list[list[int]], decode: DecodeConfig, *, deadline: float) -> list[Translation]:
            decoded.append(sources)
            return held(sources, decode, deadline=deadline)  # type: ignore[no-any-return]

        monkeypatch.setattr(translator, "translate_encoded", recorded)
        body = json.dumps({**REQUEST, "q": "kilo lima echo"}).encode()
        messages: list[dict[str, Any]] = [  # the whole body, then the client is gone
            {"type": "http.request", "body": body, "more_body": False},
            {"type": "http.disconnect"},
        ]
        with ThreadPoolExecutor(max_workers=2) as pool:
            first = pool.submit(client.post, "/translate", json={**REQUEST, "q": "alpha bravo golf"})
            assert decoding.wait(timeout=30)
            gone = pool.submit(post_and_leave, client, messages)
            for _ in range(3000):
                if service.batchers[("src", "tgt")].queued_sentences == 1:
                    break
                time.sleep(0.01)
            release.set()
            assert first.result(timeout=30).json() == {"translatedText": "GOLF BRAVO ALPHA"}
            statuses = gone.result(timeout=30)
        assert statuses == [499]
        assert client.post("/translate", json={**REQUEST, "q": "echo"}).status_code == 200
        assert decoded == [translator.encode(["alpha bravo golf"]), translator.encode(["echo"])]
        assert 'mt_requests_total{route="/translate",status="499"} 1.0' in client.get("/metrics").text


def test_a_request_past_its_time_budget_is_503_and_the_worker_lives_on(models_dir: Path) -> None:
    with client_for(models_dir, request_timeout_s=1e-9) as client:  # over before the batch is decoded
        response = client.post("/translate", json=REQUEST)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert "time budget of 1e-09 s" in response.json()["error"]
        batcher = client.app.state.service.batchers[("src", "tgt")]  # type: ignore[attr-defined]
        batcher._timeout = 30.0  # the next request has time: the same worker decodes it
        assert client.post("/translate", json=REQUEST).status_code == 200


class SlowTranslator:
    """Blocks in translate() until released, like a long decode; then honours the deadline."""

    def __init__(self, translator: Translator) -> None:
        self.translator, self.release, self.calls = translator, threading.Event(), 0
        self.released: list[bool] = []  # per call: released by the test (True) or by the 10-s fallback

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.translator.encode(texts)

    def translate_encoded(
        self, sources: list[list[int]], decode: DecodeConfig, *, deadline: float
    ) -> list[Translation]:
        self.calls += 1
        self.released.append(self.release.wait(timeout=10))
        return self.translator.translate_encoded(sources, decode, deadline=deadline)


def test_queue_refuses_beyond_its_bound_and_drains(models_dir: Path) -> None:
    slow = SlowTranslator(Translator.from_dir(models_dir / "src-tgt", device="cpu"))

    async def scenario() -> tuple[list[list[Translation] | BaseException], int]:
        batcher = Batcher(slow, max_sentences=1, wait_seconds=0.0, max_queued_sentences=2)  # type: ignore[arg-type]
        batcher.start()
        first = asyncio.create_task(batcher.translate(["alpha bravo"], DecodeConfig()))
        await asyncio.sleep(0.05)  # the first request is being decoded: it left the queue
        waiting = [asyncio.create_task(batcher.translate([t], DecodeConfig())) for t in ("kilo lima", "echo golf")]
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded):
            await batcher.translate(["india juliet"], DecodeConfig())
        slow.release.set()
        results = await asyncio.gather(first, *waiting, return_exceptions=True)
        queued = batcher.queued_sentences
        await batcher.close()
        return results, queued

    results, queued = asyncio.run(scenario())
    expected = [t.text for t in slow.translator.translate(["alpha bravo", "kilo lima", "echo golf"])]
    assert [r[0].text for r in results] == expected  # type: ignore[index]
    assert queued == 0


def test_requests_whose_budget_ran_out_while_waiting_are_not_decoded(models_dir: Path) -> None:
    slow = SlowTranslator(Translator.from_dir(models_dir / "src-tgt", device="cpu"))

    async def scenario() -> list[list[Translation] | BaseException]:
        batcher = Batcher(slow, max_sentences=1, wait_seconds=0.0, timeout_seconds=0.3)  # type: ignore[arg-type]
        batcher.start()
        tasks = [asyncio.create_task(batcher.translate([t], DecodeConfig())) for t in ("alpha bravo", "kilo lima")]
        await asyncio.sleep(0.5)  # both budgets run out while the first decode blocks
        slow.release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.close()
        return results

    first, second = asyncio.run(scenario())
    assert isinstance(first, SearchTimeout)  # stopped at its first step past the deadline
    assert isinstance(second, SearchTimeout)  # never decoded
    assert slow.calls == 1
    assert slow.released == [True]  # the one decode waited for the test, not for the fallback


def test_requests_that_queued_during_a_decode_are_decoded_together_without_waiting(models_dir: Path) -> None:
    slow = SlowTranslator(Translator.from_dir(models_dir / "src-tgt", device="cpu"))

    async def scenario() -> list[list[Translation] | BaseException]:
        batcher = Batcher(slow, max_sentences=8, wait_seconds=0.0)  # type: ignore[arg-type]
        batcher.start()
        first = asyncio.create_task(batcher.translate(["alpha bravo"], DecodeConfig()))
        await asyncio.sleep(0.05)  # the first request is being decoded
        queued = [asyncio.create_task(batcher.translate([t], DecodeConfig())) for t in ("kilo lima", "echo golf")]
        await asyncio.sleep(0.05)
        slow.release.set()
        results = await asyncio.gather(first, *queued, return_exceptions=True)
        await batcher.close()
        return results

    results = asyncio.run(scenario())
    expected = [t.text for t in slow.translator.translate(["alpha bravo", "kilo lima", "echo golf"])]
    assert [r[0].text for r in results] == expected  # type: ignore[index]
    assert slow.calls == 2  # the two that waited went in one batch, though the batch waits 0 s for more


def test_a_request_with_a_text_over_the_piece_limit_is_refused_and_its_batch_decoded(models_dir: Path) -> None:
    slow = SlowTranslator(Translator.from_dir(models_dir / "src-tgt", device="cpu"))
    slow.release.set()
    too_long = ["alpha", "alpha bravo golf kilo lima echo"]

    async def scenario() -> list[list[Translation] | BaseException]:
        batcher = Batcher(slow, max_sentences=8, wait_seconds=0.05, max_pieces=5)  # type: ignore[arg-type]
        batcher.start()
        requests = [batcher.translate(texts, DecodeConfig()) for texts in (["kilo lima"], too_long, ["echo golf"])]
        results = await asyncio.gather(*requests, return_exceptions=True)
        await batcher.close()
        return results

    first, refused, last = asyncio.run(scenario())
    assert isinstance(refused, TextTooLong)
    assert (refused.index, refused.limit) == (1, 5)
    assert refused.pieces == len(slow.translator.encode(too_long[1:])[0]) - 1  # without </s>
    expected = [t.text for t in slow.translator.translate(["kilo lima", "echo golf"])]
    assert [first[0].text, last[0].text] == expected  # type: ignore[index]
    assert slow.calls == 1  # the other two were decoded together


def test_a_text_the_tokenizer_cannot_take_fails_its_request_alone(models_dir: Path) -> None:
    slow = SlowTranslator(Translator.from_dir(models_dir / "src-tgt", device="cpu"))
    slow.release.set()
    real_encode = slow.encode

    def encode(texts: list[str]) -> list[list[int]]:
        if "boom" in texts:
            raise TypeError("List elements must be str or bytes")  # what SentencePiece says of a lone surrogate
        return real_encode(texts)

    slow.encode = encode  # type: ignore[method-assign]

    async def scenario() -> list[list[Translation] | BaseException]:
        batcher = Batcher(slow, max_sentences=8, wait_seconds=0.05)  # type: ignore[arg-type]
        batcher.start()
        requests = [batcher.translate(texts, DecodeConfig()) for texts in (["kilo lima"], ["boom"], ["echo golf"])]
        results = await asyncio.gather(*requests, return_exceptions=True)
        await batcher.close()
        return results

    first, failed, last = asyncio.run(scenario())
    assert isinstance(failed, TypeError)
    expected = [t.text for t in slow.translator.translate(["kilo lima", "echo golf"])]
    assert [first[0].text, last[0].text] == expected  # type: ignore[index]
    assert slow.calls == 1  # the other two were decoded together


def test_a_lone_request_is_not_held_for_the_batch_wait(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slow = SlowTranslator(Translator.from_dir(models_dir / "src-tgt", device="cpu"))
    slow.release.set()
    waits: list[float] = []  # the batcher's timed waits for more requests
    real_wait_for = asyncio.wait_for

    async def recorded_wait_for(awaitable: Awaitable[_Job], timeout: float) -> _Job:
        waits.append(timeout)
        return await real_wait_for(awaitable, timeout)

    monkeypatch.setattr(asyncio, "wait_for", recorded_wait_for)

    async def scenario() -> list[list[Translation]]:
        batcher = Batcher(slow, max_sentences=8, wait_seconds=30.0)  # type: ignore[arg-type]
        batcher.start()
        # one request in flight: nothing to wait for, so neither waits at all
        results = [await batcher.translate([t], DecodeConfig()) for t in ("alpha", "kilo")]
        await batcher.close()
        return results

    first, second = asyncio.run(scenario())
    assert [first[0].text, second[0].text] == [t.text for t in slow.translator.translate(["alpha", "kilo"])]
    assert slow.calls == 2
    assert waits == []


def test_a_lone_request_after_a_burst_is_not_held_for_the_bursts_clients(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three clients were answered together, then went quiet: a request that comes long after is
    decoded at once, not held for the wait as if the other two were coming straight back."""
    slow = SlowTranslator(Translator.from_dir(models_dir / "src-tgt", device="cpu"))
    slow.release.set()
    waits: list[float] = []
    real_wait_for = asyncio.wait_for

    async def recorded_wait_for(awaitable: Awaitable[_Job], timeout: float) -> _Job:
        waits.append(timeout)
        return await real_wait_for(awaitable, timeout)

    monkeypatch.setattr(asyncio, "wait_for", recorded_wait_for)
    texts = ["alpha bravo", "kilo lima", "echo golf"]

    async def scenario() -> list[Translation]:
        batcher = Batcher(slow, max_sentences=8, wait_seconds=0.3)  # type: ignore[arg-type]
        batcher.start()
        await asyncio.gather(*(batcher.translate([t], DecodeConfig()) for t in texts))  # one batch of 3
        await asyncio.sleep(0.3 + RETURN_SECONDS + 0.3)
        waits.clear()
        result = await batcher.translate(["alpha"], DecodeConfig())
        await batcher.close()
        return result

    [translation] = asyncio.run(scenario())
    assert translation.text == slow.translator.translate(["alpha"])[0].text
    assert waits == []


def test_a_batch_waits_for_as_many_sentences_as_were_in_flight_before(models_dir: Path) -> None:
    slow = SlowTranslator(Translator.from_dir(models_dir / "src-tgt", device="cpu"))
    slow.release.set()
    texts = ["alpha bravo", "kilo lima", "echo golf"]

    async def scenario() -> list[list[Translation]]:
        batcher = Batcher(slow, max_sentences=8, wait_seconds=30.0)  # type: ignore[arg-type]
        batcher.start()
        await asyncio.gather(*(batcher.translate([t], DecodeConfig()) for t in texts))  # one batch of 3
        # three clients again, one a little ahead of the others: the batch waits for all three
        first = asyncio.create_task(batcher.translate([texts[0]], DecodeConfig()))
        await asyncio.sleep(0.2)
        rest = [batcher.translate([t], DecodeConfig()) for t in texts[1:]]
        results = await asyncio.wait_for(asyncio.gather(first, *rest), 10)
        await batcher.close()
        return results

    results = asyncio.run(scenario())
    assert [r[0].text for r in results] == [t.text for t in slow.translator.translate(texts)]
    assert slow.calls == 2


@pytest.mark.parametrize(("model_batch", "max_sentences", "searched"), [(64, 2, 2), (1, 2, 1)])
def test_a_batch_is_searched_at_most_max_sentences_at_a_time(
    models_dir: Path, model_batch: int, max_sentences: int, searched: int
) -> None:
    slow = SlowTranslator(Translator.from_dir(models_dir / "src-tgt", device="cpu"))
    slow.release.set()
    texts = ["alpha bravo", "kilo lima", "echo golf", "alpha", "kilo"]
    searches: list[int] = []  # sentences in each search the translator runs
    real_search = slow.translator._search

    def recorded(sources: list[list[int]], decode: DecodeConfig, deadline: float | None) -> list[list[Hypothesis]]:
        searches.append(len(sources))
        return real_search(sources, decode, deadline)

    slow.translator._search = recorded  # type: ignore[method-assign]

    async def scenario() -> list[Translation]:
        batcher = Batcher(slow, max_sentences=max_sentences, wait_seconds=0.0)  # type: ignore[arg-type]
        batcher.start()
        result = await batcher.translate(texts, DecodeConfig(batch_size=model_batch))  # one request over the bound
        await batcher.close()
        return result

    result = asyncio.run(scenario())
    # the batcher's bound, or the model's own batch size if smaller
    assert searches == [min(searched, len(texts) - start) for start in range(0, len(texts), searched)]
    assert [t.text for t in result] == [t.text for t in slow.translator.translate(texts)]


def test_a_batch_bound_below_one_sentence_is_refused() -> None:
    with pytest.raises(ValidationError, match="max_batch_sentences"):
        Settings(max_batch_sentences=0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_texts": 0}, "max_texts"),
        ({"max_queued_sentences": 0}, "max_queued_sentences"),
        ({"request_timeout_s": 0}, "request_timeout_s"),
        (
            {"max_alternatives": 12, "max_beam_size": 10},
            r"MT_MAX_ALTERNATIVES \+ 1 \(13\) is over MT_MAX_BEAM_SIZE \(10\)",
        ),
        ({"default_beam_size": 12}, r"MT_DEFAULT_BEAM_SIZE \(12\) is over MT_MAX_BEAM_SIZE \(10\)"),
    ],
)
def test_limits_no_request_could_meet_are_refused_by_name(settings: dict[str, float], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**settings)  # type: ignore[arg-type]
