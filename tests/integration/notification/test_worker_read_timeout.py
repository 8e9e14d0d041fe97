"""A worker connection on a node that hangs: a publish waiting for its confirm gives up, it does not wait forever.

A proxy stands for a node that hangs (it takes what the client sends and answers
nothing). py-amqp waits for a publisher confirm without a timeout, and Celery
passes none; the workers' ``read_timeout`` (worker/app.py) bounds every such wait.
"""

from __future__ import annotations

import socket
import threading
import time

from kombu import Connection

from notification_service.worker.app import BROKER_READ_TIMEOUT_SECONDS, BROKER_TRANSPORT_OPTIONS
from tests.integration.booking.test_receipts_failover import HangingProxy
from tests.integration.booking.test_relay import _target, proxied_url


def test_a_confirmed_publish_on_a_hung_node_raises_a_connection_error_after_the_read_timeout(vhost_url):
    proxy = HangingProxy(*_target(vhost_url))
    proxy.restore()
    outcome: list[BaseException | None] = []

    def publish(channel) -> None:
        try:
            channel.basic_publish(channel.prepare_message(b"{}"), exchange="", routing_key="nowhere")
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread, which judges it
            outcome.append(exc)

    connection = Connection(proxied_url(vhost_url, proxy), transport_options=dict(BROKER_TRANSPORT_OPTIONS))
    try:
        channel = connection.channel()
        proxy.hang()
        started = time.monotonic()
        thread = threading.Thread(target=publish, args=(channel,), daemon=True)
        thread.start()
        thread.join(BROKER_READ_TIMEOUT_SECONDS + 10)
        assert outcome, "the publish still waits for a confirm from the hung node"
        assert isinstance(outcome[0], socket.timeout), outcome  # a connection error: kombu reconnects
        assert time.monotonic() - started >= BROKER_READ_TIMEOUT_SECONDS - 0.5
    finally:
        proxy.close()  # answers again (a publish still waiting gets its confirm), then the connection goes
        connection.collect()
