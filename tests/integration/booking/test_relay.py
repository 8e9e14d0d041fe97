"""The relay against the real broker: wire format, outage, unroutable, two relays at once."""

from __future__ import annotations

import contextlib
import functools
import json
import pathlib
import socket
import threading
import urllib.parse
from datetime import UTC, datetime, timedelta

import jsonschema
import pika
import pytest
import sqlalchemy as sa

import shared
from booking_service.relay.relay import Relay
from booking_service.storage.models import OutboxMessage
from tests import support
from tests.booking.fixtures import AUTH, booking_body, drain

SCHEMA = json.loads(
    (pathlib.Path(shared.__file__).parent / "schemas" / "notification.requested.v1.schema.json").read_text()
)


# The relay polls every 0.05 s in these tests: look as often, and give up after 20 s.
wait_for = functools.partial(support.wait_for, timeout=20.0, interval=0.05)


def statuses(session_factory) -> dict[str, str]:
    with session_factory() as s:
        return {r.notification_id: r.status for r in s.execute(sa.select(OutboxMessage)).scalars()}


def test_booking_over_http_produces_exactly_one_celery_v2_message(client, session_factory, bound_queue):
    url, channel, queue = bound_queue
    booking = client.post("/v1/bookings", json=booking_body(), headers={**AUTH, "X-Request-ID": "req-wire"}).json
    relay = Relay(session_factory, url)
    relay._connect()
    assert relay.publish_due() == 1  # the confirmation; the reminder is not due yet
    relay._disconnect()

    messages = drain(channel, queue)
    assert len(messages) == 1
    method, props, body = messages[0]
    assert method.routing_key == "notifications.dispatch.high"  # the lane of its priority
    headers = props.headers
    with session_factory() as s:
        row = s.execute(sa.select(OutboxMessage).where(OutboxMessage.event == "booking.confirmed")).scalar_one()
    assert row.status == "published" and row.published_at is not None
    assert headers["task"] == "notifications.dispatch" and headers["id"] == row.notification_id
    assert headers["lang"] == "py" and headers["root_id"] == row.notification_id and headers["parent_id"] is None
    assert headers["retries"] == 0 and headers["timelimit"] == [120, 100] and headers["eta"] is None
    assert headers["x-correlation-id"] == "req-wire"
    assert "grace" not in headers["kwargsrepr"].lower() and booking["id"] in headers["kwargsrepr"]
    assert props.content_type == "application/json" and props.content_encoding == "utf-8"
    assert props.delivery_mode == 2 and props.priority == shared.Priority.HIGH
    args, kwargs, embed = json.loads(body)
    assert args == [] and embed == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    message = kwargs["message"]
    jsonschema.validate(message, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert message["notification_id"] == row.notification_id and message["booking"]["id"] == booking["id"]
    assert message["event"] == "booking.confirmed" and message["correlation_id"] == "req-wire"


def test_reminder_carries_expires_and_low_priority(client, session_factory, bound_queue):
    url, channel, queue = bound_queue
    # The lead is 1 h in these tests: this reminder falls due in 10 minutes, and expires at the start.
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1, minutes=10)
    client.post("/v1/bookings", json=booking_body(start=start), headers=AUTH)
    relay = Relay(session_factory, url)
    relay._connect()
    assert relay.publish_due() == 1  # the confirmation only: the reminder is not due yet
    with session_factory() as s, s.begin():  # the 10 minutes pass: the reminder falls due
        s.execute(sa.update(OutboxMessage).where(OutboxMessage.event == "booking.reminder")
                  .values(available_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert relay.publish_due() == 1
    relay._disconnect()
    drained = drain(channel, queue)
    by_event = {json.loads(b)[1]["message"]["event"]: p for _m, p, b in drained}
    lanes = {json.loads(b)[1]["message"]["event"]: m.routing_key for m, _p, b in drained}
    reminder = by_event["booking.reminder"]
    assert reminder.priority == shared.Priority.LOW < by_event["booking.confirmed"].priority
    # A confirmation never waits behind reminders: each goes to the dispatch lane of its priority.
    assert lanes == {"booking.reminder": "notifications.dispatch.low",
                     "booking.confirmed": "notifications.dispatch.high"}
    assert datetime.fromisoformat(reminder.headers["expires"]) == start


def test_unroutable_message_is_not_marked_published(client, session_factory, vhost_url):
    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    connection.channel().exchange_declare(shared.EXCHANGE, "topic", durable=True)  # no queue bound
    connection.close()
    client.post("/v1/bookings", json=booking_body(), headers=AUTH)
    relay = Relay(session_factory, vhost_url)
    relay._connect()
    assert relay.publish_due() == 0
    relay._disconnect()
    with session_factory() as s:
        row = s.execute(sa.select(OutboxMessage).where(OutboxMessage.event == "booking.confirmed")).scalar_one()
    assert row.status == "pending" and "unroutable" in row.last_error
    assert row.available_at > datetime.now(UTC)


class CuttableProxy:
    """A TCP proxy to the broker that the test can cut and restore, like a network outage."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.up = threading.Event()
        self.flowing = threading.Event()  # cleared: bytes are held, like a stalled broker
        self.flowing.set()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src, dst):
        try:
            while data := src.recv(65536):
                self.flowing.wait()
                dst.sendall(data)
        except OSError:
            pass  # the other direction closed the pair; nothing left to forward
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):  # already closed by the other pipe thread
                    s.close()

    def cut(self):
        self.up.clear()
        with self.lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):  # already gone
                    s.shutdown(socket.SHUT_RDWR)
            self.sockets.clear()

    def restore(self):
        self.up.set()

    def freeze(self):
        self.flowing.clear()

    def thaw(self):
        self.flowing.set()

    def close(self):
        self.thaw()
        self.cut()
        self.server.close()


def test_bookings_succeed_while_broker_is_away_and_none_is_lost_when_it_returns(client, session_factory, bound_queue):
    """At-least-once across a cut: a confirm lost with the connection makes a second copy
    legitimate, so what is promised is no row lost, every row published, and copies
    that carry the same task id (the workers' dedupe key)."""
    url, channel, queue = bound_queue
    proxy = CuttableProxy(*_target(url))
    relay = Relay(session_factory, proxied_url(url, proxy), poll_seconds=0.05, max_backoff=0.5)
    thread = threading.Thread(target=relay.run, daemon=True)
    try:
        proxy.restore()
        thread.start()
        first = client.post("/v1/bookings", json=booking_body(), headers=AUTH)
        assert first.status_code == 201
        wait_for(lambda: len(drain_into(channel, queue, seen)) >= 1)
        proxy.cut()  # the broker goes away mid-connection
        during = [client.post("/v1/bookings", json=booking_body(), headers=AUTH) for _ in range(5)]
        assert [r.status_code for r in during] == [201] * 5
        wait_for(lambda: relay.stats.failed >= 1)  # the relay noticed and keeps trying
        proxy.restore()
        wait_for(lambda: len({task_id(b) for b in drain_into(channel, queue, seen)}) >= 6)
        wait_for(lambda: list(statuses(session_factory).values()).count("published") == 6)
    finally:
        relay.stop()
        thread.join(10)
        proxy.close()
    drain_into(channel, queue, seen)
    confirmed = {k for k, v in statuses(session_factory).items() if v == "published"}
    assert {task_id(b) for b in seen} == confirmed and len(confirmed) == 6
    for body in seen:  # a second copy, if any, is the same task: same id in the header and the payload
        assert json.loads(body)[1]["message"]["notification_id"] in confirmed


def test_relay_publishes_within_seconds_after_a_long_broker_outage(client, session_factory, bound_queue):
    """The reconnect backoff is capped at a few seconds: after an outage long enough
    that an uncapped exponential backoff would sleep tens of seconds, the relay
    publishes soon after the broker answers again (waited for on the message itself;
    the deadline is a last resort, well above the 1 s cap)."""
    url, channel, queue = bound_queue
    proxy = CuttableProxy(*_target(url))
    relay = Relay(session_factory, proxied_url(url, proxy), poll_seconds=0.05)  # default cap: 1 s
    thread = threading.Thread(target=relay.run, daemon=True)
    try:
        thread.start()  # the proxy refuses connections: the broker is away from the start
        wait_for(lambda: relay.stats.failed >= 6, timeout=60)  # 6 refusals: uncapped, the next wait would be ~16 s
        assert client.post("/v1/bookings", json=booking_body(), headers=AUTH).status_code == 201
        proxy.restore()
        arrived = support.wait_for(lambda: drain(channel, queue), timeout=15, interval=0.05,
                                   what="the confirmation published after the broker came back")
    finally:
        relay.stop()
        thread.join(10)
        proxy.close()
    assert [json.loads(b)[1]["message"]["event"] for _m, _p, b in arrived] == ["booking.confirmed"]


def _target(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname, parts.port or 5672


def task_id(body: bytes) -> str:
    return json.loads(body)[1]["message"]["notification_id"]


def proxied_url(url: str, proxy: CuttableProxy) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}",
                                    parts.path, "", ""))


def test_a_stalled_broker_never_holds_up_bookings(client, session_factory, bound_queue):
    """The relay waits for the broker's confirm outside any transaction: a booking
    made meanwhile commits at once (on SQLite a held write lock would stall it)."""
    url, channel, queue = bound_queue
    proxy = CuttableProxy(*_target(url))
    proxy.restore()
    relay = Relay(session_factory, proxied_url(url, proxy))
    relay._connect()
    assert client.post("/v1/bookings", json=booking_body(), headers=AUTH).status_code == 201
    results: list[int] = []
    publishing = threading.Thread(target=lambda: results.append(relay.publish_due()), daemon=True)
    try:
        proxy.freeze()
        publishing.start()

        def leased():
            with session_factory() as s:
                return s.execute(sa.select(OutboxMessage.locked_until).where(
                    OutboxMessage.event == "booking.confirmed")).scalar_one() is not None

        wait_for(leased)  # the relay is now waiting for the broker
        during = client.post("/v1/bookings", json=booking_body(), headers=AUTH)
        assert during.status_code == 201
        assert publishing.is_alive(), "the booking committed while the publish was still unconfirmed"
    finally:
        proxy.thaw()
        publishing.join(30)
        relay._disconnect()
        proxy.close()
    assert results == [1]
    assert len(drain(channel, queue)) == 1
    with session_factory() as s:
        rows = s.execute(sa.select(OutboxMessage).where(OutboxMessage.event == "booking.confirmed")
                         .order_by(OutboxMessage.id)).scalars().all()
    assert [(r.status, r.locked_until) for r in rows] == [("published", None), ("pending", None)]


seen: list[bytes] = []


@pytest.fixture(autouse=True)
def _reset_seen():
    seen.clear()


def drain_into(channel, queue, into: list) -> list:
    into.extend(body for _m, _p, body in drain(channel, queue))
    return into


def _leased(session_factory) -> int:
    with session_factory() as s:
        return s.execute(sa.select(sa.func.count()).select_from(OutboxMessage).where(
            OutboxMessage.status == "pending", OutboxMessage.locked_until.is_not(None))).scalar_one()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_relays_on_postgresql_publish_each_row_once(client, session_factory, bound_queue):
    """Relay A leases a batch and waits on a stalled broker link; relay B must skip
    A's leased rows and publish all the others; then A's confirms arrive. Both take
    a share by construction, and no row goes out twice."""
    url, channel, queue = bound_queue
    for i in range(40):
        start = datetime(2032, 1, 1, tzinfo=UTC) + timedelta(hours=i)
        assert client.post("/v1/bookings", json=booking_body(resource="room-r", start=start),
                           headers=AUTH).status_code == 201
    proxy = CuttableProxy(*_target(url))
    proxy.restore()
    relay_a = Relay(session_factory, proxied_url(url, proxy), poll_seconds=0.01, batch_size=2)
    relay_b = Relay(session_factory, url, poll_seconds=0.01, batch_size=2)
    relay_a._connect()
    threads = [threading.Thread(target=r.run, daemon=True) for r in (relay_a, relay_b)]
    try:
        proxy.freeze()
        threads[0].start()
        wait_for(lambda: _leased(session_factory) == 2)  # A holds its batch, unconfirmed
        threads[1].start()
        wait_for(lambda: list(statuses(session_factory).values()).count("published") == 38)  # B took all the rest
        assert _leased(session_factory) == 2 and relay_a.stats.published == 0
        proxy.thaw()
        wait_for(lambda: list(statuses(session_factory).values()).count("published") == 40)
    finally:
        proxy.thaw()
        for r in (relay_a, relay_b):
            r.stop()
        for t in threads:
            if t.ident is not None:  # started
                t.join(10)
        proxy.close()
    drain_into(channel, queue, seen)  # the relays are stopped: every confirmed message is on the queue
    ids = [json.loads(b)[1]["message"]["notification_id"] for b in seen]
    assert len(ids) == 40 and len(set(ids)) == 40
    assert (relay_a.stats.published, relay_b.stats.published) == (2, 38)


def test_relay_understands_the_celery_style_default_vhost_url(session_factory, amqp_url):
    """``amqp://…//`` is vhost "/" for Celery; pika needs "%2F" or the broker refuses the connection."""
    assert amqp_url.endswith("//") or pytest.skip("AMQP_URL names a vhost of its own")
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url.rstrip("/") + "/%2F"))
    connection.channel().exchange_declare(shared.EXCHANGE, "topic", durable=True)  # as the topology declares it
    connection.close()
    relay = Relay(session_factory, amqp_url)
    relay._connect()
    assert relay.channel.is_open
    relay._disconnect()
