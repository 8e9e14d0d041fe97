"""Harness for the notification tests: own vhost per module, a real worker subprocess, a fake push API."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pika
import pytest

import shared
from tests.support import DISPATCH_HIGH, free_port, queue_depth, wait_for  # noqa: F401 - queue_depth is imported from here by the tests

REPO = pathlib.Path(__file__).resolve().parents[2]
CELERY = pathlib.Path(sys.executable).parent / "celery"
CLI = pathlib.Path(sys.executable).parent / "notification-service"


# --- fake push provider -----------------------------------------------------------


class FakePush:
    """FCM-shaped push API on loopback. Scripted answers per token; records every request."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: dict[str, list[tuple[int, dict]]] = {}
        self.block: dict[str, threading.Event] = {}
        self.arrived: dict[str, threading.Event] = {}
        self.delay = 0.0  # seconds every answer takes (a slow provider)
        self.outage = False  # while set, every call is answered 503 (a provider outage)
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                return

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                token = body.get("message", {}).get("token", "")
                record = {"time": time.monotonic(), "headers": dict(self.headers), "json": body, "token": token}
                with fake.lock:
                    fake.requests.append(record)
                    answers = fake.script.get(token) or []
                    status, headers = answers.pop(0) if answers else (200, {})
                    if fake.outage:
                        status, headers = 503, {}
                    gate = fake.block.pop(token, None)
                if token in fake.arrived:
                    fake.arrived[token].set()
                if gate is not None:
                    gate.wait(60)  # hold the worker mid-send until the test lets go
                    return  # connection dropped without an answer
                if fake.delay:
                    time.sleep(fake.delay)
                payload = json.dumps({"name": f"projects/fake/messages/{uuid.uuid4().hex[:8]}"}).encode()
                record["status"] = status
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                record["end"] = time.monotonic()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/projects/fake/messages:send"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def for_token(self, token: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["token"] == token]

    def successes(self, token: str) -> list[dict]:
        return self.for_token(token)

    def close(self) -> None:
        for gate in self.block.values():
            gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def fake_push():
    fake = FakePush()
    yield fake
    fake.close()


# --- broker -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_vhost(amqp_url, management):
    """A vhost of this test module's own (module-scoped twin of ``vhost_url``)."""
    name = f"test-notif-{uuid.uuid4().hex[:10]}"
    quoted = urllib.parse.quote(name, safe="")
    user = urllib.parse.unquote(urllib.parse.urlsplit(amqp_url).username or "guest")
    management.put(f"{management.base}/vhosts/{quoted}", timeout=10).raise_for_status()
    management.put(f"{management.base}/permissions/{quoted}/{user}",
                   json={"configure": ".*", "write": ".*", "read": ".*"}, timeout=10).raise_for_status()
    parts = urllib.parse.urlsplit(amqp_url)
    yield urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + quoted, parts.query, ""))
    management.delete(f"{management.base}/vhosts/{quoted}", timeout=10)


def declare_topology(url: str) -> None:
    from kombu import Connection

    from notification_service.broker.topology import declare

    with Connection(url) as connection:
        declare(connection)


@contextlib.contextmanager
def running_worker(url: str, tmp: pathlib.Path, fake: FakePush | None, concurrency: int = 4, **extra: str):
    """The topology declared and a started ``Worker`` with a metrics port (``metrics_url``); stopped afterwards."""
    declare_topology(url)
    port = free_port()
    worker = Worker(url, tmp, fake, concurrency, NOTIFICATION_METRICS_PORT=str(port), **extra)
    worker.metrics_url = f"http://127.0.0.1:{port}/metrics"
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


