"""Webhook → timeline latency through a running mesh: from the receiver's 200 to GET …/notifications showing it.

The whole mesh as processes (booking API, outbox relay, receipts consumer, Celery worker, and
``notification-service webhooks``; tests/e2e/mesh/conftest.py starts them) on a fresh vhost of the broker
on localhost and a fresh PostgreSQL database; e-mail through the HTTP e-mail provider faked on loopback.
``--bookings`` bookings are made and their confirmation e-mails sent; then ``--clients`` threads each take
a booking, waits a random 0–``--spread`` s (events arrive at random times, not in step with the publisher's
ticks: a client that posted right after seeing the last tick would always wait a whole tick), POSTs a signed
``delivered`` event for its provider message id, and from the 200 polls the booking API every ``--poll`` s
until the timeline shows ``delivered``. The path in between: the receiver writes the
receipt, the worker's receipt publisher picks it up (every NOTIFICATION_RECEIPTS_POLL_SECONDS, default 1 s),
RabbitMQ, the booking receipts consumer stores it, the API answers.

    .venv/bin/python benchmarks/bench_webhook_latency.py [--bookings 100] [--clients 4] [--receipts-poll 1.0]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import sys
import tempfile
import threading
import time
import uuid

import requests

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_webhooks import SECRET, signed_event  # noqa: E402  (benchmarks run as scripts)
from benchmarks.vhost import make_vhost  # noqa: E402
from tests.conftest import AMQP_URL, POSTGRES_ADMIN_URL, fresh_postgres  # noqa: E402
from tests.e2e.mesh.conftest import Mesh, mesh_env, running_mesh, serving_fake_push  # noqa: E402
from tests.e2e.mesh.test_webhooks import book, confirmation  # noqa: E402
from tests.notification.fake_email_api import FakeEmailApi  # noqa: E402
from tests.support import free_port, wait_for  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def sent_message_ids(mesh: Mesh, count: int) -> list[tuple[str, str]]:
    """``count`` bookings whose confirmation e-mail was sent: (booking id, provider message id) each."""
    bookings = [book(mesh, f"bench-{uuid.uuid4().hex[:8]}@example.org", f"device-{uuid.uuid4().hex[:8]}")["id"]
                for _ in range(count)]
    found = []
    for booking_id in bookings:
        def sent(booking_id=booking_id):
            email = confirmation(mesh, booking_id).get("email", {})
            return email.get("provider_message_id") if email.get("status") == "sent" else None

        found.append((booking_id, wait_for(sent, 120, f"booking {booking_id}'s e-mail sent")))
    return found


def measure(mesh: Mesh, url: str, work: list[tuple[str, str]], clients: int, poll: float,
            spread: float) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()
    chunks = [work[i::clients] for i in range(clients)]

    def client(chunk: list[tuple[str, str]]) -> None:
        session = requests.Session()
        for booking_id, message_id in chunk:
            time.sleep(random.uniform(0, spread))  # noqa: S311 - a spread of arrival times, not a secret
            body, headers = signed_event(message_id)
            answer = session.post(url, data=body, headers=headers, timeout=30)
            t0 = time.perf_counter()
            if answer.status_code != 200 or answer.json() != {"status": "applied"}:
                raise RuntimeError(f"webhook answered {answer.status_code}: {answer.text}")
            wait_for(lambda b=booking_id: confirmation(mesh, b)["email"]["status"] == "delivered", 60,
                     f"booking {booking_id} showing delivered", interval=poll)
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(chunk,)) for chunk in chunks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if len(latencies) != len(work):
        raise RuntimeError(f"{len(work) - len(latencies)} events never showed (see the errors above)")
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bookings", type=int, default=100, help="bookings, one delivered event each")
    parser.add_argument("--clients", type=int, default=4, help="concurrent webhook clients (default 4)")
    parser.add_argument("--poll", type=float, default=0.02, help="the clients' GET interval, s (default 0.02)")
    parser.add_argument("--spread", type=float, default=1.0, help="random wait before each event, s (default 1)")
    parser.add_argument("--receipts-poll", default="1.0", help="NOTIFICATION_RECEIPTS_POLL_SECONDS (default 1.0)")
    args = parser.parse_args()
    vhost, drop_vhost = make_vhost(os.environ.get("AMQP_URL", AMQP_URL))
    fake_email = FakeEmailApi()
    try:
        with tempfile.TemporaryDirectory() as tmp, fresh_postgres(POSTGRES_ADMIN_URL) as database, \
                serving_fake_push() as fake_push:
            root = pathlib.Path(tmp)
            env = {**mesh_env(root, vhost, database, fake_push.url),
                   "EMAIL_BACKEND": "http", "EMAIL_HTTP_URL": fake_email.url, "EMAIL_HTTP_TOKEN": "bench",
                   "NOTIFICATION_WEBHOOK_BIND": f"127.0.0.1:{free_port()}", "NOTIFICATION_WEBHOOK_WORKERS": "1",
                   "NOTIFICATION_WEBHOOK_SECRETS": SECRET, "NOTIFICATION_RECEIPTS_POLL_SECONDS": args.receipts_poll,
                   "NOTIFICATION_LOG_LEVEL": "WARNING", "BOOKING_LOG_LEVEL": "WARNING"}
            with running_mesh(root, env, webhooks=True, quiet=True) as mesh:
                work = sent_message_ids(mesh, args.bookings)
                url = f"http://{env['NOTIFICATION_WEBHOOK_BIND']}/webhooks/email/http"
                latencies = measure(mesh, url, work, args.clients, args.poll, args.spread)
    finally:
        fake_email.close()
        drop_vhost()
    ms = [x * 1000 for x in latencies]
    print(f"{len(ms)} events, {args.clients} clients, NOTIFICATION_RECEIPTS_POLL_SECONDS={args.receipts_poll}, "
          f"API polled every {args.poll * 1000:.0f} ms")
    print(f"webhook 200 → timeline delivered: p50 {pct(ms, 0.5):.0f} ms, p95 {pct(ms, 0.95):.0f} ms, "
          f"max {max(ms):.0f} ms, min {min(ms):.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
