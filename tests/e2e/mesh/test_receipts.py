"""End to end over HTTP: GET /v1/bookings/<id>/notifications tells what became of each notification.

The worker publishes receipts, the receipts consumer (its own process) stores them, the API
answers; each test waits for the timeline to say what it checks.
"""

from __future__ import annotations

import json
from datetime import timedelta

from tests.support import wait_for

from .test_mesh import book

EMAIL = "ada@example.org"


def timeline(mesh, booking_id: str) -> dict:
    response = mesh.get(f"/v1/bookings/{booking_id}/notifications")
    assert response.status_code == 200, response.text
    return response.json()


def channels(mesh, booking_id: str, event: str) -> dict[str, dict]:
    """The deliveries of the booking's ``event`` notification, by channel."""
    (story,) = [n for n in timeline(mesh, booking_id)["notifications"] if n["event"] == event]
    return {d["channel"]: d for d in story["deliveries"]}


def until(mesh, booking_id: str, event: str, **statuses: str) -> dict[str, dict]:
    """Wait until the timeline shows ``channel=status`` for each given channel; return the deliveries."""
    def shown():
        found = channels(mesh, booking_id, event)
        return found if all(found.get(c, {}).get("status") == s for c, s in statuses.items()) else None

    return wait_for(shown, 90, f"{event} showing {statuses} for booking {booking_id}")


def test_the_timeline_shows_the_confirmation_sent_by_email_and_push_and_no_address(mesh, fake_push):
    token = "device-timeline-0042"
    booking = book(mesh, timedelta(days=3), token=token)
    found = until(mesh, booking["id"], "booking.confirmed", email="sent", push="sent")

    assert found["email"]["recipient"] == "a***@example.org" and found["push"]["recipient"] == "devi…42"
    assert found["email"]["attempts"] == 1 and found["push"]["attempts"] == 1
    assert found["push"]["provider_message_id"].startswith("projects/fake/messages/")
    story = timeline(mesh, booking["id"])
    confirmation = [n for n in story["notifications"] if n["event"] == "booking.confirmed"][0]
    assert confirmation["state"] == "published" and confirmation["published_at"] >= confirmation["requested_at"]
    reminder = [n for n in story["notifications"] if n["event"] == "booking.reminder"][0]
    assert reminder["state"] == "scheduled" and reminder["deliveries"] == []
    consumer_log = (mesh.root / "receipts.log").read_text()
    assert f'"delivery_id": "{found["email"]["delivery_id"]}"' in consumer_log  # it did log the receipts ...
    for secret in (EMAIL, token):  # ... and no address or token, neither there nor in the timeline
        assert secret not in json.dumps(story) and secret not in consumer_log


def test_a_provider_answering_503_then_200_shows_retrying_then_sent_with_the_attempts(mesh, fake_push):
    fake_push.status = 503
    booking = book(mesh, timedelta(days=3))
    until(mesh, booking["id"], "booking.confirmed", email="sent", push="retrying")
    fake_push.status = 200
    push = until(mesh, booking["id"], "booking.confirmed", push="sent")["push"]
    assert push["attempts"] >= 2 and push["attempts"] == len(push["history"])
    assert [h["status"] for h in push["history"]] == ["retrying"] * (push["attempts"] - 1) + ["sent"]
    assert push["history"][0]["reason"] == "push_http provider answered 503" and push["reason"] is None


def test_a_4xx_from_the_provider_shows_dead_with_its_reason(mesh, fake_push):
    fake_push.status = 400
    booking = book(mesh, timedelta(days=3))
    found = until(mesh, booking["id"], "booking.confirmed", email="sent", push="dead")
    assert found["push"]["reason"].startswith("permanent: push_http provider answered 400")
    assert found["push"]["attempts"] == 1


def test_a_cancellation_shows_the_withdrawn_reminder_and_the_confirmation_it_made_stale(mesh, fake_push):
    fake_push.status = 503  # the confirmation's push waits in retries ...
    booking = book(mesh, timedelta(days=2))
    until(mesh, booking["id"], "booking.confirmed", email="sent", push="retrying")
    cancelled = mesh.post(f"/v1/bookings/{booking['id']}/cancel")  # ... when the booking is cancelled
    assert cancelled.status_code == 200, cancelled.text

    stale = until(mesh, booking["id"], "booking.confirmed", push="stale")["push"]
    assert stale["reason"] == "older than a processed cancellation"
    assert [h["status"] for h in stale["history"]][-1] == "stale" and stale["history_complete"]
    fake_push.status = 200
    until(mesh, booking["id"], "booking.cancelled", email="sent", push="sent")
    story = {n["event"]: n for n in timeline(mesh, booking["id"])["notifications"]}
    assert story["booking.reminder"]["state"] == "withdrawn" and story["booking.reminder"]["deliveries"] == []
    assert story["booking.reminder"]["published_at"] is None and story["booking.cancelled"]["state"] == "published"
