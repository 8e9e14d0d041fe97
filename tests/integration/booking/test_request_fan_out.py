"""What one request may cost: reschedules per booking, push tokens per booking, one page of notifications."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from booking_service.storage.models import Booking, OutboxMessage
from tests.booking.fixtures import AUTH, booking_body, iso

MAX_RESCHEDULES = 2
START = datetime(2031, 5, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def settings(settings):
    """The booking fixtures' settings with a small reschedule limit."""
    return settings.model_copy(update={"max_reschedules": MAX_RESCHEDULES})


def move(n: int) -> dict:
    return {"starts_at": iso(START + timedelta(days=n)), "ends_at": iso(START + timedelta(days=n, hours=1))}


def outbox_rows(session_factory, booking_id: str) -> list[OutboxMessage]:
    with session_factory() as s:
        return list(s.execute(sa.select(OutboxMessage).where(OutboxMessage.booking_id == booking_id)).scalars())


def test_a_booking_is_rescheduled_at_most_max_reschedules_times_then_refused_with_409_naming_the_limit(
        client, session_factory):
    booking_id = client.post("/v1/bookings", json=booking_body(start=START), headers=AUTH).json["id"]
    for n in range(1, MAX_RESCHEDULES + 1):
        assert client.patch(f"/v1/bookings/{booking_id}", json=move(n), headers=AUTH).status_code == 200
    rows_before = len(outbox_rows(session_factory, booking_id))

    refused = client.patch(f"/v1/bookings/{booking_id}", json=move(9), headers=AUTH)

    assert refused.status_code == 409
    assert f"BOOKING_MAX_RESCHEDULES={MAX_RESCHEDULES}" in refused.json["error"]["message"]
    with session_factory() as s:
        booking = s.get(Booking, booking_id)
        assert booking is not None and booking.version == MAX_RESCHEDULES + 1
        assert booking.starts_at.astimezone(UTC) == START + timedelta(days=MAX_RESCHEDULES)
    assert len(outbox_rows(session_factory, booking_id)) == rows_before
    # Cancelling stays possible: the limit only stops the moves.
    assert client.post(f"/v1/bookings/{booking_id}/cancel", headers=AUTH).status_code == 200


def test_one_request_writes_at_most_two_outbox_rows_of_at_most_one_email_and_five_pushes(client, session_factory):
    tokens = [f"device-{i}" for i in range(5)]
    created = client.post("/v1/bookings", json=booking_body(start=START, push_tokens=tokens), headers=AUTH)
    assert created.status_code == 201, created.json
    booking_id = created.json["id"]
    after_create = outbox_rows(session_factory, booking_id)
    assert client.patch(f"/v1/bookings/{booking_id}", json=move(1), headers=AUTH).status_code == 200
    after_move = outbox_rows(session_factory, booking_id)

    assert len(after_create) == 2 and len(after_move) - len(after_create) == 2
    assert all(len(row.payload["recipient"]["push_tokens"]) == 5 for row in after_move)
    six = client.post("/v1/bookings", json=booking_body(push_tokens=[*tokens, "device-5"]), headers=AUTH)
    assert six.status_code == 422 and "push_tokens" in json.dumps(six.json["error"]["details"])
    too_long = client.post("/v1/bookings", json=booking_body(push_tokens=["a" * 4000, "b" * 97]), headers=AUTH)
    assert too_long.status_code == 422 and "4096 characters" in json.dumps(too_long.json["error"]["details"])


def test_the_notification_story_is_paginated_oldest_first_with_x_pagination(client):
    booking_id = client.post("/v1/bookings", json=booking_body(start=START), headers=AUTH).json["id"]
    for n in range(1, MAX_RESCHEDULES + 1):
        assert client.patch(f"/v1/bookings/{booking_id}", json=move(n), headers=AUTH).status_code == 200
    url = f"/v1/bookings/{booking_id}/notifications"
    everything = client.get(url, headers=AUTH)
    total = 2 + 2 * MAX_RESCHEDULES

    first = client.get(f"{url}?page_size=4", headers=AUTH)
    second = client.get(f"{url}?page_size=4&page=2", headers=AUTH)

    assert len(everything.json["notifications"]) == total
    assert json.loads(everything.headers["X-Pagination"])["total"] == total
    assert json.loads(first.headers["X-Pagination"]) == {"total": total, "total_pages": 2, "first_page": 1,
                                                         "last_page": 2, "page": 1, "next_page": 2}
    assert [len(first.json["notifications"]), len(second.json["notifications"])] == [4, total - 4]
    assert first.json["notifications"] + second.json["notifications"] == everything.json["notifications"]
    assert second.json["booking_version"] == MAX_RESCHEDULES + 1
    assert client.get(f"{url}?page_size=101", headers=AUTH).status_code == 422


def test_the_notification_story_documents_its_pagination(client):
    operation = client.get("/openapi.json").json["paths"]["/v1/bookings/{booking_id}/notifications"]["get"]
    query = {p["name"]: p["schema"] for p in operation["parameters"] if p["in"] == "query"}
    assert query["page_size"]["maximum"] == 100 and query["page_size"]["default"] == 25
    assert query["page"]["minimum"] == 1
    assert "X-Pagination" in operation["responses"]["200"]["headers"]
    assert "422" in operation["responses"]
