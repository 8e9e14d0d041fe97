"""gunicorn settings for the booking API (``booking-service serve``), from ``Settings.from_env()``.

gevent workers (``runtime/gunicorn_worker.py``): every request is a short database
transaction, 2 × cores + 1 processes keep the cores busy, and a client that sends its
request slowly, or never finishes it, waits in a greenlet instead of holding a worker.
Reading the same Settings as the app means BOOKING_BIND, BOOKING_WORKERS and
BOOKING_WORKER_TIMEOUT are checked, and honoured from ./.env, like every other variable.
"""

import os

from booking_service.settings import Settings

_settings = Settings.from_env()

bind = [_settings.bind]
# /metrics on a port of its own (BOOKING_METRICS_BIND, see Settings.metrics_bind):
# the same workers listen on it, and the app tells the two apart by the local port.
if _settings.metrics_bind:
    bind.append(_settings.metrics_bind)
workers = _settings.workers
worker_class = "booking_service.runtime.gunicorn_worker.ApiWorker"
#: Connections one worker keeps open at once (slow or idle clients included); past it, it stops accepting.
worker_connections = 1000
timeout = _settings.worker_timeout
graceful_timeout = 20
keepalive = 5
accesslog = None  # the app logs each request itself, as structured JSON with the request id
errorlog = "-"
# Bodies are capped by the app too (BOOKING_MAX_BODY_BYTES); this caps headers.
limit_request_field_size = 8190
# gunicorn's control socket defaults to one path per user (~/.gunicorn/gunicorn.ctl): a second
# gunicorn of the same user (a second mesh, a test) took it over. The API does not use it.
control_socket_disable = True


def post_worker_init(worker):
    # The worker has loaded the app and accepts from now on: a boot that is slow shows here.
    worker.log.info("worker ready (pid %s)", worker.pid)


def child_exit(server, worker):
    # Multiprocess Prometheus: drop the gauges of a worker that died. prometheus-client reads
    # this variable from the process environment itself, so it is not one of the Settings.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
