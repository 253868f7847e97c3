from __future__ import annotations

import pytest

from app.rate_limit import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_minutes_allowance_goes_at_once_then_one_request_per_refill() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_minute=3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(20.0)  # 60 s / 3 requests
    clock.now += 19.0
    assert limiter.take("a") == pytest.approx(1.0)
    clock.now += 1.0
    assert limiter.take("a") == 0.0


def test_an_idle_client_gets_no_more_than_a_full_bucket() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_minute=2, clock=clock)
    limiter.take("a")
    clock.now += 3600.0
    assert [limiter.take("a") for _ in range(3)] == pytest.approx([0.0, 0.0, 30.0])


def test_clients_have_their_own_budgets() -> None:
    limiter = RateLimiter(per_minute=1, clock=FakeClock())
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    assert limiter.take("b") == 0.0


def test_100k_distinct_clients_keep_memory_bounded_and_forget_the_least_recent() -> None:
    limiter = RateLimiter(per_minute=1, max_clients=1000, clock=FakeClock())
    limiter.take("regular")
    for i in range(100_000):
        limiter.take(f"client-{i}")
        if i % 500 == 0:
            limiter.take("regular")  # seen often, so never the least recent
        assert len(limiter) <= 1000
    assert limiter.take("regular") > 0  # still remembered: its budget is spent
    assert limiter.take("client-0") == 0.0  # forgotten long ago: starts afresh


def test_the_least_recently_seen_client_is_forgotten_not_the_first_seen() -> None:
    limiter = RateLimiter(per_minute=1, max_clients=3, clock=FakeClock())
    for client in ("a", "b", "c", "a", "d"):  # a seen again after b and c: b is now the least recent
        limiter.take(client)
    assert limiter.take("a") > 0  # remembered: its budget is spent
    assert limiter.take("b") == 0.0  # forgotten: starts afresh


def test_ten_thousand_clients_are_remembered_by_default() -> None:
    limiter = RateLimiter(per_minute=1, clock=FakeClock())
    for i in range(10_001):
        limiter.take(f"client-{i}")
    assert len(limiter) == 10_000
    assert limiter.take("client-1") > 0 and limiter.take("client-0") == 0.0


def test_a_limit_below_one_request_per_minute_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1 request per minute"):
        RateLimiter(per_minute=0)
