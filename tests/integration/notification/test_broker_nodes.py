"""AMQP_URL with several nodes (';'-separated): the receipts publisher, `dlq` and `topology declare` use
whichever node answers, and the publisher leaves a channel that nacks for a new connection."""

from __future__ import annotations

import json
import urllib.parse
import uuid
from datetime import UTC, datetime

import pika
import pytest

import shared
from notification_service import cli
from notification_service.delivery.machine import BookingRef, delivery_id
from notification_service.delivery.migrate import upgrade
from notification_service.delivery.repository import SqlDeliveryLog
from notification_service.delivery.status import DeliveryStatus
from notification_service.receipts.outbox import NACKED_ERROR, ReceiptOutbox
from notification_service.receipts.publisher import ReceiptPublisher
from notification_service.settings import Settings
from tests.notification.harness import declare_topology, dispatch_message, notification
from tests.support import DISPATCH_HIGH, wait_for

NOW = datetime.now(UTC).replace(microsecond=0)
EMAIL = "ada.lovelace@example.org"


def with_dead_node(url: str) -> str:
    """``url`` after a node that refuses connections (port 1): kombu tries it first, pika in a random order."""
    parts = urllib.parse.urlsplit(url)
    dead = urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:1"))
    return f"{dead};{url}"


def expired_receipt(log: SqlDeliveryLog) -> str:
    nid = str(uuid.uuid4())
    log.open(nid, "booking.confirmed", BookingRef(str(uuid.uuid4()), 1), [("email", EMAIL)], NOW, "req-nodes")
    log.drop(delivery_id(nid, "email", EMAIL), DeliveryStatus.EXPIRED, "expired before it was sent", NOW)
    return nid


def receipts_queue(channel) -> str:
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, shared.RECEIPTS_EXCHANGE, "#")
    return queue


def drained(channel, queue: str) -> list[str]:
    found = []
    while (got := channel.basic_get(queue, auto_ack=True))[0] is not None:
        found.append(json.loads(got[2])["notification_id"])
    return found


@pytest.fixture
def cli_env(monkeypatch, tmp_path, database_url):
    """The CLI's environment: only the variables a test sets, no .env; ``set_url`` points it at a broker."""
    for variable in Settings.variables().values():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NOTIFICATION_DATABASE_URL", database_url)
    upgrade(database_url)
    return lambda url: monkeypatch.setenv("AMQP_URL", url)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_receipts_publisher_publishes_through_the_node_that_answers(database_url, vhost_url):
    upgrade(database_url)
    declare_topology(vhost_url)
    log = SqlDeliveryLog(database_url)
    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    queue = receipts_queue(connection.channel())
    try:
        nids = []
        for _ in range(4):  # the nodes are tried in a random order: the dead one first, sometimes
            nids.append(expired_receipt(log))
            publisher = ReceiptPublisher(log, with_dead_node(vhost_url), "test-owner")
            publisher._connect()
            assert publisher.publish_batch() == 1
            publisher._disconnect()
        assert sorted(drained(connection.channel(), queue)) == sorted(nids)
    finally:
        connection.close()
        log.engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_nacked_receipt_goes_out_again_on_a_new_connection_at_once(database_url, vhost_url):
    upgrade(database_url)
    declare_topology(vhost_url)
    log = SqlDeliveryLog(database_url)
    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    channel = connection.channel()
    queue = receipts_queue(channel)
    # A queue that takes nothing on the receipts exchange: the broker nacks every receipt routed to it.
    channel.queue_declare("refusing", arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    channel.queue_bind("refusing", shared.RECEIPTS_EXCHANGE, "#")
    publisher = ReceiptPublisher(log, vhost_url, "test-owner", poll_seconds=0.05, max_backoff=0.3)
    connections: list[pika.BlockingConnection] = []
    connect = publisher._connect

    def recording_connect() -> None:
        connect()
        connections.append(publisher.connection)

    publisher._connect = recording_connect  # type: ignore[method-assign] # counts reconnects, behaviour unchanged
    try:
        nid = expired_receipt(log)
        publisher.start()
        wait_for(lambda: len(connections) >= 3, 20, "a new connection after each nacked window")
        (row,) = log.receipts_of(delivery_id(nid, "email", EMAIL))
        assert row.published_at is None and row.last_error == NACKED_ERROR
        channel.queue_delete("refusing")  # the limit is lifted
        wait_for(lambda: ReceiptOutbox(log).backlog() == 0, 5, "the receipt published soon after, not in 30 s")
    finally:
        publisher.stop()
    try:
        assert set(drained(channel, queue)) == {nid}  # copies of the nacked windows carry the same receipt
        assert len({id(c) for c in connections}) == len(connections)
    finally:
        connection.close()
        log.engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_dlq_list_replay_and_purge_work_with_a_dead_node_in_amqp_url(cli_env, vhost_url, capsys):
    declare_topology(vhost_url)
    dlq = shared.dead_letter_queue(DISPATCH_HIGH)
    messages = [dispatch_message(notification()) for _ in range(3)]
    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for message in messages:
            channel.basic_publish("", dlq, message.body, pika.BasicProperties(headers=message.headers,
                                                                              **message.properties))
        ids = sorted(m.headers["id"] for m in messages)
        cli_env(with_dead_node(vhost_url))
        for _ in range(3):  # pika tries the nodes in a random order
            assert cli.main(["dlq", "list"]) == 0
            assert sorted(d["message_id"] for d in json.loads(capsys.readouterr().out)) == ids
        assert cli.main(["dlq", "replay", ids[0]]) == 0
        assert json.loads(capsys.readouterr().out)["replayed"] == [ids[0]]
        assert channel.queue_declare(DISPATCH_HIGH, passive=True).method.message_count == 1
        assert cli.main(["dlq", "purge", "--queue", DISPATCH_HIGH, "--yes"]) == 0
        assert json.loads(capsys.readouterr().out) == {"purged": {dlq: 2}}
    finally:
        connection.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_topology_declare_moves_past_a_dead_node_in_amqp_url(cli_env, vhost_url, capsys):
    cli_env(with_dead_node(vhost_url))  # the dead node is first: kombu fails over in the given order
    assert cli.main(["topology", "declare"]) == 0
    assert "declared" in capsys.readouterr().out
    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    try:
        channel = connection.channel()
        channel.exchange_declare(shared.RECEIPTS_EXCHANGE, passive=True)
        assert channel.queue_declare(shared.dead_letter_queue(DISPATCH_HIGH), passive=True)
    finally:
        connection.close()
