"""A channel's providers in order: fail over only when a provider certainly did not take the message.

``NotAccepted`` (refused, 408/429/5xx, SMTP before DATA) passes the message to
the next provider at once: no duplicate can follow. ``MaybeAccepted`` (a read
timeout, a drop after sending) is raised with the provider's name and never
failed over: the delivery log pins that provider, and the next attempt goes
back to it alone (``pinned``) with the same idempotency key, the delivery id.
A provider whose breaker refuses the call is skipped without a call; when
every one refused, ``ChannelUnavailable`` says when the earliest lets a probe
through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import structlog

import shared
from notification_service.errors import (
    ChannelUnavailable,
    MaybeAccepted,
    NotAccepted,
    PermanentError,
    RateLimited,
    TransientError,
)
from notification_service.providers.breaker import PROBE_RECHECK_SECONDS, CircuitBreaker
from notification_service.runtime import metrics

log = structlog.get_logger("notification_service.providers.chain")


class Provider(Protocol):
    """One provider: the provider's message id, or ``NotAccepted``/``MaybeAccepted``/``PermanentError``."""

    def send(self, content) -> str: ...


@dataclass(frozen=True)
class Accepted:
    """Which provider took the message, and its id for it."""

    provider: str
    message_id: str


@dataclass(frozen=True)
class Member:
    """One provider of a chain: its name (``email_http``, ``push_file`` …), the provider and its breaker."""

    name: str
    provider: Provider
    breaker: CircuitBreaker


def _recipient(channel: str, content) -> str:
    address = getattr(content, "to", None) or getattr(content, "token", None) or ""
    return shared.mask_address(channel, address)


def _sooner(wait: float | None, other: float | None) -> float | None:
    """The shorter of two ``Retry-After`` waits, either of which may be unknown (None)."""
    if other is None:
        return wait
    return other if wait is None else min(wait, other)


class ProviderChain:
    """The providers of one channel, tried in order; one per process (``channels.email_provider``), thread-safe."""

    def __init__(self, channel: str, members: list[Member]) -> None:
        if not members:
            raise ValueError(f"the {channel} channel needs at least one provider")
        self.channel = channel
        self.members = members

    @property
    def names(self) -> list[str]:
        return [member.name for member in self.members]

    def _candidates(self, pinned: str | None) -> list[Member]:
        """The providers to try: the pinned one alone, or the whole list."""
        if pinned is None:
            return self.members
        members = [member for member in self.members if member.name == pinned]
        if not members:
            # An operator removed the provider an earlier attempt may have reached: their choice.
            log.warning("pinned provider no longer configured; trying the channel's providers",
                        provider=pinned, channel=self.channel)
            return self.members
        return members

    def send(self, content, pinned: str | None = None) -> Accepted:
        members = self._candidates(pinned)
        last: TransientError | None = None
        limited: RateLimited | None = None
        retry_after: float | None = None
        refused_until: list[float] = []
        previous, reason = None, ""
        for member in members:
            if not member.breaker.allow():
                refused_until.append(member.breaker.refusing_until() or member.breaker.clock())
                previous, reason = member.name, "its breaker is open"
                continue
            if previous is not None:
                self._failover(previous, member.name, content, reason)
            try:
                message_id = member.provider.send(content)
            except RateLimited as exc:
                # Its rate limit: nothing was called, so not a failure of the provider; the next one may take it.
                limited, previous, reason = exc, member.name, str(exc)
                retry_after = _sooner(retry_after, exc.retry_after)
                continue
            except PermanentError:
                member.breaker.success()  # it answered: up, the message was wrong
                raise
            except MaybeAccepted as exc:
                member.breaker.failure()
                exc.provider = member.name
                raise
            except NotAccepted as exc:
                member.breaker.failure()
                last, previous, reason = exc, member.name, str(exc)
                retry_after = _sooner(retry_after, exc.retry_after)
                continue
            except TransientError as exc:
                # Not said which: it may have been taken, so it is treated as such.
                member.breaker.failure()
                raise MaybeAccepted(str(exc), exc.retry_after, member.name) from exc
            except BaseException:
                member.breaker.abandon()
                raise
            member.breaker.success()
            return Accepted(member.name, str(message_id))
        if last is not None:
            last.retry_after = retry_after
            raise last
        if limited is not None:
            limited.retry_after = retry_after
            raise limited
        now = self.members[0].breaker.clock()
        raise ChannelUnavailable(self.channel, max(PROBE_RECHECK_SECONDS, min(refused_until) - now))

    def unavailable_until(self) -> float | None:
        """Epoch seconds until which every provider of the channel refuses calls (the earliest end), or None."""
        ends = [member.breaker.refusing_until() for member in self.members]
        if any(end is None for end in ends):
            return None
        return min(end for end in ends if end is not None)

    def _failover(self, origin: str, target: str, content, reason: str) -> None:
        metrics.FAILOVERS.labels(self.channel, origin, target).inc()
        log.warning("failover", channel=self.channel, from_provider=origin, to_provider=target,
                    recipient=_recipient(self.channel, content), reason=reason)
