"""End-to-end through a real worker subprocess: delivery, retries, dead letters, replay, poison messages."""

from __future__ import annotations

import email
import json
import uuid
from datetime import UTC, datetime, timedelta

import pika
import pytest

import shared
from notification_service.delivery.machine import delivery_id
from tests.notification.harness import (
    Worker,
    dispatch_message,
    notification,
    publish,
    queue_depth,
    running_worker,
)
from tests.support import DISPATCH_HIGH, EMAIL_HIGH, PUSH_HIGH, wait_for


@pytest.fixture(scope="module")
def worker(module_vhost, fake_push, tmp_path_factory):
    # These tests script one token's failures each, against one push provider: its breaker would open
    # after five of them and hold the next tests' pushes (tests/e2e/notification/test_provider_outage.py
    # covers the breaker), so here it never opens.
    with running_worker(module_vhost, tmp_path_factory.mktemp("worker"), fake_push,
                        NOTIFICATION_BREAKER_FAILURES="1000000") as w:
        yield w


def statuses(worker: Worker, notification_id: str) -> dict[str, str]:
    return {row["channel"]: row["status"] for row in worker.status(notification_id)}


def test_pika_published_message_reaches_email_sink_and_push_api(worker, fake_push):
    payload = notification(tokens=("tok-happy",))
    publish(worker.url, dispatch_message(payload))
    nid = payload["notification_id"]
    (eml,) = wait_for(lambda: worker.email_for(nid), what="e-mail file")
    wait_for(lambda: fake_push.for_token("tok-happy"), what="push request")
    parsed = email.message_from_bytes(eml.read_bytes())
    assert eml.name == f"{delivery_id(nid, 'email', 'ada@example.org')}.eml"
    assert parsed["To"] == "ada@example.org"
    assert parsed["X-Notification-Event"] == "booking.confirmed"
    assert parsed["X-Booking-Id"] == payload["booking"]["id"]
    assert parsed["X-Booking-Version"] == "1"
    assert parsed["X-Correlation-Id"] == payload["correlation_id"]
    assert delivery_id(nid, "email", "ada@example.org") in parsed["Message-ID"]
    (request,) = fake_push.for_token("tok-happy")
    push_id = delivery_id(nid, "push", "tok-happy")
    assert request["headers"]["Idempotency-Key"] == push_id
    assert request["headers"]["Authorization"] == "Bearer test-token"
    assert request["json"]["message"]["data"] == {"notification_id": nid, "event": "booking.confirmed",
                                                  "booking_id": payload["booking"]["id"]}
    assert request["json"]["message"]["notification"]["title"].startswith("Booking confirmed")
    wait_for(lambda: statuses(worker, nid) == {"email": "sent", "push": "sent"}, what="both sent")
    # the operator's view of the same rows
    cli_rows = json.loads(worker.cli(["status", nid]).stdout)
    assert {(r["channel"], r["status"], r["attempts"]) for r in cli_rows} == {("email", "sent", 1), ("push", "sent", 1)}
    assert all("address" not in r for r in cli_rows)
    # every log line about this notification's three tasks carries the correlation id: one
    # "dispatched" line and one "sent" per delivery (Celery's own per-task lines are DEBUG)
    ids = {nid, delivery_id(nid, "email", "ada@example.org"), push_id}
    lines = [json.loads(line) for line in worker.log_text().splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("task_id") in ids or any(i in line.get("event", "") for i in ids)]
    assert sorted(line["event"] for line in mine) == ["dispatched", "sent", "sent"]
    assert all(line.get("correlation_id") == payload["correlation_id"] for line in mine)
    assert "ada@example.org" not in worker.log_text()


def test_503_then_200_is_delivered_once(worker, fake_push):
    fake_push.script["tok-503"] = [(503, {})]
    payload = notification(tokens=("tok-503",))
    publish(worker.url, dispatch_message(payload))
    wait_for(lambda: statuses(worker, payload["notification_id"]).get("push") == "sent", what="push sent")
    calls = fake_push.for_token("tok-503")
    assert len(calls) == 2
    assert calls[0]["headers"]["Idempotency-Key"] == calls[1]["headers"]["Idempotency-Key"]
    (row,) = [r for r in worker.status(payload["notification_id"]) if r["channel"] == "push"]
    assert row["attempts"] == 2


