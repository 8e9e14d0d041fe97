"""Self-test of ``tests/private_broker.py``: a RabbitMQ node of one's own that may be SIGKILLed.

The shared development node (``rabbit@localhost``) must come out of all this
exactly as it went in.
"""

from __future__ import annotations

import os
import urllib.parse

import pika
import pytest

from tests.private_broker import (
    PrivateBroker,
    _proc_table,
    find_rabbitmq_server,
    private_broker,  # noqa: F401 - the fixture
)
from tests.support import wait_for

MANAGEMENT_URL = os.environ.get("RABBITMQ_MANAGEMENT_URL", "http://guest:guest@localhost:15672")


def _listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket ``pid`` listens on (Linux /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]  # noqa: SIM115
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A = LISTEN
                address, port = local.split(":")
                if len(address) == 8:
                    address = ".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0))
                found.add((address, int(port, 16)))
    return found


def test_persistent_message_survives_sigkill_and_restart(private_broker):  # noqa: F811
    broker = private_broker
    assert broker.url == f"amqp://guest:guest@127.0.0.1:{broker.port}//"

    if os.path.isdir("/proc/self"):  # only the AMQP and distribution listeners, both on loopback
        assert _listening_sockets(broker.pid) == {("127.0.0.1", broker.port), ("127.0.0.1", broker.dist_port)}

    connection = pika.BlockingConnection(broker.pika_parameters())
    # The default cluster name is the node's own name (with the host's FQDN): we reached our node.
    assert connection._impl.server_properties["cluster_name"].startswith(broker.node_name.split("@")[0] + "@")
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare("survivor", durable=True)
    # With confirms on, basic_publish raises unless the broker confirmed (and mandatory: routed) it.
    channel.basic_publish(
        "",
        "survivor",
        b"still here",
        pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, message_id="m-1"),
        mandatory=True,
    )
    connection.close()

    beam, port = broker.pid, broker.port
    broker.kill()
    assert not broker.running
    assert broker.pids() == []
    assert beam not in _proc_table()
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(broker.pika_parameters())

    broker.restart()
    assert broker.port == port
    assert broker.pid != beam

    connection = pika.BlockingConnection(broker.pika_parameters())
    # Under load, RabbitMQ 3.10.8 once answered AMQP here while the durable queue was not yet
    # back (404 NOT_FOUND; races of this kind: rabbitmq-server#4563): wait for the queue itself.
    channel = wait_for(lambda: _with_queue(connection, "survivor"), timeout=60, what="the durable queue back")
    method, properties, body = channel.basic_get("survivor", auto_ack=True)
    assert method is not None, "the persistent message did not survive kill -9"
    assert body == b"still here"
    assert properties.message_id == "m-1"
    assert properties.delivery_mode == 2
    assert channel.queue_declare("survivor", durable=True, passive=True).method.message_count == 0
    connection.close()


def _with_queue(connection: pika.BlockingConnection, queue: str):
    """A channel on which ``queue`` exists, or None (a failed passive declare closes its channel)."""
    channel = connection.channel()
    try:
        channel.queue_declare(queue, durable=True, passive=True)
    except pika.exceptions.ChannelClosedByBroker:
        return None
    return channel


def _pika_parameters(kombu_url: str) -> pika.URLParameters:
    parts = urllib.parse.urlsplit(kombu_url)
    path = "/%2F" if parts.path in ("", "/", "//") else parts.path
    return pika.URLParameters(urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", "")))


def _shared_node_state(amqp_url: str) -> dict:
    """What the shared node says about itself over AMQP and, when it answers, the management API."""
    connection = pika.BlockingConnection(_pika_parameters(amqp_url))
    state = {"cluster_name": connection._impl.server_properties["cluster_name"]}
    connection.close()
    try:
        import requests

        parts = urllib.parse.urlsplit(MANAGEMENT_URL)
        base = f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}/api"
        auth = (urllib.parse.unquote(parts.username or "guest"), urllib.parse.unquote(parts.password or "guest"))
        overview = requests.get(f"{base}/overview", auth=auth, timeout=5)
        overview.raise_for_status()
        nodes = requests.get(f"{base}/nodes", auth=auth, timeout=5)
        nodes.raise_for_status()
    except Exception:  # noqa: BLE001 - the management plugin is optional here
        return state
    state["node"] = overview.json()["node"]
    state["listener_ports"] = {listener["port"] for listener in overview.json()["listeners"]}
    state["nodes"] = {node["name"]: (node.get("os_pid"), node["uptime"]) for node in nodes.json()}
    return state


def test_shared_node_is_untouched(amqp_url):
    if find_rabbitmq_server() is None:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("rabbitmq-server is not installed")
        pytest.skip("rabbitmq-server is not installed")
    before = _shared_node_state(amqp_url)

    with PrivateBroker() as broker:
        broker.kill()
        broker.restart()
        during = _shared_node_state(amqp_url)
        short_name = broker.node_name.split("@")[0]

    # stop() left nothing behind
    assert broker.pids() == []
    assert not broker.base_dir.exists()

    after = _shared_node_state(amqp_url)
    for state in (during, after):
        assert state["cluster_name"] == before["cluster_name"]
        assert not state["cluster_name"].startswith(short_name + "@")
        if "node" in before:
            assert state["node"] == before["node"]
            assert set(state["nodes"]) == set(before["nodes"]), "the private node joined the shared cluster"
            assert broker.port not in state["listener_ports"]
            for name, (os_pid, uptime) in state["nodes"].items():
                assert os_pid == before["nodes"][name][0], f"{name} was restarted"
                assert uptime >= before["nodes"][name][1], f"{name} was restarted"
    if "node" in before and amqp_url == "amqp://guest:guest@localhost:5672//":
        assert after["node"] == "rabbit@localhost"
