"""The broker topology of the notification service: the one source of truth.

Exchanges, work queues with their priority and dead-letter arguments, the
dead-letter exchange and queues, and the RabbitMQ definitions export (with the
two service users) are all derived from the names in ``shared``.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

from kombu import Exchange, Queue

import shared

#: Arguments of every work queue. Identical everywhere: RabbitMQ refuses a
#: redeclare with different arguments (406 PRECONDITION_FAILED).


def work_queue_arguments(queue: str) -> dict[str, Any]:
    return {
        "x-max-priority": shared.MAX_PRIORITY,
        "x-dead-letter-exchange": shared.DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": shared.dead_letter_queue(queue),
    }


#: DLQs carry x-max-priority too, so a replay keeps the original priority semantics visible.
DLQ_ARGUMENTS: dict[str, Any] = {"x-max-priority": shared.MAX_PRIORITY}

#: The durable direct exchange with NO arguments (the booking service declares it that way too).
exchange = Exchange(shared.EXCHANGE, type="direct", durable=True)
dead_letter_exchange = Exchange(shared.DEAD_LETTER_EXCHANGE, type="direct", durable=True)
#: Delivery receipts (``notification.status``, plain JSON), routing key ``<channel>.<status>``.
receipts_exchange = Exchange(shared.RECEIPTS_EXCHANGE, type="topic", durable=True)

work_queues: tuple[Queue, ...] = tuple(
    Queue(name, exchange=exchange, routing_key=name, durable=True, queue_arguments=work_queue_arguments(name))
    for name in shared.WORK_QUEUES
)
dead_letter_queues: tuple[Queue, ...] = tuple(
    Queue(
        shared.dead_letter_queue(name),
        exchange=dead_letter_exchange,
        routing_key=shared.dead_letter_queue(name),
        durable=True,
        queue_arguments=DLQ_ARGUMENTS,
    )
    for name in shared.WORK_QUEUES
)


#: The booking service's receipts queue: every receipt (``#``); what breaks the contract is
#: rejected by its consumer and dead-lettered to ``booking.receipts.dlq``. Declared here, with
#: the rest of the topology, because the booking user may only read it.
receipt_queues: tuple[Queue, ...] = (
    Queue(shared.BOOKING_RECEIPTS_QUEUE, exchange=receipts_exchange, routing_key="#", durable=True,
          queue_arguments={"x-dead-letter-exchange": shared.DEAD_LETTER_EXCHANGE,
                           "x-dead-letter-routing-key": shared.dead_letter_queue(shared.BOOKING_RECEIPTS_QUEUE)}),
    Queue(shared.dead_letter_queue(shared.BOOKING_RECEIPTS_QUEUE), exchange=dead_letter_exchange,
          routing_key=shared.dead_letter_queue(shared.BOOKING_RECEIPTS_QUEUE), durable=True),
)


def declare(connection) -> None:
    """Declare exchanges, work queues, DLX, DLQs and the receipts queues idempotently on a kombu connection."""
    channel = connection.default_channel
    for entity in (exchange, dead_letter_exchange, receipts_exchange, *work_queues, *dead_letter_queues,
                   *receipt_queues):
        entity.bind(channel).declare()


# --- RabbitMQ definitions export ------------------------------------------------

#: Development passwords of the two service users (documented; replace in production).
DEV_PASSWORDS = {"booking": "booking", "notification": "notification"}

#: Booking may only publish to the exchange, and read (consume) its own receipts queue.
BOOKING_PERMISSIONS = {"configure": "^$", "write": f"^{shared.EXCHANGE}$",
                       "read": f"^{re.escape(shared.BOOKING_RECEIPTS_QUEUE)}$"}
#: Workers: their own names plus Celery's reply/pidbox/event names (remote control, Flower events).
_WORKER_NAMES = r"notifications(\..*)?|celery(\..*)?|celeryev(\..*)?|reply\.celery\.pidbox|.*\.celery\.pidbox|amq\.gen-.*"
#: The receipts queues it declares and binds (configure, write) but never reads: they are booking's.
_RECEIPT_QUEUES = r"booking\.receipts(\.dlq)?"
NOTIFICATION_PERMISSIONS = {"configure": f"^({_WORKER_NAMES}|{_RECEIPT_QUEUES})$",
                            "write": f"^({_WORKER_NAMES}|{_RECEIPT_QUEUES})$", "read": f"^({_WORKER_NAMES})$"}


def password_hash(user: str, password: str) -> str:
    """rabbit_password_hashing_sha256 hash with a salt derived from the user name.

    Deterministic on purpose so the committed definitions equal a fresh export;
    these are development passwords only.
    """
    salt = hashlib.sha256(f"dev-salt:{user}".encode()).digest()[:4]
    digest = hashlib.sha256(salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def _queue_definition(queue: Queue) -> dict[str, Any]:
    return {
        "name": queue.name,
        "vhost": "/",
        "durable": True,
        "auto_delete": False,
        "arguments": dict(queue.queue_arguments or {}),
    }


def definitions() -> dict[str, Any]:
    """The RabbitMQ definitions document (``rabbitmqctl import_definitions`` format)."""
    users = [
        {
            "name": name,
            "password_hash": password_hash(name, password),
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": [],
            "limits": {},
        }
        for name, password in sorted(DEV_PASSWORDS.items())
    ]
    permissions = [
        {"user": "booking", "vhost": "/", **BOOKING_PERMISSIONS},
        {"user": "notification", "vhost": "/", **NOTIFICATION_PERMISSIONS},
    ]
    exchanges = [
        {"name": ex.name, "vhost": "/", "type": ex.type, "durable": True, "auto_delete": False,
         "internal": False, "arguments": {}}
        for ex in (exchange, dead_letter_exchange, receipts_exchange)
    ]
    queues = [_queue_definition(q) for q in (*work_queues, *dead_letter_queues, *receipt_queues)]
    bindings = [
        {"source": q.exchange.name, "vhost": "/", "destination": q.name, "destination_type": "queue",
         "routing_key": q.routing_key, "arguments": {}}
        for q in (*work_queues, *dead_letter_queues, *receipt_queues)
    ]
    return {
        "rabbit_version": "3.10.8",
        "rabbitmq_version": "3.10.8",
        "users": users,
        "vhosts": [{"name": "/"}],
        "permissions": permissions,
        "topic_permissions": [],
        "parameters": [],
        "global_parameters": [],
        "policies": [],
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
    }
