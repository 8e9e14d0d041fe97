"""Failover: which errors pass a message to the next provider, pinning, breakers in the chain, the state machine."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from notification_service.delivery import machine as delivery
from notification_service.delivery.machine import BookingRef, SendJob
from notification_service.delivery.status import DeliveryStatus
from notification_service.errors import (
    ChannelUnavailable,
    MaybeAccepted,
    NotAccepted,
    PermanentError,
    TransientError,
)
from notification_service.providers import EmailContent, HttpEmailProvider, SmtpEmailProvider
from notification_service.providers.breaker import CircuitBreaker
from notification_service.providers.chain import Accepted, Member, ProviderChain
from notification_service.runtime import metrics
from notification_service.settings import ConfigError, Settings
from tests.notification.fake_email_api import FakeEmailApi
from tests.notification.fake_smtp import message_ids, serve_smtp
from tests.notification.fakes import FakeDeliveryLog, FakeOwner, FakeProvider
from tests.support import free_port

MAIL = EmailContent(delivery_id="d-1", to="ada@example.org", subject="S", text="t", html="<p>h</p>")


class Scripted:
    """One provider answering from a script (a str: taken with that id; an exception: raised)."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.calls = 0

    def send(self, content) -> str:
        self.calls += 1
        answer = self.answers.pop(0) if self.answers else "id"
        if isinstance(answer, BaseException):
            raise answer
        return answer


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _chain(*providers, failures: int = 5, clock=None) -> ProviderChain:
    clock = clock or Clock()
    return ProviderChain("email", [Member(f"email_{i}", provider, CircuitBreaker(f"u-{id(provider)}",
                                                                                  failures=failures, clock=clock))
                                   for i, provider in enumerate(providers)])


def test_not_accepted_fails_over_to_the_next_provider_at_once():
    first, second = Scripted(NotAccepted("refused")), Scripted("m-2")
    before = metrics.FAILOVERS.labels("email", "email_0", "email_1")._value.get()
    assert _chain(first, second).send(MAIL) == Accepted("email_1", "m-2")
    assert (first.calls, second.calls) == (1, 1)
    assert metrics.FAILOVERS.labels("email", "email_0", "email_1")._value.get() == before + 1


def test_maybe_accepted_is_never_failed_over_and_names_its_provider():
    first, second = Scripted(MaybeAccepted("read timeout")), Scripted("m-2")
    with pytest.raises(MaybeAccepted) as raised:
        _chain(first, second).send(MAIL)
    assert raised.value.provider == "email_0" and second.calls == 0


def test_an_unclassified_transient_error_is_treated_as_maybe_accepted():
    first, second = Scripted(TransientError("something")), Scripted("m-2")
    with pytest.raises(MaybeAccepted) as raised:
        _chain(first, second).send(MAIL)
    assert raised.value.provider == "email_0" and second.calls == 0


def test_a_permanent_error_is_not_failed_over():
    first, second = Scripted(PermanentError("invalid address")), Scripted("m-2")
    with pytest.raises(PermanentError):
        _chain(first, second).send(MAIL)
    assert second.calls == 0


def test_a_pinned_send_goes_to_that_provider_alone():
    first, second = Scripted("m-1"), Scripted(NotAccepted("503"))
    with pytest.raises(NotAccepted):
        _chain(first, second).send(MAIL, pinned="email_1")
    assert first.calls == 0
    assert _chain(first, Scripted("m-2")).send(MAIL, pinned="email_1") == Accepted("email_1", "m-2")


def test_when_none_takes_it_the_last_error_is_raised_with_the_smallest_retry_after():
    first, second = Scripted(NotAccepted("429", retry_after=20)), Scripted(NotAccepted("503", retry_after=5))
    with pytest.raises(NotAccepted) as raised:
        _chain(first, second).send(MAIL)
    assert str(raised.value) == "503" and raised.value.retry_after == 5


def test_an_open_breaker_skips_its_provider_and_every_one_open_is_channel_unavailable():
    clock = Clock()
    first, second = Scripted(*[NotAccepted("503")] * 2), Scripted(*[NotAccepted("503")] * 2, "m-2")
    chain = _chain(first, second, failures=2, clock=clock)
    for _ in range(2):
        with pytest.raises(NotAccepted):
            chain.send(MAIL)
    assert chain.unavailable_until() == clock.now + 30
    with pytest.raises(ChannelUnavailable) as raised:
        chain.send(MAIL)
    assert (first.calls, second.calls) == (2, 2)  # neither was called
    assert raised.value.retry_in == 30 and raised.value.retry_after == 30
    assert str(raised.value) == "every email provider's breaker is open"
    clock.now += 30  # each lets one probe through: the first fails again, the second takes it
    first.answers = [NotAccepted("503")]
    assert chain.send(MAIL) == Accepted("email_1", "m-2")
    assert chain.unavailable_until() is None