def test_retry_after_is_honoured(worker, fake_push):
    fake_push.script["tok-429"] = [(429, {"Retry-After": "2"})]
    payload = notification(tokens=("tok-429",))
    publish(worker.url, dispatch_message(payload))
    wait_for(lambda: statuses(worker, payload["notification_id"]).get("push") == "sent", what="push sent")
    first, second = fake_push.for_token("tok-429")
    # base backoff is 0.2 s (jitter ≤ 0.2 s); only Retry-After explains a gap of two seconds
    assert second["time"] - first["time"] >= 1.9


def test_400_goes_to_push_dlq_with_reason(worker, fake_push):
    fake_push.script["tok-400"] = [(400, {})]
    payload = notification(tokens=("tok-400",))
    publish(worker.url, dispatch_message(payload))
    push_id = delivery_id(payload["notification_id"], "push", "tok-400")
    entry = wait_for(lambda: [m for m in worker.dlq(PUSH_HIGH) if m["message_id"] == push_id],
                     what="dead letter")[0]
    assert entry["origin_queue"] == PUSH_HIGH
    assert "400" in entry["reason"] and entry["task"] == shared.PUSH_TASK
    assert entry["priority"] == shared.Priority.HIGH.value
    assert len(fake_push.for_token("tok-400")) == 1
    assert statuses(worker, payload["notification_id"]) == {"email": "sent", "push": "dead"}


def test_an_outage_is_retried_past_max_retries_until_too_old_then_dead_lettered_and_replay_delivers_once(
        worker, fake_push):
    # NOTIFICATION_MAX_RETRIES is 3 here: an outage is not bounded by it, only by the notification's age
    fake_push.script["tok-500"] = [(500, {})] * 1000
    payload = notification(tokens=("tok-500",))
    publish(worker.url, dispatch_message(payload))
    push_id = delivery_id(payload["notification_id"], "push", "tok-500")
    wait_for(lambda: len(fake_push.for_token("tok-500")) >= 6, 90, "six attempts, past max retries")
    assert not [m for m in worker.dlq() if m["message_id"] == push_id]
    # the delivery was opened two days ago: older than NOTIFICATION_MAX_AGE_SECONDS (24 h) at its next failure
    worker.open_days_ago(push_id, 2)
    entry = wait_for(lambda: [m for m in worker.dlq() if m["message_id"] == push_id], 60, "dead letter")[0]
    assert "NOTIFICATION_MAX_AGE_SECONDS" in entry["reason"] and "500" in entry["reason"]
    calls = len(fake_push.for_token("tok-500"))
    fake_push.script["tok-500"] = []
    # the retries kept the message's id and its priority
    assert entry["priority"] == shared.Priority.HIGH.value and entry["task"] == shared.PUSH_TASK
    shown = json.loads(worker.cli(["dlq", "show", push_id]).stdout)[0]
    assert shown["headers"]["task"] == shared.PUSH_TASK
    # the provider is healthy again: replay
    replayed = json.loads(worker.cli(["dlq", "replay", push_id]).stdout)["replayed"]
    assert replayed == [push_id]
    wait_for(lambda: statuses(worker, payload["notification_id"]).get("push") == "sent", what="replayed push sent")
    assert len(fake_push.for_token("tok-500")) == calls + 1
    assert not [m for m in worker.dlq() if m["message_id"] == push_id]
    # a second replay of an already-sent delivery (e.g. duplicate) sends nothing more
    publish(worker.url, dispatch_message(payload))
    wait_for(lambda: queue_depth(worker.url, DISPATCH_HIGH) == 0, what="dispatch drained")
    wait_for(lambda: queue_depth(worker.url, PUSH_HIGH) == 0, what="push drained")
    assert len(fake_push.for_token("tok-500")) == calls + 1
    assert len(worker.email_for(payload["notification_id"])) == 1


