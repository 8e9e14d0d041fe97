"""The suppression list on SQLite and PostgreSQL: a suppressed send is recorded with its receipt and no
provider call, expired entries suppress nothing, and the CLI never shows the address."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import responses

from notification_service import cli
from notification_service.delivery import machine as delivery
from notification_service.delivery.machine import BookingRef, Outcome, SendJob
from notification_service.delivery.migrate import upgrade
from notification_service.delivery.repository import SqlDeliveryLog
from notification_service.delivery.status import DeliveryStatus
from notification_service.errors import AddressGone, PermanentError
from notification_service.providers.chain import ProviderChain
from notification_service.providers.channels import member
from notification_service.providers.content import EmailContent, PushContent
from notification_service.settings import Settings
from notification_service.suppressions.store import Suppressions
from tests.notification.fakes import FakeOwner, FakeProvider

ADA = "ada.lovelace@example.org"
TOKEN = "fcm-token-0123456789abcdef"


def _opened(log: SqlDeliveryLog, channel: str, address: str) -> str:
    nid = str(uuid.uuid4())
    opened = log.open(nid, "booking.confirmed", BookingRef(str(uuid.uuid4()), 1), [(channel, address)],
                      datetime.now(UTC))
    return opened.pending[0][2]


def _send(log, did, content, provider):
    return delivery.send(SendJob(did), content, log=log, provider=provider, owner=FakeOwner("w1"), lease_seconds=60)


def test_a_suppressed_address_is_recorded_suppressed_with_a_receipt_and_no_provider_call(database_url):
    upgrade(database_url)
    log = SqlDeliveryLog(database_url)
    Suppressions(log).add("email", " ADA.Lovelace@example.org", reason="hard bounce", source="bounce",
                          now=datetime.now(UTC))
    did = _opened(log, "email", ADA)
    provider = FakeProvider()
    result = _send(log, did, EmailContent(did, ADA, "s", "t", "h"), provider)
    assert result.outcome is Outcome.SUPPRESSED
    assert provider.calls == []
    assert log.get(did).status == DeliveryStatus.SUPPRESSED.value
    assert [(r.sequence, r.status, r.attempt) for r in log.receipts_of(did)] == [(1, "suppressed", 0)]
    # Another channel's entry for the same text does not suppress e-mail, and other addresses are sent.
    other = _opened(log, "email", "bob@example.org")
    assert _send(log, other, EmailContent(other, "bob@example.org", "s", "t", "h"), provider).outcome is Outcome.SENT
    log.engine.dispose()


def test_an_expired_entry_suppresses_nothing_and_a_removed_one_neither(database_url):
    upgrade(database_url)
    log = SqlDeliveryLog(database_url)
    suppressions = Suppressions(log)
    now = datetime.now(UTC)
    suppressions.add("push", TOKEN, reason="unregistered", source="unregistered", now=now - timedelta(days=2),
                     expires_at=now - timedelta(seconds=1))
    assert not suppressions.is_suppressed("push", TOKEN, now)
    did = _opened(log, "push", TOKEN)
    provider = FakeProvider()
    assert _send(log, did, PushContent(did, TOKEN, "t", "b"), provider).outcome is Outcome.SENT
    suppressions.add("push", TOKEN, reason="unregistered", source="unregistered", now=now)
    assert suppressions.is_suppressed("push", TOKEN, now)
    assert suppressions.remove("push", address=TOKEN) == 1
    assert not suppressions.is_suppressed("push", TOKEN, now)
    log.engine.dispose()


def test_the_cli_adds_lists_and_removes_entries_without_ever_printing_the_address(database_url, monkeypatch,
                                                                                   capsys, caplog):
    upgrade(database_url)
    monkeypatch.setenv("NOTIFICATION_DATABASE_URL", database_url)
    monkeypatch.setattr("sys.stdin", io.StringIO(ADA + "\n"))
    assert cli.main(["suppressions", "add", "--reason", "complaint from the customer", "--expires", "30d"]) == 0
    assert cli.main(["suppressions", "add", "--channel", "push", "--address", TOKEN, "--reason", "dead token"]) == 0
    assert cli.main(["suppressions", "add", "--address", "old@example.org", "--reason", "old",
                     "--expires", "2020-01-01T00:00:00Z"]) == 0
    assert cli.main(["suppressions", "list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    listed = lines[lines.index("channel\thash\tstate\tsource\tcreated_at\texpires_at\treason") + 1:]
    assert sorted((line.split("\t")[0], line.split("\t")[2], line.split("\t")[6]) for line in listed) == [
        ("email", "active", "complaint from the customer"), ("email", "expired", "old"),
        ("push", "active", "dead token")]
    log = SqlDeliveryLog(database_url)
    assert Suppressions(log).is_suppressed("email", ADA, datetime.now(UTC))
    assert not Suppressions(log).is_suppressed("email", "old@example.org", datetime.now(UTC))
    push_hash = next(line.split("\t")[1] for line in listed if line.startswith("push"))
    assert cli.main(["suppressions", "remove", "--channel", "push", "--hash", push_hash]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(ADA + "\n"))
    assert cli.main(["suppressions", "remove"]) == 0
    assert cli.main(["suppressions", "remove", "--address", ADA]) == 1  # already gone
    assert not Suppressions(log).is_suppressed("email", ADA, datetime.now(UTC))
    shown = out + capsys.readouterr().out + caplog.text
    for secret in (ADA, "ada.lovelace", TOKEN, "old@example.org"):
        assert secret not in shown
    log.engine.dispose()


@pytest.fixture
def fcm_chain(database_url):
    """The delivery log and a push chain of one FCM-shaped HTTP provider at http://fcm.test/send."""
    upgrade(database_url)
    log = SqlDeliveryLog(database_url)
    settings = Settings(database_url=database_url, push_backend="http", push_http_url="http://fcm.test/send")
    yield log, ProviderChain("push", [member("push", "http", settings)])
    log.engine.dispose()


