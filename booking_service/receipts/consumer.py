"""The receipts consumer (``booking-service receipts``): delivery receipts from ``booking.receipts`` into the database.

One thread owns one pika ``BlockingConnection`` (pika is not thread-safe). It
consumes with a prefetch window and manual acks:

* a receipt that is valid by the contract (``shared.load_notification_status``,
  tolerant of new fields) is stored idempotently, ``INSERT … ON CONFLICT
  (delivery_id, sequence) DO NOTHING``, and acked after the commit: a
  redelivered or duplicated receipt changes nothing, and one whose commit did
  not happen is redelivered;
* a message that breaks the contract (not JSON, too big, a field wrong) is
  rejected without requeue, so RabbitMQ dead-letters it into
  ``booking.receipts.dlq``; the log line names the message id and the fields,
  never the body;
* when the database is away the connection is closed (the unacked receipts go
  back to the queue) and the consumer tries again after a capped backoff, as it
  does while the broker is away.

It never touches a booking: bookings and receipts are separate rows and
separate transactions, and on SQLite a receipt's transaction is as short as
one INSERT. It declares nothing: the queue is the notification service's
topology, and the booking user may only read it.
"""

from __future__ import annotations

import json
import signal
import threading

import pika
import pika.exceptions
import sqlalchemy as sa
import structlog
from marshmallow import ValidationError
from sqlalchemy.dialects import postgresql, sqlite

import shared
from booking_service.relay.relay import reconnect_delay
from booking_service.runtime import amqp, metrics
from booking_service.storage.models import NotificationReceipt, utcnow

log = structlog.get_logger(__name__)

RECEIPTS = NotificationReceipt.__table__
#: Larger bodies are no receipt (one is about 600 bytes): dead-lettered unread.
MAX_BODY_BYTES = 64 * 1024
#: Longest single wait inside ``process_data_events`` (SIGTERM latency; heartbeats are served meanwhile).
IDLE_SLICE_SECONDS = 0.5


class ContractBroken(ValueError):
    """Raised when a message on the receipts queue is not a valid ``notification.status``."""


