"""The hostile AMQP corpus (tests/hostile/amqp.py) against a real worker: dead letters with reasons, no crash."""

from __future__ import annotations

import json

import pika
import pytest

import shared
from notification_service.delivery.repository import SqlDeliveryLog
from tests.hostile.amqp import NON_ASCII_ADDRESSES, cases
from tests.notification.harness import Worker, declare_topology, dispatch_message, notification, publish
from tests.support import DISPATCH_HIGH, EMAIL_HIGH, wait_for


def _listed(worker, ids: set[str], queue: str | None = None) -> dict[str, dict] | None:
    """``dlq list`` by message id once it holds every one of ``ids``, else None."""
    listed = {d["message_id"]: d for d in worker.dlq(queue)}
    return listed if ids <= set(listed) else None


@pytest.fixture(scope="module")
def worker(module_vhost, tmp_path_factory):
    declare_topology(module_vhost)
    w = Worker(module_vhost, tmp_path_factory.mktemp("hostile"), None).start()
    yield w
    w.stop()


def test_every_hostile_message_is_dead_lettered_at_once_with_its_reason_and_the_worker_keeps_serving(worker):
    corpus = cases()
    for name, headers, content_type, body, _reason in corpus:
        queue = shared.lane_queue(shared.TASK_STAGES[headers["task"]], shared.Lane.HIGH)
        publish(worker.url, body=body, routing_key=queue, properties=pika.BasicProperties(
            headers=headers, content_type=content_type, content_encoding="utf-8", delivery_mode=2, message_id=name))
    ids = {headers["id"][:200] for _name, headers, *_ in corpus}
    listed = wait_for(lambda: _listed(worker, ids), timeout=120, what="every hostile message dead-lettered")
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
    bulk = worker.cli(["dlq", "replay", "--queue", DISPATCH_HIGH], check=False)
    assert bulk.returncode == 1  # something was skipped (the poison), and said so
    everything = json.loads(bulk.stdout)
    assert {"h-brackets", "h-deep-message", "h-oversized", "h-not-utf8"} <= set(everything["skipped_poison"])
    # contract violations have a sound envelope: replayed, and dead-lettered again with the same reason
    assert "h-timezone-folder" in everything["replayed"]


def _sent(worker, payload: dict) -> None:
    log = SqlDeliveryLog(worker.db_url)
    try:
        wait_for(lambda: [r for r in log.for_notification(payload["notification_id"]) if r.status == "sent"],
                 what="the notification sent")
    finally:
        log.engine.dispose()


def test_forged_dead_letter_headers_are_stripped_so_the_queue_lives_and_a_replay_arrives_clean(worker):
    """Issue 15 item 2: rejecting these as they were crashed notifications.email (RabbitMQ 3.10.8)."""
    forged = ("h-x-death-count-abc", "h-x-death-not-tables", "h-x-first-death-queue")
    listed = wait_for(lambda: _listed(worker, set(forged), EMAIL_HIGH), timeout=120,
                      what="forged headers dead-lettered")
    for name in forged:
        assert listed[name]["origin_queue"] == EMAIL_HIGH and listed[name]["broker_reason"] == "rejected"
    (shown,) = json.loads(worker.cli(["dlq", "show", "h-x-first-death-queue"]).stdout)
    assert shown["headers"]["x-first-death-queue"] == EMAIL_HIGH
    assert "x-last-death-reason" not in shown["headers"]
    # The e-mail queue still serves (a crashed one would not).
    payload = notification(tokens=())
    publish(worker.url, dispatch_message(payload))
    _sent(worker, payload)
    # Replayed without the broker's headers, the copy runs, fails for its own reason, and
    # RabbitMQ dead-letters it itself: rejecting a clean message is safe.
    replay = json.loads(worker.cli(["dlq", "replay", "h-x-death-count-abc"]).stdout)
    assert replay["replayed"] == ["h-x-death-count-abc"]
    wait_for(lambda: "not in the delivery log" in ({d["message_id"]: d for d in worker.dlq(EMAIL_HIGH)}
                                                   .get("h-x-death-count-abc", {}).get("reason") or ""),
             timeout=60, what="the replayed copy dead-lettered again, by RabbitMQ")
    assert worker.process.poll() is None


def test_no_undeliverable_address_reaches_a_log_line_a_reason_or_the_dlq_cli(worker):
    """Issue 15 item 4: the address was in the retrying and dead-letter lines, the reason and ``dlq list``."""
    names = ("h-non-ascii-local-part", "h-non-ascii-address")
    wait_for(lambda: set(names) <= {d["message_id"] for d in worker.dlq(DISPATCH_HIGH)}, timeout=120,
             what="the undeliverable addresses dead-lettered")
    printed = [worker.cli(["dlq", "list"]).stdout, worker.log_text(),
               *(worker.cli(["dlq", "show", name]).stdout for name in names)]
    reasons = SqlDeliveryLog(worker.db_url)
    try:
        printed.append(json.dumps(reasons.dead_letter_reasons(), ensure_ascii=False))
    finally:
        reasons.engine.dispose()
    for address in NON_ASCII_ADDRESSES:
        forms = {address, json.dumps(address)[1:-1], address.encode("unicode_escape").decode(), address.split("@")[0]}
        for text in printed:
            assert not [form for form in forms if form in text], text[:2000]
    assert "retrying" not in worker.log_text()  # a contract violation is never retried


def test_an_international_domain_is_delivered_in_its_idna_form(worker):
    payload = notification(tokens=(), email="ada@bücher.example")
    publish(worker.url, dispatch_message(payload))
    _sent(worker, payload)
    written = [p.read_bytes() for p in worker.email_dir.glob("*.eml")]
    assert [m for m in written if b"To: ada@xn--bcher-kva.example\r\n" in m]
