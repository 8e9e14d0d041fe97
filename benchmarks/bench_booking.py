"""Benchmark: POST /v1/bookings under gunicorn beside a bare Flask endpoint, and commit-to-publish latency.

    .venv/bin/python benchmarks/bench_booking.py [--requests 2000] [--clients 8] [--workers 4] [--database sqlite|postgresql]

Everything runs on loopback, bounded in count: gunicorn serves both apps with
the same settings in one run, so the ratio is what to read; then the outbox
relay publishes to a temporary vhost and the time from each outbox row's
commit to its arrival on a bound queue is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pika
import requests
import sqlalchemy as sa

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.vhost import make_vhost  # noqa: E402

BARE_APP = '''
from flask import Flask, jsonify, request
def create_app():
    app = Flask(__name__)
    @app.post("/v1/bookings")
    def create():
        return jsonify(request.get_json()), 201
    return app
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer")


def gunicorn(app_ref: str, port: int, workers: int, env: dict, cwd: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
         "--worker-class", "sync", "--log-level", "warning", app_ref],
        env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def body(i: int) -> dict:
    start = datetime(2035, 1, 1, tzinfo=timezone.utc) + timedelta(hours=2 * i)
    return {
        "resource_id": f"bench-{i % 50}",
        "starts_at": start.isoformat(),
        "ends_at": (start + timedelta(hours=1)).isoformat(),
        "customer": {"name": "Bench", "email": "bench@example.org", "timezone": "Europe/Paris"},
    }


def drive(url: str, n: int, clients: int, headers: dict, offset: int = 0) -> dict:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    local = threading.local()

    def one(i: int) -> None:
        nonlocal errors
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        t0 = time.perf_counter()
        r = session.post(url, json=body(offset + i), headers=headers, timeout=30)
        elapsed = time.perf_counter() - t0
        with lock:
            latencies.append(elapsed)
            errors += r.status_code != 201

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(n)))
    wall = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": n / wall,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "errors": errors,
    }


def commit_to_publish(database_url: str, amqp_url: str, n: int, poll: float) -> dict:
    import shared
    from booking_service.bookings import NewBooking, create
    from booking_service.db import make_engine, make_session_factory
    from booking_service.relay import Relay

    vhost, drop = make_vhost(amqp_url)
    connection = pika.BlockingConnection(pika.URLParameters(vhost))
    channel = connection.channel()
    channel.exchange_declare(shared.EXCHANGE, "direct", durable=True)
    channel.queue_declare("bench.dispatch", durable=True, arguments={"x-max-priority": shared.MAX_PRIORITY})
    channel.queue_bind("bench.dispatch", shared.EXCHANGE, shared.DISPATCH_QUEUE)
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    with factory() as session, session.begin():  # the HTTP phase's rows are not part of this measurement
        session.execute(sa.text("UPDATE outbox SET status = 'superseded' WHERE status = 'pending'"))
    relay = Relay(factory, vhost, poll_seconds=poll)
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    committed: dict[str, float] = {}
    latencies: list[float] = []
    try:
        for i in range(n):
            with factory() as session, session.begin():
                start = datetime(2036, 1, 1, tzinfo=timezone.utc) + timedelta(hours=2 * i)
                booking = create(session, NewBooking(f"lat-{uuid.uuid4().hex[:6]}", start, start + timedelta(hours=1),
                                                     "Bench", "bench@example.org"), "bench", timedelta(0))
                booking_id = booking.id
            committed[booking_id] = time.perf_counter()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                method, _props, raw = channel.basic_get("bench.dispatch", auto_ack=True)
                if method is not None and json.loads(raw)[1]["message"]["booking"]["id"] in committed:
                    arrived = time.perf_counter()
                    message = json.loads(raw)[1]["message"]
                    latencies.append(arrived - committed[message["booking"]["id"]])
                    break
                time.sleep(0.001)
            time.sleep(random.uniform(0, poll))  # commits land anywhere in the poll cycle
    finally:
        relay.stop()
        thread.join(10)
        connection.close()
        engine.dispose()
        drop()
    latencies.sort()
    return {"n": len(latencies), "p50": statistics.median(latencies) * 1000,
            "p99": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000, "max": latencies[-1] * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--latency-samples", type=int, default=100)
    parser.add_argument("--poll", type=float, default=0.1, help="relay poll interval (BOOKING_RELAY_POLL_SECONDS)")
    args = parser.parse_args()
    amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672//")
    from booking_service import logs

    logs.configure("console", "WARNING")

    with tempfile.TemporaryDirectory() as tmp:
        if args.database == "sqlite":
            database_url = f"sqlite:///{tmp}/bench.db"
            drop_db = None
        else:
            admin = sa.create_engine(os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@localhost:5432/test"),
                                     isolation_level="AUTOCOMMIT")
            name = f"bench_{uuid.uuid4().hex[:8]}"
            with admin.connect() as c:
                c.execute(sa.text(f'CREATE DATABASE "{name}"'))
            database_url = admin.url.set(database=name).render_as_string(hide_password=False)

            def drop_db():
                with admin.connect() as c:
                    c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        from booking_service.migrate import upgrade

        upgrade(database_url)
        pathlib.Path(tmp, "bare_app.py").write_text(BARE_APP)
        env = {**os.environ, "BOOKING_DATABASE_URL": database_url, "BOOKING_API_KEYS": "bench",
               "BOOKING_LOG_LEVEL": "WARNING", "BOOKING_LOG_FORMAT": "json", "AMQP_URL": amqp_url,
               "PYTHONPATH": f"{tmp}{os.pathsep}{ROOT}"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        results = {}
        for label, ref in (("bare Flask endpoint", "bare_app:create_app()"), ("POST /v1/bookings", "booking_service.app:create_app()")):
            port = free_port()
            proc = gunicorn(ref, port, args.workers, env, tmp)
            try:
                wait_http(f"http://127.0.0.1:{port}/")
                url = f"http://127.0.0.1:{port}/v1/bookings"
                drive(url, min(200, args.requests), args.clients, {"Authorization": "Bearer bench"}, offset=10**6)  # warm-up
                results[label] = drive(url, args.requests, args.clients, {"Authorization": "Bearer bench"})
            finally:
                proc.terminate()
                proc.wait(10)
        latency = commit_to_publish(database_url, amqp_url, args.latency_samples, poll=args.poll)
        if drop_db:
            drop_db()

    bare, real = results["bare Flask endpoint"], results["POST /v1/bookings"]
    print(f"\ngunicorn {args.workers} sync workers, {args.clients} client threads, {args.requests} requests, "
          f"database {args.database}, {os.cpu_count()} cores\n")
    print(f"| {'endpoint':<22} | {'req/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | {'non-2xx':>7} |")
    print(f"|{'-' * 24}|{'-' * 10}|{'-' * 9}|{'-' * 9}|{'-' * 9}|")
    for label, r in results.items():
        print(f"| {label:<22} | {r['rps']:>8.0f} | {r['p50']:>7.2f} | {r['p99']:>7.2f} | {r['errors']:>7} |")
    print(f"\nPOST /v1/bookings throughput = {real['rps'] / bare['rps']:.2f} x the bare endpoint; "
          f"p50 = {real['p50'] / bare['p50']:.2f} x\n")
    print(f"commit-to-publish (relay short poll {args.poll} s, {latency['n']} samples): "
          f"p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms, max {latency['max']:.1f} ms")


if __name__ == "__main__":
    main()
