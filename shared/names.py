"""Broker names, task names, priority levels and lanes: the wire vocabulary both services share.

Everything here is a plain constant; nothing opens a connection.
"""

from __future__ import annotations

import enum

#: Durable topic exchange the booking service publishes to (topic so that RabbitMQ's topic permissions can
#: limit the booking user to the dispatch routing key; every binding key is a full queue name).
EXCHANGE = "notifications"
#: Dead-letter exchange every work queue dead-letters into (routing key = the queue name).
DEAD_LETTER_EXCHANGE = "notifications.dlx"

#: Stages of the work, one per task and channel. A stage's name is not a queue any more: it is
#: split into one lane queue per priority class (``lane_queue``). ``DISPATCH_QUEUE`` is also the
#: routing key a booking service of the previous version publishes with (``LEGACY_BINDINGS``).
DISPATCH_QUEUE = "notifications.dispatch"
EMAIL_QUEUE = "notifications.email"
PUSH_QUEUE = "notifications.push"
STAGES = (DISPATCH_QUEUE, EMAIL_QUEUE, PUSH_QUEUE)

#: Suffix of the dead-letter queue that belongs to each work queue.
DLQ_SUFFIX = ".dlq"


def dead_letter_queue(queue: str) -> str:
    """Return the name of the dead-letter queue of ``queue``."""
    return f"{queue}{DLQ_SUFFIX}"


#: Celery task names. Explicit and namespaced because the producer sends by name.
DISPATCH_TASK = "notifications.dispatch"
EMAIL_TASK = "notifications.email.send"
PUSH_TASK = "notifications.push.send"
#: The stage each task runs in; its lane comes from the message's priority (``lane_for``).
TASK_STAGES = {DISPATCH_TASK: DISPATCH_QUEUE, EMAIL_TASK: EMAIL_QUEUE, PUSH_TASK: PUSH_QUEUE}


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


class Lane(str, enum.Enum):
    """A priority class: each stage has one queue per lane, each with consumers of its own.

    Quorum queues have no priorities (``x-max-priority`` is refused on RabbitMQ 3.x), so a
    confirmation never waits behind a reminder backlog only because it has a queue of its own.
    """

    #: Confirmed, cancelled, rescheduled: Priority HIGH and NORMAL.
    HIGH = "high"
    #: Reminders: Priority LOW.
    LOW = "low"


def lane_for(priority: int | None) -> Lane:
    """The lane of a message with AMQP ``priority`` (none given: NORMAL, so ``high``)."""
    if priority is not None and priority <= Priority.LOW:
        return Lane.LOW
    return Lane.HIGH


def lane_queue(stage: str, lane: Lane) -> str:
    """The work queue of ``stage`` in ``lane``, e.g. ``notifications.email.low``; also its routing key."""
    return f"{stage}.{Lane(lane).value}"


#: Every work queue: each stage in each lane. Routing key on ``EXCHANGE`` = the queue name.
WORK_QUEUES = tuple(lane_queue(stage, lane) for stage in STAGES for lane in Lane)

#: Routing keys of the previous contract version still bound on ``EXCHANGE``, and the queue each
#: reaches: a booking service one version behind publishes every dispatch with the stage name.
LEGACY_BINDINGS = {DISPATCH_QUEUE: lane_queue(DISPATCH_QUEUE, Lane.HIGH)}


def queue_for_routing_key(routing_key: str | None) -> str | None:
    """The work queue a message published to ``EXCHANGE`` with ``routing_key`` lands in, or None."""
    if routing_key in WORK_QUEUES:
        return routing_key
    return LEGACY_BINDINGS.get(routing_key or "")


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
