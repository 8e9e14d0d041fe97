"""Benchmark: bookings through the whole mesh while providers fail and processes and the broker are killed.

    .venv/bin/python benchmarks/bench_faults.py [--rate 20] [--duration 120] [--database sqlite|postgresql]
        [--faults worker@25,receipts@35,relay@45,broker@60,worker@80 | none] [--workers split|single] [--keep-logs]
    .venv/bin/python benchmarks/bench_faults.py --scenario rate-limit [--limit 50] [--send-workers 2]
    .venv/bin/python benchmarks/bench_faults.py --scenario primary-down|all-down [--provider-outage WHO@START:SECONDS]
        [--outage-mode refuse|503|refuse-503] [--email-providers http,file]

Provider outages (issue 17's scenarios (a) and (b)): see ``provider_faults.py``.

Every part of the mesh is a separate process: the booking API (gunicorn), the
outbox relay, the receipts consumer and the Celery workers as the Procfile runs them (a dispatch
worker and an e-mail/push send worker, threads pool, nice 10; ``--workers
single``: one worker on all three queues), on a PRIVATE RabbitMQ node
that this script starts and kills with SIGKILL (``tests/private_broker.py``;
the shared broker on 5672 is never touched). The e-mail and push providers
are one fake HTTP server in this process that answers 503 to 30 % of the
calls, hangs past the workers' timeout and then accepts 2 % of them, and
accepts the rest. It does NOT deduplicate by ``Idempotency-Key`` (it models
SMTP or FCM without idempotency), so a second accepted call for one delivery
is a second e-mail: a duplicate "in effect".

While a client posts bookings at a steady rate, the workers' process groups,
the relay and the receipts consumer are SIGKILLed and restarted, and the broker is SIGKILLed and
restarted (same data directory). After the load stops the script waits until
every booking's confirmation e-mail and push message is accepted by the
provider or dead-lettered (or the drain deadline passes: what is missing then
is lost), and prints lost, duplicated (by idempotency key and in effect),
dead-lettered, booking → provider-accepted latency and the drain time.

Scenario (c), ``--scenario rate-limit``: the provider takes at most ``--limit`` calls per channel in any
second (a sliding window) and answers 429 with ``Retry-After: 1`` above it; it does not fail otherwise, and
there are no faults. The workers are configured with ``EMAIL_HTTP_RATE_LIMIT`` = ``PUSH_HTTP_RATE_LIMIT`` =
``--worker-limit`` (default: the provider's limit). The send workers (``--send-workers`` processes, sharing
the limit through the delivery log's database) are stopped after the warm-up and started again when the load
ends, so the whole backlog is waiting when they start, as after an outage: the drain is limited by the rate
alone. It reports the share of calls answered 429 (target <= 1 %) and each channel's accepted calls per
second from its first to its last accepted call of the drain (target within 10 % of the limit).

Loopback only, bounded in count and time; every process (and the private
broker) is killed in a ``finally``, also on Ctrl-C. Exit code 0 either way:
it is a benchmark; the "TARGET" lines say whether the issue's target is met.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import math
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pika
import requests
import sqlalchemy as sa

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import shared  # noqa: E402 - after the sys.path insert above
from tests.private_broker import PrivateBroker  # noqa: E402
from tests.support import free_port, wait_for  # noqa: E402

BIN = pathlib.Path(sys.executable).parent
API_KEY = "bench"
EMAIL_PATH = "/v1/email/send"
PUSH_PATH = "/v1/projects/fake/messages:send"
CONFIRMED = "booking.confirmed"
WORK_QUEUES = shared.WORK_QUEUES


def log(t0: float | None, text: str) -> None:
    stamp = f"[{time.monotonic() - t0:7.1f} s] " if t0 is not None else ""
    print(stamp + text, flush=True)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (sorted or not); nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def cpu_busy_snapshot() -> tuple[int, int]:
    fields = [int(x) for x in pathlib.Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


# ---------------------------------------------------------------------------------------------
# The fake provider
# ---------------------------------------------------------------------------------------------

@dataclass
class Call:
    channel: str             # "email" | "push"
    key: str                 # Idempotency-Key (the delivery id)
    booking_id: str | None
    event: str | None
    notification_id: str | None
    outcome: str             # "503" | "429" | "ok" | "hang" (past the client's timeout, then accepted) | "truncated"
    #                          | "file" (written by the file sink: provider_faults.py)
    arrived: float           # monotonic
    answered: float          # monotonic; for accepted calls, the moment of acceptance

    @property
    def accepted(self) -> bool:
        return self.outcome in ("ok", "hang", "file")


class FakeProvider:
    """E-mail and push HTTP APIs on 127.0.0.1 that fail on purpose and never deduplicate."""

    def __init__(self, p503: float, phang: float, hang_seconds: float, seed: int | None, limit: float = 0) -> None:
        self.p503, self.phang, self.hang_seconds = p503, phang, hang_seconds
        #: Accepted calls per channel in any second (0: no limit); above it: 429 with Retry-After: 1.
        self.limit = limit
        self.window: dict[str, collections.deque[float]] = {"email": collections.deque(), "push": collections.deque()}
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.calls: list[Call] = []
        self.first_accept: dict[str, Call] = {}
        self.accepted_keys_by_booking: dict[tuple[str, str], str] = {}
        self.server_errors = 0
        self.server = self._server()
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-provider", daemon=True)

    def start(self) -> FakeProvider:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def email_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{EMAIL_PATH}"

    @property
    def push_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PUSH_PATH}"

    def decide(self, channel: str) -> str:
        with self.lock:
            if self.limit:
                now, window = time.monotonic(), self.window[channel]
                while window and window[0] <= now - 1.0:
                    window.popleft()
                if len(window) >= self.limit:
                    return "429"
                window.append(now)
            r = self.rng.random()
        if r < self.p503:
            return "503"
        if r < self.p503 + self.phang:
            return "hang"
        return "ok"

    def record(self, call: Call) -> None:
        with self.lock:
            self.calls.append(call)
            if call.accepted and call.key not in self.first_accept:
                self.first_accept[call.key] = call
                if call.booking_id and call.event == CONFIRMED:
                    self.accepted_keys_by_booking.setdefault((call.booking_id, call.channel), call.key)

    def snapshot(self) -> list[Call]:
        with self.lock:
            return list(self.calls)

    def accepted_count(self) -> int:
        with self.lock:
            return len(self.accepted_keys_by_booking)

    def resolved(self, booking_id: str, channel: str) -> Call | None:
        with self.lock:
            key = self.accepted_keys_by_booking.get((booking_id, channel))
            return self.first_accept.get(key) if key else None

    def _server(self, port: int = 0) -> ThreadingHTTPServer:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like a real provider
            timeout = 300

            def do_POST(self):  # noqa: N802 - http.server naming
                arrived = time.monotonic()
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw) if len(raw) == length else None
                except ValueError:
                    body = None
                if not isinstance(body, dict):
                    # The sender died mid-request (a SIGKILLed worker): a real provider sends nothing.
                    fake.record(Call("?", self.headers.get("Idempotency-Key") or "", None, None, None, "truncated",
                                     arrived, time.monotonic()))
                    self.close_connection = True
                    return
                if self.path.startswith(PUSH_PATH):
                    channel = "push"
                    data = (body.get("message") or {}).get("data") or {}
                    booking_id, event, nid = data.get("booking_id"), data.get("event"), data.get("notification_id")
                else:
                    channel = "email"
                    headers = body.get("headers") or {}
                    booking_id, event = headers.get("X-Booking-Id"), headers.get("X-Notification-Event")
                    nid = headers.get("X-Notification-Id")
                outcome = fake.decide(channel)
                if outcome == "hang":
                    time.sleep(fake.hang_seconds)  # past the client's read timeout; then the provider accepts it
                key = self.headers.get("Idempotency-Key") or ""
                fake.record(Call(channel, key, booking_id, event, nid, outcome, arrived, time.monotonic()))
                extra = {}
                if outcome == "503":
                    status, payload = 503, {"error": "unavailable"}
                elif outcome == "429":
                    status, payload, extra = 429, {"error": "rate limited"}, {"Retry-After": "1"}
                else:
                    n = uuid.uuid4().hex[:12]
                    status, payload = 200, ({"name": f"projects/fake/messages/{n}"} if channel == "push" else {"id": n})
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in extra.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    self.close_connection = True  # the worker gave up (timeout) or died meanwhile

            def log_message(self, *args):
                return

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 512
            allow_reuse_address = True

            def handle_error(self, request, client_address):
                fake.server_errors += 1  # a client that vanished mid-request (SIGKILL): not our problem

        return Server(("127.0.0.1", port), Handler)


# ---------------------------------------------------------------------------------------------
# The processes of the mesh
# ---------------------------------------------------------------------------------------------

class Mesh:
    """API, relay and worker as subprocesses, each in its own session (so a SIGKILL takes its whole group)."""

    def __init__(self, root: pathlib.Path, env: dict[str, str], layout: str, concurrency: int, nice: int,
                 send_workers: int = 1) -> None:
        self.root = root
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}
        self.lock = threading.Lock()
        self.closing = False
        self.starts: dict[str, int] = {}
        self.commands = {
            "api": [str(BIN / "booking-service"), "serve"],
            "relay": [str(BIN / "booking-service"), "relay"],
            "receipts": [str(BIN / "booking-service"), "receipts"],
        }
        prefix = ["nice", "-n", str(nice)] if nice else []

        def worker(queues, threads: int, name: str) -> list[str]:
            return prefix + [str(BIN / "celery"), "-A", "notification_service.celery_app", "worker", "-P", "threads",
                             "-c", str(threads), "-Q", ",".join(queues), "--without-gossip", "--without-mingle",
                             "-l", "INFO", "-n", f"{name}@%h"]

        if layout == "split":  # the Procfile: a dispatch worker and a send worker for e-mail and push
            self.senders = ["send"] + [f"send{i}" for i in range(2, send_workers + 1)]
            self.workers = ["dispatch", *self.senders]
            self.commands["dispatch"] = worker(WORK_QUEUES[:1], 8, "faults-dispatch")
            for name in self.senders:
                self.commands[name] = worker(WORK_QUEUES[1:], concurrency, f"faults-{name}")
        else:
            self.workers = self.senders = ["worker"]
            self.commands["worker"] = worker(WORK_QUEUES, concurrency, "faults")

    def run(self, name: str, *argv: str) -> str:
        done = subprocess.run(argv, env=self.env, cwd=self.root, capture_output=True, text=True, timeout=180,
                              stdin=subprocess.DEVNULL)
        (self.root / f"{name}.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def start(self, name: str) -> int | None:
        with self.lock:
            if self.closing:
                return None
            self.starts[name] = self.starts.get(name, 0) + 1
            out = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
            out.write(f"\n===== bench: start #{self.starts[name]} of {name} at {time.strftime('%H:%M:%S')}\n".encode())
            out.flush()
            proc = subprocess.Popen(self.commands[name], env=self.env, cwd=self.root, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            out.close()
            self.procs[name] = proc
            return proc.pid

    def kill(self, name: str) -> int | None:
        """SIGKILL the process group of ``name`` and reap it."""
        with self.lock:
            proc = self.procs.get(name)
            if proc is None:
                return None
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
            return proc.pid

    def boot(self, base_url: str) -> None:
        """Migrate both databases, declare the topology, start every process; wait for the API at ``base_url``."""
        self.run("migrate-booking", str(BIN / "booking-service"), "migrate")
        self.run("migrate-notification", str(BIN / "notification-service"), "migrate")
        self.run("topology", str(BIN / "notification-service"), "topology", "declare")
        for name in (*self.workers, "api", "relay", "receipts"):
            self.start(name)
        wait_for(lambda: healthy(base_url + "/healthz"), 60, "the booking API")

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def stop_all(self, grace: float = 10.0) -> None:
        with self.lock:
            self.closing = True
            procs = list(self.procs.items())
        for _name, proc in procs:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for _name, proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            _signal_group(proc, signal.SIGKILL)  # the group too: gunicorn's workers, stragglers
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # start_new_session: pgid == pid


# ---------------------------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------------------------

@dataclass
class Booking:
    index: int
    booking_id: str
    committed: float   # monotonic time the 201 arrived
    post_seconds: float


@dataclass
class LoadStats:
    bookings: list[Booking] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)     # bookings that never got a 201
    error_attempts: int = 0                               # attempts answered with an error or no answer
    late: list[float] = field(default_factory=list)       # seconds each POST started after its scheduled time
    lock: threading.Lock = field(default_factory=threading.Lock)


class Load:
    def __init__(self, base_url: str, rate: float, duration: float, run_id: str) -> None:
        self.url = base_url + "/v1/bookings"
        self.rate = rate
        self.count = int(rate * duration)
        self.run_id = run_id
        self.stats = LoadStats()
        self.local = threading.local()

    def body(self, i: int) -> dict:
        start = datetime(2031, 1, 1, tzinfo=UTC) + timedelta(hours=i)
        return {
            "resource_id": f"faults-{self.run_id}-{i}",
            "starts_at": start.isoformat().replace("+00:00", "Z"),
            "ends_at": (start + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
            "customer": {"name": "Fault Bench", "email": f"c{i}.{self.run_id}@example.org", "locale": "en",
                         "timezone": "Europe/London", "push_tokens": [f"tok-{self.run_id}-{i}"]},
        }

    def post(self, i: int, due: float | None = None) -> Booking | None:
        if due is not None:
            with self.stats.lock:
                self.stats.late.append(max(0.0, time.monotonic() - due))
        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
            session.headers["Authorization"] = f"Bearer {API_KEY}"
        body = self.body(i)
        key = f"faults-{self.run_id}-{i}"  # a retried POST is replayed, never a second booking
        give_up = time.monotonic() + 60
        while True:
            started = time.monotonic()
            try:
                response = session.post(self.url, json=body, headers={"Idempotency-Key": key}, timeout=15)
            except requests.RequestException as exc:
                problem = f"{type(exc).__name__}"
            else:
                if response.status_code == 201:
                    booking = Booking(i, response.json()["id"], time.monotonic(), time.monotonic() - started)
                    with self.stats.lock:
                        self.stats.bookings.append(booking)
                    return booking
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code < 500 and response.status_code != 429:
                    give_up = 0  # a 4xx will not get better
            with self.stats.lock:
                self.stats.error_attempts += 1
            if time.monotonic() > give_up:
                with self.stats.lock:
                    self.stats.failed.append(f"#{i}: {problem}")
                return None
            time.sleep(0.5)

    def run(self, t0: float, stop: threading.Event) -> None:
        with ThreadPoolExecutor(16, thread_name_prefix="load") as pool:
            for i in range(self.count):
                due = t0 + i / self.rate
                delay = due - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    break
                pool.submit(self.post, i, due)


# ---------------------------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------------------------

@dataclass
class FaultEvent:
    at: float       # seconds since the load started
    what: str


def parse_faults(spec: str | None, duration: float) -> list[tuple[float, str]]:
    if spec is None:  # the default schedule, scaled to the duration
        default = [(25, "worker"), (35, "receipts"), (45, "relay"), (60, "broker"), (80, "worker")]
        return [(duration * at / 120.0, kind) for at, kind in default]
    if spec.strip().lower() in {"", "none"}:
        return []
    plan = []
    for item in spec.split(","):
        kind, _, at = item.strip().partition("@")
        if kind not in {"worker", "relay", "receipts", "broker"} or not at:
            raise SystemExit(f"--faults: {item!r} is not worker@S, relay@S, receipts@S or broker@S")
        plan.append((float(at), kind))
    return sorted(plan)


def run_faults(plan, t0, stop, mesh: Mesh, broker: PrivateBroker, down: float, timeline: list[FaultEvent],
               worker_kills: list[tuple[float, float]]) -> None:
    def note(text: str) -> None:
        at = time.monotonic() - t0
        timeline.append(FaultEvent(at, text))
        log(t0, text)

    for at, kind in plan:
        if stop.wait(max(0.0, t0 + at - time.monotonic())):
            return
        try:
            if kind == "broker":
                pid = broker.pid
                broker.kill()
                note(f"broker SIGKILL (beam.smp pid {pid})")
                began = time.monotonic()
                broker.start()
                note(f"broker back, accepting AMQP (restart took {time.monotonic() - began:.1f} s)")
            else:
                names = mesh.workers if kind == "worker" else [kind]
                began = time.monotonic()
                pids = [mesh.kill(name) for name in names]
                if kind == "worker":
                    worker_kills.append((began, time.monotonic()))
                note(f"{'+'.join(names)} SIGKILL (process groups {', '.join(map(str, pids))})")
                if stop.wait(down):
                    return
                pids = [mesh.start(name) for name in names]
                note(f"{'+'.join(names)} restarted (pids {', '.join(map(str, pids))})")
        except Exception as exc:  # noqa: BLE001 - report and carry on with the schedule
            note(f"fault {kind} failed: {exc!r}")


# ---------------------------------------------------------------------------------------------
# Analysis
# ---------------------------------------------------------------------------------------------

def classify_duplicates(calls: list[Call], worker_kills: list[tuple[float, float]],
                        first_sent: dict[str, float]) -> dict:
    """Per delivery (Idempotency-Key): extra accepted calls, explained by an earlier hang or not.

    An unexplained extra is put down to a worker SIGKILL when an earlier accepted call had started before
    a kill and the workers had not logged the delivery as sent before that kill (``first_sent``: the
    first "sent" log line per delivery id, monotonic): the worker died between the provider's answer
    and recording it.
    """
    by_key: dict[str, list[Call]] = {}
    for call in calls:
        if call.accepted and call.key:
            by_key.setdefault(call.key, []).append(call)
    keys_dup = 0
    extra = explained = 0
    unexplained: list[tuple[str, Call, Call, str]] = []
    for key, accepted in by_key.items():
        if len(accepted) < 2:
            continue
        keys_dup += 1
        accepted.sort(key=lambda c: c.arrived)
        allowance = 0
        for previous, call in itertools.pairwise(accepted):
            allowance += previous.outcome == "hang"
            extra += 1
            if allowance > 0:
                allowance -= 1
                explained += 1
                continue
            earlier = [p for p in accepted if p.arrived < call.arrived]
            recorded = first_sent.get(key, math.inf)
            # (began, ended): the SIGKILL was sent between the two monotonic stamps
            killed = any(p.arrived <= ended and recorded >= began for began, ended in worker_kills for p in earlier)
            cause = "accepted but not yet recorded when the workers were SIGKILLed" if killed else "other"
            unexplained.append((key, previous, call, cause))
    return {"keys": keys_dup, "extra": extra, "explained": explained, "unexplained": unexplained}


def read_delivery_log(url: str) -> dict[tuple[str, str], tuple[str, int, str | None]]:
    """(booking id, channel) → (status, attempts, last error) of confirmation deliveries."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT booking_id, channel, status, attempts, last_error FROM deliveries "
                                        "WHERE event = :event"), {"event": CONFIRMED}).all()
        return {(r[0], r[1]): (r[2], r[3], r[4]) for r in rows}
    finally:
        engine.dispose()