def test_stale_message_after_cancellation_is_dropped(worker, fake_push):
    booking = str(uuid.uuid4())
    cancel = notification(event="booking.cancelled", booking_id=booking, version=3, status="cancelled", tokens=())
    publish(worker.url, dispatch_message(cancel))
    wait_for(lambda: statuses(worker, cancel["notification_id"]).get("email") == "sent", what="cancellation sent")
    old = notification(event="booking.confirmed", booking_id=booking, version=2, tokens=("tok-stale",))
    publish(worker.url, dispatch_message(old))
    wait_for(lambda: statuses(worker, old["notification_id"]) == {"email": "stale", "push": "stale"}, what="stale")
    assert not worker.email_for(old["notification_id"])
    assert not fake_push.for_token("tok-stale")


def test_delivery_waiting_for_a_retry_is_dropped_once_the_booking_is_cancelled(worker, fake_push):
    booking = str(uuid.uuid4())
    # the confirmation's push fails once and must wait 10 s before its retry: ample time for the
    # cancellation below to be processed first, even on a loaded machine
    fake_push.script["tok-late"] = [(503, {"Retry-After": "10"})]
    confirmed = notification(booking_id=booking, version=1, tokens=("tok-late",))
    publish(worker.url, dispatch_message(confirmed))
    wait_for(lambda: fake_push.for_token("tok-late"), what="first push attempt")
    cancel = notification(event="booking.cancelled", booking_id=booking, version=2, status="cancelled", tokens=())
    publish(worker.url, dispatch_message(cancel))
    wait_for(lambda: statuses(worker, cancel["notification_id"]).get("email") == "sent", what="cancellation sent")
    # the retry runs after the cancellation was processed: "confirmed" must not follow "cancelled"
    wait_for(lambda: statuses(worker, confirmed["notification_id"]).get("push") == "stale", what="retry dropped")
    assert len(fake_push.for_token("tok-late")) == 1


def test_dispatch_resent_while_a_send_is_in_flight_sends_once(worker, fake_push):
    import threading

    token = "tok-resend"
    gate = fake_push.block[token] = threading.Event()
    fake_push.arrived[token] = threading.Event()
    payload = notification(tokens=(token,))
    nid = payload["notification_id"]
    dispatched = worker.task_count(shared.DISPATCH_TASK, "dispatched")
    publish(worker.url, dispatch_message(payload))
    assert fake_push.arrived[token].wait(30), "push never reached the provider"
    # the relay resends the same message (e.g. it died before recording the confirm)
    publish(worker.url, dispatch_message(payload))
    wait_for(lambda: worker.task_count(shared.DISPATCH_TASK, "dispatched") == dispatched + 2,
             what="resent dispatch done")
    wait_for(lambda: queue_depth(worker.url, PUSH_HIGH) == 0, what="push queue drained")
    # three threads are idle: a duplicate push task would have reached the provider by now
    assert len(fake_push.for_token(token)) == 1
    gate.set()  # the held attempt ends without an answer (transient) and retries
    wait_for(lambda: statuses(worker, nid).get("push") == "sent", what="push sent")
    assert len(fake_push.for_token(token)) == 2
    assert len(worker.email_for(nid)) == 1


def test_task_with_arguments_that_do_not_fit_is_dead_lettered_at_once(worker):
    bad = shared.task_message(task=shared.EMAIL_TASK, task_id="p-badargs", routing_key=EMAIL_HIGH,
                              kwargs={"unexpected": 1}, priority=5)
    publish(worker.url, bad)
    entry = wait_for(lambda: [m for m in worker.dlq(EMAIL_HIGH) if m["message_id"] == "p-badargs"],
                     what="dead letter")[0]
    assert "bad task arguments" in entry["reason"] and entry["death_count"] == 1
    # replay by queue puts it back on notifications.email; it fails the same way and returns
    assert json.loads(worker.cli(["dlq", "replay", "--queue", EMAIL_HIGH]).stdout)["replayed"] == ["p-badargs"]
    wait_for(lambda: [m for m in worker.dlq(EMAIL_HIGH) if m["message_id"] == "p-badargs"],
             what="dead letter again")
    assert worker.cli(["dlq", "replay"], check=False).returncode == 2  # replaying everything needs --all
    worker.cli(["dlq", "purge", "--queue", EMAIL_HIGH, "--yes"])


