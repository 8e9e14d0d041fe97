"""Celery app factory: every worker setting in one place (DESIGN.md "Worker semantics").

What the worker does around its tasks (logging, topology, the receipts
publisher, the stall watchdog) is hooked in by ``signals.py``.
"""

from __future__ import annotations

import ssl
import urllib.parse

from celery import Celery

import shared
from notification_service.broker import topology
from notification_service.settings import Settings
from notification_service.worker import signals
from notification_service.worker.failure_policy import retry_annotations

TASK_MODULES = ["notification_service.worker.tasks"]


def broker_tls(amqp_url: str) -> dict | bool:
    """``broker_use_ssl`` for an ``amqps://`` URL: verify the CA and the host name.

    py-amqp checks the certificate's host name only when given
    ``server_hostname``; pika does it by itself. The CA comes from the system
    store or ``SSL_CERT_FILE``.
    """
    parts = urllib.parse.urlsplit(amqp_url)
    if parts.scheme != "amqps":
        return False
    return {"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": parts.hostname}


#: The workers' AMQP heartbeat (seconds). py-amqp gives a connection up when nothing came from the broker for
#: two heartbeats, checked every half heartbeat (Celery's ``broker_heartbeat_checkrate`` 2): a hung node (SIGSTOP,
#: a frozen VM: its kernel keeps the TCP connection open and silent) is left 8-10 s after its last frame, where
#: 30 s took 60-75 s, more than a whole 30 s hang (measured: the worker consumed nothing for the whole hang and
#: resumed only when the node came back). The broker closes a connection silent for ~2 heartbeats, which the
#: worker's event loop must therefore never be for 8 s: every blocking wait is bounded below (BROKER_READ_TIMEOUT).
BROKER_HEARTBEAT_SECONDS = 4
#: The longest any blocking read on a worker connection waits (``read_timeout``: py-amqp sets SO_RCVTIMEO and raises
#: ``socket.timeout``, a connection error to kombu, which reconnects, to the next node of AMQP_URL). It bounds what
#: had no bound: the wait for a publisher confirm (py-amqp's ``basic_publish_confirm`` waits without a timeout unless
#: each publish passes ``confirm_timeout``, and Celery passes none, neither for task publishes nor for its events),
#: the close of a channel or connection, every RPC reply. Measured before: the worker's event loop waited the whole
#: 30 s hang for the confirm of its own worker-heartbeat event (the event dispatcher's connection was on the hung
#: node, and ``confirm_publish`` applies to every connection of the app), so not even its heartbeat check ran. An
#: event whose confirm times out is buffered by Celery's dispatcher and sent again (Celery has no setting to send its
#: events unconfirmed: ``confirm_publish`` is per app, and a transport class of our own, named in ``broker_transport``,
#: broke its native delayed delivery, which rebuilds URLs from ``as_uri()``); a task publish is retried on a
#: new connection (``PUBLISH_RETRY_POLICY``; the same task id, so the delivery log keeps it to one send). A quorum
#: queue confirms after a majority wrote the message: milliseconds here, so 3 s is only reached by a node that does
#: not answer. (Not for the one-off topology declare at start: ``signals.py`` lifts it there.)
BROKER_READ_TIMEOUT_SECONDS = 3

#: Longest a worker waits for one node to accept TCP and complete the AMQP handshake before it tries the next
#: node of AMQP_URL (Celery's default: 4 s). A hung node takes the TCP connection (its kernel answers) and never
#: the handshake, and every new kombu connection starts at the first node of the URL: after the consumer left a
#: hung first node, its reconnect, the events connection's and each pooled publisher connection's each paid this
#: wait once, one after another (measured: 4 + 4 s of a 28.7 s gap). A live node answers in milliseconds.
BROKER_CONNECT_TIMEOUT_SECONDS = 2

#: Messages the workers publish themselves (fan-out, retries) wait for the broker's confirm, and no read waits longer
#: than BROKER_READ_TIMEOUT_SECONDS.
BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True, "read_timeout": BROKER_READ_TIMEOUT_SECONDS}

