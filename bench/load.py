"""Load on the HTTP service: N concurrent clients, each sending one sentence per request, for a fixed
time or number of requests; localhost only, and it stops by itself.

    python bench/load.py --clients 1 8 32 --seconds 60          # starts `mt serve --models models`
    python bench/load.py --clients 32 --requests 10000          # memory over 10,000 requests
    python bench/load.py --clients 200 --seconds 30 --env MT_MAX_QUEUED_SENTENCES=64   # over capacity

It starts the server itself (so it can read its memory) unless given --url. For each client count it
prints requests/s, p50/p95/p99 latency, the batch sizes the server formed (from /metrics), answers
shed with 503/429 (each must carry Retry-After), and errors: anything else that is not a 200, or a
connection failure. The server's resident memory is printed at start, after warm-up and at the end.

With --offline it also translates the whole file at once in this process (in int8 or bf16 when --env
sets MT_INT8 or MT_BF16), while the server is idle, before each client count and after the last: the
offline batch rate of the same model and settings, measured in the same minutes as the load (this
machine's speed drifts by 20% within half an hour).
Each client count's requests/s is then also given as a share of the mean of the offline rates
measured just before and just after it. So are, beside it, the rate of shuffled test sentences in
batches as large as that many clients make (1 client, 1 sentence; 32 clients, 32), without HTTP, and
the requests/s as a share of that: what the server loses to unsorted batches, and what to the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from machine import at_least, cpu_seconds, describe, rss_mib, speed

from app.settings import Settings
from mt.translator import Translator


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)  # seconds, of 200 answers
    shed: int = 0  # 503/429 with Retry-After: the server refused load it could not take
    errors: Counter[str] = field(default_factory=Counter)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(models: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [sys.executable, "-m", "mt", "serve", "--models", models, "--port", str(port)]
    # stdout carries uvicorn's access log, a line per request, which would bury the figures; the server's
    # own messages and errors go to stderr and still show
    process = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1):
                return process, url
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit("the server did not answer /health within 120 s")


def batch_stats(url: str) -> tuple[float, float]:
    """Batches decoded so far and the sentences in them, from the server's Prometheus metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()

    def total(name: str) -> float:
        return sum(float(line.split()[-1]) for line in lines if line.startswith(name))

    return total("mt_batch_sentences_count"), total("mt_batch_sentences_sum")


async def client(
    http: aiohttp.ClientSession, url: str, body: dict[str, str], sentences: Iterator[str], stop: StopAt, tally: Tally
) -> None:
    while stop.more():
        start = time.perf_counter()
        try:
            async with http.post(f"{url}/translate", json={**body, "q": next(sentences)}) as response:
                answer = await response.json(content_type=None)
                status, retry_after = response.status, response.headers.get("Retry-After")
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
            tally.errors[type(error).__name__] += 1
            continue
        if status == 200 and "translatedText" in answer:
            tally.latencies.append(time.perf_counter() - start)
        elif status in (429, 503) and retry_after is not None:
            tally.shed += 1
            await asyncio.sleep(float(retry_after))
        else:
            tally.errors[f"HTTP {status}"] += 1


class StopAt:
    """Stops the clients after a time or a number of requests, whichever is given."""

    def __init__(self, seconds: float, requests: int) -> None:
        self.end = time.monotonic() + seconds if seconds else float("inf")
        self.left = requests or -1

    def more(self) -> bool:
        if self.left == 0 or time.monotonic() >= self.end:
            return False
        self.left -= 1
        return True


async def run(url: str, clients: int, body: dict[str, str], sentences: list[str], stop: StopAt) -> Tally:
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=clients)  # one keep-alive connection per client
    # one stream of sentences for all clients: concurrent requests carry different sentences, as on a
    # real server, not the same one (a batch of copies of one sentence wastes no steps on padding)
    stream = itertools.cycle(sentences)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as http:
        await asyncio.gather(*(client(http, url, body, stream, stop, tally) for _ in range(clients)))
    return tally


def offline_rate(translator: Translator, sentences: list[str]) -> float:
    """Sentences/s translating all of `sentences` at once, with the model's own decoding settings."""
    start = time.perf_counter()
    translator.translate(sentences)
    return len(sentences) / (time.perf_counter() - start)