def test_a_closed_provider_later_in_the_list_takes_what_an_open_one_refuses():
    clock = Clock()
    first, second = Scripted(NotAccepted("503")), Scripted("m-a", "m-b")
    chain = _chain(first, second, failures=1, clock=clock)
    assert chain.send(MAIL) == Accepted("email_1", "m-a")
    assert chain.send(MAIL) == Accepted("email_1", "m-b")
    assert first.calls == 1  # open: not called again


# -- the providers classify their failures ------------------------------------------------


def test_http_connection_refused_and_5xx_are_not_accepted_a_read_timeout_may_be():
    refused = HttpEmailProvider(Settings(email_http_url=f"http://127.0.0.1:{free_port()}/send", http_timeout=0.5))
    with pytest.raises(NotAccepted):
        refused.send(MAIL)
    api = FakeEmailApi(mode="503", hang_seconds=2)
    try:
        provider = HttpEmailProvider(Settings(email_http_url=api.url, http_timeout=0.5))
        with pytest.raises(NotAccepted):
            provider.send(MAIL)
        api.mode = "hang"
        with pytest.raises(MaybeAccepted):
            provider.send(MAIL)
        assert api.taken["d-1"] == 1  # it did take it
    finally:
        api.close()


def test_smtp_failure_before_data_is_not_accepted_after_data_it_may_be():
    server = serve_smtp()
    try:
        provider = SmtpEmailProvider(Settings(smtp_host="127.0.0.1", smtp_port=server.server_address[1],
                                              smtp_timeout=2))
        server.busy = True
        with pytest.raises(NotAccepted):
            provider.send(MAIL)
        server.busy, server.drop_after_data = False, True
        with pytest.raises(MaybeAccepted):
            provider.send(MAIL)
        assert message_ids(server) == ["<d-1@example.org>"]
    finally:
        server.shutdown()
        server.server_close()


# -- the state machine records the provider and honours the pin ------------------------------


def _opened_delivery(log: FakeDeliveryLog) -> str:
    opened = log.open("0b7e0c8e-8a4f-4a4b-9c55-2f1e7f6a9d01", "booking.confirmed", BookingRef("b", 1),
                      [("email", "ada@example.org")], datetime.now(UTC))
    return opened.pending[0][2]


def _send(log, provider, did):
    return delivery.send(SendJob(did), MAIL, log=log, provider=provider, owner=FakeOwner("w"), lease_seconds=60)


def test_maybe_accepted_pins_the_delivery_and_the_retry_goes_to_that_provider():
    log = FakeDeliveryLog()
    did = _opened_delivery(log)
    with pytest.raises(MaybeAccepted):
        _send(log, FakeProvider(MaybeAccepted("timeout", provider="email_http")), did)
    assert (log.rows[did].status, log.rows[did].provider) == (DeliveryStatus.FAILED, "email_http")
    retry = FakeProvider("m-1", name="email_http")
    result = _send(log, retry, did)
    assert retry.pins == ["email_http"]
    assert (result.outcome, result.provider) == (delivery.Outcome.SENT, "email_http")
    assert log.rows[did].provider == "email_http"


def test_a_send_that_reached_no_provider_is_not_an_attempt_and_stays_claimable():
    log = FakeDeliveryLog()
    did = _opened_delivery(log)
    with pytest.raises(ChannelUnavailable):
        _send(log, FakeProvider(ChannelUnavailable("email", 12.0)), did)
    row = log.rows[did]
    assert (row.status, row.attempts, row.last_error) == (
        DeliveryStatus.FAILED, 0, "every email provider's breaker is open")
    assert _send(log, FakeProvider("m-1", name="email_smtp"), did).attempt == 1


# -- settings --------------------------------------------------------------------------------


def test_provider_lists_win_over_the_backend_and_refuse_unknown_or_repeated_names():
    assert Settings.from_env({}).email_chain == ("file",)
    assert Settings.from_env({"EMAIL_BACKEND": "smtp"}).email_chain == ("smtp",)
    env = {"EMAIL_BACKEND": "smtp", "EMAIL_PROVIDERS": "http, file", "EMAIL_HTTP_URL": "http://x.invalid"}
    assert Settings.from_env(env).email_chain == ("http", "file")
    assert Settings.from_env({"PUSH_PROVIDERS": "FILE"}).push_chain == ("file",)
    for variable, value in (("EMAIL_PROVIDERS", "smtp,pigeon"), ("EMAIL_PROVIDERS", "smtp,smtp"),
                            ("PUSH_PROVIDERS", "smtp"), ("PUSH_PROVIDERS", "file,http,file")):
        with pytest.raises(ConfigError, match=variable):
            Settings.from_env({variable: value, "PUSH_HTTP_URL": "http://x.invalid"})
    with pytest.raises(ConfigError, match="EMAIL_HTTP_URL"):
        Settings.from_env({"EMAIL_PROVIDERS": "smtp,http"})
