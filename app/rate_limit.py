"""Per-client request budgets: one token bucket per identity (an API key or a client address).

A bucket holds up to `per_minute` requests and refills at `per_minute / 60` per second, so a client
may send a minute's allowance at once and then one request every `60 / per_minute` seconds. The
buckets live in a bounded LRU: the least recently seen identity is forgotten first, so any number of
distinct clients cannot grow memory without bound. A forgotten client starts again with a full
bucket, which is what an idle one would have had anyway.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float  # clock reading when `tokens` was last brought up to date


class RateLimiter:
    """Not thread-safe: it is used from the event loop only."""

    def __init__(
        self, *, per_minute: int, max_clients: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if per_minute < 1:
            raise ValueError(f"a rate limit needs at least 1 request per minute, not {per_minute}")
        self.per_minute = per_minute
        self.max_clients = max_clients
        self.clock = clock
        self._rate = per_minute / 60  # tokens per second
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, identity: str) -> float:
        """Spend one request of `identity`'s budget: 0.0 if it may go ahead, else the seconds until it may."""
        now = self.clock()
        bucket = self._buckets.pop(identity, None) or _Bucket(float(self.per_minute), now)
        bucket.tokens = min(float(self.per_minute), bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        self._buckets[identity] = bucket  # most recently seen last
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self._rate
