"""The outbox relay: publishes due outbox rows as Celery v2 task messages.

One thread owns one pika ``BlockingConnection`` (pika is not thread-safe) and
uses publisher confirms with ``mandatory=True``: a row is marked published
only after the broker confirmed it was routed to a queue. While the broker is
away the relay backs off exponentially (with jitter) and resumes by itself;
the rows wait in the database, so no booking is ever refused for it.

Wake-up is a short poll (``BOOKING_RELAY_POLL_SECONDS``, 0.1 s by default):
while idle the relay sleeps inside ``connection.sleep``, which keeps serving
heartbeats, so an idle connection is never dropped by the broker.

A batch is claimed in one short transaction that leases its rows
(``locked_until``), published outside any transaction, and its outcomes
recorded in a second short one; no database lock is held while waiting for
the broker. On PostgreSQL the claim reads ``FOR UPDATE SKIP LOCKED`` and on
SQLite claims are serialised (``BEGIN IMMEDIATE``), so several relays can run
at once and each row is published by one of them.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import pika
import pika.exceptions
import sqlalchemy as sa
import structlog
from marshmallow import ValidationError
from sqlalchemy.orm import sessionmaker

import shared
from shared.amqp_url import for_pika

from . import metrics
from .models import OutboxMessage, utcnow

log = structlog.get_logger(__name__)

#: Hard and soft time limits the dispatch task runs under ([hard, soft] on the wire).
DISPATCH_TIME_LIMIT = 120
DISPATCH_SOFT_TIME_LIMIT = 100
#: How long a claimed row belongs to the relay that claimed it. A relay that
#: dies mid-batch leaves its rows to the others (or to itself after a restart)
#: once this passes; a live one gives unsent rows back after half of it.
CLAIM_LEASE = timedelta(seconds=120)
#: First wait before an unroutable or nacked row is tried again; doubles per attempt.
RETRY_BASE = timedelta(seconds=30)
#: Longest wait between two attempts of one row.
RETRY_CEILING = timedelta(hours=1)


def retry_delay(attempts: int) -> timedelta:
    """Exponential backoff with jitter for a row the broker refused ``attempts`` times.

    Jitter spreads rows refused together (a missing binding refuses them all)
    over time, so they do not come back as one burst.
    """
    ceiling = min(RETRY_BASE * 2 ** min(max(attempts - 1, 0), 16), RETRY_CEILING)
    return ceiling * random.uniform(0.5, 1.0)


@dataclass
class RelayStats:
    published: int = 0
    failed: int = 0


def build_message(row: OutboxMessage) -> shared.TaskMessage:
    """The Celery v2 envelope of one outbox row; raises ValidationError if the payload breaks the contract."""
    shared.validate_notification_requested(row.payload)  # the stored JSON-ready dict is what goes on the wire
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


class Relay:
    def __init__(self, session_factory: sessionmaker, amqp_url: str, *, poll_seconds: float = 0.1,
                 batch_size: int = 50, max_backoff: float = 30.0):
        self.session_factory = session_factory
        self.amqp_url = amqp_url
        self.poll_seconds = poll_seconds
        self.batch_size = batch_size
        self.max_backoff = max_backoff
        self.stopping = threading.Event()
        self.connection: pika.BlockingConnection | None = None
        self.channel = None
        self.stats = RelayStats()

    # Connection ----------------------------------------------------------------
    def _connect(self) -> None:
        params = pika.URLParameters(for_pika(self.amqp_url))
        params.heartbeat = 30
        params.blocked_connection_timeout = 30
        params.connection_attempts = 1
        params.socket_timeout = 5
        self.connection = pika.BlockingConnection(params)
        channel = self.connection.channel()
        # The booking user may only publish: check the exchange exists, declare nothing.
        channel.exchange_declare(shared.EXCHANGE, passive=True)
        channel.confirm_delivery()
        self.channel = channel
        log.info("relay_connected")

    def _disconnect(self) -> None:
        connection, self.connection, self.channel = self.connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except pika.exceptions.AMQPError as exc:
                log.warning("relay_close_failed", error=repr(exc))

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set() and (left := deadline - time.monotonic()) > 0:
            if self.connection is not None and self.connection.is_open:
                self.connection.sleep(min(left, 0.5))  # serves heartbeats while waiting; wakes for SIGTERM
            else:
                self.stopping.wait(left)

    # Work -----------------------------------------------------------------------
    def _claim(self) -> list[tuple[OutboxMessage, shared.TaskMessage]]:
        """Lease a batch of due rows in one short transaction; settle the ones that must never be sent.

        The lease (``locked_until``) is what keeps a second relay off these rows
        while this one publishes them outside any transaction, so no database
        lock is held across network waits: on SQLite a stalled broker would
        otherwise hold the one write lock and stall every booking.
        """
        now = utcnow()
        claimed = []
        with self.session_factory() as session, session.begin():
            query = (
                sa.select(OutboxMessage)
                .where(
                    OutboxMessage.status == "pending",
                    OutboxMessage.available_at <= now,
                    sa.or_(OutboxMessage.locked_until.is_(None), OutboxMessage.locked_until <= now),
                )
                .order_by(OutboxMessage.priority.desc(), OutboxMessage.available_at, OutboxMessage.id)
                .limit(self.batch_size)
            )
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)  # a second relay takes the next rows
            for row in session.execute(query).scalars():
                if row.expires_at is not None and row.expires_at <= now:
                    row.status, row.last_error = "expired", "due after the booking started; not sent"
                    continue
                try:
                    message = build_message(row)
                except ValidationError as exc:
                    row.status, row.last_error = "invalid", f"contract violation: {exc.messages}"
                    metrics.publish_failures().labels("invalid").inc()
                    log.error("outbox_row_invalid", notification_id=row.notification_id, errors=exc.messages)
                    continue
                row.attempts += 1
                row.locked_until = now + CLAIM_LEASE
                claimed.append((row, message))
        return claimed

    def _record(self, outcomes: list[tuple[OutboxMessage, str]]) -> None:
        """Write what the broker said about each leased row, and drop the leases."""
        now = utcnow()
        with self.session_factory() as session, session.begin():
            for row, outcome in outcomes:
                where = OutboxMessage.id == row.id
                if outcome == "published":
                    # Recorded even if the row was superseded meanwhile: it did go out.
                    values = {"status": "published", "published_at": now, "last_error": None}
                elif outcome == "release":
                    values = {}
                    where = sa.and_(where, OutboxMessage.status == "pending")
                else:
                    values = {"available_at": now + retry_delay(row.attempts), "last_error": outcome}
                    where = sa.and_(where, OutboxMessage.status == "pending")
                session.execute(sa.update(OutboxMessage).where(where).values(locked_until=None, **values))

    def publish_due(self) -> int:
        """Publish one batch of due rows; returns how many were confirmed.

        Raises pika connection errors; rows confirmed before the error are
        recorded as published, the rest are released to be tried again.
        """
        claimed = self._claim()
        outcomes: list[tuple[OutboxMessage, str]] = []
        deadline = time.monotonic() + CLAIM_LEASE.total_seconds() / 2
        try:
            for index, (row, message) in enumerate(claimed):
                if time.monotonic() > deadline:  # a slow broker: give the rest back well before the lease ends
                    outcomes += [(r, "release") for r, _m in claimed[index:]]
                    break
                try:
                    self.channel.basic_publish(
                        shared.EXCHANGE,
                        message.routing_key,
                        message.body,
                        pika.BasicProperties(headers=message.headers, **message.properties),
                        mandatory=True,
                    )
                except pika.exceptions.UnroutableError:
                    outcomes.append((row, "unroutable: no queue bound for notifications.dispatch"))
                    metrics.publish_failures().labels("unroutable").inc()
                    log.error("outbox_unroutable", notification_id=row.notification_id)
                    continue
                except pika.exceptions.NackError:
                    outcomes.append((row, "nacked by the broker"))
                    metrics.publish_failures().labels("nack").inc()
                    log.error("outbox_nacked", notification_id=row.notification_id)
                    continue
                except (pika.exceptions.AMQPError, OSError):
                    # This row may or may not have reached the broker; it is sent again
                    # after the reconnect (at-least-once; notification_id is the dedupe key).
                    outcomes += [(r, "release") for r, _m in claimed[index:]]
                    raise
                outcomes.append((row, "published"))
                metrics.published().labels(row.event).inc()
                log.info("outbox_published", notification_id=row.notification_id, booking_event=row.event,
                         correlation_id=row.correlation_id)
        finally:
            if outcomes:
                self._record(outcomes)
        published = sum(1 for _r, outcome in outcomes if outcome == "published")
        self.stats.published += published
        return published

    def run(self) -> None:
        """Publish until ``stop()``; reconnect with backoff while the broker is away."""
        failures = 0
        while not self.stopping.is_set():
            try:
                if self.connection is None or not self.connection.is_open:
                    self._connect()
                count = self.publish_due()
                failures = 0
                if count < self.batch_size:
                    self._sleep(self.poll_seconds)
            except (pika.exceptions.AMQPError, OSError) as exc:
                failures += 1
                self.stats.failed += 1
                metrics.publish_failures().labels("broker_unavailable").inc()
                self._disconnect()
                delay = self._backoff(failures)
                log.warning("relay_broker_unavailable", error=repr(exc), retry_in=round(delay, 2))
                self.stopping.wait(delay)
            except sa.exc.DBAPIError as exc:
                # The database is away: nothing can be claimed or recorded. Rows
                # published but not recorded go out again after their lease.
                failures += 1
                self.stats.failed += 1
                metrics.publish_failures().labels("database_unavailable").inc()
                delay = self._backoff(failures)
                log.warning("relay_database_unavailable", error=type(exc).__name__, retry_in=round(delay, 2))
                self._sleep(delay)
        self._disconnect()
        log.info("relay_stopped", published=self.stats.published)

    def _backoff(self, failures: int) -> float:
        """Full-jitter exponential backoff, capped at ``max_backoff``."""
        return random.uniform(0, min(self.max_backoff, 0.5 * 2 ** min(failures, 10)))

    def stop(self, *_args) -> None:
        self.stopping.set()


def run_forever(settings) -> None:
    from .db import make_engine, make_session_factory

    engine = make_engine(settings.database_url)
    relay = Relay(make_session_factory(engine), settings.amqp_url, poll_seconds=settings.relay_poll_seconds,
                  batch_size=settings.relay_batch_size, max_backoff=settings.relay_max_backoff_seconds)
    if settings.relay_metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.relay_metrics_port)
        log.info("relay_metrics_serving", port=settings.relay_metrics_port)
    signal.signal(signal.SIGTERM, relay.stop)
    signal.signal(signal.SIGINT, relay.stop)
    log.info("relay_started", poll_seconds=settings.relay_poll_seconds)
    relay.run()
    engine.dispose()
