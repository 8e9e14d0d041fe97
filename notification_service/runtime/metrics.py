"""Prometheus metrics of the worker.

The worker runs the threads pool (one process), so the default registry and
one ``start_http_server`` are correct; prefork would need multiprocess mode.
It listens on ``NOTIFICATION_METRICS_ADDR``, loopback unless a deployment opens
it for its scraper: the counters name queues and providers, nothing anyone
else on the network needs.
"""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram, start_http_server

TASKS = Counter("notification_tasks_total", "Tasks finished, by task name and outcome.", ["task", "outcome"])
RETRIES = Counter("notification_task_retries_total", "Retries scheduled, by task name.", ["task"])
DEAD_LETTERS = Counter("notification_dead_letters_total", "Messages rejected into a dead-letter queue.",
                       ["queue", "kind"])
PROVIDER_LATENCY = Histogram("notification_provider_seconds", "Provider call latency.", ["provider"])
RECEIPTS_PUBLISHED = Counter("notification_receipts_published_total", "Delivery receipts confirmed by the broker.")
RECEIPT_PUBLISH_FAILURES = Counter("notification_receipt_publish_failures_total",
                                   "Receipt publish failures, by reason.", ["reason"])
CHANNEL_HELD = Gauge("notification_channel_held", "1 while this worker takes none of a channel's messages "
                     "(every provider's breaker open), by channel.", ["channel"])
GAVE_UP = Counter("notification_gave_up_total", "Messages dead-lettered for a transient reason because they could "
                  "no longer be useful (older than NOTIFICATION_MAX_AGE_SECONDS), by task.", ["task"])
PROVIDER_RATE_WAIT = Counter("notification_provider_rate_limited_seconds_total",
                             "Seconds sends slept for their provider's rate limit or a 429's pause.", ["provider"])
PROVIDER_RATE_LIMITED = Counter("notification_provider_rate_limited_total",
                                "Sends handed back to the broker: their slot was further than the max wait.",
                                ["provider"])
PROVIDER_THROTTLED = Counter("notification_provider_throttled_total",
                             "429 answers (Too Many Requests) from providers.", ["provider"])
BREAKER_STATE = Gauge("notification_provider_breaker_state",
                      "Each provider's circuit breaker: 0 closed, 1 half open (a probe is out), 2 open.", ["provider"])
FAILOVERS = Counter("notification_provider_failovers_total",
                    "Sends passed to the next provider of the channel after one certainly did not take them.",
                    ["channel", "from_provider", "to_provider"])
CALLS_REFUSED = Counter("notification_provider_calls_refused_total",
                        "Provider calls refused by the provider's open circuit breaker.", ["provider"])
DB_TRANSACTIONS = Counter("notification_db_transactions_total", "Delivery-log transactions committed or rolled back.")

#: Port -> the address its /metrics server listens on, in this process.
_started: dict[int, tuple[str, int]] = {}
_lock = threading.Lock()


def start(port: int, addr: str = "127.0.0.1") -> tuple[str, int] | None:
    """Serve /metrics on ``addr``:``port`` once per process; 0 disables it. Returns where it listens."""
    if not port:
        return None
    with _lock:
        if port not in _started:
            server, _thread = start_http_server(port, addr=addr)
            _started[port] = server.socket.getsockname()[:2]
        return _started[port]
WEBHOOK_EVENTS = Counter("notification_webhook_events_total", "Provider webhook events received, by provider and "
                         "outcome (applied, unchanged, unmatched, duplicate, ignored, refused).",
                         ["provider", "outcome"])
