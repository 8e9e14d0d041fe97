"""Small helpers the test packages share: bounded polling and a free loopback port."""

from __future__ import annotations

import socket
import time

import pika

import shared


def wait_for(predicate, timeout: float = 30.0, what: str = "condition", interval: float = 0.1):
    """Poll ``predicate`` until it returns something truthy and return it; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def queue_depth(url: str, queue: str) -> int:
    """Ready messages in ``queue`` (a passive declare on a connection of its own)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


#: The high lane of each stage: where a confirmation (Priority HIGH or NORMAL) is queued.
DISPATCH_HIGH = shared.lane_queue(shared.DISPATCH_QUEUE, shared.Lane.HIGH)
EMAIL_HIGH = shared.lane_queue(shared.EMAIL_QUEUE, shared.Lane.HIGH)
PUSH_HIGH = shared.lane_queue(shared.PUSH_QUEUE, shared.Lane.HIGH)
