"""Delivery receipts: written with each status change (SQLite and PostgreSQL), published with confirms
to ``notifications.receipts`` by every worker, never lost while the broker is away, never carrying an address."""

from __future__ import annotations

import json
import types
import uuid
from datetime import UTC, datetime, timedelta

import pika

import shared
from notification_service.delivery.machine import BookingRef, ClaimResult, delivery_id
from notification_service.delivery.migrate import upgrade
from notification_service.delivery.repository import SqlDeliveryLog
from notification_service.delivery.status import DeliveryStatus
from notification_service.receipts.outbox import ReceiptOutbox
from notification_service.receipts.publisher import ReceiptPublisher
from tests.integration.booking.test_relay import CuttableProxy, _target, proxied_url
from tests.notification.harness import declare_topology
from tests.support import wait_for

NOW = datetime.now(UTC).replace(microsecond=0)
LEASE = NOW + timedelta(seconds=60)
EMAIL = "ada.lovelace@example.org"
TOKEN = "fcm-token-SECRET-0042"


def receipts_of(log, did) -> list[tuple]:
    return [(r.sequence, r.status, r.attempt) for r in log.receipts_of(did)]


# --- the delivery log writes them -----------------------------------------------------------


def test_every_status_change_writes_one_gapless_receipt_in_its_transaction(database_url):
    upgrade(database_url)
    log = SqlDeliveryLog(database_url)
    nid, bid = str(uuid.uuid4()), str(uuid.uuid4())
    log.open(nid, "booking.confirmed", BookingRef(bid, 1), [("email", EMAIL), ("push", TOKEN)], NOW, "req-1")
    mail, push = delivery_id(nid, "email", EMAIL), delivery_id(nid, "push", TOKEN)
    assert receipts_of(log, mail) == []  # pending is no reported status: dispatch stays one INSERT per delivery

    assert log.claim(mail, "w1", NOW, LEASE).result is ClaimResult.CLAIMED
    assert log.finish(mail, "w1", 1, DeliveryStatus.FAILED, NOW, error="email provider answered 503")
    assert log.claim(mail, "w1", NOW, LEASE).attempt == 2
    assert log.finish(mail, "w1", 2, DeliveryStatus.SENT, NOW, provider_message_id="m-1")
    assert not log.finish(mail, "w1", 2, DeliveryStatus.FAILED, NOW, error="late")  # no change, no receipt
    assert receipts_of(log, mail) == [(1, "retrying", 1), (2, "sent", 2)]
    assert [r.reason for r in log.receipts_of(mail)] == ["email provider answered 503", None]
    assert log.receipts_of(mail)[1].provider_message_id == "m-1"

    # A permanent failure is dead once: the give-up after it adds no second receipt.
    assert log.claim(push, "w1", NOW, LEASE).result is ClaimResult.CLAIMED
    assert log.finish(push, "w1", 1, DeliveryStatus.DEAD, NOW, error="permanent: push provider answered 400")
    log.give_up(message_id=push, queue="q", task="t", reason="permanent: push provider answered 400", delivery_id=push)
    assert receipts_of(log, push) == [(1, "dead", 1)]
    row = log.get(mail)
    assert (row.receipt_seq, row.correlation_id) == (2, "req-1")
    log.engine.dispose()


