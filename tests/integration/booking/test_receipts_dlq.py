"""``booking-service receipts-dlq``: the dead-lettered receipts with the reason the consumer stored, replay, purge.

Issue 15 item 8: nothing read ``booking.receipts.dlq``, and the reason a receipt
was dead-lettered was only in a log line. On the real broker and both databases.
"""

from __future__ import annotations

import json

import pika
import sqlalchemy as sa

import shared
from booking_service import cli
from booking_service.storage.models import ReceiptDeadLetter
from tests.integration.booking import test_receipts
from tests.integration.booking.test_receipts import new_booking, publish, receipt
from tests.support import queue_depth, wait_for

DLQ = shared.dead_letter_queue(shared.BOOKING_RECEIPTS_QUEUE)
#: The receipts tests' fixtures: the topology in a fresh vhost, and consumers on a thread.
broker = test_receipts.broker
consumer = test_receipts.consumer


def _run(monkeypatch, capsys, settings, broker_url: str, *args: str) -> tuple[int, str, str]:
    monkeypatch.setenv("AMQP_URL", broker_url)
    monkeypatch.setenv("BOOKING_DATABASE_URL", settings.database_url)
    code = cli.main(["receipts-dlq", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _dead_letter_two(client, session_factory, broker_url, consumer):
    running = consumer()
    booking_id, nid = new_booking(client, session_factory)
    publish(broker_url, b"\xff not json", receipt(booking_id, nid, "email", 1, "sent", 1,
                                                  recipient="grace@example.org"))
    wait_for(lambda: running.rejected == 2, 20, "two rejected")
    wait_for(lambda: queue_depth(broker_url, DLQ) == 2, 20, "two dead letters")
    consumer.stop()


def test_list_shows_each_dead_letter_with_the_reason_the_consumer_stored(settings, client, session_factory, broker,
                                                                        consumer, monkeypatch, capsys):
    _dead_letter_two(client, session_factory, broker, consumer)

    code, out, err = _run(monkeypatch, capsys, settings, broker, "list")

    assert code == 0, err
    listed = json.loads(out)
    reasons = sorted(entry["reason"] for entry in listed)
    assert reasons[0].startswith("breaks notification.status v1: recipient") and reasons[1].startswith("not JSON")
    assert {(e["routing_key"], e["broker_reason"], e["death_count"]) for e in listed} == {("email.sent", "rejected", 1)}
    assert "grace@example.org" not in out + err
    assert queue_depth(broker, DLQ) == 2  # listing removes nothing
    engine = sa.create_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(ReceiptDeadLetter)).scalar() == 2
    finally:
        engine.dispose()


def test_replay_puts_them_back_on_booking_receipts_and_a_refused_one_stays_reported(settings, client, session_factory,
                                                                                  broker, consumer, monkeypatch,
                                                                                  capsys):
    _dead_letter_two(client, session_factory, broker, consumer)
    assert _run(monkeypatch, capsys, settings, broker, "replay")[0] == 2  # everything must be asked for

    code, out, err = _run(monkeypatch, capsys, settings, broker, "replay", "--all")

    assert code == 0, err
    assert len(json.loads(out)["replayed"]) == 2 and json.loads(out)["skipped"] == []
    assert err.strip().splitlines()[-1] == "replayed 2, skipped 0"
    assert (queue_depth(broker, DLQ), queue_depth(broker, shared.BOOKING_RECEIPTS_QUEUE)) == (0, 2)
    connection = pika.BlockingConnection(pika.URLParameters(broker))
    try:
        channel = connection.channel()
        method, properties, _ = channel.basic_get(shared.BOOKING_RECEIPTS_QUEUE, auto_ack=False)
        assert method.routing_key == "email.sent" and "x-death" not in (properties.headers or {})
        channel.basic_reject(method.delivery_tag, requeue=True)
        # Back to the DLQ with the consumer, then the receipts queue is gone: nothing routes a replay.
        channel.queue_purge(shared.BOOKING_RECEIPTS_QUEUE)
    finally:
        connection.close()
    _dead_letter_two(client, session_factory, broker, consumer)
    connection = pika.BlockingConnection(pika.URLParameters(broker))
    connection.channel().queue_delete(shared.BOOKING_RECEIPTS_QUEUE)
    connection.close()

    code, out, err = _run(monkeypatch, capsys, settings, broker, "replay", "--all")

    assert code == 1
    skipped = json.loads(out)["skipped"]
    assert len(skipped) == 2 and all("unroutable" in s["reason"] for s in skipped)
    assert err.strip().splitlines()[-1] == "replayed 0, skipped 2"
    assert queue_depth(broker, DLQ) == 2  # skipped ones stay
    assert "grace@example.org" not in out + err


def test_purge_needs_yes(settings, client, session_factory, broker, consumer, monkeypatch, capsys):
    _dead_letter_two(client, session_factory, broker, consumer)
    assert _run(monkeypatch, capsys, settings, broker, "purge")[0] == 2
    assert queue_depth(broker, DLQ) == 2
    code, out, _ = _run(monkeypatch, capsys, settings, broker, "purge", "--yes")
    assert (code, json.loads(out)) == (0, {"purged": {DLQ: 2}})
    assert queue_depth(broker, DLQ) == 0
