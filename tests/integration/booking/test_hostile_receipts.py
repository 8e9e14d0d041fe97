"""The hostile receipts corpus (tests/hostile/receipts.py) against the real consumer, broker and both databases.

Also what the timeline makes of receipts already stored before the consumer refused them,
and a database that refuses a receipt's data: poison, never an outage.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pika
import sqlalchemy as sa
import structlog

import shared
from booking_service.storage.models import NotificationReceipt, OutboxMessage
from tests.booking.fixtures import AUTH
from tests.hostile.receipts import cases
from tests.integration.booking.test_receipts import broker, consumer, deliveries, new_booking, publish, receipt  # noqa: F401 - fixtures by name
from tests.support import queue_depth, wait_for

DLQ = shared.dead_letter_queue(shared.BOOKING_RECEIPTS_QUEUE)


def publish_named(url: str, named: list[tuple[str, bytes]]) -> None:
    """Publish each body with its name as the message id, as the notification service publishes receipts."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for name, body in named:
            channel.basic_publish(shared.RECEIPTS_EXCHANGE, "email.sent", body, mandatory=True,
                                  properties=pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                                                  message_id=name))
    finally:
        connection.close()


def dead_letters(url: str) -> dict[str, int]:
    """Message id → how often RabbitMQ dead-lettered it, for everything in booking.receipts.dlq (left there)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        found = {}
        while True:
            method, properties, _body = channel.basic_get(DLQ, auto_ack=False)
            if method is None:
                return found
            found[properties.message_id] = sum(d["count"] for d in properties.headers["x-death"])
    finally:
        connection.close()


def stored(session_factory) -> list[tuple]:
    with session_factory() as s:
        return s.execute(sa.select(NotificationReceipt.delivery_id, NotificationReceipt.sequence,
                                   NotificationReceipt.status).order_by(NotificationReceipt.id)).all()


def test_every_hostile_receipt_is_dead_lettered_at_once_with_its_reason_and_the_consumer_goes_on(
        client, session_factory, broker, consumer):  # noqa: F811 - pytest fixtures
    running = consumer()
    booking_id, nid = new_booking(client, session_factory)
    other_booking, other_nid = new_booking(client, session_factory)
    valid = receipt(booking_id, nid, "email", 1, "sent", 1)
    publish(broker, valid)
    wait_for(lambda: running.applied == 1, 20, "the genuine receipt")
    before = stored(session_factory)
    corpus = cases(valid, receipt(other_booking, other_nid, "email", 1, "sent", 1))

    with structlog.testing.capture_logs() as lines:
        publish_named(broker, [(case.name, case.body) for case in corpus])
        wait_for(lambda: running.rejected == len(corpus), 30, f"{len(corpus)} hostile receipts dead-lettered")
        publish(broker, receipt(booking_id, nid, "push", 1, "sent", 1))
        wait_for(lambda: running.applied == 2, 20, "a genuine receipt after the corpus")

    reasons = {line["message_id"]: line["reason"] for line in lines if line["event"] == "receipt_dead_lettered"}
    for case in corpus:
        assert case.reason in reasons.get(case.name, ""), (case.name, reasons.get(case.name))
    wait_for(lambda: len(dead_letters(broker)) == len(corpus), 20, "every hostile receipt in the DLQ")
    assert dead_letters(broker) == {case.name: 1 for case in corpus}  # each dead on its first delivery, none retried
    assert running.failures == 0 and running.duplicates == 0  # no poison was taken for an outage
    assert queue_depth(broker, shared.BOOKING_RECEIPTS_QUEUE) == 0
    assert stored(session_factory)[: len(before)] == before and len(stored(session_factory)) == 2
    timeline = deliveries(client, booking_id)
    assert set(timeline) == {"email", "push"} and timeline["email"]["status"] == "sent"
    assert timeline["email"]["recipient"] == "g***@example.org"
    assert "grace@example.org" not in json.dumps(lines, default=str)


def _refuse_recipient_in_the_database(engine: sa.Engine, recipient: str) -> None:
    """A rule of the database (not of the contract) that refuses one recipient, as the data's fault."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # SQLSTATE 22023 (invalid_parameter_value) is a DataError, like 22003 for 2**31 or a NUL.
            conn.execute(sa.text(
                "CREATE FUNCTION refuse_recipient() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.recipient = '{recipient}' THEN RAISE EXCEPTION 'refused' USING ERRCODE = '22023'; END IF; "
                "RETURN NEW; END $$"))
            conn.execute(sa.text("CREATE TRIGGER refuse_recipient BEFORE INSERT ON notification_receipts "
                                 "FOR EACH ROW EXECUTE FUNCTION refuse_recipient()"))
        else:
            conn.execute(sa.text(
                "CREATE TRIGGER refuse_recipient BEFORE INSERT ON notification_receipts "
                f"WHEN NEW.recipient = '{recipient}' BEGIN SELECT RAISE(ABORT, 'refused'); END"))


