"""Least-privilege broker users, proven on the real RabbitMQ with the permissions committed in definitions.json.

The booking service may publish dispatch messages to ``notifications`` and
nothing else; the notification service may declare its topology, consume,
publish and dead-letter, and may neither delete nor rebind the booking team's
queues; the `monitoring` user KEDA scales with (rendered by
deploy/rabbitmq/render_definitions.py) may read queue lengths through the
management API and nothing else. Each test runs in a fresh vhost holding the committed topology,
logged in as throwaway users carrying exactly the committed permissions.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import urllib.parse
import uuid

import pika
import pika.exceptions
import pytest
import requests

import shared
from notification_service.broker import topology
from tests.deploy import processes, repo
from tests.support import DISPATCH_HIGH, EMAIL_HIGH, PUSH_HIGH

ACCESS_REFUSED = 403


@contextlib.contextmanager
def channel(url: str):
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


def refused(action) -> bool:
    """True when the broker closes the channel with ACCESS_REFUSED while ``action`` runs."""
    try:
        action()
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == ACCESS_REFUSED, exc
        return True
    return False


def dispatch_message(notification_id: str | None = None) -> shared.TaskMessage:
    notification_id = notification_id or str(uuid.uuid4())
    return shared.task_message(
        task=shared.DISPATCH_TASK, task_id=notification_id, routing_key=DISPATCH_HIGH,
        kwargs={"message": {"notification_id": notification_id}}, priority=shared.Priority.HIGH.value,
        kwargsrepr="{'message': '<notification.requested>'}",
    )


def publish(ch, message: shared.TaskMessage, exchange: str = shared.EXCHANGE) -> None:
    """Publish like the relay does: confirms on, mandatory, persistent."""
    ch.confirm_delivery()
    ch.basic_publish(
        exchange=exchange, routing_key=message.routing_key, body=message.body, mandatory=True,
        properties=pika.BasicProperties(headers=message.headers, **message.properties),
    )


def get_one(ch, queue: str, timeout: float = 10.0):
    """basic_get with a deadline (a dead-lettered message arrives asynchronously)."""

    def attempt():
        got = ch.basic_get(queue, auto_ack=False)
        return got if got[0] is not None else None

    return processes.wait_until(attempt, timeout=timeout, what=f"a message in {queue}")


# ---- booking: publish to `notifications`, nothing else ------------------------

def test_booking_user_publishes_a_routed_confirmed_message_to_notifications(least_privilege):
    message = dispatch_message()
    with channel(least_privilege.url("booking")) as ch:
        # The relay checks the exchange exists before publishing (booking_service/relay/relay.py).
        ch.exchange_declare(shared.EXCHANGE, passive=True)
        publish(ch, message)  # raises UnroutableError / NackError if not confirmed and routed
    with channel(least_privilege.admin_url) as admin:
        method, properties, _ = get_one(admin, DISPATCH_HIGH)
        admin.basic_ack(method.delivery_tag)
    assert properties.headers["id"] == message.headers["id"]
    assert properties.priority == shared.Priority.HIGH.value


def _queue_arguments(definitions: dict, queue: str) -> dict:
    (found,) = [q for q in definitions["queues"] if q["name"] == queue and q["vhost"] == "/"]
    return found["arguments"]


def _confirmed(ch, exchange: str, routing_key: str) -> None:
    """Publish with confirms so a refusal surfaces here rather than on a later call."""
    ch.confirm_delivery()
    ch.basic_publish(exchange, routing_key, b"{}", properties=pika.BasicProperties(content_type="application/json"))


#: Everything the booking service must not be able to do. Each is something
#: a fully privileged user *can* do in the same vhost (checked below), so a
#: refusal can only come from the permissions.
FORBIDDEN_TO_BOOKING = {
    "declare-queue": lambda ch, d: ch.queue_declare(f"booking-own-{uuid.uuid4().hex[:6]}"),
    "declare-exchange": lambda ch, d: ch.exchange_declare(f"booking-own-{uuid.uuid4().hex[:6]}"),
    "redeclare-work-queue": lambda ch, d: ch.queue_declare(
        DISPATCH_HIGH, durable=True, arguments=_queue_arguments(d, DISPATCH_HIGH)),
    "consume-work-queue": lambda ch, d: ch.basic_consume(DISPATCH_HIGH, lambda *a: None),
    "read-dead-letters": lambda ch, d: ch.basic_get(shared.dead_letter_queue(EMAIL_HIGH)),
    "purge-work-queue": lambda ch, d: ch.queue_purge(EMAIL_HIGH),
    "publish-to-dead-letter-exchange": lambda ch, d: _confirmed(ch, shared.DEAD_LETTER_EXCHANGE, EMAIL_HIGH),
    "publish-to-amq.direct": lambda ch, d: _confirmed(ch, "amq.direct", "anything"),
    "publish-via-default-exchange": lambda ch, d: _confirmed(ch, "", EMAIL_HIGH),
    # Issue 15 item 8: booking reads its own dead letters and replays them to notifications.receipts
    # (test_booking_user_lists_replays_and_purges_its_receipt_dead_letters); nobody else's.
    "purge-receipt-dead-letters-of-another-name": lambda ch, d: ch.queue_purge(
        shared.dead_letter_queue(PUSH_HIGH)),
    # Issue 15 item 2: a send task published straight to a send queue skips dispatch's validation.
    "publish-a-send-task-to-the-email-queue": lambda ch, d: _confirmed(ch, shared.EXCHANGE, EMAIL_HIGH),
    "publish-a-send-task-to-the-push-queue": lambda ch, d: _confirmed(ch, shared.EXCHANGE, PUSH_HIGH),
    "publish-to-another-routing-key": lambda ch, d: _confirmed(ch, shared.EXCHANGE, "notifications.dispatch.x"),
}


@pytest.mark.parametrize("action", sorted(FORBIDDEN_TO_BOOKING))
def test_booking_user_is_refused_everything_but_publishing_to_notifications(least_privilege, action):
    with channel(least_privilege.url("booking")) as ch:
        assert refused(lambda: FORBIDDEN_TO_BOOKING[action](ch, least_privilege.definitions))


@pytest.mark.parametrize("action", sorted(FORBIDDEN_TO_BOOKING))
def test_each_refused_action_works_for_a_privileged_user(least_privilege, action):
    """The control: with full permissions the very same call succeeds."""
    with channel(least_privilege.admin_url) as ch:
        assert not refused(lambda: FORBIDDEN_TO_BOOKING[action](ch, least_privilege.definitions))


# ---- notification: topology, consume, publish, dead-letter -------------------

def test_notification_user_consumes_publishes_onward_and_dead_letters(least_privilege):
    with channel(least_privilege.url("booking")) as ch:
        publish(ch, dispatch_message())
    with channel(least_privilege.url("notification")) as ch:
        method, _, _ = get_one(ch, DISPATCH_HIGH)
        # What dispatch does: publish the channel task onward, with confirms.
        onward = shared.task_message(task=shared.EMAIL_TASK, task_id=str(uuid.uuid4()), routing_key=EMAIL_HIGH)
        publish(ch, onward)
        ch.basic_ack(method.delivery_tag)
        # What a permanent failure does: reject without requeue -> RabbitMQ dead-letters it.
        method, _, _ = get_one(ch, EMAIL_HIGH)
        ch.basic_reject(method.delivery_tag, requeue=False)
        dlq = shared.dead_letter_queue(EMAIL_HIGH)
        method, properties, _ = get_one(ch, dlq)
        assert properties.headers["id"] == onward.headers["id"]
        assert properties.headers["x-death"][0]["reason"] == "rejected"
        # What `notification-service dlq replay` does: publish it back, then drop it from the DLQ.
        replay = shared.task_message(task=shared.EMAIL_TASK, task_id=onward.headers["id"],
                                     routing_key=EMAIL_HIGH)
        publish(ch, replay)
        ch.basic_ack(method.delivery_tag)
        assert ch.queue_declare(dlq, passive=True).method.message_count == 0


def test_notification_user_is_refused_outside_its_names(least_privilege):
    with channel(least_privilege.url("notification")) as ch:
        assert refused(lambda: ch.queue_declare(f"bookings-{uuid.uuid4().hex[:6]}"))


def test_booking_topic_permission_names_the_dispatch_routing_key_only(definitions):
    (topic,) = [t for t in definitions["topic_permissions"] if t["user"] == "booking" and t["vhost"] == "/"]
    assert topic["exchange"] == shared.EXCHANGE
    assert topic["write"] == "^notifications\\.dispatch(\\.(high|low))?$"
    # RabbitMQ checks topic permissions on topic exchanges only (a direct one lets every key through).
    (exchange,) = [e for e in definitions["exchanges"] if e["name"] == shared.EXCHANGE and e["vhost"] == "/"]
    assert exchange["type"] == "topic"


#: The booking team's queues: the notification user must not delete them, nor bind them to
#: ``notifications`` (every dispatch, with its addresses, would be copied into booking's queue).
#: Each works for a privileged user (checked below).
FORBIDDEN_TO_NOTIFICATION = {
    "delete-booking-receipts": lambda ch: ch.queue_delete(shared.BOOKING_RECEIPTS_QUEUE),
    "delete-booking-receipts-dlq": lambda ch: ch.queue_delete(shared.dead_letter_queue(shared.BOOKING_RECEIPTS_QUEUE)),
    "redeclare-booking-receipts": lambda ch: ch.queue_declare(shared.BOOKING_RECEIPTS_QUEUE, durable=True,
                                                              arguments=topology.queue_arguments(
                                                                  topology.receipt_queues[0])),
    "bind-booking-receipts-to-notifications": lambda ch: ch.queue_bind(
        shared.BOOKING_RECEIPTS_QUEUE, shared.EXCHANGE, routing_key=DISPATCH_HIGH),
    "bind-booking-receipts-dlq-to-notifications": lambda ch: ch.queue_bind(
        shared.dead_letter_queue(shared.BOOKING_RECEIPTS_QUEUE), shared.EXCHANGE, routing_key=EMAIL_HIGH),
    "unbind-booking-receipts": lambda ch: ch.queue_unbind(
        shared.BOOKING_RECEIPTS_QUEUE, shared.RECEIPTS_EXCHANGE, routing_key="#"),
}


@pytest.mark.parametrize("action", sorted(FORBIDDEN_TO_NOTIFICATION))
def test_notification_user_can_neither_delete_nor_rebind_the_booking_teams_queues(least_privilege, action):
    with channel(least_privilege.url("notification")) as ch:
        assert refused(lambda: FORBIDDEN_TO_NOTIFICATION[action](ch))
    with channel(least_privilege.admin_url) as admin:  # still there
        admin.queue_declare(shared.BOOKING_RECEIPTS_QUEUE, passive=True)


@pytest.mark.parametrize("action", sorted(FORBIDDEN_TO_NOTIFICATION))
def test_each_action_refused_to_notification_works_for_a_privileged_user(least_privilege, action):
    with channel(least_privilege.admin_url) as ch:
        assert not refused(lambda: FORBIDDEN_TO_NOTIFICATION[action](ch))


# ---- receipts: notification publishes them, booking alone reads its queue ----

def _receipt_body() -> bytes:
    return (repo.ROOT / "shared" / "examples" / "notification.status.v1.valid.sent.json").read_bytes()


def test_receipts_flow_from_the_notification_user_to_the_booking_user_and_its_dead_letters(least_privilege):
    with channel(least_privilege.url("notification")) as ch:
        ch.exchange_declare(shared.RECEIPTS_EXCHANGE, passive=True)  # what the receipt publisher checks
        ch.confirm_delivery()
        for _ in range(2):
            ch.basic_publish(shared.RECEIPTS_EXCHANGE, "email.sent", _receipt_body(), mandatory=True,
                             properties=pika.BasicProperties(content_type="application/json", delivery_mode=2))
        # the booking's queue comes with the topology; the notification user may not read it
        assert refused(lambda: ch.basic_get(shared.BOOKING_RECEIPTS_QUEUE))
    with channel(least_privilege.url("booking")) as ch:
        # What `booking-service receipts` and /readyz do: passive declare, qos, consume, ack, reject.
        assert ch.queue_declare(shared.BOOKING_RECEIPTS_QUEUE, passive=True).method.message_count == 2
        ch.basic_qos(prefetch_count=10)
        method, _, body = get_one(ch, shared.BOOKING_RECEIPTS_QUEUE)
        ch.basic_ack(method.delivery_tag)
        method, _, _ = get_one(ch, shared.BOOKING_RECEIPTS_QUEUE)
        ch.basic_reject(method.delivery_tag, requeue=False)
    assert body == _receipt_body()
    with channel(least_privilege.admin_url) as admin:
        _, properties, _ = get_one(admin, shared.dead_letter_queue(shared.BOOKING_RECEIPTS_QUEUE))
        assert properties.headers["x-death"][0]["reason"] == "rejected"


def test_booking_user_lists_replays_and_purges_its_receipt_dead_letters(least_privilege):
    """What ``booking-service receipts-dlq list|replay|purge`` does, as the booking user of definitions.json."""
    from booking_service.receipts import dead_letters

    booking = least_privilege.url("booking")
    with channel(least_privilege.url("notification")) as ch:
        ch.confirm_delivery()
        ch.basic_publish(shared.RECEIPTS_EXCHANGE, "email.sent", _receipt_body(), mandatory=True,
                         properties=pika.BasicProperties(content_type="application/json", message_id="r-1"))
    with channel(booking) as ch:
        method, _, _ = get_one(ch, shared.BOOKING_RECEIPTS_QUEUE)
        ch.basic_reject(method.delivery_tag, requeue=False)
    dlq = shared.dead_letter_queue(shared.BOOKING_RECEIPTS_QUEUE)
    with channel(least_privilege.admin_url) as admin:
        _, properties, _ = get_one(admin, dlq)  # dead-lettered; back into the DLQ when this channel closes
        assert properties.message_id == "r-1"

    (listed,) = dead_letters.list_messages(booking)
    assert (listed.message_id, listed.routing_key) == ("r-1", "email.sent")
    (outcome,) = dead_letters.replay(booking, message_id="r-1")
    assert outcome.problem is None and outcome.routing_key == "email.sent"
    with channel(booking) as ch:
        method, properties, body = get_one(ch, shared.BOOKING_RECEIPTS_QUEUE)
        assert body == _receipt_body() and "x-death" not in (properties.headers or {})
        ch.basic_reject(method.delivery_tag, requeue=False)
    with channel(least_privilege.admin_url) as admin:
        get_one(admin, dlq)
    assert dead_letters.purge(booking) == 1


def _env(least_privilege, tmp_path: pathlib.Path) -> dict[str, str]:
    return {
        **os.environ,
        "AMQP_URL": least_privilege.url("notification"),
        "NOTIFICATION_DATABASE_URL": f"sqlite:///{tmp_path / 'notification.db'}",
        "EMAIL_BACKEND": "file", "EMAIL_FILE_DIR": str(tmp_path / "email"),
        "PUSH_BACKEND": "file", "PUSH_FILE_DIR": str(tmp_path / "push"),
        "NOTIFICATION_LOG_FORMAT": "console",
        "PATH": f"{repo.BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def test_notification_user_declares_the_exported_topology_without_conflict(least_privilege, tmp_path):
    """The service's own declare, run as the least-privilege user over the loaded file: no 403, no 406."""
    run = subprocess.run([str(repo.BIN / "notification-service"), "topology", "declare"],
                         env=_env(least_privilege, tmp_path), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def _example_payload() -> dict:
    import json

    path = repo.ROOT / "shared" / "examples" / "notification.requested.v1.valid.confirmed.json"
    payload = json.loads(path.read_text())
    payload["notification_id"] = str(uuid.uuid4())
    return payload


# ---- monitoring (KEDA's scaler): read queue lengths, nothing else -------------

def _keda_queues() -> list[str]:
    """The queues the ScaledObjects in keda.yaml scale on."""
    path = repo.DEPLOY / "k8s" / "notification" / "keda.yaml"
    return [t["metadata"]["queueName"] for doc in repo.load_yaml_documents(path) if doc["kind"] == "ScaledObject"
            for t in doc["spec"]["triggers"]]


def _queue_url(management, vhost: str, queue: str, suffix: str = "") -> str:
    return f"{management.base}/queues/{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(queue, safe='')}{suffix}"


def test_monitoring_user_reads_each_scaled_queues_length_through_the_management_api(
        least_privilege, monitoring, management):
    """What KEDA's rabbitmq scaler does with protocol http: GET <host>/api/queues/<vhost>/<queue> -> "messages"."""
    queues = _keda_queues()
    assert sorted(queues) == sorted(shared.WORK_QUEUES)
    expected = {queue: count for count, queue in enumerate(queues, start=1)}
    # The notification user: booking may publish to the dispatch queue only.
    with channel(least_privilege.url("notification")) as ch:
        for queue, count in expected.items():
            for _ in range(count):
                message = shared.task_message(task=shared.DISPATCH_TASK, task_id=str(uuid.uuid4()), routing_key=queue)
                publish(ch, message)

    def lengths():
        seen = {}
        for queue in queues:
            response = requests.get(_queue_url(management, least_privilege.vhost, queue),
                                    auth=(monitoring.name, monitoring.password), timeout=10)
            assert response.status_code == 200, response.text
            seen[queue] = response.json().get("messages")
        return seen if seen == expected else None

    # The management API refreshes queue statistics every few seconds.
    processes.wait_until(lengths, timeout=30, what=f"queue lengths {expected} as the monitoring user")


#: What the scaler's login must not do over AMQP. Each works for a privileged user (checked below).
FORBIDDEN_TO_MONITORING_AMQP = {
    "publish-to-notifications": lambda ch: publish(ch, dispatch_message()),
    "publish-via-default-exchange": lambda ch: _confirmed(ch, "", DISPATCH_HIGH),
    "get-from-work-queue": lambda ch: ch.basic_get(DISPATCH_HIGH),
    "consume-work-queue": lambda ch: ch.basic_consume(DISPATCH_HIGH, lambda *a: None),
    "read-dead-letters": lambda ch: ch.basic_get(shared.dead_letter_queue(EMAIL_HIGH)),
    "purge-work-queue": lambda ch: ch.queue_purge(EMAIL_HIGH),
    "declare-queue": lambda ch: ch.queue_declare(f"monitoring-own-{uuid.uuid4().hex[:6]}"),
    "declare-exchange": lambda ch: ch.exchange_declare(f"monitoring-own-{uuid.uuid4().hex[:6]}"),
    "bind-queue": lambda ch: ch.queue_bind(EMAIL_HIGH, shared.EXCHANGE, routing_key="anything"),
    "delete-queue": lambda ch: ch.queue_delete(shared.dead_letter_queue(PUSH_HIGH)),
}


@pytest.mark.parametrize("action", sorted(FORBIDDEN_TO_MONITORING_AMQP))
def test_monitoring_user_can_neither_publish_consume_nor_configure_over_amqp(least_privilege, monitoring, action):
    with channel(monitoring.url) as ch:
        assert refused(lambda: FORBIDDEN_TO_MONITORING_AMQP[action](ch))


@pytest.mark.parametrize("action", sorted(FORBIDDEN_TO_MONITORING_AMQP))
def test_each_amqp_action_refused_to_monitoring_works_for_a_privileged_user(least_privilege, action):
    with channel(least_privilege.admin_url) as ch:
        assert not refused(lambda: FORBIDDEN_TO_MONITORING_AMQP[action](ch))


def _http_forbidden(management, vhost: str) -> dict:
    v = urllib.parse.quote(vhost, safe="")
    body = {"properties": {}, "routing_key": DISPATCH_HIGH, "payload": "{}", "payload_encoding": "string"}
    return {
        "get-messages": ("POST", _queue_url(management, vhost, DISPATCH_HIGH, "/get"),
                         {"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"}),
        "publish": ("POST", f"{management.base}/exchanges/{v}/{shared.EXCHANGE}/publish", body),
        "purge": ("DELETE", _queue_url(management, vhost, EMAIL_HIGH, "/contents"), None),
        "declare-queue": ("PUT", _queue_url(management, vhost, f"monitoring-own-{uuid.uuid4().hex[:6]}"),
                          {"durable": False, "auto_delete": True}),
        "export-definitions": ("GET", f"{management.base}/definitions", None),
        "list-users": ("GET", f"{management.base}/users", None),
    }


HTTP_ACTIONS = ("export-definitions", "declare-queue", "get-messages", "list-users", "publish", "purge")


@pytest.mark.parametrize("action", HTTP_ACTIONS)
def test_monitoring_user_can_do_nothing_else_through_the_management_api(
        least_privilege, monitoring, management, action):
    actions = _http_forbidden(management, least_privilege.vhost)
    assert sorted(actions) == sorted(HTTP_ACTIONS)
    method, url, body = actions[action]
    response = requests.request(method, url, json=body, auth=(monitoring.name, monitoring.password), timeout=10)
    # 401/403, or 400 wrapping the broker's ACCESS_REFUSED (publish answers that way).
    assert response.status_code in (400, 401, 403), (response.status_code, response.text)
    if response.status_code == 400:
        assert "ACCESS_REFUSED" in response.text
    # The control: the same call as the test's administrator succeeds.
    control = management.request(method, url, json=body, timeout=10)
    assert control.ok, (control.status_code, control.text)
