"""``booking.receipts.dlq``: the receipts the consumer dead-lettered, their reasons, and putting them back.

The consumer stores why it dead-letters a receipt (``receipt_dead_letters``)
before it rejects it, so ``list`` reads the messages first and the reasons
second: every message listed has its reason in what is read after it.

Reading never loses a message: messages are fetched with ``basic_get`` and
left unacked, so closing the channel puts every one back. ``replay``
republishes a dead letter to ``notifications.receipts`` with the routing key it
first had (RabbitMQ's ``x-death``), ``mandatory`` and publisher confirms, and
acks the dead letter only after the confirm. One it cannot replay is nacked
back into the DLQ and reported, and the replay goes on with the next. The copy
carries no ``x-`` header the broker reserves: RabbitMQ reads ``x-death`` when
it dead-letters, and a consumer that rejects the copy again must not hand it
one a publisher could have forged. Nothing printed holds an address.

Over 200 lines on purpose: list, replay and purge of one queue share the fetch-and-leave-unacked
loop, the reason lookup and the masking; split, each would carry a copy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
import sqlalchemy as sa

import shared
from booking_service.runtime import amqp
from booking_service.storage.models import ReceiptDeadLetter
from shared.wire import CORRELATION_HEADER, MESSAGE_TYPE_HEADER

DLQ = shared.dead_letter_queue(shared.BOOKING_RECEIPTS_QUEUE)
#: What stands in for anything shaped like an e-mail address in what is printed.
MASK = "<redacted>"
_ADDRESS = re.compile(r"[^\s@\"'<>(),;:\[\]]+@[^\s@\"'<>(),;:\[\]]+")
#: ``x-`` headers a replayed copy keeps: the two the producers set; every other ``x-`` one is the broker's.
KEPT_X_HEADERS = frozenset({CORRELATION_HEADER, MESSAGE_TYPE_HEADER})
#: Longest routing key AMQP carries.
MAX_ROUTING_KEY = 255


def mask(text: Any) -> Any:
    return _ADDRESS.sub(MASK, text) if isinstance(text, str) else text


@dataclass
class DeadReceipt:
    delivery_tag: int
    properties: pika.BasicProperties
    body: bytes

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.headers or {})

    @property
    def message_id(self) -> str | None:
        """The id as the consumer stored its reason under (at most 100 characters)."""
        return (self.properties.message_id or "")[:100] or None

    def label(self) -> str:
        return mask(self.message_id) if self.message_id else f"{DLQ}#{self.delivery_tag}"

    @property
    def death(self) -> dict:
        """The broker's record of the reject from ``booking.receipts`` ({} when there is none)."""
        deaths = self.headers.get("x-death")
        found = [d for d in deaths if isinstance(d, dict) and d.get("queue") == shared.BOOKING_RECEIPTS_QUEUE] \
            if isinstance(deaths, list) else []
        return found[0] if found else {}

    @property
    def routing_key(self) -> str | None:
        """The routing key it was published with to ``notifications.receipts``, or None when unknown."""
        keys = self.death.get("routing-keys")
        key = keys[0] if isinstance(keys, list) and keys else None
        return key if isinstance(key, str) and 0 < len(key.encode()) <= MAX_ROUTING_KEY else None

    def summary(self, reasons: dict[str, str]) -> dict[str, Any]:
        count = self.death.get("count")
        return {
            "message_id": self.label(),
            "routing_key": mask(self.routing_key),
            "reason": mask(reasons.get(self.message_id or "")),
            "broker_reason": self.death.get("reason"),
            "death_count": count if isinstance(count, int) and not isinstance(count, bool) else None,
            "correlation_id": mask(self.properties.correlation_id),
            "bytes": len(self.body),
        }


@dataclass(frozen=True)
class Outcome:
    """What ``replay`` did with one dead letter: replayed (``problem`` None), or left in the DLQ and why."""

    message_id: str
    routing_key: str | None
    problem: str | None = None


# -- reasons (the consumer writes, the CLI reads) -------------------------------------

def record_reason(engine: sa.Engine, message_id: str | None, routing_key: str | None, reason: str) -> None:
    """Store why a receipt is dead-lettered; called before the reject."""
    def clean(text: str | None, limit: int) -> str | None:
        # PostgreSQL refuses a NUL in text: a forged id must not keep its reason out of the table.
        return text.replace("\x00", "")[:limit] if text else None

    with engine.begin() as conn:
        conn.execute(sa.insert(ReceiptDeadLetter).values(
            message_id=clean(message_id, 100), routing_key=clean(routing_key, MAX_ROUTING_KEY),
            reason=clean(reason, 500) or "unknown"))


