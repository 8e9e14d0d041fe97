"""A Celery consumer that dead-letters poison messages instead of dropping or crash-looping.

Stock Celery 5.7 *acks and drops* a body it cannot decode and crashes in a
loop on a message without ``content_type``, without ``id``, or with a
two-item body. ``SafeConsumer`` checks the envelope before Celery's strategy
sees it; anything malformed is ``basic.reject(requeue=False)``-ed, which makes
RabbitMQ move it to ``<queue>.dlq`` (the queue's dead-letter exchange). The
reason goes to the ``dead_letters`` table and the log first, so ``dlq list``
can show it next to RabbitMQ's ``x-death`` header.

A message that arrived with broker-reserved headers is never rejected:
RabbitMQ 3.10 would read its forged ``x-death`` while dead-lettering it and
crash the queue. The worker dead-letters a copy without them itself, with
the death record RabbitMQ would have written, and then acks the original.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime

import amqp
import structlog
from celery.worker.consumer import Consumer

import shared
from notification_service.delivery.log import delivery_log
from notification_service.runtime import metrics
from notification_service.settings import Settings
from notification_service.worker import envelope_guard as envelope
from notification_service.worker.delayed_delivery import consumer_steps
from shared.wire import CORRELATION_HEADER

log = structlog.get_logger("notification_service.worker.consumer")
#: Reconnect probes: first after 0.5 s, then every 0.5 s more, at most every 2 s. Celery's
#: default (2 s, +2 s, up to 30 s) left a consumer idle for up to 30 s with the broker back.
RECONNECT_INTERVALS = {"interval_start": 0.5, "interval_step": 0.5, "interval_max": 2.0}
#: AMQP properties a dead-lettered copy keeps. Not ``expiration`` (the copy must stay in the
#: DLQ), not ``user_id`` (RabbitMQ refuses one that is not the publishing login's).
KEPT_PROPERTIES = ("content_type", "content_encoding", "priority", "correlation_id", "message_id", "timestamp",
                   "type", "app_id", "reply_to")


def inspect_envelope(message, known_tasks) -> tuple[str | None, list | None]:
    """``envelope.inspect`` of a kombu message."""
    return envelope.inspect(message.headers, message.content_type, message.content_encoding, message.body, known_tasks,
                            routing_key=(message.delivery_info or {}).get("routing_key"))


def correlation_id_of(headers: dict, decoded: list | None) -> str | None:
    """The message's correlation id: ``x-correlation-id`` header, else the payload's ``correlation_id``."""
    if headers.get(CORRELATION_HEADER):
        return str(headers[CORRELATION_HEADER])
    kwargs = decoded[1] if decoded else {}
    payload = kwargs.get("message")
    if isinstance(payload, dict) and payload.get("correlation_id"):
        return str(payload["correlation_id"])
    return kwargs.get("correlation_id")


def _wake() -> None:
    """Timer callback that only makes the event loop go round."""


class SafeConsumer(Consumer):
    """Consumer whose task handler rejects poison messages into the dead-letter queue."""

    class Blueprint(Consumer.Blueprint):
        # Delayed delivery set up once per cluster, not once per node (delayed_delivery.py).
        default_steps = consumer_steps(list(Consumer.Blueprint.default_steps))

    received_count = 0

    def ensure_connected(self, conn):
        conn.ensure_connection = functools.partial(conn.ensure_connection, **RECONNECT_INTERVALS)
        try:
            return super().ensure_connected(conn)
        finally:
            del conn.ensure_connection  # the class's own method again

    def create_task_handler(self, *args, **kwargs):
        handle = super().create_task_handler(*args, **kwargs)
        known = self.app.tasks

        def on_task_received(message):
            self.received_count += 1  # progress, for the stall watchdog
            problem, decoded = inspect_envelope(message, known)
            if problem is not None:
                return self.dead_letter(message, problem)
            # Celery logs "Task ... received" (and drops expired/revoked ones) right here,
            # on the consumer thread: bind the correlation id so those lines carry it too.
            headers = message.headers
            with structlog.contextvars.bound_contextvars(
                correlation_id=correlation_id_of(headers, decoded), task_id=headers["id"], task=headers["task"]
            ):
                return handle(message)

        return on_task_received

    def register_with_event_loop(self, hub):
        super().register_with_event_loop(hub)
        # kombu's hub may sleep in poll() for up to 10 s when no timer is due, and a
        # warm shutdown (SIGTERM) is only noticed between polls: a 1 s no-op tick
        # lets a deploy or a scale-down stop the worker in a couple of seconds.
        hub.call_repeatedly(1.0, _wake)

    def on_decode_error(self, message, exc):
        # Stock Celery acks here, i.e. loses the message.
        self.dead_letter(message, f"decode error: {exc}")

    def dead_letter(self, message, reason: str) -> None:
        headers = message.headers if isinstance(message.headers, dict) else {}
        delivery_info = message.delivery_info or {}
        queue = delivery_info.get("routing_key")
        message_id = headers.get("id") or (message.properties or {}).get("message_id")
        message_id = str(message_id)[:200] if message_id else None  # hostile headers can be huge
        task = str(headers["task"])[:200] if headers.get("task") else None
        try:
            settings = getattr(self.app, "settings", None) or Settings.from_env()
            delivery_log(settings.database_url).give_up(
                message_id=message_id, queue=queue, task=task, reason=f"poison: {reason}"
            )
        except Exception as exc:  # noqa: BLE001 - the reject below must still happen; the reason is logged
            log.error("could not store dead-letter reason", error=repr(exc), reason=reason)
        log.error("poison message dead-lettered", reason=reason, queue=queue, message_id=message_id, task=task,
                  correlation_id=str(headers.get(CORRELATION_HEADER) or "")[:200] or None)
        metrics.DEAD_LETTERS.labels(queue or "", "poison").inc()
        if envelope.reserved_headers(headers):
            # Bindings are exact, so the routing key names the queue (a legacy key, its lane);
            # a DLQ, even the wrong one, beats a crashed queue.
            lane = shared.queue_for_routing_key(queue) or shared.lane_queue(shared.DISPATCH_QUEUE, shared.Lane.HIGH)
            self.dead_letter_stripped(message, lane)
        else:
            message.reject(requeue=False)

    def dead_letter_stripped(self, message, queue: str) -> None:
        """Put a copy without reserved headers into ``queue``'s DLQ, then ack the original."""
        properties = message.properties or {}
        now = datetime.now(UTC).replace(microsecond=0)
        delivery_info = message.delivery_info or {}
        exchange = str(delivery_info.get("exchange") or "")
        headers = {
            **envelope.strip_reserved(message.headers),
            # What RabbitMQ writes on a reject, so `dlq list` and replay read this copy like any other.
            "x-death": [{"count": 1, "reason": "rejected", "queue": queue, "exchange": exchange,
                         "routing-keys": [queue], "time": now}],
            "x-first-death-queue": queue, "x-first-death-reason": "rejected", "x-first-death-exchange": exchange,
        }
        copy = amqp.Message(message.body, application_headers=headers, delivery_mode=2,
                            **{name: properties[name] for name in KEPT_PROPERTIES if properties.get(name) is not None})
        try:
            with self.app.producer_or_acquire() as producer:
                # Confirmed (confirm_publish) and mandatory: a copy the DLQ did not take raises here.
                producer.channel.basic_publish(copy, exchange=shared.DEAD_LETTER_EXCHANGE,
                                               routing_key=shared.dead_letter_queue(queue), mandatory=True)
        except Exception as exc:  # noqa: BLE001 - never reject it instead (the queue would crash); retry it later
            log.error("could not dead-letter a copy without reserved headers; requeued", error=repr(exc)[:300],
                      queue=queue)
            message.reject(requeue=True)
            return
        message.ack()
