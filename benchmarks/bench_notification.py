"""Benchmarks of the notification workers: tables measured in one run, on loopback, bounded in count.

Usage: .venv/bin/python benchmarks/bench_notification.py [--only cost,provider,scaling] [-n 2000]
                                                         [--database sqlite|postgresql]

1. cost:     bare Celery's two-hop chain (benchmarks/bare_celery.py) and the project's
             dispatch -> e-mail (file sink), side by side, same broker, same pool flags:
             rate, worker CPU per notification, the ratios, delivery-log transactions
             and broker operations per notification.
2. provider: a loopback HTTP e-mail provider answering in 250 ms; sends/s of ONE e-mail
             worker process (the send worker's production pool).
3. scaling:  rate with one and two worker processes; CPU per notification and peak RSS
             with a 1k and a 10k backlog.

Each run uses throwaway vhosts (management API) and temporary folders; every worker is
stopped at the end. Worker CPU comes from /proc (user + system) between the first and
the last message of the measured batch; a warm-up message runs first.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pika
import requests

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import shared  # noqa: E402
from benchmarks.proc import cpu_seconds, peak_rss_mb  # noqa: E402
from benchmarks.vhost import make_vhost  # noqa: E402
from tests.notification.harness import declare_topology, dispatch_message, notification  # noqa: E402
from tests.support import free_port, queue_depth, wait_for  # noqa: E402

AMQP = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672//")
#: Server URL to create throwaway PostgreSQL databases with (``--database postgresql``).
POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@localhost:5432/test")
DATABASE = "sqlite"
BIN = pathlib.Path(sys.executable).parent
#: The pool flags of the send worker in the Procfile, compose and k8s; bare Celery gets the same.
POOL = ["-P", "threads", "-c", os.environ.get("BENCH_CONCURRENCY", "100")]
WORKER_FLAGS = ["--without-gossip", "--without-mingle", "-l", "WARNING"]
#: The queues each worker consumes, as in the Procfile: both lanes of its stages.
DISPATCH_LANES = ",".join(q for q in shared.WORK_QUEUES if q.startswith(f"{shared.DISPATCH_QUEUE}."))
SEND_LANES = ",".join(q for q in shared.WORK_QUEUES if not q.startswith(f"{shared.DISPATCH_QUEUE}."))
EMAIL_HIGH = shared.lane_queue(shared.EMAIL_QUEUE, shared.Lane.HIGH)


# -- measuring a process ----------------------------------------------------------


def wait_until(predicate, what: str, timeout: float = 900.0, interval: float = 0.05) -> None:
    wait_for(predicate, timeout, what, interval)


class Run:
    """Worker processes against one vhost, and what they cost while a batch is worked off."""

    def __init__(self, tmp: pathlib.Path, processes: list[tuple[list[str], dict]]) -> None:
        self.workers = []
        for i, (argv, env) in enumerate(processes):
            # The worker writes to its own copy of the descriptor: ours can close once it runs.
            with open(tmp / f"worker-{i}.log", "wb") as log:
                self.workers.append(subprocess.Popen(argv, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT))

    def cpu(self) -> float:
        return sum(cpu_seconds(w.pid) for w in self.workers)

    def rss(self) -> float:
        return max(peak_rss_mb(w.pid) for w in self.workers)

    def stop(self) -> None:
        for w in self.workers:
            w.terminate()
        for w in self.workers:
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()


def publish_all(url: str, exchange: str, messages: list[shared.TaskMessage]) -> None:
    """Publish without confirms (8,000+/s on loopback), so the publisher is never the bottleneck."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    for m in messages:
        channel.basic_publish(exchange, m.routing_key, m.body, pika.BasicProperties(headers=m.headers, **m.properties))
    connection.close()


def vhost_stats(url: str) -> dict:
    """Message counters of the vhost from the management API (it refreshes them every 5 s)."""
    parts = urllib.parse.urlsplit(url)
    auth = (urllib.parse.unquote(parts.username or "guest"), urllib.parse.unquote(parts.password or "guest"))
    vhost = urllib.parse.quote(urllib.parse.unquote(parts.path[1:]), safe="")
    return requests.get(f"http://{parts.hostname}:15672/api/vhosts/{vhost}", auth=auth, timeout=10).json().get(
        "message_stats", {})