def test_a_receipt_the_database_refuses_is_poison_not_an_outage(settings, client, session_factory,
                                                                broker, consumer):  # noqa: F811 - pytest fixtures
    refused = "r***@refused.example"
    engine = sa.create_engine(settings.database_url)
    try:
        _refuse_recipient_in_the_database(engine, refused)
    finally:
        engine.dispose()
    running = consumer()
    booking_id, nid = new_booking(client, session_factory)
    with structlog.testing.capture_logs() as lines:
        publish(broker, receipt(booking_id, nid, "email", 1, "sent", 1, recipient=refused),
                receipt(booking_id, nid, "push", 1, "sent", 1))
        wait_for(lambda: running.rejected == 1 and running.applied == 1, 20, "one dead-lettered, one applied")
    assert running.failures == 0
    (line,) = [line for line in lines if line["event"] == "receipt_dead_lettered"]
    assert line["reason"].startswith("the database refused it: ") and refused not in line["reason"]
    wait_for(lambda: queue_depth(broker, DLQ) == 1, 20, "the refused receipt in the DLQ")


def _store_as_before(session_factory, notification_id: str, booking_id: str, delivery_id: str, **row) -> None:
    """A receipt row as the consumer stored it before it refused contradictions and markup."""
    defaults = {"sequence": 1, "event": "booking.confirmed", "channel": "email", "recipient": "g***@example.org",
                "status": "sent", "attempt": 1, "booking_version": 1, "correlation_id": "req-1",
                "occurred_at": datetime(2030, 5, 1, 12, tzinfo=UTC)}
    with session_factory() as s:
        s.add(NotificationReceipt(**{**defaults, "notification_id": notification_id, "booking_id": booking_id,
                                     "delivery_id": delivery_id, **row}))
        s.commit()


def test_the_timeline_takes_a_receipt_only_for_the_booking_and_delivery_it_names(client, session_factory):
    booking_id, nid = new_booking(client, session_factory)
    other_booking, _other_nid = new_booking(client, session_factory)
    with session_factory() as s:
        reminder = s.execute(sa.select(OutboxMessage.notification_id).where(
            OutboxMessage.booking_id == booking_id, OutboxMessage.event == "booking.reminder")).scalar_one()
    email = str(uuid.uuid5(uuid.UUID(nid), "email"))
    _store_as_before(session_factory, nid, booking_id, email)
    # Forged: another booking's id on this notification (a later "dead", a phantom push delivery) ...
    _store_as_before(session_factory, nid, other_booking, email, sequence=2, status="dead")
    _store_as_before(session_factory, nid, other_booking, str(uuid.uuid4()), channel="push", recipient="tok-…-1")
    # ... and this booking's reminder naming the confirmation's delivery.
    _store_as_before(session_factory, reminder, booking_id, email, sequence=3, status="dead",
                     event="booking.reminder")

    response = client.get(f"/v1/bookings/{booking_id}/notifications", headers=AUTH)
    stories = {n["event"]: n["deliveries"] for n in response.json["notifications"]}
    (confirmation,) = stories["booking.confirmed"]
    assert (confirmation["channel"], confirmation["status"], confirmation["sequence"]) == ("email", "sent", 1)
    assert [h["sequence"] for h in confirmation["history"]] == [1] and confirmation["history_complete"]
    assert [d["status"] for d in stories["booking.reminder"]] == ["dead"]  # its own story, apart
    assert deliveries(client, other_booking) == {}  # the other booking's id on a notification not its own


def test_the_timeline_returns_plain_data_and_no_browser_may_sniff_it(client, session_factory):
    booking_id, nid = new_booking(client, session_factory)
    script = "<script>alert(1)</script>"
    _store_as_before(session_factory, nid, booking_id, str(uuid.uuid5(uuid.UUID(nid), "email")), status="retrying",
                     recipient=f"g***@{script}", reason=script)
    response = client.get(f"/v1/bookings/{booking_id}/notifications", headers=AUTH)
    assert response.mimetype == "application/json" and response.headers["X-Content-Type-Options"] == "nosniff"
    email = deliveries(client, booking_id)["email"]
    assert email["reason"] == script and email["history"][0]["reason"] == script  # data, for the client to escape
    assert email["recipient"] == "***"  # no longer reads as a mask: not shown
    for path in ("/healthz", "/openapi.json", "/nowhere"):
        assert client.get(path).headers["X-Content-Type-Options"] == "nosniff", path
