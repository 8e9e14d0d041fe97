"""Benchmark: POST /v1/bookings beside a bare Flask endpoint, and the outbox relay beside raw pika.

    .venv/bin/python benchmarks/bench_booking.py [--requests 1000] [--clients 8] [--workers 4]
                                                 [--backlog 3000] [--backlog-nice 0,10] [--relay-rows 2000]
                                                 [--latency-samples 200]

One run, side by side, loopback only, bounded in count:

1. gunicorn (same settings) serves a bare Flask endpoint that echoes its JSON,
   then ``POST /v1/bookings`` on SQLite, then on PostgreSQL: req/s, p50/p99,
   and CPU milliseconds per request of the gunicorn workers (from /proc).
2. With ``--backlog N``: the same three, again, while a notification worker
   (its CLI only, under ``nice -n`` each ``--backlog-nice`` value) drains N
   pre-published dispatch messages on a throwaway vhost.
3. The relay (``booking-service relay``, its own process) on each database:
   rows/s with confirms from a backlog of committed rows, against raw pika
   publishing the same messages one by one with a confirm each, in the same
   run; then commit-to-publish latency of single bookings.

The machine is shared and noisy: read the ratios and the CPU per request.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import pathlib
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pika
import requests
import sqlalchemy as sa

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import shared  # noqa: E402
from benchmarks.proc import cpu_seconds  # noqa: E402
from benchmarks.vhost import make_vhost  # noqa: E402
from tests.support import free_port, queue_depth  # noqa: E402

BIN = pathlib.Path(sys.executable).parent
BARE_APP = '''
from flask import Flask, jsonify, request
def create_app():
    app = Flask(__name__)
    @app.post("/v1/bookings")
    def create():
        return jsonify(request.get_json()), 201
    return app
'''
def children(pid: int) -> list[int]:
    return [int(p) for p in pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def wait_http(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise SystemExit(f"port {port} did not answer")


def body(i: int) -> bytes:
    start = datetime(2035, 1, 1, tzinfo=UTC) + timedelta(hours=2 * i)
    return json.dumps({
        "resource_id": f"bench-{i % 50}",
        "starts_at": start.isoformat(),
        "ends_at": (start + timedelta(hours=1)).isoformat(),
        "customer": {"name": "Bench", "email": "bench@example.org", "timezone": "Europe/Paris"},
    }).encode()


def drive(port: int, n: int, clients: int, offset: int) -> dict:
    """``n`` POSTs from ``clients`` threads (http.client: the lightest client, the cores are shared)."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    headers = {"Authorization": "Bearer bench", "Content-Type": "application/json"}

    def one(i: int) -> None:
        nonlocal errors
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # gunicorn sync workers close after each
        conn.request("POST", "/v1/bookings", body=body(offset + i), headers=headers)
        status = conn.getresponse().status
        conn.close()
        elapsed = time.perf_counter() - t0
        with lock:
            latencies.append(elapsed)
            errors += status != 201

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(n)))
    wall = time.perf_counter() - started
    latencies.sort()
    return {"rps": n / wall, "p50": statistics.median(latencies) * 1000,
            "p99": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000, "errors": errors}


