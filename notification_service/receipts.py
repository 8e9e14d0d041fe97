"""Delivery receipts: build them from the ``receipts`` outbox and publish them to ``notifications.receipts``.

The delivery log writes a receipt row in the same transaction as every status
change (``delivery_log.py``), so the log is the source of truth and no receipt
can be lost: a row stays unpublished until the broker confirmed it.

:class:`ReceiptPublisher` runs as a daemon thread in every worker process
(started on ``worker_ready``): one pika ``BlockingConnection`` of its own with
publisher confirms and ``mandatory=True``, plain JSON messages (not Celery
tasks). It claims a batch of unpublished rows with a lease (``locked_until``,
``lease_owner``; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE``
on SQLite), so several publishers never publish the same row under normal
operation, publishes them, and marks them published after each confirm. A
commit that wrote receipts in this process wakes it at once; rows written by
other processes, or left by a dead publisher's lease, are found by a poll.
While the broker is away it probes with a capped backoff, and the rows go out
by themselves when it answers again. A lost confirm can publish a row twice:
the consumer deduplicates on ``(delivery_id, sequence)``.

No address travels: the recipient is masked (``a***@example.org``,
``devi…42``) and the reason is scrubbed of the address (and of anything shaped
like an e-mail address) before the message is validated against the contract.
"""

from __future__ import annotations

import json
import random
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pika
import pika.exceptions
import sqlalchemy as sa
import structlog
from marshmallow import ValidationError

import shared
from shared.amqp_url import for_pika
from shared.receipts import MAX_REASON_LENGTH, mask_email
from shared.wire import CORRELATION_HEADER, MESSAGE_TYPE_HEADER

from . import metrics
from .providers.http import scrub
from .tables import deliveries, receipts

log = structlog.get_logger("notification_service.receipts")

#: How long a claimed row belongs to the publisher that claimed it.
CLAIM_LEASE = timedelta(seconds=60)
#: A row the broker returned (no queue bound) or nacked waits this long before it is tried again.
REFUSED_DELAY = timedelta(seconds=30)
#: First reconnect delay; doubles per failure up to the configured cap.
RECONNECT_BASE_SECONDS = 0.25
#: Longest single wait while idle (heartbeats are served between waits; stop latency).
IDLE_SLICE_SECONDS = 0.2

