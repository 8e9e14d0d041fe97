"""The receipts consumer (``booking-service receipts``): delivery receipts from ``booking.receipts`` into the database.

One thread owns one pika ``BlockingConnection`` (pika is not thread-safe). It
consumes with a prefetch window and manual acks, and has one rule:

* a receipt that is valid by the contract (``shared.load_notification_status``,
  tolerant of new fields) and agrees with what the booking service knows is
  stored idempotently, ``INSERT … ON CONFLICT (delivery_id, sequence) DO
  NOTHING``, and acked after the commit: a redelivered or duplicated receipt
  changes nothing, and one whose commit did not happen is redelivered;
* a message that cannot be applied, for any reason other than the broker or
  the database being unreachable (not JSON, too big or deep, a field wrong,
  another booking's notification, a value the database refuses, a bug), is
  rejected without requeue, so RabbitMQ dead-letters it into
  ``booking.receipts.dlq``; its reason is stored first (``receipt_dead_letters``,
  read by ``booking-service receipts-dlq list``), and the log line and the
  ``rejected`` metric carry it too; the reason names fields and error classes,
  never the body (``booking_service.receipts.poison``);
* when the database is away the connection is closed (the unacked receipts go
  back to the queue) and the consumer tries again after a capped backoff, as it
  does while the broker is away.

On a cluster (several nodes in ``AMQP_URL``) a node that dies closes the
connection and the consumer reconnects to another at once; a node that hangs
closes nothing, and pika's heartbeat check (3 s heartbeats,
``runtime/amqp.py``) gives the connection up 8 to ~16 s later. The unacked
receipts go back to the queue either way, and a copy applied twice changes
nothing.

It never touches a booking: bookings and receipts are separate rows and
separate transactions, and on SQLite a receipt's transaction is two indexed
reads and one INSERT. It declares nothing: the queue is the notification
service's topology, and the booking user may only read it.
"""

from __future__ import annotations

import signal
import threading

import pika
import pika.exceptions
import sqlalchemy as sa
import structlog

import shared
from booking_service.receipts.dead_letters import record_reason
from booking_service.receipts.poison import DATABASE_OUTAGE, decode, is_outage, reason
from booking_service.receipts.store import store
from booking_service.runtime import amqp, metrics
from booking_service.runtime.backoff import reconnect_delay

log = structlog.get_logger(__name__)

#: Longest single wait inside ``process_data_events`` (SIGTERM latency; heartbeats are served meanwhile).
IDLE_SLICE_SECONDS = 0.5


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
        #: The broker node (host:port) of the current or last connection, for the logs.
        self.node = ""
        #: Set when the broker cancelled our consumer (queue deleted): ``run`` reconnects.
        self.cancelled = False

    def _connect(self) -> pika.BlockingConnection:
        # After a failure, the node it happened on is tried last: one that lacks the queue in its view keeps
        # answering 404 (seen after a rolling restart), and the queue is found through another.
        last = self.node if self.failures else ""
        self.connection = connection = pika.BlockingConnection(amqp.parameters(self.amqp_url, last=last))
        self.node = amqp.node_of(connection)
        channel = connection.channel()
        channel.queue_declare(self.queue, passive=True)  # the notification service's topology declares it
        channel.basic_qos(prefetch_count=self.prefetch)
        channel.basic_consume(self.queue, self._on_message)
        # The broker cancels a consumer whose queue was deleted (or, on a cluster, lost): without this
        # the process would sit connected with no consumer. It reconnects instead, and keeps trying
        # (a passive declare) until the queue is back.
        channel.add_on_cancel_callback(self._on_cancelled)
        self.cancelled = False
        log.info("receipts_consuming", queue=self.queue, prefetch=self.prefetch, node=self.node)
        return connection

    def _on_cancelled(self, _frame) -> None:
        self.cancelled = True

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
            fresh = store(self.engine, receipt)
        except Exception as exc:
            if is_outage(exc):
                raise  # run() backs off; the receipt stays unacked and comes back
            self._dead_letter(channel, method, message_id, reason(exc))
            return
        channel.basic_ack(method.delivery_tag)
        if fresh:
            self.applied += 1
        else:
            self.duplicates += 1
        metrics.receipts_consumed().labels("applied" if fresh else "duplicate").inc()
        log.info("receipt_applied" if fresh else "receipt_duplicate", notification_id=str(receipt["notification_id"]),
                 delivery_id=str(receipt["delivery_id"]), sequence=receipt["sequence"], status=receipt["status"],
                 correlation_id=receipt["correlation_id"])

    def _dead_letter(self, channel, method, message_id: str, why: str) -> None:
        # The reason first, so `booking-service receipts-dlq list` finds it for every dead letter.
        try:
            record_reason(self.engine, message_id or None, method.routing_key, why)
        except Exception as exc:
            if is_outage(exc):
                raise  # run() backs off; the receipt comes back and is judged (and its reason stored) again
            log.error("receipt_reason_not_stored", message_id=message_id, error=type(exc).__name__)
        channel.basic_reject(method.delivery_tag, requeue=False)  # → booking.receipts.dlq
        self.rejected += 1
        metrics.receipts_consumed().labels("rejected").inc()
        log.error("receipt_dead_lettered", message_id=message_id, reason=why)

    def run(self) -> None:
        """Consume until ``stop()``; reconnect with a capped backoff while the broker or the database is away."""
        while not self.stopping.is_set():
            try:
                connection = self.connection
                if connection is None or not connection.is_open:
                    connection = self._connect()
                connection.process_data_events(time_limit=IDLE_SLICE_SECONDS)
                if self.cancelled:
                    self._back_off("consumer_cancelled", f"the broker cancelled the consumer of {self.queue}")
                    continue
                self.failures = 0
            except (pika.exceptions.AMQPError, OSError) as exc:
                self._back_off("broker_unavailable", repr(exc))
            except DATABASE_OUTAGE as exc:
                self._back_off("database_unavailable", type(exc).__name__)
            except Exception as exc:
                # Not a message's fault (those are dead-lettered in _on_message): a bug or an odd state of
                # the client. Reconnecting is the one remedy; the process goes on serving the queue.
                log.exception("receipts_consumer_error")
                self._back_off("consumer_error", type(exc).__name__)
        self._disconnect()
        log.info("receipts_stopped", applied=self.applied, duplicates=self.duplicates, rejected=self.rejected)

    def _back_off(self, outcome: str, error: str) -> None:
        self.failures += 1
        self._disconnect()
        metrics.receipts_consumed().labels(outcome).inc()
        delay = reconnect_delay(self.failures, self.max_backoff)
        log.warning(f"receipts_{outcome}", error=error, node=self.node, retry_in=round(delay, 2))
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
