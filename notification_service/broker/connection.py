"""How the notification service's own pika clients (the receipts publisher, the dead-letter CLI) reach RabbitMQ."""

from __future__ import annotations

import pika

from shared.amqp_url import for_pika


def parameters(amqp_url: str) -> pika.URLParameters:
    """One attempt per call (a long-running caller owns its backoff); heartbeats every 30 s, served by the
    caller's ``process_data_events``; a blocked (flow-controlled) connection is given up after 30 s."""
    params = pika.URLParameters(for_pika(amqp_url))
    params.heartbeat = 30
    params.blocked_connection_timeout = 30
    params.connection_attempts = 1
    params.socket_timeout = 5
    return params


def connect(amqp_url: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(parameters(amqp_url))
