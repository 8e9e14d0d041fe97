"""The outbox relay: publishes due outbox rows as Celery v2 task messages.

One thread owns one pika ``BlockingConnection`` (pika is not thread-safe) and
publishes with confirms and ``mandatory=True``: a row is marked published only
after the broker confirmed it, and a returned (unroutable) or nacked row stays
pending and is retried later with backoff.

A batch is published as a *window*: every message of the batch is written to
the socket, then the confirms are collected (the broker acks several at once
with ``multiple``); one round trip per batch, not per row. pika's
``BlockingChannel`` waits for each confirm inside ``basic_publish``, so the
relay publishes through the channel's asynchronous implementation
(``BlockingChannel._impl``, a ``pika.channel.Channel``) and drives its I/O with
``process_data_events`` — still one thread, one connection.

A batch is claimed in one short transaction that leases its rows
(``locked_until``), published outside any transaction, and its outcomes
recorded in a second one (one UPDATE per outcome, ``WHERE id IN``); no database
lock is held while waiting for the broker. On PostgreSQL the claim reads
``FOR UPDATE SKIP LOCKED``; on SQLite the due rows are read without the write
lock and leased by a conditional UPDATE, so several relays can run at once and
each row is published by one of them. Payloads were validated against the
contract when written; the relay validates again only a payload whose sha256
no longer matches (edited, or older than the column).

Wake-up: on PostgreSQL a commit that inserts outbox rows NOTIFYs
``booking_outbox`` (a trigger) and a listener thread wakes the relay at once;
the poll (``BOOKING_RELAY_POLL_SECONDS``) only finds reminders falling due. On
SQLite the poll is the wake-up, so it is short (0.02 s). While idle the relay
waits inside ``process_data_events``, which serves heartbeats.

While the broker is away the relay probes it with a capped backoff (at most
``BOOKING_RELAY_MAX_BACKOFF_SECONDS``, 1 s, small jitter), so it publishes
within seconds of the broker answering again, however long the outage was.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

import pika
import pika.exceptions
import sqlalchemy as sa
import structlog
from marshmallow import ValidationError
from sqlalchemy.orm import sessionmaker

import shared
from booking_service.core.outbox import digest
from booking_service.runtime import amqp, metrics
from booking_service.storage.db import READ_ONLY
from booking_service.storage.models import OutboxMessage, utcnow

log = structlog.get_logger(__name__)

OUTBOX = OutboxMessage.__table__
#: PostgreSQL channel the outbox trigger NOTIFYs on commit (migration 0003).
NOTIFY_CHANNEL = "booking_outbox"
#: Hard and soft time limits the dispatch task runs under ([hard, soft] on the wire).
DISPATCH_TIME_LIMIT = 120
DISPATCH_SOFT_TIME_LIMIT = 100
#: How long a claimed row belongs to the relay that claimed it. A relay that
#: dies mid-batch leaves its rows to the others (or to itself after a restart)
#: once this passes; a live one gives unconfirmed rows back after half of it.
CLAIM_LEASE = timedelta(seconds=120)
#: First wait before an unroutable or nacked row is tried again; doubles per attempt.
RETRY_BASE = timedelta(seconds=30)
#: Longest wait between two attempts of one row.
RETRY_CEILING = timedelta(hours=1)
#: First reconnect delay; doubles per refused attempt up to ``max_backoff``.
RECONNECT_BASE_SECONDS = 0.25
#: Longest single wait inside ``process_data_events`` while idle (SIGTERM latency).
IDLE_SLICE_SECONDS = 0.5

_CLAIM_COLUMNS = (OUTBOX.c.id, OUTBOX.c.notification_id, OUTBOX.c.booking_id, OUTBOX.c.event, OUTBOX.c.priority,
                  OUTBOX.c.payload, OUTBOX.c.payload_sha256, OUTBOX.c.correlation_id, OUTBOX.c.expires_at,
                  OUTBOX.c.attempts)


def retry_delay(attempts: int) -> timedelta:
    """Exponential backoff with jitter for a row the broker refused ``attempts`` times.

    Jitter spreads rows refused together (a missing binding refuses them all)
    over time, so they do not come back as one burst.
    """
    ceiling = min(RETRY_BASE * 2 ** min(max(attempts - 1, 0), 16), RETRY_CEILING)
    return ceiling * random.uniform(0.5, 1.0)


def reconnect_delay(failures: int, cap: float) -> float:
    """Seconds before reconnect attempt ``failures + 1``: doubling, capped at ``cap``, 25 % jitter.

    The cap is what bounds the time from "the broker answers again" to "the
    relay publishes", so it stays a few seconds; the jitter keeps several relays
    from probing in step.
    """
    return min(cap, RECONNECT_BASE_SECONDS * 2 ** min(max(failures - 1, 0), 16)) * random.uniform(0.75, 1.0)


@dataclass
class RelayStats:
    published: int = 0
    failed: int = 0


def build_message(row) -> shared.TaskMessage:
    """The Celery v2 envelope of one outbox row (payload already valid)."""
    return shared.task_message(
        task=shared.DISPATCH_TASK,
        task_id=row.notification_id,
        routing_key=shared.DISPATCH_QUEUE,
        kwargs={"message": row.payload},
        priority=row.priority,
        expires=row.expires_at,
        time_limit=DISPATCH_TIME_LIMIT,
        soft_time_limit=DISPATCH_SOFT_TIME_LIMIT,
        # No personal data: operators see the event and ids only.
        kwargsrepr=f"{{'message': <{row.event} notification={row.notification_id} booking={row.booking_id}>}}",
        origin="booking-service-relay",
        correlation_id=row.correlation_id,
        message_type=shared.NOTIFICATION_REQUESTED,
    )


def contract_violation(row) -> str | None:
    """Why the row's payload breaks the contract, or None. Full validation only when the digest differs."""
    if row.payload_sha256 is not None and digest(row.payload) == row.payload_sha256:
        return None  # exactly what was validated when the row was written
    try:
        shared.validate_notification_requested(row.payload)
    except ValidationError as exc:
        return f"contract violation: {exc.messages}"
    return None


