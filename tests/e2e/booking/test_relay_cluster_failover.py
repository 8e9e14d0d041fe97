"""The relay on a three-node cluster: the node it publishes through is killed; every row goes out within seconds."""

from __future__ import annotations

import json
import threading
import time

import pika
import pytest
import sqlalchemy as sa

import shared
from booking_service.relay.relay import Relay
from booking_service.storage.models import OutboxMessage
from tests.booking.fixtures import AUTH, booking_body, client, session_factory, settings  # noqa: F401 - fixtures
from tests.notification.harness import declare_topology
from tests.private_cluster import PrivateCluster, private_cluster  # noqa: F401 - the fixture
from tests.support import wait_for

pytestmark = pytest.mark.private_broker

ROWS_EACH = 20


def published(session_factory) -> int:  # noqa: F811 - the fixture's value
    with session_factory() as s:
        return s.execute(sa.select(sa.func.count()).select_from(OutboxMessage)
                         .where(OutboxMessage.status == "published")).scalar_one()


def book(client, count: int) -> None:  # noqa: F811 - the fixture's value
    for _ in range(count):
        assert client.post("/v1/bookings", json=booking_body(), headers=AUTH).status_code == 201


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_relay_publishes_every_row_within_seconds_when_its_node_is_killed(private_cluster, client,  # noqa: F811
                                                                              session_factory):  # noqa: F811
    cluster: PrivateCluster = private_cluster
    declare_topology(cluster.url)  # quorum queues, members on all three nodes
    relay = Relay(session_factory, cluster.url, poll_seconds=0.05, max_backoff=0.5)
    thread = threading.Thread(target=relay.run, daemon=True)
    try:
        thread.start()
        book(client, ROWS_EACH)
        wait_for(lambda: published(session_factory) == ROWS_EACH, 30, "the first rows")
        assert relay.connection is not None
        port = relay.connection._impl.params.port  # which node the relay is on (test only: pika keeps it private)
        (node,) = [n for n in cluster.nodes if n.port == port]
        node.kill()
        killed = time.monotonic()
        book(client, ROWS_EACH)
        try:
            wait_for(lambda: published(session_factory) == 2 * ROWS_EACH, 30, "every row after the kill")
        except AssertionError:
            with session_factory() as s:
                states = s.execute(sa.select(OutboxMessage.status, OutboxMessage.locked_until.is_not(None),
                                             OutboxMessage.attempts, OutboxMessage.last_error)).all()
            raise AssertionError(f"rows (status, leased, attempts, error): {sorted(map(tuple, states))}") from None
        took = time.monotonic() - killed
    finally:
        relay.stop()
        thread.join(10)
    assert took < 5, f"the last row was published {took:.1f} s after the kill"
    live = next(n for n in cluster.nodes if n is not node)
    connection = pika.BlockingConnection(live.pika_parameters())
    try:
        channel = connection.channel()
        ids = set()
        while (got := channel.basic_get(shared.DISPATCH_QUEUE, auto_ack=True))[0] is not None:
            ids.add(json.loads(got[2])[1]["message"]["notification_id"])
    finally:
        connection.close()
    with session_factory() as s:
        expected = set(s.execute(sa.select(OutboxMessage.notification_id)
                                 .where(OutboxMessage.status == "published")).scalars())
    assert ids == expected and len(ids) == 2 * ROWS_EACH  # none lost; copies, if any, carry the same id
