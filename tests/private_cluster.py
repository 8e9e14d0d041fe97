"""A private RabbitMQ cluster (three nodes by default) whose nodes a test may kill, pause or restart.

Built from :class:`tests.private_broker.PrivateBroker`: each node is one, with its
private directory, loopback-only listeners, process-group kill, stdin-EOF halt and
atexit clean-up, plus what clustering needs::

    from tests.private_cluster import PrivateCluster

    with PrivateCluster(n=3) as cluster:     # booted in parallel, joined, healthy
        publish(cluster.url)                 # "amqp://…:P1//;amqp://…:P2//;…" (kombu failover)
        cluster.leader_of("q").kill()        # SIGKILL the node leading quorum queue "q"
        cluster.nodes[1].pause()             # SIGSTOP; .resume() is SIGCONT
        cluster.restore()                    # everything back up and one cluster again
    # every node and the private epmd killed, temp dirs removed

or the ``private_cluster`` fixture below (``from tests.private_cluster import
private_cluster  # noqa: F401``): one cluster per test session, healed before each test.

What makes the cluster private, beyond what ``PrivateBroker`` does per node:

* its own epmd on a port of its own (``ERL_EPMD_PORT``, loopback only): the
  nodes never register with the machine's epmd on 4369, so nothing can mistake
  them for ``rabbit@localhost`` or the reverse;
* a keeper shell holding epmd and the pids of the nodes paused right now: when
  its stdin (a pipe only this process writes) closes, it SIGKILLs those and
  epmd.  A running node halts by itself when its own stdin closes; a SIGSTOPped
  one cannot read that EOF.  So nothing of the cluster outlives us, even if we
  die by SIGKILL mid-pause;
* one random Erlang cookie, written into every node's private ``HOME``: the
  nodes and the CLI tools run against them share it, and only them;
* ``rabbitmq_management`` on a loopback port per node (``node.api_url``): the
  cheapest way to ask who runs and who leads a quorum queue.

The nodes boot in parallel as standalone nodes, then the others join the first
(``stop_app``, ``join_cluster``, ``start_app``). Quorum queues take their members
from the nodes running when they are declared, so declare them only once the
cluster is formed (``with`` and the fixture hand it over formed).

(Some 340 lines, not 300: a node's life cycle — kill, pause, rolling restart — and
the cluster's — epmd, parallel boot, join, health, heal — belong together here.)
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.private_broker import (
    DEFAULT_START_TIMEOUT,
    PrivateBroker,
    PrivateBrokerError,
    _descendants,
    _private_port,
    _proc_table,
    find_rabbitmq_server,
)
from tests.support import wait_for

__all__ = ["ClusterNode", "PrivateCluster", "private_cluster"]

_IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
#: The deployed nodes' ``net_ticktime`` (deploy/rabbitmq/cluster.conf), so a hung node costs here what it costs there.
NET_TICKTIME_SECONDS = 10


class ClusterNode(PrivateBroker):
    """One node of a :class:`PrivateCluster`: a ``PrivateBroker`` on the cluster's epmd and cookie."""

    def __init__(self, name: str, *, epmd_port: int, cookie: str, taken: set[int], **options: Any) -> None:
        super().__init__(**options)
        self.node_name = name
        self.epmd_port = epmd_port
        self.management_port = _private_port(taken | {self.port, self.dist_port})
        cookie_file = self.home_dir / ".erlang.cookie"
        cookie_file.write_text(cookie)
        cookie_file.chmod(0o400)  # Erlang refuses a cookie others may read
        (self.base_dir / "enabled_plugins").write_text("[rabbitmq_management].\n")
        with self.config_file.open("a") as config:
            config.write(f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.management_port}\n")
            # As deploy/rabbitmq/cluster.conf: a hung node is declared down in 7.5-12.5 s, not 45-75 s. Until
            # then the queue records (Mnesia) still name its leaders, and a new channel's publishes wait on it.
            config.write(f"net_ticktime = {NET_TICKTIME_SECONDS}\n")
            # A node declared down that comes back leaves a partition. autoheal restarts it (~15 s after SIGCONT,
            # 3.10.8); pause_minority, as deployed, left the resumed node partitioned for good (>50 s, 4 of 5 runs).
            config.write("cluster_partition_handling = autoheal\n")
        self.paused = False
        self.app_stopped = False
        #: Called whenever ``paused`` changes: the cluster tells its keeper whom to kill if we die.
        self.on_pause_change: Callable[[], None] = lambda: None

    @property
    def ports(self) -> set[int]:
        return {self.port, self.dist_port, self.management_port}

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}/api"

    def environment(self) -> dict[str, str]:
        return {**super().environment(), "ERL_EPMD_PORT": str(self.epmd_port), "ERL_EPMD_ADDRESS": "127.0.0.1"}

    def kill(self) -> None:
        super().kill()  # SIGKILL also ends a SIGSTOPped process
        self.paused = self.app_stopped = False
        self.on_pause_change()

    def pause(self) -> None:
        """SIGSTOP the node: its sockets stay open but it answers nothing, like a hung VM."""
        pid = self._running_pid()
        self.paused = True
        self.on_pause_change()  # before the stop: a paused node the keeper does not know would outlive us
        os.killpg(pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self._running_pid(), signal.SIGCONT)
        self.paused = False
        self.on_pause_change()

    def stop_app(self) -> None:
        """Stop RabbitMQ but not the Erlang VM (the first half of a rolling restart)."""
        self.ctl_ok("stop_app")
        self.app_stopped = True

    def start_app(self) -> None:
        self.ctl_ok("start_app")
        self.app_stopped = False
        self._wait_until_ready(self.start_timeout)

    def ctl_ok(self, *args: str) -> str:
        """``rabbitmqctl ARGS`` against this node; its output, or PrivateBrokerError with it."""
        done = self.ctl(*args)
        if done.returncode != 0:
            raise PrivateBrokerError(f"rabbitmqctl {' '.join(args)} on {self.node_name}: {done.stdout}{done.stderr}")
        return done.stdout

    def _running_pid(self) -> int:
        if self.pid is None:
            raise PrivateBrokerError(f"{self.node_name} is not running")
        return self.pid


