"""Edges: the error shape for every status, readiness while a dependency is down,
reminders that are never due, and outbox rows the relay must not send."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

import shared
from booking_service.api.app import create_app
from booking_service.relay.relay import Relay
from booking_service.settings import Settings
from booking_service.storage.models import OutboxMessage
from tests.booking.fixtures import AUTH, booking_body, drain


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_error_shape(response, code: int) -> dict:
    assert response.status_code == code
    assert response.is_json, response.data
    error = response.json["error"]
    assert error["code"] == code and error["message"] and error["request_id"] == response.headers["X-Request-ID"]
    return error


def test_unknown_route_wrong_method_and_crash_share_the_json_error_shape(client, app):
    assert_error_shape(client.get("/v1/nowhere", headers=AUTH), 404)
    assert_error_shape(client.get("/v1/bookings/not-a-uuid", headers=AUTH), 404)
    assert_error_shape(client.delete("/v1/bookings", headers=AUTH), 405)
    # Break the schema under the running app: the unexpected error is a JSON 500 that leaks nothing.
    with app.extensions["booking_engine"].begin() as conn:
        conn.execute(sa.text("ALTER TABLE bookings RENAME TO bookings_gone"))
    error = assert_error_shape(client.get("/v1/bookings", headers=AUTH), 500)
    assert "bookings" not in error["message"] and "details" not in error


def test_readyz_is_503_when_the_database_is_down(amqp_url):
    dead_db = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/nowhere"
    app = create_app(Settings(database_url=dead_db, amqp_url=amqp_url, api_keys=("k",)))
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["status"] == "unavailable" and response.json["checks"]["database"].startswith("error")
    assert app.test_client().get("/healthz").status_code == 200  # alive, just not ready


@pytest.mark.rabbitmq  # compares with the real broker's /readyz
def test_readyz_stays_200_but_degraded_when_the_broker_is_away(settings, client):
    """Bookings are still accepted while the broker is away: they wait in the outbox."""
    away = Settings(**{**settings.__dict__, "amqp_url": f"amqp://guest:guest@127.0.0.1:{closed_port()}//"})
    app = create_app(away)
    try:
        api = app.test_client()
        assert api.post("/v1/bookings", json=booking_body(), headers=AUTH).status_code == 201
        ready = api.get("/readyz")
        assert ready.status_code == 200
        assert ready.json["status"] == "degraded" and ready.json["checks"]["broker"] == "unreachable"
        assert ready.json["checks"]["outbox"]["pending_due"] == 1
        # The same database and the real broker: reachable. (Its status also says whether a receipts
        # consumer is attached, which on the shared broker depends on what else runs there.)
        assert client.get("/readyz").json["checks"]["broker"] == "ok"
    finally:
        app.extensions["booking_engine"].dispose()


def test_no_reminder_when_its_moment_has_already_passed(client, session_factory):
    # The lead is 1 h in these tests; a booking starting in 30 minutes gets no reminder.
    start = datetime.now(UTC) + timedelta(minutes=30)
    booking = client.post("/v1/bookings", json=booking_body(start=start), headers=AUTH).json
    with session_factory() as s:
        events = s.execute(
            sa.select(OutboxMessage.event).where(OutboxMessage.booking_id == booking["id"])).scalars().all()
    assert events == ["booking.confirmed"]


def test_invalid_and_expired_rows_are_never_sent_and_never_block_the_others(client, session_factory, bound_queue):
    url, channel, queue = bound_queue
    ids = [client.post("/v1/bookings", json=booking_body(), headers=AUTH).json["id"] for _ in range(3)]
    broken_id, expired_id, good_id = ids
    past = datetime.now(UTC) - timedelta(minutes=1)
    with session_factory() as s, s.begin():
        rows = {r.booking_id: r for r in s.execute(
            sa.select(OutboxMessage).where(OutboxMessage.event == "booking.confirmed")).scalars()}
        broken = dict(rows[broken_id].payload)
        broken["recipient"] = {**broken["recipient"], "email": "not-an-address"}
        rows[broken_id].payload = broken
        rows[broken_id].priority = 9  # claimed first: it must not stop the batch
        rows[expired_id].expires_at = past
    relay = Relay(session_factory, url)
    relay._connect()
    try:
        assert relay.publish_due() == 1
        assert relay.publish_due() == 0  # nothing left to retry
    finally:
        relay._disconnect()
    sent = [json.loads(body)[1]["message"]["booking"]["id"] for _m, _p, body in drain(channel, queue)]
    assert sent == [good_id]
    with session_factory() as s:
        by_booking = {r.booking_id: r for r in s.execute(
            sa.select(OutboxMessage).where(OutboxMessage.event == "booking.confirmed")).scalars()}
    assert by_booking[broken_id].status == "invalid" and "email" in by_booking[broken_id].last_error
    assert by_booking[expired_id].status == "expired"
    assert by_booking[good_id].status == "published"


def test_cancel_and_reschedule_reach_the_queue_with_the_bumped_version(client, session_factory, bound_queue):
    url, channel, queue = bound_queue
    first = client.post("/v1/bookings", json=booking_body(), headers=AUTH).json
    second = client.post("/v1/bookings", json=booking_body(), headers=AUTH).json
    client.post(f"/v1/bookings/{first['id']}/cancel", headers={**AUTH, "X-Request-ID": "req-cancel"})
    client.patch(f"/v1/bookings/{second['id']}", json={"starts_at": "2031-05-01T09:00:00Z",
                                                        "ends_at": "2031-05-01T10:00:00Z"}, headers=AUTH)
    relay = Relay(session_factory, url)
    relay._connect()
    try:
        assert relay.publish_due() == 4
    finally:
        relay._disconnect()
    messages = [(p, json.loads(b)[1]["message"]) for _m, p, b in drain(channel, queue)]
    versions = {(m["booking"]["id"], m["event"]): m["booking"]["version"] for _p, m in messages}
    assert versions == {(first["id"], "booking.confirmed"): 1, (first["id"], "booking.cancelled"): 2,
                        (second["id"], "booking.confirmed"): 1, (second["id"], "booking.rescheduled"): 2}
    cancelled = next((p, m) for p, m in messages if m["event"] == "booking.cancelled")
    assert cancelled[1]["correlation_id"] == cancelled[0].headers["x-correlation-id"] == "req-cancel"
    assert cancelled[0].priority == shared.Priority.from_name(cancelled[1]["priority"]).value


def test_relay_keeps_going_while_the_database_is_away_and_stops_on_request(bound_queue):
    import threading

    from booking_service.storage.db import make_engine, make_session_factory

    url, _channel, _queue = bound_queue
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/nowhere")
    relay = Relay(make_session_factory(engine), url, poll_seconds=0.01, max_backoff=0.05)
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    try:
        deadline = datetime.now(UTC) + timedelta(seconds=20)
        while relay.stats.failed < 3 and datetime.now(UTC) < deadline:
            thread.join(0.05)
        assert relay.stats.failed >= 3 and thread.is_alive()
        assert relay.connection is not None and relay.connection.is_open  # the broker side stayed up
    finally:
        relay.stop()
        thread.join(10)
        engine.dispose()
    assert not thread.is_alive()


def test_a_booking_succeeds_when_its_pooled_postgresql_connection_was_closed_by_the_server(postgres_url, amqp_url):
    from booking_service.storage.migrate import upgrade

    upgrade(postgres_url)
    app = create_app(Settings(database_url=postgres_url, amqp_url=amqp_url, api_keys=("k",)))
    client = app.test_client()
    headers = {"Authorization": "Bearer k"}
    try:
        assert client.post("/v1/bookings", json=booking_body(), headers=headers).status_code == 201
        admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:  # a server restart or an idle timeout, as the pool sees it
            killed = conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                          "WHERE datname = current_database() AND pid <> pg_backend_pid()")).all()
        admin.dispose()
        assert killed
        response = client.post("/v1/bookings", json=booking_body(), headers=headers)
        assert response.status_code == 201, response.json
        assert client.get(response.headers["Location"], headers=headers).status_code == 200
    finally:
        app.extensions["booking_engine"].dispose()
