"""The hostile AMQP corpus (tests/hostile/amqp.py) against a real worker: dead letters with reasons, no crash."""

from __future__ import annotations

import json

import pika
import pytest

import shared
from notification_service.delivery.log import SqlDeliveryLog
from tests.hostile.amqp import cases
from tests.notification.harness import Worker, declare_topology, dispatch_message, notification, publish
from tests.support import wait_for


@pytest.fixture(scope="module")
def worker(module_vhost, tmp_path_factory):
    declare_topology(module_vhost)
    w = Worker(module_vhost, tmp_path_factory.mktemp("hostile"), None).start()
    yield w
    w.stop()


def test_every_hostile_message_is_dead_lettered_at_once_with_its_reason_and_the_worker_keeps_serving(worker):
    corpus = cases()
    for name, headers, content_type, body, _reason in corpus:
        queue = shared.TASK_QUEUES[headers["task"]]
        publish(worker.url, body=body, routing_key=queue, properties=pika.BasicProperties(
            headers=headers, content_type=content_type, content_encoding="utf-8", delivery_mode=2, message_id=name))
    ids = {headers["id"][:200] for _name, headers, *_ in corpus}
    listed = wait_for(lambda: (lambda m: m if ids <= set(m) else None)(
        {d["message_id"]: d for d in worker.dlq()}), timeout=120, what="every hostile message dead-lettered")
    for name, headers, _ct, _body, reason in corpus:
        entry = listed[headers["id"][:200]]
        assert reason in (entry["reason"] or ""), (name, entry["reason"])
        assert entry["death_count"] == 1, name  # dead on the first delivery: nothing was retried
    # the worker is alive and serving
    payload = notification(tokens=())
    publish(worker.url, dispatch_message(payload))
    log = SqlDeliveryLog(worker.db_url)
    try:
        wait_for(lambda: [r for r in log.for_notification(payload["notification_id"]) if r.status == "sent"],
                 what="a good notification sent after the corpus")
    finally:
        log.engine.dispose()
    assert worker.process.poll() is None and "Traceback" not in worker.log_text()


def test_dlq_tools_show_hostile_messages_and_never_replay_poison(worker):
    wait_for(lambda: "h-brackets" in {d["message_id"] for d in worker.dlq()}, timeout=120, what="corpus in the DLQ")
    shown = json.loads(worker.cli(["dlq", "show", "h-brackets"]).stdout)[0]
    assert "nests deeper" in shown["undecodable"] and shown["body"].startswith("[[[[")
    replay = worker.cli(["dlq", "replay", "h-brackets"], check=False)
    assert replay.returncode == 1 and "poison" in replay.stderr
    assert "h-brackets" in {d["message_id"] for d in worker.dlq()}  # still there, not back on the work queue
    everything = json.loads(worker.cli(["dlq", "replay", "--queue", shared.DISPATCH_QUEUE]).stdout)
    assert {"h-brackets", "h-deep-message", "h-oversized", "h-not-utf8"} <= set(everything["skipped_poison"])
    # contract violations have a sound envelope: replayed, and dead-lettered again with the same reason
    assert "h-timezone-folder" in everything["replayed"]
