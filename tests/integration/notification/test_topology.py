"""The worker's topology declared on the real broker."""

from __future__ import annotations

import shared
from notification_service.broker import topology


def test_topology_declare_twice_is_idempotent(vhost_url):
    from kombu import Connection

    with Connection(vhost_url) as connection:
        topology.declare(connection)
        topology.declare(connection)
    from tests.notification.harness import queue_depth

    for q in shared.WORK_QUEUES:
        assert queue_depth(vhost_url, shared.dead_letter_queue(q)) == 0
