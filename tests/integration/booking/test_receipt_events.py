"""Provider events on the booking side (issue 18): new receipt statuses through the real consumer on the real broker.

``delivered``, ``bounced``, ``complained`` and ``suppressed`` follow ``sent`` in a delivery's timeline
with their time; the booking resource shows the contact issues they mean, never an address; and a
booking service one version behind (its statuses frozen at the five it knew) stores them, and a status
nobody knows yet, without dead-lettering any.
"""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from marshmallow import EXCLUDE, RAISE, ValidationError

import shared
import shared.receipts
from booking_service.core import contact_issues
from booking_service.storage.models import NotificationReceipt, OutboxMessage
from tests.booking.fixtures import AUTH, booking_body
from tests.integration.booking import test_receipts
from tests.integration.booking.test_receipts import deliveries, new_booking, publish, receipt
from tests.support import queue_depth, wait_for

#: The receipts tests' fixtures, by name: the notification service's topology in a fresh vhost, and a consumer.
broker, consumer = test_receipts.broker, test_receipts.consumer

#: The statuses a booking service from before issue 18 knew.
OLD_STATUSES = ("sent", "retrying", "dead", "stale", "expired")
#: A status no notification service reports yet.
FUTURE_STATUS = "opened_by_recipient"


def booking_issues(client, booking_id: str) -> list[str]:
    response = client.get(f"/v1/bookings/{booking_id}", headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json["contact_issues"]


def listed_issues(client) -> dict[str, list[str]]:
    response = client.get("/v1/bookings?page_size=100", headers=AUTH)
    assert response.status_code == 200, response.text
    return {b["id"]: b["contact_issues"] for b in response.json}


def history(delivery: dict) -> list[tuple[int, str, str]]:
    return [(step["sequence"], step["status"], step["occurred_at"]) for step in delivery["history"]]


def test_delivered_and_bounced_follow_sent_in_the_timeline_with_their_time(client, session_factory, broker, consumer):
    running = consumer()
    booking_id, nid = new_booking(client, session_factory)
    publish(broker,
            receipt(booking_id, nid, "email", 1, "sent", 1, provider_message_id="<m-1@example.org>"),
            receipt(booking_id, nid, "email", 2, "delivered", 1, provider_message_id="<m-1@example.org>"),
            receipt(booking_id, nid, "push", 1, "sent", 1, provider_message_id="projects/fake/messages/1"),
            receipt(booking_id, nid, "push", 2, "bounced", 1, reason="UNREGISTERED"))
    wait_for(lambda: running.applied == 4, 20, "four receipts applied")
    assert running.rejected == 0
    shown = deliveries(client, booking_id)
    assert history(shown["email"]) == [(1, "sent", "2030-05-01T12:00:01Z"), (2, "delivered", "2030-05-01T12:00:02Z")]
    assert (shown["email"]["status"], shown["email"]["last_change_at"]) == ("delivered", "2030-05-01T12:00:02Z")
    assert history(shown["push"]) == [(1, "sent", "2030-05-01T12:00:01Z"), (2, "bounced", "2030-05-01T12:00:02Z")]
    assert (shown["push"]["status"], shown["push"]["reason"]) == ("bounced", "UNREGISTERED")
    assert booking_issues(client, booking_id) == ["push_token_unregistered"]


def test_each_provider_event_gives_its_contact_issue_on_the_booking_and_in_the_listing(client, session_factory,
                                                                                       broker, consumer):
    running = consumer()
    cases = [("email", "delivered", []), ("email", "bounced", ["email_bounced"]),
             ("email", "complained", ["email_complained"]), ("email", "suppressed", ["email_suppressed"]),
             ("push", "bounced", ["push_token_unregistered"]), ("push", "suppressed", ["push_token_suppressed"]),
             ("email", FUTURE_STATUS, [])]
    expected = {}
    for channel, status, issues in cases:
        booking_id, nid = new_booking(client, session_factory)
        # `suppressed` comes instead of `sent` (no provider call); the others after it.
        steps = ["sent", status] if status != "suppressed" else [status]
        publish(broker, *[receipt(booking_id, nid, channel, n, s, 1 if s != "suppressed" else 0)
                          for n, s in enumerate(steps, start=1)])
        expected[booking_id] = issues
    wait_for(lambda: running.applied == 2 * len(cases) - 2, 20, "every receipt applied")
    assert running.rejected == 0
    assert {b: booking_issues(client, b) for b in expected} == expected
    listed = listed_issues(client)
    assert {b: listed[b] for b in expected} == expected


def test_duplicated_and_reordered_events_give_the_same_timeline_and_issues(client, session_factory, broker, consumer):
    running = consumer()
    in_order, nid_a = new_booking(client, session_factory)
    shuffled, nid_b = new_booking(client, session_factory)

    def steps(booking_id: str, nid: str) -> list[dict]:
        return [receipt(booking_id, nid, "email", 1, "sent", 1), receipt(booking_id, nid, "email", 2, "delivered", 1),
                receipt(booking_id, nid, "email", 3, "complained", 1)]

    publish(broker, *steps(in_order, nid_a))
    sent, delivered, complained = steps(shuffled, nid_b)
    publish(broker, complained, delivered, complained, sent, delivered, sent)
    wait_for(lambda: running.applied == 6 and running.duplicates == 3, 20, "six receipts and three copies")
    shown = [deliveries(client, b)["email"] for b in (in_order, shuffled)]
    assert [history(d) for d in shown][0] == [history(d) for d in shown][1]
    assert [s for _, s, _ in history(shown[1])] == ["sent", "delivered", "complained"]
    assert booking_issues(client, in_order) == booking_issues(client, shuffled) == ["email_complained"]


def test_a_later_delivery_that_went_through_clears_the_contact_issue(client, session_factory, broker, consumer):
    running = consumer()
    booking_id, nid = new_booking(client, session_factory)
    publish(broker, receipt(booking_id, nid, "email", 1, "sent", 1), receipt(booking_id, nid, "email", 2, "bounced", 1))
    wait_for(lambda: running.applied == 2, 20, "the bounce applied")
    assert booking_issues(client, booking_id) == ["email_bounced"]
    moved = client.patch(f"/v1/bookings/{booking_id}", headers=AUTH, json={
        "starts_at": "2031-01-01T10:00:00Z", "ends_at": "2031-01-01T11:00:00Z"})
    assert moved.status_code == 200, moved.text
    assert moved.json["contact_issues"] == ["email_bounced"]
    with session_factory() as s:
        later = s.execute(sa.select(OutboxMessage.notification_id).where(
            OutboxMessage.booking_id == booking_id, OutboxMessage.event == "booking.rescheduled")).scalar_one()
    # The rescheduled notice reaches the same (masked) address, later, and is delivered.
    publish(broker, *[receipt(booking_id, later, "email", n, s, 1, event="booking.rescheduled",
                              booking={"id": booking_id, "version": 2}, occurred_at=f"2030-05-01T13:00:0{n}Z")
                      for n, s in ((1, "sent"), (2, "delivered"))])
    wait_for(lambda: running.applied == 4, 20, "the later delivery applied")
    assert booking_issues(client, booking_id) == []


def test_a_forged_bounce_for_a_notification_the_booking_never_had_adds_no_issue(client, session_factory, broker,
                                                                               consumer):
    running = consumer()
    booking_id, _nid = new_booking(client, session_factory)
    # Contract-valid, contradicting nothing (the outbox does not know the notification): stored, never shown.
    publish(broker, receipt(booking_id, str(uuid.uuid4()), "email", 1, "bounced", 1))
    wait_for(lambda: running.applied == 1, 20, "the forged receipt stored")
    assert booking_issues(client, booking_id) == []


@pytest.fixture
def old_consumer(monkeypatch):
    """The booking side one version behind: the statuses it knows frozen at today's, no contact issue known."""
    monkeypatch.setattr(shared.receipts, "RECEIPT_STATUSES", OLD_STATUSES)
    strict = shared.receipts._schema(RAISE)()
    with pytest.raises(ValidationError):  # the freeze holds: this version's producer would refuse them
        strict.load({"status": "delivered"}, partial=True)
    monkeypatch.setattr(shared.receipts, "_TOLERANT", shared.receipts._schema(EXCLUDE)())
    monkeypatch.setattr(contact_issues, "ISSUES", {})


def test_the_old_consumer_stores_new_and_future_statuses_and_dead_letters_none(old_consumer, client,
                                                                               session_factory, broker, consumer):
    running = consumer()
    booking_id, nid = new_booking(client, session_factory)
    statuses = ["delivered", "bounced", "complained", "suppressed", FUTURE_STATUS]
    bodies = []
    for n, status in enumerate(statuses):
        delivery = str(uuid.uuid5(uuid.UUID(nid), f"email-{n}"))
        bodies += [receipt(booking_id, nid, "email", 1, "sent", 1, delivery_id=delivery, recipient=f"{n}***@ex.org"),
                   receipt(booking_id, nid, "email", 2, status, 1, delivery_id=delivery, recipient=f"{n}***@ex.org")]
    # Then what it knows goes on being applied.
    bodies.append(receipt(booking_id, nid, "push", 1, "retrying", 1, reason="push_http provider answered 503"))
    publish(broker, *bodies)
    wait_for(lambda: running.applied == len(bodies), 20, "every receipt applied")
    assert running.rejected == 0
    dlq = shared.dead_letter_queue(shared.BOOKING_RECEIPTS_QUEUE)
    assert queue_depth(broker, dlq) == 0
    with session_factory() as s:
        stored = set(s.execute(sa.select(NotificationReceipt.status).where(
            NotificationReceipt.booking_id == booking_id)).scalars())
    assert stored == {"sent", "retrying", *statuses}
    response = client.get(f"/v1/bookings/{booking_id}/notifications", headers=AUTH)
    assert response.status_code == 200, response.text
    (confirmation,) = [n for n in response.json["notifications"] if n["event"] == "booking.confirmed"]
    currents = sorted(d["status"] for d in confirmation["deliveries"])
    assert currents == sorted([*statuses, "retrying"])
    assert booking_issues(client, booking_id) == []


def test_an_unknown_future_status_is_shown_as_it_came_and_not_dead_lettered(client, session_factory, broker,
                                                                             consumer):
    running = consumer()
    booking_id, nid = new_booking(client, session_factory)
    publish(broker, receipt(booking_id, nid, "email", 2, FUTURE_STATUS, 1), receipt(booking_id, nid, "email", 1,
                                                                                    "sent", 1))
    wait_for(lambda: running.applied == 2, 20, "both receipts applied")
    assert running.rejected == 0
    email = deliveries(client, booking_id)["email"]
    assert [s for _, s, _ in history(email)] == ["sent", FUTURE_STATUS] and email["status"] == FUTURE_STATUS
    assert booking_issues(client, booking_id) == []


def test_a_new_booking_has_no_contact_issue_and_its_create_answer_is_what_a_read_shows(client):
    created = client.post("/v1/bookings", json=booking_body(), headers=AUTH)
    assert created.status_code == 201, created.text
    assert created.json["contact_issues"] == []
    assert client.get(f"/v1/bookings/{created.json['id']}", headers=AUTH).json == created.json


def test_the_openapi_document_describes_contact_issues_and_the_new_statuses(client):
    schemas = client.get("/openapi.json").json["components"]["schemas"]
    booking = schemas["Booking"]
    assert "contact_issues" in booking["required"]
    assert booking["properties"]["contact_issues"]["type"] == "array"
    described = booking["properties"]["contact_issues"]["description"]
    assert all(issue in described for issue in set(contact_issues.ISSUES.values()))
    step = schemas["ReceiptStep"]["properties"]["status"]["description"]
    assert all(status in step for status in ("delivered", "bounced", "complained", "suppressed", "open set"))
