"""The broker topology of the notification service: the one source of truth.

Exchanges, work queues with their priority and dead-letter arguments, the
dead-letter exchange and queues, and the RabbitMQ definitions export (with the
two service users) are all derived from the names in ``shared``.
"""

from __future__ import annotations

import base64
import hashlib
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


def declare(connection) -> None:
    """Declare exchanges, work queues, DLX and DLQs idempotently on a kombu connection."""
    channel = connection.default_channel
    for entity in (exchange, dead_letter_exchange, *work_queues, *dead_letter_queues):
        entity.bind(channel).declare()


# --- RabbitMQ definitions export ------------------------------------------------

#: Development passwords of the two service users (documented; replace in production).
DEV_PASSWORDS = {"booking": "booking", "notification": "notification"}

#: Booking may only publish to the exchange.
BOOKING_PERMISSIONS = {"configure": "^$", "write": f"^{shared.EXCHANGE}$", "read": "^$"}
#: Workers: their own names plus Celery's reply/pidbox/event names (remote control, Flower events).
_WORKER_NAMES = r"^(notifications(\..*)?|celery(\..*)?|celeryev(\..*)?|reply\.celery\.pidbox|.*\.celery\.pidbox|amq\.gen-.*)$"
NOTIFICATION_PERMISSIONS = {"configure": _WORKER_NAMES, "write": _WORKER_NAMES, "read": _WORKER_NAMES}


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
        {"name": ex.name, "vhost": "/", "type": "direct", "durable": True, "auto_delete": False,
         "internal": False, "arguments": {}}
        for ex in (exchange, dead_letter_exchange)
    ]
    queues = [_queue_definition(q) for q in (*work_queues, *dead_letter_queues)]
    bindings = [
        {"source": q.exchange.name, "vhost": "/", "destination": q.name, "destination_type": "queue",
         "routing_key": q.routing_key, "arguments": {}}
        for q in (*work_queues, *dead_letter_queues)
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