def reasons(engine: sa.Engine) -> dict[str, str]:
    """Message id → the latest stored reason."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(ReceiptDeadLetter.message_id, ReceiptDeadLetter.reason)
                            .order_by(ReceiptDeadLetter.id))
        return {message_id: reason for message_id, reason in rows if message_id}


# -- the queue ------------------------------------------------------------------------

def _fetch_all(channel) -> Iterator[DeadReceipt]:
    """Every message now in the DLQ, left unacked on ``channel``."""
    count = channel.queue_declare(DLQ, passive=True).method.message_count
    for _ in range(count):
        method, properties, body = channel.basic_get(DLQ, auto_ack=False)
        if method is None:
            return
        yield DeadReceipt(method.delivery_tag, properties, body)


def list_messages(amqp_url: str) -> list[DeadReceipt]:
    connection = pika.BlockingConnection(amqp.parameters(amqp_url))
    try:
        channel = connection.channel()
        found = list(_fetch_all(channel))
        channel.close()  # unacked → requeued, nothing lost
        return found
    finally:
        connection.close()


def purge(amqp_url: str) -> int:
    connection = pika.BlockingConnection(amqp.parameters(amqp_url))
    try:
        return connection.channel().queue_purge(DLQ).method.message_count
    finally:
        connection.close()


def _copy_properties(message: DeadReceipt) -> pika.BasicProperties:
    headers = {name: value for name, value in message.headers.items()
               if not str(name).lower().startswith("x-") or str(name) in KEPT_X_HEADERS}
    p = message.properties
    return pika.BasicProperties(content_type=p.content_type, content_encoding=p.content_encoding, headers=headers,
                                delivery_mode=2, correlation_id=p.correlation_id, message_id=p.message_id,
                                timestamp=p.timestamp, type=p.type, app_id=p.app_id)


def _replay_one(channel, message: DeadReceipt) -> Outcome:
    """Republish one fetched dead letter: acked after the confirm, else nacked back with the reason."""
    key = message.routing_key
    problem = None
    if key is None:
        problem = f"no routing key from {shared.BOOKING_RECEIPTS_QUEUE} in its x-death to replay it with"
    else:
        try:
            channel.basic_publish(shared.RECEIPTS_EXCHANGE, key, message.body, _copy_properties(message),
                                  mandatory=True)
        except pika.exceptions.UnroutableError:
            problem = f"returned unroutable: no queue takes it on {shared.RECEIPTS_EXCHANGE}"
        except pika.exceptions.NackError:
            problem = "nacked by the broker"
    if problem is None:
        channel.basic_ack(message.delivery_tag)
    else:
        channel.basic_nack(message.delivery_tag, requeue=True)
    return Outcome(message.label(), mask(key), problem)


def replay(amqp_url: str, *, message_id: str | None = None,
           report: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Republish the dead letters (only ``message_id``'s when given), each on its own; what happened to each.

    ``report`` hears of each outcome as it happens, so an interrupted replay has said what it did.
    A channel the broker closes (the exchange deleted, a permission) puts every dead letter
    not yet acked back into the DLQ; they are reported as not replayed.
    """
    outcomes: list[Outcome] = []

    def record(outcome: Outcome) -> None:
        outcomes.append(outcome)
        if report is not None:
            report(outcome)

    connection = pika.BlockingConnection(amqp.parameters(amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        # All fetched before any is nacked back, or a requeued one would be fetched in place of the next.
        wanted = []
        for message in list(_fetch_all(channel)):
            if message_id and message.message_id != message_id:
                channel.basic_nack(message.delivery_tag, requeue=True)
            else:
                wanted.append(message)
        for index, message in enumerate(wanted):
            try:
                record(_replay_one(channel, message))
            except pika.exceptions.ChannelClosed as exc:
                closed = f"the broker closed the channel: {exc.reply_code} {mask(exc.reply_text)}"
                record(Outcome(message.label(), mask(message.routing_key), closed))
                for rest in wanted[index + 1:]:
                    record(Outcome(rest.label(), mask(rest.routing_key), f"not tried: {closed}"))
                break
        if channel.is_open:
            channel.close()
    finally:
        connection.close()
    return outcomes
