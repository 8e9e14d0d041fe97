"""End to end over HTTP: booking API → outbox relay → RabbitMQ → workers → sinks.

Asserts on what the e-mail file sink and the fake push provider received.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from tests.support import wait_for


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def book(mesh, starts_in: timedelta, *, token: str | None = None, minutes: int = 60) -> dict:
    start = datetime.now(UTC).replace(microsecond=0) + starts_in
    response = mesh.post(
        "/v1/bookings",
        json={
            "resource_id": f"room-{uuid.uuid4().hex[:8]}",
            "starts_at": iso(start),
            "ends_at": iso(start + timedelta(minutes=minutes)),
            "customer": {
                "name": "Ada Lovelace",
                "email": "ada@example.org",
                "locale": "en",
                "timezone": "Europe/Berlin",
                "push_tokens": [token or f"device-{uuid.uuid4().hex[:8]}"],
            },
        },
    )
    assert response.status_code == 201, response.text
    return response.json()


def pushes_to(fake_push, token: str) -> list[dict]:
    return [c for c in fake_push.delivered() if c["json"]["message"]["token"] == token]


def test_booking_delivers_confirmation_email_and_push(mesh, fake_push):
    token = "device-confirm"
    booking = book(mesh, timedelta(days=3), token=token)

    rows = mesh.settled(booking["id"], 2)  # the confirmation's e-mail and push, both final
    assert {(r.channel, r.status) for r in rows} == {("email", "sent"), ("push", "sent")}
    mails = mesh.emails_for(booking["id"], "booking.confirmed")
    pushes = pushes_to(fake_push, token)
    assert len(mails) == 1 and mails[0]["To"].addresses[0].addr_spec == "ada@example.org"
    assert len(pushes) == 1
    assert pushes[0]["headers"]["Authorization"] == "Bearer fake-token"


def test_cancellation_sends_cancellation_email_and_its_reminder_never(mesh, fake_push):
    booking = book(mesh, timedelta(days=2))
    cancelled = mesh.post(f"/v1/bookings/{booking['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text

    # confirmation (e-mail + push) and cancellation (e-mail + push), each final
    rows = mesh.settled(booking["id"], 4)
    assert {r.event for r in rows} == {"booking.confirmed", "booking.cancelled"}
    assert len(mesh.emails_for(booking["id"], "booking.cancelled")) == 1
    # the reminder was withdrawn in the cancelling transaction: it never reaches the broker
    assert ("booking.reminder", "superseded") in {(r.event, r.status) for r in mesh.outbox(booking["id"])}
    assert mesh.emails_for(booking["id"], "booking.reminder") == []


def test_reschedule_sends_one_rescheduled_email_and_moves_the_reminder(mesh, fake_push):
    booking = book(mesh, timedelta(hours=2))
    new_start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=36)
    moved = mesh.patch(
        f"/v1/bookings/{booking['id']}",
        json={"starts_at": iso(new_start), "ends_at": iso(new_start + timedelta(minutes=30))},
    )
    assert moved.status_code == 200, moved.text

    wait_for(lambda: mesh.emails_for(booking["id"], "booking.rescheduled"), 30, "the rescheduled e-mail")
    wait_for(lambda: mesh.emails_for(booking["id"], "booking.reminder"), 40, "the moved reminder")
    # confirmed, rescheduled and the reminder, e-mail and push each, all final: no late copy can follow
    mesh.settled(booking["id"], 6)
    reminders = mesh.emails_for(booking["id"], "booking.reminder")
    assert len(mesh.emails_for(booking["id"], "booking.rescheduled")) == 1
    assert len(reminders) == 1
    assert reminders[0]["X-Booking-Version"] == str(moved.json()["version"])


def test_push_provider_outage_delivers_once_after_recovery(mesh, fake_push):
    fake_push.status = 503
    token = "device-outage"
    book(mesh, timedelta(days=2), token=token)

    wait_for(lambda: len([c for c in fake_push.calls if c["status"] == 503]) >= 2, 30, "retries against the outage")
    fake_push.status = 200
    booking_id = wait_for(lambda: pushes_to(fake_push, token), 60, "delivery after the provider recovered")[0][
        "json"]["message"]["data"]["booking_id"]
    mesh.settled(booking_id, 2)
    assert len(pushes_to(fake_push, token)) == 1
    # Every attempt carried the same idempotency key: the notification's delivery id.
    keys = {c["headers"].get("Idempotency-Key") for c in fake_push.calls if c["json"]["message"]["token"] == token}
    assert len(keys) == 1 and None not in keys
