"""The provider rate limit across OS processes, on one SQLite file or one PostgreSQL database.

Two sender processes of several threads each (``tests/notification/rate_senders.py``: the worker's
``HttpEmailProvider`` behind ``RateLimitedProvider``) against a loopback e-mail API, and two real Celery
send workers against the fake push API. The assertions are computed from the times the fake APIs
recorded, not from the test's own duration.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import uuid

import pytest

from notification_service.delivery.migrate import upgrade
from tests.notification.harness import Worker, declare_topology, dispatch_message, notification, publish
from tests.notification.rate_senders import FakeEmailApi
from tests.support import wait_for

REPO = pathlib.Path(__file__).resolve().parents[3]
#: Seconds a request may arrive after its slot on a loaded two-core machine (a sender thread woken late,
#: a first connection); the slots themselves are checked exactly in tests/integration. Without the limit
#: these senders go 5-20 times over the rate, far outside this allowance.
JITTER = 0.25


@pytest.fixture
def api():
    fakes: list[FakeEmailApi] = []

    def make(**options) -> FakeEmailApi:
        fakes.append(FakeEmailApi(**options))
        return fakes[-1]

    yield make
    for fake in fakes:
        fake.close()


def _run_senders(database_url: str, fake: FakeEmailApi, tmp_path: pathlib.Path, *, rate: float, threads: int,
                 count: int, processes: int = 2) -> list[str]:
    """Start ``processes`` sender processes, let them go together, and return their last lines."""
    upgrade(database_url)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-m", "tests.notification.rate_senders", database_url, fake.url,
                               str(go), "--tag", f"p{i}", "--rate", str(rate), "--threads", str(threads),
                               "--count", str(count)], cwd=REPO, stdout=subprocess.PIPE, text=True)
             for i in range(processes)]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        go.touch()
        outputs = [proc.communicate(timeout=120)[0].strip() for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert all(proc.returncode == 0 for proc in procs), outputs
    return outputs


def _most_in_any_window(times: list[float], seconds: float) -> int:
    start, most = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= seconds:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_the_rate_limit_holds_with_two_worker_processes(database_url, api, tmp_path):
    rate, threads, count = 20.0, 4, 8
    fake = api()
    _run_senders(database_url, fake, tmp_path, rate=rate, threads=threads, count=count)
    calls = fake.snapshot()
    assert len(calls) == 2 * threads * count
    assert {call.key.split("-")[0] for call in calls} == {"p0", "p1"}
    # Both processes sent throughout, not one after the other.
    first_half = calls[: len(calls) // 2]
    assert {call.key.split("-")[0] for call in first_half} == {"p0", "p1"}
    span = calls[-1].arrived - calls[0].arrived
    # n calls at `rate` with burst 1 need (n - 1) intervals.
    assert len(calls) - 1 <= rate * (span + JITTER), f"{len(calls)} calls in {span:.2f} s"
    assert _most_in_any_window([call.arrived for call in calls], 1.0) <= rate * (1 + JITTER) + 1


def test_a_429_with_retry_after_from_one_call_slows_every_thread(database_url, api, tmp_path):
    fake = api(throttle_call=10, retry_after="2")
    outputs = _run_senders(database_url, fake, tmp_path, rate=10.0, threads=3, count=6)
    assert sum(int(line.rsplit("=", 1)[1]) for line in outputs) == 1  # the one 429 reached its sender
    calls = fake.snapshot()
    throttled = [call for call in calls if call.status == 429]
    assert len(throttled) == 1
    answered = throttled[0].answered
    # The 429's answer needs a moment to reach its worker and be written: JITTER allowed for that.
    during_pause = [round(call.arrived - answered, 3) for call in calls
                    if answered + JITTER <= call.arrived < answered + 2]
    assert during_pause == [], f"calls {during_pause} s after the 429, within its Retry-After: 2"
    after = [call for call in calls if call.arrived >= answered + 2]
    assert {call.key.split("-")[0] for call in after} == {"p0", "p1"}  # both processes went on after the pause



def test_two_celery_send_workers_share_the_push_rate_limit(database_url, module_vhost, fake_push, tmp_path):
    rate, count = 10.0, 30
    declare_topology(module_vhost)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    workers = [Worker(module_vhost, tmp_path / name, fake_push, concurrency=8, NOTIFICATION_DATABASE_URL=database_url,
                      PUSH_HTTP_RATE_LIMIT=str(rate)) for name in ("a", "b")]
    try:
        for worker in workers:
            worker.start()
        run = uuid.uuid4().hex[:8]
        tokens = {f"tok-rate-{run}-{i}" for i in range(count)}
        for token in tokens:
            publish(module_vhost, dispatch_message(notification(tokens=(token,))))

        def accepted() -> list[dict]:
            with fake_push.lock:
                return [r for r in fake_push.requests if r["token"] in tokens and r.get("status") == 200]

        wait_for(lambda: len(accepted()) >= count, 90, f"{count} pushes")
    finally:
        for worker in workers:
            worker.stop()
    times = sorted(r["time"] for r in accepted())
    assert len(times) == count
    span = times[-1] - times[0]
    assert count - 1 <= rate * (span + JITTER), f"{count} pushes in {span:.2f} s"
    assert _most_in_any_window(times, 1.0) <= rate * (1 + JITTER) + 1
    sent_by = [sum('"sent"' in line and "notifications.push.send" in line for line in worker.log_text().splitlines())
               for worker in workers]
    assert all(sent_by), f"pushes sent per worker: {sent_by}"  # both processes sent under the one limit
