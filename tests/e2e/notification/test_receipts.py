"""Receipts a real worker publishes: sent, retrying and dead, without addresses."""

from __future__ import annotations

import json
import uuid

import pytest

import shared
from tests.integration.notification.test_receipts import EMAIL, bind_test_queue, drain
from tests.notification.harness import Worker, declare_topology, dispatch_message, notification, publish
from tests.support import wait_for


@pytest.fixture(scope="module")
def receipt_worker(module_vhost, fake_push, tmp_path_factory):
    declare_topology(module_vhost)
    worker = Worker(module_vhost, tmp_path_factory.mktemp("receipts"), fake_push,
                    NOTIFICATION_RECEIPTS_POLL_SECONDS="0.2").start()
    yield worker
    worker.stop()


def test_a_worker_publishes_sent_retrying_and_dead_receipts_without_addresses(receipt_worker, fake_push):
    connection, queue = bind_test_queue(receipt_worker.url)
    seen: list = []
    flaky, broken = f"tok-flaky-{uuid.uuid4().hex}", f"tok-broken-{uuid.uuid4().hex}"
    fake_push.script[flaky] = [(503, {"Retry-After": "0"}), (200, {})]
    fake_push.script[broken] = [(400, {})]
    first = notification(tokens=(flaky,), email=EMAIL)
    second = notification(tokens=(broken,), email=EMAIL)
    try:
        publish(receipt_worker.url, dispatch_message(first))
        publish(receipt_worker.url, dispatch_message(second))

        def by_delivery():
            drain(connection, queue, seen)
            found: dict = {}
            for _p, m in seen:
                found.setdefault((m["notification_id"], m["channel"]), []).append(
                    (m["sequence"], m["status"], m["attempt"]))
            done = {(first["notification_id"], "push"): 2, (first["notification_id"], "email"): 1,
                    (second["notification_id"], "push"): 1, (second["notification_id"], "email"): 1}
            return found if all(len(found.get(k, [])) >= n for k, n in done.items()) else None

        found = wait_for(by_delivery, 60, "receipts of both notifications")
    finally:
        connection.close()
    assert sorted(found[(first["notification_id"], "push")]) == [(1, "retrying", 1), (2, "sent", 2)]
    assert found[(first["notification_id"], "email")] == [(1, "sent", 1)]
    assert found[(second["notification_id"], "push")] == [(1, "dead", 1)]
    dead = [m for _p, m in seen if m["status"] == "dead"][0]
    assert (dead["reason"].startswith("permanent: push_http provider answered 400")
            and dead["recipient"] == "tok-…" + broken[-2:])
    assert {m["correlation_id"] for _p, m in seen} == {first["correlation_id"], second["correlation_id"]}
    everything = json.dumps([m for _p, m in seen]) + receipt_worker.log_text()
    for secret in (EMAIL, flaky, broken):
        assert secret not in json.dumps([m for _p, m in seen])
    assert EMAIL not in everything
    for _p, m in seen:
        shared.load_notification_status(m)
