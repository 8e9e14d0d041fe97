"""The receipts consumer on the real broker and both databases, and the timeline it feeds over HTTP."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pika
import pytest
import sqlalchemy as sa
import structlog

import shared
from booking_service.api.app import create_app
from booking_service.receipts.consumer import ReceiptConsumer
from booking_service.storage.db import make_engine
from booking_service.storage.models import OutboxMessage
from tests.booking.fixtures import AUTH, booking_body
from tests.support import queue_depth, wait_for

T0 = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def broker(vhost_url):
    """The notification service's topology in a fresh vhost (it declares booking.receipts and its DLQ)."""
    from kombu import Connection

    from notification_service.broker.topology import declare

    with Connection(vhost_url) as connection:
        declare(connection)
    return vhost_url


@pytest.fixture
def consumer(settings, broker):
    engine = make_engine(settings.database_url)
    running: list[tuple[ReceiptConsumer, threading.Thread]] = []

    def start() -> ReceiptConsumer:
        instance = ReceiptConsumer(engine, broker, prefetch=10, max_backoff=0.5)
        thread = threading.Thread(target=instance.run, daemon=True)
        thread.start()
        running.append((instance, thread))
        return instance

    def stop() -> None:
        for instance, thread in running:
            instance.stop()
            thread.join(10)
        running.clear()

    start.stop = stop
    yield start
    stop()
    engine.dispose()


def publish(url: str, *bodies) -> None:
    """Publish like the notification service does: confirms, mandatory, persistent JSON."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for body in bodies:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            channel.basic_publish(shared.RECEIPTS_EXCHANGE, "email.sent", raw, mandatory=True,
                                  properties=pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                                                  message_id=str(uuid.uuid4())))
    finally:
        connection.close()


def new_booking(client, session_factory) -> tuple[str, str]:
    """A booking over HTTP; its id and its confirmation's notification id."""
    booking = client.post("/v1/bookings", json=booking_body(), headers=AUTH).json
    with session_factory() as s:
        nid = s.execute(sa.select(OutboxMessage.notification_id).where(
            OutboxMessage.booking_id == booking["id"], OutboxMessage.event == "booking.confirmed")).scalar_one()
    return booking["id"], nid


def receipt(booking_id: str, nid: str, channel: str, sequence: int, status: str, attempt: int, **extra) -> dict:
    did = str(uuid.uuid5(uuid.UUID(nid), channel))
    return {
        "message_type": "notification.status", "schema_version": 1, "notification_id": nid, "delivery_id": did,
        "booking": {"id": booking_id, "version": 1}, "event": "booking.confirmed", "channel": channel,
        "recipient": "g***@example.org" if channel == "email" else "tok-…-1", "status": status, "attempt": attempt,
        "sequence": sequence, "occurred_at": (T0 + timedelta(seconds=sequence)).isoformat().replace("+00:00", "Z"),
        "correlation_id": "req-1", "reason": None, "provider_message_id": None, **extra,
    }


def story(booking_id: str, nid: str) -> list[dict]:
    """push: 503 (retrying), 503 (retrying), sent on the third attempt by push_http; email: sent at once.

    The e-mail receipt has no ``provider`` (a notification service from before issue 17).
    """
    return [
        receipt(booking_id, nid, "push", 1, "retrying", 1, reason="push_http provider answered 503"),
        receipt(booking_id, nid, "push", 2, "retrying", 2, reason="push_http provider answered 503"),
        receipt(booking_id, nid, "push", 3, "sent", 3, provider_message_id="projects/fake/messages/3",
                provider="push_http"),
        receipt(booking_id, nid, "email", 1, "sent", 1, provider_message_id="<m-1@example.org>"),
    ]


def deliveries(client, booking_id: str) -> dict[str, dict]:
    response = client.get(f"/v1/bookings/{booking_id}/notifications", headers=AUTH)
    assert response.status_code == 200, response.text
    (confirmation,) = [n for n in response.json["notifications"] if n["event"] == "booking.confirmed"]
    return {d["channel"]: d for d in confirmation["deliveries"]}


