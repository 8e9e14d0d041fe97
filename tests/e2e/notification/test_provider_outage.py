"""A provider outage longer than the old retry budget, through a real worker: nothing dead-lettered.

The push channel has one provider (the fake FCM-shaped API), which answers 503 to every call for
a while. Its breaker opens after a few failures; the worker then takes none of the push lanes'
messages (they wait, *ready*, with no consumer of this worker: "visibly held" in the management
UI) and lets one probe through when the breaker half-opens. Once the provider answers again,
every push goes out once. The old budget (NOTIFICATION_MAX_RETRIES=3 with this harness's base)
is spent in seconds; the outage here lasts longer than that several times over.
"""

from __future__ import annotations

import pika
import pytest

import shared
from notification_service.delivery.machine import delivery_id
from tests.notification.harness import dispatch_message, notification, publish, running_worker
from tests.support import PUSH_HIGH, wait_for

N = 12
#: How many holds the worker had logged when the first test ended (the second waits for a new one).
HOLDS_BEFORE: dict[str, int] = {}


@pytest.fixture(scope="module")
def worker(module_vhost, fake_push, tmp_path_factory):
    with running_worker(module_vhost, tmp_path_factory.mktemp("worker"), fake_push, concurrency=8,
                        NOTIFICATION_BREAKER_FAILURES="3", NOTIFICATION_BREAKER_OPEN_SECONDS="2") as w:
        yield w


def lane(url: str, queue: str) -> tuple[int, int]:
    """(ready messages, consumers) of ``queue``."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        method = connection.channel().queue_declare(queue, passive=True).method
        return method.message_count, method.consumer_count
    finally:
        connection.close()


def test_an_outage_longer_than_the_old_retry_budget_dead_letters_nothing_and_holds_the_lane(worker, fake_push):
    fake_push.outage = True
    payloads = [notification(tokens=(f"tok-outage-{i}",)) for i in range(N)]
    for payload in payloads:
        publish(worker.url, dispatch_message(payload))
    tokens = [f"tok-outage-{i}" for i in range(N)]

    # The breaker opens and the worker stops taking push messages: they wait in their lane, ready,
    # with no consumer, while the e-mails (another channel, another provider) go out.
    def held() -> bool:
        ready, consumers = lane(worker.url, PUSH_HIGH)
        return ready > 0 and consumers == 0

    wait_for(held, 60, "the push lane held: messages ready, no consumer", interval=0.2)
    wait_for(lambda: all(len(worker.email_for(p["notification_id"])) == 1 for p in payloads), 60, "every e-mail")
    assert "channel_held" in worker.log_text()

    # Longer than the whole old budget, several times over: the breaker's probes are all that reach the provider.
    wait_for(lambda: worker.log_text().count("channel_held") >= 3, 90, "three holds (failed probes between them)",
             interval=0.5)
    during = sum(len(fake_push.for_token(t)) for t in tokens)
    assert during < 2 * N, f"{during} provider calls for {N} deliveries during the outage"
    assert not worker.dlq(), "nothing is dead-lettered during an outage"

    fake_push.outage = False
    for payload, token in zip(payloads, tokens, strict=True):
        did = delivery_id(payload["notification_id"], shared.CHANNEL_PUSH, token)
        wait_for(lambda did=did, nid=payload["notification_id"]: any(
                     r["delivery_id"] == did and r["status"] == "sent" for r in worker.status(nid)),
                 120, f"push {token} sent after the outage", interval=0.5)
    accepted = {t: [r for r in fake_push.for_token(t) if r.get("status") == 200] for t in tokens}
    assert {t: len(calls) for t, calls in accepted.items() if len(calls) != 1} == {}
    assert not worker.dlq()
    assert "channel_resumed" in worker.log_text()
    HOLDS_BEFORE["n"] = worker.log_text().count("channel_held")


def test_a_notification_held_past_its_usefulness_is_dead_lettered_with_its_age(worker, fake_push):
    fake_push.outage = True
    try:
        payload = notification(tokens=("tok-outage-old",))
        publish(worker.url, dispatch_message(payload))
        did = delivery_id(payload["notification_id"], shared.CHANNEL_PUSH, "tok-outage-old")
        wait_for(lambda: worker.log_text().count("channel_held") > HOLDS_BEFORE.get("n", 0), 60, "the lane held again")
        # opened two days ago: older than NOTIFICATION_MAX_AGE_SECONDS (24 h) when it next comes round
        worker.open_days_ago(did, 2)
        entry = wait_for(lambda: [m for m in worker.dlq() if m["message_id"] == did], 90, "dead letter")[0]
        assert "NOTIFICATION_MAX_AGE_SECONDS" in entry["reason"]
        assert [r["status"] for r in worker.status(payload["notification_id"]) if r["delivery_id"] == did] == ["dead"]
    finally:
        fake_push.outage = False
