"""The broker topology of the notification service: the one source of truth.

Exchanges, the lane work queues with their dead-letter arguments, the
dead-letter exchange and queues, and the RabbitMQ definitions export (with the
two service users) are all derived from the names in ``shared``.

Every queue is a quorum queue, on one node as on a cluster (RabbitMQ 4 has no
classic mirroring, so a classic queue lives and dies with one node). Quorum
queues on 3.x have no priorities (``x-max-priority`` is refused, 406), so
priority is a *lane*: each stage has a queue per priority class, consumed by
consumers of their own (``shared.Lane``). A queue's type can never change in
place: ``migration.py`` moves an installation of the classic priority queues.

``notifications`` is a *topic* exchange, routing exactly like a direct one
(every binding key is a full queue name, no wildcards), because RabbitMQ
checks topic permissions only on topic exchanges: on a direct exchange the
booking user could publish an ``notifications.email.send`` task straight to the
e-mail queue, past dispatch's validation (checked on 3.10.8); Celery's native
delayed delivery (countdown retries on quorum queues) needs it too. A broker
that still holds the old direct exchange refuses the redeclare (406):
``declare`` then replaces it (delete, declare as topic, bind every queue
again). Queues and their messages stay; a relay publishing in that instant is
told the exchange is missing and publishes the row again later.
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

#: A message redelivered this many times (a worker crashed or was cut off with it every time)
#: is dead-lettered by RabbitMQ: the backstop against a message that kills every consumer.
#: Generous because failovers return messages too, and a retry whose publish failed is
#: requeued (``failure_policy``): each of those counts on 3.x.
DELIVERY_LIMIT = 50

#: Arguments every queue of ours carries: a quorum queue whose leader is placed on the node with
#: the fewest leaders (otherwise every leader lands on the node the first worker declared on).
QUORUM_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum", "x-queue-leader-locator": "balanced"}


def work_queue_arguments(queue: str) -> dict[str, Any]:
    """Arguments of a queue that dead-letters into ``<queue>.dlq``. Identical wherever it is declared:
    RabbitMQ refuses a redeclare with different arguments (406 PRECONDITION_FAILED).

    At-least-once dead-lettering: the message leaves ``queue`` only once the DLQ confirmed it;
    RabbitMQ requires ``reject-publish`` overflow for that.
    """
    return {
        **QUORUM_ARGUMENTS,
        "x-dead-letter-exchange": shared.DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": shared.dead_letter_queue(queue),
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": DELIVERY_LIMIT,
    }


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
        queue_arguments=QUORUM_ARGUMENTS,
    )
    for name in shared.WORK_QUEUES
)

#: The routing keys of the previous contract version, bound on ``notifications`` besides each
#: queue's own key (a booking service one version behind keeps working). Not on the Queue objects:
#: Celery routes and delays by a queue's one ``exchange``/``routing_key``.
legacy_bindings: tuple[tuple[str, str], ...] = tuple(sorted(shared.LEGACY_BINDINGS.items()))


def queue_arguments(queue: Queue) -> dict[str, Any]:
    """The arguments ``queue`` is declared with (a copy)."""
    # kombu sets queue_arguments from Queue.attrs at run time; as_dict is its typed reader.
    return dict(queue.as_dict()["queue_arguments"] or {})


def queues_for(stage: str) -> tuple[Queue, ...]:
    """The lane queues of ``stage``, high lane first (what a worker of that stage consumes)."""
    return tuple(q for q in work_queues if q.name in {shared.lane_queue(stage, lane) for lane in shared.Lane})


#: The booking service's receipts queue: every receipt (``#``); what breaks the contract is
#: rejected by its consumer and dead-lettered to ``booking.receipts.dlq``. Defined here, with
#: the rest of the topology (the export carries them), but the notification user may not
#: configure or bind them: declaring a queue is the same permission as deleting it.
receipt_queues: tuple[Queue, ...] = (
    Queue(shared.BOOKING_RECEIPTS_QUEUE, exchange=receipts_exchange, routing_key="#", durable=True,
          queue_arguments=work_queue_arguments(shared.BOOKING_RECEIPTS_QUEUE)),
    Queue(shared.dead_letter_queue(shared.BOOKING_RECEIPTS_QUEUE), exchange=dead_letter_exchange,
          routing_key=shared.dead_letter_queue(shared.BOOKING_RECEIPTS_QUEUE), durable=True,
          queue_arguments=QUORUM_ARGUMENTS),
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
        for routing_key, queue_name in legacy_bindings:
            channel.queue_bind(queue_name, exchange=shared.EXCHANGE, routing_key=routing_key)
    finally:
        channel.close()
    for queue in receipt_queues:
        if not _exists(connection, queue.name):
            queue.bind(connection.default_channel).declare()


def _replace_exchange(channel) -> None:
    """Delete ``notifications`` as it is (direct, before the topic permissions) and declare it as it must be.

    The work queues are declared right after this, which binds them (and the legacy keys) again.
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
#: ... and on that exchange only the dispatch routing keys (a lane's, or the stage name a booking
#: service one version behind uses): a send task published by booking would skip dispatch's
#: validation and the delivery log. (Topic exchanges only, hence its type.)
_DISPATCH_LANES = "|".join(re.escape(lane.value) for lane in shared.Lane)
BOOKING_TOPIC_PERMISSIONS = {"exchange": shared.EXCHANGE,
                             "write": f"^{re.escape(shared.DISPATCH_QUEUE)}(\\.({_DISPATCH_LANES}))?$",
                             "read": "^$"}
#: Workers: their own names plus Celery's reply/pidbox/event names (remote control, Flower events)
#: and the exchanges and queues of Celery's native delayed delivery (``celery_delayed_*``), where a
#: countdown retry waits in the broker.
_WORKER_NAMES = (r"notifications(\..*)?|celery(\..*)?|celeryev(\..*)?|reply\.celery\.pidbox|.*\.celery\.pidbox"
                 r"|celery_delayed_.*|amq\.gen-.*")
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
        "arguments": queue_arguments(queue),
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
    routes = [(q.exchange.name, q.name, q.routing_key) for q in (*work_queues, *dead_letter_queues, *receipt_queues)]
    routes += [(shared.EXCHANGE, queue_name, routing_key) for routing_key, queue_name in legacy_bindings]
    bindings = [
        {"source": source, "vhost": "/", "destination": destination, "destination_type": "queue",
         "routing_key": routing_key, "arguments": {}}
        for source, destination, routing_key in routes
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