def random_rate(translator: Translator, sentences: list[str], size: int, count: int = 320) -> float:
    """Sentences/s translating `count` of `sentences` in a fixed random order, `size` at a time: what a
    server's batches of `size` random sentences run at, without HTTP."""
    sample = random.Random(0).sample(sentences, min(count, len(sentences)))
    start = time.perf_counter()
    for first in range(0, len(sample), size):
        translator.translate(sample[first : first + size])
    return len(sample) / (time.perf_counter() - start)


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=at_least(1), nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=0, help="per client count (default: 60 unless --requests)")
    parser.add_argument("--requests", type=at_least(0), default=0, help="per client count, instead of --seconds")
    parser.add_argument("--url", help="a running server (then its memory is not read)")
    parser.add_argument("--models", default="models")
    parser.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE", help="server environment, e.g. MT_*")
    parser.add_argument("--source", default="de")
    parser.add_argument("--target", default="en")
    parser.add_argument("--data", default="../shared/data/multi30k/test.jsonl", help="sentences to send")
    parser.add_argument(
        "--offline", action="store_true", help="also the offline batch rate of the same sentences, around each run"
    )
    args = parser.parse_args()
    seconds = args.seconds or (0 if args.requests else 60)

    rows = [json.loads(line) for line in Path(args.data).read_text(encoding="utf-8").splitlines() if line.strip()]
    sentences = [row[args.source] for row in rows]
    body = {"source": args.source, "target": args.target}
    env = dict(e.split("=", 1) for e in args.env)
    process, url = (None, args.url) if args.url else start_server(args.models, env)
    try:
        print(describe())
        print(speed())  # with the server idle
        print(f"server: {url}{' ' + ' '.join(args.env) if args.env else ''}; one sentence per request")
        if process:
            print(f"server memory at start: {rss_mib(process.pid):.0f} MiB")
        asyncio.run(run(url, 4, body, sentences, StopAt(0, 200)))  # warm-up
        if process:
            warm = rss_mib(process.pid)
            print(f"server memory after 200 warm-up requests: {warm:.0f} MiB")
        offline = None
        server = Settings(
            **{key.removeprefix("MT_").lower(): value for key, value in env.items() if key.startswith("MT_")}
        )
        if args.offline:
            offline = Translator.from_dir(
                Path(args.models) / f"{args.source}-{args.target}", device="cpu", int8=server.int8, bf16=server.bf16
            )
            offline.translate(sentences[:64])  # warm-up
            rate = offline_rate(offline, sentences)
            print(f"offline: {rate:.1f} sentences/s, {len(sentences)} sentences at once")
        header = (
            "clients  requests  req/s   p50 ms  p95 ms  p99 ms  mean batch  server MiB  server CPU  client CPU  "
            "shed  errors"
        )
        print(header + ("  offline/s  share  random/s  share" if offline else ""))
        for clients in args.clients:
            batch = min(clients, server.max_batch_sentences)
            unsorted = random_rate(offline, sentences, batch) if offline else 0.0
            batches, in_batches = batch_stats(url)
            start, client_cpu = time.perf_counter(), time.process_time()
            server_cpu = cpu_seconds(process.pid) if process else 0.0
            tally = asyncio.run(run(url, clients, body, sentences, StopAt(seconds, args.requests)))
            elapsed = time.perf_counter() - start
            client_cpu = (time.process_time() - client_cpu) / elapsed  # cores busy on average
            server_cpu = (cpu_seconds(process.pid) - server_cpu) / elapsed if process else float("nan")
            batches, in_batches = (a - b for a, b in zip(batch_stats(url), (batches, in_batches), strict=True))
            ok = tally.latencies or [float("nan")]
            share = ""
            if offline:
                before, rate = rate, offline_rate(offline, sentences)
                reference = (before + rate) / 2
                unsorted = (unsorted + random_rate(offline, sentences, batch)) / 2
                served = len(tally.latencies) / elapsed
                share = f"  {reference:9.1f}  {served / reference:5.0%}  {unsorted:8.1f}  {served / unsorted:5.0%}"
            print(
                f"{clients:7d}  {len(tally.latencies):8d}  {len(tally.latencies) / elapsed:5.1f}  "
                f"{percentile(ok, 50) * 1000:7.0f} {percentile(ok, 95) * 1000:7.0f} {percentile(ok, 99) * 1000:7.0f}  "
                f"{in_batches / batches if batches else 0:10.1f}  {rss_mib(process.pid) if process else 0:10.0f}  "
                f"{server_cpu:10.2f}  {client_cpu:10.2f}  "
                f"{tally.shed:4d}  "
                f"{sum(tally.errors.values()):6d}{' ' + str(dict(tally.errors)) if tally.errors else ''}{share}"
            )
        if process:
            end = rss_mib(process.pid)
            print(f"server memory at the end: {end:.0f} MiB ({end - warm:+.0f} MiB since warm-up)")
        print(speed())
    finally:
        if process:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
