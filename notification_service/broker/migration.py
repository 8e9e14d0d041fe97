"""Move an installation from the classic priority topology to the quorum lanes, without losing a message.

Before issue 16 every work queue was a classic queue with ``x-max-priority``, one per stage
(``notifications.dispatch|email|push``, each with its ``.dlq``), and the receipts queues were
classic too. A queue's type can never change in place, so ``migrate``:

1. expects the new topology declared (``topology.declare``: the lanes, their DLQs, the legacy
   ``notifications.dispatch`` key bound to ``notifications.dispatch.high``);
2. for each old stage queue: unbinds it (nothing new arrives), moves every message to the lane
   of its AMQP priority, deletes it once empty; then the same for its old DLQ, into the lane DLQs;
3. for ``booking.receipts`` and its DLQ, whose names stay: binds a holding queue where the old
   one was bound, moves the old one's messages there, replaces the old queue by the quorum one,
   moves the holding queue back, deletes it.

Each message is moved with publisher confirms (to one queue, by the default exchange, mandatory)
and acked in the old queue only after its confirm: a crash in between leaves a copy in both
queues (the delivery log makes the second one harmless), never none. Every step checks what the
broker holds first, so an interrupted run is finished by running it again, and a run on a broker
that has nothing left to move changes nothing. Queues are deleted only when empty (``if_empty``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pika
import pika.exceptions
from kombu import Queue

import shared
from notification_service.broker import topology
from notification_service.broker.connection import connect

#: Suffix of the queue that holds a same-name queue's messages while it is replaced.
HOLDING_SUFFIX = ".migrating"


def legacy_queues() -> list[tuple[str, str]]:
    """(old queue, stage) of the classic topology: each stage queue, then its DLQ."""
    return [(name, stage) for stage in shared.STAGES for name in (stage, shared.dead_letter_queue(stage))]


class MigrationError(RuntimeError):
    """Raised when moving now could lose a message; nothing of that queue was touched."""


@dataclass
class Report:
    """What ``migrate`` did: messages moved per (from, to), and the queues it deleted."""

    moved: dict[str, int] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)

    def count(self, source: str, target: str) -> None:
        key = f"{source} -> {target}"
        self.moved[key] = self.moved.get(key, 0) + 1


class _Broker:
    """A pika channel with confirms that reopens itself after a channel error (a 404 or 406 closes it)."""

    def __init__(self, connection: pika.BlockingConnection) -> None:
        self.connection = connection
        self.channel = self._open()

    def reopen(self) -> None:
        self.channel.close()
        self.channel = self._open()

    def _open(self):
        channel = self.connection.channel()
        channel.confirm_delivery()
        return channel

    def consumers(self, queue: str) -> int | None:
        """How many consumers ``queue`` has, or None when it does not exist."""
        try:
            return self.channel.queue_declare(queue, passive=True).method.consumer_count
        except pika.exceptions.ChannelClosedByBroker as exc:
            self.channel = self._open()
            if exc.reply_code == 404:
                return None
            raise

    def exists(self, queue: str) -> bool:
        return self.consumers(queue) is not None

    def idle(self, queue: str) -> bool:
        """Whether ``queue`` exists and nobody consumes it: a consumer's unacked messages are not
        in the queue's count, and deleting the queue would lose them."""
        consumers = self.consumers(queue)
        if consumers:
            raise MigrationError(f"{queue} still has {consumers} consumer(s): stop the workers (or consumers) "
                                 "of the previous version, then run the migration again")
        return consumers is not None

    def is_declared_as(self, queue: Queue) -> bool:
        """Whether ``queue`` exists with exactly its arguments; False for the old classic one (406)."""
        try:
            self.channel.queue_declare(queue.name, durable=True, arguments=topology.queue_arguments(queue),
                                       passive=False)
        except pika.exceptions.ChannelClosedByBroker as exc:
            self.channel = self._open()
            if exc.reply_code == 406:
                return False
            raise
        return True

    def declare(self, queue: Queue, holding: str | None = None) -> None:
        self.channel.queue_declare(holding or queue.name, durable=True,
                                   arguments=topology.QUORUM_ARGUMENTS if holding else topology.queue_arguments(queue))
        self.channel.queue_bind(holding or queue.name, queue.exchange.name, queue.routing_key)

    def move(self, source: str, target_of: Callable[[pika.BasicProperties], str], report: Report) -> None:
        """Every message of ``source`` to its target queue, acked in ``source`` after the confirm."""
        while True:
            method, properties, body = self.channel.basic_get(source, auto_ack=False)
            if method is None:
                return
            target = target_of(properties)
            # Default exchange, routing key = queue name: exactly one queue, whatever else is bound.
            # A refused publish (unroutable, nacked) raises before the ack: the message stays.
            self.channel.basic_publish("", target, body, properties, mandatory=True)
            self.channel.basic_ack(method.delivery_tag)
            report.count(source, target)

    def delete_if_empty(self, queue: str, report: Report, *, quorum: bool = False) -> None:
        """Delete ``queue`` when it holds nothing. A classic queue is deleted with ``if_empty`` (a message
        arriving meanwhile refuses it); quorum queues refuse ``if_empty`` (540 on 3.10), so the
        holding queue, unbound before it is emptied, is counted first."""
        if quorum:
            left = self.channel.queue_declare(queue, passive=True).method.message_count
            if left:
                raise MigrationError(f"{queue} still holds {left} message(s): run the migration again")
        self.channel.queue_delete(queue, if_empty=not quorum)
        report.deleted.append(queue)


