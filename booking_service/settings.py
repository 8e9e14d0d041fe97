"""Settings of the booking service, read from the environment only."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _keys(raw: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in raw.split(",") if k.strip())


@dataclass(frozen=True)
class Settings:
    #: SQLAlchemy URL; the default SQLite file needs nothing else installed.
    database_url: str = "sqlite:///var/booking.db"
    #: Broker the relay publishes to (the booking user only needs publish rights).
    amqp_url: str = "amqp://guest:guest@localhost:5672//"
    #: Bearer keys accepted by the API. Empty means every /v1 request is refused.
    api_keys: tuple[str, ...] = field(default_factory=tuple)
    #: How long before a booking starts its reminder is sent.
    reminder_lead_seconds: int = 24 * 3600
    #: Largest request body accepted (413 above it).
    max_body_bytes: int = 64 * 1024
    #: json (production) or console (development).
    log_format: str = "console"
    log_level: str = "INFO"
    #: SQLite only: FULL (an acknowledged booking survives a power cut) or NORMAL.
    sqlite_synchronous: str = "FULL"
    #: Relay: how long it sleeps when the outbox has nothing due. On SQLite this
    #: short poll is the wake-up; on PostgreSQL a commit wakes the relay at once
    #: (LISTEN/NOTIFY) and the poll only finds reminders falling due.
    relay_poll_seconds: float = 0.02
    #: Relay: rows leased per batch (one short claim transaction, then published outside it).
    relay_batch_size: int = 100
    #: Relay: ceiling of the reconnect backoff. Low on purpose: after a long
    #: outage the relay probes this often, so it is back within seconds of the broker.
    relay_max_backoff_seconds: float = 1.0
    #: Relay: port of its own /metrics (0 = off). Where the relay does not share
    #: PROMETHEUS_MULTIPROC_DIR with the API (its own container), this is how its
    #: publish counters are scraped.
    relay_metrics_port: int = 0
    #: host:port where the API serves /metrics instead of on its public port ("" = on
    #: the API port, as before). gunicorn listens on both; a request for /metrics on
    #: the API port is a 404, and the metrics port serves nothing but /metrics.
    metrics_bind: str = ""
    #: Receipts consumer: unacknowledged receipts the broker may hand it at once.
    receipts_prefetch: int = 50
    #: Receipts consumer: ceiling of the reconnect backoff (broker or database away).
    receipts_max_backoff_seconds: float = 3.0
    #: Timeout of the broker check in /readyz.
    ready_broker_timeout_seconds: float = 0.5

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        d = cls()
        return cls(
            database_url=env.get("BOOKING_DATABASE_URL", d.database_url),
            amqp_url=env.get("AMQP_URL", d.amqp_url),
            api_keys=_keys(env.get("BOOKING_API_KEYS", "")),
            reminder_lead_seconds=int(env.get("BOOKING_REMINDER_LEAD_SECONDS", d.reminder_lead_seconds)),
            max_body_bytes=int(env.get("BOOKING_MAX_BODY_BYTES", d.max_body_bytes)),
            log_format=env.get("BOOKING_LOG_FORMAT", d.log_format),
            log_level=env.get("BOOKING_LOG_LEVEL", d.log_level),
            sqlite_synchronous=env.get("BOOKING_SQLITE_SYNCHRONOUS", d.sqlite_synchronous),
            relay_poll_seconds=float(env.get("BOOKING_RELAY_POLL_SECONDS", d.relay_poll_seconds)),
            relay_batch_size=int(env.get("BOOKING_RELAY_BATCH_SIZE", d.relay_batch_size)),
            relay_max_backoff_seconds=float(env.get("BOOKING_RELAY_MAX_BACKOFF_SECONDS", d.relay_max_backoff_seconds)),
            relay_metrics_port=int(env.get("BOOKING_RELAY_METRICS_PORT", d.relay_metrics_port)),
            metrics_bind=env.get("BOOKING_METRICS_BIND", d.metrics_bind).strip(),
            receipts_prefetch=int(env.get("BOOKING_RECEIPTS_PREFETCH", d.receipts_prefetch)),
            receipts_max_backoff_seconds=float(env.get("BOOKING_RECEIPTS_MAX_BACKOFF_SECONDS",
                                                       d.receipts_max_backoff_seconds)),
        )

    @property
    def metrics_port(self) -> int | None:
        """Port of ``metrics_bind``, or None when /metrics stays on the API port."""
        if not self.metrics_bind:
            return None
        host, sep, port = self.metrics_bind.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"BOOKING_METRICS_BIND must be host:port, got {self.metrics_bind!r}")
        return int(port)
