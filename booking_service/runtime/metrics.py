"""Prometheus metrics of the API and the relay.

Under gunicorn several worker processes serve /metrics, so counters live in
prometheus-client's multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR`` is set
(the relay writes to the same folder, so its counters show up on /metrics
too). Outbox figures are read from the database at scrape time, so every
process reports the same truth. Metric objects are made on first use, not at
import: in multiprocess mode making one opens a file.
"""

from __future__ import annotations

import functools
import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY

#: The ``method`` label's values; any other method is counted as "other".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def listener_port(environ: dict) -> int | None:
    """The local port the request came in on (the socket, not the spoofable Host header); None if unknown."""
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    try:
        name = sock.getsockname() if sock is not None else None
    except OSError:  # the client hung up meanwhile
        return None
    return name[1] if isinstance(name, tuple) else None


@functools.cache
def http_requests() -> Counter:
    return Counter("booking_http_requests_total", "HTTP requests by route and status", ["method", "route", "status"])


@functools.cache
def http_latency() -> Histogram:
    return Histogram(
        "booking_http_request_duration_seconds",
        "HTTP request latency by route",
        ["method", "route"],
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    )


@functools.cache
def published() -> Counter:
    return Counter("booking_outbox_published_total", "Outbox messages published and confirmed", ["event"])


@functools.cache
def publish_failures() -> Counter:
    return Counter("booking_outbox_publish_failures_total", "Failed publish attempts by reason", ["reason"])


@functools.cache
def receipts_consumed() -> Counter:
    return Counter("booking_receipts_consumed_total",
                   "Delivery receipts the receipts consumer handled, by outcome", ["outcome"])


class OutboxCollector:
    """Backlog and oldest-row age, read from the database when scraped."""

    def __init__(self, session_factory):
        self.session_factory = session_factory

    def collect(self):
        from booking_service.storage.outbox_stats import backlog

        with self.session_factory() as session:
            figures = backlog(session)
        yield GaugeMetricFamily(
            "booking_outbox_backlog", "Outbox rows due and not yet published", value=figures["pending_due"]
        )
        yield GaugeMetricFamily(
            "booking_outbox_oldest_age_seconds", "Age of the oldest due unpublished row",
            value=figures["oldest_due_age_seconds"],
        )


def render(session_factory) -> tuple[bytes, str]:
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        for collector in list(REGISTRY._collector_to_names):  # this process's own metrics
            registry.register(collector)
    registry.register(OutboxCollector(session_factory))
    return generate_latest(registry), CONTENT_TYPE_LATEST
