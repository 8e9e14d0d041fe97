"""Failover and breakers on the real delivery log (SQLite and PostgreSQL), HTTP and SMTP fakes on loopback.

The e-mail chain is ``http,smtp``: the HTTP API is the primary (refusing, answering 503,
or hanging), a local SMTP server the secondary. Duplicates are counted per delivery id
across both: what the API took (it honours Idempotency-Key) plus the SMTP server's
messages with that id as Message-ID.
"""

from __future__ import annotations

import collections
import uuid
from datetime import UTC, datetime

import pytest

from notification_service.delivery import machine as delivery
from notification_service.delivery.breakers import SqlBreakerState
from notification_service.delivery.machine import BookingRef, SendJob
from notification_service.delivery.migrate import upgrade
from notification_service.delivery.repository import SqlDeliveryLog
from notification_service.errors import MaybeAccepted
from notification_service.providers import EmailContent
from notification_service.providers.breaker import BreakerState, CircuitBreaker
from notification_service.providers.channels import email_provider
from notification_service.settings import Settings
from tests.notification.fake_email_api import FakeEmailApi
from tests.notification.fake_smtp import message_ids
from tests.notification.fakes import FakeOwner
from tests.support import free_port


@pytest.fixture
def api():
    fake = FakeEmailApi()
    yield fake
    fake.close()


@pytest.fixture
def store(database_url):
    upgrade(database_url)
    log = SqlDeliveryLog(database_url)
    yield log
    log.engine.dispose()


def _settings(store: SqlDeliveryLog, smtp, url: str, **extra) -> Settings:
    values = dict(database_url=store.engine.url.render_as_string(hide_password=False), email_providers="http,smtp",
                  email_http_url=url, smtp_host="127.0.0.1", smtp_port=smtp.server_address[1], smtp_timeout=5,
                  http_timeout=5)
    return Settings(**{**values, **extra})


def _deliveries(store: SqlDeliveryLog, count: int) -> list[str]:
    dids = []
    for _ in range(count):
        nid = str(uuid.uuid4())
        opened = store.open(nid, "booking.confirmed", BookingRef(str(uuid.uuid4()), 1),
                            [("email", f"guest-{nid[:8]}@example.org")], datetime.now(UTC))
        dids.append(opened.pending[0][2])
    return dids


def _send(store: SqlDeliveryLog, settings: Settings, did: str):
    row = store.get(did)
    content = EmailContent(delivery_id=did, to=row.address, subject="S", text="t", html="<p>h</p>")
    return delivery.send(SendJob(did), content, log=store, provider=email_provider(settings),
                         owner=FakeOwner(f"w-{uuid.uuid4().hex[:6]}"), lease_seconds=settings.lease_seconds)


def _effects(api: FakeEmailApi | None, smtp) -> collections.Counter:
    """Messages in effect per delivery id, across both providers."""
    counted = collections.Counter(mid.strip("<>").partition("@")[0] for mid in message_ids(smtp))
    if api is not None:
        counted.update(api.taken)
    return counted


def _assert_sent_by(store: SqlDeliveryLog, dids: list[str], provider: str) -> None:
    for did in dids:
        row = store.get(did)
        assert (row.status, row.provider) == ("sent", provider)
        sent = [r for r in store.receipts_of(did) if r.status == "sent"]
        assert [r.provider for r in sent] == [provider]


def test_a_primary_refusing_connections_sends_everything_through_the_secondary(store, smtp):
    settings = _settings(store, smtp, f"http://127.0.0.1:{free_port()}/send")
    dids = _deliveries(store, 8)
    for did in dids:
        assert _send(store, settings, did).outcome is delivery.Outcome.SENT
    _assert_sent_by(store, dids, "email_smtp")
    assert _effects(None, smtp) == dict.fromkeys(dids, 1)


def test_a_primary_answering_503_fails_over_and_once_its_breaker_opened_it_is_not_called(store, smtp, api):
    api.mode = "503"
    settings = _settings(store, smtp, api.url, breaker_failures=3, breaker_open_seconds=300)
    dids = _deliveries(store, 10)
    for did in dids:
        assert _send(store, settings, did).provider == "email_smtp"
    assert len(api.calls) == 3  # until its breaker opened; then skipped without a call
    _assert_sent_by(store, dids, "email_smtp")
    assert _effects(api, smtp) == dict.fromkeys(dids, 1)
    shared = SqlBreakerState(store, probe_timeout=60).read("email_http")
    assert shared is not None and shared.state == "open"


def test_a_primary_that_hangs_is_not_failed_over_and_the_retry_goes_back_with_the_same_key(store, smtp, api):
    api.mode, api.hang_seconds = "hang", 3.0
    settings = _settings(store, smtp, api.url, http_timeout=0.5)
    [did] = _deliveries(store, 1)
    with pytest.raises(MaybeAccepted):
        _send(store, settings, did)
    row = store.get(did)
    assert (row.status, row.provider) == ("failed", "email_http")
    assert message_ids(smtp) == []  # not failed over: the API may have it (it has)
    api.mode = "ok"
    assert _send(store, settings, did).provider == "email_http"
    assert api.keys() == [did, did]
    _assert_sent_by(store, [did], "email_http")
    assert _effects(api, smtp) == {did: 1}


def test_worker_processes_share_a_breaker_and_send_one_probe_between_them(store):
    shared = SqlBreakerState(store, probe_timeout=60)
    clock = [1_000_000.0]
    first, second = (CircuitBreaker("email_http", failures=2, open_seconds=30, clock=lambda: clock[0], shared=shared)
                     for _ in range(2))
    first.failure()
    first.failure()
    clock[0] += 1
    assert not second.allow() and second.refusing_until() == first.open_until
    clock[0] += 30
    assert [first.allow(), second.allow()].count(True) == 1
    prober = first if first.state is BreakerState.HALF_OPEN else second
    prober.success()
    clock[0] += 1
    assert first.allow() and second.allow()
    assert shared.read("email_http").state == "closed"