def _nothing() -> None:
    """A callback whose only effect is to end a ``process_data_events`` wait."""


@dataclass
class _Window:
    """Publishes in flight on the channel: delivery tag → row, and what the broker said."""

    rows: dict[int, object] = field(default_factory=dict)
    acked: list = field(default_factory=list)
    nacked: list = field(default_factory=list)
    returned: set[str] = field(default_factory=set)

    def settle(self, tag: int, multiple: bool, ack: bool) -> None:
        tags = [t for t in self.rows if t <= tag] if multiple else [tag]
        for t in tags:
            row = self.rows.pop(t, None)
            if row is not None:
                (self.acked if ack else self.nacked).append(row)


class Relay:
    def __init__(self, session_factory: sessionmaker, amqp_url: str, *, poll_seconds: float = 0.02,
                 batch_size: int = 100, max_backoff: float = 1.0, listen: bool = True):
        self.engine: sa.Engine = session_factory.kw["bind"]
        self.amqp_url = amqp_url
        self.poll_seconds = poll_seconds
        self.batch_size = batch_size
        self.max_backoff = max_backoff
        self.stopping = threading.Event()
        #: Set by the PostgreSQL listener when a commit added outbox rows.
        self.wakeup = threading.Event()
        self.listen = listen and self.engine.dialect.name == "postgresql"
        self.connection: pika.BlockingConnection | None = None
        self.channel = None
        self._window = _Window()
        self._next_tag = 0
        self.stats = RelayStats()

    # Connection ----------------------------------------------------------------
    def _connect(self) -> None:
        self.connection = pika.BlockingConnection(amqp.parameters(self.amqp_url))
        channel = self.connection.channel()
        # The booking user may only publish: check the exchange exists, declare nothing.
        channel.exchange_declare(shared.EXCHANGE, passive=True)
        impl = channel._impl  # the asynchronous channel: publishes without waiting (see the module docstring)
        selected = []
        impl.add_on_return_callback(self._on_return)
        impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=selected.append)
        while not selected:
            self.connection.process_data_events(time_limit=1)
        self.channel, self._window, self._next_tag = channel, _Window(), 0
        log.info("relay_connected")

    def _disconnect(self) -> None:
        connection, self.connection, self.channel = self.connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except pika.exceptions.AMQPError as exc:
                log.warning("relay_close_failed", error=repr(exc))

    def _on_confirm(self, frame) -> None:
        method = frame.method
        self._window.settle(method.delivery_tag, method.multiple, isinstance(method, pika.spec.Basic.Ack))
        if not self._window.rows and self.connection is not None:
            # Callbacks of the async channel are no BlockingConnection events, so
            # process_data_events would wait out its time limit: a due timer ends it now.
            self.connection.call_later(0, _nothing)

    def _on_return(self, _channel, _method, properties, _body) -> None:
        # The broker sends basic.return before the basic.ack of the same message.
        self._window.returned.add(properties.message_id)

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
                connection.add_callback_threadsafe(_nothing)  # makes process_data_events return
            except pika.exceptions.AMQPError as exc:
                # Closed meanwhile: the relay reconnects and claims right after anyway.
                log.debug("relay_wake_on_closed_connection", error=repr(exc))

    # Database -------------------------------------------------------------------
    def _due(self, now) -> sa.Select:
        return (
            sa.select(*_CLAIM_COLUMNS)
            .where(
                OUTBOX.c.status == "pending",
                OUTBOX.c.available_at <= now,
                sa.or_(OUTBOX.c.locked_until.is_(None), OUTBOX.c.locked_until <= now),
            )
            .order_by(OUTBOX.c.priority.desc(), OUTBOX.c.available_at, OUTBOX.c.id)
            .limit(self.batch_size)
        )

    def _claim(self) -> list[tuple[object, shared.TaskMessage]]:
        """Lease a batch of due rows in one short transaction; settle the ones that must never be sent.

        The lease (``locked_until``) is what keeps a second relay off these rows
        while this one publishes them outside any transaction, so no database
        lock is held across network waits: on SQLite a stalled broker would
        otherwise hold the one write lock and stall every booking.
        """
        now = utcnow()
        lease = now + CLAIM_LEASE
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as conn:  # a plain read: no write lock while nothing is due
                rows = conn.execution_options(**{READ_ONLY: True}).execute(self._due(now)).all()
            if not rows:
                return []
            with self.engine.begin() as conn:
                leased = set(conn.execute(
                    sa.update(OUTBOX)
                    .where(OUTBOX.c.id.in_([r.id for r in rows]), OUTBOX.c.status == "pending",
                           sa.or_(OUTBOX.c.locked_until.is_(None), OUTBOX.c.locked_until <= now))
                    .values(locked_until=lease, attempts=OUTBOX.c.attempts + 1)
                    .returning(OUTBOX.c.id)
                ).scalars())
                return self._settle_unsendable(conn, [r for r in rows if r.id in leased], now)
        with self.engine.begin() as conn:
            rows = conn.execute(self._due(now).with_for_update(skip_locked=True)).all()
            if rows:
                conn.execute(sa.update(OUTBOX).where(OUTBOX.c.id.in_([r.id for r in rows]))
                             .values(locked_until=lease, attempts=OUTBOX.c.attempts + 1))
            return self._settle_unsendable(conn, rows, now)

    def _settle_unsendable(self, conn: sa.Connection, rows: list, now) -> list[tuple[object, shared.TaskMessage]]:
        """Expired and contract-breaking rows are closed for good (same transaction); the rest are returned."""
        claimed, expired, invalid = [], [], []
        for row in rows:
            if row.expires_at is not None and row.expires_at <= now:
                expired.append(row.id)
            elif (problem := contract_violation(row)) is not None:
                invalid.append({"b_id": row.id, "b_error": problem})
                metrics.publish_failures().labels("invalid").inc()
                log.error("outbox_row_invalid", notification_id=row.notification_id, errors=problem)
            else:
                claimed.append((row, build_message(row)))
        if expired:
            conn.execute(sa.update(OUTBOX).where(OUTBOX.c.id.in_(expired)).values(
                status="expired", last_error="due after the booking started; not sent", locked_until=None))
        if invalid:
            conn.execute(sa.update(OUTBOX).where(OUTBOX.c.id == sa.bindparam("b_id")).values(
                status="invalid", last_error=sa.bindparam("b_error"), locked_until=None), invalid)
        return claimed

    def _record(self, published: list, refused: list[tuple[object, str]], released: list) -> None:
        """Write what the broker said about a batch, one statement per outcome, and drop the leases."""
        now = utcnow()
        with self.engine.begin() as conn:
            if published:
                # Recorded even if the row was superseded meanwhile: it did go out.
                conn.execute(sa.update(OUTBOX).where(OUTBOX.c.id.in_([r.id for r in published])).values(
                    status="published", published_at=now, last_error=None, locked_until=None))
            if released:
                conn.execute(sa.update(OUTBOX).where(OUTBOX.c.id.in_([r.id for r in released]),
                                                     OUTBOX.c.status == "pending").values(locked_until=None))
            if refused:
                conn.execute(
                    sa.update(OUTBOX).where(OUTBOX.c.id == sa.bindparam("b_id"), OUTBOX.c.status == "pending")
                    .values(available_at=sa.bindparam("b_at"), last_error=sa.bindparam("b_error"), locked_until=None),
                    [{"b_id": r.id, "b_at": now + retry_delay(r.attempts + 1), "b_error": error} for r, error in refused],
                )

    # Work -----------------------------------------------------------------------
    def publish_due(self) -> int:
        """Publish one batch of due rows; returns how many were confirmed.

        Raises pika connection errors; rows confirmed before the error are
        recorded as published, the rest are released to be tried again (a row
        whose confirm was lost with the connection may go out twice: same task
        id, which the workers' delivery log deduplicates).
        """
        claimed = self._claim()
        if not claimed:
            return 0
        window = self._window = _Window()
        impl = self.channel._impl
        error = None
        try:
            for row, message in claimed:
                impl.basic_publish(shared.EXCHANGE, message.routing_key, message.body,
                                   pika.BasicProperties(headers=message.headers, **message.properties), mandatory=True)
                self._next_tag += 1
                window.rows[self._next_tag] = row
            deadline = time.monotonic() + CLAIM_LEASE.total_seconds() / 2  # a slow broker: give the rest back in time
            while window.rows and impl.is_open and (left := deadline - time.monotonic()) > 0:
                self.connection.process_data_events(time_limit=min(left, 1.0))
            if not impl.is_open:  # closed by the broker (e.g. the exchange was deleted): reconnect
                raise pika.exceptions.ChannelWrongStateError("channel closed while publishing")
        except (pika.exceptions.AMQPError, OSError) as exc:
            error = exc
        published = [r for r in window.acked if r.notification_id not in window.returned]
        refused = [(r, "unroutable: no queue bound for notifications.dispatch") for r in window.acked
                   if r.notification_id in window.returned]
        refused += [(r, "nacked by the broker") for r in window.nacked]
        confirmed_or_refused = {r.id for r in window.acked} | {r.id for r in window.nacked}
        released = [r for r, _m in claimed if r.id not in confirmed_or_refused]
        self._record(published, refused, released)
        self._account(published, refused)
        if error is not None:
            raise error
        return len(published)

    def _account(self, published: list, refused: list) -> None:
        for row in published:
            metrics.published().labels(row.event).inc()
            log.info("outbox_published", notification_id=row.notification_id, booking_event=row.event,
                     correlation_id=row.correlation_id)
        for row, error in refused:
            reason = "unroutable" if error.startswith("unroutable") else "nack"
            metrics.publish_failures().labels(reason).inc()
            log.error(f"outbox_{'unroutable' if reason == 'unroutable' else 'nacked'}", notification_id=row.notification_id)
        self.stats.published += len(published)

    def run(self) -> None:
        """Publish until ``stop()``; reconnect with backoff while the broker is away."""
        listener = _Listener(self) if self.listen else None
        failures = 0
        while not self.stopping.is_set():
            try:
                if self.connection is None or not self.connection.is_open:
                    self._connect()
                self.wakeup.clear()  # a NOTIFY from now on wakes the next wait
                count = self.publish_due()
                failures = 0
                if count < self.batch_size:
                    self._wait_for_work(self.poll_seconds)
            except (pika.exceptions.AMQPError, OSError) as exc:
                failures += 1
                self.stats.failed += 1
                metrics.publish_failures().labels("broker_unavailable").inc()
                self._disconnect()
                delay = reconnect_delay(failures, self.max_backoff)
                log.warning("relay_broker_unavailable", error=repr(exc), retry_in=round(delay, 2))
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

    def stop(self, *_args) -> None:
        self.stopping.set()


