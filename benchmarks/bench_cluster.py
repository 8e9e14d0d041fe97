"""Benchmark of the quorum lanes on one node and on a three-node cluster (issue 16): three tables, one run.

    .venv/bin/python benchmarks/bench_cluster.py [-n 2000] [--reminders 10000] [--rate 20] [--duration 120]
        [--only throughput,backlog,faults]

Two PRIVATE RabbitMQ "clusters" on loopback (``tests/private_cluster.py``): one node, and three
nodes; the shared broker on 5672 is never touched. Every node is killed at the end.

1. throughput: notifications/s and CPU per notification, three ways. The notification worker
   declares the quorum lanes itself (``task_queues``), so it cannot run on the classic priority
   topology that no longer ships: the classic baseline is bare queue throughput (the dispatch
   message's size, prefetch 100 as the send worker's ``-c 100`` with multiplier 1, one
   confirmed publish per message as a task's child, an ack per message), run the same way on
   quorum queues side by side; the project's worker (``bench_notification.project``: dispatch ->
   e-mail, file sink) then runs on the quorum topology of one and of three nodes.
2. backlog: a confirmation behind ``--reminders`` queued reminders. Bare: a classic priority
   queue (``x-max-priority: 9``, the confirmation at priority 8) against two quorum lanes, each
   with its consumer (prefetch 8, the dispatch worker's; 5 ms per message). Then the real worker on the lanes:
   publish -> e-mail file.
3. faults: the whole mesh (``bench_faults.Mesh``: API, relay, receipts, dispatch and send
   workers) on the three-node cluster, every node in every URL, ``--rate`` bookings/s for
   ``--duration`` s; the node leading most lanes is SIGKILLed (back 10 s later), then the node
   leading most lanes after that is SIGSTOPped for 30 s. The provider (``bench_faults.FakeProvider``,
   no failures of its own, no idempotency) shows lost, duplicated in effect, booking -> provider
   latency and the longest time without an accepted delivery after each fault.

Loopback only, bounded (about 10 minutes); the load average is printed at start and end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator

import pika
import requests

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import shared  # noqa: E402 - after the sys.path insert above
from benchmarks import bench_faults, bench_notification  # noqa: E402
from benchmarks.bench_faults import FakeProvider, Load, Mesh, classify_duplicates, pct  # noqa: E402
from benchmarks.proc import cpu_seconds  # noqa: E402
from tests.e2e.mesh.test_cluster import lane_leader, longest_gap  # noqa: E402
from tests.notification.harness import declare_topology, dispatch_message, notification  # noqa: E402
from tests.private_cluster import PrivateCluster  # noqa: E402
from tests.support import free_port, queue_depth, wait_for  # noqa: E402

BIN = pathlib.Path(sys.executable).parent
DISPATCH_HIGH = shared.lane_queue(shared.DISPATCH_QUEUE, shared.Lane.HIGH)
DISPATCH_LOW = shared.lane_queue(shared.DISPATCH_QUEUE, shared.Lane.LOW)
#: The send worker's prefetch (``-c 100``, multiplier 1) and the dispatch worker's (``-c 8``).
SEND_PREFETCH = 100
DISPATCH_PREFETCH = 8
KILL_DOWN_SECONDS = 10.0
HANG_SECONDS = 30.0
#: What a bare consumer spends on each message of the backlog run: about the worker's CPU per
#: notification (table 1b), so the reminders stay queued while the confirmation arrives.
WORK_SECONDS = 0.005


def say(text: str) -> None:
    print(text, flush=True)


# -- vhosts on a private node -------------------------------------------------------------------


def node_vhost(cluster: PrivateCluster) -> tuple[str, str, Callable[[], None]]:
    """A fresh vhost: (first node's URL, every node's URL joined by ``;``, delete)."""
    node = cluster.nodes[0]
    name = f"bench-{uuid.uuid4().hex[:8]}"
    quoted = urllib.parse.quote(name, safe="")
    auth = (node.user, node.password)
    requests.put(f"{node.api_url}/vhosts/{quoted}", auth=auth, timeout=10).raise_for_status()
    requests.put(f"{node.api_url}/permissions/{quoted}/{node.user}", auth=auth, timeout=10,
                 json={"configure": ".*", "write": ".*", "read": ".*"}).raise_for_status()
    cluster.vhost = name  # type: ignore[attr-defined]  # lane_leader() asks the cluster which vhost's lanes
    urls = [f"amqp://{n.user}:{n.password}@{n.host}:{n.port}/{quoted}" for n in cluster.nodes]

    def drop() -> None:
        api = next((n for n in cluster.nodes if n.running and not n.paused), node)
        requests.delete(f"{api.api_url}/vhosts/{quoted}", auth=auth, timeout=30)

    return urls[0], ";".join(urls), drop


@contextlib.contextmanager
def notification_bench_on(cluster: PrivateCluster) -> Iterator[None]:
    """Point ``bench_notification`` (written for the shared broker's management port) at ``cluster``."""
    node = cluster.nodes[0]

    def make_vhost(_amqp: str) -> tuple[str, Callable[[], None]]:
        url, _all, drop = node_vhost(cluster)
        return url, drop

    def vhost_stats(url: str) -> dict:
        vhost = urllib.parse.quote(urllib.parse.unquote(urllib.parse.urlsplit(url).path[1:]), safe="")
        return requests.get(f"{node.api_url}/vhosts/{vhost}", auth=(node.user, node.password),
                            timeout=10).json().get("message_stats", {})

    saved = bench_notification.make_vhost, bench_notification.vhost_stats
    bench_notification.make_vhost, bench_notification.vhost_stats = make_vhost, vhost_stats  # type: ignore[assignment]  # same signatures, another broker
    try:
        yield
    finally:
        bench_notification.make_vhost, bench_notification.vhost_stats = saved


def broker_cpu(cluster: PrivateCluster) -> float:
    return sum(cpu_seconds(node.pid) for node in cluster.nodes if node.pid)


# -- bare queues ----------------------------------------------------------------------------------

CLASSIC = {"x-max-priority": 9}
QUORUM = {"x-queue-type": "quorum", "x-queue-leader-locator": "balanced"}


def declare_queues(url: str, names: list[str], arguments: dict) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for name in names:
            channel.queue_declare(name, durable=True, arguments=arguments)
    finally:
        connection.close()


class Consumer:
    """A pika consumer on its own thread: prefetch ``prefetch`` per queue; ``work`` s per message, then its ack."""

    def __init__(self, url: str, queues: list[str], prefetch: int, work: float = 0.0) -> None:
        self.received: dict[str, float] = {}  # message id -> monotonic time it arrived
        self.behind: dict[str, int] = {}  # message id -> messages received until then, itself included
        self.count = 0
        self.cpu = 0.0
        self.url, self.queues, self.prefetch, self.work = url, queues, prefetch, work
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        channel = connection.channel()
        channel.basic_qos(prefetch_count=self.prefetch)  # per consumer, like Celery's on quorum queues

        def on_message(ch, method, properties, _body) -> None:
            self.count += 1
            if properties.message_id:
                self.received[properties.message_id] = time.monotonic()
                self.behind[properties.message_id] = self.count
            if self.work:
                time.sleep(self.work)
            ch.basic_ack(method.delivery_tag)

        for queue in self.queues:
            channel.basic_consume(queue, on_message)
        self.ready.set()
        started = time.thread_time()
        try:
            while not self.stopping.is_set():
                connection.process_data_events(time_limit=0.1)
        except pika.exceptions.AMQPError:
            # Only while stopping: the run's vhost is deleted under a consumer still draining its prefetch.
            if not self.stopping.is_set():
                raise
            return
        self.cpu = time.thread_time() - started
        connection.close()

    def __enter__(self) -> Consumer:
        self.thread.start()
        self.ready.wait(30)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self.thread.join(30)


def publish_confirmed(url: str, queue_for: Callable[[int], str], count: int, priority: Callable[[int], int],
                      body: bytes, headers: dict, ids: Callable[[int], str] | None = None) -> None:
    """One confirmed publish at a time, as a task publishing its child (and as the relay's pika baseline)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for i in range(count):
            properties = pika.BasicProperties(headers=headers, priority=priority(i), delivery_mode=2,
                                              content_type="application/json",
                                              message_id=ids(i) if ids else None)
            channel.basic_publish("", queue_for(i), body, properties)
    finally:
        connection.close()


def sample_message() -> shared.TaskMessage:
    return dispatch_message(notification(tokens=()))


def bare_throughput(cluster: PrivateCluster, arguments: dict, n: int) -> dict:
    url, _all, drop = node_vhost(cluster)
    try:
        declare_queues(url, ["bench.work"], arguments)
        message = sample_message()
        with Consumer(url, ["bench.work"], SEND_PREFETCH) as consumer:
            publish_confirmed(url, lambda _i: "bench.work", 50, lambda _i: 5, message.body, message.headers)
            wait_for(lambda: consumer.count >= 50, 60, "bare warm-up")
            cpu0, t0 = broker_cpu(cluster), time.perf_counter()
            publish_confirmed(url, lambda _i: "bench.work", n, lambda _i: 5, message.body, message.headers)
            wait_for(lambda: consumer.count >= n + 50, 300, f"{n} consumed", interval=0.02)
            seconds = time.perf_counter() - t0
            cpu = broker_cpu(cluster) - cpu0
        return {"rate": n / seconds, "broker_cpu_ms": cpu * 1000 / n, "bytes": len(message.body)}
    finally:
        drop()


def bare_backlog(cluster: PrivateCluster, reminders: int, lanes: bool) -> dict:
    """Seconds from a confirmation's confirmed publish to its delivery, behind ``reminders`` queued ones."""
    url, _all, drop = node_vhost(cluster)
    try:
        queues = ["bench.high", "bench.low"] if lanes else ["bench.dispatch"]
        declare_queues(url, queues, QUORUM if lanes else CLASSIC)
        message = sample_message()
        low = queues[-1]
        publish_confirmed(url, lambda _i: low, reminders, lambda _i: shared.Priority.LOW, message.body,
                          message.headers)
        with Consumer(url, queues, DISPATCH_PREFETCH, WORK_SECONDS) as consumer:
            wait_for(lambda: consumer.count >= 100, 60, "reminders flowing")
            published = time.monotonic()
            publish_confirmed(url, lambda _i: queues[0], 1, lambda _i: shared.Priority.HIGH, message.body,
                              message.headers, ids=lambda _i: "confirmation")
            wait_for(lambda: "confirmation" in consumer.received, 120, "the confirmation", interval=0.005)
            latency = consumer.received["confirmation"] - published
            behind = reminders - (consumer.behind["confirmation"] - 1)
        return {"latency": latency, "behind": behind}
    finally:
        drop()


# -- the project's worker behind a reminder backlog ------------------------------------------------


def worker_backlog(cluster: PrivateCluster, reminders: int) -> dict:
    """The lanes with the real worker (Procfile pools in one process): publish -> the confirmation's e-mail file."""
    url, _all, drop = node_vhost(cluster)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-cluster-backlog-"))
    env = {**os.environ, "AMQP_URL": url, "NOTIFICATION_DATABASE_URL": f"sqlite:///{tmp / 'n.db'}",
           "EMAIL_BACKEND": "file", "EMAIL_FILE_DIR": str(tmp / "email"), "PUSH_BACKEND": "file",
           "PUSH_FILE_DIR": str(tmp / "push"), "NOTIFICATION_METRICS_PORT": "0", "NOTIFICATION_LOG_FORMAT": "json"}
    run = None
    try:
        declare_topology(url)
        subprocess.run([str(BIN / "notification-service"), "migrate"], env=env, check=True, capture_output=True,
                       timeout=180)
        messages = [dispatch_message(notification(event="booking.reminder", tokens=())) for _ in range(reminders)]
        bench_notification.publish_all(url, shared.EXCHANGE, messages)
        wait_for(lambda: queue_depth(url, DISPATCH_LOW) >= reminders, 120, "the reminders queued")
        argv = [str(BIN / "celery"), "-A", "notification_service.celery_app", "worker", *bench_notification.POOL,
                *bench_notification.WORKER_FLAGS, "-Q", ",".join(shared.WORK_QUEUES), "-n", "backlog@%h"]
        run = bench_notification.Run(tmp, [(argv, env)])
        email_dir = tmp / "email"
        wait_for(lambda: email_dir.exists() and any(email_dir.iterdir()), 120, "the reminders being worked on")
        confirmation = notification(event="booking.confirmed", tokens=())
        nid = confirmation["notification_id"]
        published = time.monotonic()
        bench_notification.publish_all(url, shared.EXCHANGE, [dispatch_message(confirmation)])

        def sent() -> bool:
            return any(f"X-Notification-Id: {nid}" in p.read_text(errors="replace") for p in email_dir.glob("*.eml"))

        wait_for(sent, 120, "the confirmation's e-mail", interval=0.02)
        latency = time.monotonic() - published
        return {"latency": latency, "behind": queue_depth(url, DISPATCH_LOW)}
    finally:
        if run is not None:
            run.stop()
        drop()
        shutil.rmtree(tmp, ignore_errors=True)


# -- tables ---------------------------------------------------------------------------------------


def table_throughput(one: PrivateCluster, three: PrivateCluster, n: int) -> dict:
    bare = {"classic priority queue, 1 node": bare_throughput(one, CLASSIC, n),
            "quorum queue, 1 node": bare_throughput(one, QUORUM, n),
            "quorum queue, 3-node cluster": bare_throughput(three, QUORUM, n)}
    projects = {}
    for name, cluster in (("quorum lanes, 1 node", one), ("quorum lanes, 3-node cluster", three)):
        with notification_bench_on(cluster):
            projects[name] = bench_notification.project(n)
    say(f"\n1a. Bare queue throughput (the worker declares the quorum lanes itself, so the classic baseline is "
        f"measured without it): {n} messages of {bare['quorum queue, 1 node']['bytes']} bytes (a dispatch "
        f"message), one confirmed publish at a time, consumed with prefetch {SEND_PREFETCH}, ack each; "
        "broker CPU = all nodes' beam.smp")
    say("| queue | msg/s | x classic | broker CPU ms/msg |")
    say("| --- | ---: | ---: | ---: |")
    base = bare["classic priority queue, 1 node"]["rate"]
    for name, r in bare.items():
        say(f"| {name} | {r['rate']:.0f} | {r['rate'] / base:.2f} | {r['broker_cpu_ms']:.3f} |")
    say(f"\n1b. The project's worker (dispatch -> e-mail, file sink, SQLite log; one process "
        f"`{' '.join(bench_notification.POOL)}`), {n} notifications, the worker and publisher on node 1")
    say("| topology | notifications/s | worker CPU ms/notification | DB tx | confirm/notification |")
    say("| --- | ---: | ---: | ---: | ---: |")
    say("| classic priority queues, 1 node | n/a (the worker declares quorum lanes) | n/a | | |")
    for name, r in projects.items():
        say(f"| {name} | {r['rate']:.0f} | {r['cpu_ms']:.2f} | {r['db']:.1f} | {r['confirm']:.2f} |")
    ratio = bare["quorum queue, 1 node"]["rate"] / base
    say(f"quorum / classic on one node (bare queues): {ratio:.2f}x "
        f"(target >= 0.7x: {'met' if ratio >= 0.7 else 'MISSED'})")
    return {"bare": bare, "project": projects}


def table_backlog(one: PrivateCluster, reminders: int) -> None:
    classic = bare_backlog(one, reminders, lanes=False)
    lanes = bare_backlog(one, reminders, lanes=True)
    worker = worker_backlog(one, reminders)
    say(f"\n2. A confirmation behind {reminders} queued reminders, one node. Bare: confirmed publish -> "
        f"delivered to a consumer (prefetch {DISPATCH_PREFETCH} per queue, "
        f"{WORK_SECONDS * 1000:.0f} ms per message, one at a time, then the ack); worker: "
        "publish to dispatch -> its e-mail file (the project's worker, all lanes, one process)")
    say("| run | latency s | reminders still queued |")
    say("| --- | ---: | ---: |")
    say(f"| bare: classic priority queue (x-max-priority 9), confirmation at priority 8 | {classic['latency']:.3f} "
        f"| {classic['behind']} |")
    say(f"| bare: quorum lanes (high and low, one consumer each) | {lanes['latency']:.3f} | {lanes['behind']} |")
    say(f"| the worker on the quorum lanes | {worker['latency']:.3f} | {worker['behind']} |")
    say(f"target <= 2 s behind {reminders} reminders (the worker on the lanes): "
        f"{'met' if worker['latency'] <= 2 else 'MISSED'}")


def table_faults(three: PrivateCluster, rate: float, duration: float) -> None:
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-cluster-faults-"))
    _first, url, drop_vhost = node_vhost(three)
    provider = FakeProvider(0.0, 0.0, 0.0, seed=1).start()
    booking_db, notification_db, drop_db = bench_faults.make_databases("sqlite", tmp)
    api_port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "AMQP_URL": url,
        "BOOKING_DATABASE_URL": booking_db, "BOOKING_API_KEYS": bench_faults.API_KEY,
        "BOOKING_BIND": f"127.0.0.1:{api_port}", "BOOKING_WORKERS": "2",
        "BOOKING_REMINDER_LEAD_SECONDS": "86400",  # bookings start in 2031: no reminder is due
        "BOOKING_LOG_FORMAT": "json", "NOTIFICATION_DATABASE_URL": notification_db,
        "NOTIFICATION_LOG_FORMAT": "json", "NOTIFICATION_METRICS_PORT": "0",
        "EMAIL_BACKEND": "http", "EMAIL_HTTP_URL": provider.email_url,
        "PUSH_BACKEND": "http", "PUSH_HTTP_URL": provider.push_url,
    })
    mesh = Mesh(tmp, env, "split", 100, 10)
    timeline: list[tuple[float, str]] = []
    stop = threading.Event()
    try:
        base_url = f"http://127.0.0.1:{api_port}"
        mesh.boot(base_url)
        warm = Load(base_url, 1, 1, "warm" + uuid.uuid4().hex[:4]).post(0)
        if warm is None:
            raise SystemExit("the warm-up booking failed")
        wait_for(lambda: provider.resolved(warm.booking_id, "email") and provider.resolved(warm.booking_id, "push"),
                 120, "the warm-up booking's e-mail and push")
        load = Load(base_url, rate, duration, uuid.uuid4().hex[:6])
        t0 = time.monotonic()
        kill_at, hang_at = duration * 0.25, duration * 0.55

        def faults() -> None:
            def note(what: str) -> None:
                timeline.append((time.monotonic() - t0, what))
                say(f"[{time.monotonic() - t0:6.1f} s] {what}")

            if stop.wait(max(0.0, t0 + kill_at - time.monotonic())):
                return
            victim = lane_leader(three)
            victim.kill()
            note(f"SIGKILL {victim.node_name} (led most lanes)")
            if stop.wait(KILL_DOWN_SECONDS):
                return
            victim.start()
            note(f"{victim.node_name} restarted")
            three.await_healthy(60)
            note("cluster healthy")
            if stop.wait(max(0.0, t0 + hang_at - time.monotonic())):
                return
            hung = lane_leader(three)
            hung.pause()
            note(f"SIGSTOP {hung.node_name} (led most lanes now)")
            stop.wait(HANG_SECONDS)
            hung.resume()
            note(f"SIGCONT {hung.node_name}")

        fault_thread = threading.Thread(target=faults, daemon=True)
        fault_thread.start()
        load.run(t0, stop)
        load_end = time.monotonic()
        fault_thread.join()
        bookings = list(load.stats.bookings)
        expected = [(b.booking_id, channel) for b in bookings for channel in ("email", "push")]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and any(provider.resolved(*item) is None for item in expected):
            time.sleep(0.5)
        stop.wait(10)  # late duplicates show within seconds of the drain
        calls = [c for c in provider.snapshot() if c.booking_id in {b.booking_id for b in bookings}]
        committed = {b.booking_id: b.committed for b in bookings}
        accepted = {item: provider.resolved(*item) for item in expected}
        lost = [item for item, call in accepted.items() if call is None]
        latencies = [call.answered - committed[item[0]] for item, call in accepted.items() if call is not None]
        dups = classify_duplicates(calls, [], {})
        times = [c.answered for c in calls if c.accepted]
        kill_t = t0 + kill_at
        hang_t = t0 + next((at for at, what in timeline if what.startswith("SIGSTOP")), hang_at)
        kill_gap = longest_gap(times, kill_t, min(hang_t, load_end))
        hang_gap = longest_gap(times, hang_t, load_end)
        p95 = pct(latencies, 0.95)
        kill_p95 = pct([call.answered - committed[item[0]] for item, call in accepted.items()
                        if call is not None and committed[item[0]] < hang_t], 0.95)
        say(f"\n3. The mesh on the 3-node cluster, {rate:g} bookings/s for {duration:g} s (e-mail + push each; "
            f"SIGKILL of the node leading most lanes at {kill_at:.0f} s, back {KILL_DOWN_SECONDS:.0f} s later; "
            f"SIGSTOP of the node leading most lanes then at {hang_at:.0f} s for {HANG_SECONDS:.0f} s); every "
            "client has every node in its URL; provider without failures or idempotency")
        say("| measure | value |")
        say("| --- | --- |")
        say(f"| bookings made (201) / failed | {len(bookings)} of {load.count} / {len(load.stats.failed)} |")
        say(f"| deliveries expected / accepted by the provider | {len(expected)} / {len(expected) - len(lost)} |")
        say(f"| **lost** | **{len(lost)}** |")
        say(f"| **duplicated in effect** (a second accepted call for one delivery) | **{dups['extra']}** |")
        say(f"| booking -> provider p50 / p95 / max | {pct(latencies, 0.5):.2f} / {p95:.2f} / "
            f"{max(latencies, default=float('nan')):.2f} s |")
        phases = (("booked before the kill", t0, kill_t), ("booked from the kill to the hang", kill_t, hang_t),
                  ("booked from the hang to the end", hang_t, load_end))
        for label, lo, hi in phases:
            phase = [call.answered - committed[item[0]] for item, call in accepted.items()
                     if call is not None and lo <= committed[item[0]] < hi]
            say(f"| {label}: booking -> provider p50 / p95 / max ({len(phase)} deliveries) | "
                f"{pct(phase, 0.5):.2f} / {pct(phase, 0.95):.2f} / {max(phase, default=float('nan')):.2f} s |")
        say(f"| longest time without a delivery, from the kill to the hang | {kill_gap:.1f} s |")
        say(f"| longest time without a delivery, from the hang to the end of the load | {hang_gap:.1f} s |")
        say(f"| API error attempts (retried) | {load.stats.error_attempts} |")
        say("fault timeline: " + "; ".join(f"{at:.1f} s {what}" for at, what in timeline))
        say(f"targets: lost 0 {'met' if not lost else 'MISSED'}; duplicated 0 "
            f"{'met' if not dups['extra'] else 'MISSED'}; gap after the kill <= 5 s "
            f"{'met' if kill_gap <= 5 else 'MISSED'}; gap for the hung node <= 15 s "
            f"{'met' if hang_gap <= 15 else 'MISSED'}; p95 <= 10 s through the node-kill run (booked before the hang: "
            f"{kill_p95:.2f} s) {'met' if kill_p95 <= 10 else 'MISSED'}, over the whole run with the hang "
            f"{'met' if p95 <= 10 else 'MISSED'}")
    finally:
        stop.set()
        mesh.stop_all()
        three.restore(120)
        drop_vhost()
        provider.stop()
        drop_db()
        shutil.rmtree(tmp, ignore_errors=True)


