"""The circuit breaker's state machine, on an injected clock: open after N, fail fast, one probe, back off."""

from __future__ import annotations

import threading

import pytest

from notification_service.providers.breaker import (
    MAX_OPEN_SECONDS,
    BreakerRow,
    BreakerState,
    CircuitBreaker,
)
from notification_service.runtime import metrics


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _sample(metric, provider: str) -> float:
    return metric.labels(provider)._value.get()


def _opened(name: str, clock: Clock, failures: int = 3, open_seconds: float = 30.0) -> CircuitBreaker:
    breaker = CircuitBreaker(name, failures=failures, open_seconds=open_seconds, clock=clock)
    for _ in range(failures):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state is BreakerState.OPEN
    return breaker


def test_it_opens_after_n_consecutive_transient_failures_and_a_success_resets_the_count():
    clock = Clock()
    breaker = CircuitBreaker("t-opens", failures=3, clock=clock)
    breaker.failure()
    breaker.failure()
    breaker.success()  # not consecutive any more
    breaker.failure()
    breaker.failure()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
    breaker.failure()
    assert breaker.state is BreakerState.OPEN
    assert _sample(metrics.BREAKER_STATE, "t-opens") == 2


def test_an_open_breaker_fails_fast_until_its_time_is_up():
    clock = Clock()
    breaker = _opened("t-fast", clock, open_seconds=30)
    refused = _sample(metrics.CALLS_REFUSED, "t-fast")
    assert [breaker.allow() for _ in range(5)] == [False] * 5
    assert _sample(metrics.CALLS_REFUSED, "t-fast") == refused + 5
    assert breaker.refusing_until() == clock.now + 30
    clock.now += 29.9
    assert not breaker.allow()


def test_half_open_lets_exactly_one_probe_through_under_concurrent_callers():
    clock = Clock()
    breaker = _opened("t-probe", clock)
    clock.now += 31
    start = threading.Barrier(32)
    allowed: list[bool] = []

    def caller():
        start.wait()
        allowed.append(breaker.allow())

    threads = [threading.Thread(target=caller) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allowed.count(True) == 1 and len(allowed) == 32
    assert breaker.state is BreakerState.HALF_OPEN
    assert _sample(metrics.BREAKER_STATE, "t-probe") == 1
    assert not breaker.allow()  # still one probe out


def test_a_successful_probe_closes_it():
    clock = Clock()
    breaker = _opened("t-close", clock)
    clock.now += 31
    assert breaker.allow()
    breaker.success()
    assert breaker.state is BreakerState.CLOSED and breaker.refusing_until() is None
    assert all(breaker.allow() for _ in range(10))
    # and it counts from zero again, with the base open time
    for _ in range(3):
        breaker.failure()
    assert breaker.refusing_until() == clock.now + 30


def test_a_failed_probe_opens_it_again_for_twice_as_long_up_to_the_cap():
    clock = Clock()
    breaker = _opened("t-backoff", clock, open_seconds=30)
    waits = []
    for _ in range(6):
        clock.now = breaker.open_until
        assert breaker.allow()
        breaker.failure()
        waits.append(breaker.open_until - clock.now)
        assert breaker.state is BreakerState.OPEN and not breaker.allow()
    assert waits == [60, 120, 240, MAX_OPEN_SECONDS, MAX_OPEN_SECONDS, MAX_OPEN_SECONDS]


def test_a_probe_that_ends_without_a_verdict_lets_the_next_probe_go():
    clock = Clock()
    breaker = _opened("t-abandon", clock)
    clock.now += 31
    assert breaker.allow() and not breaker.allow()
    breaker.abandon()
    assert breaker.allow()


class MemoryState:
    """``SharedState`` in a dict, with the SQL one's rules (the SQL one runs in tests/integration)."""

    def __init__(self) -> None:
        self.rows: dict[str, BreakerRow] = {}
        self.lock = threading.Lock()

    def read(self, provider):
        return self.rows.get(provider)

    def write(self, provider, row):
        with self.lock:
            old = self.rows.get(provider)
            if old is None or old.updated_at <= row.updated_at:
                self.rows[provider] = row

    def claim_probe(self, provider, now):
        with self.lock:
            row = self.rows.get(provider)
            if row is None:
                return True
            if row.state == "open" and row.open_until <= now:
                self.rows[provider] = BreakerRow("half_open", row.failures, row.open_until, now)
                return True
            return False


@pytest.mark.parametrize("shared", [MemoryState])
def test_processes_follow_each_others_breaker_and_send_one_probe_between_them(shared):
    clock, state = Clock(), shared()
    first = CircuitBreaker("t-shared", failures=2, open_seconds=30, clock=clock, shared=state)
    second = CircuitBreaker("t-shared", failures=2, open_seconds=30, clock=clock, shared=state)
    assert second.allow()
    first.failure()
    first.failure()
    clock.now += 1  # the other process reads the row at most once a second
    assert not second.allow() and second.refusing_until() == first.open_until
    clock.now += 30
    assert [first.allow(), second.allow()].count(True) == 1  # one probe across both
    prober = first if first.state is BreakerState.HALF_OPEN else second
    prober.success()
    clock.now += 1
    assert first.allow() and second.allow()
