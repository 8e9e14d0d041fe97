"""The relay's loop: claim due outbox rows, publish them as one confirm window, record the answers, wait.

One thread owns one pika ``BlockingConnection`` (pika is not thread-safe).
While idle the relay waits inside ``process_data_events``, which serves
heartbeats, until the poll interval passes (``BOOKING_RELAY_POLL_SECONDS``; on
SQLite the poll is the wake-up, so it is short, 0.02 s), a commit NOTIFYs
(PostgreSQL, ``wakeup.NotifyListener``) or ``stop()`` is called.

While the broker is away the relay probes it with a capped backoff (at most
``BOOKING_RELAY_MAX_BACKOFF_SECONDS``, 1 s, small jitter), so it publishes
within seconds of the broker answering again, however long the outage was.

On a cluster (several nodes in ``AMQP_URL``) a window that the broker nacked,
or did not confirm within ``BOOKING_RELAY_CONFIRM_TIMEOUT_SECONDS``, counts as
not sent: the relay closes the connection and reconnects (pika tries the nodes
in a random order) before the next batch, and the rows go out again with the
same task id. A channel whose queue leader died may nack every publish for
minutes while a new connection is acked at once, and a hung node never
answers at all; waiting there would stop the outbox.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pika
import pika.exceptions
import sqlalchemy as sa
import structlog
from pika.adapters.blocking_connection import BlockingChannel
from sqlalchemy.orm import sessionmaker

from booking_service.relay.confirm_window import NACKED, UNROUTABLE, ConfirmChannel, NotConfirmed, Outcome, end_wait
from booking_service.relay.outbox_lease import CLAIM_LEASE, OutboxLease
from booking_service.relay.wakeup import NotifyListener
from booking_service.runtime import amqp, metrics
from booking_service.runtime.backoff import reconnect_delay

log = structlog.get_logger(__name__)

#: Longest single wait inside ``process_data_events`` while idle (SIGTERM latency).
IDLE_SLICE_SECONDS = 0.5
#: Default bound on a window's confirms (``BOOKING_RELAY_CONFIRM_TIMEOUT_SECONDS``): a healthy broker
#: confirms a batch in milliseconds, and a quorum queue elects a new leader 0.1-0.6 s after a node dies.
CONFIRM_TIMEOUT_SECONDS = 5.0


@dataclass
class RelayStats:
    published: int = 0
    failed: int = 0


class Relay:
    """One relay: a loop on one thread with one broker connection; several may run against one database."""

    def __init__(self, session_factory: sessionmaker, amqp_url: str, *, poll_seconds: float = 0.02,
                 batch_size: int = 100, max_backoff: float = 1.0, listen: bool = True,
                 confirm_timeout: float = CONFIRM_TIMEOUT_SECONDS):
        if not 0 < confirm_timeout < CLAIM_LEASE.total_seconds():
            # Past the lease another relay may claim the rows while this one still waits for them.
            raise ValueError(f"confirm_timeout must be between 0 and {CLAIM_LEASE.total_seconds():.0f} s")
        self.engine: sa.Engine = session_factory.kw["bind"]
        self.lease = OutboxLease(self.engine, batch_size)
        self.amqp_url = amqp_url
        self.poll_seconds = poll_seconds
        self.batch_size = batch_size
        self.max_backoff = max_backoff
        self.confirm_timeout = confirm_timeout
        self.stopping = threading.Event()
        #: Set by the PostgreSQL listener when a commit added outbox rows.
        self.wakeup = threading.Event()
        self.listen = listen and self.engine.dialect.name == "postgresql"
        self.connection: pika.BlockingConnection | None = None
        #: The confirm-mode channel on ``connection``; None while disconnected.
        self.publisher: ConfirmChannel | None = None
        self.stats = RelayStats()
        #: The broker node (host:port) of the current or last connection.
        self.node = ""

    @property
    def channel(self) -> BlockingChannel | None:
        return None if self.publisher is None else self.publisher.channel

    # Connection ----------------------------------------------------------------
    def _connect(self, last: str = "") -> None:
        """Connect to a node of AMQP_URL, ``last`` (the node that just failed, ``host:port``) tried last."""
        self.connection = pika.BlockingConnection(amqp.parameters(self.amqp_url, last=last))
        self.node = amqp.node_of(self.connection)
        self.publisher = ConfirmChannel.open(self.connection)
        log.info("relay_connected", node=self.node)

    def _disconnect(self, abort: bool = False) -> None:
        """Close the connection; ``abort`` drops it without the closing handshake (a node that hangs)."""
        connection, self.connection, self.publisher = self.connection, None, None
        if abort and connection is not None:
            amqp.abort(connection, "confirms missing: connection dropped")
        elif connection is not None and connection.is_open:
            try:
                connection.close()
            except pika.exceptions.AMQPError as exc:
                log.warning("relay_close_failed", error=repr(exc))

    def _wait_for_work(self, seconds: float) -> None:
        """Idle until the poll interval passes, a commit NOTIFYs, or ``stop()``; serves heartbeats."""
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set() and not self.wakeup.is_set() and (left := deadline - time.monotonic()) > 0:
            if self.connection is not None and self.connection.is_open:
                self.connection.process_data_events(time_limit=min(left, IDLE_SLICE_SECONDS))
            else:
                self.wakeup.wait(min(left, IDLE_SLICE_SECONDS))

    def _wake(self) -> None:
        """Called by the listener thread: end the idle wait now (thread-safe)."""
        self.wakeup.set()
        connection = self.connection
        if connection is not None and connection.is_open:
            try:
                connection.add_callback_threadsafe(end_wait)  # makes process_data_events return
            except pika.exceptions.AMQPError as exc:
                # Closed meanwhile: the relay reconnects and claims right after anyway.
                log.debug("relay_wake_on_closed_connection", error=repr(exc))

    # Work -----------------------------------------------------------------------
    def publish_due(self) -> int:
        """Publish one batch of due rows; returns how many were confirmed.

        Raises pika connection errors, and ``NotConfirmed`` when the broker
        nacked rows or left them unconfirmed past the bound; rows confirmed
        before are recorded as published, the rest are released to be tried
        again at once (a row whose confirm was lost may go out twice: same
        task id, which the workers' delivery log deduplicates).
        """
        publisher = self.publisher
        if publisher is None:  # checked before claiming: a lease taken now would only wait out its time
            raise pika.exceptions.ConnectionWrongStateError("the relay is not connected")
        claimed = self.lease.claim()
        if not claimed:
            return 0
        outcome = publisher.publish(claimed, wait_seconds=self.confirm_timeout)
        self.lease.record(outcome.published, outcome.refused, outcome.released, outcome.nacked, NACKED)
        self._account(outcome)
        if (failure := outcome.failure()) is not None:
            raise failure
        return len(outcome.published)

    def _account(self, outcome: Outcome) -> None:
        for row in outcome.published:
            metrics.published().labels(row.event).inc()
            log.info("outbox_published", notification_id=row.notification_id, booking_event=row.event,
                     correlation_id=row.correlation_id)
        for row, _error in outcome.refused:
            metrics.publish_failures().labels("unroutable").inc()
            log.error("outbox_unroutable", notification_id=row.notification_id, reason=UNROUTABLE)
        for row in outcome.nacked:
            metrics.publish_failures().labels("nack").inc()
            log.warning("outbox_nacked", notification_id=row.notification_id)
        if unanswered := len(outcome.released) - len(outcome.nacked):
            metrics.publish_failures().labels("unconfirmed").inc(unanswered)
        self.stats.published += len(outcome.published)

    def run(self) -> None:
        """Publish until ``stop()``; reconnect with backoff while the broker is away."""
        listener = None
        if self.listen:
            listener = NotifyListener(self.engine.url, self.stopping, self._wake, self.max_backoff).start()
        failures = 0
        while not self.stopping.is_set():
            try:
                if self.connection is None or not self.connection.is_open:
                    self._connect(last=self.node if failures else "")
                self.wakeup.clear()  # a NOTIFY from now on wakes the next wait
                count = self.publish_due()
                failures = 0
                if count < self.batch_size:
                    self._wait_for_work(self.poll_seconds)
            except (pika.exceptions.AMQPError, OSError, NotConfirmed) as exc:
                failures += 1
                self.stats.failed += 1
                if not isinstance(exc, NotConfirmed):  # nacks and missing confirms were counted per row
                    metrics.publish_failures().labels("broker_unavailable").inc()
                # A channel that nacks or stays silent is dropped, not closed: the closing handshake waits
                # for a hung node's answer, and a blocked connection's (resource alarm) for the block to end.
                self._disconnect(abort=isinstance(exc, NotConfirmed))
                delay = reconnect_delay(failures, self.max_backoff)
                log.warning("relay_broker_unavailable", error=repr(exc), node=self.node, retry_in=round(delay, 2))
                self.stopping.wait(delay)
            except sa.exc.DBAPIError as exc:
                # The database is away: nothing can be claimed or recorded. Rows
                # published but not recorded go out again after their lease.
                failures += 1
                self.stats.failed += 1
                metrics.publish_failures().labels("database_unavailable").inc()
                delay = reconnect_delay(failures, self.max_backoff)
                log.warning("relay_database_unavailable", error=type(exc).__name__, retry_in=round(delay, 2))
                self._wait_for_work(delay)
        if listener is not None:
            listener.stop()
        self._disconnect()
        log.info("relay_stopped", published=self.stats.published)

    def stop(self, *_args: object) -> None:
        self.stopping.set()