def settled_stats(url: str) -> dict:
    time.sleep(6)
    return vhost_stats(url)


def measure(run: Run, count, target: int, publish, interval: float = 0.05) -> tuple[float, float]:
    """(seconds, worker CPU seconds) from the first publish until ``count() >= target``."""
    cpu0, t0 = run.cpu(), time.perf_counter()
    publish()
    wait_until(lambda: count() >= target, f"{target} done", interval=interval)
    return time.perf_counter() - t0, run.cpu() - cpu0


# -- bare Celery ------------------------------------------------------------------


def bare_chain(n: int, processes: int = 1) -> dict:
    url, drop = make_vhost(AMQP)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-bare-"))
    counter = tmp / "chains.count"
    env = {**os.environ, "AMQP_URL": url, "BARE_COUNTER_FILE": str(counter), "PYTHONPATH": str(REPO)}
    argv = [str(BIN / "celery"), "-A", "benchmarks.bare_celery", "worker", *POOL, *WORKER_FLAGS,
            "-Q", "bare.first,bare.second"]
    run = Run(tmp, [(argv + ["-n", f"bare{i}@%h"], env) for i in range(processes)])
    try:
        def count() -> int:
            return counter.stat().st_size if counter.exists() else 0

        def messages(k: int) -> list:
            return [shared.task_message(task="bare.first", task_id=str(uuid.uuid4()), routing_key="bare.first",
                                        args=[i], priority=5) for i in range(k)]

        wait_until(lambda: _queue_exists(url, "bare.first"), "bare worker declared its queues", 120)
        publish_all(url, "bare", messages(1))
        wait_until(lambda: count() >= 1, "bare warm-up", 120)
        batch = messages(n)
        seconds, cpu = measure(run, count, n + 1, lambda: publish_all(url, "bare", batch))
        stats = settled_stats(url)
        return {"rate": n / seconds, "cpu_ms": cpu * 1000 / n, "rss": run.rss(),
                "publish": (stats.get("publish", 0) - n - 1) / (n + 1),
                "confirm": stats.get("confirm", 0) / (n + 1), "deliver": stats.get("deliver_get", 0) / (n + 1),
                "ack": stats.get("ack", 0) / (n + 1), "db": 0.0}
    finally:
        run.stop()
        drop()


def _queue_exists(url: str, name: str) -> bool:
    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
    except pika.exceptions.AMQPError:
        return False
    try:
        connection.channel().queue_declare(name, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        if connection.is_open:
            connection.close()


# -- the project ------------------------------------------------------------------


def metric(port: int, name: str, labels: dict | None = None) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except requests.RequestException:
        return 0.0
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total += sample.value
    return total


def database_url(tmp: pathlib.Path):
    """(URL, drop) of a fresh delivery-log database: a SQLite file, or a PostgreSQL database."""
    if DATABASE == "sqlite":
        return f"sqlite:///{tmp / 'n.db'}", lambda: None
    import sqlalchemy as sa

    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return sa.engine.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False), drop


