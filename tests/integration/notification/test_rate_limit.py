"""The provider rate limit (GCRA over ``provider_rates``) on SQLite and PostgreSQL, with many threads."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from notification_service.delivery.migrate import upgrade
from notification_service.delivery.repository import SqlDeliveryLog
from notification_service.delivery.tables import provider_rates
from notification_service.providers.rate_limit import RateLimited, RateLimiter


@pytest.fixture
def limiter_of(database_url):
    """Limiters on one database, each with its own delivery log (as separate processes would have)."""
    upgrade(database_url)
    logs: list[SqlDeliveryLog] = []

    def make(max_wait: float = 5.0) -> RateLimiter:
        logs.append(SqlDeliveryLog(database_url))
        return RateLimiter(logs[-1].writes, max_wait)

    yield make
    for log in logs:
        log.engine.dispose()


def _row(limiter: RateLimiter, provider: str):
    with limiter.writes.engine.connect() as conn:
        return conn.execute(sa.select(provider_rates).where(provider_rates.c.provider == provider)).one()


def _acquire_all(limiters: list[RateLimiter], provider: str, rate: float, per_thread: int,
                 threads: int) -> list[tuple[float, float]]:
    """(granted slot, time the call returned) of every acquire of ``threads`` threads per limiter."""
    results: list[tuple[float, float]] = []
    lock = threading.Lock()

    def run(limiter: RateLimiter) -> None:
        for _ in range(per_thread):
            slot = limiter.acquire(provider, rate)
            returned = time.time()
            with lock:
                results.append((slot, returned))

    with ThreadPoolExecutor(threads * len(limiters)) as pool:
        for future in [pool.submit(run, limiter) for limiter in limiters for _ in range(threads)]:
            future.result()
    return results


def test_the_rate_holds_for_many_threads_of_two_limiters(limiter_of):
    rate = 40.0
    results = _acquire_all([limiter_of(), limiter_of()], "email_http", rate, per_thread=5, threads=6)
    slots = sorted(slot for slot, _ in results)
    assert len(slots) == 60
    gaps = [later - earlier for earlier, later in zip(slots, slots[1:], strict=False)]
    assert min(gaps) >= 1 / rate - 1e-6  # burst 1: one slot per interval, never two
    assert all(returned >= slot for slot, returned in results)  # each caller slept until its slot


def test_a_burst_allows_that_many_slots_at_once_then_the_rate(limiter_of):
    limiter = limiter_of()
    slots = [limiter.acquire("push_http", 2.0, burst=3) for _ in range(4)]
    assert slots[2] - slots[0] < 0.1  # three at once
    assert slots[3] - slots[0] >= 0.5 - 1e-6  # the fourth one interval after the first


def test_slow_down_delays_every_caller_of_every_limiter(limiter_of):
    first, second = limiter_of(), limiter_of()
    first.acquire("email_http", 100.0)
    first.slow_down("email_http", 1.0)
    paused_until = _row(first, "email_http").paused_until
    first.slow_down("email_http", 0.1)  # a shorter pause never shortens the one in force
    assert _row(first, "email_http").paused_until == paused_until
    results = _acquire_all([first, second], "email_http", 100.0, per_thread=2, threads=3)
    assert len(results) == 12
    assert min(slot for slot, _ in results) >= paused_until
    assert min(returned for _, returned in results) >= paused_until
    assert _row(first, "email_http").next_free_at > paused_until


def test_a_pause_set_while_a_caller_sleeps_towards_its_slot_holds_it_too(limiter_of):
    sleeper, throttled = limiter_of(), limiter_of()
    sleeper.acquire("smtp", 1.0)  # the next slot is one second away
    returned: list[float] = []
    thread = threading.Thread(target=lambda: (sleeper.acquire("smtp", 1.0), returned.append(time.time())))
    thread.start()
    time.sleep(0.3)  # the second caller has taken its slot and sleeps towards it
    throttled.slow_down("smtp", 2.0)
    paused_until = _row(throttled, "smtp").paused_until
    thread.join(10)
    assert returned and returned[0] >= paused_until


def test_a_wait_longer_than_the_max_raises_rate_limited_without_taking_the_slot(limiter_of):
    limiter = limiter_of(max_wait=0.5)
    limiter.acquire("push_http", 1.0)
    before = _row(limiter, "push_http")
    with pytest.raises(RateLimited) as raised:
        limiter.acquire("push_http", 1.0)
    assert 0.5 < raised.value.retry_after <= 1.0
    assert _row(limiter, "push_http") == before  # nothing taken
    limiter.slow_down("push_http", 30.0)
    with pytest.raises(RateLimited) as raised:
        limiter.acquire("push_http", 1.0)
    assert 29 < raised.value.retry_after <= 30
    assert _row(limiter, "push_http").next_free_at == before.next_free_at
