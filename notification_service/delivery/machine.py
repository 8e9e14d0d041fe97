"""The delivery state machine: dispatch a notification, send one delivery.

Pure logic over two ports, the delivery log and the provider, so it is unit
tested with fakes and no broker (tests/notification/test_delivery.py). The
Celery tasks are thin adapters over :func:`open_deliveries` and :func:`send`.

The rules:

* dispatch creates every delivery of a notification in one transaction and
  hands back only those still ``pending``: a re-run dispatch (broker redelivery,
  relay resend) never republishes a delivery that has an attempt;
* a delivery is ``stale``, and never sent, when it is older than a
  cancellation processed for its booking, or when a message of a newer version
  of the same booking that supersedes it was already opened (dispatched) on its
  channel. "Supersedes" is by kind (``supersession.py``): a confirmation or a
  reschedule supersedes older confirmations, reschedules and reminders; a
  reminder supersedes older reminders; a cancellation supersedes everything
  older. Staleness is checked at dispatch and again when a send starts;
* a newer message waits while an older one it supersedes is at its provider
  on the same channel (under a live lease): with the rule above, the last
  message the customer gets on a channel describes the latest version;
* a send whose message expired (a reminder after the booking started) is
  recorded ``expired`` and not sent; one whose channel and address are on the
  suppression list (unexpired) is recorded ``suppressed`` by its claim and not sent;
* a send claims an owner-stamped lease (worker identity, attempt number,
  expiry) in one write and records the outcome in one more. A lease is taken
  over only when it has expired or its owner is known dead, never because the
  broker marked a message ``redelivered``: a copy that finds a live lease is
  deferred until the lease ends. A stale delivery left ``sending`` by a dead
  or expired owner is recorded stale at once (with its receipt), not taken over;
* **no copy is ever deferred past the moment its lease ends**: a copy is
  deferred (``DEFERRED``, ``WAITING``) only while a live lease stands in its
  way, its ``retry_in`` is at most that lease's remaining time plus one
  second, and a look after the lease ended claims the delivery, takes it
  over, or records it stale or final. A delivery log that answers with an
  ended lease breaks this, and the send fails loudly instead of deferring;
* nothing ever moves a delivery out of ``sent``, and an attempt that lost its
  lease cannot overwrite what the newer attempt recorded.
* the provider that took a message is recorded with ``sent``; one that *may*
  have taken it (``MaybeAccepted``) is recorded with ``failed`` and pins the
  delivery: every later attempt goes to it alone (``pinned``), with the same
  idempotency key, until it is sent. A send that reached no provider (every
  breaker open: ``ChannelUnavailable``) gives its attempt back (``release``):
  not counted, claimable again at once.

Over 200 lines on purpose: the state machine's rules and its two ports read together, in one place.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from notification_service.delivery.status import DeliveryStatus
from notification_service.errors import AddressGone, ChannelUnavailable, MaybeAccepted, PermanentError, RateLimited
from notification_service.suppressions.keys import content_hash

#: ``last_error`` of deliveries dropped because a newer cancellation was processed.
STALE_REASON = "older than a processed cancellation"
#: ``last_error`` of deliveries dropped because a newer version's message superseded them (``supersession.py``).
SUPERSEDED_REASON = "superseded by a newer version's message"
#: ``last_error`` of deliveries dropped because their message expired (a reminder after the start).
EXPIRED_REASON = "expired before it was sent"
#: ``last_error`` of deliveries never sent because their channel and address are on the suppression list.
SUPPRESSED_REASON = "on the suppression list"
#: The suppression list's reason for an address or token the provider said no longer exists.
GONE_REASON = "unregistered: the provider says the address or token no longer exists"


def utcnow() -> datetime:
    return datetime.now(UTC)


def delivery_id(notification_id: str, channel: str, address: str) -> str:
    """Stable id of one delivery: the Celery task id and the provider's idempotency key."""
    return str(uuid.uuid5(uuid.UUID(str(notification_id)), f"{channel}:{address}"))


@dataclass(frozen=True)
class BookingRef:
    booking_id: str
    version: int
    cancelled: bool = False


@dataclass(frozen=True)
class Opened:
    """What dispatch found: stale, or the deliveries (channel, address, id) that still need a send.

    ``stale``: older than a processed cancellation, or superseded on every channel it still had to send on.
    """

    stale: bool
    pending: list[tuple[str, str, str]]