def test_the_timeline_shows_each_channel_current_status_attempts_and_history(client, session_factory, broker,
                                                                             consumer):
    running = consumer()
    booking_id, nid = new_booking(client, session_factory)
    publish(broker, *story(booking_id, nid))
    wait_for(lambda: running.applied == 4, 20, "four receipts applied")

    response = client.get(f"/v1/bookings/{booking_id}/notifications", headers=AUTH)
    assert response.status_code == 200
    body = response.json
    assert body["booking_id"] == booking_id and body["booking_status"] == "confirmed"
    events = {n["event"]: n for n in body["notifications"]}
    assert set(events) == {"booking.confirmed", "booking.reminder"}
    assert events["booking.reminder"]["state"] == "scheduled" and events["booking.reminder"]["deliveries"] == []
    confirmation = events["booking.confirmed"]
    assert confirmation["state"] == "pending" and confirmation["published_at"] is None  # no relay ran here
    push = {d["channel"]: d for d in confirmation["deliveries"]}["push"]
    assert (push["status"], push["attempts"], push["sequence"], push["history_complete"]) == ("sent", 3, 3, True)
    assert [h["status"] for h in push["history"]] == ["retrying", "retrying", "sent"]
    assert push["last_change_at"] == "2030-05-01T12:00:03Z" and push["recipient"] == "tok-…-1"
    assert push["provider_message_id"] == "projects/fake/messages/3"
    assert push["provider"] == "push_http"  # the provider that took it, from the receipt
    assert {d["channel"]: d for d in confirmation["deliveries"]}["email"]["provider"] is None


def test_duplicated_and_reordered_receipts_give_the_same_timeline(client, session_factory, broker, consumer):
    running = consumer()
    in_order, in_order_nid = new_booking(client, session_factory)
    shuffled, shuffled_nid = new_booking(client, session_factory)
    publish(broker, *story(in_order, in_order_nid))
    a = story(shuffled, shuffled_nid)
    publish(broker, a[2], a[3], a[0], a[2], a[1], a[0], a[3])  # sent first, then older ones, each twice or more
    wait_for(lambda: running.applied == 8 and running.duplicates == 3, 20, "eight receipts and three copies")

    def comparable(booking_id):
        return {channel: {k: v for k, v in d.items() if k != "delivery_id"}
                for channel, d in deliveries(client, booking_id).items()}

    assert comparable(in_order) == comparable(shuffled)
    assert comparable(shuffled)["push"]["status"] == "sent"


def test_until_the_older_receipts_arrive_the_newest_one_is_current(client, session_factory, broker, consumer):
    running = consumer()
    booking_id, nid = new_booking(client, session_factory)
    publish(broker, story(booking_id, nid)[2])
    wait_for(lambda: running.applied == 1, 20, "the late sent receipt applied")
    push = deliveries(client, booking_id)["push"]
    assert (push["status"], push["attempts"], push["history_complete"]) == ("sent", 3, False)


def test_a_receipt_breaking_the_contract_is_dead_lettered_and_the_consumer_keeps_going(client, session_factory,
                                                                                      broker, consumer):
    running = consumer()
    booking_id, nid = new_booking(client, session_factory)
    unmasked = receipt(booking_id, nid, "email", 1, "sent", 1, recipient="grace@example.org")
    with structlog.testing.capture_logs() as lines:
        publish(broker, b"\xff not json", unmasked, {"message_type": "notification.status"},
                receipt(booking_id, nid, "email", 1, "sent", 1))
        wait_for(lambda: running.applied == 1 and running.rejected == 3, 20, "one applied, three rejected")
    dlq = shared.dead_letter_queue(shared.BOOKING_RECEIPTS_QUEUE)
    wait_for(lambda: queue_depth(broker, dlq) == 3, 20, "three dead letters")
    connection = pika.BlockingConnection(pika.URLParameters(broker))
    try:
        method, properties, body = connection.channel().basic_get(dlq, auto_ack=False)
        assert properties.headers["x-death"][0]["reason"] == "rejected" and body == b"\xff not json"
    finally:
        connection.close()
    assert deliveries(client, booking_id)["email"]["status"] == "sent"
    rejected = [line for line in lines if line["event"] == "receipt_dead_lettered"]
    assert len(rejected) == 3 and "recipient" in rejected[1]["reason"]
    assert "grace@example.org" not in json.dumps(lines, default=str)


def test_receipts_published_while_the_consumer_is_stopped_are_applied_when_it_starts(settings, client,
                                                                                      session_factory, broker,
                                                                                      consumer):
    ready_app = create_app(settings.model_copy(update={"amqp_url": broker}))
    ready = ready_app.test_client()
    booking_id, nid = new_booking(client, session_factory)
    publish(broker, *story(booking_id, nid))
    wait_for(lambda: ready.get("/readyz").json["checks"]["receipts"]["queue_depth"] == 4, 20, "lag of four")
    assert ready.get("/readyz").json["checks"]["receipts"]["last_applied_age_seconds"] is None
    assert deliveries(client, booking_id) == {}

    running = consumer()
    wait_for(lambda: running.applied == 4, 20, "the backlog applied after the start")
    assert deliveries(client, booking_id)["push"]["status"] == "sent"
    checks = wait_for(lambda: (c := ready.get("/readyz").json["checks"])["receipts"]["queue_depth"] == 0 and c, 20,
                      "an empty receipts queue")
    assert checks["receipts"]["last_applied_age_seconds"] >= 0
    ready_app.extensions["booking_engine"].dispose()


