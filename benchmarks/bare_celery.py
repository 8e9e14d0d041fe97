"""Bare Celery baseline for bench_notification.py: a two-hop chain with the worker settings the project uses.

``bare.first`` is a no-op that publishes ``bare.second`` (a confirmed publish, like
dispatch fanning out a send); ``bare.second`` appends one byte to a counter file so
the benchmark can count finished chains without asking the broker. Same broker,
same acks_late / prefetch 1 / JSON / confirm_publish settings and the same pool
flags as the notification worker it is compared with.

Run as ``celery -A benchmarks.bare_celery worker -Q bare.first,bare.second``.
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Exchange, Queue

EXCHANGE = Exchange("bare", type="direct", durable=True)
QUEUES = [Queue(name, EXCHANGE, routing_key=name, durable=True, queue_arguments={"x-max-priority": 9})
          for name in ("bare.first", "bare.second")]

app = Celery("bare")
app.conf.update(
    broker_url=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672//"),
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    accept_content=["json"],
    task_serializer="json",
    task_ignore_result=True,
    broker_transport_options={"confirm_publish": os.environ.get("BARE_CONFIRM","1")=="1"},
    worker_enable_prefetch_count_reduction=False,
    worker_hijack_root_logger=False,
    task_queues=QUEUES,
    task_routes={"bare.first": {"queue": "bare.first"}, "bare.second": {"queue": "bare.second"}},
)
COUNTER = os.environ.get("BARE_COUNTER_FILE", "bare-chains.count")


@app.task(name="bare.first")
def first(n: int) -> None:
    second.apply_async((n,), priority=5)


@app.task(name="bare.second")
def second(n: int) -> None:
    fd = os.open(COUNTER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, b".")
    finally:
        os.close(fd)
