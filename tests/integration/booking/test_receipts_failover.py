"""The receipts consumer on a cluster: when the node it consumes from hangs, it resumes on another node.

A hung node (SIGSTOPped, partitioned) closes nothing: its kernel still takes
the client's bytes, and nothing comes back. Only the client's heartbeat check
notices; with 3 s heartbeats pika gives the connection up 8 to ~15 s after the
node stopped, and the consumer reconnects to a node that answers.
"""

from __future__ import annotations

import threading
import time

import pytest

from booking_service.receipts.consumer import ReceiptConsumer
from booking_service.runtime.amqp import CONNECT_TIMEOUT_SECONDS, HEARTBEAT_SECONDS
from booking_service.storage.db import make_engine
from tests.integration.booking.test_receipts import new_booking, publish, receipt
from tests.integration.booking.test_relay import CuttableProxy, _target, proxied_url
from tests.notification.harness import declare_topology
from tests.support import wait_for


class _HeldRecv:
    """A socket whose ``recv`` holds what it read until ``gate`` is set."""

    def __init__(self, sock, gate: threading.Event) -> None:
        self.sock, self.gate = sock, gate

    def recv(self, size: int) -> bytes:
        data = self.sock.recv(size)
        self.gate.wait()
        return data

    def close(self) -> None:
        self.sock.close()


class HangingProxy(CuttableProxy):
    """A proxy to the broker that can hang like a stopped node: ``hang()`` forwards what the client
    sends (the broker keeps seeing its heartbeats) and holds everything the broker sends back."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.answering = threading.Event()
        self.answering.set()
        super().__init__(target_host, target_port)

    def _pipe(self, src, dst):
        try:
            from_broker = src.getpeername()[1] == self.target[1]
        except OSError:
            from_broker = False  # already closed: the pipe ends at once either way
        super()._pipe(_HeldRecv(src, self.answering) if from_broker else src, dst)

    def hang(self) -> None:
        self.answering.clear()

    def close(self) -> None:
        self.answering.set()
        super().close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_receipts_consumer_leaves_a_hung_node_and_resumes_on_another(settings, client, session_factory,
                                                                          vhost_url):
    broker = vhost_url
    declare_topology(broker)  # the notification service's topology declares booking.receipts
    node_a, node_b = HangingProxy(*_target(broker)), HangingProxy(*_target(broker))
    node_a.restore()  # node b refuses for now: the consumer starts on node a
    engine = make_engine(settings.database_url)
    consumer = ReceiptConsumer(engine, f"{proxied_url(broker, node_a)};{proxied_url(broker, node_b)}",
                               prefetch=10, max_backoff=0.5)
    thread = threading.Thread(target=consumer.run, daemon=True)
    try:
        thread.start()
        booking_id, nid = new_booking(client, session_factory)
        publish(broker, receipt(booking_id, nid, "email", 1, "sent", 1))
        wait_for(lambda: consumer.applied == 1, 20, "the first receipt, through node a")
        node_b.restore()
        node_a.hang()
        hung = time.monotonic()
        publish(broker, receipt(booking_id, nid, "push", 1, "sent", 1))
        wait_for(lambda: consumer.applied == 2, 40, "the second receipt, through node b")
        took = time.monotonic() - hung
    finally:
        consumer.stop()
        thread.join(10)
        node_a.close()
        node_b.close()
        engine.dispose()
    # pika's check: every heartbeat + 5 s, one interval without a byte; then at worst a handshake on node a.
    assert took < 2 * (HEARTBEAT_SECONDS + 5) + CONNECT_TIMEOUT_SECONDS + 2, f"resumed {took:.1f} s after the hang"
    assert consumer.failures == 0 and consumer.duplicates == 0
