"""Scenarios that need their own worker start: a confirmation behind a reminder backlog, SIGKILL mid-send."""

from __future__ import annotations

import threading
import time

import pika

import shared
from notification_service.delivery.machine import delivery_id
from tests.notification.harness import (
    FakePush,
    Worker,
    declare_topology,
    dispatch_message,
    notification,
    publish,
    queue_depth,
)
from tests.support import PUSH_HIGH, wait_for

#: Reminders queued in the low dispatch lane before the confirmation is published.
REMINDER_BACKLOG = 10_000


def publish_many(url: str, messages: list[shared.TaskMessage]) -> None:
    """Publish like the relay (confirms, mandatory) on one connection: 10,000 in a few seconds."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for message in messages:
            properties = pika.BasicProperties(headers=message.headers, **message.properties)
            channel.basic_publish(shared.EXCHANGE, message.routing_key, message.body, properties, mandatory=True)
    finally:
        connection.close()


def test_a_confirmation_is_sent_within_seconds_behind_ten_thousand_queued_reminders(vhost_url, tmp_path):
    """Lanes, not priorities: the confirmation has a queue and consumers of its own (benchmarks print the figure)."""
    declare_topology(vhost_url)
    reminders = [dispatch_message(notification(event="booking.reminder", tokens=())) for _ in range(REMINDER_BACKLOG)]
    publish_many(vhost_url, reminders)
    low = shared.lane_queue(shared.DISPATCH_QUEUE, shared.Lane.LOW)
    assert queue_depth(vhost_url, low) == REMINDER_BACKLOG
    worker = Worker(vhost_url, tmp_path, None, concurrency=4)
    worker.start()
    try:
        wait_for(worker.emails, timeout=60, what="the reminder backlog being worked on")
        confirmation = notification(event="booking.confirmed", tokens=())
        published = time.monotonic()
        publish(vhost_url, dispatch_message(confirmation))
        wait_for(lambda: worker.email_for(confirmation["notification_id"]), timeout=30, interval=0.05,
                 what="the confirmation's e-mail")  # a hang guard; it takes a second or two
        latency = time.monotonic() - published
        print(f"confirmation sent {latency:.2f} s after publishing, behind {queue_depth(vhost_url, low)} reminders")
        assert queue_depth(vhost_url, low) > REMINDER_BACKLOG / 2  # it did not wait for the backlog
    finally:
        worker.stop()


def test_sigkill_mid_send_delivers_exactly_once_after_restart(vhost_url, tmp_path):
    declare_topology(vhost_url)
    fake = FakePush()
    try:
        token = "tok-crash"
        fake.block[token] = threading.Event()
        fake.arrived[token] = threading.Event()
        worker = Worker(vhost_url, tmp_path, fake)
        worker.start()
        payload = notification(tokens=(token,))
        publish(vhost_url, dispatch_message(payload))
        assert fake.arrived[token].wait(60), "push never reached the provider"
        worker.kill()  # mid-send: the provider got the request, the worker never acked
        push_id = delivery_id(payload["notification_id"], "push", token)
        assert [r["status"] for r in worker.status(payload["notification_id"]) if r["channel"] == "push"] == ["sending"]
        restarted = Worker(vhost_url, tmp_path, fake)
        restarted.start()
        try:
            wait_for(lambda: [r for r in restarted.status(payload["notification_id"])
                              if r["channel"] == "push" and r["status"] == "sent"], what="push sent after restart")
            calls = fake.for_token(token)
            # the provider saw the same idempotency key twice: it dedupes, the customer gets one push
            assert len(calls) == 2 and {c["headers"]["Idempotency-Key"] for c in calls} == {push_id}
            assert len(restarted.email_for(payload["notification_id"])) == 1
            wait_for(lambda: queue_depth(vhost_url, PUSH_HIGH) == 0, what="push queue empty")
            assert queue_depth(vhost_url, shared.dead_letter_queue(PUSH_HIGH)) == 0
        finally:
            restarted.stop()
    finally:
        fake.close()


def test_a_retry_waits_in_the_broker_and_returns_to_its_own_lane_while_no_worker_runs(vhost_url, tmp_path):
    """The countdown is held by the broker (native delayed delivery), not by the worker that retried."""
    declare_topology(vhost_url)
    fake = FakePush()
    try:
        token = "tok-retry-in-broker"
        fake.script[token] = [(503, {"Retry-After": "3"})]
        fake.arrived[token] = threading.Event()
        worker = Worker(vhost_url, tmp_path, fake)
        worker.start()
        payload = notification(event="booking.reminder", tokens=(token,))  # LOW: the low lanes
        publish(vhost_url, dispatch_message(payload))
        assert fake.arrived[token].wait(60), "push never reached the provider"
        push_id = delivery_id(payload["notification_id"], "push", token)
        wait_for(lambda: "retrying" in worker.log_text(), timeout=30, what="the retry published")
        worker.kill()  # during the countdown: nothing of the retry may live in this process
        push_low = shared.lane_queue(shared.PUSH_QUEUE, shared.Lane.LOW)
        wait_for(lambda: queue_depth(vhost_url, push_low) == 1, timeout=30, what="the retry back in push.low")
        assert queue_depth(vhost_url, PUSH_HIGH) == 0
        restarted = Worker(vhost_url, tmp_path, fake)
        restarted.start()
        try:
            wait_for(lambda: [r["status"] for r in restarted.status(payload["notification_id"])
                              if r["delivery_id"] == push_id] == ["sent"], timeout=60, what="push sent on retry")
            assert [r.get("status") for r in fake.requests if r["token"] == token] == [503, 200]
        finally:
            restarted.stop()
    finally:
        fake.close()