def _raw(headers=None, body=b"[]", content_type="application/json", **extra):
    return dict(body=body, properties=pika.BasicProperties(headers=headers, content_type=content_type,
                                                           content_encoding="utf-8", delivery_mode=2, **extra))


def _poison_cases():
    good = dispatch_message(notification(tokens=()))
    h = dict(good.headers)
    return {
        "not-json": _raw(dict(h, id="p-notjson"), body=b"{not json"),
        "no-content-type": _raw(dict(h, id="p-noct"), body=good.body, content_type=None),
        "no-id": _raw({k: v for k, v in h.items() if k != "id"}, body=good.body, message_id="p-noid"),
        "no-task": _raw({k: v for k, v in dict(h, id="p-notask").items() if k != "task"}, body=good.body),
        "two-item-body": _raw(dict(h, id="p-two"), body=json.dumps([[], {}]).encode()),
        "unknown-task": _raw(dict(h, id="p-unknown", task="notifications.nope"), body=good.body),
        "contract-violation": _raw(dict(h, id="p-contract"), body=json.dumps(
            [[], {"message": json.load(open(pytest_examples() / "notification.requested.v1.invalid.bad-email.json"))},
             {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]).encode()),
    }


def pytest_examples():
    import pathlib

    return pathlib.Path(shared.__file__).parent / "examples"


POISON_IDS = {"not-json": "p-notjson", "no-content-type": "p-noct", "no-id": "p-noid", "no-task": "p-notask",
              "two-item-body": "p-two", "unknown-task": "p-unknown", "contract-violation": "p-contract"}


def test_every_poison_kind_is_dead_lettered_and_the_worker_keeps_serving(worker, fake_push):
    for raw in _poison_cases().values():
        publish(worker.url, **raw)
    wait_for(lambda: {m["message_id"] for m in worker.dlq(DISPATCH_HIGH)} >= set(POISON_IDS.values()),
             timeout=60, what="all poison in the DLQ")
    listed = {m["message_id"]: m for m in worker.dlq(DISPATCH_HIGH)}
    for kind, mid in POISON_IDS.items():
        assert listed[mid]["reason"], kind
        assert listed[mid]["origin_queue"] == DISPATCH_HIGH
    assert "not JSON" in listed["p-notjson"]["reason"]
    assert "content_type" in listed["p-noct"]["reason"]
    assert "'id'" in listed["p-noid"]["reason"]
    assert "'task'" in listed["p-notask"]["reason"]
    assert "3-item" in listed["p-two"]["reason"]
    assert "unknown task" in listed["p-unknown"]["reason"]
    assert "contract violation" in listed["p-contract"]["reason"]
    # and the worker still serves a valid message
    payload = notification(tokens=("tok-after-poison",))
    publish(worker.url, dispatch_message(payload))
    wait_for(lambda: worker.email_for(payload["notification_id"]), what="e-mail after poison")
    wait_for(lambda: fake_push.for_token("tok-after-poison"), what="push after poison")
    # purge empties the DLQ only with --yes
    assert worker.cli(["dlq", "purge", "--queue", DISPATCH_HIGH], check=False).returncode == 2
    worker.cli(["dlq", "purge", "--queue", DISPATCH_HIGH, "--yes"])
    assert queue_depth(worker.url, shared.dead_letter_queue(DISPATCH_HIGH)) == 0


def test_expired_reminder_is_acked_and_recorded_not_dead_lettered(worker, fake_push):
    payload = notification(event="booking.reminder", tokens=("tok-expired",))
    publish(worker.url, dispatch_message(payload, expires=datetime.now(UTC) - timedelta(minutes=1)))
    wait_for(lambda: statuses(worker, payload["notification_id"]) == {"email": "expired", "push": "expired"},
             what="expired recorded")
    assert not worker.email_for(payload["notification_id"]) and not fake_push.for_token("tok-expired")
    assert payload["notification_id"] not in {m["message_id"] for m in worker.dlq()}


def test_task_events_reach_an_event_receiver_like_flower_without_personal_data(worker, fake_push):
    import threading

    from celery import Celery

    events: list[dict] = []
    app = Celery(broker=worker.url, set_as_current=False)
    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(connection, handlers={"*": events.append})
        thread = threading.Thread(target=receiver.capture, kwargs={"limit": None, "timeout": None, "wakeup": False},
                                  daemon=True)
        thread.start()
        try:
            # the worker's heartbeat shows the receiver is bound (Flower lists workers from these)
            wait_for(lambda: any(e["type"] == "worker-heartbeat" for e in events), what="worker heartbeat event")
            # the push fails once: its retry is a message the worker publishes itself
            fake_push.script["tok-secret-events"] = [(503, {"Retry-After": "1"})]
            payload = notification(tokens=("tok-secret-events",))
            publish(worker.url, dispatch_message(payload))
            push_id = delivery_id(payload["notification_id"], "push", "tok-secret-events")
            ids = {payload["notification_id"], delivery_id(payload["notification_id"], "email", "ada@example.org")}
            wait_for(lambda: ids | {push_id} <= {e.get("uuid") for e in events if e["type"] == "task-succeeded"},
                     what="task-succeeded events")
            assert [e for e in events if e["type"] == "task-retried" and e.get("uuid") == push_id]
            # the retried message was received again, with the same id-only summary
            again = [e for e in events if e["type"] == "task-received" and e.get("uuid") == push_id]
            assert len(again) == 2 and all(e["kwargs"] == again[0]["kwargs"] for e in again)
            assert "'delivery_id'" in again[1]["kwargs"] and again[1]["args"] == "()"
        finally:
            receiver.should_stop = True
            thread.join(10)
    received = [e for e in events if e["type"] == "task-received" and e.get("uuid") in ids]
    assert {e["name"] for e in received} == {shared.DISPATCH_TASK, shared.EMAIL_TASK}
    # Flower shows args/kwargs from argsrepr/kwargsrepr: ids only, never the address, the token
    # or the text, also for the retry (Celery would rebuild them from the arguments)
    dumped = json.dumps(events)
    assert "ada@example.org" not in dumped and "tok-secret-events" not in dumped and "Booking confirmed" not in dumped


def test_reminder_push_retried_past_its_expiry_is_dropped_and_recorded(worker, fake_push):
    # The reminder expires 10 s from now (ample for one dispatch on a loaded machine); the
    # provider asks the push to come back after 12 s, i.e. after the expiry, whenever it ran.
    fake_push.script["tok-expiring"] = [(503, {"Retry-After": "12"})]
    payload = notification(event="booking.reminder", tokens=("tok-expiring",))
    nid = payload["notification_id"]
    publish(worker.url, dispatch_message(payload, expires=datetime.now(UTC) + timedelta(seconds=10)))
    wait_for(lambda: statuses(worker, nid) == {"email": "sent", "push": "expired"}, what="push expired")
    assert len(fake_push.for_token("tok-expiring")) == 1
    assert delivery_id(nid, "push", "tok-expiring") not in {m["message_id"] for m in worker.dlq()}


def test_metrics_count_tasks_retries_dead_letters_and_latency(worker):
    import requests

    text = requests.get(worker.metrics_url, timeout=5).text
    assert 'notification_tasks_total{outcome="sent",task="notifications.email.send"}' in text
    assert 'notification_task_retries_total{task="notifications.push.send"}' in text
    assert 'notification_dead_letters_total{kind="poison",queue="notifications.dispatch.high"}' in text
    assert 'notification_provider_seconds_count{provider="push_http"}' in text
    assert 'notification_provider_seconds_count{provider="email_file"}' in text


def test_zz_worker_log_shows_no_unexpected_task_error(worker):
    """Runs last in the module: no task of the scenarios above crashed (stock Celery would ack those)."""
    text = worker.log_text()
    assert "raised unexpected" not in text
    assert "unexpected error" not in text