def read_outbox(url: str) -> dict[str, tuple[str, int, str | None, str]]:
    """booking id → (outbox status, attempts, last error, notification id) of its confirmation row."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT booking_id, status, attempts, last_error, notification_id FROM outbox "
                                        "WHERE event = :e"), {"e": CONFIRMED}).all()
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}
    finally:
        engine.dispose()


def read_dead_letters(url: str) -> dict[str, str]:
    """message id (task id: the notification id of a dispatch) → latest recorded reason."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT message_id, reason FROM dead_letters ORDER BY id")).all()
        return {r[0]: r[1] for r in rows if r[0]}
    finally:
        engine.dispose()


def find_dead(items, booking_url: str, notification_url: str) -> dict[tuple[str, str], tuple]:
    """Which of ``items`` ((booking id, channel)) were given up: the delivery is ``dead``, or it has no
    delivery row because its dispatch message was dead-lettered. Value: (where, reason)."""
    states = read_delivery_log(notification_url)
    found = {}
    pending_dispatch = []
    for item in items:
        state = states.get(item)
        if state is not None and state[0] == "dead":
            found[item] = ("delivery", state[2])
        elif state is None:
            pending_dispatch.append(item)
    if pending_dispatch:
        reasons = read_dead_letters(notification_url)
        outbox = read_outbox(booking_url)
        for item in pending_dispatch:
            nid = (outbox.get(item[0]) or (None,) * 4)[3]
            if nid in reasons:
                found[item] = ("dispatch", reasons[nid])
    return found


