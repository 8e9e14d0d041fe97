"""Holding a channel: while every provider of a channel refuses calls, this worker takes none of its messages.

When every provider of a channel has its circuit breaker open, a send task
can do nothing but put its message back. Taking more of that channel's
messages would only move them from the queue to the delayed-retry queues and
back, so the worker stops consuming the channel's lane queues
(``notifications.<channel>.high`` and ``.low``) until the earliest breaker lets a
probe through. The messages wait in their queues, visible as *ready* with no
consumer from this worker in the management UI, and no retry is spent on them.

At the end of the hold the worker consumes again; the first message it takes
is the breaker's probe. If the probe fails, the breaker opens again (for longer)
and the next task asks for a new hold.

The hold is a consumer bootstep. Task threads ask for it through :func:`hold`;
the queues are cancelled and consumed again on the consumer's own thread
(kombu's hub), because the consumer's connection is not thread-safe. Celery's
``cancel_task_queue`` deselects the queue as well, so a reconnect during a hold
does not consume it again before the hold ends.
"""

from __future__ import annotations

import threading
import time

import structlog
from celery import bootsteps

import shared
from notification_service.runtime import metrics

log = structlog.get_logger("notification_service.worker.channel_hold")

#: A request that would extend a hold by less than this is not worth a round on the event loop.
EXTEND_SLACK_SECONDS = 0.5

#: The stage (queue name without the lane) of each channel.
CHANNEL_STAGES = {shared.CHANNEL_EMAIL: shared.EMAIL_QUEUE, shared.CHANNEL_PUSH: shared.PUSH_QUEUE}



class _Current:
    """The running consumer's hold step (one consumer per worker process)."""

    lock = threading.Lock()
    step: ChannelHold | None = None


def hold(channel: str, seconds: float) -> bool:
    """Ask this worker to stop taking ``channel``'s messages for ``seconds``; False outside a worker."""
    with _Current.lock:
        step = _Current.step
    if step is None or seconds <= 0:
        return False
    return step.request(channel, seconds)


class ChannelHold(bootsteps.StartStopStep):
    """Consumer bootstep: cancels and resumes the lane queues of a held channel on the consumer's thread."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c, **kwargs):
        super().__init__(c, **kwargs)
        self.consumer = c
        self.lock = threading.Lock()
        #: channel → monotonic time its hold ends.
        self.until: dict[str, float] = {}
        #: channel → the queues this hold cancelled (consumed again when it ends).
        self.cancelled: dict[str, list[str]] = {}

    def start(self, c):
        self.consumer = c
        with _Current.lock:
            _Current.step = self

    def shutdown(self, c):
        with _Current.lock:
            if _Current.step is self:
                _Current.step = None

    # -- any thread ------------------------------------------------------------

    def request(self, channel: str, seconds: float) -> bool:
        stage = CHANNEL_STAGES.get(channel)
        hub = getattr(getattr(self.consumer, "controller", None), "hub", None)
        if stage is None or hub is None:
            return False
        end = time.monotonic() + seconds
        with self.lock:
            if self.until.get(channel, 0.0) >= end - EXTEND_SLACK_SECONDS:
                return True
            first = channel not in self.until
            self.until[channel] = end
        if first:
            hub.call_soon(self._begin, channel, stage)
        return True

    # -- the consumer's thread ---------------------------------------------------

    def _begin(self, channel: str, stage: str) -> None:
        c = self.consumer
        consumed = set(c.app.amqp.queues.consume_from)
        queues = [queue for queue in (shared.lane_queue(stage, lane) for lane in shared.Lane) if queue in consumed]
        for queue in queues:
            c.cancel_task_queue(queue)
        self.cancelled[channel] = queues
        metrics.CHANNEL_HELD.labels(channel).set(1)
        with self.lock:
            left = self.until.get(channel, 0.0) - time.monotonic()
        log.warning("channel_held", channel=channel, queues=queues, seconds=round(max(left, 0.0), 1),
                    why=f"every {channel} provider's circuit breaker is open")
        c.controller.hub.call_later(max(left, 0.0), self._check, channel)

    def _check(self, channel: str) -> None:
        with self.lock:
            left = self.until.get(channel, 0.0) - time.monotonic()
            if left <= 0:
                self.until.pop(channel, None)
        if left > 0:
            self.consumer.controller.hub.call_later(left, self._check, channel)
            return
        queues = self.cancelled.pop(channel, [])
        for queue in queues:
            self.consumer.add_task_queue(queue)
        metrics.CHANNEL_HELD.labels(channel).set(0)
        log.info("channel_resumed", channel=channel, queues=queues)
