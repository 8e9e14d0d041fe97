"""AMQP_URL with several nodes (';'-separated): the relay and /readyz use whichever node answers."""

from __future__ import annotations

import urllib.parse

import pytest

from booking_service.api.app import create_app
from booking_service.relay.relay import Relay
from tests.booking.fixtures import AUTH, booking_body, drain


def _with_dead_node(url: str) -> str:
    """``url`` behind a node that refuses connections (port 1), in both orders across calls (shuffled)."""
    parts = urllib.parse.urlsplit(url)
    dead = urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:1"))
    return f"{dead};{url}"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_relay_publishes_through_the_node_that_answers(client, session_factory, bound_queue):
    url, channel, queue = bound_queue
    cluster = _with_dead_node(url)
    for _ in range(4):  # the nodes are tried in a random order: the dead one first, sometimes
        client.post("/v1/bookings", json=booking_body(), headers=AUTH)
        relay = Relay(session_factory, cluster)
        relay._connect()
        assert relay.publish_due() == 1
        relay._disconnect()
    assert len(drain(channel, queue)) == 4


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_readyz_reads_the_receipts_queue_through_any_node(settings, bound_queue):
    url, _channel, _queue = bound_queue
    app = create_app(settings.model_copy(update={"amqp_url": _with_dead_node(url)}))
    try:
        checks = app.test_client().get("/readyz").json["checks"]
        assert checks["broker"] == "ok"
        assert checks["receipts"]["queue"] == "missing"  # reached the live node: this vhost has no receipts queue
    finally:
        app.extensions["booking_engine"].dispose()
