"""Scenarios that need their own worker start: priority reordering of a backlog, SIGKILL mid-send."""

from __future__ import annotations

import email
import threading

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
from tests.support import wait_for


def test_high_priority_overtakes_a_low_priority_backlog(vhost_url, tmp_path):
    declare_topology(vhost_url)
    low = [notification(event="booking.reminder", tokens=()) for _ in range(30)]
    for payload in low:
        publish(vhost_url, dispatch_message(payload))
    high = notification(event="booking.confirmed", tokens=())
    publish(vhost_url, dispatch_message(high))
    assert queue_depth(vhost_url, shared.DISPATCH_QUEUE) == 31
    worker = Worker(vhost_url, tmp_path, None, concurrency=1)
    worker.start()
    try:
        wait_for(lambda: len(worker.emails()) == 31, timeout=90, what="all 31 e-mails")
        order = sorted(worker.emails(), key=lambda p: p.stat().st_mtime_ns)
        ids = [email.message_from_bytes(p.read_bytes())["X-Notification-Id"] for p in order]
        # FIFO would put it last (31st); prefetch 1 lets at most a couple of low ones in before it
        assert ids.index(high["notification_id"]) < 5
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
            wait_for(lambda: queue_depth(vhost_url, shared.PUSH_QUEUE) == 0, what="push queue empty")
            assert queue_depth(vhost_url, shared.dead_letter_queue(shared.PUSH_QUEUE)) == 0
        finally:
            restarted.stop()
    finally:
        fake.close()
