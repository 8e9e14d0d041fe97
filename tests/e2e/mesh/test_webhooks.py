"""End to end over HTTP (issue 18): provider events through the webhook receiver reach the booking's timeline.

One mesh for the module (API, relay, receipts consumer, worker, and ``notification-service webhooks``),
e-mail through the HTTP e-mail provider faked on loopback (its answer is the message id a webhook names),
push through the fake FCM-like provider. Each test uses addresses and tokens of its own, since a bounce
puts an address on the suppression list for every later test.

Only HTTP: POST bookings to the API, POST signed events to the receiver, GET the timeline and the booking.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import requests

from tests.conftest import fresh_postgres, fresh_vhost
from tests.notification.fake_email_api import FakeEmailApi
from tests.support import free_port, wait_for

from .conftest import mesh_env, running_mesh, serving_fake_push
from .test_mesh import iso

SECRET = "e2e18-webhook-secret"
CONFIRMED = "booking.confirmed"


@pytest.fixture(scope="module")
def fake_email():
    fake = FakeEmailApi()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def module_push():
    with serving_fake_push() as fake:
        yield fake


@pytest.fixture(scope="module")
def hooks(tmp_path_factory, amqp_url, management, postgres_admin_url, fake_email, module_push):
    """The mesh with its webhook receiver (``hooks.webhooks_url``), shared by the module's tests."""
    root = tmp_path_factory.mktemp("mesh-webhooks")
    with fresh_vhost(amqp_url, management) as vhost, fresh_postgres(postgres_admin_url) as database:
        env = {**mesh_env(root, vhost, database, module_push.url),
               "EMAIL_BACKEND": "http", "EMAIL_HTTP_URL": fake_email.url, "EMAIL_HTTP_TOKEN": "fake-email-token",
               "NOTIFICATION_WEBHOOK_BIND": f"127.0.0.1:{free_port()}", "NOTIFICATION_WEBHOOK_WORKERS": "1",
               "NOTIFICATION_WEBHOOK_SECRETS": SECRET}
        with running_mesh(root, env, webhooks=True) as m:
            m.webhooks_url = f"http://{env['NOTIFICATION_WEBHOOK_BIND']}/webhooks/email/http"
            yield m


# Helpers ---------------------------------------------------------------------------------------------------------
def book(mesh, email: str, token: str) -> dict:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    response = mesh.post("/v1/bookings", json={
        "resource_id": f"room-{uuid.uuid4().hex[:8]}", "starts_at": iso(start),
        "ends_at": iso(start + timedelta(minutes=60)),
        "customer": {"name": "Ada Lovelace", "email": email, "locale": "en", "timezone": "Europe/Berlin",
                     "push_tokens": [token]},
    })
    assert response.status_code == 201, response.text
    return response.json()


def confirmation(mesh, booking_id: str) -> dict[str, dict]:
    """The deliveries of the booking's confirmation, by channel (from GET …/notifications)."""
    response = mesh.get(f"/v1/bookings/{booking_id}/notifications")
    assert response.status_code == 200, response.text
    (story,) = [n for n in response.json()["notifications"] if n["event"] == CONFIRMED]
    return {d["channel"]: d for d in story["deliveries"]}


def until(mesh, booking_id: str, **statuses: str) -> dict[str, dict]:
    """Wait until the confirmation's timeline shows ``channel=status`` for each given channel."""
    def shown():
        found = confirmation(mesh, booking_id)
        return found if all(found.get(c, {}).get("status") == s for c, s in statuses.items()) else None

    return wait_for(shown, 90, f"the confirmation showing {statuses} for booking {booking_id}")


def history(delivery: dict) -> list[str]:
    return [h["status"] for h in delivery["history"]]


def issues(mesh, booking_id: str) -> list[str]:
    response = mesh.get(f"/v1/bookings/{booking_id}")
    assert response.status_code == 200, response.text
    return response.json()["contact_issues"]


def signed(doc: dict, secret: str | None = SECRET) -> tuple[bytes, dict[str, str]]:
    """The generic format's body and headers: HMAC-SHA256 of ``timestamp + "." + body`` (none if no secret)."""
    body = json.dumps(doc).encode()
    stamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "X-Webhook-Timestamp": stamp}
    if secret is not None:
        digest = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        headers["X-Signature"] = f"sha256={digest}"
    return body, headers


def event(message_id: str, kind: str, event_id: str | None = None, **extra: str) -> dict:
    return {"id": event_id or uuid.uuid4().hex, "type": kind, "message_id": message_id,
            "occurred_at": iso(datetime.now(UTC)), **extra}


def post(mesh, body: bytes, headers: dict[str, str]) -> requests.Response:
    return requests.post(mesh.webhooks_url, data=body, headers=headers, timeout=10)


def deliver(mesh, doc: dict) -> str:
    """POST one signed event; its answer's ``status`` (applied, unchanged, duplicate)."""
    answer = post(mesh, *signed(doc))
    assert answer.status_code == 200, answer.text
    return answer.json()["status"]


def sent_email(mesh, fake_email, address: str) -> tuple[dict, str]:
    """Book for ``address``; wait for its confirmation e-mail sent; the booking and the provider's message id."""
    booking = book(mesh, address, f"device-{uuid.uuid4().hex[:8]}")
    email = until(mesh, booking["id"], email="sent")["email"]
    message_id = email["provider_message_id"]
    assert message_id == f"api-{email['delivery_id']}"  # what the fake API answered for that delivery
    assert fake_email.taken[email["delivery_id"]] == 1  # taken once, under the delivery id as its key
    return booking, message_id