#: How long a publish of the workers' own (a fan-out, a retry) keeps trying through a broker
#: failover before it fails: kombu reconnects (to the next node of AMQP_URL) between tries,
#: ~25 s in all. Celery's default gives up after ~1 s, less than a leader election.
PUBLISH_RETRY_POLICY = {"max_retries": 10, "interval_start": 0, "interval_step": 1, "interval_max": 3}


def route_to_lane(name, args, kwargs, options, task=None, **_kw) -> dict | None:
    """Celery router: a notification task goes to its stage's queue in the lane of its priority.

    An explicit ``queue=`` (a retry names the lane it came from) still wins: Celery merges the
    caller's options over a route.
    """
    stage = shared.TASK_STAGES.get(name)
    if stage is None:
        return None
    return {"queue": shared.lane_queue(stage, shared.lane_for(options.get("priority")))}


def celery_config(settings: Settings) -> dict:
    return {
        "broker_url": settings.amqp_url,
        "broker_use_ssl": broker_tls(settings.amqp_url),
        # Ack after the task ran: a killed worker's message is redelivered.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A task that fails for good is rejected without requeue: RabbitMQ dead-letters it.
        # (Celery's default acks it, i.e. loses the notification.)
        "task_acks_on_failure": False,
        "task_annotations": retry_annotations(settings),
        "worker_prefetch_multiplier": 1,
        "accept_content": ["json"],
        "task_serializer": "json",
        "result_serializer": "json",
        "task_ignore_result": True,
        "result_backend": None,
        "broker_transport_options": dict(BROKER_TRANSPORT_OPTIONS),
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
        "broker_connection_retry_on_startup": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # After a reconnect Celery would lower the prefetch count and restore it from
        # whichever thread acks next: under the threads pool a pool thread sends basic.qos
        # and waits for its answer on the connection the consumer thread reads, and
        # py-amqp is not thread-safe (the worker hung in basic_qos after broker restarts).
        # With it off, only the consumer's own thread touches its connection: acks and
        # rejects go through the event loop (kombu's Hub.call_soon), publishes use the
        # producer pool's own connections.
        "worker_enable_prefetch_count_reduction": False,
        # A dead or hung broker node is left within two heartbeats (see BROKER_HEARTBEAT_SECONDS).
        "broker_heartbeat": BROKER_HEARTBEAT_SECONDS,
        "broker_connection_timeout": BROKER_CONNECT_TIMEOUT_SECONDS,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        # Quorum queues (topology.py): Celery then turns global QoS off (prefetch is per consumer,
        # so each lane a worker consumes has its own prefetch) and sends countdown retries through
        # its native delayed delivery: the delay waits in the broker (celery_delayed_* queues), not
        # in a worker's memory, which needs the topic exchange.
        "task_queues": topology.work_queues,
        "task_default_queue_type": "quorum",
        "broker_native_delayed_delivery_queue_type": "quorum",
        "task_default_queue": shared.lane_queue(shared.DISPATCH_QUEUE, shared.Lane.HIGH),
        "task_default_exchange": shared.EXCHANGE,
        "task_default_exchange_type": "topic",
        "task_default_routing_key": shared.lane_queue(shared.DISPATCH_QUEUE, shared.Lane.HIGH),
        "task_routes": (route_to_lane,),
        # The AMQP priority stays on every message (the lane is chosen from it); no queue reorders by it.
        "task_default_priority": int(shared.Priority.NORMAL),
        "task_create_missing_queues": False,
        # Task events are for Flower: turn them on with `worker --events` (the Procfile,
        # compose and the image do). Off by default because, with confirm_publish,
        # every event is a confirmed publish from the consumer's event loop: with
        # events on, that loop spent most of its time waiting for event confirms.
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "worker_consumer": "notification_service.worker.consumer:SafeConsumer",
        "worker_enable_remote_control": True,
    }


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    app = Celery("notification_service", include=TASK_MODULES, set_as_current=True)
    app.conf.update(celery_config(settings))
    app.settings = settings
    signals.install(app)
    return app