_EMAIL_LIKE = re.compile(r"[^\s@<>\"'(),;:\[\]]+@[^\s@<>\"'(),;:\[\]]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _aware(value) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def one_line(text: str | None, limit: int) -> str | None:
    """``text`` as one line without control characters, at most ``limit`` characters (None when empty)."""
    if not text:
        return None
    text = " ".join(_CONTROL.sub(" ", text).split())
    return text[:limit] or None


def receipt_reason(text: str | None, address: str) -> str | None:
    """A short reason without personal data: the address scrubbed, other e-mail-shaped strings masked."""
    if not text:
        return None
    text = scrub(text, address)
    text = _EMAIL_LIKE.sub(lambda match: mask_email(match.group(0)), text)
    return one_line(text, MAX_REASON_LENGTH)


@dataclass(frozen=True)
class Receipt:
    """One message ready to publish."""

    row_id: int
    routing_key: str
    body: bytes
    properties: pika.BasicProperties


def build_receipt(row) -> dict:
    """The ``notification.status`` message (JSON-ready, validated strictly) of one joined outbox row."""
    return shared.dump_notification_status({
        "message_type": shared.NOTIFICATION_STATUS,
        "schema_version": 1,
        "notification_id": row.notification_id,
        "delivery_id": row.delivery_id,
        "booking": {"id": row.booking_id, "version": row.booking_version},
        "event": shared.Event(row.event),
        "channel": row.channel,
        "recipient": shared.mask_address(row.channel, row.address),
        "status": row.status,
        "attempt": row.attempt,
        "sequence": row.sequence,
        "occurred_at": _aware(row.occurred_at),
        "correlation_id": one_line(row.correlation_id, 200),
        "reason": receipt_reason(row.reason, row.address),
        "provider_message_id": one_line(row.provider_message_id, 500),
    })


def to_message(row, message: dict) -> Receipt:
    headers = {MESSAGE_TYPE_HEADER: shared.NOTIFICATION_STATUS}
    if message["correlation_id"]:
        headers[CORRELATION_HEADER] = message["correlation_id"]
    properties = pika.BasicProperties(
        content_type="application/json", content_encoding="utf-8", delivery_mode=2,
        message_id=f"{message['delivery_id']}:{message['sequence']}", type=shared.NOTIFICATION_STATUS,
        headers=headers)
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Receipt(row.id, shared.receipt_routing_key(message["channel"], message["status"]), body, properties)


class ReceiptOutbox:
    """The ``receipts`` table as the publisher uses it: claim with a lease, record what the broker said."""

    _COLUMNS = (receipts.c.id, receipts.c.delivery_id, receipts.c.sequence, receipts.c.status, receipts.c.attempt,
                receipts.c.reason, receipts.c.provider_message_id, receipts.c.occurred_at,
                deliveries.c.notification_id, deliveries.c.channel, deliveries.c.address, deliveries.c.booking_id,
                deliveries.c.booking_version, deliveries.c.event, deliveries.c.correlation_id)

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"

    def claim(self, owner: str, limit: int, now: datetime | None = None) -> list:
        """Lease up to ``limit`` unpublished rows (oldest first) and return them joined with their delivery."""
        now = now or utcnow()
        due = (sa.select(receipts.c.id)
               .where(receipts.c.published_at.is_(None),
                      sa.or_(receipts.c.locked_until.is_(None), receipts.c.locked_until < now))
               .order_by(receipts.c.id).limit(limit))
        if self.postgres:
            due = due.with_for_update(skip_locked=True)
        with self.engine.begin() as conn:
            ids = list(conn.execute(
                sa.update(receipts).where(receipts.c.id.in_(due.scalar_subquery()))
                .values(locked_until=now + CLAIM_LEASE, lease_owner=owner).returning(receipts.c.id)).scalars())
            if not ids:
                return []
            return list(conn.execute(
                sa.select(*self._COLUMNS).join(deliveries, deliveries.c.delivery_id == receipts.c.delivery_id)
                .where(receipts.c.id.in_(ids)).order_by(receipts.c.id)))

    def published(self, ids: list[int], now: datetime | None = None) -> None:
        if ids:
            with self.engine.begin() as conn:
                conn.execute(sa.update(receipts).where(receipts.c.id.in_(ids))
                             .values(published_at=now or utcnow(), locked_until=None, last_error=None))

    def release(self, ids: list[int], *, delay: timedelta | None = None, error: str | None = None) -> None:
        """Give rows back: at once (``delay`` None) or after ``delay`` (refused by the broker)."""
        if ids:
            until = utcnow() + delay if delay else None
            with self.engine.begin() as conn:
                conn.execute(sa.update(receipts).where(receipts.c.id.in_(ids), receipts.c.published_at.is_(None))
                             .values(locked_until=until, last_error=error))

    def unpublishable(self, row_id: int, error: str) -> None:
        """A row whose message would break the contract: closed for good (logged), never blocks the others."""
        with self.engine.begin() as conn:
            conn.execute(sa.update(receipts).where(receipts.c.id == row_id)
                         .values(published_at=utcnow(), locked_until=None, last_error=error[:2000]))

    def backlog(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(receipts)
                                .where(receipts.c.published_at.is_(None))).scalar_one()


def reconnect_delay(failures: int, cap: float) -> float:
    """Doubling from 0.25 s, capped at ``cap`` (a long outage is probed every ``cap`` seconds), 25 % jitter."""
    return min(cap, RECONNECT_BASE_SECONDS * 2 ** min(max(failures - 1, 0), 16)) * random.uniform(0.75, 1.0)


class ReceiptPublisher:
    """Publishes the receipts outbox until :meth:`stop`; one thread, one connection (pika is not thread-safe)."""

    def __init__(self, store, amqp_url: str, owner: str, *, poll_seconds: float = 1.0, batch_size: int = 100,
                 max_backoff: float = 3.0) -> None:
        self.store = store  # the process's SqlDeliveryLog: its engine, and its wake-up event
        self.outbox = ReceiptOutbox(store.engine)
        self.amqp_url = amqp_url
        self.owner = owner
        self.poll_seconds = poll_seconds
        self.batch_size = batch_size
        self.max_backoff = max_backoff
        self.stopping = threading.Event()
        self.connection: pika.BlockingConnection | None = None
        self.channel = None
        self.thread: threading.Thread | None = None
        #: Connection or database failures since the last success (tests and logs read it).
        self.failures = 0
        self.published_count = 0

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> "ReceiptPublisher":
        self.thread = threading.Thread(target=self.run, name="receipt-publisher", daemon=True)
        self.thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        self.store.receipts_written.set()
        if self.thread is not None:
            self.thread.join(timeout)

    def run(self) -> None:
        log.info("receipt_publisher_started", poll_seconds=self.poll_seconds)
        while not self.stopping.is_set():
            try:
                if self.connection is None or not self.connection.is_open:
                    self._connect()
                self.store.receipts_written.clear()  # a commit from now on wakes the next wait
                count = self.publish_batch()
                self.failures = 0
                if count < self.batch_size:
                    self._idle(self.poll_seconds)
            except (pika.exceptions.AMQPError, OSError) as exc:
                self._failed("broker_unavailable", repr(exc))
                self._disconnect()
            except sa.exc.DBAPIError as exc:
                self._failed("database_unavailable", type(exc).__name__)
        self._disconnect()
        log.info("receipt_publisher_stopped", published=self.published_count)

    def _failed(self, reason: str, error: str) -> None:
        self.failures += 1
        metrics.RECEIPT_PUBLISH_FAILURES.labels(reason).inc()
        delay = reconnect_delay(self.failures, self.max_backoff)
        log.warning(f"receipt_publisher_{reason}", error=error, retry_in=round(delay, 2))
        self.stopping.wait(delay)

    def _connect(self) -> None:
        params = pika.URLParameters(for_pika(self.amqp_url))
        params.heartbeat = 30
        params.blocked_connection_timeout = 30
        params.connection_attempts = 1
        params.socket_timeout = 5
        self.connection = pika.BlockingConnection(params)
        channel = self.connection.channel()
        channel.exchange_declare(shared.RECEIPTS_EXCHANGE, passive=True)  # declared by the topology at start
        channel.confirm_delivery()
        self.channel = channel
        log.info("receipt_publisher_connected")

    def _disconnect(self) -> None:
        connection, self.connection, self.channel = self.connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except pika.exceptions.AMQPError as exc:
                log.warning("receipt_publisher_close_failed", error=repr(exc))

    def _idle(self, seconds: float) -> None:
        """Wait for a local commit that wrote receipts, the poll interval, or stop; serve heartbeats meanwhile."""
        waited = 0.0
        while waited < seconds and not self.stopping.is_set():
            if self.store.receipts_written.wait(min(IDLE_SLICE_SECONDS, seconds - waited)):
                return
            waited += IDLE_SLICE_SECONDS
            if self.connection is not None and self.connection.is_open:
                self.connection.process_data_events(time_limit=0)

    # -- work ------------------------------------------------------------------------

    def publish_batch(self) -> int:
        """Claim, publish and record one batch; returns how many rows were confirmed.

        Raises pika errors after recording what was confirmed and giving the rest back.
        """
        rows = self.outbox.claim(self.owner, self.batch_size)
        if not rows:
            return 0
        published: list[int] = []
        refused: list[int] = []
        pending = [row.id for row in rows]
        try:
            for row in rows:
                try:
                    receipt = to_message(row, build_receipt(row))
                except (ValidationError, ValueError) as exc:
                    error = f"not published: breaks the contract: {getattr(exc, 'messages', exc)}"
                    self.outbox.unpublishable(row.id, error)
                    pending.remove(row.id)
                    metrics.RECEIPT_PUBLISH_FAILURES.labels("invalid").inc()
                    log.error("receipt_invalid", delivery_id=row.delivery_id, sequence=row.sequence, error=error)
                    continue
                try:
                    self.channel.basic_publish(shared.RECEIPTS_EXCHANGE, receipt.routing_key, receipt.body,
                                               receipt.properties, mandatory=True)
                    published.append(row.id)
                except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
                    refused.append(row.id)
                    metrics.RECEIPT_PUBLISH_FAILURES.labels(type(exc).__name__).inc()
                    log.warning("receipt_refused", delivery_id=row.delivery_id, sequence=row.sequence,
                                error=type(exc).__name__)
                pending.remove(row.id)
        finally:
            self.outbox.published(published)
            self.outbox.release(refused, delay=REFUSED_DELAY, error="refused by the broker (unroutable or nacked)")
            self.outbox.release(pending)
            self.published_count += len(published)
            metrics.RECEIPTS_PUBLISHED.inc(len(published))
        log.debug("receipts_published", count=len(published))
        return len(published)


_publisher: ReceiptPublisher | None = None
_lock = threading.Lock()


def start_publisher(settings) -> ReceiptPublisher | None:
    """Start this process's publisher thread (once); None when turned off."""
    global _publisher
    if not settings.receipts_publisher:
        return None
    from .delivery_log import delivery_log
    from .lease import process_owner

    with _lock:
        if _publisher is None:
            _publisher = ReceiptPublisher(
                delivery_log(settings.database_url), settings.amqp_url, process_owner().id,
                poll_seconds=settings.receipts_poll_seconds, batch_size=settings.receipts_batch_size,
                max_backoff=settings.receipts_max_backoff_seconds).start()
        return _publisher


def stop_publisher() -> None:
    global _publisher
    with _lock:
        publisher, _publisher = _publisher, None
    if publisher is not None:
        publisher.stop()
