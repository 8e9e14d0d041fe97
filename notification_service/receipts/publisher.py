"""The receipts publisher: a thread that publishes the ``receipts`` outbox to ``notifications.receipts``.

The delivery log writes a receipt row in the same transaction as every status
change (``delivery/repository.py``), so the log is the source of truth and no
receipt can be lost: a row stays unpublished until the broker confirmed it.

:class:`ReceiptPublisher` runs as a daemon thread in every worker process
(``lifecycle.py`` starts it on ``worker_ready``): one pika
``BlockingConnection`` of its own with publisher confirms and
``mandatory=True``, plain JSON messages (not Celery tasks). It claims a batch
of rows with a lease (``outbox.py``, on the delivery log's connection and
write lock), publishes the batch as one window of confirms
(``broker/confirm_window.py``), and records in one transaction which rows the
broker confirmed (published), returned (held back: no queue bound), or
nacked or left unanswered within ``CONFIRM_TIMEOUT_SECONDS`` (given back, and
the connection is made again, to any node of a cluster, before the next
batch: a channel whose queue leader died can nack for minutes while a new
connection is acked at once, and a hung node never answers). A commit that wrote receipts in this process wakes it
(after ``LINGER_SECONDS``, so a busy worker publishes many receipts per
round); rows written by other processes, or left by a dead publisher's lease,
are found by a poll. While the broker is away it probes with a capped backoff
(``runtime/backoff.py``), and the rows go out by themselves when it answers
again. A lost confirm can publish a row twice: the consumer deduplicates on
``(delivery_id, sequence)``.
"""

from __future__ import annotations

import threading

import pika
import pika.exceptions
import sqlalchemy as sa
import structlog
from marshmallow import ValidationError

import shared
from notification_service.broker import topology
from notification_service.broker.confirm_window import ConfirmWindow, NotConfirmed
from notification_service.broker.connection import abort as drop
from notification_service.broker.connection import connect
from notification_service.delivery.repository import SqlDeliveryLog
from notification_service.receipts.message import build_receipt, to_message
from notification_service.receipts.outbox import BatchOutcome, ReceiptOutbox
from notification_service.runtime import metrics
from notification_service.runtime.backoff import reconnect_delay

log = structlog.get_logger("notification_service.receipts.publisher")

#: Longest single wait while idle (heartbeats are served between waits; stop latency).
IDLE_SLICE_SECONDS = 0.2
#: After a commit wakes the publisher, how long it lets more receipts gather before it claims a batch.
LINGER_SECONDS = 0.1
#: How long a window waits for its confirms before the rest count as not sent (far below the claim lease):
#: a healthy broker confirms in milliseconds, and a quorum queue has a new leader 0.1-0.6 s after a node dies.
CONFIRM_TIMEOUT_SECONDS = 5.0


