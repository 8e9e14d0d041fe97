"""RateLimitedProvider: a slot before every send, a 429 turned into a pause for every sender, 0 = no limit."""

from __future__ import annotations

import pytest
import responses

from notification_service.errors import TransientError
from notification_service.providers import EmailContent, HttpEmailProvider
from notification_service.providers.channels import email_provider
from notification_service.providers.rate_limited import RateLimitedProvider, rate_limited
from notification_service.settings import Settings

EMAIL_URL = "https://mail.invalid/send"
MAIL = EmailContent(delivery_id="d-1", to="ada@example.org", subject="S", text="t", html="<p>h</p>", headers={})


class FakeLimiter:
    """``RateLimiter`` in memory: records what it is asked."""

    def __init__(self) -> None:
        self.acquired: list[tuple[str, float, int]] = []
        self.paused: list[tuple[str, float]] = []

    def acquire(self, provider: str, rate_per_s: float, burst: int = 1) -> float:
        self.acquired.append((provider, rate_per_s, burst))
        return 0.0

    def slow_down(self, provider: str, seconds: float) -> None:
        self.paused.append((provider, seconds))


def _settings(**overrides) -> Settings:
    return Settings(email_backend="http", email_http_url=EMAIL_URL, **overrides)


@responses.activate
def test_every_send_takes_a_slot_first():
    responses.post(EMAIL_URL, json={"id": "m-1"})
    limiter = FakeLimiter()
    provider = RateLimitedProvider("email_http", HttpEmailProvider(_settings()), limiter, 50.0)
    assert provider.send(MAIL) == "m-1"
    assert limiter.acquired == [("email_http", 50.0, 1)] and limiter.paused == []


@pytest.mark.parametrize(("headers", "pause"), [({"Retry-After": "2"}, 2.0), ({}, 1.0)])
@responses.activate
def test_a_429_pauses_every_sender_for_its_retry_after(headers, pause):
    responses.post(EMAIL_URL, status=429, headers=headers)
    limiter = FakeLimiter()
    provider = RateLimitedProvider("email_http", HttpEmailProvider(_settings()), limiter, 50.0)
    with pytest.raises(TransientError) as raised:
        provider.send(MAIL)
    assert raised.value.status == 429
    assert limiter.paused == [("email_http", pause)]


@responses.activate
def test_a_503_is_no_reason_to_slow_everyone_down():
    responses.post(EMAIL_URL, status=503, headers={"Retry-After": "9"})
    limiter = FakeLimiter()
    provider = RateLimitedProvider("email_http", HttpEmailProvider(_settings()), limiter, 50.0)
    with pytest.raises(TransientError):
        provider.send(MAIL)
    assert limiter.paused == []


def test_no_limit_configured_is_the_provider_itself():
    plain = HttpEmailProvider(_settings())
    assert rate_limited("email_http", plain, _settings()) is plain
    assert rate_limited("email_file", plain, _settings(email_http_rate_limit=10)) is plain


def test_the_configured_limit_wraps_the_channel_provider(tmp_path):
    settings = _settings(email_http_rate_limit=12.5, database_url=f"sqlite:///{tmp_path / 'n.db'}")
    (member,) = email_provider(settings).members
    provider = member.provider
    assert isinstance(provider, RateLimitedProvider)
    assert (provider.name, provider.rate) == ("email_http", 12.5)
    assert isinstance(provider.provider, HttpEmailProvider)
