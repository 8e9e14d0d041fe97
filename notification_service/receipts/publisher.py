"""Delivery receipts: build them from the ``receipts`` outbox and publish them to ``notifications.receipts``.

The delivery log writes a receipt row in the same transaction as every status
change (``delivery_log.py``), so the log is the source of truth and no receipt
can be lost: a row stays unpublished until the broker confirmed it.

:class:`ReceiptPublisher` runs as a daemon thread in every worker process
(started on ``worker_ready``): one pika ``BlockingConnection`` of its own with
publisher confirms and ``mandatory=True``, plain JSON messages (not Celery
tasks). It claims a batch of unpublished rows with a lease (``locked_until``,
``lease_owner``; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE``
on SQLite, on the delivery log's connection and write lock), so several
publishers never publish the same row under normal operation, publishes the
batch as one window of confirms, and records in one transaction which rows the
broker confirmed (published), returned or nacked (held back), or never answered
(given back). A commit that wrote receipts in this process wakes it (after
``LINGER_SECONDS``, so a busy worker publishes many receipts per round); rows
written by other processes, or left by a dead publisher's lease, are found by
a poll.
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
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pika
import pika.exceptions
import sqlalchemy as sa
import structlog
from marshmallow import ValidationError

import shared
from notification_service.delivery.log import aware
from notification_service.delivery.machine import utcnow
from notification_service.delivery.tables import receipts
from notification_service.providers.http import scrub
from notification_service.runtime import metrics
from shared.amqp_url import for_pika
from shared.receipts import MAX_REASON_LENGTH, mask_email
from shared.wire import CORRELATION_HEADER, MESSAGE_TYPE_HEADER

log = structlog.get_logger("notification_service.receipts.publisher")

#: How long a claimed row belongs to the publisher that claimed it.
CLAIM_LEASE = timedelta(seconds=60)
#: A row the broker returned (no queue bound) or nacked waits this long before it is tried again.
REFUSED_DELAY = timedelta(seconds=30)
#: First reconnect delay; doubles per failure up to the configured cap.
RECONNECT_BASE_SECONDS = 0.25
#: Longest single wait while idle (heartbeats are served between waits; stop latency).
IDLE_SLICE_SECONDS = 0.2
#: After a commit wakes the publisher, how long it lets more receipts gather before it claims a batch.
LINGER_SECONDS = 0.1

_EMAIL_LIKE = re.compile(r"[^\s@<>\"'(),;:\[\]]+@[^\s@<>\"'(),;:\[\]]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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
        "occurred_at": aware(row.occurred_at),
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


#: The outbox statements (``:name`` parameters; ``ReceiptOutbox`` adapts them to the driver).
_CLAIM = ("UPDATE receipts SET locked_until = :until, lease_owner = :owner WHERE id IN (SELECT id FROM receipts"
          " WHERE published_at IS NULL AND (locked_until IS NULL OR locked_until < :now) ORDER BY id LIMIT :limit"
          "{skip_locked})")
_CLAIMED = ("SELECT r.id, r.delivery_id, r.sequence, r.status, r.attempt, r.reason, r.provider_message_id,"
            " r.occurred_at, d.notification_id, d.channel, d.address, d.booking_id, d.booking_version, d.event,"
            " d.correlation_id FROM receipts r JOIN deliveries d ON d.delivery_id = r.delivery_id"
            " WHERE r.published_at IS NULL AND r.lease_owner = :owner AND r.locked_until = :until ORDER BY r.id")
_PUBLISHED = "UPDATE receipts SET published_at = :now, locked_until = NULL, last_error = NULL WHERE id = :id"
_RELEASE = ("UPDATE receipts SET locked_until = :until, last_error = :error WHERE id = :id"
            " AND published_at IS NULL")
_CLOSED = "UPDATE receipts SET published_at = :now, locked_until = NULL, last_error = :error WHERE id = :id"


@dataclass(frozen=True)
class ReceiptRow:
    """An outbox row joined with its delivery: what :func:`build_receipt` needs."""

    id: int
    delivery_id: str
    sequence: int
    status: str
    attempt: int
    reason: str | None
    provider_message_id: str | None
    occurred_at: datetime | str
    notification_id: str
    channel: str
    address: str
    booking_id: str
    booking_version: int
    event: str
    correlation_id: str | None


@dataclass
class BatchOutcome:
    """What became of a claimed batch; :meth:`ReceiptOutbox.record` writes it in one transaction."""

    published: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    released: list[int] = field(default_factory=list)
    closed: list[tuple[int, str]] = field(default_factory=list)  # broke the contract: (row id, error)


class ReceiptOutbox:
    """The ``receipts`` table as the publisher uses it: claim a batch with a lease, record what became of it.

    Two write transactions per batch, on the delivery log's own connection and write lock (the
    workers' threads and processes take turns there; no second connection sleeps in SQLite's busy
    handler), counted in ``notification_db_transactions_total`` like the rest.
    """

    def __init__(self, store) -> None:
        self.store = store  # the process's SqlDeliveryLog
        skip_locked = "" if store.sqlite else " FOR UPDATE SKIP LOCKED"
        self.sql = {name: store.prepare(text.replace("{skip_locked}", skip_locked)) for name, text in
                    (("claim", _CLAIM), ("claimed", _CLAIMED), ("published", _PUBLISHED), ("release", _RELEASE),
                     ("closed", _CLOSED))}

    def claim(self, owner: str, limit: int, now: datetime | None = None) -> list[ReceiptRow]:
        """Lease up to ``limit`` unpublished rows (oldest first) and return them joined with their delivery."""
        now = now or utcnow()
        params = {"owner": owner, "until": self.store.time(now + CLAIM_LEASE), "now": self.store.time(now),
                  "limit": limit}
        with self.store.write_transaction() as cur:
            cur.execute(self.sql["claim"], params)
            if not cur.rowcount:
                return []
            cur.execute(self.sql["claimed"], params)
            return [ReceiptRow(*row) for row in cur.fetchall()]

    def record(self, outcome: BatchOutcome, now: datetime | None = None) -> None:
        now = now or utcnow()
        ts = self.store.time(now)
        held_until = self.store.time(now + REFUSED_DELAY)
        refused_error = "refused by the broker (unroutable or nacked)"
        with self.store.write_transaction() as cur:
            if outcome.published:
                cur.executemany(self.sql["published"], [{"now": ts, "id": i} for i in outcome.published])
            if outcome.refused:
                cur.executemany(self.sql["release"], [{"until": held_until, "error": refused_error, "id": i}
                                                      for i in outcome.refused])
            if outcome.released:
                cur.executemany(self.sql["release"], [{"until": None, "error": None, "id": i}
                                                      for i in outcome.released])
            if outcome.closed:
                cur.executemany(self.sql["closed"], [{"now": ts, "error": error[:2000], "id": i}
                                                     for i, error in outcome.closed])

    def backlog(self) -> int:
        with self.store.engine.connect() as conn:
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
        self.outbox = ReceiptOutbox(store)
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
        # The outbox runs on the driver's connection: its errors arrive unwrapped by SQLAlchemy.
        self._database_errors = (sa.exc.DBAPIError, store.engine.dialect.dbapi.Error)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> ReceiptPublisher:
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
            except self._database_errors as exc:
                self._failed("database_unavailable", f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any one batch; logged and counted
                log.error("receipt_publisher_failed", error=repr(exc), exc_info=True)
                self._failed("unexpected", type(exc).__name__)
                self._disconnect()
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
        # A batch is a window: every message is written, then the confirms are collected (the broker
        # acks several at once). BlockingChannel.basic_publish would wait for each confirm, so the
        # publishes go through its asynchronous channel (``_impl``), driven by process_data_events
        # on this one thread.
        impl = channel._impl
        selected: list = []
        impl.add_on_return_callback(self._on_return)
        impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=selected.append)
        while not selected:
            self.connection.process_data_events(time_limit=1)
        self.channel, self._next_tag, self._window = channel, 0, {}
        log.info("receipt_publisher_connected")

    def _on_confirm(self, frame) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        for tag in [t for t in self._window if t <= method.delivery_tag] if method.multiple else [method.delivery_tag]:
            row_id = self._window.pop(tag, None)
            if row_id is not None:
                (self._acked if acked else self._nacked).append(row_id)
        if not self._window and self.connection is not None:
            self.connection.call_later(0, _nothing)  # ends the process_data_events wait at once

    def _on_return(self, _channel, _method, properties, _body) -> None:
        # basic.return comes before the basic.ack of the same message.
        self._returned.add(properties.message_id)

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
                # Let the commits of the next moment join the batch: one claim, one window of
                # confirms and one record for many receipts instead of a round of each per receipt.
                self.stopping.wait(LINGER_SECONDS)
                return
            waited += IDLE_SLICE_SECONDS
            if self.connection is not None and self.connection.is_open:
                self.connection.process_data_events(time_limit=0)

    # -- work ------------------------------------------------------------------------

    def publish_batch(self) -> int:
        """Claim, publish and record one batch; returns how many rows the broker confirmed.

        Raises pika errors after recording what was confirmed and giving the rest back (a row whose
        confirm was lost with the connection goes out again: the consumer deduplicates).
        """
        rows = self.outbox.claim(self.owner, self.batch_size)
        if not rows:
            return 0
        outcome = BatchOutcome()
        message_ids: dict[int, str] = {}
        self._window, self._acked, self._nacked, self._returned = {}, [], [], set()
        impl = self.channel._impl
        try:
            for row in rows:
                try:
                    receipt = to_message(row, build_receipt(row))
                except (ValidationError, ValueError) as exc:
                    error = f"not published: breaks the contract: {getattr(exc, 'messages', exc)}"
                    outcome.closed.append((row.id, error))
                    metrics.RECEIPT_PUBLISH_FAILURES.labels("invalid").inc()
                    log.error("receipt_invalid", delivery_id=row.delivery_id, sequence=row.sequence, error=error)
                    continue
                impl.basic_publish(shared.RECEIPTS_EXCHANGE, receipt.routing_key, receipt.body, receipt.properties,
                                   mandatory=True)
                self._next_tag += 1
                self._window[self._next_tag] = row.id
                message_ids[row.id] = receipt.properties.message_id
            deadline = time.monotonic() + CLAIM_LEASE.total_seconds() / 2  # a slow broker: give the rest back in time
            while self._window and impl.is_open and (left := deadline - time.monotonic()) > 0:
                self.connection.process_data_events(time_limit=min(left, 1.0))
            if not impl.is_open:
                raise pika.exceptions.ChannelWrongStateError("channel closed while publishing receipts")
        finally:
            returned = {row_id for row_id in self._acked if message_ids[row_id] in self._returned}
            outcome.published = [row_id for row_id in self._acked if row_id not in returned]
            outcome.refused = sorted(returned) + self._nacked
            settled = set(outcome.published) | set(outcome.refused) | {row_id for row_id, _e in outcome.closed}
            outcome.released = [row.id for row in rows if row.id not in settled]
            self.outbox.record(outcome)
            if outcome.refused:
                metrics.RECEIPT_PUBLISH_FAILURES.labels("refused").inc(len(outcome.refused))
                log.warning("receipts_refused", count=len(outcome.refused), unroutable=len(returned))
            self.published_count += len(outcome.published)
            metrics.RECEIPTS_PUBLISHED.inc(len(outcome.published))
        log.debug("receipts_published", count=len(outcome.published))
        return len(outcome.published)


def _nothing() -> None:
    """A timer callback whose only effect is to end a ``process_data_events`` wait."""


_publisher: ReceiptPublisher | None = None
_lock = threading.Lock()


def start_publisher(settings) -> ReceiptPublisher | None:
    """Start this process's publisher thread (once); None when turned off."""
    global _publisher
    if not settings.receipts_publisher:
        return None
    from notification_service.delivery.log import delivery_log
    from notification_service.delivery.owner import process_owner

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
