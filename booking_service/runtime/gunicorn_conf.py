"""gunicorn settings for the booking API (``booking-service serve``), from the environment.

Sync workers: every request is a short database transaction, and 2 × cores + 1
processes keep the cores busy without threads sharing a SQLAlchemy session.
"""

import multiprocessing
import os

bind = [os.environ.get("BOOKING_BIND", "0.0.0.0:8000")]
# /metrics on a port of its own (BOOKING_METRICS_BIND, see config.Settings.metrics_bind):
# the same workers listen on it, and the app tells the two apart by the local port.
if os.environ.get("BOOKING_METRICS_BIND", "").strip():
    bind.append(os.environ["BOOKING_METRICS_BIND"].strip())
workers = int(os.environ.get("BOOKING_WORKERS", multiprocessing.cpu_count() * 2 + 1))
worker_class = "sync"
timeout = int(os.environ.get("BOOKING_WORKER_TIMEOUT", "30"))
graceful_timeout = 20
keepalive = 5
accesslog = None  # the app logs each request itself, as structured JSON with the request id
errorlog = "-"
# Bodies are capped by the app too (BOOKING_MAX_BODY_BYTES); this caps headers.
limit_request_field_size = 8190


def post_worker_init(worker):
    # The worker has loaded the app and accepts from now on: a boot that is slow shows here.
    worker.log.info("worker ready (pid %s)", worker.pid)


def child_exit(server, worker):
    # Multiprocess Prometheus: drop the gauges of a worker that died.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
