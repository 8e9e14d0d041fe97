"""Broker names, task names and priority levels: the wire vocabulary both services share.

Everything here is a plain constant; nothing opens a connection.
"""

from __future__ import annotations

import enum

#: Durable topic exchange the booking service publishes to (topic so that RabbitMQ's topic permissions can
#: limit the booking user to the dispatch routing key; every binding key is a full queue name).
EXCHANGE = "notifications"
#: Dead-letter exchange every work queue dead-letters into (routing key = the queue name).
DEAD_LETTER_EXCHANGE = "notifications.dlx"

#: Work queues, one per stage and channel. Their routing key on ``EXCHANGE`` is the queue name.
DISPATCH_QUEUE = "notifications.dispatch"
EMAIL_QUEUE = "notifications.email"
PUSH_QUEUE = "notifications.push"
WORK_QUEUES = (DISPATCH_QUEUE, EMAIL_QUEUE, PUSH_QUEUE)

#: Suffix of the dead-letter queue that belongs to each work queue.
DLQ_SUFFIX = ".dlq"


def dead_letter_queue(queue: str) -> str:
    """Return the name of the dead-letter queue of ``queue``."""
    return f"{queue}{DLQ_SUFFIX}"


#: Celery task names. Explicit and namespaced because the producer sends by name.
DISPATCH_TASK = "notifications.dispatch"
EMAIL_TASK = "notifications.email.send"
PUSH_TASK = "notifications.push.send"
TASK_QUEUES = {DISPATCH_TASK: DISPATCH_QUEUE, EMAIL_TASK: EMAIL_QUEUE, PUSH_TASK: PUSH_QUEUE}

#: ``x-max-priority`` of every work queue. Small on purpose: RabbitMQ keeps one
#: sub-queue per level, so 10 levels cost memory and CPU for nothing.
MAX_PRIORITY = 9


class Priority(enum.IntEnum):
    """Named priority levels and the AMQP ``priority`` each maps to."""

    #: Something the customer waits for right now (booking confirmed / cancelled / moved).
    HIGH = 8
    #: Default for anything else.
    NORMAL = 5
    #: Can wait behind everything else (reminders).
    LOW = 2

    @classmethod
    def from_name(cls, name: str) -> Priority:
        return cls[name.upper()]

    @property
    def label(self) -> str:
        return self.name.lower()


class Event(str, enum.Enum):
    """Booking events that promise a notification."""

    CONFIRMED = "booking.confirmed"
    CANCELLED = "booking.cancelled"
    RESCHEDULED = "booking.rescheduled"
    REMINDER = "booking.reminder"


#: The priority an event is sent with unless the producer says otherwise.
DEFAULT_PRIORITY = {
    Event.CONFIRMED: Priority.HIGH,
    Event.CANCELLED: Priority.HIGH,
    Event.RESCHEDULED: Priority.HIGH,
    Event.REMINDER: Priority.LOW,
}

#: Durable topic exchange the notification service publishes delivery receipts
#: (``notification.status`` messages, plain JSON) to; routing key ``<channel>.<status>``.
RECEIPTS_EXCHANGE = "notifications.receipts"
#: The booking service's queue of receipts (bound with ``#``); dead-letters into
#: ``DEAD_LETTER_EXCHANGE`` → ``booking.receipts.dlq`` what breaks the contract.
BOOKING_RECEIPTS_QUEUE = "booking.receipts"


def receipt_routing_key(channel: str, status: str) -> str:
    """Routing key of a receipt on ``RECEIPTS_EXCHANGE``: ``email.sent``, ``push.dead`` …"""
    return f"{channel}.{status}"


#: Delivery channels.
CHANNEL_EMAIL = "email"
CHANNEL_PUSH = "push"
