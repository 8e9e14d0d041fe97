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


def test_declare_replaces_the_old_direct_exchange_and_keeps_the_queued_messages(vhost_url, management):
    """An installation from before the topic permissions: ``notifications`` is direct, a message waits."""
    import urllib.parse

    import pika
    from kombu import Connection

    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    channel = connection.channel()
    channel.exchange_declare(shared.EXCHANGE, "direct", durable=True)
    queue = topology.work_queues[0]
    channel.queue_declare(queue.name, durable=True, arguments=queue.queue_arguments)
    channel.queue_bind(queue.name, shared.EXCHANGE, queue.routing_key)
    channel.basic_publish(shared.EXCHANGE, queue.routing_key, b"{}", pika.BasicProperties(delivery_mode=2))
    connection.close()

    with Connection(vhost_url) as kombu_connection:
        topology.declare(kombu_connection)

    vhost = urllib.parse.unquote(urllib.parse.urlsplit(vhost_url).path[1:])
    quoted = urllib.parse.quote(vhost, safe="")
    found = management.get(f"{management.base}/exchanges/{quoted}/{shared.EXCHANGE}", timeout=10).json()
    assert found["type"] == "topic"
    from tests.notification.harness import queue_depth

    assert queue_depth(vhost_url, queue.name) == 1  # the waiting message survived the replacement
    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    channel = connection.channel()
    channel.confirm_delivery()
    # bound again: a mandatory publish to the queue's key is routed, not returned
    channel.basic_publish(shared.EXCHANGE, queue.routing_key, b"{}", pika.BasicProperties(delivery_mode=2),
                          mandatory=True)
    connection.close()
    assert queue_depth(vhost_url, queue.name) == 2