def _lane_target(stage: str, old: str) -> Callable[[pika.BasicProperties], str]:
    def target(properties: pika.BasicProperties) -> str:
        queue = shared.lane_queue(stage, shared.lane_for(properties.priority))
        return shared.dead_letter_queue(queue) if old != stage else queue

    return target


def _retire_stage_queue(broker: _Broker, old: str, stage: str, report: Report) -> None:
    if not broker.idle(old):
        return
    # The old binding first: a message published meanwhile goes to the lanes only (the legacy
    # dispatch key is bound to dispatch.high), not into a queue that is being emptied.
    exchange = shared.EXCHANGE if old == stage else shared.DEAD_LETTER_EXCHANGE
    broker.channel.queue_unbind(old, exchange, old)
    broker.move(old, _lane_target(stage, old), report)
    broker.delete_if_empty(old, report)


def _replace_in_place(broker: _Broker, queue: Queue, report: Report) -> None:
    """Replace a classic ``queue`` by the quorum one of the same name, through a holding queue."""
    holding = f"{queue.name}{HOLDING_SUFFIX}"
    if broker.exists(queue.name) and not broker.is_declared_as(queue) and broker.idle(queue.name):
        broker.declare(queue, holding=holding)  # bound like the old one: nothing published is unroutable
        broker.channel.queue_unbind(queue.name, queue.exchange.name, queue.routing_key)
        broker.move(queue.name, lambda _properties: holding, report)
        broker.delete_if_empty(queue.name, report)
        # A channel that consumed from the classic queue crashes (541, RabbitMQ 3.10.8) when it
        # then uses the quorum queue of the same name: the rest goes on a channel of its own.
        broker.reopen()
    if broker.idle(holding):
        broker.declare(queue)
        broker.channel.queue_unbind(holding, queue.exchange.name, queue.routing_key)
        broker.move(holding, lambda _properties: queue.name, report)
        broker.delete_if_empty(holding, report, quorum=True)


def migrate(amqp_url: str) -> Report:
    """Move every message of the classic topology into the lanes and retire it (see the module doc)."""
    report = Report()
    connection = connect(amqp_url)
    try:
        broker = _Broker(connection)
        for old, stage in legacy_queues():
            _retire_stage_queue(broker, old, stage, report)
        for queue in topology.receipt_queues:
            _replace_in_place(broker, queue, report)
        broker.channel.close()
    finally:
        if connection.is_open:
            connection.close()
    return report