def calls_to(fake_email, address: str) -> int:
    with fake_email.lock:
        return sum(1 for call in fake_email.calls if address in str(call["to"]))


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}@example.org"


# Tests -----------------------------------------------------------------------------------------------------------
def test_a_delivered_event_shows_sent_then_delivered(hooks, fake_email):
    booking, message_id = sent_email(hooks, fake_email, unique("delivered"))

    assert deliver(hooks, event(message_id, "delivered")) == "applied"

    email = until(hooks, booking["id"], email="delivered")["email"]
    assert history(email) == ["sent", "delivered"]
    assert issues(hooks, booking["id"]) == []


def test_a_hard_bounce_shows_bounced_the_contact_issue_and_suppresses_the_next_booking(hooks, fake_email):
    address = unique("bounce")
    booking, message_id = sent_email(hooks, fake_email, address)

    assert deliver(hooks, event(message_id, "bounced", bounce="hard")) == "applied"

    email = until(hooks, booking["id"], email="bounced")["email"]
    assert history(email) == ["sent", "bounced"]
    assert issues(hooks, booking["id"]) == ["email_bounced"]
    assert calls_to(fake_email, address) == 1

    later = book(hooks, address, f"device-{uuid.uuid4().hex[:8]}")
    suppressed = until(hooks, later["id"], email="suppressed", push="sent")["email"]  # both final: no more calls
    assert history(suppressed) == ["suppressed"] and suppressed["attempts"] == 0
    assert calls_to(fake_email, address) == 1  # no provider call for the suppressed address
    assert issues(hooks, later["id"]) == ["email_suppressed"]


def test_fcm_unregistered_on_send_bounces_and_suppresses_the_token(hooks, module_push):
    token = f"device-gone-{uuid.uuid4().hex[:8]}"
    module_push.gone.add(token)
    booking = book(hooks, unique("push"), token)

    push = until(hooks, booking["id"], push="bounced")["push"]
    assert push["reason"].startswith("address gone: push_http provider answered 404")
    assert issues(hooks, booking["id"]) == ["push_token_unregistered"]
    calls = [c for c in module_push.calls if c["json"]["message"]["token"] == token]
    assert len(calls) == 1

    later = book(hooks, unique("push-later"), token)
    assert history(until(hooks, later["id"], push="suppressed", email="sent")["push"]) == ["suppressed"]
    assert [c for c in module_push.calls if c["json"]["message"]["token"] == token] == calls  # not called again
    assert issues(hooks, later["id"]) == ["push_token_suppressed"]


def test_duplicated_replayed_and_reordered_events_give_the_same_timeline(hooks, fake_email):
    once, once_id = sent_email(hooks, fake_email, unique("once"))
    twice, twice_id = sent_email(hooks, fake_email, unique("twice"))
    reordered, reordered_id = sent_email(hooks, fake_email, unique("reordered"))

    # Each event once, in order.
    assert deliver(hooks, event(once_id, "delivered")) == "applied"
    assert deliver(hooks, event(once_id, "bounced", bounce="hard")) == "applied"
    # The same events, each duplicated (the provider retried) and replayed byte for byte (a captured request).
    delivered, bounced = event(twice_id, "delivered"), event(twice_id, "bounced", bounce="hard")
    assert deliver(hooks, delivered) == "applied"
    assert deliver(hooks, delivered) == "duplicate"
    captured = signed(bounced)
    assert post(hooks, *captured).json() == {"status": "applied"}
    assert post(hooks, *captured).json() == {"status": "duplicate"}
    assert deliver(hooks, delivered) == "duplicate"
    # Reordered: the bounce first; the late delivery moves nothing back.
    assert deliver(hooks, event(reordered_id, "bounced", bounce="hard")) == "applied"
    assert deliver(hooks, event(reordered_id, "delivered")) == "unchanged"

    first = until(hooks, once["id"], email="bounced")["email"]
    second = until(hooks, twice["id"], email="bounced")["email"]
    third = until(hooks, reordered["id"], email="bounced")["email"]
    assert history(first) == history(second) == ["sent", "delivered", "bounced"]
    assert history(third) == ["sent", "bounced"]  # the changes as applied: the delivery never went back
    for booking in (once, twice, reordered):
        assert issues(hooks, booking["id"]) == ["email_bounced"]


def test_an_unsigned_or_badly_signed_event_is_refused_and_nothing_is_stored(hooks, fake_email):
    booking, message_id = sent_email(hooks, fake_email, unique("forged"))
    forged = event(message_id, "bounced", event_id=f"evt-{uuid.uuid4().hex}", bounce="hard")

    body, headers = signed(forged)
    tampered = body.replace(b'"hard"', b'"soft"')
    for answer in (post(hooks, *signed(forged, secret=None)),  # unsigned
                   post(hooks, *signed(forged, secret="not-the-secret")),  # another key
                   post(hooks, tampered, headers),  # a signature of another body
                   post(hooks, body, {**headers, "X-Signature": "sha256=" + "0" * 64})):
        assert answer.status_code == 401, answer.text
        assert set(answer.json()) == {"error", "message"}

    # None of them was stored: the same event id, now signed, is new, and only its change shows.
    assert deliver(hooks, {**event(message_id, "delivered"), "id": forged["id"]}) == "applied"
    email = until(hooks, booking["id"], email="delivered")["email"]
    assert history(email) == ["sent", "delivered"]
    assert issues(hooks, booking["id"]) == []
