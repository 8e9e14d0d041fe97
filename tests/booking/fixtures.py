"""Booking-service fixtures: a migrated database, the app, and a broker queue bound like the workers' one.

Imported by the conftest.py of each tier's booking folder.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pika
import pytest

import shared
from booking_service.api.app import create_app
from booking_service.settings import Settings
from booking_service.storage.db import make_engine, make_session_factory
from booking_service.storage.migrate import upgrade

API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def booking_body(resource: str | None = None, start: datetime | None = None, hours: int = 1, **customer) -> dict:
    start = start or datetime(2031, 3, 1, 9, 0, tzinfo=UTC)
    return {
        "resource_id": resource or f"room-{uuid.uuid4().hex[:8]}",
        "starts_at": iso(start),
        "ends_at": iso(start + timedelta(hours=hours)),
        "customer": {"name": "Grace Hopper", "email": "grace@example.org", "locale": "en",
                     "timezone": "America/New_York", "push_tokens": ["tok-1"], **customer},
    }


#: The AMQP URL of a test that never publishes: port 1 refuses at once, so /readyz reports the broker away.
UNUSED_AMQP_URL = "amqp://guest:guest@127.0.0.1:1//"


@pytest.fixture
def settings(request, database_url):
    """The app's settings; the real broker only for a test marked ``rabbitmq`` (one that reads /readyz's broker
    check) or one that asks for a broker fixture itself: the others run where no RabbitMQ is."""
    needs_broker = request.node.get_closest_marker("rabbitmq") is not None
    amqp_url = request.getfixturevalue("amqp_url") if needs_broker else UNUSED_AMQP_URL
    upgrade(database_url)
    return Settings(database_url=database_url, amqp_url=amqp_url, api_keys=(API_KEY, "other-key"),
                    reminder_lead_seconds=3600, relay_poll_seconds=0.05)


@pytest.fixture
def app(settings):
    app = create_app(settings)
    yield app
    app.extensions["booking_engine"].dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def session_factory(settings):
    engine = make_engine(settings.database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def bound_queue(vhost_url):
    """In a fresh vhost: the exchange as the workers declare it, and a test queue on the dispatch key."""
    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    channel = connection.channel()
    channel.exchange_declare(shared.EXCHANGE, "topic", durable=True)
    queue = channel.queue_declare("test.dispatch", durable=True).method.queue
    for lane in shared.Lane:  # the relay publishes to the dispatch lane of each row's priority
        channel.queue_bind(queue, shared.EXCHANGE, shared.lane_queue(shared.DISPATCH_QUEUE, lane))
    yield vhost_url, channel, queue
    connection.close()


def drain(channel, queue: str) -> list[tuple]:
    """Every message on ``queue`` as (method, properties, body), acked."""
    messages = []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return messages
        messages.append((method, properties, body))