def decode(body: bytes) -> dict:
    """A receipt as loaded by the contract; ``ContractBroken`` naming what is wrong (never the content)."""
    if len(body) > MAX_BODY_BYTES:
        raise ContractBroken(f"body of {len(body)} bytes is over {MAX_BODY_BYTES}")
    try:
        payload = json.loads(body.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ContractBroken(f"not JSON: {type(exc).__name__}") from None
    try:
        return shared.load_notification_status(payload)
    except ValidationError as exc:
        fields = sorted(exc.messages) if isinstance(exc.messages, dict) else ["_schema"]
        raise ContractBroken(f"breaks notification.status v1: {', '.join(map(str, fields))}") from None


def row_values(receipt: dict) -> dict:
    return {
        "delivery_id": str(receipt["delivery_id"]),
        "sequence": receipt["sequence"],
        "notification_id": str(receipt["notification_id"]),
        "booking_id": str(receipt["booking"]["id"]),
        "booking_version": receipt["booking"]["version"],
        "event": receipt["event"].value,
        "channel": receipt["channel"],
        "recipient": receipt["recipient"],
        "status": receipt["status"],
        "attempt": receipt["attempt"],
        "reason": receipt["reason"],
        "provider_message_id": receipt["provider_message_id"],
        "occurred_at": receipt["occurred_at"],
        "correlation_id": receipt["correlation_id"],
        "received_at": utcnow(),
    }


def store(engine: sa.Engine, receipt: dict) -> bool:
    """Store one receipt; False when it was there already (a duplicate)."""
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    statement = insert(RECEIPTS).values(**row_values(receipt)).on_conflict_do_nothing(
        index_elements=["delivery_id", "sequence"]).returning(RECEIPTS.c.id)
    with engine.begin() as conn:
        return conn.execute(statement).first() is not None


class ReceiptConsumer:
    def __init__(self, engine: sa.Engine, amqp_url: str, *, prefetch: int = 50, max_backoff: float = 3.0,
                 queue: str = shared.BOOKING_RECEIPTS_QUEUE) -> None:
        self.engine = engine
        self.amqp_url = amqp_url
        self.prefetch = prefetch
        self.max_backoff = max_backoff
        self.queue = queue
        self.stopping = threading.Event()
        self.connection: pika.BlockingConnection | None = None
        #: What happened so far (tests and logs read it).
        self.applied = self.duplicates = self.rejected = self.failures = 0

    def _connect(self) -> None:
        self.connection = pika.BlockingConnection(amqp.parameters(self.amqp_url))
        channel = self.connection.channel()
        channel.queue_declare(self.queue, passive=True)  # the notification service's topology declares it
        channel.basic_qos(prefetch_count=self.prefetch)
        channel.basic_consume(self.queue, self._on_message)
        log.info("receipts_consuming", queue=self.queue, prefetch=self.prefetch)

    def _disconnect(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None and connection.is_open:
            try:
                connection.close()  # unacked receipts go back to the queue
            except pika.exceptions.AMQPError as exc:
                log.warning("receipts_close_failed", error=repr(exc))

    def _on_message(self, channel, method, properties, body: bytes) -> None:
        message_id = (properties.message_id or "")[:100]
        try:
            receipt = decode(body)
        except ContractBroken as exc:
            channel.basic_reject(method.delivery_tag, requeue=False)  # → booking.receipts.dlq
            self.rejected += 1
            metrics.receipts_consumed().labels("rejected").inc()
            log.error("receipt_dead_lettered", message_id=message_id, reason=str(exc))
            return
        fresh = store(self.engine, receipt)  # a database error propagates: see run()
        channel.basic_ack(method.delivery_tag)
        if fresh:
            self.applied += 1
        else:
            self.duplicates += 1
        metrics.receipts_consumed().labels("applied" if fresh else "duplicate").inc()
        log.info("receipt_applied" if fresh else "receipt_duplicate", notification_id=str(receipt["notification_id"]),
                 delivery_id=str(receipt["delivery_id"]), sequence=receipt["sequence"], status=receipt["status"],
                 correlation_id=receipt["correlation_id"])

    def run(self) -> None:
        """Consume until ``stop()``; reconnect with a capped backoff while the broker or the database is away."""
        while not self.stopping.is_set():
            try:
                if self.connection is None or not self.connection.is_open:
                    self._connect()
                self.connection.process_data_events(time_limit=IDLE_SLICE_SECONDS)
                self.failures = 0
            except (pika.exceptions.AMQPError, OSError) as exc:
                self._back_off("broker_unavailable", repr(exc))
            except sa.exc.DBAPIError as exc:
                self._back_off("database_unavailable", type(exc).__name__)
        self._disconnect()
        log.info("receipts_stopped", applied=self.applied, duplicates=self.duplicates, rejected=self.rejected)

    def _back_off(self, reason: str, error: str) -> None:
        self.failures += 1
        self._disconnect()
        metrics.receipts_consumed().labels(reason).inc()
        delay = reconnect_delay(self.failures, self.max_backoff)
        log.warning(f"receipts_{reason}", error=error, retry_in=round(delay, 2))
        self.stopping.wait(delay)

    def stop(self, *_args) -> None:
        self.stopping.set()


def run_forever(settings) -> None:
    from booking_service.storage.db import make_engine

    engine = make_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    consumer = ReceiptConsumer(engine, settings.amqp_url, prefetch=settings.receipts_prefetch,
                               max_backoff=settings.receipts_max_backoff_seconds)
    signal.signal(signal.SIGTERM, consumer.stop)
    signal.signal(signal.SIGINT, consumer.stop)
    consumer.run()
    engine.dispose()