class ReceiptPublisher:
    """Publishes the receipts outbox until :meth:`stop`; one thread, one connection (pika is not thread-safe)."""

    def __init__(self, store: SqlDeliveryLog, amqp_url: str, owner: str, *, poll_seconds: float = 1.0,
                 batch_size: int = 100, max_backoff: float = 3.0,
                 confirm_timeout: float = CONFIRM_TIMEOUT_SECONDS) -> None:
        self.store = store  # the process's delivery log: its write lock, and its wake-up event
        self.outbox = ReceiptOutbox(store)
        self.amqp_url = amqp_url
        self.owner = owner
        self.poll_seconds = poll_seconds
        self.batch_size = batch_size
        self.max_backoff = max_backoff
        self.confirm_timeout = confirm_timeout
        self.stopping = threading.Event()
        self.connection: pika.BlockingConnection | None = None
        self.window: ConfirmWindow[int] | None = None
        self.thread: threading.Thread | None = None
        #: Connection or database failures since the last success (tests and logs read it).
        self.failures = 0
        self.published_count = 0
        # The outbox runs on the driver's connection: its errors arrive unwrapped by SQLAlchemy.
        self._database_errors = (sa.exc.DBAPIError, store.engine.dialect.loaded_dbapi.Error)

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
            except NotConfirmed as exc:
                # A new connection, maybe to another node, before the next batch. The old one is dropped, not
                # closed: the closing handshake waits for a hung node, or for a blocked connection's block to end.
                self._disconnect(abort=True)
                self._failed("not_confirmed", str(exc))
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
        self.connection = connect(self.amqp_url)
        channel = self.connection.channel()
        channel.exchange_declare(shared.RECEIPTS_EXCHANGE, passive=True)  # declared by the topology at start
        self.window = ConfirmWindow(self.connection, channel)
        log.info("receipt_publisher_connected")

    def _declare_receipt_queues(self) -> None:
        """Receipts came back unroutable: ``booking.receipts`` is gone. Declare the receipts queues again, as the
        worker does at start (``topology.declare``), so the rows held back go out on their next try.

        Seen in CI after a rolling restart of a cluster: the receipts consumer was told ``no queue
        'booking.receipts'`` by every node for minutes, while deliveries flowed (Celery declares the work
        queues again on every reconnect; the receipts queues were declared once, at worker start). On its own
        channel: where this login may not declare them (a broker loaded from the definitions, which has
        them), only that channel is refused, and the operator sees why in the log.
        """
        if self.connection is None or not self.connection.is_open:
            return
        channel = self.connection.channel()
        try:
            for queue in topology.receipt_queues:
                channel.queue_declare(queue.name, durable=True, arguments=topology.queue_arguments(queue))
                channel.queue_bind(queue.name, queue.exchange.name, routing_key=queue.routing_key)
        except pika.exceptions.ChannelClosedByBroker as exc:
            log.error("receipt_queues_not_declared", error=repr(exc))
            return
        channel.close()
        log.warning("receipt_queues_declared", queues=[queue.name for queue in topology.receipt_queues])

    def _disconnect(self, abort: bool = False) -> None:
        """Close the connection; ``abort`` drops it without the closing handshake (a node that hangs)."""
        connection, self.connection, self.window = self.connection, None, None
        if abort and connection is not None:
            drop(connection, "confirms missing: connection dropped")
        elif connection is not None and connection.is_open:
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

        Raises pika errors, or ``NotConfirmed`` for nacks and confirms missing at the deadline, after
        recording what was confirmed and giving the rest back (a row whose confirm was lost goes out
        again: the consumer deduplicates).
        """
        window = self.window
        if window is None or not window.is_open:
            raise pika.exceptions.ChannelWrongStateError("not connected: no channel to publish receipts on")
        rows = self.outbox.claim(self.owner, self.batch_size)
        if not rows:
            return 0
        outcome = BatchOutcome()
        window.begin()
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
                window.publish(row.id, shared.RECEIPTS_EXCHANGE, receipt.routing_key, receipt.body,
                               receipt.properties)
            window.wait(self.confirm_timeout)
        finally:
            answers = window.answers()
            outcome.published = answers.confirmed
            outcome.refused = sorted(answers.returned)
            outcome.nacked = answers.nacked
            settled = set(outcome.published) | set(outcome.refused) | set(outcome.nacked)
            settled |= {row_id for row_id, _e in outcome.closed}
            outcome.released = [row.id for row in rows if row.id not in settled]
            self.outbox.record(outcome)
            if outcome.refused:
                metrics.RECEIPT_PUBLISH_FAILURES.labels("refused").inc(len(outcome.refused))
                log.warning("receipts_refused", count=len(outcome.refused))
                self._declare_receipt_queues()
            if outcome.nacked:
                metrics.RECEIPT_PUBLISH_FAILURES.labels("nacked").inc(len(outcome.nacked))
            self.published_count += len(outcome.published)
            metrics.RECEIPTS_PUBLISHED.inc(len(outcome.published))
        log.debug("receipts_published", count=len(outcome.published))
        if (failure := answers.failure()) is not None:
            raise failure
        return len(outcome.published)