def test_a_stopped_consumer_gives_unacked_receipts_back(client, session_factory, broker, consumer):
    """Stopped and started again, the consumer applies what was published in between, exactly once."""
    first = consumer()
    booking_id, nid = new_booking(client, session_factory)
    events = story(booking_id, nid)
    publish(broker, events[0])
    wait_for(lambda: first.applied == 1, 20, "the first receipt")
    consumer.stop()
    publish(broker, *events[1:])
    second = consumer()
    wait_for(lambda: second.applied == 3, 20, "the rest after the restart")
    assert second.duplicates == 0 and deliveries(client, booking_id)["push"]["attempts"] == 3


def test_the_timeline_needs_a_key_and_a_booking_and_is_documented(client):
    missing = client.get(f"/v1/bookings/{uuid.uuid4()}/notifications", headers=AUTH)
    assert missing.status_code == 404 and missing.json["error"]["code"] == 404
    assert client.get(f"/v1/bookings/{uuid.uuid4()}/notifications").status_code == 401
    spec = client.get("/openapi.json").json
    operation = spec["paths"]["/v1/bookings/{booking_id}/notifications"]["get"]
    assert {"200", "401", "404"} <= set(operation["responses"])
    assert "BookingNotifications" in spec["components"]["schemas"]
    assert "provider" in spec["components"]["schemas"]["DeliveryStatus"]["properties"]


def test_receipts_wait_in_the_queue_while_the_database_is_away(postgres_admin_url, broker):
    """The consumer's database does not exist yet: nothing is acked, and once it is there every receipt lands."""
    from booking_service.storage.migrate import upgrade

    name = f"t_{uuid.uuid4().hex[:12]}"
    url = sa.engine.make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    running = ReceiptConsumer(engine, broker, prefetch=10, max_backoff=0.5)
    thread = threading.Thread(target=running.run, daemon=True)
    admin = sa.create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    booking_id, nid = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        thread.start()
        publish(broker, *story(booking_id, nid))
        wait_for(lambda: running.failures >= 2, 20, "the consumer to find the database away")
        assert running.applied == 0
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        upgrade(url)
        wait_for(lambda: running.applied == 4, 30, "every receipt once the database is back")
        assert queue_depth(broker, shared.BOOKING_RECEIPTS_QUEUE) == 0
    finally:
        running.stop()
        thread.join(10)
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_a_consumer_whose_queue_is_deleted_and_declared_again_comes_back_and_readyz_says_so_meanwhile(
        settings, client, session_factory, broker, consumer):
    from kombu import Connection

    from notification_service.broker.topology import declare

    ready_app = create_app(settings.model_copy(update={"amqp_url": broker}))
    ready = ready_app.test_client()
    try:
        assert ready.get("/readyz").json["checks"]["receipts"]["consumers"] == 0  # nothing consumes yet
        assert ready.get("/readyz").json["status"] == "degraded"
        running = consumer()
        wait_for(lambda: ready.get("/readyz").json["checks"]["receipts"].get("consumers") == 1, 20, "one consumer")
        assert ready.get("/readyz").json["status"] == "ok"

        connection = pika.BlockingConnection(pika.URLParameters(broker))
        connection.channel().queue_delete(shared.BOOKING_RECEIPTS_QUEUE)
        connection.close()
        wait_for(lambda: ready.get("/readyz").json["checks"]["receipts"].get("queue") == "missing", 20,
                 "/readyz reporting the queue gone")
        assert ready.get("/readyz").json["status"] == "degraded"
        # A quorum queue's consumers hear of its deletion a little after clients see it gone; declared
        # again within that instant, RabbitMQ 3.10 can leave the old consumer attached to the new queue,
        # receiving nothing. Redeclare once the consumer knows (as a deploy, seconds later, would).
        wait_for(lambda: running.failures >= 1, 20, "the consumer noticing its queue is gone")
        with Connection(broker) as kombu_connection:
            declare(kombu_connection)  # the notification service declares it again at its next start

        # The consumer was cancelled by the broker; it reattaches on its own and applies what comes.
        wait_for(lambda: ready.get("/readyz").json["checks"]["receipts"].get("consumers") == 1, 30,
                 "the consumer back on the new queue")
        booking_id, nid = new_booking(client, session_factory)
        publish(broker, *story(booking_id, nid))
        wait_for(lambda: running.applied == 4, 20, "receipts applied after the queue came back")
    finally:
        ready_app.extensions["booking_engine"].dispose()
