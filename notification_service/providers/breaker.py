"""A circuit breaker per provider: closed, open (fail fast), half open (exactly one probe).

Closed, it counts consecutive transient failures (``NotAccepted``, ``MaybeAccepted``);
at ``failures`` it opens. Open, it refuses every call until ``open_until``;
then the first caller becomes the one probe (half open) while every other is
still refused. The probe's success closes it; its failure opens it again for
twice as long as before (at most ``MAX_OPEN_SECONDS``). An answer that is a
permanent error is a success here: the provider is up, the message was wrong.

Not pybreaker: its half-open state lets every concurrent caller through until
one of them reports (threads piling onto a provider that hangs is what this
is for), its open timeout never grows, and its shared state (Redis) is not
this service's database. The state machine is small enough to own.

Across worker processes (``SharedState``, the ``provider_breakers`` row): a
process writes the row when it opens or closes its breaker, and claims the
probe in the row with one conditional UPDATE, so one probe goes out per
provider across every process; the others read the row at most once a
second and follow a newer opening or closing. Times are epoch seconds
(``time.time``) because they are compared across processes and hosts.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from notification_service.runtime import metrics

log = structlog.get_logger("notification_service.providers.breaker")

#: The longest an open breaker waits before its next probe, however many probes failed.
MAX_OPEN_SECONDS = 300.0
#: How often a process reads the shared row (at most).
SYNC_SECONDS = 1.0
#: While a probe is out, when callers should look again.
PROBE_RECHECK_SECONDS = 1.0


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


#: ``notification_provider_breaker_state``'s value of each state.
GAUGE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


@dataclass(frozen=True)
class BreakerRow:
    """A provider's breaker as the processes share it."""

    state: str
    failures: int
    open_until: float
    updated_at: float


class SharedState(Protocol):
    """Where the processes' breakers meet (``delivery.breakers.SqlBreakerState`` in production)."""

    def read(self, provider: str) -> BreakerRow | None: ...

    def write(self, provider: str, row: BreakerRow) -> None: ...

    def claim_probe(self, provider: str, now: float) -> bool: ...


class CircuitBreaker:
    """One provider's breaker in this process; thread-safe. ``allow()`` before a call, then one verdict."""

    def __init__(self, provider: str, *, failures: int = 5, open_seconds: float = 30.0,
                 clock: Callable[[], float] = time.time, shared: SharedState | None = None) -> None:
        self.provider = provider
        self.threshold = failures
        self.base_open_seconds = open_seconds
        self.clock = clock
        self.shared = shared
        self._lock = threading.Lock()
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.open_until = 0.0
        self._open_for = open_seconds
        self._changed_at = 0.0  # updated_at of the state this process follows
        self._synced_at = float("-inf")
        metrics.BREAKER_STATE.labels(provider).set(GAUGE[self.state])

    # -- the caller's side ---------------------------------------------------------

    def allow(self) -> bool:
        """May a call go to the provider now? True makes the caller the probe when the breaker was open."""
        with self._lock:
            now = self.clock()
            self._sync(now)
            if self.state is BreakerState.CLOSED:
                return True
            if self.state is BreakerState.OPEN and now >= self.open_until:
                if self._claim_probe(now):
                    self._set(BreakerState.HALF_OPEN, now)
                    return True
                self.open_until = now + PROBE_RECHECK_SECONDS  # another process's probe is out
        metrics.CALLS_REFUSED.labels(self.provider).inc()
        return False

    def success(self) -> None:
        """The provider answered (a message taken or refused for good): closed, the count back to 0."""
        with self._lock:
            self.failures = 0
            if self.state is not BreakerState.CLOSED:
                self._open_for = self.base_open_seconds
                self._set(BreakerState.CLOSED, self.clock(), publish=True)
                log.info("breaker closed", provider=self.provider)

    def failure(self) -> None:
        """A transient failure: counts towards opening; a failed probe opens it again for longer."""
        with self._lock:
            now = self.clock()
            if self.state is BreakerState.HALF_OPEN:
                self._open_for = min(self._open_for * 2, max(MAX_OPEN_SECONDS, self.base_open_seconds))
                self._open(now)
            elif self.state is BreakerState.CLOSED:
                self.failures += 1
                if self.failures >= self.threshold:
                    self._open(now)

    def abandon(self) -> None:
        """The call ended without a verdict (a bug, a time limit): a half-open breaker lets the next probe go."""
        with self._lock:
            if self.state is BreakerState.HALF_OPEN:
                self.open_until = self.clock()
                self._set(BreakerState.OPEN, self.open_until, publish=True)

    def refusing_until(self) -> float | None:
        """Epoch seconds until which calls are refused, or None when a call may go now (closed, or due a probe)."""
        with self._lock:
            now = self.clock()
            self._sync(now)
            if self.state is BreakerState.HALF_OPEN:
                return now + PROBE_RECHECK_SECONDS
            if self.state is BreakerState.OPEN and self.open_until > now:
                return self.open_until
            return None

    # -- transitions (the lock is held) ----------------------------------------------

    def _open(self, now: float) -> None:
        self.open_until = now + self._open_for
        self._set(BreakerState.OPEN, now, publish=True)
        log.warning("breaker opened", provider=self.provider, failures=self.failures, seconds=self._open_for)

    def _set(self, state: BreakerState, now: float, publish: bool = False) -> None:
        self.state = state
        self._changed_at = now
        metrics.BREAKER_STATE.labels(self.provider).set(GAUGE[state])
        if publish and self.shared is not None:
            shared, row = self.shared, BreakerRow(state.value, self.failures, self.open_until, now)
            self._shared("write", lambda: shared.write(self.provider, row))

    def _claim_probe(self, now: float) -> bool:
        if self.shared is None:
            return True
        shared = self.shared
        claimed = self._shared("claim_probe", lambda: shared.claim_probe(self.provider, now))
        return True if claimed is None else bool(claimed)  # the database away: probe from here

    def _sync(self, now: float) -> None:
        """Follow a newer opening or closing by another process (read at most once per SYNC_SECONDS)."""
        if self.shared is None or self.state is BreakerState.HALF_OPEN or now - self._synced_at < SYNC_SECONDS:
            return
        self._synced_at = now
        shared = self.shared
        row = self._shared("read", lambda: shared.read(self.provider))
        if not isinstance(row, BreakerRow) or row.updated_at < self._changed_at:
            return
        if row.updated_at == self._changed_at and row.state == self.state.value:
            return  # what this process wrote, or already follows
        if row.state == BreakerState.CLOSED.value:
            self.failures, self._open_for = 0, self.base_open_seconds
            self._set(BreakerState.CLOSED, row.updated_at)
        else:  # open, or half open: another process's probe is out, so none from here until it ends
            probing = row.state == BreakerState.HALF_OPEN.value
            self.failures = row.failures
            self.open_until = max(row.open_until, now + PROBE_RECHECK_SECONDS) if probing else row.open_until
            self._set(BreakerState.OPEN, row.updated_at)

    def _shared(self, what: str, call: Callable[[], object]) -> object:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - the breaker keeps working on this process's own view
            log.warning("shared breaker state unavailable", provider=self.provider, operation=what, error=repr(exc))
            return None
