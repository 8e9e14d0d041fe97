"""Benchmark: raw broker rate vs dispatch → e-mail (file sink) through real workers.

Usage: .venv/bin/python benchmarks/bench_notification.py [N]
       BENCH_CONCURRENCY=8 sets the worker's threads (-c)
       BENCH_NOTIFICATION_DATABASE_URL=postgresql+psycopg://... to put the delivery log on PostgreSQL
Loopback only; creates and deletes its own vhost (needs the management API).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
import time

import pika

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import shared  # noqa: E402
from benchmarks.vhost import make_vhost  # noqa: E402
from tests.notification.conftest import declare_topology, dispatch_message, notification  # noqa: E402

AMQP = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672//")


def raw_rate(url: str, n: int) -> tuple[float, float]:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare("", exclusive=True, arguments={"x-max-priority": 9}).method.queue
    body = b"x" * 400
    start = time.perf_counter()
    for _ in range(n):
        ch.basic_publish("", q, body, pika.BasicProperties(delivery_mode=2, priority=5))
    pub = n / (time.perf_counter() - start)
    ch.basic_qos(prefetch_count=1)
    got = 0
    start = time.perf_counter()
    for method, _props, _body in ch.consume(q, inactivity_timeout=5):
        if method is None:
            break
        ch.basic_ack(method.delivery_tag)
        got += 1
        if got == n:
            break
    cons = got / (time.perf_counter() - start)
    conn.close()
    return pub, cons


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    concurrency = os.environ.get("BENCH_CONCURRENCY", "8")
    url, drop_vhost = make_vhost(AMQP)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-notif-"))
    worker = None
    try:
        pub, cons = raw_rate(url, n)
        declare_topology(url)
        env = {**os.environ, "AMQP_URL": url, "NOTIFICATION_DATABASE_URL": os.environ.get("BENCH_NOTIFICATION_DATABASE_URL") or f"sqlite:///{tmp / 'n.db'}",
               "EMAIL_FILE_DIR": str(tmp / "email"), "PUSH_BACKEND": "file", "PUSH_FILE_DIR": str(tmp / "push"),
               "NOTIFICATION_METRICS_PORT": "0", "NOTIFICATION_LOG_FORMAT": "json"}
        bin_dir = pathlib.Path(sys.executable).parent
        subprocess.run([str(bin_dir / "notification-service"), "migrate"], env=env, check=True, capture_output=True)
        log = open(tmp / "worker.log", "wb")
        worker = subprocess.Popen([str(bin_dir / "celery"), "-A", "notification_service.celery_app", "worker", "-P", "threads",
                                   "-c", concurrency, "-Q", ",".join(shared.WORK_QUEUES), "--without-gossip", "--without-mingle"],
                                  env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        ch.confirm_delivery()

        def publish(count: int) -> None:
            for _ in range(count):
                m = dispatch_message(notification(tokens=()))
                ch.basic_publish(shared.EXCHANGE, m.routing_key, m.body,
                                 pika.BasicProperties(headers=m.headers, **m.properties))

        def wait_files(count: int) -> None:
            deadline = time.monotonic() + 600
            while not (tmp / "email").exists() or len(list((tmp / "email").glob("*.eml"))) < count:
                if time.monotonic() > deadline:
                    raise SystemExit("timed out")
                time.sleep(0.05)

        publish(1)  # warm-up: the worker is up and connected before the clock starts
        wait_files(1)
        messages = [dispatch_message(notification(tokens=())) for _ in range(n)]
        cpu_before = cpu_seconds(worker.pid)
        start = time.perf_counter()
        for m in messages:
            ch.basic_publish(shared.EXCHANGE, m.routing_key, m.body, pika.BasicProperties(headers=m.headers, **m.properties))
        conn.close()
        wait_files(n + 1)
        tasks = n / (time.perf_counter() - start)  # publish + dispatch + e-mail, worker already running
        cpu_ms = (cpu_seconds(worker.pid) - cpu_before) * 1000 / n
        print(f"{'measure':<48}{'rate/s':>10}")
        print(f"{'raw pika publish, confirms, 400 B persistent':<48}{pub:>10.0f}")
        print(f"{'raw consume, manual ack, prefetch 1':<48}{cons:>10.0f}")
        print(f"{f'dispatch -> e-mail (file sink), threads -c {concurrency}':<48}{tasks:>10.1f}")
        print(f"{'ratio notifications / raw consume':<48}{tasks / cons:>10.3f}")
        print(f"{'worker CPU per notification (2 tasks), ms':<48}{cpu_ms:>10.1f}")
        print(f"load average while measuring: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    finally:
        if worker:
            worker.terminate()
            worker.wait(30)
        drop_vhost()


if __name__ == "__main__":
    main()
