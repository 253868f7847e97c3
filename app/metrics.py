"""Prometheus metrics of one app instance (own registry, so several apps can live in one process)."""

from __future__ import annotations

import time
from collections.abc import Collection

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mt_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "mt_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.batch_sentences = Histogram(
            "mt_batch_sentences",
            "sentences of the requests decoded together in one batch (searched MT_MAX_BATCH_SENTENCES at a time)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.sentences = Counter(
            "mt_sentences_translated", "sentences translated, by language pair", ["pair"], registry=self.registry
        )


class ObserveRequests:
    """ASGI middleware that counts each HTTP request by route and status and times it, to the end of
    its response. (Starlette's `@app.middleware("http")` would run each request in tasks and streams
    of its own, work on the event loop that the torch thread waits on for the GIL.)"""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, paths: Collection[str] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = frozenset(paths)  # the app's routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # unless a response starts: an unhandled error is answered 500

        async def observing_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        finally:
            route = getattr(scope.get("route"), "path", None)  # the router puts the matched route in the scope
            if route is None:  # answered before routing (a declared body over the limit): by its path if a route's
                route = scope["path"] if scope["path"] in self.paths else "other"
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
