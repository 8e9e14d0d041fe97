"""The one way the booking service's long-running processes (relay, receipts consumer) connect to RabbitMQ."""

from __future__ import annotations

import pika

from shared.amqp_url import for_pika


def parameters(amqp_url: str) -> pika.URLParameters:
    """One attempt per call (the caller owns the capped backoff); heartbeats every 30 s, served by the
    caller's ``process_data_events``; a blocked (flow-controlled) connection is given up after 30 s."""
    params = pika.URLParameters(for_pika(amqp_url))
    params.heartbeat = 30
    params.blocked_connection_timeout = 30
    params.connection_attempts = 1
    params.socket_timeout = 5
    return params
