"""A broker killed with SIGKILL and restarted under a working worker (a private RabbitMQ node).

RabbitMQ loses recent acks in such a crash and marks recovered messages
``redelivered``: deliveries that were already sent come back, and copies of a
send in flight run next to the original. The owner-stamped lease must keep
every delivery to one provider call at a time and one accepted call in all,
and the worker must be consuming again a few seconds after the broker is back.
"""

from __future__ import annotations

import itertools
import re
import uuid

import pika

import shared
from notification_service.delivery.machine import delivery_id
from notification_service.delivery.repository import SqlDeliveryLog
from tests.notification.harness import FakePush, Worker, declare_topology, dispatch_message, notification
from tests.support import wait_for


def _publish_all(broker, payloads) -> None:
    connection = pika.BlockingConnection(broker.pika_parameters())
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for payload in payloads:
            m = dispatch_message(payload)
            channel.basic_publish(shared.EXCHANGE, m.routing_key, m.body,
                                  pika.BasicProperties(headers=m.headers, **m.properties), mandatory=True)
    finally:
        connection.close()


def _sent(log: SqlDeliveryLog, nids) -> int:
    return sum(1 for nid in nids for row in log.for_notification(nid) if row.status == "sent")


def test_broker_sigkill_mid_run_sends_every_delivery_once_and_never_in_parallel(private_broker, tmp_path):
    declare_topology(private_broker.url)
    fake = FakePush()
    fake.delay = 0.3  # sends are in flight when the broker dies
    worker = Worker(private_broker.url, tmp_path, fake, concurrency=16, NOTIFICATION_STALL_CHECK_SECONDS="2")
    log = SqlDeliveryLog(worker.db_url)
    try:
        worker.start()
        payloads = [notification(tokens=(f"tok-{uuid.uuid4().hex[:8]}",)) for _ in range(40)]
        nids = [p["notification_id"] for p in payloads]
        _publish_all(private_broker, payloads)
        wait_for(lambda: len(fake.requests) >= 8, timeout=60, what="pushes in flight")
        private_broker.kill()
        private_broker.restart()
        wait_for(lambda: _sent(log, nids) == 2 * len(nids), timeout=180, what="every e-mail and push sent")
        # after the restart the worker takes new work: it is consuming again
        late = notification(tokens=("tok-after-restart",))
        _publish_all(private_broker, [late])
        wait_for(lambda: _sent(log, [late["notification_id"]]) == 2, timeout=60, what="a new notification sent")

        for payload in payloads:
            token = payload["recipient"]["push_tokens"][0]
            calls = sorted(fake.for_token(token), key=lambda r: r["time"])
            key = delivery_id(payload["notification_id"], "push", token)
            assert {c["headers"]["Idempotency-Key"] for c in calls} == {key}
            # never two copies at the provider at once ...
            for earlier, later in itertools.pairwise(calls):
                assert "end" in earlier and earlier["end"] <= later["time"], f"parallel sends of {key}"
            # ... and one accepted call in all (a lost ack brings the message back, the log says sent)
            assert [c.get("status") for c in calls].count(200) == 1, f"{key} accepted {len(calls)} times"
        for nid in nids:
            assert len(worker.email_for(nid)) == 1
    finally:
        worker.stop()
        log.engine.dispose()
        fake.close()


def test_consumer_reconnects_in_short_steps_while_the_broker_is_away(private_broker, tmp_path):
    declare_topology(private_broker.url)
    worker = Worker(private_broker.url, tmp_path, None, concurrency=4)
    log = SqlDeliveryLog(worker.db_url)
    try:
        worker.start()
        private_broker.kill()
        # the worker notices and starts probing the dead broker
        wait_for(lambda: len(re.findall(r"Trying again in ([\d.]+) seconds", worker.log_text())) >= 4,
                 timeout=60, what="reconnect attempts")
        private_broker.restart()
        payload = notification(tokens=())
        _publish_all(private_broker, [payload])
        wait_for(lambda: _sent(log, [payload["notification_id"]]) == 1, timeout=60, what="sent after the restart")
        waits = [float(w) for w in re.findall(r"Trying again in ([\d.]+) seconds", worker.log_text())]
        # Celery's default steps grow to 30 s: a consumer could sit idle that long with the broker back
        assert waits and max(waits) <= 2.0, waits
    finally:
        worker.stop()
        log.engine.dispose()