class _Listener:
    """PostgreSQL: LISTEN on a dedicated connection and wake the relay on every NOTIFY."""

    def __init__(self, relay: Relay):
        self.relay = relay
        url = relay.engine.url.set(drivername="postgresql")
        self.conninfo = url.render_as_string(hide_password=False)
        self.thread = threading.Thread(target=self._run, name="relay-listener", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import psycopg

        failures = 0
        while not self.relay.stopping.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    failures = 0
                    self.relay._wake()  # rows committed while nobody listened
                    while not self.relay.stopping.is_set():
                        for _notify in conn.notifies(timeout=IDLE_SLICE_SECONDS, stop_after=1):
                            self.relay._wake()
            except psycopg.Error as exc:
                failures += 1
                delay = reconnect_delay(failures, self.relay.max_backoff)
                log.warning("relay_listen_failed", error=type(exc).__name__, retry_in=round(delay, 2))
                self.relay.stopping.wait(delay)

    def stop(self) -> None:
        self.thread.join(IDLE_SLICE_SECONDS * 4)


def run_forever(settings) -> None:
    from booking_service.storage.db import make_engine, make_session_factory

    engine = make_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    relay = Relay(make_session_factory(engine), settings.amqp_url, poll_seconds=settings.relay_poll_seconds,
                  batch_size=settings.relay_batch_size, max_backoff=settings.relay_max_backoff_seconds)
    if settings.relay_metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.relay_metrics_port)
        log.info("relay_metrics_serving", port=settings.relay_metrics_port)
    signal.signal(signal.SIGTERM, relay.stop)
    signal.signal(signal.SIGINT, relay.stop)
    log.info("relay_started", poll_seconds=settings.relay_poll_seconds, batch_size=settings.relay_batch_size)
    relay.run()
    engine.dispose()
