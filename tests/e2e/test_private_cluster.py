"""Self-test of ``tests/private_cluster.py``: three clustered RabbitMQ nodes of one's own.

The cluster is booted once per session (~20 s); each test gets it healed, so
a test may kill or pause nodes and leave them so. The shared development node
(``rabbit@localhost``, its epmd on 4369) must never see any of it.
"""

from __future__ import annotations

import subprocess

import pika
import pika.exceptions
import pytest
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from tests.private_cluster import PrivateCluster, private_cluster  # noqa: F401 - the fixture
from tests.support import wait_for

pytestmark = pytest.mark.private_broker

MESSAGES = 200


def _connect(node, **overrides) -> pika.BlockingConnection:
    return pika.BlockingConnection(node.pika_parameters(**overrides))


def test_three_private_nodes_form_one_cluster_unseen_by_the_shared_epmd(private_cluster, unique):  # noqa: F811
    cluster: PrivateCluster = private_cluster
    names = {node.node_name for node in cluster.nodes}
    assert len(names) == 3
    assert cluster.running_nodes() == names
    assert cluster.url == ";".join(f"amqp://guest:guest@127.0.0.1:{node.port}//" for node in cluster.nodes)
    ports = [port for node in cluster.nodes for port in node.ports] + [cluster.epmd_port]
    assert len(set(ports)) == len(ports)
    assert not {4369, 5672, 15672, 25672} & set(ports)

    # What one node declares, the others know: they share one Mnesia schema.
    connection = _connect(cluster.nodes[0])
    connection.channel().queue_declare(f"shared-{unique}", durable=True)
    connection.close()
    for node in cluster.nodes[1:]:
        connection = _connect(node)
        connection.channel().queue_declare(f"shared-{unique}", passive=True)
        connection.close()

    # The nodes registered with the private epmd only, never with the machine's one on 4369.
    private = subprocess.run([cluster.epmd, "-port", str(cluster.epmd_port), "-names"], capture_output=True, text=True)
    shared = subprocess.run([cluster.epmd, "-port", "4369", "-names"], capture_output=True, text=True)
    short_names = {name.split("@")[0] for name in names}
    assert all(f"name {short} " in private.stdout for short in short_names), private.stdout
    assert not any(short in shared.stdout for short in short_names), shared.stdout


def test_quorum_queue_keeps_200_confirmed_messages_when_its_leaders_node_is_killed(private_cluster, unique):  # noqa: F811
    cluster: PrivateCluster = private_cluster
    queue = f"quorum-{unique}"
    connection = _connect(cluster.nodes[0])
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    for i in range(MESSAGES):
        # With confirms on, basic_publish raises unless a quorum of the members has the message.
        channel.basic_publish(
            "", queue, f"m-{i}".encode(), pika.BasicProperties(delivery_mode=2, message_id=f"m-{i}"), mandatory=True
        )
    connection.close()
    assert set(cluster.api(f"queues/%2F/{queue}")["members"]) == {node.node_name for node in cluster.nodes}

    leader = cluster.leader_of(queue)
    leader.kill()
    assert not leader.running and leader.pids() == []

    reader = next(node for node in cluster.nodes if node is not leader)
    received: set[str] = set()

    def drained() -> bool:
        # Until the two survivors elect a new leader the queue may refuse us: reconnect and go on.
        try:
            connection = _connect(reader)
            try:
                channel = connection.channel()
                while len(received) < MESSAGES:
                    method, properties, _ = channel.basic_get(queue)
                    if method is None:
                        break
                    received.add(properties.message_id)
                    channel.basic_ack(method.delivery_tag)
            finally:
                if connection.is_open:
                    connection.close()
        except pika.exceptions.AMQPError:
            return False
        return len(received) == MESSAGES

    wait_for(drained, timeout=45, what=f"all {MESSAGES} messages read from {reader.node_name}", interval=0.5)
    assert received == {f"m-{i}" for i in range(MESSAGES)}
    assert cluster.leader_of(queue) is not leader

    leader.start()  # same ports, same data: it rejoins as a member of the queue
    cluster.await_healthy(timeout=45)
    assert cluster.running_nodes() == {node.node_name for node in cluster.nodes}


def test_paused_node_answers_nothing_then_resumes_in_its_cluster(private_cluster, unique):  # noqa: F811
    cluster: PrivateCluster = private_cluster
    paused, other = cluster.nodes[2], cluster.nodes[0]
    queue = f"classic-{unique}"
    # Declare before the pause: a declaration is a Mnesia transaction that would wait for
    # the hung node until the others give it up (net_ticktime, a minute). A publish does not.
    connection = _connect(other)
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare(queue, durable=True)
    paused.pause()
    try:
        with pytest.raises(AMQPConnectorException):  # TCP connects (the kernel accepts), the handshake hangs
            _connect(paused, socket_timeout=2, stack_timeout=3)
        channel.basic_publish("", queue, b"while paused", mandatory=True)  # the others still serve
    finally:
        paused.resume()
        connection.close()

    cluster.await_healthy(timeout=45)
    connection = _connect(paused)
    assert connection.channel().queue_declare(queue, passive=True).method.message_count == 1
    connection.close()
