"""Each channel's provider chain, built once per process from the settings.

``EMAIL_PROVIDERS``/``PUSH_PROVIDERS`` (or the one ``*_BACKEND``) name the
kinds in order; each provider is named ``<channel>_<kind>`` (``email_http``,
``email_smtp``, ``push_file`` …) in the delivery log, receipts, logs and
metrics, and has its own circuit breaker, shared with the other worker
processes through the delivery log's database. :func:`member` is the one
place a provider is made: a wrapper (a rate limiter) goes around it there.
"""

from __future__ import annotations

import threading

from notification_service.delivery.breakers import SqlBreakerState
from notification_service.delivery.log import delivery_log
from notification_service.providers.breaker import CircuitBreaker
from notification_service.providers.chain import Member, ProviderChain
from notification_service.providers.email_file import FileEmailProvider
from notification_service.providers.email_http import HttpEmailProvider
from notification_service.providers.push_file import FilePushProvider
from notification_service.providers.push_http import HttpPushProvider
from notification_service.providers.rate_limited import rate_limited
from notification_service.providers.smtp import SmtpEmailProvider
from notification_service.settings import Settings

#: channel → kind → provider class.
PROVIDERS: dict[str, dict[str, type]] = {
    "email": {"file": FileEmailProvider, "smtp": SmtpEmailProvider, "http": HttpEmailProvider},
    "push": {"file": FilePushProvider, "http": HttpPushProvider},
}

_chains: dict[tuple[str, Settings], ProviderChain] = {}
_lock = threading.Lock()


def provider_name(channel: str, kind: str) -> str:
    return f"{channel}_{kind}"


def member(channel: str, kind: str, settings: Settings) -> Member:
    """One provider of a chain with its breaker (shared across processes through the delivery log)."""
    name = provider_name(channel, kind)
    shared = SqlBreakerState(delivery_log(settings.database_url), probe_timeout=settings.lease_seconds)
    breaker = CircuitBreaker(name, failures=settings.breaker_failures, open_seconds=settings.breaker_open_seconds,
                             shared=shared)
    return Member(name, rate_limited(name, PROVIDERS[channel][kind](settings), settings), breaker)


def chain(channel: str, settings: Settings) -> ProviderChain:
    """The process's chain of ``channel``: its providers keep per-thread connections and their breakers' state."""
    key = (channel, settings)
    with _lock:
        if key not in _chains:
            kinds = settings.email_chain if channel == "email" else settings.push_chain
            _chains[key] = ProviderChain(channel, [member(channel, kind, settings) for kind in kinds])
        return _chains[key]


def email_provider(settings: Settings) -> ProviderChain:
    return chain("email", settings)


def push_provider(settings: Settings) -> ProviderChain:
    return chain("push", settings)
