"""The webhook receiver against a bare Flask endpoint: events/s and CPU per event, from 1 and 8 clients.

Both run under gunicorn with the receiver's config (``gthread``, NOTIFICATION_WEBHOOK_WORKERS processes,
4 threads). The receiver gets signed ``delivered`` events for deliveries that were sent (each is verified,
stored once, applied, and writes its receipt in one transaction); the bare endpoint gets the same bodies
and only parses them. CPU is the server processes' own (gunicorn arbiter and workers, from /proc), not the
clients'. Loopback only, bounded in count.

    .venv/bin/python benchmarks/bench_webhooks.py [--events 2000] [--database-url postgresql+psycopg://…]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime

import requests

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.proc import cpu_seconds  # noqa: E402  (benchmarks run as scripts from the checkout)
from tests.support import free_port, wait_for  # noqa: E402

SECRET = "bench-secret"


def _children(pid: int) -> list[int]:
    found = [pid]
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in children:
            found += _children(int(child))
    return found


def _server_cpu(pid: int) -> float:
    return sum(cpu_seconds(p) for p in _children(pid))


def _sent_deliveries(url: str, count: int) -> list[str]:
    """``count`` deliveries recorded sent, each with its provider message id (returned)."""
    from notification_service.delivery.machine import BookingRef
    from notification_service.delivery.migrate import upgrade
    from notification_service.delivery.repository import SqlDeliveryLog

    upgrade(url)
    log = SqlDeliveryLog(url)
    ids = []
    for _ in range(count):
        pid = f"<{uuid.uuid4().hex}@bench>"
        opened = log.open(str(uuid.uuid4()), "booking.confirmed", BookingRef(str(uuid.uuid4()), 1),
                          [("email", f"{uuid.uuid4().hex[:8]}@example.org")], datetime.now(UTC))
        did = opened.pending[0][2]
        claim = log.claim(did, "bench", datetime.now(UTC), datetime.now(UTC))
        from notification_service.delivery.status import DeliveryStatus

        log.finish(did, "bench", claim.attempt, DeliveryStatus.SENT, datetime.now(UTC), provider_message_id=pid,
                   provider="email_http")
        ids.append(pid)
    log.engine.dispose()
    return ids


def signed_event(message_id: str) -> tuple[bytes, dict]:
    body = json.dumps({"id": uuid.uuid4().hex, "type": "delivered", "message_id": message_id,
                       "occurred_at": datetime.now(UTC).isoformat()}).encode()
    stamp = str(int(time.time()))
    digest = hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return body, {"Content-Type": "application/json", "X-Webhook-Timestamp": stamp, "X-Signature": f"sha256={digest}"}


def _serve(app: str, env: dict) -> subprocess.Popen:
    argv = [sys.executable, "-m", "gunicorn", "--config", "python:notification_service.webhooks.gunicorn_conf", app]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    base = f"http://{env['NOTIFICATION_WEBHOOK_BIND']}"

    def up() -> bool:
        try:
            return requests.get(f"{base}/healthz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    wait_for(up, timeout=60, what=f"{app} answering")
    return proc


def _run(base: str, pid: int, message_ids: list[str], clients: int) -> tuple[float, float, int]:
    requests_ = [signed_event(m) for m in message_ids]
    chunks = [requests_[i::clients] for i in range(clients)]
    errors = []

    def client(chunk):
        session = requests.Session()
        for body, headers in chunk:
            answer = session.post(f"{base}/webhooks/email/http", data=body, headers=headers, timeout=30)
            if answer.status_code != 200:  # 202 (unmatched) would mean the event found no delivery
                errors.append(answer.status_code)

    threads = [threading.Thread(target=client, args=(c,)) for c in chunks]
    cpu0, t0 = _server_cpu(pid), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed, cpu = time.perf_counter() - t0, _server_cpu(pid) - cpu0
    return len(message_ids) / elapsed, cpu / len(message_ids) * 1000, len(errors)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000, help="events per run (default 2000)")
    parser.add_argument("--database-url", help="default: a SQLite file in a temporary folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        message_ids = _sent_deliveries(url, args.events * 2)
        rows = []
        for name, app in (("bare Flask", "benchmarks.bare_flask:create_app()"),
                          ("webhook receiver", "notification_service.webhooks.gunicorn_conf:app()")):
            env = {**os.environ, "NOTIFICATION_DATABASE_URL": url, "NOTIFICATION_WEBHOOK_SECRETS": SECRET,
                   "NOTIFICATION_WEBHOOK_BIND": f"127.0.0.1:{free_port()}", "NOTIFICATION_LOG_LEVEL": "WARNING",
                   "PYTHONPATH": str(ROOT)}
            proc = _serve(app, env)
            try:
                for clients, ids in ((1, message_ids[:args.events]), (8, message_ids[args.events:])):
                    rate, cpu_ms, errors = _run(f"http://{env['NOTIFICATION_WEBHOOK_BIND']}", proc.pid, ids, clients)
                    rows.append((name, clients, rate, cpu_ms, errors))
            finally:
                proc.terminate()
                proc.wait(30)
    print(f"database: {'PostgreSQL' if args.database_url else 'SQLite'}; {args.events} events per run")
    print("| endpoint | clients | events/s | CPU ms/event | errors |\n| --- | ---: | ---: | ---: | ---: |")
    for name, clients, rate, cpu_ms, errors in rows:
        print(f"| {name} | {clients} | {rate:.0f} | {cpu_ms:.2f} | {errors} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