class PrivateCluster:
    """``n`` clustered :class:`ClusterNode` s on one private epmd; ``with`` boots and forms it."""

    def __init__(self, n: int = 3, *, start_timeout: float = DEFAULT_START_TIMEOUT) -> None:
        self.server = find_rabbitmq_server()
        epmd = shutil.which("epmd", path=os.environ.get("PATH", "") + ":/usr/lib/erlang/bin")
        if not self.server or not epmd:
            raise PrivateBrokerError("rabbitmq-server and epmd are needed (set $RABBITMQ_SERVER to the server's path)")
        self.epmd = epmd
        self.start_timeout = start_timeout
        short = "c" + uuid.uuid4().hex[:8]
        self.epmd_port = _private_port(set())
        cookie = secrets.token_hex(20).upper()
        self.nodes: list[ClusterNode] = []
        self._keeper: subprocess.Popen | None = None
        self._lock = threading.RLock()
        for i in range(1, n + 1):
            taken = {self.epmd_port}.union(*(node.ports for node in self.nodes))
            name = f"{short}x{i}@localhost"
            make = functools.partial(
                ClusterNode, name, epmd_port=self.epmd_port, cookie=cookie, taken=taken, start_timeout=start_timeout
            )
            node = make()
            while {node.port, node.dist_port} & taken:  # PrivateBroker picks them unaware of the other nodes
                node.stop()
                node = make()
            node.on_pause_change = self._tell_keeper
            self.nodes.append(node)

    @property
    def url(self) -> str:
        """Every node's URL joined by ``;``: kombu's failover spelling."""
        return ";".join(node.url for node in self.nodes)

    # -------------------------------------------------------------- lifecycle

    def start(self) -> PrivateCluster:
        """Start epmd, boot every node in parallel, join the others to the first, wait until healthy.

        On failure everything started is stopped again and the directories are deleted.
        """
        with self._lock:
            try:
                self._start_keeper()
                _in_parallel(self.nodes, ClusterNode.start)
                first, others = self.nodes[0], self.nodes[1:]
                _in_parallel(others, ClusterNode.stop_app)
                for node in others:  # one at a time: each join changes the cluster's membership table
                    node.ctl_ok("join_cluster", first.node_name)
                _in_parallel(others, ClusterNode.start_app)
                return self.await_healthy()
            except BaseException:
                self.stop()
                raise

    def restore(self, timeout: float | None = None) -> PrivateCluster:
        """Resume paused nodes, restart killed ones, start stopped apps; then wait until healthy."""
        with self._lock:
            for node in self.nodes:
                if node.paused:
                    node.resume()
            _in_parallel([node for node in self.nodes if not node.running], ClusterNode.start)
            _in_parallel([node for node in self.nodes if node.app_stopped], ClusterNode.start_app)
            return self.await_healthy(timeout)

    def stop(self) -> None:
        """Kill every node and epmd, delete the directories; idempotent."""
        with self._lock:
            try:
                for node in self.nodes:
                    node.stop()
            finally:
                self._stop_keeper()

    def __enter__(self) -> PrivateCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------ questions

    def api(self, path: str) -> Any:
        """GET ``/api/PATH`` from the first node that answers (killed and paused nodes are skipped)."""
        errors = []
        for node in self.nodes:
            if node.running and not node.paused:
                try:
                    response = requests.get(f"{node.api_url}/{path}", auth=(node.user, node.password), timeout=5)
                    response.raise_for_status()
                    return response.json()
                except requests.RequestException as exc:
                    errors.append(f"{node.node_name}: {exc}")
        raise PrivateBrokerError(f"no node answered /api/{path}: {errors or 'none is up'}")

    def running_nodes(self) -> set[str]:
        """Names of the nodes the cluster reports running and not partitioned from any other."""
        return {node["name"] for node in self.api("nodes") if node.get("running") and not node.get("partitions")}

    def await_healthy(self, timeout: float | None = None) -> PrivateCluster:
        """Wait until every node accepts AMQP and the cluster reports all of them running, unpartitioned."""
        timeout = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            if not node.running or node.paused or node.app_stopped:
                raise PrivateBrokerError(f"{node.node_name} is down, paused or stopped: restore() it first")
            node._wait_until_ready(max(deadline - time.monotonic(), 1))
        names = {node.node_name for node in self.nodes}
        last_error: list[str] = []

        def all_running() -> bool:
            try:
                return self.running_nodes() == names
            except PrivateBrokerError as exc:
                # While a resumed node is healed (autoheal restarts it), every node's management API can take
                # longer than its timeout to answer /api/nodes: that is "not yet", not a failure.
                last_error[:] = [str(exc)]
                return False

        try:
            wait_for(all_running, max(deadline - time.monotonic(), 1), f"{sorted(names)} running")
        except AssertionError as exc:
            raise PrivateBrokerError(f"{exc}; last management API error: {last_error or 'none'}") from None
        return self

    def leader_of(self, queue: str, vhost: str = "/", timeout: float = 30) -> ClusterNode:
        """The node that leads quorum queue ``queue`` (waits for an election to settle)."""
        path = f"queues/{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(queue, safe='')}"

        def leader() -> ClusterNode | None:
            # Right after its node dies, the queue's record still names the old leader.
            name = self.api(path).get("leader")
            alive = {node.node_name: node for node in self.nodes if node.running and not node.paused}
            return alive.get(name)

        return wait_for(leader, timeout, f"a leader for quorum queue {queue!r}", interval=0.2)

    # -------------------------------------------------------------- internals

    def _start_keeper(self) -> None:
        keeper = (
            '"$0" -port "$1" -address 127.0.0.1 & epmd=$!; paused=""\n'
            "while read -r line; do paused=$line; done\n"  # each line: the pids paused now
            'if [ -n "$paused" ]; then kill -KILL $paused; fi\n'
            'kill "$epmd"; wait "$epmd"\n'  # reaped: no zombie left for init
        )
        self._keeper = subprocess.Popen(
            ["sh", "-c", keeper, self.epmd, str(self.epmd_port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, with epmd
        )
        wait_for(self._epmd_answers, 10, f"epmd on port {self.epmd_port}")

    def _tell_keeper(self) -> None:
        keeper = self._keeper
        if keeper is not None and keeper.stdin is not None and keeper.poll() is None:
            keeper.stdin.write(" ".join(str(node.pid) for node in self.nodes if node.paused and node.pid).encode())
            keeper.stdin.write(b"\n")
            keeper.stdin.flush()

    def _epmd_answers(self) -> bool:
        if self._keeper is None or self._keeper.poll() is not None:
            raise PrivateBrokerError(f"epmd on port {self.epmd_port} exited")
        names = [self.epmd, "-port", str(self.epmd_port), "-names"]
        return subprocess.run(names, capture_output=True, timeout=10).returncode == 0

    def _stop_keeper(self) -> None:
        proc, self._keeper = self._keeper, None
        if proc is None:
            return
        doomed = [proc.pid, *_descendants(proc.pid, _proc_table())]
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):  # it may exit between the timeout and the kill
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        wait_for(lambda: not set(doomed) & _proc_table().keys(), 10, "epmd to die")


def _in_parallel(nodes: list[ClusterNode], action: Callable[[ClusterNode], object]) -> None:
    """Run ``action`` on every node at once (each is seconds of Erlang boot); re-raise the first error."""
    if nodes:
        with ThreadPoolExecutor(len(nodes)) as pool:
            list(pool.map(action, nodes))


_SESSION: dict[str, PrivateCluster] = {}


@pytest.fixture
def private_cluster(request: pytest.FixtureRequest) -> PrivateCluster:
    """A formed, healthy :class:`PrivateCluster` of three nodes.

    Booted once per test session (~20 s) and stopped at its end; before every
    test it is restored, so a test may leave nodes killed, paused or stopped.
    Skipped when ``rabbitmq-server`` is not installed, but *fails* under ``CI=true``.
    """
    if find_rabbitmq_server() is None:
        (pytest.fail if _IN_CI else pytest.skip)(
            "rabbitmq-server is not installed (needed for a private RabbitMQ cluster)"
        )
    cluster = _SESSION.get("cluster")
    if cluster is None:
        cluster = PrivateCluster()
        request.config.add_cleanup(cluster.stop)
        _SESSION["cluster"] = cluster.start()
    return cluster.restore()
