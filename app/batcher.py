"""Micro-batching: sentences from concurrent requests to one model are decoded together on the torch
thread, so the event loop stays free and throughput under concurrency is that of batch translation.
Each request gets exactly its own translations back, in order.

A batch takes every request already queued, then waits a few milliseconds at most for as many
sentences as were in flight (answered or waiting) when the last decode ended, unless its first request
came so long after that end that those clients cannot be coming straight back: a lone client is never
held, not even after a burst, and 8 clients whose answers left together are decoded together again
rather than in halves.
Alternating 20-s runs against always waiting for a full batch: 1 client 47.1 and 47.3 requests/s
against 38.0 and 38.2, 8 clients 143.2 and 147.2 against 136.5 and 139.2, 32 clients the same.

Load is bounded: a request that would take the queue past its limit is refused at once (Overloaded),
and each request has a time budget, counted from its arrival, that covers waiting and decoding. A
request whose budget ran out while it waited is not decoded; a decode that runs past the budget of
every request in it is stopped (SearchTimeout), so no worker is held by one pathological batch.

Texts are tokenized on the torch thread too, a batch at a time, and a request with a text over the
piece limit is refused there (TextTooLong). Tokenized on the event loop, one request at a time, they
held up request handling: at 32 clients py-spy found the event loop in SentencePiece 21% of the time,
and alternating 25-s runs served 139.6-144.2 requests/s with it there, 150.5-155.2 with it here."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app.torch_thread import TORCH_THREAD
from mt.config import DecodeConfig
from mt.search import SearchTimeout
from mt.translator import Translation, Translator

log = logging.getLogger(__name__)

# After a decode, the time its answers take to leave and its clients' next requests to come in: about 15
# ms for 32 clients (0.43 ms of the event loop a request). Clients not back by then have gone quiet.
RETURN_SECONDS = 0.1
# A request that has waited this long has its client asked whether it is still there before it is decoded:
# clients that give up do so after seconds. Asking every request (Starlette's `is_disconnected`, on the
# event loop while the decoder waits for it) served 4% fewer requests/s at 32 clients.
CHECK_CLIENT_AFTER_SECONDS = 1.0


class Overloaded(RuntimeError):
    """The queue is full: the request is refused rather than queued without bound."""


class ClientGone(RuntimeError):
    """The request's client disconnected while it waited: it was not decoded."""


class TextTooLong(ValueError):
    """A text of the request is longer in subword pieces than the server takes."""

    def __init__(self, index: int, pieces: int, limit: int) -> None:
        super().__init__(f"text {index} is {pieces} subword pieces long; at most {limit} per text")
        self.index, self.pieces, self.limit = index, pieces, limit


async def _present() -> bool:
    return False


@dataclass
class _Job:
    texts: list[str]
    decode: DecodeConfig
    future: asyncio.Future[list[Translation]]
    deadline: float  # time.monotonic() by which the request wants its answer
    client_gone: Callable[[], Awaitable[bool]]
    arrived: float = dataclasses.field(default_factory=time.monotonic)


