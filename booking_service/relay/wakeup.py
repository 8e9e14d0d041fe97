"""Waking the relay when a booking commits outbox rows (PostgreSQL LISTEN/NOTIFY).

On PostgreSQL a commit that inserts outbox rows NOTIFYs ``booking_outbox`` (a
trigger, migration 0003) and this listener thread wakes the relay at once; the
relay's poll then only finds reminders falling due. SQLite has no NOTIFY: there
the short poll is the wake-up and no listener runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import sqlalchemy as sa
import structlog

from booking_service.runtime.backoff import reconnect_delay

log = structlog.get_logger(__name__)

#: PostgreSQL channel the outbox trigger NOTIFYs on commit (migration 0003).
NOTIFY_CHANNEL = "booking_outbox"
#: Longest single wait for a NOTIFY, so the thread notices ``stopping`` soon.
LISTEN_SLICE_SECONDS = 0.5


class NotifyListener:
    """LISTEN on a dedicated PostgreSQL connection and call ``wake`` on every NOTIFY, until ``stopping`` is set."""

    def __init__(self, engine_url: sa.URL, stopping: threading.Event, wake: Callable[[], None],
                 max_backoff: float) -> None:
        # A connection of its own, outside the engine's pool: it stays in LISTEN, autocommit, for the relay's life.
        self.conninfo = engine_url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.stopping = stopping
        self.wake = wake
        self.max_backoff = max_backoff
        self.thread = threading.Thread(target=self._run, name="relay-listener", daemon=True)

    def start(self) -> NotifyListener:
        self.thread.start()
        return self

    def _run(self) -> None:
        import psycopg

        failures = 0
        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    failures = 0
                    self.wake()  # rows committed while nobody listened
                    while not self.stopping.is_set():
                        for _notify in conn.notifies(timeout=LISTEN_SLICE_SECONDS, stop_after=1):
                            self.wake()
            except psycopg.Error as exc:
                failures += 1
                delay = reconnect_delay(failures, self.max_backoff)
                log.warning("relay_listen_failed", error=type(exc).__name__, retry_in=round(delay, 2))
                self.stopping.wait(delay)

    def stop(self) -> None:
        """Wait briefly for the thread to see ``stopping`` (it is a daemon: it never blocks exit)."""
        self.thread.join(LISTEN_SLICE_SECONDS * 4)
