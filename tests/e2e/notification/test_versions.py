"""Newer versions and stale deliveries through a real worker subprocess (issue 15, items 5 and 10).

The delivery log is prepared in-process on the worker's own SQLite file; the
messages go through the real broker.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest

import shared
from notification_service.delivery.log import delivery_log
from notification_service.delivery.machine import STALE_REASON, SUPERSEDED_REASON, BookingRef, delivery_id
from tests.notification.harness import Worker, declare_topology, dispatch_message, notification, publish
from tests.support import EMAIL_HIGH, wait_for

EMAIL = "ada@example.org"


@pytest.fixture(scope="module")
def worker(module_vhost, fake_push, tmp_path_factory):
    declare_topology(module_vhost)
    w = Worker(module_vhost, tmp_path_factory.mktemp("versions"), fake_push).start()
    yield w
    w.stop()


def send_email_message(nid: str, did: str, booking: str, version: int) -> shared.TaskMessage:
    kwargs = {"delivery_id": did, "notification_id": nid, "to": EMAIL, "subject": "Booking confirmed",
              "text": "confirmed", "html": "<p>confirmed</p>", "booking_id": booking, "booking_version": version,
              "event": "booking.confirmed"}
    return shared.task_message(task=shared.EMAIL_TASK, task_id=did, routing_key=EMAIL_HIGH, kwargs=kwargs,
                               priority=int(shared.Priority.HIGH), kwargsrepr="{}")


def task_lines(worker: Worker, task_id: str) -> list[dict]:
    lines = [json.loads(line) for line in worker.log_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("task_id") == task_id]


def left_sending(worker: Worker, owner: str, lease_until_offset: timedelta) -> tuple[str, str, str]:
    """A confirmation (v1) whose attempt was left ``sending`` by ``owner``: (booking, notification, delivery)."""
    log = delivery_log(worker.db_url)
    booking, nid, now = str(uuid.uuid4()), str(uuid.uuid4()), datetime.now(UTC)
    log.open(nid, "booking.confirmed", BookingRef(booking, 1), [("email", EMAIL)], now)
    did = delivery_id(nid, "email", EMAIL)
    log.claim(did, owner, now, now + lease_until_offset)
    return booking, nid, did


def test_a_stale_delivery_left_sending_by_a_killed_worker_is_recorded_stale_at_once(worker):
    # this host, this pid, another start time: the process that held the lease is gone
    killed = f"{socket.gethostname()}:{os.getpid()}:1"
    booking, nid, did = left_sending(worker, killed, timedelta(minutes=10))
    log = delivery_log(worker.db_url)
    log.open(str(uuid.uuid4()), "booking.cancelled", BookingRef(booking, 2, cancelled=True), [("email", EMAIL)],
             datetime.now(UTC))
    publish(worker.url, send_email_message(nid, did, booking, 1))  # its redelivered copy
    wait_for(lambda: log.get(did).status == "stale", timeout=20, what="recorded stale")
    assert log.get(did).lease_owner is None
    assert [(r.status, r.reason) for r in log.receipts_of(did)] == [("stale", STALE_REASON)]
    assert not worker.email_for(nid)
    assert not [line for line in task_lines(worker, did) if "deferred" in line.get("event", "")]


def test_a_superseded_delivery_left_sending_by_an_expired_owner_is_recorded_stale_at_once(worker):
    # another host's owner is never presumed dead; its lease ended a second ago
    booking, nid, did = left_sending(worker, "elsewhere:1:1", timedelta(seconds=-1))
    log = delivery_log(worker.db_url)
    log.open(str(uuid.uuid4()), "booking.rescheduled", BookingRef(booking, 2), [("email", EMAIL)], datetime.now(UTC))
    publish(worker.url, send_email_message(nid, did, booking, 1))
    wait_for(lambda: log.get(did).status == "stale", timeout=20, what="recorded stale")
    assert [(r.status, r.reason) for r in log.receipts_of(did)] == [("stale", SUPERSEDED_REASON)]
    assert not worker.email_for(nid)
    assert not [line for line in task_lines(worker, did) if "deferred" in line.get("event", "")]


def test_a_reschedule_waits_for_the_confirmation_at_the_provider_and_is_the_last_message(worker, fake_push):
    token = f"tok-order-{uuid.uuid4().hex[:6]}"
    booking = str(uuid.uuid4())
    gate = fake_push.block[token] = threading.Event()
    fake_push.arrived[token] = threading.Event()
    confirmed = notification(booking_id=booking, version=1, tokens=(token,))
    publish(worker.url, dispatch_message(confirmed))
    assert fake_push.arrived[token].wait(30), "the confirmation's push never reached the provider"
    rescheduled = notification(event="booking.rescheduled", booking_id=booking, version=2, tokens=(token,))
    publish(worker.url, dispatch_message(rescheduled))
    log = delivery_log(worker.db_url)
    new_push = delivery_id(rescheduled["notification_id"], "push", token)
    wait_for(lambda: [line for line in task_lines(worker, new_push) if "older message" in line.get("event", "")],
             timeout=30, what="the reschedule's push waiting")
    assert len(fake_push.for_token(token)) == 1  # the reschedule did not overtake the confirmation
    gate.set()  # the confirmation's attempt ends without an answer: transient, and its retry is stale
    wait_for(lambda: log.get(new_push).status == "sent", timeout=30, what="the reschedule's push sent")
    old_push = delivery_id(confirmed["notification_id"], "push", token)
    wait_for(lambda: log.get(old_push).status == "stale", timeout=30, what="the confirmation's retry stale")
    calls = fake_push.for_token(token)
    assert len(calls) == 2 and calls[-1]["json"]["message"]["data"]["event"] == "booking.rescheduled"
    assert log.get(old_push).last_error == SUPERSEDED_REASON