def test_exhausted_retries_expired_and_stale_deliveries_report_themselves(database_url):
    upgrade(database_url)
    log = SqlDeliveryLog(database_url)
    bid = str(uuid.uuid4())
    tired, late, old = (str(uuid.uuid4()) for _ in range(3))
    for nid in (tired, late, old):
        log.open(nid, "booking.confirmed", BookingRef(bid, 1), [("email", EMAIL)], NOW)
    tired_d, late_d, old_d = (delivery_id(n, "email", EMAIL) for n in (tired, late, old))

    log.claim(tired_d, "w1", NOW, LEASE)
    log.finish(tired_d, "w1", 1, DeliveryStatus.FAILED, NOW, error="timeout")
    log.give_up(message_id=tired_d, queue="q", task="t", reason="retries exhausted after 1 attempts: timeout",
                delivery_id=tired_d)
    assert receipts_of(log, tired_d) == [(1, "retrying", 1), (2, "dead", 1)]

    assert log.drop(late_d, DeliveryStatus.EXPIRED, "expired before it was sent", NOW)
    assert receipts_of(log, late_d) == [(1, "expired", 0)]

    # A cancellation (v2) is processed: the pending v1 delivery turns stale at its next claim,
    # and a v1 notification dispatched only now is stale from the start.
    log.open(str(uuid.uuid4()), "booking.cancelled", BookingRef(bid, 2, cancelled=True), [("email", EMAIL)], NOW)
    assert log.claim(old_d, "w1", NOW, LEASE).result is ClaimResult.STALE
    assert receipts_of(log, old_d) == [(1, "stale", 0)]
    newcomer = str(uuid.uuid4())
    assert log.open(newcomer, "booking.confirmed", BookingRef(bid, 1), [("email", EMAIL)], NOW).stale
    assert receipts_of(log, delivery_id(newcomer, "email", EMAIL)) == [(1, "stale", 0)]
    log.engine.dispose()


def test_a_claimed_receipt_is_leased_so_a_second_publisher_gets_nothing(database_url):
    upgrade(database_url)
    log = SqlDeliveryLog(database_url)
    nid = str(uuid.uuid4())
    log.open(nid, "booking.confirmed", BookingRef(str(uuid.uuid4()), 1), [("email", EMAIL)], NOW)
    log.drop(delivery_id(nid, "email", EMAIL), DeliveryStatus.EXPIRED, "expired", NOW)
    first, second = ReceiptOutbox(log), ReceiptOutbox(log)
    assert [r.status for r in first.claim("p1", 10)] == ["expired"]
    assert second.claim("p2", 10) == []
    assert second.claim("p2", 10, now=datetime.now(UTC) + timedelta(minutes=5))  # p1's lease ran out
    log.engine.dispose()


# --- building a receipt ---------------------------------------------------------------------


def joined_row(**overrides):
    row = dict(id=1, delivery_id=str(uuid.uuid4()), sequence=3, status="dead", attempt=2,
               reason=f"permanent: push provider answered 400: unknown token {TOKEN} "
                      f"(owner {EMAIL}, cc bob@example.com)",
               provider_message_id=None, occurred_at="2030-05-01 12:00:00.000000", notification_id=str(uuid.uuid4()),
               channel="push", address=TOKEN, booking_id=str(uuid.uuid4()), booking_version=2,
               event="booking.confirmed", correlation_id="req-7", provider=None)
    row.update(overrides)
    return types.SimpleNamespace(**row)


# --- publishing -----------------------------------------------------------------------------


def bind_test_queue(url: str) -> tuple[pika.BlockingConnection, str]:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, shared.RECEIPTS_EXCHANGE, "#")
    return connection, queue


def drain(connection, queue: str, into: list) -> list:
    channel = connection.channel()
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            channel.close()
            return into
        into.append((properties, json.loads(body)))


def test_a_database_error_holds_receipts_back_but_never_stops_the_publisher(database_url, vhost_url):
    """The outbox table unreadable for a while (here: renamed away): the publisher counts database failures,
    keeps its thread, and publishes what was written once the table is back."""
    upgrade(database_url)
    declare_topology(vhost_url)
    log = SqlDeliveryLog(database_url)
    connection, queue = bind_test_queue(vhost_url)
    publisher = ReceiptPublisher(log, vhost_url, "test-owner", poll_seconds=0.1, max_backoff=0.2).start()
    seen: list = []
    try:
        with log.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE receipts RENAME TO receipts_away")
        before = publisher.failures
        wait_for(lambda: publisher.failures >= before + 2, 20, "the publisher to meet the missing table")
        assert publisher.thread.is_alive()
        with log.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE receipts_away RENAME TO receipts")
        nid = str(uuid.uuid4())
        log.open(nid, "booking.confirmed", BookingRef(str(uuid.uuid4()), 1), [("email", EMAIL)], NOW, "req-db")
        log.drop(delivery_id(nid, "email", EMAIL), DeliveryStatus.EXPIRED, "expired before it was sent", NOW)
        wait_for(lambda: drain(connection, queue, seen), 20, "the receipt once the table was back")
        assert publisher.thread.is_alive()
    finally:
        publisher.stop()
        connection.close()
        log.engine.dispose()
    assert [m["notification_id"] for _p, m in seen] == [nid]


