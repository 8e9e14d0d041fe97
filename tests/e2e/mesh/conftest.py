"""The whole mesh as real subprocesses: gunicorn, the outbox relay, the receipts consumer and a Celery worker.

Each test gets a fresh RabbitMQ vhost, a fresh PostgreSQL database for the
booking service, a fresh SQLite file for the notification service, temporary
sink folders, and a fake HTTP push provider served from this process.

The broker is the ``mesh_amqp_url`` fixture: a vhost of the shared broker here;
a test module overrides it to run the same mesh on other nodes (test_cluster.py:
a vhost of a private three-node cluster, every node in the URL).
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

import shared
from tests.support import free_port, wait_for

VENV_BIN = pathlib.Path(sys.executable).parent
API_KEY = "e2e-key"


@dataclass
class FakePush:
    """A push provider on loopback: records every request, answers ``status`` (settable)."""

    status: int = 200
    calls: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Tokens answered 404 ``UNREGISTERED``, as FCM answers for a token that no longer exists.
    gone: set = field(default_factory=set)

    def handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                doc = json.loads(body or b"{}")
                with fake.lock:
                    gone = doc.get("message", {}).get("token") in fake.gone
                    status = 404 if gone else fake.status
                    fake.calls.append({"status": status, "headers": dict(self.headers), "json": doc,
                                       "at": time.monotonic()})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if status == 503:
                    self.send_header("Retry-After", "1")
                self.end_headers()
                if gone:
                    self.wfile.write(json.dumps({"error": {"code": 404, "status": "NOT_FOUND", "details": [
                        {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                         "errorCode": "UNREGISTERED"}]}}).encode())
                    return
                self.wfile.write(json.dumps({"name": f"projects/fake/messages/{len(fake.calls)}"}).encode())

            def log_message(self, *args):
                return

        return Handler

    def delivered(self) -> list[dict]:
        with self.lock:
            return [c for c in self.calls if c["status"] == 200]


class Mesh:
    def __init__(self, root: pathlib.Path, env: dict[str, str]):
        self.root = root
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}
        self.base_url = f"http://{env['BOOKING_BIND']}"
        self.email_dir = pathlib.Path(env["EMAIL_FILE_DIR"])
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {API_KEY}"

    def run(self, *argv: str) -> None:
        subprocess.run(argv, env=self.env, check=True, cwd=self.root, timeout=120)

    def start(self, name: str, *argv: str) -> None:
        # The process writes to its own copy of the descriptor: ours can close once it runs.
        with open(self.root / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
                         for p in sorted(self.root.glob("*.log")))

    # What the sinks received -------------------------------------------------
    def emails(self) -> list[email.message.EmailMessage]:
        messages = []
        for path in sorted(self.email_dir.glob("*.eml")):
            messages.append(email.message_from_bytes(path.read_bytes(), policy=email.policy.default))
        return messages

    def deliveries(self, booking_id: str) -> list:
        """The notification service's delivery-log rows of one booking (read in-process)."""
        import sqlalchemy as sa

        from notification_service.delivery.log import delivery_log
        from notification_service.delivery.tables import deliveries

        log = delivery_log(self.env["NOTIFICATION_DATABASE_URL"])
        with log.engine.connect() as conn:
            return list(conn.execute(sa.select(deliveries).where(deliveries.c.booking_id == booking_id)))

    def settled(self, booking_id: str, expected: int) -> list:
        """Wait until ``expected`` deliveries of the booking exist and each is final; return them.

        A final delivery (sent, stale, expired, dead) is never sent again, so after this the
        counts at the sinks can only be what they are: a late duplicate would have shown.
        """
        def final():
            rows = self.deliveries(booking_id)
            done = len(rows) >= expected and all(r.status in ("sent", "stale", "expired", "dead") for r in rows)
            return rows if done else None

        return wait_for(final, 60, f"{expected} final deliveries of booking {booking_id}")

    def outbox(self, booking_id: str) -> list:
        """The booking service's outbox rows of one booking (read in-process)."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.env["BOOKING_DATABASE_URL"])
        try:
            with engine.connect() as conn:
                return list(conn.execute(sa.text("SELECT event, status FROM outbox WHERE booking_id = :b"),
                                         {"b": booking_id}))
        finally:
            engine.dispose()

    def emails_for(self, booking_id: str, event: str) -> list[email.message.EmailMessage]:
        return [
            m for m in self.emails() if m["X-Booking-Id"] == booking_id and m["X-Notification-Event"] == event
        ]

    # HTTP ---------------------------------------------------------------------
    def post(self, path: str, **kwargs) -> requests.Response:
        return self.session.post(self.base_url + path, timeout=10, **kwargs)

    def patch(self, path: str, **kwargs) -> requests.Response:
        return self.session.patch(self.base_url + path, timeout=10, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.session.get(self.base_url + path, timeout=10, **kwargs)


@contextlib.contextmanager
def serving_fake_push():
    """A ``FakePush`` served on loopback (its ``url`` set) until the block ends."""
    fake = FakePush()
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/v1/projects/fake/messages:send"
    try:
        yield fake
    finally:
        server.shutdown()


@pytest.fixture
def fake_push():
    with serving_fake_push() as fake:
        yield fake


@pytest.fixture
def mesh_amqp_url(request):
    """The broker the mesh runs on: a fresh vhost of the shared broker (a module may override this)."""
    return request.getfixturevalue("vhost_url")


@pytest.fixture
def mesh(tmp_path, mesh_amqp_url, postgres_url, fake_push):
    with running_mesh(tmp_path, mesh_env(tmp_path, mesh_amqp_url, postgres_url, fake_push.url)) as m:
        yield m


def mesh_env(root: pathlib.Path, amqp_url: str, postgres_url: str, push_url: str) -> dict[str, str]:
    """The environment every process of a mesh rooted at ``root`` runs with."""
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "AMQP_URL": amqp_url,
        "BOOKING_DATABASE_URL": postgres_url,
        "BOOKING_API_KEYS": API_KEY,
        "BOOKING_BIND": f"127.0.0.1:{free_port()}",
        "BOOKING_LOG_FORMAT": "json",
        "BOOKING_RELAY_POLL_SECONDS": "0.1",
        # Reminders due 30 s before the start, so a test can watch one happen.
        "BOOKING_REMINDER_LEAD_SECONDS": "30",
        "NOTIFICATION_DATABASE_URL": f"sqlite:///{root / 'notification.db'}",
        "NOTIFICATION_LOG_FORMAT": "json",
        "NOTIFICATION_METRICS_PORT": str(free_port()),
        "NOTIFICATION_RETRY_BASE_SECONDS": "0.2",
        # A provider outage outlasts a cancellation's way through the mesh (Retry-After: 1 per retry).
        "NOTIFICATION_MAX_RETRIES": "30",
        "NOTIFICATION_RECEIPTS_POLL_SECONDS": "0.2",
        "EMAIL_BACKEND": "file",
        "EMAIL_FILE_DIR": str(root / "email"),
        "PUSH_BACKEND": "http",
        "PUSH_HTTP_URL": push_url,
        "PUSH_HTTP_TOKEN": "fake-token",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


@contextlib.contextmanager
def running_mesh(root: pathlib.Path, env: dict[str, str], *, webhooks: bool = False, quiet: bool = False):
    """Migrate, start the mesh's processes (and the webhook receiver if asked), yield the ``Mesh``, stop them.

    The processes' logs are printed at the end (pytest shows them for a failed test) unless ``quiet``.
    """
    m = Mesh(root, env)
    m.run("booking-service", "migrate")
    m.run("notification-service", "migrate")
    m.start(
        "worker",
        "celery", "-A", "notification_service.celery_app", "worker",
        "--queues", ",".join(shared.WORK_QUEUES),  # every lane, as the Procfile's two workers do
        "--pool", "threads", "--concurrency", "4", "--hostname", f"e2e-{root.name}@%h",
        "--without-gossip", "--without-mingle", "--loglevel", "INFO",
    )  # fmt: skip
    m.start("api", "booking-service", "serve")
    m.start("relay", "booking-service", "relay")
    m.start("receipts", "booking-service", "receipts")
    if webhooks:
        m.start("webhooks", "notification-service", "webhooks")
    try:
        wait_for(lambda: _ok(m.base_url + "/healthz"), 30, "the booking API to answer")
        if webhooks:
            wait_for(lambda: _ok(f"http://{env['NOTIFICATION_WEBHOOK_BIND']}/healthz"), 60,
                     "the webhook receiver to answer")
        yield m
    finally:
        m.stop()
        if not quiet:
            print(m.logs())


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False
