"""The webhook receiver (Flask test client) on SQLite and PostgreSQL: signatures, once-only storage,
ordering, unknown messages, and a hard bounce that suppresses the next send."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from notification_service.delivery import machine as delivery
from notification_service.delivery.log import delivery_log
from notification_service.delivery.machine import BookingRef, Outcome, SendJob
from notification_service.delivery.migrate import upgrade
from notification_service.delivery.tables import provider_events
from notification_service.providers.content import EmailContent
from notification_service.runtime import metrics
from notification_service.settings import Settings
from notification_service.suppressions.store import Suppressions
from notification_service.webhooks.app import create_app
from tests.notification.fakes import FakeOwner, FakeProvider

ADA = "ada.lovelace@example.org"
SECRET, OLD_SECRET, MAILGUN_KEY = "s3cret-new", "s3cret-old", "mailgun-key"


@pytest.fixture
def receiver(database_url):
    upgrade(database_url)
    settings = Settings(database_url=database_url, webhook_secrets=f"{SECRET},{OLD_SECRET}",
                        mailgun_signing_keys=MAILGUN_KEY, webhook_max_body_bytes=4096)
    app = create_app(settings)
    yield app.test_client(), delivery_log(database_url)


def sent(log, address=ADA, message_id="<m1@bookings.example.org>", provider=None):
    """A delivery sent through the state machine: the provider answered ``message_id``."""
    opened = log.open(str(uuid.uuid4()), "booking.confirmed", BookingRef(str(uuid.uuid4()), 1),
                      [("email", address)], datetime.now(UTC))
    did = opened.pending[0][2]
    provider = provider or FakeProvider(message_id, name="email_http")
    result = delivery.send(SendJob(did), EmailContent(did, address, "s", "t", "h"), log=log, provider=provider,
                           owner=FakeOwner("w1"), lease_seconds=60)
    return did, result


def generic(client, event: dict, secret=SECRET, timestamp=None, signature=None, headers=None):
    body = json.dumps(event).encode()
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    sent_headers = {"X-Webhook-Timestamp": stamp, "X-Signature": signature or f"sha256={digest}",
                    "Content-Type": "application/json", **(headers or {})}
    return client.post("/webhooks/email/http", data=body, headers={k: v for k, v in sent_headers.items() if v})


def event(kind, message_id="<m1@bookings.example.org>", eid=None, bounce=None):
    doc = {"id": eid or str(uuid.uuid4()), "type": kind, "message_id": message_id,
           "occurred_at": datetime.now(UTC).isoformat()}
    if bounce:
        doc["bounce"] = bounce
    return doc


def mailgun(client, event_data: dict, key=MAILGUN_KEY):
    stamp, token = str(int(time.time())), uuid.uuid4().hex
    signature = hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    body = {"signature": {"timestamp": stamp, "token": token, "signature": signature}, "event-data": event_data}
    return client.post("/webhooks/email/mailgun", json=body)


def statuses(log, did):
    return [r.status for r in log.receipts_of(did)]


def stored(log) -> int:
    with log.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(provider_events)).scalar_one()


def test_delivered_then_a_duplicate_then_a_hard_bounce_that_suppresses_the_next_send(receiver, caplog):
    client, log = receiver
    did, _ = sent(log)
    delivered = event("delivered")
    answer = generic(client, delivered)
    assert (answer.status_code, answer.json) == (200, {"status": "applied"})
    assert generic(client, delivered).json == {"status": "duplicate"}  # the same event id again
    assert statuses(log, did) == ["sent", "delivered"]
    assert generic(client, event("bounced", bounce="hard")).json == {"status": "applied"}
    assert statuses(log, did) == ["sent", "delivered", "bounced"]
    assert [r.sequence for r in log.receipts_of(did)] == [1, 2, 3]
    assert Suppressions(log).is_suppressed("email", ADA, datetime.now(UTC))
    provider = FakeProvider("<m2@x>", name="email_http")
    next_did, result = sent(log, provider=provider)
    assert result.outcome is Outcome.SUPPRESSED and provider.calls == []
    assert statuses(log, next_did) == ["suppressed"]
    assert ADA not in caplog.text and "ada.lovelace" not in caplog.text


def test_reordered_and_replayed_events_end_in_the_same_state(receiver):
    client, log = receiver
    bounced, delivered = event("bounced", bounce="hard", eid="b1"), event("delivered", eid="d1")
    first, _ = sent(log, message_id="<m1@x>")
    for doc in (dict(bounced, message_id="<m1@x>"), dict(delivered, message_id="<m1@x>")):
        generic(client, doc)
    second, _ = sent(log, address="bob@example.org", message_id="m2@x")  # stored without <>: matched anyway
    answers = [generic(client, dict(doc, id=doc["id"] + "-2", message_id="<m2@x>")).json["status"]
               for doc in (delivered, bounced, delivered, bounced)]
    assert answers == ["applied", "applied", "duplicate", "duplicate"]
    assert statuses(log, first)[-1] == statuses(log, second)[-1] == "bounced"
    assert log.get(first).status == log.get(second).status == "bounced"
    # A delivered after the bounce (a new event id) changes nothing either.
    assert generic(client, event("delivered", message_id="<m1@x>")).json == {"status": "unchanged"}
    assert statuses(log, first) == ["sent", "bounced"]


@pytest.mark.parametrize("how", ["missing", "bad", "unknown-secret", "stale", "no-timestamp"])
def test_an_unsigned_or_badly_signed_webhook_is_refused_401_and_nothing_is_stored(receiver, how):
    client, log = receiver
    did, _ = sent(log)
    kwargs = {"missing": {"signature": "", "headers": {"X-Signature": ""}},
              "bad": {"signature": "sha256=" + "0" * 64},
              "unknown-secret": {"secret": "not-the-secret"},
              "stale": {"timestamp": int(time.time()) - 3600},
              "no-timestamp": {"headers": {"X-Webhook-Timestamp": ""}}}[how]
    answer = generic(client, event("bounced", bounce="hard"), **kwargs)
    assert answer.status_code == 401 and answer.json["error"] == "unauthorized"
    assert stored(log) == 0 and statuses(log, did) == ["sent"]
    assert not Suppressions(log).is_suppressed("email", ADA, datetime.now(UTC))


def test_both_secrets_of_a_rotation_are_accepted(receiver):
    client, log = receiver
    sent(log)
    assert generic(client, event("delivered"), secret=OLD_SECRET).status_code == 200
    assert generic(client, event("complained"), secret=SECRET).json == {"status": "applied"}


def test_an_event_of_an_unknown_message_is_stored_counted_and_answered_202(receiver):
    client, log = receiver
    before = metrics.WEBHOOK_EVENTS.labels("email_http", "unmatched")._value.get()
    answer = generic(client, event("delivered", message_id="<nobody@x>"))
    assert (answer.status_code, answer.json) == (202, {"status": "unmatched"})
    assert stored(log) == 1
    assert metrics.WEBHOOK_EVENTS.labels("email_http", "unmatched")._value.get() == before + 1


def test_mailgun_events_signed_with_the_signing_key(receiver):
    client, log = receiver
    did, _ = sent(log, message_id="20300501120000.1@mg.example.org")
    now = time.time()
    msg = {"headers": {"message-id": "20300501120000.1@mg.example.org"}}
    assert mailgun(client, {"id": "mg1", "event": "delivered", "timestamp": now, "message": msg}).json == {
        "status": "applied"}
    soft = {"id": "mg2", "event": "failed", "severity": "temporary", "timestamp": now, "message": msg}
    assert mailgun(client, soft).json == {"status": "unchanged"}
    assert mailgun(client, {"id": "mg3", "event": "opened", "timestamp": now, "message": msg}).json == {
        "status": "ignored"}
    hard = {"id": "mg4", "event": "failed", "severity": "permanent", "timestamp": now, "message": msg}
    assert mailgun(client, hard, key="wrong").status_code == 401
    assert statuses(log, did) == ["sent", "delivered"]
    assert mailgun(client, hard).json == {"status": "applied"}
    assert statuses(log, did) == ["sent", "delivered", "bounced"]
    assert Suppressions(log).is_suppressed("email", ADA, datetime.now(UTC))


def test_oversized_malformed_and_invalid_bodies_are_4xx_json_and_store_nothing(receiver):
    client, log = receiver
    big = event("delivered")
    big["padding"] = "x" * 5000
    assert generic(client, big).status_code == 413
    stamp = str(int(time.time()))
    for raw, status in ((b"{not json", 400), (b"\xff\xfe", 400), (b"[" * 2000 + b"]" * 2000, 400),
                        (b'{"id": NaN}', 400), (b"[]", 422), (b'{"id": "x", "type": "opened"}', 422)):
        digest = hmac.new(SECRET.encode(), stamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
        answer = client.post("/webhooks/email/http", data=raw, headers={
            "X-Webhook-Timestamp": stamp, "X-Signature": f"sha256={digest}", "Content-Type": "application/json"})
        assert answer.status_code == status, raw[:20]
        assert "error" in answer.json
    assert generic(client, event("bounced")).status_code == 422  # a bounce without its kind
    assert client.post("/webhooks/email/mailgun", data=b"\x00").status_code == 400
    assert stored(log) == 0