def publish(url: str, message: shared.TaskMessage | None = None, *, body: bytes | None = None,
            properties: pika.BasicProperties | None = None, routing_key: str = DISPATCH_HIGH) -> None:
    """Publish like the booking relay does: pika, confirms, mandatory."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        if message is not None:
            properties = pika.BasicProperties(headers=message.headers, **message.properties)
            body, routing_key = message.body, message.routing_key
        channel.basic_publish(shared.EXCHANGE, routing_key, body, properties, mandatory=True)
    finally:
        connection.close()


def notification(*, event: str = "booking.confirmed", priority: str | None = None, tokens=("tok",),
                 email: str = "ada@example.org", locale: str = "en", booking_id: str | None = None,
                 version: int = 1, status: str = "confirmed", notification_id: str | None = None) -> dict:
    """A valid v1 payload (the producer's strict dump)."""
    start = datetime(2030, 5, 4, 8, 0, tzinfo=UTC)
    ev = shared.Event(event)
    return shared.dump_notification_requested({
        "message_type": shared.NOTIFICATION_REQUESTED,
        "schema_version": 1,
        "notification_id": uuid.UUID(notification_id) if notification_id else uuid.uuid4(),
        "event": ev,
        "priority": priority or shared.DEFAULT_PRIORITY[ev].label,
        "booking": {"id": uuid.UUID(booking_id) if booking_id else uuid.uuid4(), "version": version,
                    "status": status, "resource_id": "room-42", "starts_at": start,
                    "ends_at": start + timedelta(hours=1), "timezone": "Europe/Berlin"},
        "recipient": {"name": "Ada", "email": email, "locale": locale, "push_tokens": list(tokens)},
        "requested_at": datetime.now(UTC),
        "correlation_id": f"req-{uuid.uuid4().hex[:8]}",
    })


def dispatch_lane(payload: dict) -> str:
    """The dispatch lane queue of a payload's priority (what the booking relay publishes to)."""
    return shared.lane_queue(shared.DISPATCH_QUEUE, shared.lane_for(shared.Priority.from_name(payload["priority"])))


def dispatch_message(payload: dict, expires: datetime | None = None) -> shared.TaskMessage:
    return shared.task_message(
        task=shared.DISPATCH_TASK, task_id=payload["notification_id"], routing_key=dispatch_lane(payload),
        kwargs={"message": payload}, priority=shared.Priority.from_name(payload["priority"]).value,
        kwargsrepr="{'message': '<notification.requested>'}", correlation_id=payload["correlation_id"],
        message_type=shared.NOTIFICATION_REQUESTED, expires=expires,
    )


# --- worker -------------------------------------------------------------------------


class Worker:
    """A real ``celery worker`` subprocess against the test vhost."""

    def __init__(self, url: str, tmp: pathlib.Path, fake: FakePush | None, concurrency: int = 4, **extra: str) -> None:
        self.url = url
        self.tmp = tmp
        self.email_dir = tmp / "email"
        self.push_dir = tmp / "push"
        self.db_url = f"sqlite:///{tmp / 'notification.db'}"
        self.log_path = tmp / "worker.log"
        self.concurrency = concurrency
        self.env = {
            **os.environ,
            "AMQP_URL": url,
            "NOTIFICATION_DATABASE_URL": self.db_url,
            "EMAIL_BACKEND": "file",
            "EMAIL_FILE_DIR": str(self.email_dir),
            "PUSH_BACKEND": "http" if fake else "file",
            "PUSH_FILE_DIR": str(self.push_dir),
            "PUSH_HTTP_URL": fake.url if fake else "",
            "PUSH_HTTP_TOKEN": "test-token",
            "NOTIFICATION_RETRY_BASE_SECONDS": "0.2",
            "NOTIFICATION_MAX_RETRIES": "3",
            "NOTIFICATION_METRICS_PORT": "0",
            "NOTIFICATION_LOG_FORMAT": "json",
            "NOTIFICATION_HTTP_TIMEOUT": "30",
            **extra,
        }
        self.process: subprocess.Popen | None = None
        self.cli(["migrate"])

    def cli(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
        run = subprocess.run([str(CLI), *args], env=self.env, cwd=self.tmp, capture_output=True, text=True, timeout=60)
        if check and run.returncode != 0:
            raise AssertionError(f"notification-service {args} failed: {run.stdout}\n{run.stderr}")
        return run

    def start(self) -> Worker:
        # The worker writes to its own copy of the descriptor: ours closes once it runs, and a
        # restart appends to the same file.
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(CELERY), "-A", "notification_service.celery_app", "worker", "-P", "threads",
                 "-c", str(self.concurrency), "-Q", ",".join(shared.WORK_QUEUES), "--without-gossip",
                 "--without-mingle", "--events", "-n", f"test-{uuid.uuid4().hex[:6]}@%h",
                 "-l", "INFO"],  # --events as in the Procfile, compose and the image
                env=self.env, cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        wait_for(self.consuming, timeout=60, interval=0.2, what="worker consuming")
        return self

    def consuming(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"worker exited {self.process.returncode}:\n{self.log_text()[-3000:]}")
        return "ready" in self.log_text()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    # -- observations ------------------------------------------------------------

    def emails(self) -> list[pathlib.Path]:
        return sorted(self.email_dir.glob("*.eml")) if self.email_dir.exists() else []

    def email_for(self, notification_id: str) -> list[pathlib.Path]:
        return [p for p in self.emails() if f"X-Notification-Id: {notification_id}" in p.read_text()]

    def open_days_ago(self, delivery_id: str, days: float) -> None:
        """Backdate when ``delivery_id`` was opened (its age, as the retry budget reads it)."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.db_url)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text("UPDATE deliveries SET created_at = :old WHERE delivery_id = :d"),
                             {"old": (datetime.now(UTC) - timedelta(days=days)).replace(tzinfo=None), "d": delivery_id})
        finally:
            engine.dispose()

    def status(self, notification_id: str) -> list[dict]:
        """The delivery log's rows of one notification, read in-process (no CLI per poll)."""
        from notification_service.delivery.log import delivery_log

        return [dict(row._mapping) for row in delivery_log(self.db_url).for_notification(notification_id)]

    def task_count(self, task: str, outcome: str) -> float:
        """``notification_tasks_total{task, outcome}`` from the worker's /metrics (needs its metrics port)."""
        import requests
        from prometheus_client.parser import text_string_to_metric_families

        text = requests.get(self.metrics_url, timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "notification_tasks_total" and sample.labels == {"task": task, "outcome": outcome}:
                    return sample.value
        return 0.0

    def dlq(self, queue: str | None = None) -> list[dict]:
        """What ``notification-service dlq list`` prints, computed in-process."""
        from notification_service.broker import dlq
        from notification_service.delivery.log import delivery_log

        messages = dlq.list_messages(self.url, queue)  # before the reasons, as the CLI reads them
        reasons = delivery_log(self.db_url).dead_letter_reasons()
        return [m.summary(reasons) for m in messages]