def project(n: int, *, processes: int = 1, email_env: dict | None = None,
            queues: str = ",".join(shared.WORK_QUEUES)) -> dict:
    url, drop = make_vhost(AMQP)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-notif-"))
    db_url, drop_db = database_url(tmp)
    declare_topology(url)
    base_env = {**os.environ, "AMQP_URL": url, "NOTIFICATION_DATABASE_URL": db_url,
                "EMAIL_FILE_DIR": str(tmp / "email"), "PUSH_BACKEND": "file", "PUSH_FILE_DIR": str(tmp / "push"),
                "NOTIFICATION_LOG_FORMAT": "json", **(email_env or {})}
    subprocess.run([str(BIN / "notification-service"), "migrate"], env=base_env, check=True, capture_output=True)
    ports = [free_port() for _ in range(processes)]
    argv = [str(BIN / "celery"), "-A", "notification_service.celery_app", "worker", *POOL, *WORKER_FLAGS, "-Q", queues]
    run = None
    try:
        run = Run(tmp, [(argv + ["-n", f"bench{i}@%h"], {**base_env, "NOTIFICATION_METRICS_PORT": str(port)})
                        for i, port in enumerate(ports)])

        def sent() -> float:
            labels = {"task": shared.EMAIL_TASK, "outcome": "sent"}
            return sum(metric(p, "notification_tasks_total", labels) for p in ports)

        def transactions() -> float:
            return sum(metric(p, "notification_db_transactions_total") for p in ports)

        def messages(k: int) -> list:
            return [dispatch_message(notification(tokens=())) for _ in range(k)]

        wait_until(lambda: all(_up(p) for p in ports), "workers serving metrics", 120)
        publish_all(url, shared.EXCHANGE, messages(processes))  # warm-up: one per worker
        wait_until(lambda: sent() >= processes, "warm-up", 120)
        batch = messages(n)
        tx0 = transactions()
        # Scraping /metrics costs the worker CPU too: four times a second is enough.
        seconds, cpu = measure(run, sent, n + processes, lambda: publish_all(url, shared.EXCHANGE, batch), 0.25)
        tx = transactions() - tx0
        stats = settled_stats(url)
        total = n + processes
        return {"rate": n / seconds, "cpu_ms": cpu * 1000 / n, "rss": run.rss(), "db": tx / n,
                "publish": (stats.get("publish", 0) - total) / total,
                "confirm": stats.get("confirm", 0) / total, "deliver": stats.get("deliver_get", 0) / total,
                "ack": stats.get("ack", 0) / total}
    finally:
        if run is not None:
            run.stop()
        drop()
        drop_db()


def _up(port: int) -> bool:
    try:
        requests.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
        return True
    except requests.RequestException:
        return False


# -- a slow provider ----------------------------------------------------------------


