"""The broker topology of the notification service: the one source of truth.

Exchanges, work queues with their priority and dead-letter arguments, the
dead-letter exchange and queues, and the RabbitMQ definitions export (with the
two service users) are all derived from the names in ``shared``.

``notifications`` is a *topic* exchange, routing exactly like a direct one
(every binding key is a full queue name, no wildcards), because RabbitMQ
checks topic permissions only on topic exchanges: on a direct exchange the
booking user could publish an ``notifications.email.send`` task straight to the
e-mail queue, past dispatch's validation (checked on 3.10.8). A broker that
still holds the old direct exchange refuses the redeclare (406): ``declare``
then replaces it (delete, declare as topic, bind every queue again). Queues and
their messages stay; a relay publishing in that instant is told the exchange is
missing and publishes the row again later.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import amqp.exceptions
import structlog
from kombu import Exchange, Queue

import shared

log = structlog.get_logger(__name__)

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

#: The durable topic exchange with NO arguments; topic so the booking user's routing keys can be limited.
exchange = Exchange(shared.EXCHANGE, type="topic", durable=True)
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
#: rejected by its consumer and dead-lettered to ``booking.receipts.dlq``. Defined here, with
#: the rest of the topology (the export carries them), but the notification user may not
#: configure or bind them: declaring a queue is the same permission as deleting it.
receipt_queues: tuple[Queue, ...] = (
    Queue(shared.BOOKING_RECEIPTS_QUEUE, exchange=receipts_exchange, routing_key="#", durable=True,
          queue_arguments={"x-dead-letter-exchange": shared.DEAD_LETTER_EXCHANGE,
                           "x-dead-letter-routing-key": shared.dead_letter_queue(shared.BOOKING_RECEIPTS_QUEUE)}),
    Queue(shared.dead_letter_queue(shared.BOOKING_RECEIPTS_QUEUE), exchange=dead_letter_exchange,
          routing_key=shared.dead_letter_queue(shared.BOOKING_RECEIPTS_QUEUE), durable=True),
)


class TopologyError(RuntimeError):
    """Raised when the broker holds an entity that cannot be redeclared as this topology defines it."""


def declare(connection) -> None:
    """Declare exchanges, work queues, DLX and DLQs idempotently on a kombu connection; see the receipts queues.

    The booking team's receipts queues are declared only where they are missing (a
    development broker, with a login allowed to): a broker loaded from the definitions
    holds them already, and the notification user is refused their declare.
    """
    channel = connection.channel()
    try:
        try:
            exchange.bind(channel).declare()
        except amqp.exceptions.PreconditionFailed:
            # The broker closed that channel; an exchange of the old (direct) type is replaced.
            channel = connection.channel()
            _replace_exchange(channel)
        entities: tuple[Exchange | Queue, ...] = (
            dead_letter_exchange, receipts_exchange, *work_queues, *dead_letter_queues)
        for entity in entities:
            entity.bind(channel).declare()
    finally:
        channel.close()
    for queue in receipt_queues:
        if not _exists(connection, queue.name):
            queue.bind(connection.default_channel).declare()


def _replace_exchange(channel) -> None:
    """Delete ``notifications`` as it is (direct, before the topic permissions) and declare it as it must be.

    The work queues are declared right after this, which binds them again.
    """
    try:
        channel.exchange_delete(shared.EXCHANGE)
        exchange.bind(channel).declare()
    except amqp.exceptions.AMQPError as exc:
        raise TopologyError(f"exchange {shared.EXCHANGE!r} exists with other settings and could not be replaced "
                            f"by a topic exchange ({exc}); delete it in the management UI and declare again") from exc
    log.warning("exchange_replaced", exchange=shared.EXCHANGE, type="topic",
                why="topic permissions limit the booking user to the dispatch routing key")


def _exists(connection, queue: str) -> bool:
    """Whether ``queue`` exists; a passive declare needs no permission and closes only its own channel."""
    channel = connection.channel()
    try:
        channel.queue_declare(queue, passive=True)
    except amqp.exceptions.NotFound:
        return False
    finally:
        if channel.is_open:
            channel.close()
    return True


# --- RabbitMQ definitions export ------------------------------------------------

#: Development passwords of the two service users (documented; replace in production).
DEV_PASSWORDS = {"booking": "booking", "notification": "notification"}

#: Booking may publish to ``notifications``, read (consume, purge) its own receipts queue and its
#: dead letters, and publish to ``notifications.receipts``: ``booking-service receipts-dlq replay``
#: puts a dead-lettered receipt back there, with the routing key it had. That exchange's one
#: queue is ``booking.receipts`` (bound ``#``), so a receipt booking publishes reaches only itself.
BOOKING_PERMISSIONS = {"configure": "^$",
                       "write": f"^({re.escape(shared.EXCHANGE)}|{re.escape(shared.RECEIPTS_EXCHANGE)})$",
                       "read": f"^{re.escape(shared.BOOKING_RECEIPTS_QUEUE)}({re.escape(shared.names.DLQ_SUFFIX)})?$"}
#: ... and on that exchange only the dispatch routing key: a send task published by booking
#: would skip dispatch's validation and the delivery log. (Topic exchanges only, hence its type.)
BOOKING_TOPIC_PERMISSIONS = {"exchange": shared.EXCHANGE, "write": f"^{re.escape(shared.DISPATCH_QUEUE)}$",
                             "read": "^$"}
#: Workers: their own names plus Celery's reply/pidbox/event names (remote control, Flower events).
_WORKER_NAMES = (r"notifications(\..*)?|celery(\..*)?|celeryev(\..*)?|reply\.celery\.pidbox|.*\.celery\.pidbox"
                 r"|amq\.gen-.*")
#: Nothing of the booking team's: configure would let it delete ``booking.receipts`` (and its
#: DLQ), write on the queue would let it bind it to ``notifications`` (every dispatch, with
#: addresses, copied into booking's queue). Receipts reach that queue through the exchange.
NOTIFICATION_PERMISSIONS = {"configure": f"^({_WORKER_NAMES})$", "write": f"^({_WORKER_NAMES})$",
                            "read": f"^({_WORKER_NAMES})$"}


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
        # kombu sets queue_arguments from Queue.attrs at run time; as_dict is its typed reader.
        "arguments": dict(queue.as_dict()["queue_arguments"] or {}),
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
        "topic_permissions": [{"user": "booking", "vhost": "/", **BOOKING_TOPIC_PERMISSIONS}],
        "parameters": [],
        "global_parameters": [],
        "policies": [],
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
    }