def start(n: int) -> PrivateCluster:
    cluster = PrivateCluster(n=n)
    try:
        return cluster.start()
    except BaseException:
        cluster.stop()
        raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=2000, help="messages per throughput run")
    parser.add_argument("--reminders", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=20.0, help="bookings per second in the fault run")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load in the fault run")
    parser.add_argument("--only", default="throughput,backlog,faults")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    began = time.monotonic()
    say(f"load average at start: {' / '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    clusters: list[PrivateCluster] = []
    try:
        one: PrivateCluster | None = None
        if parts & {"throughput", "backlog"}:
            one = start(1)
            clusters.append(one)
        three = start(3)
        clusters.append(three)
        say(f"private nodes up ({time.monotonic() - began:.0f} s): "
            + ", ".join(f"{node.node_name}:{node.port}" for c in clusters for node in c.nodes))
        if "throughput" in parts and one is not None:
            table_throughput(one, three, args.n)
        if "backlog" in parts and one is not None:
            table_backlog(one, args.reminders)
        if "faults" in parts:
            if one is not None:
                one.stop()  # its node would only take memory and CPU from the mesh
            table_faults(three, args.rate, args.duration)
    finally:
        for cluster in clusters:
            cluster.stop()
    say(f"\nload average at end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"{time.monotonic() - began:.0f} s in all")


if __name__ == "__main__":
    main()