class SlowProvider:
    """A JSON e-mail API on loopback that answers every call after ``delay`` seconds (keep-alive)."""

    def __init__(self, delay: float) -> None:
        self.accepted = 0
        self.lock = threading.Lock()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                return

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                time.sleep(delay)
                body = b'{"id": "m"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                with provider.lock:
                    provider.accepted += 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.request_queue_size = 512
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/send"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def provider_rate(n: int, delay: float) -> dict:
    """Sends/s of one e-mail worker process against a provider answering in ``delay`` s.

    Dispatch runs first, in a worker of its own (as in production), until all ``n`` send
    tasks wait on the e-mail queue; then the e-mail worker starts and is measured alone.
    """
    provider = SlowProvider(delay)
    url, drop = make_vhost(AMQP)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-provider-"))
    declare_topology(url)
    env = {**os.environ, "AMQP_URL": url, "NOTIFICATION_DATABASE_URL": f"sqlite:///{tmp / 'n.db'}",
           "EMAIL_BACKEND": "http", "EMAIL_HTTP_URL": provider.url, "PUSH_BACKEND": "file",
           "PUSH_FILE_DIR": str(tmp / "push"), "NOTIFICATION_METRICS_PORT": "0", "NOTIFICATION_LOG_FORMAT": "json"}
    subprocess.run([str(BIN / "notification-service"), "migrate"], env=env, check=True, capture_output=True)
    celery = [str(BIN / "celery"), "-A", "notification_service.celery_app", "worker", *WORKER_FLAGS]
    # Each worker writes to its own copy of its log's descriptor: ours closes once it runs.
    with open(tmp / "dispatch.log", "wb") as log:
        dispatcher = subprocess.Popen(celery + ["-P", "threads", "-c", "8", "-Q", DISPATCH_LANES, "-n", "d@%h"],
                                      env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
    sender = None
    try:
        publish_all(url, shared.EXCHANGE, [dispatch_message(notification(tokens=())) for _ in range(n)])
        wait_until(lambda: queue_depth(url, EMAIL_HIGH) >= n, f"{n} send tasks queued")
        dispatcher.terminate()
        dispatcher.wait(30)
        with open(tmp / "send.log", "wb") as log:
            sender = subprocess.Popen(celery + [*POOL, "-Q", SEND_LANES, "-n", "s@%h"],
                                      env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: provider.accepted >= 1, "first send", 120)
        cpu0, t0, done0 = cpu_seconds(sender.pid), time.perf_counter(), provider.accepted
        wait_until(lambda: provider.accepted >= n, f"{n} sends")
        seconds, sent = time.perf_counter() - t0, n - done0
        return {"rate": sent / seconds, "cpu_ms": (cpu_seconds(sender.pid) - cpu0) * 1000 / sent,
                "rss": peak_rss_mb(sender.pid)}
    finally:
        for p in (dispatcher, sender):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(30)
        drop()
        provider.close()


# -- tables -------------------------------------------------------------------------


def table_cost(n: int) -> None:
    bare = bare_chain(n)
    ours = project(n)
    print(f"\n1. Cost per notification, {n} messages, one worker process `{' '.join(POOL)}`, "
          "acks_late, prefetch multiplier 1, confirms")
    print(f"| {'run':<44} | {'per s':>7} | {'CPU ms':>7} | {'DB tx':>6} | {'publish':>7} | {'confirm':>7} "
          f"| {'deliver':>7} | {'ack':>5} |")
    print(f"| {'-' * 44} | {'-' * 6}: | {'-' * 6}: | {'-' * 5}: | {'-' * 6}: | {'-' * 6}: | {'-' * 6}: | {'-' * 4}: |")
    for name, r in (("bare Celery two-hop chain", bare), (f"dispatch -> e-mail (file sink, {DATABASE} log)", ours)):
        print(f"| {name:<44} | {r['rate']:>7.0f} | {r['cpu_ms']:>7.2f} | {r['db']:>6.1f} | {r['publish']:>7.2f} "
              f"| {r['confirm']:>7.2f} | {r['deliver']:>7.2f} | {r['ack']:>5.2f} |")
    cpu_ratio, rate_ratio = ours["cpu_ms"] / bare["cpu_ms"], ours["rate"] / bare["rate"]
    print(f"CPU ratio {cpu_ratio:.2f}x (target <= 2x: {'met' if cpu_ratio <= 2 else 'MISSED'}); "
          f"rate ratio {rate_ratio:.2f} (target >= 0.5: {'met' if rate_ratio >= 0.5 else 'MISSED'})")
    print("(publish/confirm/deliver/ack: broker operations per notification by the workers, from the management API;"
          " a confirmed publish is the one synchronous round trip)")


def table_provider(n: int) -> None:
    r = provider_rate(n, 0.25)
    print(f"\n2. Slow provider: {n} e-mails to a loopback HTTP API answering in 250 ms, "
          f"one send worker `{' '.join(POOL)}`")
    print("| sends/s | CPU ms per send | peak RSS MB |")
    print("| ---: | ---: | ---: |")
    print(f"| {r['rate']:.0f} | {r['cpu_ms']:.2f} | {r['rss']:.0f} |")
    print(f"target >= 200 sends/s: {'met' if r['rate'] >= 200 else 'MISSED'}")


def table_scaling(n: int) -> None:
    one = project(n, processes=1)
    two = project(n, processes=2)
    small = project(1000)
    large = project(10000)
    print(f"\n3. Scaling: worker processes, and backlog size (delivery log on {DATABASE})")
    print("| run | per s | CPU ms per notification | peak RSS MB (per process) |")
    print("| --- | ---: | ---: | ---: |")
    for name, r in ((f"1 process, {n}", one), (f"2 processes, {n}", two), ("1 process, 1k backlog", small),
                    ("1 process, 10k backlog", large)):
        print(f"| {name} | {r['rate']:.0f} | {r['cpu_ms']:.2f} | {r['rss']:.0f} |")
    print(f"2 processes / 1: {two['rate'] / one['rate']:.2f}x; "
          f"10k / 1k CPU per message {large['cpu_ms'] / small['cpu_ms']:.2f}x, "
          f"RSS {large['rss'] / small['rss']:.2f}x (target flat within 1.2x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="messages per measured batch")
    parser.add_argument("--only", default="cost,provider,scaling")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite",
                        help="the delivery log of the project's workers")
    args = parser.parse_args()
    global DATABASE
    DATABASE = args.database
    parts = set(args.only.split(","))
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    if "cost" in parts:
        table_cost(args.n)
    if "provider" in parts:
        table_provider(args.n)
    if "scaling" in parts:
        table_scaling(args.n)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
