"""``booking-service relay``: build the relay from settings, serve its metrics, run until SIGTERM/SIGINT."""

from __future__ import annotations

import signal

import structlog

from booking_service.relay.relay import Relay
from booking_service.storage.db import make_engine, make_session_factory

log = structlog.get_logger(__name__)


def run_forever(settings) -> None:
    engine = make_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    relay = Relay(make_session_factory(engine), settings.amqp_url, poll_seconds=settings.relay_poll_seconds,
                  batch_size=settings.relay_batch_size, max_backoff=settings.relay_max_backoff_seconds,
                  confirm_timeout=settings.relay_confirm_timeout_seconds)
    if settings.relay_metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.relay_metrics_port)
        log.info("relay_metrics_serving", port=settings.relay_metrics_port)
    signal.signal(signal.SIGTERM, relay.stop)
    signal.signal(signal.SIGINT, relay.stop)
    log.info("relay_started", poll_seconds=settings.relay_poll_seconds, batch_size=settings.relay_batch_size)
    relay.run()
    engine.dispose()