@pytest.mark.parametrize("status, body", [
    (404, {"error": {"code": 404, "status": "NOT_FOUND", "details": [{"errorCode": "UNREGISTERED"}]}}),
    (400, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "details": [{"errorCode": "UNREGISTERED"}]}}),
])
def test_fcm_unregistered_records_the_send_bounced_and_suppresses_the_token(fcm_chain, status, body, caplog):
    log, chain = fcm_chain
    did = _opened(log, "push", TOKEN)
    with responses.RequestsMock() as fcm:
        fcm.post("http://fcm.test/send", status=status, json=body)
        # a hard bounce, not a dead letter: nothing to raise, nothing to repair
        assert _send(log, did, PushContent(did, TOKEN, "t", "b"), chain).outcome is Outcome.BOUNCED
        assert len(fcm.calls) == 1
    assert [(r.status, r.reason.startswith("address gone")) for r in log.receipts_of(did)] == [("bounced", True)]
    assert Suppressions(log).is_suppressed("push", TOKEN, datetime.now(UTC))
    assert TOKEN not in (log.receipts_of(did)[0].reason or "")
    later = _opened(log, "push", TOKEN)
    with responses.RequestsMock() as fcm:  # no call registered: any HTTP call would fail the test
        assert _send(log, later, PushContent(later, TOKEN, "t", "b"), chain).outcome is Outcome.SUPPRESSED
    assert [r.status for r in log.receipts_of(later)] == ["suppressed"]
    assert TOKEN not in caplog.text


def test_any_other_400_is_a_permanent_failure_that_suppresses_nothing(fcm_chain):
    log, chain = fcm_chain
    did = _opened(log, "push", TOKEN)
    with responses.RequestsMock() as fcm:
        fcm.post("http://fcm.test/send", status=400, json={"error": {"status": "INVALID_ARGUMENT"}})
        with pytest.raises(PermanentError) as raised:
            _send(log, did, PushContent(did, TOKEN, "t", "b"), chain)
    assert not isinstance(raised.value, AddressGone)
    assert not Suppressions(log).is_suppressed("push", TOKEN, datetime.now(UTC))
