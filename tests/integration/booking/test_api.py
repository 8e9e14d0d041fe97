"""The HTTP API: auth, validation, errors, idempotency, reads, cancel and reschedule."""

from __future__ import annotations

import sqlalchemy as sa

import shared
from booking_service.core import outbox
from booking_service.storage.models import Booking, OutboxMessage
from tests.booking.fixtures import AUTH, booking_body


def test_missing_or_wrong_key_is_401_json_and_health_is_open(client):
    assert client.post("/v1/bookings", json=booking_body()).status_code == 401
    wrong = client.get("/v1/bookings", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json["error"]["code"] == 401 and "Bearer" in wrong.headers["WWW-Authenticate"]
    assert client.get("/v1/bookings", headers={"Authorization": "Bearer other-key"}).status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.get("/openapi.json").json["info"]["title"] == "Booking service"
    assert b"/v1/bookings" in client.get("/docs").data


def test_create_returns_the_booking_and_writes_confirmation_and_reminder_rows(client, session_factory):
    response = client.post("/v1/bookings", json=booking_body(), headers={**AUTH, "X-Request-ID": "req-42"})
    assert response.status_code == 201, response.json
    booking = response.json
    assert booking["status"] == "confirmed" and booking["version"] == 1
    assert response.headers["Location"] == f"/v1/bookings/{booking['id']}"
    assert response.headers["X-Request-ID"] == "req-42"
    with session_factory() as s:
        rows = s.execute(sa.select(OutboxMessage).where(OutboxMessage.booking_id == booking["id"])).scalars().all()
    events = sorted(r.event for r in rows)
    assert events == ["booking.confirmed", "booking.reminder"]
    assert all(r.correlation_id == "req-42" and r.payload["correlation_id"] == "req-42" for r in rows)
    assert client.get(f"/v1/bookings/{booking['id']}", headers=AUTH).json == booking


def test_every_outbox_row_of_a_new_booking_is_the_contract_message_built_for_it(client, session_factory):
    booking_id = client.post("/v1/bookings", json=booking_body(), headers=AUTH).json["id"]
    with session_factory() as s:
        columns = outbox.columns(s.get(Booking, booking_id))
    rows = _rows(session_factory, booking_id)
    assert len(rows) == 2
    for row in rows:  # the reminder's payload is derived from the validated confirmation's
        shared.validate_notification_requested(row.payload)
        assert row.payload == outbox.contract_message(columns, shared.Event(row.event), row.notification_id,
                                                      row.correlation_id, row.created_at)
        assert row.payload_sha256 == outbox.digest(row.payload)


def test_validation_errors_are_422_with_per_field_messages(client):
    body = booking_body()
    body["surprise"] = 1
    body["starts_at"] = "2031-03-01T09:00:00"  # naive
    body["customer"]["email"] = "not-an-email"
    body["customer"]["timezone"] = "Mars/Olympus"
    response = client.post("/v1/bookings", json=body, headers=AUTH)
    assert response.status_code == 422
    details = response.json["error"]["details"]
    assert set(details) == {"surprise", "starts_at", "customer"}
    assert set(details["customer"]) == {"email", "timezone"}


def test_end_before_start_and_garbage_bodies_are_refused(client):
    body = booking_body()
    body["ends_at"] = body["starts_at"]
    response = client.post("/v1/bookings", json=body, headers=AUTH)
    assert response.status_code == 422 and "ends_at" in response.json["error"]["details"]
    garbage = client.post("/v1/bookings", data="{not json", headers={**AUTH, "Content-Type": "application/json"})
    assert garbage.status_code in (400, 422) and "error" in garbage.json


def test_body_over_the_limit_is_413(client):
    body = booking_body()
    body["notes"] = "x" * 70_000
    response = client.post("/v1/bookings", json=body, headers=AUTH)
    assert response.status_code == 413 and response.json["error"]["code"] == 413


def test_overlap_is_409_and_adjacent_slot_is_fine(client):
    first = booking_body(resource="room-a")
    assert client.post("/v1/bookings", json=first, headers=AUTH).status_code == 201
    overlap = booking_body(resource="room-a")
    overlap["starts_at"] = "2031-03-01T09:30:00Z"
    overlap["ends_at"] = "2031-03-01T10:30:00Z"
    assert client.post("/v1/bookings", json=overlap, headers=AUTH).status_code == 409
    adjacent = booking_body(resource="room-a")
    adjacent["starts_at"], adjacent["ends_at"] = "2031-03-01T10:00:00Z", "2031-03-01T11:00:00Z"
    assert client.post("/v1/bookings", json=adjacent, headers=AUTH).status_code == 201


def test_idempotency_key_replays_the_same_response_and_refuses_another_body(client, session_factory):
    headers = {**AUTH, "Idempotency-Key": "order-1"}
    body = booking_body()
    first = client.post("/v1/bookings", json=body, headers=headers)
    again = client.post("/v1/bookings", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json == first.json and again.headers["Idempotent-Replayed"] == "true"
    different = client.post("/v1/bookings", json=booking_body(), headers=headers)
    assert different.status_code == 422 and "different request body" in different.json["error"]["message"]
    with session_factory() as s:
        assert s.execute(sa.select(sa.func.count()).select_from(OutboxMessage)).scalar_one() == 2  # one booking's rows


def test_list_filters_and_paginates(client):
    for day in (1, 2, 3):
        body = booking_body(resource="room-list")
        body["starts_at"], body["ends_at"] = f"2031-04-0{day}T09:00:00Z", f"2031-04-0{day}T10:00:00Z"
        assert client.post("/v1/bookings", json=body, headers=AUTH).status_code == 201
    assert client.post("/v1/bookings", json=booking_body(resource="room-other"), headers=AUTH).status_code == 201
    page = client.get("/v1/bookings?resource_id=room-list&page=1&page_size=2", headers=AUTH)
    assert [b["starts_at"][:10] for b in page.json] == ["2031-04-01", "2031-04-02"]
    assert '"total": 3' in page.headers["X-Pagination"]
    ranged = client.get("/v1/bookings?resource_id=room-list&from=2031-04-02T00:00:00Z&to=2031-04-03T00:00:00Z",
                        headers=AUTH)
    assert [b["starts_at"][:10] for b in ranged.json] == ["2031-04-02"]
    assert client.get("/v1/bookings?status=cancelled", headers=AUTH).json == []
    assert client.get("/v1/bookings/00000000-0000-4000-8000-000000000000", headers=AUTH).status_code == 404


def _rows(session_factory, booking_id):
    with session_factory() as s:
        return s.execute(sa.select(OutboxMessage).where(OutboxMessage.booking_id == booking_id)
                         .order_by(OutboxMessage.id)).scalars().all()


def test_reminder_is_due_lead_before_start_and_expires_at_start(client, session_factory):
    booking = client.post("/v1/bookings", json=booking_body(), headers=AUTH).json
    reminder = next(r for r in _rows(session_factory, booking["id"]) if r.event == "booking.reminder")
    assert reminder.available_at.isoformat() == "2031-03-01T08:00:00+00:00"  # lead is 1 h in these tests
    assert reminder.expires_at.isoformat() == "2031-03-01T09:00:00+00:00"
    assert reminder.priority < next(
        r for r in _rows(session_factory, booking["id"]) if r.event == "booking.confirmed").priority


def test_cancel_withdraws_the_reminder_and_sends_a_cancellation(client, session_factory):
    booking = client.post("/v1/bookings", json=booking_body(resource="room-c"), headers=AUTH).json
    cancelled = client.post(f"/v1/bookings/{booking['id']}/cancel", headers=AUTH)
    assert cancelled.status_code == 200 and cancelled.json["status"] == "cancelled" and cancelled.json["version"] == 2
    rows = {r.event: r for r in _rows(session_factory, booking["id"])}
    assert rows["booking.reminder"].status == "superseded"
    assert rows["booking.cancelled"].status == "pending"
    assert rows["booking.cancelled"].payload["booking"]["version"] == 2
    assert client.post(f"/v1/bookings/{booking['id']}/cancel", headers=AUTH).status_code == 409
    # The slot is free again.
    assert client.post("/v1/bookings", json=booking_body(resource="room-c"), headers=AUTH).status_code == 201


def test_reschedule_moves_the_reminder_and_sends_a_rescheduled_message(client, session_factory):
    booking = client.post("/v1/bookings", json=booking_body(), headers=AUTH).json
    moved = client.patch(f"/v1/bookings/{booking['id']}",
                         json={"starts_at": "2031-03-02T15:00:00+01:00", "ends_at": "2031-03-02T16:00:00+01:00"},
                         headers=AUTH)
    assert moved.status_code == 200 and moved.json["version"] == 2 and moved.json["starts_at"] == "2031-03-02T14:00:00Z"
    rows = _rows(session_factory, booking["id"])
    reminders = [r for r in rows if r.event == "booking.reminder"]
    assert [r.status for r in reminders] == ["superseded", "pending"]
    assert reminders[1].available_at.isoformat() == "2031-03-02T13:00:00+00:00"
    rescheduled = next(r for r in rows if r.event == "booking.rescheduled")
    assert rescheduled.payload["booking"]["previous_starts_at"] == "2031-03-01T09:00:00Z"
    assert client.patch(f"/v1/bookings/{booking['id']}", json={"starts_at": "2031-03-02T15:00:00Z"},
                        headers=AUTH).status_code == 422


def test_readyz_reports_backlog_and_metrics_count_requests(client):
    client.post("/v1/bookings", json=booking_body(), headers=AUTH)
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json["checks"]["database"] == "ok"
    assert ready.json["checks"]["outbox"]["pending_due"] == 1
    metrics = client.get("/metrics").data.decode()
    assert 'booking_http_requests_total{method="POST",route="/v1/bookings",status="201"}' in metrics
    assert "booking_outbox_backlog 1.0" in metrics