def read_receipts(url: str) -> dict[tuple[str, str], str]:
    """(booking id, channel) → status of the confirmation's latest receipt in the booking's database."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT booking_id, channel, status FROM notification_receipts "
                                        "WHERE event = :e ORDER BY sequence"), {"e": CONFIRMED}).all()
        return {(r[0], r[1]): r[2] for r in rows}
    finally:
        engine.dispose()


def receipts_agree(expected, booking_url: str, notification_url: str, deadline: float) -> tuple[int, float]:
    """Wait (until ``deadline``, monotonic) for the booking's timelines to show every delivery's final status
    from the delivery log; (how many agree, seconds waited)."""
    began = time.monotonic()
    while True:
        states = read_delivery_log(notification_url)
        receipts = read_receipts(booking_url)
        agree = sum(1 for item in expected if item in states and receipts.get(item) == states[item][0])
        if agree == len(expected) or time.monotonic() > deadline:
            return agree, time.monotonic() - began
        time.sleep(0.5)


def queue_depths(broker: PrivateBroker) -> dict[str, int]:
    depths = {}
    connection = pika.BlockingConnection(broker.pika_parameters())
    try:
        channel = connection.channel()
        for queue in WORK_QUEUES + tuple(q + ".dlq" for q in WORK_QUEUES):
            depths[queue] = channel.queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()
    return depths


WORKER_LOGS = ("worker", "dispatch", "send", "send2", "send3")
WORKER_PATTERNS = {
        "retrying": '"retrying"',
        "dead-lettered": '"dead-lettered"',
        "deferred (live lease)": "another attempt holds the delivery",
        "stall watchdog fired": "consumer stalled",
        "broker connection lost": "Connection to broker lost",
        "reconnected": "Connected to amqp://",
        "could not store reason": "could not store",
        "tracebacks": "Traceback",
}
LOG_PATTERNS = {
    **{name: WORKER_PATTERNS for name in WORKER_LOGS},
    "relay": {
        "broker unavailable": "relay_broker_unavailable",
        "database unavailable": "relay_database_unavailable",
        "unroutable": "outbox_unroutable",
        "nacked": "outbox_nacked",
        "connected": "relay_connected",
        "tracebacks": "Traceback",
    },
    "api": {"tracebacks": "Traceback"},
}
ERROR_LINE = re.compile(r'"level":\s*"(error|critical)"')


#: Log lines worth placing on the fault timeline: (log, substring, label).
TIMELINE_EVENTS = (
    ("relay", '"relay_connected"', "relay connected to the broker"),
    ("relay", '"relay_broker_unavailable"', "relay: broker unavailable, next try in {retry_in} s"),
    *((name, "Connected to amqp://", f"{name} worker: consumer connected") for name in WORKER_LOGS),
    *((name, "consumer stalled", f"{name} worker: stall watchdog reconnects the consumer") for name in WORKER_LOGS),
)


def log_timeline(root: pathlib.Path, wall_t0: float, since: float) -> list[FaultEvent]:
    """Reconnects and backoffs from the JSON logs, in seconds since the load started."""
    events = []
    for name, needle, label in TIMELINE_EVENTS:
        path = root / f"{name}.log"
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if needle not in line or not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
                at = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp() - wall_t0
            except (ValueError, KeyError):
                continue
            if at >= since:
                events.append(FaultEvent(at, "  (log) " + label.format(retry_in=entry.get("retry_in", "?"))))
    return events


def record_lags(root: pathlib.Path, wall_t0: float, t0: float,
                calls: list[Call]) -> tuple[list[float], dict[str, float]]:
    """Seconds from the provider's acceptance to the worker's "sent" log line (written after the delivery
    log recorded it): how long a SIGKILL can strike between the two and cause a resend."""
    sent_at: dict[str, float] = {}
    for name in WORKER_LOGS:
        path = root / f"{name}.log"
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if '"sent"' not in line or not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
                if entry.get("event") != "sent":
                    continue
                at = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp() - wall_t0 + t0
            except (ValueError, KeyError):
                continue
            key = entry.get("task_id", "")
            sent_at[key] = min(at, sent_at.get(key, math.inf))
    accepted: dict[str, list[float]] = {}
    for call in calls:
        if call.accepted:
            accepted.setdefault(call.key, []).append(call.answered)
    lags = []
    for key, at in sent_at.items():
        before = [answered for answered in accepted.get(key, []) if answered <= at + 0.05]
        if before:
            lags.append(max(0.0, at - max(before)))
    return lags, sent_at


def log_signals(root: pathlib.Path) -> list[tuple[str, str, int]]:
    found = []
    for name, patterns in LOG_PATTERNS.items():
        path = root / f"{name}.log"
        if not path.exists():
            continue
        text = path.read_text(errors="replace")
        for label, needle in patterns.items():
            found.append((name, label, text.count(needle)))
        found.append((name, "error/critical lines", len(ERROR_LINE.findall(text))))
    return found


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def make_databases(kind: str, tmp: pathlib.Path):
    if kind == "sqlite":
        return f"sqlite:///{tmp / 'booking.db'}", f"sqlite:///{tmp / 'notification.db'}", lambda: None
    admin = sa.create_engine(os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@localhost:5432/test"),
                             isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    suffix = uuid.uuid4().hex[:8]
    names = [f"bench_faults_booking_{suffix}", f"bench_faults_notif_{suffix}"]
    with admin.connect() as conn:
        for name in names:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            for name in names:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    urls = [admin.url.set(database=name).render_as_string(hide_password=False) for name in names]
    return urls[0], urls[1], drop


def healthy(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=20.0, help="bookings per second (default 20)")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load (default 120)")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite",
                        help="both services' databases (PostgreSQL: fresh databases on TEST_POSTGRES_URL's server)")
    parser.add_argument("--faults", default=None,
                        help="comma-separated KIND@SECONDS (worker|relay|broker), or 'none'; default "
                             "worker@25,receipts@35,relay@45,broker@60,worker@80 scaled to --duration")
    parser.add_argument("--down", type=float, default=2.0, help="seconds a killed worker or relay stays down")
    parser.add_argument("--workers", choices=["split", "single"], default="split",
                        help="split (the Procfile): a dispatch worker -c 8 and a send worker -c CONCURRENCY; "
                             "single: one worker -c CONCURRENCY on all three queues")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="threads of the send worker (split, default 100 as in the Procfile) or of the single "
                             "worker (default 64)")
    parser.add_argument("--worker-nice", type=int, default=10, help="nice level of the workers (the Procfile: 10)")
    parser.add_argument("--p503", type=float, default=0.30, help="share of provider calls answered 503")
    parser.add_argument("--phang", type=float, default=0.02,
                        help="share of calls that hang past the timeout, then accepted")
    parser.add_argument("--http-timeout", type=float, default=10.0,
                        help="NOTIFICATION_HTTP_TIMEOUT (default 10, the shipped default)")
    parser.add_argument("--hang", type=float, default=None,
                        help="seconds a hanging call takes before the provider accepts it (default: the timeout + 1)")
    parser.add_argument("--retry-base", type=float, default=2.0,
                        help="NOTIFICATION_RETRY_BASE_SECONDS (default 2, the shipped default)")
    parser.add_argument("--retry-max", type=float, default=900.0,
                        help="NOTIFICATION_RETRY_MAX_SECONDS (default 900, the shipped default)")
    parser.add_argument("--drain-timeout", type=float, default=300.0,
                        help="seconds to wait after the load for stragglers")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds to keep watching for late duplicates after draining")
    parser.add_argument("--seed", type=int, default=None)
    from benchmarks import provider_faults  # here: it imports this module's classes

    parser.add_argument("--scenario", choices=["faults", "rate-limit", *provider_faults.SCENARIOS], default="faults",
                        help="faults (table 3: failing providers, killed processes), rate-limit (scenario (c): a "
                             "provider limited to --limit calls/s per channel, a backlog drained through the limit), "
                             "primary-down (a) or all-down (b): provider outages (provider_faults.py)")
    parser.add_argument("--limit", type=float, default=50.0,
                        help="rate-limit: the provider's limit, accepted calls per channel in any second")
    parser.add_argument("--worker-limit", type=float, default=None,
                        help="rate-limit: EMAIL_HTTP_RATE_LIMIT and PUSH_HTTP_RATE_LIMIT (default: --limit; 0: none)")
    parser.add_argument("--send-workers", type=int, default=1,
                        help="send worker processes (split layout), sharing the rate limit (default 1)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary folder with every process's log")
    provider_faults.add_arguments(parser, sys.argv[1:])
    args = parser.parse_args()
    outage = provider_faults.parse_outage(args.provider_outage, args.outage_mode)
    if args.hang is None:
        args.hang = args.http_timeout + 1.0
    if args.concurrency is None:
        args.concurrency = 100 if args.workers == "split" else 64
    rate_limit = args.scenario == "rate-limit"
    if rate_limit:
        args.p503 = args.phang = 0.0
        args.faults = "none"
        if args.worker_limit is None:
            args.worker_limit = args.limit
    plan = parse_faults(args.faults, args.duration)

    def on_term(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-faults-"))
    run_id = uuid.uuid4().hex[:6]
    stop = threading.Event()
    broker: PrivateBroker | None = None
    mesh: Mesh | None = None
    provider: FakeProvider | None = None
    drop_databases = lambda: None  # noqa: E731
    try:
        booking_url, notification_url, drop_databases = make_databases(args.database, tmp)
        began = time.monotonic()
        broker = PrivateBroker()
        broker.start()
        log(None, f"private RabbitMQ node {broker.node_name} on 127.0.0.1:{broker.port} "
                  f"(started in {time.monotonic() - began:.1f} s)")
        if provider_faults.wanted(args):
            provider = provider_faults.OutageProvider(args.p503, args.phang, args.hang, args.seed,
                                                      tmp / "email-files").start()
        else:
            provider = FakeProvider(args.p503, args.phang, args.hang, args.seed,
                                    limit=args.limit if rate_limit else 0).start()
        api_port = free_port()
        env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
        env.update({
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "AMQP_URL": broker.url,
            "BOOKING_DATABASE_URL": booking_url,
            "BOOKING_API_KEYS": API_KEY,
            "BOOKING_BIND": f"127.0.0.1:{api_port}",
            "BOOKING_WORKERS": "2",
            "BOOKING_REMINDER_LEAD_SECONDS": "86400",  # bookings start in 2031: no reminder is due
            "BOOKING_LOG_FORMAT": "json",
            "NOTIFICATION_DATABASE_URL": notification_url,
            "NOTIFICATION_LOG_FORMAT": "json",
            "NOTIFICATION_METRICS_PORT": "0",
            "NOTIFICATION_HTTP_TIMEOUT": str(args.http_timeout),
            "NOTIFICATION_RETRY_BASE_SECONDS": str(args.retry_base),
            "NOTIFICATION_RETRY_MAX_SECONDS": str(args.retry_max),
            "EMAIL_BACKEND": "http",
            "EMAIL_HTTP_URL": provider.email_url,
            "PUSH_BACKEND": "http",
            "PUSH_HTTP_URL": provider.push_url,
        })
        if rate_limit:
            env.update({name: str(args.worker_limit) for name in ("EMAIL_HTTP_RATE_LIMIT", "PUSH_HTTP_RATE_LIMIT")})
        if isinstance(provider, provider_faults.OutageProvider):
            env.update(provider_faults.worker_env(args, provider))
        mesh = Mesh(tmp, env, args.workers, args.concurrency, args.worker_nice, args.send_workers)
        workers_text = (f"workers: dispatch -c 8 + {args.send_workers} x send -c {args.concurrency}"
                        if args.workers == "split" else
                        f"worker -c {args.concurrency}") + f" (-P threads, nice {args.worker_nice})"
        base_url = f"http://127.0.0.1:{api_port}"
        mesh.boot(base_url)

        # Warm-up: one booking through the whole mesh, both deliveries accepted, before the clock starts.
        warm = Load(base_url, 1, 1, run_id + "w").post(0)
        if warm is None:
            raise SystemExit("the warm-up booking failed")
        wait_for(lambda: provider.resolved(warm.booking_id, "email") and provider.resolved(warm.booking_id, "push"),
                   120, "the warm-up booking's e-mail and push")
        log(None, f"mesh up (logs in {tmp}); load: {args.rate:g} bookings/s for {args.duration:g} s, database "
                  f"{args.database}, provider 503 {args.p503:.0%} / hang {args.phang:.0%} ({args.hang:g} s, timeout "
                  f"{args.http_timeout:g} s), {workers_text}")
        log(None, "fault plan: " + (", ".join(f"{kind}@{at:.0f}s" for at, kind in plan) or "none"))
        if outage is not None:
            log(None, f"provider outage: {outage.describe()}")
        if rate_limit:
            for name in mesh.senders:
                mesh.kill(name)
            log(None, f"rate-limit: provider {args.limit:g} calls/s per channel, workers limited to "
                      f"{args.worker_limit:g}/s; {'+'.join(mesh.senders)} stopped until the load ends (a backlog)")

        # ---- load + faults --------------------------------------------------------------------
        load = Load(base_url, args.rate, args.duration, run_id)
        timeline: list[FaultEvent] = []
        worker_kills: list[tuple[float, float]] = []
        busy0 = cpu_busy_snapshot()
        t0, wall_t0 = time.monotonic(), time.time()
        load_thread = threading.Thread(target=load.run, args=(t0, stop), name="load", daemon=True)
        fault_thread = threading.Thread(target=run_faults, args=(plan, t0, stop, mesh, broker, args.down, timeline,
                                                                 worker_kills), name="faults", daemon=True)
        load_thread.start()
        fault_thread.start()
        if outage is not None and isinstance(provider, provider_faults.OutageProvider):

            def note(text: str) -> None:
                timeline.append(FaultEvent(time.monotonic() - t0, text))
                log(t0, text)

            threading.Thread(target=provider_faults.run_outage, args=(outage, t0, stop, provider, note),
                             name="outage", daemon=True).start()
        load_max = 0.0
        next_report = t0 + 10
        while load_thread.is_alive():
            load_thread.join(0.5)
            load_max = max(load_max, os.getloadavg()[0])
            if time.monotonic() >= next_report:
                next_report += 10
                log(t0, f"bookings {len(load.stats.bookings)}, deliveries accepted {provider.accepted_count() - 2}, "
                        f"provider calls {len(provider.calls)}, load average {os.getloadavg()[0]:.2f}")
        load_end = time.monotonic()
        if rate_limit:
            for name in mesh.senders:
                mesh.start(name)
            log(t0, f"{'+'.join(mesh.senders)} started on the backlog")
        busy1 = cpu_busy_snapshot()
        load_avg_end = os.getloadavg()
        log(t0, f"load done: {len(load.stats.bookings)} bookings; waiting for the fault schedule to finish")
        fault_thread.join()

        # ---- drain -------------------------------------------------------------------------------
        bookings = list(load.stats.bookings)
        expected = [(b.booking_id, channel) for b in bookings for channel in ("email", "push")]
        dead: dict[tuple[str, str], tuple] = {}
        deadline = load_end + args.drain_timeout
        drained_at = None
        next_report = time.monotonic() + 10
        last_db_check = 0.0
        while True:
            missing = [item for item in expected if provider.resolved(*item) is None and item not in dead]
            if missing and time.monotonic() - last_db_check > 2:
                last_db_check = time.monotonic()
                try:
                    dead.update(find_dead(missing, booking_url, notification_url))
                except sa.exc.SQLAlchemyError as exc:
                    log(t0, f"databases unreadable: {exc!r}")
                missing = [item for item in missing if item not in dead]
            if not missing:
                drained_at = time.monotonic()
                break
            if time.monotonic() > deadline:
                break
            if time.monotonic() >= next_report:
                next_report += 10
                log(t0, f"draining: {len(missing)} deliveries not yet accepted or dead-lettered")
            time.sleep(0.25)
        if drained_at is not None:
            last_accept = max((provider.resolved(*item).answered for item in expected if provider.resolved(*item)),
                              default=load_end)
            drain_seconds = max(0.0, max(last_accept, load_end) - load_end)
            log(t0, f"drained; watching {args.settle:g} s more for late duplicates")
        else:
            drain_seconds = None
            log(t0, f"drain deadline ({args.drain_timeout:g} s) passed with deliveries missing")
        stop.wait(args.settle)
        # The receipts consumer has had the whole drain; give it up to a minute more to catch up.
        receipts_ok, receipts_wait = receipts_agree(expected, booking_url, notification_url, time.monotonic() + 60)

        # ---- collect -----------------------------------------------------------------------------
        calls = provider.snapshot()
        states = read_delivery_log(notification_url)
        outbox = read_outbox(booking_url)
        try:
            depths = queue_depths(broker)
        except Exception as exc:  # noqa: BLE001
            depths = {"error": repr(exc)}
        dlq = subprocess.run([str(BIN / "notification-service"), "dlq", "list"], env=env, cwd=tmp, capture_output=True,
                             text=True, timeout=120)
        try:
            dlq_messages = json.loads(dlq.stdout or "[]")
        except ValueError:
            dlq_messages = []

        ours = {b.booking_id for b in bookings}
        accepted_items = {item: provider.resolved(*item) for item in expected}
        accepted = [item for item, call in accepted_items.items() if call is not None]
        never_accepted = [item for item in expected if accepted_items[item] is None]
        dead.update(find_dead(never_accepted, booking_url, notification_url))
        lost = [item for item in expected if accepted_items[item] is None and item not in dead]
        dead_unsent = [item for item in expected if accepted_items[item] is None and item in dead]
        dead_although_accepted = [item for item in accepted if states.get(item, ("",))[0] == "dead"]
        committed = {b.booking_id: b.committed for b in bookings}
        latencies = [call.answered - committed[item[0]] for item, call in accepted_items.items() if call is not None]
        our_calls = [c for c in calls if c.booking_id in ours]
        lags, first_sent = record_lags(tmp, wall_t0, t0, our_calls)
        dups = classify_duplicates(our_calls, worker_kills, first_sent)
        other_events = sum(1 for c in our_calls if c.event != CONFIRMED)
        unknown_calls = sum(1 for c in calls if c.booking_id not in ours and c.booking_id != warm.booking_id)

        post_times = [b.post_seconds for b in bookings]
        killed_dups = sum(1 for *_rest, cause in dups["unexplained"] if cause != "other")

        # ---- report ------------------------------------------------------------------------------
        busy = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
        print()
        print(f"bench_faults: {args.rate:g} bookings/s for {args.duration:g} s, database {args.database}, "
              f"{os.cpu_count()} cores, {workers_text}, provider 503 {args.p503:.0%}, "
              f"hang {args.phang:.0%} ({args.hang:g} s > timeout {args.http_timeout:g} s), "
              f"retry backoff {args.retry_base:g} s doubling up to {args.retry_max:g} s with full jitter")
        print()
        rows = [
            ("bookings made (201)", f"{len(bookings)} of {load.count} scheduled"),
            ("bookings failed (no 201 after retries)", len(load.stats.failed)),
            ("API error attempts (retried)", load.stats.error_attempts),
            ("POST /v1/bookings p50 / p95 / max", "{:.3f} / {:.3f} / {:.3f} s".format(
                pct(post_times, 0.5), pct(post_times, 0.95), max(post_times, default=float("nan")))),
            ("POST started behind schedule p95 / max", f"{pct(load.stats.late, 0.95):.2f} / "
             f"{max(load.stats.late, default=float('nan')):.2f} s"),
            ("expected deliveries (e-mail + push)", len(expected)),
            ("accepted by the provider", len(accepted)),
            ("dead-lettered (never accepted)",
             f"{len(dead_unsent)} ({sum(dead[i][0] == 'dispatch' for i in dead_unsent)} of them at dispatch)"),
            ("dead-lettered although accepted", len(dead_although_accepted)),
            ("LOST", len(lost)),
            ("timelines showing the delivery log's final status (receipts)",
             f"{receipts_ok} of {len(expected)} ({receipts_wait:.1f} s after the drain)"),
            ("duplicated by idempotency key (keys)", dups["keys"]),
            ("  extra accepted calls", dups["extra"]),
            ("  explained by an accepted-after-timeout", dups["explained"]),
            ("DUPLICATED IN EFFECT (extras not after a timeout)", len(dups["unexplained"])),
            ("  of which: accepted, not yet recorded at a worker SIGKILL", killed_dups),
            ("  of which: no fault explains them", len(dups["unexplained"]) - killed_dups),
            ("latency commit → accepted p50", f"{pct(latencies, 0.50):.2f} s"),
            ("latency commit → accepted p95", f"{pct(latencies, 0.95):.2f} s"),
            ("latency commit → accepted max", f"{max(latencies, default=float('nan')):.2f} s"),
            ("provider accepted → worker logged sent p50 / p95 / max", "{:.3f} / {:.3f} / {:.3f} s ({} sends)".format(
                pct(lags, 0.5), pct(lags, 0.95), max(lags, default=float("nan")), len(lags))),
            ("drain time after the load stopped", f"{drain_seconds:.1f} s" if drain_seconds is not None else
             f"did not drain in {args.drain_timeout:g} s"),
            ("provider calls (503 / hang / ok)", f"{len(our_calls)} ({sum(c.outcome == '503' for c in our_calls)} / "
             f"{sum(c.outcome == 'hang' for c in our_calls)} / {sum(c.outcome == 'ok' for c in our_calls)}); "
             f"{sum(c.outcome == 'truncated' for c in calls)} requests cut off by a dying sender"),
            ("calls for other events / unknown bookings", f"{other_events} / {unknown_calls}"),
            ("provider calls per delivery", f"{len(our_calls) / max(1, len(expected)):.3f}"),
            ("DLQ messages (dlq list)", f"{len(dlq_messages)} "
             + json.dumps({q: sum(1 for m in dlq_messages if m.get('dlq') == q) for q in
                           sorted({m.get('dlq') for m in dlq_messages})})),
            ("queues at the end (ready messages)", json.dumps(depths)),
            ("load average during load (max 1-min)", f"{load_max:.2f}; at end {load_avg_end[0]:.2f} / "
             f"{load_avg_end[1]:.2f} / {load_avg_end[2]:.2f}"),
            ("CPU busy during load (all cores)", f"{busy:.0%}"),
        ]
        throughput = {}
        if rate_limit:
            answered_429 = sum(c.outcome == "429" for c in our_calls)
            share_429 = answered_429 / max(1, len(our_calls))
            rows.insert(0, ("scenario", f"(c) provider limited to {args.limit:g} calls/s per channel (429 above, "
                                        f"Retry-After: 1), workers limited to {args.worker_limit:g}/s, "
                                        f"{len(mesh.senders)} send worker process(es) started on the backlog"))
            rows.append(("calls answered 429", f"{answered_429} of {len(our_calls)} ({share_429:.2%})"))
            for channel in ("email", "push"):
                times = sorted(c.answered for c in our_calls if c.channel == channel and c.accepted)
                span = times[-1] - times[0] if len(times) > 1 else float("nan")
                throughput[channel] = (len(times) - 1) / span if len(times) > 1 else 0.0
                rows.append((f"{channel}: accepted calls/s through the drain", f"{throughput[channel]:.1f} "
                             f"({len(times)} in {span:.1f} s; {throughput[channel] / args.limit:.1%} of the limit)"))
                # The same between the 10th and the 90th percentile of the accepts: without the start-up
                # and the last stragglers (a retry's backoff), only the steady drain.
                low, high = times[len(times) // 10], times[len(times) * 9 // 10]
                steady = (len(times) * 9 // 10 - len(times) // 10) / (high - low) if high > low else float("nan")
                rows.append((f"{channel}: the same, 10th to 90th percentile of the accepts", f"{steady:.1f}/s"))
        width = max(len(label) for label, _ in rows)
        print(f"| {'measure':<{width}} | value")
        print(f"|{'-' * (width + 2)}|{'-' * 40}")
        for label, value in rows:
            print(f"| {label:<{width}} | {value}")

        print("\nfault timeline (seconds since the load started):")
        for event in sorted(timeline + log_timeline(tmp, wall_t0, min((e.at for e in timeline), default=0) - 0.5),
                            key=lambda e: e.at):
            print(f"  {event.at:7.1f}  {event.what}")
        if not timeline:
            print("  (none)")

        print("\nlatency by booking time (commit → accepted, both channels):")
        print(f"  {'booked at':>11} | {'deliveries':>10} | {'p50 s':>6} | {'p95 s':>6} | {'max s':>6} | missing")
        bucket_width = 10.0
        for k in range(int(math.ceil(args.duration / bucket_width))):
            lo, hi = t0 + k * bucket_width, t0 + (k + 1) * bucket_width
            in_bucket = [b for b in bookings if lo <= t0 + b.index / args.rate < hi]  # by scheduled time
            values, missing_n = [], 0
            for b in in_bucket:
                for channel in ("email", "push"):
                    call = accepted_items.get((b.booking_id, channel))
                    if call is None:
                        missing_n += 1
                    else:
                        values.append(call.answered - b.committed)
            print(f"  {k * bucket_width:4.0f}-{(k + 1) * bucket_width:<4.0f} s | {len(values) + missing_n:>10} | "
                  f"{pct(values, 0.5):>6.2f} | {pct(values, 0.95):>6.2f} | {max(values, default=float('nan')):>6.2f} | "
                  f"{missing_n}")

        slowest = sorted(((call.answered - committed[item[0]], item, call) for item, call in accepted_items.items()
                          if call is not None), key=lambda x: -x[0])[:8]
        calls_by_key: dict[str, list[Call]] = {}
        for c in our_calls:
            calls_by_key.setdefault(c.key, []).append(c)
        print("\nslowest deliveries:")
        for seconds, (booking_id, channel), call in slowest:
            history = " ".join(f"{c.outcome}@{c.arrived - t0:.1f}" for c in sorted(calls_by_key[call.key],
                                                                                    key=lambda c: c.arrived))
            print(f"  {seconds:6.1f} s  booked at {committed[booking_id] - t0:6.1f} s  {channel:<5} "
                  f"booking {booking_id[:8]}  outbox {outbox.get(booking_id, ('?',))[0]}  calls: {history}")

        if dups["unexplained"]:
            print("\nduplicates in effect (first 10):")
            for key, previous, call, cause in dups["unexplained"][:10]:
                print(f"  key {key[:8]} {call.channel:<5} booking {str(call.booking_id)[:8]}: accepted "
                      f"{previous.outcome}@{previous.arrived - t0:.1f}-{previous.answered - t0:.1f} s, again "
                      f"{call.outcome}@{call.arrived - t0:.1f} s; {cause}")
        if lost:
            print(f"\nlost deliveries ({len(lost)}), where they stopped (first 15):")
            for booking_id, channel in lost[:15]:
                state = states.get((booking_id, channel))
                box = outbox.get(booking_id)
                calls_here = [c for c in our_calls if c.booking_id == booking_id and c.channel == channel]
                print(f"  booking {booking_id[:8]} {channel:<5} outbox {box[:2] if box else None} delivery "
                      f"{(state[0], state[1], (state[2] or '')[:80]) if state else 'no row'} provider calls "
                      f"{[c.outcome for c in calls_here]}")
            stuck: dict[str, int] = {}
            for booking_id, channel in lost:
                state = states.get((booking_id, channel))
                box = outbox.get(booking_id)
                where = (f"outbox {box[0]}" if box and box[0] != "published" else
                         f"delivery {state[0]}" if state else "published, no delivery row")
                stuck[where] = stuck.get(where, 0) + 1
            print("  by place: " + json.dumps(stuck))
        if dead_unsent:
            reasons: dict[str, int] = {}
            for item in dead_unsent:
                where, reason = dead[item]
                text = f"{where}: {re.sub(r'[0-9a-f-]{36}', '<id>', reason or '')[:150]}"
                reasons[text] = reasons.get(text, 0) + 1
            print("\ndead-lettered deliveries by reason:")
            for text, count in sorted(reasons.items(), key=lambda kv: -kv[1])[:5]:
                print(f"  {count:5}  {text}")
        if load.stats.failed:
            print("\nfailed bookings (first 5): " + "; ".join(load.stats.failed[:5]))
        statuses: dict[str, int] = {}
        for item in expected:
            status = states.get(item, ("no row",))[0]
            statuses[status] = statuses.get(status, 0) + 1
        print("\ndelivery log status of the expected deliveries: " + json.dumps(statuses))
        out_statuses: dict[str, int] = {}
        for b in bookings:
            status = outbox.get(b.booking_id, ("no row",))[0]
            out_statuses[status] = out_statuses.get(status, 0) + 1
        print("booking outbox status of the confirmations: " + json.dumps(out_statuses))
        print("\nlog signals (counts of lines):")
        for name, label, count in log_signals(tmp):
            if count:
                print(f"  {name:<7} {label:<28} {count}")
        print(f"fake provider: {provider.server_errors} connections dropped by clients mid-request")

        print()
        p95 = pct(latencies, 0.95)
        print(f"TARGET {'MET' if not lost else 'MISSED'}: lost == 0 (lost {len(lost)})")
        print(f"TARGET {'MET' if not dups['unexplained'] else 'MISSED'}: duplicated in effect == 0 "
              f"(apart from accepted-after-timeout; got {len(dups['unexplained'])})")
        if dups["unexplained"]:
            print(f"   ({killed_dups} of them repeat a call the provider accepted but the SIGKILLed worker had not "
                  f"recorded: unavoidable without provider idempotency; {len(dups['unexplained']) - killed_dups} "
                  f"have no such excuse)")
        if rate_limit:
            print(f"TARGET {'MET' if share_429 <= 0.01 else 'MISSED'}: <= 1 % of calls answered 429 "
                  f"({share_429:.2%})")
            for channel, rate in throughput.items():
                print(f"TARGET {'MET' if abs(rate / args.limit - 1) <= 0.10 else 'MISSED'}: {channel} throughput "
                      f"within 10 % of the limit ({rate:.1f}/s against {args.limit:g}/s)")
        else:
            print(f"TARGET {'MET' if p95 <= 10 else 'MISSED'}: p95 commit → accepted <= 10 s (p95 {p95:.2f} s)")
        if provider_faults.wanted(args):
            provider_faults.report(args, outage, t0, wall_t0, tmp, our_calls, expected, accepted_items, committed,
                                   dead=len(dead_unsent) + len(dead_although_accepted), lost=len(lost),
                                   duplicated=len(dups["unexplained"]), drained=drained_at is not None,
                                   overflows=getattr(getattr(provider, "watcher", None), "overflows", 0))
        if args.keep_logs:
            print(f"\nlogs kept in {tmp}")
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", flush=True)
    finally:
        stop.set()
        if mesh is not None:
            mesh.stop_all()
        if broker is not None:
            try:
                broker.stop()
            except Exception as exc:  # noqa: BLE001
                print(f"private broker cleanup: {exc!r}", file=sys.stderr)
        if provider is not None:
            provider.stop()
        try:
            drop_databases()
        except Exception as exc:  # noqa: BLE001
            print(f"dropping the benchmark databases: {exc!r}", file=sys.stderr)
        if not args.keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