class ClaimResult(enum.Enum):
    CLAIMED = "claimed"    # this attempt holds the lease: send
    FINAL = "final"        # sent, stale or expired: never send again
    LEASED = "leased"      # another attempt holds a lease (see lease_owner / lease_expires_at)
    WAITING = "waiting"    # an older message this one supersedes is in flight (its lease_owner / lease_expires_at)
    STALE = "stale"        # older than a processed cancellation, or superseded: recorded stale now
    MISSING = "missing"    # no such delivery in the log
    SUPPRESSED = "suppressed"  # its channel and address are on the suppression list: recorded suppressed now


@dataclass(frozen=True)
class Claim:
    result: ClaimResult
    attempt: int = 0
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    #: CLAIMED: the provider an earlier attempt may have left the message with (its next attempt goes there).
    provider: str | None = None


class DeliveryLog(Protocol):
    """The delivery log port (``delivery_log.SqlDeliveryLog`` in production)."""

    def open(self, notification_id: str, event: str, booking: BookingRef,
             addresses: list[tuple[str, str]], now: datetime, correlation_id: str | None = None) -> Opened: ...

    def claim(self, delivery_id: str, owner: str, now: datetime, lease_until: datetime, *,
              address_hash: str | None = None) -> Claim: ...

    def take_over(self, delivery_id: str, dead_owner: str, owner: str, now: datetime,
                  lease_until: datetime, *, address_hash: str | None = None) -> Claim: ...

    def finish(self, delivery_id: str, owner: str, attempt: int, status: DeliveryStatus, now: datetime, *,
               error: str | None = None, provider_message_id: str | None = None,
               provider: str | None = None, suppress: str | None = None) -> bool: ...

    def release(self, delivery_id: str, owner: str, attempt: int, reason: str, now: datetime) -> bool: ...

    def drop(self, delivery_id: str, status: DeliveryStatus, reason: str, now: datetime) -> bool: ...


class Accepted(Protocol):
    """Read-only, as the chain's frozen ``Accepted`` is."""

    @property
    def provider(self) -> str: ...

    @property
    def message_id(self) -> str: ...


class Provider(Protocol):
    """A channel's providers (``providers.chain.ProviderChain``): who took the message and its id for it.

    Raises ``NotAccepted``/``MaybeAccepted`` (``TransientError``), ``ChannelUnavailable`` or ``PermanentError``;
    ``pinned`` restricts the send to that one provider.
    """

    def send(self, content, pinned: str | None = None) -> Accepted: ...


class Owner(Protocol):
    """The identity this process stamps on its leases, and what it knows about other owners."""

    id: str

    def is_dead(self, other: str) -> bool: ...


class Outcome(str, enum.Enum):
    SENT = "sent"
    DONE = "done"          # already sent, stale or expired: nothing to do
    STALE = "stale"
    EXPIRED = "expired"
    SUPPRESSED = "suppressed"  # on the suppression list: recorded, no provider called
    BOUNCED = "bounced"    # the provider said the address or token is gone: recorded, suppressed
    DEFERRED = "deferred"  # another attempt holds a live lease: look again when it ends
    WAITING = "waiting"    # an older message of the booking is at its provider: look again soon


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    attempt: int = 0
    provider_message_id: str | None = None
    #: SENT: the provider that took it.
    provider: str | None = None
    #: For DEFERRED and WAITING: when to look again (never past the end of the lease in the way, + 1 s).
    retry_in: float = 0.0


@dataclass(frozen=True)
class SendJob:
    delivery_id: str
    expires_at: datetime | None = None


#: A newer message waiting for an older one at its provider looks again after at most this many
#: seconds: a provider call usually ends long before the lease that bounds it.
WAITING_POLL_SECONDS = 2.0


#: Claims that end the send without a provider call, and what the send reports.
_NOT_SENT = {ClaimResult.FINAL: Outcome.DONE, ClaimResult.STALE: Outcome.STALE,
             ClaimResult.SUPPRESSED: Outcome.SUPPRESSED}


def open_deliveries(log: DeliveryLog, *, notification_id: str, event: str, booking: BookingRef,
                    addresses: list[tuple[str, str]], now: datetime | None = None,
                    correlation_id: str | None = None) -> Opened:
    """Dispatch's one write: record the booking version and create every delivery (idempotent)."""
    return log.open(notification_id, event, booking, list(dict.fromkeys(addresses)), now or utcnow(),
                    correlation_id)


