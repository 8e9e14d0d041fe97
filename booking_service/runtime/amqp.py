"""The one way the booking service's long-running processes (relay, receipts consumer) connect to RabbitMQ."""

from __future__ import annotations

import pika

from shared.amqp_url import pika_urls


def parameters(amqp_url: str) -> list[pika.URLParameters]:
    """One attempt per node and call, the nodes of a cluster in random order (pika tries each in turn;
    the caller owns the capped backoff); heartbeats every 30 s, served by the caller's
    ``process_data_events``, so a hung node is noticed within a minute; a blocked (flow-controlled)
    connection is given up after 30 s; a node that accepts TCP but never answers costs 5 s."""
    found = []
    for url in pika_urls(amqp_url):
        params = pika.URLParameters(url)
        params.heartbeat = 30
        params.blocked_connection_timeout = 30
        params.connection_attempts = 1
        params.socket_timeout = 5
        params.stack_timeout = 5
        found.append(params)
    return found
