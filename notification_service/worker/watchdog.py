"""Detects a stalled consumer and makes it reconnect.

A stall looks like this (seen after broker restarts): the consumer is
attached, messages are ready in its queues, the worker has room for more, and
yet nothing arrives for minutes, because the consumer's thread is stuck on its
connection. Every ``NOTIFICATION_STALL_CHECK_SECONDS`` this step's thread
compares what the consumer received with what the broker holds ready (a
passive declare on a connection of its own); two checks in a row that show
ready messages, free capacity and no progress are a stall. It is logged and
the consumer's socket is shut down, so Celery reconnects as after any broker
failure: the unacked messages return to the queue and nothing is lost.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass

import structlog
from celery import bootsteps
from celery.worker import state as worker_state

log = structlog.get_logger("notification_service.worker.watchdog")


@dataclass(frozen=True)
class Observation:
    received: int   # messages the consumer has received so far
    ready: int      # messages ready in the queues it consumes
    capacity: int   # prefetch slots it has free


def is_stalled(previous: Observation | None, current: Observation) -> bool:
    """Two observations in a row with work waiting, room to take it, and no progress."""
    return (previous is not None and current.received == previous.received
            and min(previous.ready, current.ready) > 0 and min(previous.capacity, current.capacity) > 0)


class StallWatchdog(bootsteps.StartStopStep):
    """Consumer bootstep: one daemon thread per worker process."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c, **kwargs):
        super().__init__(c, **kwargs)
        self.interval = float(getattr(getattr(c.app, "settings", None), "stall_check_seconds", 15.0))
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, c):
        if self.interval > 0 and self.thread is None:
            self.thread = threading.Thread(target=self.run, args=(c,), name="stall-watchdog", daemon=True)
            self.thread.start()

    def shutdown(self, c):
        self.stopping.set()

    def run(self, c) -> None:
        previous: Observation | None = None
        while not self.stopping.wait(self.interval):
            try:
                current = self.observe(c)
            except Exception as exc:  # noqa: BLE001 - the broker may be away; the next check tries again
                log.warning("stall check failed", error=repr(exc))
                previous = None
                continue
            if current is not None and is_stalled(previous, current):
                log.error("consumer stalled: messages ready, room to take them, none received; reconnecting",
                          ready=current.ready, capacity=current.capacity, seconds=2 * self.interval)
                self.reconnect(c)
                current = None
            previous = current

    def observe(self, c) -> Observation | None:
        consumer = c.task_consumer
        if consumer is None or c.connection is None or c.qos is None:
            return None
        queues = [queue.name for queue in consumer.queues]
        with c.app.connection_for_read() as connection:
            channel = connection.default_channel
            ready = sum(channel.queue_declare(name, passive=True).message_count for name in queues)
        return Observation(received=getattr(c, "received_count", 0), ready=ready,
                           capacity=c.qos.value - len(worker_state.reserved_requests))

    @staticmethod
    def reconnect(c) -> None:
        """Shut the consumer's socket down: its thread sees a connection error and Celery reconnects."""
        transport = getattr(getattr(c.connection, "connection", None), "transport", None)
        sock = getattr(transport, "sock", None)
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError as exc:
            log.warning("could not shut the stalled connection down", error=repr(exc))
