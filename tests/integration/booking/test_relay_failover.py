"""The relay on a cluster: a nacked or unconfirmed window is not sent; the relay reconnects and sends it again.

A channel whose quorum queue leader died can nack every publish for minutes
while a new connection is acked at once, and a hung node answers nothing: in
both cases the relay must leave the connection, not wait on it.
"""

from __future__ import annotations

import functools
import json
import threading
import time

import pika
import pytest
import sqlalchemy as sa

import shared
from booking_service.relay.confirm_window import NACKED
from booking_service.relay.relay import Relay
from booking_service.runtime.amqp import CONNECT_TIMEOUT_SECONDS
from booking_service.storage.models import OutboxMessage
from tests import support
from tests.booking.fixtures import AUTH, booking_body, drain
from tests.integration.booking.test_relay import CuttableProxy, _target, proxied_url

wait_for = functools.partial(support.wait_for, timeout=20.0, interval=0.05)


class ConnectionRecordingRelay(Relay):
    """The relay, keeping every connection it made (to tell a reconnect from a retry on the same channel)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.connections: list[pika.BlockingConnection] = []

    def _connect(self, last: str = "") -> None:
        super()._connect(last)
        assert self.connection is not None
        self.connections.append(self.connection)


def rows(session_factory) -> list[OutboxMessage]:
    with session_factory() as s:
        return list(s.execute(sa.select(OutboxMessage).where(OutboxMessage.event == "booking.confirmed")
                              .order_by(OutboxMessage.id)).scalars())


def task_ids(messages) -> list[str]:
    return [json.loads(body)[1]["message"]["notification_id"] for _m, _p, body in messages]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_nacked_window_makes_the_relay_reconnect_and_send_the_rows_again(client, session_factory, bound_queue):
    url, channel, queue = bound_queue
    # A second queue on the dispatch key that takes nothing: the broker nacks every publish routed to it.
    channel.queue_declare("refusing", arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    # (the confirmation goes to the high dispatch lane)
    channel.queue_bind("refusing", shared.EXCHANGE, shared.lane_queue(shared.DISPATCH_QUEUE, shared.Lane.HIGH))
    relay = ConnectionRecordingRelay(session_factory, url, poll_seconds=0.05, max_backoff=0.5)
    thread = threading.Thread(target=relay.run, daemon=True)
    try:
        thread.start()
        assert client.post("/v1/bookings", json=booking_body(), headers=AUTH).status_code == 201
        wait_for(lambda: len(relay.connections) >= 3, what="a new connection after each nacked window")
        (row,) = rows(session_factory)
        assert row.status == "pending" and row.last_error == NACKED and row.attempts >= 2
        channel.queue_delete("refusing")  # the limit is lifted
        lifted = time.monotonic()
        wait_for(lambda: [r.status for r in rows(session_factory)] == ["published"])
        took = time.monotonic() - lifted
    finally:
        relay.stop()
        thread.join(10)
    # Not backed off like an unroutable row (30 s and more): out with the next reconnect.
    assert took < 5, f"published {took:.1f} s after the limit was lifted"
    assert len({id(c) for c in relay.connections}) == len(relay.connections)  # each window on a new connection
    (row,) = rows(session_factory)
    # Every copy the test queue got (the refusing queue nacked them, this one kept them) is the same task.
    assert set(task_ids(drain(channel, queue))) == {row.notification_id}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_node_that_stops_answering_is_left_once_the_confirms_are_overdue(client, session_factory, bound_queue):
    """Two nodes (two proxies to the broker): the one the relay is on hangs (bytes in, nothing out). The
    publish is not confirmed within the bound, the relay drops that connection without a closing handshake
    (which would wait for a heartbeat timeout) and publishes on the other node within seconds."""
    url, channel, queue = bound_queue
    node_a, node_b = CuttableProxy(*_target(url)), CuttableProxy(*_target(url))
    node_a.restore()  # node b refuses for now: the relay starts on node a
    cluster = f"{proxied_url(url, node_a)};{proxied_url(url, node_b)}"
    relay = ConnectionRecordingRelay(session_factory, cluster, poll_seconds=0.05, max_backoff=0.5,
                                     confirm_timeout=1.0)
    thread = threading.Thread(target=relay.run, daemon=True)
    try:
        thread.start()
        assert client.post("/v1/bookings", json=booking_body(), headers=AUTH).status_code == 201
        wait_for(lambda: [r.status for r in rows(session_factory)] == ["published"])
        node_b.restore()
        node_a.freeze()  # node a hangs
        hung = time.monotonic()
        assert client.post("/v1/bookings", json=booking_body(), headers=AUTH).status_code == 201
        wait_for(lambda: [r.status for r in rows(session_factory)] == ["published", "published"])
        took = time.monotonic() - hung
    finally:
        relay.stop()
        thread.join(10)
        node_a.close()
        node_b.close()
    # The bound, then at worst a handshake attempt on the hung node before node b, and the backoff.
    assert took < 1.0 + CONNECT_TIMEOUT_SECONDS + 2, f"published {took:.1f} s after the node hung"
    assert len(relay.connections) >= 2
    published = {r.notification_id for r in rows(session_factory)}
    arrived = task_ids(drain(channel, queue))  # node a's held copy may arrive when the proxy closes: same id
    assert set(arrived) == published