class Batcher:
    def __init__(
        self,
        translator: Translator,
        *,
        max_sentences: int,
        wait_seconds: float,
        max_queued_sentences: int = 10_000,
        max_pieces: int = 10_000,
        timeout_seconds: float = 60.0,
        on_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self._translator = translator
        self._max_sentences = max_sentences
        self._wait_seconds = wait_seconds
        self._max_queued = max_queued_sentences
        self._max_pieces = max_pieces
        self._timeout = timeout_seconds
        self._on_batch = on_batch
        self._queued = 0  # sentences waiting, not yet decoding
        self._in_flight = 1  # sentences decoded or waiting when the last decode ended: the next batch's aim
        self._decode_ended = float("-inf")  # loop.time() of that end
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    @property
    def queued_sentences(self) -> int:
        return self._queued

    async def translate(
        self, texts: list[str], decode: DecodeConfig, *, client_gone: Callable[[], Awaitable[bool]] = _present
    ) -> list[Translation]:
        """The translations of `texts`; raises Overloaded at once when the queue is full, TextTooLong
        when a text is over the piece limit, SearchTimeout when they cannot be had within the time
        budget, and ClientGone when `client_gone()` says, as their batch is about to be decoded after
        they waited CHECK_CLIENT_AFTER_SECONDS, that no one waits for them any more (Starlette goes on
        running the handler of a client that left)."""
        if not texts:
            return []
        if self._queued + len(texts) > self._max_queued:
            raise Overloaded(f"{self._queued} sentences are waiting; at most {self._max_queued} may wait")
        future: asyncio.Future[list[Translation]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(texts, decode, future, time.monotonic() + self._timeout, client_gone))
        self._queued += len(texts)
        return await future

    async def close(self) -> None:
        """Finish the queued work, then stop."""
        await self._queue.join()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._take()]
            try:
                count = len(jobs[0].texts)
                while count < self._max_sentences and not self._queue.empty():  # what already waits, at once
                    jobs.append(self._take_nowait())
                    count += len(jobs[-1].texts)
                deadline = loop.time() + self._wait_seconds
                returning = loop.time() - self._decode_ended <= self._wait_seconds + RETURN_SECONDS
                wanted = min(self._max_sentences, self._in_flight) if returning else count
                while count < wanted and (timeout := deadline - loop.time()) > 0:
                    try:
                        job = await asyncio.wait_for(self._take(), timeout)
                    except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                        break
                    jobs.append(job)
                    count += len(job.texts)
                await self._decode(jobs)
                self._in_flight, self._decode_ended = count + self._queued, loop.time()
            except Exception as error:  # whatever happens, no request waits forever and the loop lives on
                log.exception("batch of %d requests failed", len(jobs))
                _fail(jobs, error)
            finally:
                for _ in jobs:
                    self._queue.task_done()

    async def _take(self) -> _Job:
        job = await self._queue.get()
        self._queued -= len(job.texts)
        return job

    def _take_nowait(self) -> _Job:
        job = self._queue.get_nowait()
        self._queued -= len(job.texts)
        return job

    async def _decode(self, jobs: list[_Job]) -> None:
        """Decode jobs with equal settings together; hand each job its own slice of the results."""
        groups: dict[tuple[object, ...], list[_Job]] = {}
        asked_after = time.monotonic() - CHECK_CLIENT_AFTER_SECONDS
        for job in jobs:
            if not job.future.done() and job.arrived < asked_after and await job.client_gone():
                job.future.set_exception(ClientGone())
            if not job.future.done():  # a client that went away needs no translation
                groups.setdefault(dataclasses.astuple(job.decode), []).append(job)
        loop = asyncio.get_running_loop()
        for group in groups.values():
            now = time.monotonic()
            late = [job for job in group if job.deadline <= now]
            _fail(late, SearchTimeout("the request's time budget ran out while it waited"))
            group = [job for job in group if job.deadline > now]
            if not group:
                continue
            translate = functools.partial(self._translate, deadline=max(job.deadline for job in group))
            try:
                results = await loop.run_in_executor(TORCH_THREAD, translate, group, group[0].decode)
            except SearchTimeout as error:  # a pathological batch: the worker is free again
                log.warning("decoding %d requests ran past the time budget", len(group))
                _fail(group, error)
                continue
            except Exception as error:  # reported to the requests, which answer 500; the worker lives on
                log.exception("decoding a batch of %d requests failed", len(group))
                _fail(group, error)
                continue
            for job, result in zip(group, results, strict=True):
                if job.future.done():
                    continue
                if isinstance(result, Exception):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def _translate(
        self, jobs: list[_Job], decode: DecodeConfig, *, deadline: float
    ) -> list[list[Translation] | Exception]:
        """On the torch thread: each job's translations, or why it has none. The texts of all jobs are
        tokenized in one call, and those of the jobs within the piece limit decoded as one batch."""
        sources = self._encode(jobs)
        refusals = [s if isinstance(s, Exception) else self._refusal(s) for s in sources]
        accepted = [
            source
            for job_sources, refused in zip(sources, refusals, strict=True)
            if not refused and not isinstance(job_sources, Exception)
            for source in job_sources
        ]
        translations: list[Translation] = []
        if accepted:
            # never more than max_sentences in one search: the largest search's tensors set how far the
            # server's memory grows
            decode = dataclasses.replace(decode, batch_size=min(decode.batch_size, self._max_sentences))
            translations = self._translator.translate_encoded(accepted, decode, deadline=deadline)
            if len(translations) != len(accepted):  # never hand a request someone else's sentences
                raise RuntimeError(f"{len(accepted)} sentences in, {len(translations)} translations out")
            self._on_batch(len(accepted))
        translated = iter(translations)
        return [
            refused or list(itertools.islice(translated, len(job.texts)))
            for job, refused in zip(jobs, refusals, strict=True)
        ]

    def _encode(self, jobs: list[_Job]) -> list[list[list[int]] | Exception]:
        """Each job's source pieces, or the error that tokenizing its texts raised: one request's text the
        tokenizer cannot take fails that request alone, not every request in its batch."""
        try:
            encoded = iter(self._translator.encode([text for job in jobs for text in job.texts]))
            return [list(itertools.islice(encoded, len(job.texts))) for job in jobs]
        except Exception:
            pass  # one job at a time, to find whose texts it was
        results: list[list[list[int]] | Exception] = []
        for job in jobs:
            try:
                results.append(self._translator.encode(job.texts))
            except Exception as error:
                log.exception("tokenizing a request's texts failed")
                results.append(error)
        return results

    def _refusal(self, sources: list[list[int]]) -> TextTooLong | None:
        for index, source in enumerate(sources):
            pieces = len(source) - 1  # without </s>
            if pieces > self._max_pieces:
                return TextTooLong(index, pieces, self._max_pieces)
        return None


def _fail(jobs: list[_Job], error: Exception) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(error)
