"""`notification-service topology migrate`: a classic priority-queue installation moves to the quorum lanes."""

from __future__ import annotations

import json

import pika
import pytest
from kombu import Connection

import shared
from notification_service.broker import migration, topology
from tests.support import queue_depth

#: The classic topology before issue 16: every queue classic with x-max-priority 9.
OLD_PRIORITY = {"x-max-priority": 9}


def _old_installation(url: str) -> None:
    """Declare what the previous version declared, with messages waiting in work queues and DLQs."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.exchange_declare(shared.EXCHANGE, "topic", durable=True)
    channel.exchange_declare(shared.DEAD_LETTER_EXCHANGE, "direct", durable=True)
    channel.exchange_declare(shared.RECEIPTS_EXCHANGE, "topic", durable=True)
    for stage in shared.STAGES:
        dlq = shared.dead_letter_queue(stage)
        channel.queue_declare(stage, durable=True, arguments={
            **OLD_PRIORITY, "x-dead-letter-exchange": shared.DEAD_LETTER_EXCHANGE, "x-dead-letter-routing-key": dlq})
        channel.queue_bind(stage, shared.EXCHANGE, stage)
        channel.queue_declare(dlq, durable=True, arguments=OLD_PRIORITY)
        channel.queue_bind(dlq, shared.DEAD_LETTER_EXCHANGE, dlq)
    receipts, receipts_dlq = shared.BOOKING_RECEIPTS_QUEUE, shared.dead_letter_queue(shared.BOOKING_RECEIPTS_QUEUE)
    channel.queue_declare(receipts, durable=True, arguments={
        "x-dead-letter-exchange": shared.DEAD_LETTER_EXCHANGE, "x-dead-letter-routing-key": receipts_dlq})
    channel.queue_bind(receipts, shared.RECEIPTS_EXCHANGE, "#")
    channel.queue_declare(receipts_dlq, durable=True)
    channel.queue_bind(receipts_dlq, shared.DEAD_LETTER_EXCHANGE, receipts_dlq)

    def put(queue: str, name: str, priority: int) -> None:
        properties = pika.BasicProperties(delivery_mode=2, priority=priority, message_id=name,
                                          headers={"id": name, "x-death": [{"queue": queue, "count": 1}]})
        channel.basic_publish("", queue, json.dumps({"name": name}).encode(), properties, mandatory=True)

    for stage in shared.STAGES:
        put(stage, f"{stage}-high", int(shared.Priority.HIGH))
        put(stage, f"{stage}-normal", int(shared.Priority.NORMAL))
        put(stage, f"{stage}-low", int(shared.Priority.LOW))
        put(shared.dead_letter_queue(stage), f"{stage}-dead-low", int(shared.Priority.LOW))
        put(shared.dead_letter_queue(stage), f"{stage}-dead-high", int(shared.Priority.HIGH))
    put(receipts, "receipt", 0)
    put(receipts_dlq, "receipt-dead", 0)
    connection.close()


def _drain(url: str, queue: str) -> list[tuple[str, int | None, dict]]:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    found = []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            break
        found.append((json.loads(body)["name"], properties.priority, properties.headers or {}))
    connection.close()
    return found


def _exists(url: str, queue: str) -> bool:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        if connection.is_open:
            connection.close()
    return True


def _declare_and_migrate(url: str) -> migration.Report:
    with Connection(url) as connection:
        topology.declare(connection)
    return migration.migrate(url)


def test_migrate_moves_every_queued_message_and_dead_letter_to_the_lane_of_its_priority(vhost_url):
    _old_installation(vhost_url)

    report = _declare_and_migrate(vhost_url)

    assert sum(report.moved.values()) == 3 * 5 + 2 * 2  # receipts go through a holding queue: twice each
    for stage in shared.STAGES:
        assert not _exists(vhost_url, stage)
        assert not _exists(vhost_url, shared.dead_letter_queue(stage))
        high = _drain(vhost_url, shared.lane_queue(stage, shared.Lane.HIGH))
        low = _drain(vhost_url, shared.lane_queue(stage, shared.Lane.LOW))
        assert sorted(name for name, _, _ in high) == [f"{stage}-high", f"{stage}-normal"]
        assert [(name, priority) for name, priority, _ in low] == [(f"{stage}-low", int(shared.Priority.LOW))]
        dead_high = _drain(vhost_url, shared.dead_letter_queue(shared.lane_queue(stage, shared.Lane.HIGH)))
        dead_low = _drain(vhost_url, shared.dead_letter_queue(shared.lane_queue(stage, shared.Lane.LOW)))
        assert [name for name, _, _ in dead_high] == [f"{stage}-dead-high"]
        assert [name for name, _, _ in dead_low] == [f"{stage}-dead-low"]
        assert dead_low[0][2]["x-death"][0]["queue"] == shared.dead_letter_queue(stage)  # the history stays
    assert [name for name, _, _ in _drain(vhost_url, shared.BOOKING_RECEIPTS_QUEUE)] == ["receipt"]
    receipts_dlq = shared.dead_letter_queue(shared.BOOKING_RECEIPTS_QUEUE)
    assert [name for name, _, _ in _drain(vhost_url, receipts_dlq)] == ["receipt-dead"]
    assert not _exists(vhost_url, f"{shared.BOOKING_RECEIPTS_QUEUE}{migration.HOLDING_SUFFIX}")


def test_migrated_receipts_queue_is_the_quorum_one_and_still_receives_receipts(vhost_url):
    _old_installation(vhost_url)
    _declare_and_migrate(vhost_url)

    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    channel = connection.channel()
    channel.confirm_delivery()
    # Redeclared with the quorum arguments: a classic queue of that name would refuse it (406).
    receipts = topology.receipt_queues[0]
    channel.queue_declare(receipts.name, durable=True, arguments=topology.queue_arguments(receipts))
    channel.basic_publish(shared.RECEIPTS_EXCHANGE, "email.sent", b'{"name": "new"}',
                          pika.BasicProperties(delivery_mode=2), mandatory=True)
    connection.close()
    assert queue_depth(vhost_url, shared.BOOKING_RECEIPTS_QUEUE) == 2


def test_migrate_again_and_on_a_new_installation_changes_nothing(vhost_url):
    _old_installation(vhost_url)
    _declare_and_migrate(vhost_url)

    again = _declare_and_migrate(vhost_url)

    assert again.moved == {} and again.deleted == []
    assert queue_depth(vhost_url, shared.lane_queue(shared.EMAIL_QUEUE, shared.Lane.HIGH)) == 2


def test_an_interrupted_migration_is_finished_by_the_next_run(vhost_url):
    """Stopped after the receipts' old queue was emptied into the holding queue, before it came back."""
    _old_installation(vhost_url)
    with Connection(vhost_url) as connection:
        topology.declare(connection)
    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    broker = migration._Broker(connection)
    receipts = topology.receipt_queues[0]
    holding = f"{receipts.name}{migration.HOLDING_SUFFIX}"
    broker.declare(receipts, holding=holding)
    broker.channel.queue_unbind(receipts.name, receipts.exchange.name, receipts.routing_key)
    broker.move(receipts.name, lambda _properties: holding, migration.Report())
    broker.delete_if_empty(receipts.name, migration.Report())
    connection.close()

    migration.migrate(vhost_url)

    assert [name for name, _, _ in _drain(vhost_url, receipts.name)] == ["receipt"]
    assert not _exists(vhost_url, holding)
    assert queue_depth(vhost_url, shared.lane_queue(shared.DISPATCH_QUEUE, shared.Lane.LOW)) == 1


def test_migrate_refuses_an_old_queue_that_still_has_consumers(vhost_url):
    """Its consumer's unacked messages are not counted: deleting the queue would lose them."""
    _old_installation(vhost_url)
    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1)
    channel.basic_consume(shared.EMAIL_QUEUE, lambda *_args: None)
    try:
        with pytest.raises(migration.MigrationError, match="consumer"):
            _declare_and_migrate(vhost_url)
    finally:
        connection.close()
    assert _exists(vhost_url, shared.EMAIL_QUEUE)
    report = migration.migrate(vhost_url)  # the consumer gone, the run finishes
    assert not _exists(vhost_url, shared.EMAIL_QUEUE)
    assert f"{shared.EMAIL_QUEUE} -> {shared.lane_queue(shared.EMAIL_QUEUE, shared.Lane.HIGH)}" in report.moved