def serve(app_ref: str, workers: int, env: dict, cwd: str, n: int, clients: int, offset: int) -> dict:
    port = free_port()
    proc = subprocess.Popen([str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
                             "--worker-class", "sync", "--log-level", "warning", app_ref],
                            env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(port)
        drive(port, min(300, n), clients, offset + 10**6)  # warm-up: every worker imported and connected
        pids = children(proc.pid)
        before = sum(cpu_seconds(p) for p in pids)
        result = drive(port, n, clients, offset)
        result["cpu_ms"] = (sum(cpu_seconds(p) for p in pids) - before) * 1000 / n
        result["load"] = os.getloadavg()[0]
        return result
    finally:
        proc.terminate()
        proc.wait(20)


def http_round(args, env_for: dict, tmp: str, offset: int) -> dict:
    results = {}
    app = "booking_service.api.app:create_app()"
    for label, ref, env in (("bare Flask endpoint", "bare_app:create_app()", env_for["sqlite"]),
                            ("POST /v1/bookings, SQLite", app, env_for["sqlite"]),
                            ("POST /v1/bookings, PostgreSQL", app, env_for["postgresql"])):
        results[label] = serve(ref, args.workers, env, tmp, args.requests, args.clients, offset)
        offset += 2 * 10**6
    return results


def print_http(title: str, results: dict) -> None:
    bare = results["bare Flask endpoint"]
    print(f"\n{title}\n")
    print("| endpoint | req/s | x bare | p50 ms | p99 ms | p99/p50 | CPU ms/req | x bare CPU | non-201 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, r in results.items():
        print(f"| {label} | {r['rps']:.0f} | {r['rps'] / bare['rps']:.2f} | {r['p50']:.1f} | {r['p99']:.1f} | "
              f"{r['p99'] / r['p50']:.1f} | {r['cpu_ms']:.2f} | {r['cpu_ms'] / bare['cpu_ms']:.2f} | {r['errors']} |")
    load = results["POST /v1/bookings, PostgreSQL"]["load"]
    print(f"(load average at the end: {load:.2f} on {os.cpu_count()} cores)")


def start_backlog_worker(amqp_url: str, backlog: int, tmp: pathlib.Path, niceness: int):
    """A notification worker (CLI only, under ``nice -n niceness``) on a throwaway vhost.

    ``backlog`` dispatch messages are waiting for it.
    """
    from tests.notification.harness import declare_topology, dispatch_message, notification

    url, drop = make_vhost(amqp_url)
    declare_topology(url)
    conn = pika.BlockingConnection(pika.URLParameters(url))
    channel = conn.channel()
    for _ in range(backlog):
        m = dispatch_message(notification(tokens=()))
        channel.basic_publish(shared.EXCHANGE, m.routing_key, m.body,
                              pika.BasicProperties(headers=m.headers, **m.properties))
    conn.close()
    env = {**os.environ, "AMQP_URL": url, "NOTIFICATION_DATABASE_URL": f"sqlite:///{tmp / 'notification.db'}",
           "EMAIL_FILE_DIR": str(tmp / "email"), "PUSH_BACKEND": "file", "PUSH_FILE_DIR": str(tmp / "push"),
           "NOTIFICATION_METRICS_PORT": "0", "NOTIFICATION_LOG_FORMAT": "json"}
    subprocess.run([str(BIN / "notification-service"), "migrate"], env=env, check=True, capture_output=True)
    worker = subprocess.Popen(["nice", "-n", str(niceness),
                               str(BIN / "celery"), "-A", "notification_service.celery_app", "worker",
                               "-Q", ",".join(shared.WORK_QUEUES), "-c", "2", "--without-gossip", "--without-mingle"],
                              env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    return url, worker, drop


def stop_worker(worker: subprocess.Popen) -> None:
    """Warm shutdown; a prefork worker busy with a backlog on loaded cores may outlast it, then its group is killed."""
    worker.terminate()
    try:
        worker.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)


def bound_vhost(amqp_url: str):
    url, drop = make_vhost(amqp_url)
    conn = pika.BlockingConnection(pika.URLParameters(url))
    channel = conn.channel()
    channel.exchange_declare(shared.EXCHANGE, "topic", durable=True)
    channel.queue_declare("bench.dispatch", durable=True)
    for lane in shared.Lane:  # the relay publishes to the dispatch lane of each row's priority
        channel.queue_bind("bench.dispatch", shared.EXCHANGE, shared.lane_queue(shared.DISPATCH_QUEUE, lane))
    return url, conn, channel, drop


def commit_bookings(engine, n: int, tag: str) -> None:
    """``n`` bookings (one due confirmation each; reminders far off) committed through the service's write path."""
    from booking_service.core.bookings import NewBooking, create, prepare

    for i in range(n):
        start = datetime(2037, 1, 1, tzinfo=UTC) + timedelta(hours=2 * i)
        values, rows = prepare(NewBooking(f"{tag}-{uuid.uuid4().hex[:6]}", start, start + timedelta(hours=1),
                                          "Bench", "bench@example.org"), "bench", timedelta(days=365 * 50))
        create(engine, values, rows)


def relay_process(database_url: str, amqp_url: str, poll: float) -> subprocess.Popen:
    env = {**os.environ, "AMQP_URL": amqp_url, "BOOKING_DATABASE_URL": database_url, "BOOKING_LOG_FORMAT": "json",
           "BOOKING_LOG_LEVEL": "INFO", "BOOKING_RELAY_POLL_SECONDS": str(poll)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return subprocess.Popen([str(BIN / "booking-service"), "relay"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def raw_one_by_one(url: str, bodies: list[shared.TaskMessage]) -> float:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    channel = conn.channel()
    channel.confirm_delivery()
    started = time.perf_counter()
    for m in bodies:
        channel.basic_publish(shared.EXCHANGE, m.routing_key, m.body,
                              pika.BasicProperties(headers=m.headers, **m.properties), mandatory=True)
    rate = len(bodies) / (time.perf_counter() - started)
    conn.close()
    return rate


def relay_round(database_url: str, amqp_url: str, rows: int, samples: int, poll: float) -> dict:
    from booking_service.relay.message import build_message
    from booking_service.storage.db import make_engine
    from booking_service.storage.models import OutboxMessage

    outbox = OutboxMessage.__table__
    engine = make_engine(database_url)
    with engine.begin() as conn:  # earlier phases' rows are not part of this measurement
        conn.execute(sa.update(outbox).where(outbox.c.status == "pending").values(status="superseded"))
    url, conn, channel, drop = bound_vhost(amqp_url)
    try:
        commit_bookings(engine, rows, "thr")
        with engine.begin() as c:  # held back until the relay runs, so its start-up is not measured
            c.execute(sa.update(outbox).where(outbox.c.status == "pending").values(status="held"))
            due = c.execute(sa.select(outbox).where(outbox.c.status == "held")).all()
        raw = raw_one_by_one(url, [build_message(r) for r in due])
        channel.queue_purge("bench.dispatch")

        def published() -> int:
            with engine.connect() as c:
                query = sa.select(sa.func.count()).select_from(outbox).where(outbox.c.status == "published")
                return c.execute(query).scalar_one()

        relay = relay_process(database_url, url, poll)
        commit_bookings(engine, 1, "warm")  # the relay is up once this one is published
        while published() < 1:
            time.sleep(0.01)
        started = time.perf_counter()
        with engine.begin() as c:
            c.execute(sa.update(outbox).where(outbox.c.status == "held").values(status="pending"))
        while published() < len(due) + 1:
            time.sleep(0.02)  # counting is a query too: not too often on two shared cores
            if time.perf_counter() - started > 300:
                raise SystemExit("relay did not publish the backlog in 300 s")
        relay_rate = len(due) / (time.perf_counter() - started)
        channel.queue_purge("bench.dispatch")
        latencies = []
        from booking_service.core.bookings import NewBooking, create, prepare

        for i in range(samples):
            start = datetime(2038, 1, 1, tzinfo=UTC) + timedelta(hours=2 * i)
            values, out = prepare(NewBooking(f"lat-{uuid.uuid4().hex[:6]}", start, start + timedelta(hours=1), "Bench",
                                             "bench@example.org"), "bench", timedelta(days=365 * 50))
            create(engine, values, out)
            committed = time.perf_counter()
            for method, _props, raw_body in channel.consume("bench.dispatch", auto_ack=True, inactivity_timeout=10):
                if method is None:
                    raise SystemExit("no message within 10 s")
                if json.loads(raw_body)[1]["message"]["booking"]["id"] == values["id"]:
                    latencies.append(time.perf_counter() - committed)
                    break
            channel.cancel()
            time.sleep(random.uniform(0, 0.05))  # commits land anywhere in the relay's poll cycle
        relay.terminate()
        relay.wait(20)
    finally:
        conn.close()
        drop()
        engine.dispose()
    latencies.sort()
    return {"rows": len(due), "relay_rate": relay_rate, "raw_rate": raw, "p50": statistics.median(latencies) * 1000,
            "p99": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000, "max": latencies[-1] * 1000,
            "samples": len(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--backlog", type=int, default=0,
                        help="also measure while a worker drains this many dispatch messages")
    parser.add_argument("--backlog-nice", type=lambda v: [int(n) for n in v.split(",")], default=[10],
                        help="niceness of that worker, one backlog round per value (default 10, as in the Procfile)")
    parser.add_argument("--relay-rows", type=int, default=2000)
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--poll", type=float, default=0.02, help="relay poll interval (BOOKING_RELAY_POLL_SECONDS)")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-relay", action="store_true")
    args = parser.parse_args()
    amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672//")
    from booking_service.runtime import logs
    from booking_service.storage.migrate import upgrade

    logs.configure("json", "WARNING")
    admin = sa.create_engine(os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@localhost:5432/test"),
                             isolation_level="AUTOCOMMIT")
    pg_name = f"bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{pg_name}"'))
    worker = drop_vhost = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            urls = {"sqlite": f"sqlite:///{tmp}/bench.db",
                    "postgresql": admin.url.set(database=pg_name).render_as_string(hide_password=False)}
            for url in urls.values():
                upgrade(url)
            pathlib.Path(tmp, "bare_app.py").write_text(BARE_APP)
            base = {**os.environ, "BOOKING_API_KEYS": "bench", "BOOKING_LOG_LEVEL": "INFO",
                    "BOOKING_LOG_FORMAT": "json", "AMQP_URL": amqp_url, "PYTHONPATH": f"{tmp}{os.pathsep}{ROOT}"}
            base.pop("PROMETHEUS_MULTIPROC_DIR", None)
            env_for = {name: {**base, "BOOKING_DATABASE_URL": url} for name, url in urls.items()}
            header = (f"gunicorn {args.workers} sync workers, {args.clients} client threads, {args.requests} requests "
                      f"each, {os.cpu_count()} cores, request log at INFO (JSON, discarded)")
            if not args.skip_http:
                print_http(header, http_round(args, env_for, tmp, 0))
            backlog_rounds = args.backlog_nice if args.backlog and not args.skip_http else ()
            for round_number, niceness in enumerate(backlog_rounds, 1):
                url, worker, drop_vhost = start_backlog_worker(amqp_url, args.backlog, pathlib.Path(tmp), niceness)
                results = http_round(args, env_for, tmp, 10**7 * round_number)  # slots never used before
                left = sum(queue_depth(url, queue) for queue in shared.WORK_QUEUES if ".push." not in queue)
                stop_worker(worker)
                worker = None
                drop_vhost()
                drop_vhost = None
                print_http(f"{header}; meanwhile a notification worker (`nice -n {niceness} celery … worker -c 2`) "
                           f"drains a backlog of {args.backlog} dispatch messages "
                           f"({left} messages still queued at the end)",
                           results)
            if not args.skip_relay:
                print(f"\nrelay (booking-service relay, own process, poll {args.poll} s; PostgreSQL wakes on NOTIFY)\n")
                print("| database | rows | relay rows/s (confirmed) | raw pika one-by-one confirmed msg/s | x raw | "
                      "commit-to-publish p50 ms | p99 ms | max ms |")
                print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
                for name, url in urls.items():
                    r = relay_round(url, amqp_url, args.relay_rows, args.latency_samples, args.poll)
                    print(f"| {name} | {r['rows']} | {r['relay_rate']:.0f} | {r['raw_rate']:.0f} | "
                          f"{r['relay_rate'] / r['raw_rate']:.2f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['max']:.1f} |")
        finally:
            if worker is not None:
                stop_worker(worker)
            if drop_vhost is not None:
                drop_vhost()
            with admin.connect() as c:
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
