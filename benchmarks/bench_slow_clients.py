"""The HTTP front against slow clients: gunicorn sync workers against the shipped gevent worker.

For each worker class, in one run: gunicorn with ``BOOKING_WORKERS`` workers on a SQLite file,
``--slow`` connections that send half a request and stop (half inside the headers, half inside a
chunked body), then ``--requests`` calls of ``GET /healthz`` and ``POST /v1/bookings`` from one
other client. Prints p50/p99/max per call and how many calls did not get an answer within the
client timeout. Loopback only, bounded in count and time.

    .venv/bin/python benchmarks/bench_slow_clients.py [--slow 50] [--requests 200] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import requests

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import free_port, wait_for  # noqa: E402  (benchmarks run as scripts from the checkout)

KEY = "bench"
CLASSES = {"sync (before)": "sync", "gevent ApiWorker (shipped)": "booking_service.runtime.gunicorn_worker.ApiWorker"}


def booking() -> dict:
    start = f"2031-{(uuid.uuid4().int % 12) + 1:02d}-01T09:00:00Z"
    return {"resource_id": f"room-{uuid.uuid4().hex[:10]}", "starts_at": start, "ends_at": start.replace("09", "10"),
            "customer": {"name": "Ada", "email": "ada@example.org"}}


def hold(port: int, count: int) -> list[socket.socket]:
    held = []
    for i in range(count):
        conn = socket.create_connection(("127.0.0.1", port), timeout=30)
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" if i % 2 else
                     b"POST /v1/bookings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"re")
        held.append(conn)
    return held


def timed(call, count: int, timeout: float) -> tuple[list[float], int]:
    """Latencies of ``count`` calls; after 5 unanswered in a row the rest count as unanswered (bounded time)."""
    latencies, failed, in_a_row = [], 0, 0
    for done in range(count):
        started = time.perf_counter()
        try:
            call(timeout)
            latencies.append((time.perf_counter() - started) * 1000)
            in_a_row = 0
        except requests.RequestException:
            failed += 1
            in_a_row += 1
            if in_a_row == 5:
                return sorted(latencies), failed + count - done - 1
    return sorted(latencies), failed


def percentile(values: list[float], share: float) -> str:
    return f"{values[min(len(values) - 1, int(share * len(values)))]:.1f}" if values else "—"


def run(worker_class: str, args, tmp: pathlib.Path) -> dict:
    port = free_port()
    db = tmp / f"{uuid.uuid4().hex}.db"
    env = {**os.environ, "BOOKING_DATABASE_URL": f"sqlite:///{db}", "BOOKING_API_KEYS": KEY,
           "BOOKING_BIND": f"127.0.0.1:{port}", "BOOKING_WORKERS": str(args.workers), "BOOKING_LOG_FORMAT": "json",
           "BOOKING_LOG_LEVEL": "WARNING"}
    subprocess.run([sys.executable, "-m", "booking_service", "migrate"], env=env, check=True, capture_output=True)
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn",
                             "--config", "python:booking_service.runtime.gunicorn_conf",
                             "-k", worker_class, "booking_service.api.app:create_app()"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(base), timeout=60, what="gunicorn up")
        held = hold(port, args.slow)
        try:
            time.sleep(0.5)  # let every half-sent request reach a worker
            health = timed(lambda t: requests.get(base + "/healthz", timeout=t).raise_for_status(),
                           args.requests, args.timeout)
            post = timed(lambda t: requests.post(base + "/v1/bookings", json=booking(), timeout=t,
                                                 headers={"Authorization": f"Bearer {KEY}"}).raise_for_status(),
                         args.requests // 4, args.timeout)
        finally:
            for conn in held:
                conn.close()
        return {"GET /healthz": health, "POST /v1/bookings": post}
    finally:
        proc.terminate()
        proc.wait(30)


def _answers(base: str) -> bool:
    try:
        return requests.get(base + "/healthz", timeout=1).ok
    except requests.RequestException:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=50, help="half-sent requests held open")
    parser.add_argument("--requests", type=int, default=200, help="GET /healthz calls (POSTs: a quarter of it)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=2.0, help="client timeout per call, seconds")
    args = parser.parse_args()
    print(f"{args.slow} half-sent requests held open, {args.workers} gunicorn workers, SQLite; "
          f"client timeout {args.timeout:g} s; latency in ms")
    print("| worker class | call | answered | p50 | p99 | max |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for label, worker_class in CLASSES.items():
            for call, (latencies, failed) in run(worker_class, args, pathlib.Path(tmp)).items():
                print(f"| {label} | {call} | {len(latencies)}/{len(latencies) + failed} | "
                      f"{percentile(latencies, 0.5)} | {percentile(latencies, 0.99)} | "
                      f"{percentile(latencies, 1.0)} |")


if __name__ == "__main__":
    main()