def test_receipts_written_while_the_broker_is_away_go_out_by_themselves(database_url, vhost_url):
    upgrade(database_url)
    declare_topology(vhost_url)
    log = SqlDeliveryLog(database_url)
    connection, queue = bind_test_queue(vhost_url)
    proxy = CuttableProxy(*_target(vhost_url))  # down: refuses every connection
    publisher = ReceiptPublisher(log, proxied_url(vhost_url, proxy), "test-owner", poll_seconds=0.1,
                                 max_backoff=0.5).start()
    seen: list = []
    try:
        nids = [str(uuid.uuid4()) for _ in range(3)]
        for nid in nids:
            log.open(nid, "booking.confirmed", BookingRef(str(uuid.uuid4()), 1), [("email", EMAIL)], NOW, "req-x")
            log.drop(delivery_id(nid, "email", EMAIL), DeliveryStatus.EXPIRED, "expired before it was sent", NOW)
        wait_for(lambda: publisher.failures >= 2, 20, "the publisher to find the broker away")
        assert ReceiptOutbox(log).backlog() == 3 and drain(connection, queue, seen) == []
        proxy.restore()
        wait_for(lambda: len(drain(connection, queue, seen)) >= 3, 20, "the receipts after the broker returned")
        wait_for(lambda: ReceiptOutbox(log).backlog() == 0, 20, "the rows marked published")
    finally:
        publisher.stop()
        proxy.close()
        connection.close()
        log.engine.dispose()
    assert sorted(m["notification_id"] for _p, m in seen) == sorted(nids)
    properties, message = seen[0]
    assert properties.content_type == "application/json" and properties.delivery_mode == 2
    assert properties.message_id == f"{message['delivery_id']}:1" and properties.headers["x-correlation-id"] == "req-x"
    assert message["status"] == "expired" and message["recipient"] == "a***@example.org"


# --- from a real worker ---------------------------------------------------------------------


def test_an_unroutable_receipt_waits_and_one_that_breaks_the_contract_never_blocks_the_rest(database_url, vhost_url):
    upgrade(database_url)
    log = SqlDeliveryLog(database_url)
    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    channel = connection.channel()
    channel.exchange_declare(shared.RECEIPTS_EXCHANGE, "topic", durable=True)  # the exchange, no queue bound
    outbox = ReceiptOutbox(log)
    try:
        broken, fine = str(uuid.uuid4()), str(uuid.uuid4())
        log.open(broken, "booking.confirmed", BookingRef("not-a-uuid", 1), [("email", EMAIL)], NOW)
        log.open(fine, "booking.confirmed", BookingRef(str(uuid.uuid4()), 1), [("email", EMAIL)], NOW)
        for nid in (broken, fine):
            log.drop(delivery_id(nid, "email", EMAIL), DeliveryStatus.EXPIRED, "expired", NOW)
        publisher = ReceiptPublisher(log, vhost_url, "test-owner")
        publisher._connect()
        assert publisher.publish_batch() == 0
        (bad,) = log.receipts_of(delivery_id(broken, "email", EMAIL))
        assert bad.published_at is not None and "breaks the contract" in bad.last_error  # closed, logged
        (refused,) = log.receipts_of(delivery_id(fine, "email", EMAIL))
        assert refused.published_at is None and "refused" in refused.last_error
        assert outbox.claim("other", 10) == []  # held back for a while, not retried in a loop
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, shared.RECEIPTS_EXCHANGE, "#")
        assert [r.status for r in outbox.claim("other", 10, now=datetime.now(UTC) + timedelta(minutes=1))] \
            == ["expired"]  # after the delay it is due again
        publisher._disconnect()
    finally:
        connection.close()
        log.engine.dispose()
