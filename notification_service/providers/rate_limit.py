"""A provider's send rate across every thread, process and host that shares the delivery log's database.

GCRA (the generic cell rate algorithm) over one row of ``provider_rates`` per
provider: ``next_free_at`` is the theoretical arrival time (TAT) of the next
send, in wall-clock epoch seconds. A send takes the slot
``max(now, paused_until, TAT - (burst - 1) * interval)`` and moves the TAT to
``max(TAT, now, paused_until) + interval`` in one upsert (``UPDATE …
RETURNING``, the row created on first use), then sleeps until its slot. That
write is the only shared state: on SQLite it takes its turn under the delivery
log's write lock (``delivery/write_lock.py``: one file lock for every process
on the host), on PostgreSQL the row lock orders the writers of every host.

A slot further away than ``max_wait`` is not taken: ``RateLimited`` hands the
message back to the broker with ``retry_after`` = the wait, so a backlog waits
in the queue, not in a worker thread. A 429 calls :meth:`RateLimiter.slow_down`,
which moves ``paused_until``; a sender that slept towards its slot reads it once
more before sending, so a pause set meanwhile holds it too.

The clock is ``time.time()`` (epoch) because the processes may run on different
hosts: their clocks must agree (NTP) to well within one interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from notification_service.delivery.sql import for_driver
from notification_service.delivery.write_lock import WriteLock
from notification_service.errors import RateLimited
from notification_service.runtime import metrics

__all__ = ["RateLimited", "RateLimiter"]

#: Take the next slot unless it is later than ``:latest``; RETURNING the new TAT and the pause.
_TAKE = ("INSERT INTO provider_rates (provider, next_free_at, paused_until) VALUES (:provider, :now + :interval, 0)"
         " ON CONFLICT (provider) DO UPDATE"
         " SET next_free_at = MAX_(provider_rates.next_free_at, :now, provider_rates.paused_until) + :interval"
         " WHERE MAX_(:now, provider_rates.paused_until, provider_rates.next_free_at - :tolerance) <= :latest"
         " RETURNING next_free_at, paused_until")
_READ = "SELECT next_free_at, paused_until FROM provider_rates WHERE provider = :provider"
_PAUSE = ("INSERT INTO provider_rates (provider, next_free_at, paused_until) VALUES (:provider, :now, :until)"
          " ON CONFLICT (provider) DO UPDATE SET paused_until = MAX_(provider_rates.paused_until, :until)")


class RateLimiter:
    """Hands out send slots per provider; thread-safe, one per process and database (``rate_limiter``)."""

    def __init__(self, writes: WriteLock, max_wait: float, *, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.writes = writes
        self.max_wait = max_wait
        self.clock = clock
        self.sleep = sleep
        sqlite = writes.sqlite
        self.sql = {"take": for_driver(_TAKE, sqlite), "read": for_driver(_READ, sqlite),
                    "pause": for_driver(_PAUSE, sqlite)}

    def acquire(self, provider: str, rate_per_s: float, burst: int = 1) -> float:
        """Wait for the next send slot of ``provider`` and return it (epoch seconds).

        Raises ``RateLimited`` (taking nothing) when the slot is more than ``max_wait`` away.
        """
        interval = 1.0 / rate_per_s
        tolerance = (max(1, burst) - 1) * interval
        latest = self.clock() + self.max_wait
        while True:
            slot = self._take(provider, interval, tolerance, latest)
            if not self._wait_until(provider, slot):
                return slot
            paused_until = self._read(provider)[1]
            if paused_until <= self.clock():
                return slot
            # A 429 paused the provider while this sender slept: its slot is void, take one after the pause.

    def slow_down(self, provider: str, seconds: float) -> None:
        """Every sender to ``provider``, in every process, waits until ``now + seconds`` at least."""
        now = self.clock()
        with self.writes.transaction() as cur:
            cur.execute(self.sql["pause"], {"provider": provider, "now": now, "until": now + seconds})

    def _take(self, provider: str, interval: float, tolerance: float, latest: float) -> float:
        with self.writes.transaction() as cur:
            now = self.clock()
            params = {"provider": provider, "now": now, "interval": interval, "tolerance": tolerance,
                      "latest": latest}
            cur.execute(self.sql["take"], params)
            row = cur.fetchone()
            if row is None:
                cur.execute(self.sql["read"], params)
                next_free_at, paused_until = cur.fetchone()
        if row is None:
            wait = max(now, paused_until, next_free_at - tolerance) - now
            metrics.PROVIDER_RATE_LIMITED.labels(provider).inc()
            raise RateLimited(f"{provider} rate limit: next send slot in {wait:.1f} s", retry_after=wait)
        next_free_at, paused_until = row
        # The new TAT is max(TAT, now, pause) + interval, so the slot max(now, pause, TAT - tolerance) is:
        return max(now, paused_until, next_free_at - interval - tolerance)

    def _wait_until(self, provider: str, slot: float) -> bool:
        """Sleep until ``slot``; whether there was anything to wait for."""
        wait = slot - self.clock()
        if wait <= 0:
            return False
        metrics.PROVIDER_RATE_WAIT.labels(provider).inc(wait)
        self.sleep(wait)
        return True

    def _read(self, provider: str) -> tuple[float, float]:
        """The row as it is, read outside the write lock (SQLite: autocommit, so no ``BEGIN IMMEDIATE``)."""
        connection = self.writes.engine.raw_connection()
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(self.sql["read"], {"provider": provider})
                row = cursor.fetchone()
            finally:
                cursor.close()
        finally:
            connection.close()  # back to the pool, which rolls back PostgreSQL's implicit transaction
        if row is None:  # nothing since the row was taken can delete it; an operator may have
            return 0.0, 0.0
        return float(row[0]), float(row[1])
