"""In-memory implementations of the delivery state machine's ports, for unit tests without broker or database."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from notification_service.delivery.machine import (
    STALE_REASON,
    SUPERSEDED_REASON,
    SUPPRESSED_REASON,
    BookingRef,
    Claim,
    ClaimResult,
    Opened,
    delivery_id,
)
from notification_service.delivery.status import CLAIMABLE, FINAL, DeliveryStatus
from notification_service.delivery.supersession import supersedes
from notification_service.errors import PermanentError, TransientError
from notification_service.providers.chain import Accepted
from notification_service.suppressions.keys import address_hash


@dataclass
class Row:
    delivery_id: str
    notification_id: str
    channel: str
    address: str
    booking: BookingRef
    event: str | None = None
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = 0
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    last_error: str | None = None
    provider_message_id: str | None = None
    provider: str | None = None


@dataclass
class FakeDeliveryLog:
    """``delivery.DeliveryLog`` in a dict, with the same rules as the SQL one."""

    rows: dict[str, Row] = field(default_factory=dict)
    cancelled: dict[str, int] = field(default_factory=dict)
    writes: int = 0
    #: Address hashes on the suppression list (``suppressions.keys.address_hash``; no expiry here).
    suppressed: set[str] = field(default_factory=set)

    # -- the rules (sql.py's conditions) ----------------------------------------------

    def _cancelled(self, row: Row) -> bool:
        cancelled = self.cancelled.get(row.booking.booking_id)
        return cancelled is not None and row.booking.version < cancelled

    def _superseded(self, row: Row) -> bool:
        return any(other.booking.booking_id == row.booking.booking_id and other.channel == row.channel
                   and other.booking.version > row.booking.version and supersedes(other.event, row.event)
                   for other in self.rows.values())

    def _stale(self, row: Row) -> bool:
        return self._cancelled(row) or self._superseded(row)

    @staticmethod
    def _live(row: Row, now: datetime) -> bool:
        return (row.status is DeliveryStatus.SENDING and row.lease_expires_at is not None
                and row.lease_expires_at >= now)

    def _older_in_flight(self, row: Row, now: datetime) -> Row | None:
        older = [other for other in self.rows.values()
                 if other.booking.booking_id == row.booking.booking_id and other.channel == row.channel
                 and other.booking.version < row.booking.version and self._live(other, now)
                 and supersedes(row.event, other.event)]
        return max(older, key=lambda other: other.lease_expires_at or now, default=None)

    # -- the port ---------------------------------------------------------------------

    def open(self, notification_id, event, booking, addresses, now, correlation_id=None) -> Opened:
        self.writes += 1
        cancelled = self.cancelled.get(booking.booking_id)
        stale = cancelled is not None and booking.version < cancelled
        if booking.cancelled and not stale:
            self.cancelled[booking.booking_id] = max(cancelled or 0, booking.version)
        pending, superseded = [], False
        for channel, address in addresses:
            did = delivery_id(notification_id, channel, address)
            row = self.rows.setdefault(did, Row(did, notification_id, channel, address, booking, event))
            if stale and row.status in CLAIMABLE:
                row.status, row.last_error = DeliveryStatus.STALE, STALE_REASON
            elif row.status in (DeliveryStatus.PENDING, DeliveryStatus.FAILED) and self._superseded(row):
                row.status, row.last_error, superseded = DeliveryStatus.STALE, SUPERSEDED_REASON, True
            if row.status is DeliveryStatus.PENDING:
                pending.append((channel, address, did))
        if stale:
            return Opened(stale=True, pending=[])
        return Opened(stale=superseded and not pending, pending=pending)

    def claim(self, did, owner, now, lease_until, *, address_hash=None) -> Claim:
        self.writes += 1
        row = self.rows.get(did)
        if row is None:
            return Claim(ClaimResult.MISSING)
        takeable = row.status in CLAIMABLE or (row.status is DeliveryStatus.SENDING and not self._live(row, now))
        if (takeable and not self._stale(row) and address_hash not in self.suppressed
                and self._older_in_flight(row, now) is None):
            return self._take(row, owner, lease_until)
        return self._why_not(row, now, None, address_hash)

    def _why_not(self, row: Row, now: datetime, dead_owner: str | None, address_hash: str | None = None) -> Claim:
        if row.status in FINAL:
            return Claim(ClaimResult.FINAL)
        held = self._live(row, now) and row.lease_owner != dead_owner
        if self._stale(row) and not held:
            reason = STALE_REASON if self._cancelled(row) else SUPERSEDED_REASON
            row.status, row.last_error, row.lease_owner, row.lease_expires_at = DeliveryStatus.STALE, reason, None, None
            return Claim(ClaimResult.STALE)
        if address_hash in self.suppressed and not held:
            row.status, row.last_error, row.lease_owner, row.lease_expires_at = (
                DeliveryStatus.SUPPRESSED, SUPPRESSED_REASON, None, None)
            return Claim(ClaimResult.SUPPRESSED)
        if row.status is DeliveryStatus.SENDING:
            return Claim(ClaimResult.LEASED, row.attempts, row.lease_owner, row.lease_expires_at)
        older = self._older_in_flight(row, now)
        if older is not None:
            return Claim(ClaimResult.WAITING, row.attempts, older.lease_owner, older.lease_expires_at)
        raise RuntimeError(f"delivery {row.delivery_id} could not be claimed in state {row.status}")

    def _take(self, row: Row, owner: str, lease_until: datetime) -> Claim:
        row.status, row.attempts = DeliveryStatus.SENDING, row.attempts + 1
        row.lease_owner, row.lease_expires_at = owner, lease_until
        return Claim(ClaimResult.CLAIMED, row.attempts, provider=row.provider)

    def take_over(self, did, dead_owner, owner, now, lease_until, *, address_hash=None) -> Claim:
        self.writes += 1
        row = self.rows[did]
        if (row.status is DeliveryStatus.SENDING and row.lease_owner == dead_owner and not self._stale(row)
                and address_hash not in self.suppressed):
            return self._take(row, owner, lease_until)
        return self._why_not(row, now, dead_owner, address_hash)

    def finish(self, did, owner, attempt, status, now, *, error=None, provider_message_id=None,
               provider=None, suppress=None) -> bool:
        self.writes += 1
        if suppress and did in self.rows:
            self.suppressed.add(address_hash(self.rows[did].channel, self.rows[did].address))
        row = self.rows[did]
        if status is DeliveryStatus.SENT:
            if row.status is DeliveryStatus.SENT:
                return False
            row.provider_message_id, row.provider = provider_message_id, provider
        elif not (row.status is DeliveryStatus.SENDING and row.lease_owner == owner and row.attempts == attempt):
            return False
        else:
            row.last_error, row.provider = error, provider or row.provider
        row.status, row.lease_owner, row.lease_expires_at = status, None, None
        return True

    def release(self, did, owner, attempt, reason, now) -> bool:
        self.writes += 1
        row = self.rows[did]
        if not (row.status is DeliveryStatus.SENDING and row.lease_owner == owner and row.attempts == attempt):
            return False
        row.status, row.attempts, row.last_error = DeliveryStatus.FAILED, row.attempts - 1, reason
        row.lease_owner, row.lease_expires_at = None, None
        return True

    def drop(self, did, status, reason, now) -> bool:
        self.writes += 1
        row = self.rows.get(did)
        if row is None:
            return False
        if row.status in CLAIMABLE:
            row.status, row.last_error = status, reason
            return True
        return row.status in (DeliveryStatus.STALE, DeliveryStatus.EXPIRED)


class FakeProvider:
    """A one-provider chain answering from a script: a str is a provider id, an exception is raised.

    Records every call and the provider each was pinned to.
    """

    def __init__(self, *answers, name: str = "fake") -> None:
        self.answers = list(answers)
        self.name = name
        self.calls: list = []
        self.pins: list[str | None] = []
        self.during = None  # a callable run inside the call, e.g. to simulate a parallel copy

    def send(self, content, pinned: str | None = None) -> Accepted:
        self.calls.append(content)
        self.pins.append(pinned)
        if self.during is not None:
            hook, self.during = self.during, None
            hook()
        answer = self.answers.pop(0) if self.answers else "provider-id"
        if isinstance(answer, BaseException):
            raise answer
        return Accepted(self.name, answer)


class FakeOwner:
    def __init__(self, owner_id: str, dead: set[str] | None = None) -> None:
        self.id = owner_id
        self.dead = dead if dead is not None else set()

    def is_dead(self, other: str) -> bool:
        return other in self.dead


__all__ = ["FakeDeliveryLog", "FakeProvider", "FakeOwner", "PermanentError", "TransientError"]