def send(job: SendJob, content, *, log: DeliveryLog, provider: Provider, owner: Owner, lease_seconds: float,
         now: Callable[[], datetime] = utcnow) -> SendResult:
    """One send attempt of one delivery; provider errors propagate after the outcome is recorded.

    ``PermanentError`` leaves the delivery ``dead``; any other exception (``TransientError``,
    a bug, a time limit) leaves it ``failed`` so that the retry may claim it at once.
    """
    did = job.delivery_id
    moment = now()
    if job.expires_at is not None and job.expires_at <= moment:
        if log.drop(did, DeliveryStatus.EXPIRED, EXPIRED_REASON, moment):
            return SendResult(Outcome.EXPIRED)
        return SendResult(Outcome.DONE)
    lease_until = moment + timedelta(seconds=lease_seconds)
    # The claim refuses a suppressed channel and address and records it ``suppressed``: no provider is called.
    ahash = content_hash(content)
    claim = log.claim(did, owner.id, moment, lease_until, address_hash=ahash)
    if claim.result is ClaimResult.LEASED and claim.lease_owner and owner.is_dead(claim.lease_owner):
        claim = log.take_over(did, claim.lease_owner, owner.id, moment, lease_until, address_hash=ahash)
    if claim.result is ClaimResult.MISSING:
        raise PermanentError(f"delivery {did} is not in the delivery log (log reset or wrong database?)")
    if claim.result in _NOT_SENT:
        return SendResult(_NOT_SENT[claim.result])
    if claim.result in (ClaimResult.LEASED, ClaimResult.WAITING):
        return _deferred(did, claim, moment)
    attempt = claim.attempt
    try:
        accepted = provider.send(content, pinned=claim.provider)
    except AddressGone as exc:
        # The provider says the address or token no longer exists (FCM UNREGISTERED): a hard bounce, not a
        # dead letter (nothing to repair). Recorded `bounced` and suppressed in the same write.
        log.finish(did, owner.id, attempt, DeliveryStatus.BOUNCED, now(), error=f"address gone: {exc}",
                   suppress=GONE_REASON)
        return SendResult(Outcome.BOUNCED, attempt=attempt)
    except PermanentError as exc:
        log.finish(did, owner.id, attempt, DeliveryStatus.DEAD, now(), error=f"permanent: {exc}")
        raise
    except (ChannelUnavailable, RateLimited) as exc:
        # No provider was called (every breaker open, or no send slot near enough): not an attempt,
        # and the delivery is claimable again at once.
        log.release(did, owner.id, attempt, str(exc), now())
        raise
    except MaybeAccepted as exc:
        # The provider may have it: the next attempt goes back to it alone (same idempotency key).
        log.finish(did, owner.id, attempt, DeliveryStatus.FAILED, now(), error=str(exc) or type(exc).__name__,
                   provider=exc.provider)
        raise
    except BaseException as exc:
        # Give the lease back at once: the retry (or a redelivery) claims it without waiting.
        log.finish(did, owner.id, attempt, DeliveryStatus.FAILED, now(), error=str(exc) or type(exc).__name__)
        raise
    provider_message_id = str(accepted.message_id)[:500]
    log.finish(did, owner.id, attempt, DeliveryStatus.SENT, now(), provider_message_id=provider_message_id,
               provider=accepted.provider)
    return SendResult(Outcome.SENT, attempt=attempt, provider_message_id=provider_message_id,
                      provider=accepted.provider)


def _deferred(did: str, claim: Claim, moment: datetime) -> SendResult:
    """Look again when the lease in the way ends (LEASED), or soon (WAITING): never past that lease's end."""
    if claim.lease_expires_at is None or claim.lease_expires_at < moment:
        # Deferring on an ended lease is how a copy came back every second for minutes: refuse it.
        raise RuntimeError(f"delivery {did}: the delivery log answered {claim.result.value} with an ended lease")
    until_end = (claim.lease_expires_at - moment).total_seconds() + 1.0
    if claim.result is ClaimResult.WAITING:
        return SendResult(Outcome.WAITING, retry_in=min(until_end, WAITING_POLL_SECONDS))
    return SendResult(Outcome.DEFERRED, retry_in=until_end)
