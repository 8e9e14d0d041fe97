"""The suppression list in the delivery log's database: add, remove, list (the CLI and the webhook receiver).

Entries are keyed by channel and ``keys.address_hash``; the claim of a send reads them (``delivery/sql.py``),
so an entry takes effect on the next attempt of any worker. An entry whose ``expires_at`` has passed
suppresses nothing and stays listed (as expired) until removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from notification_service.delivery.repository import SqlDeliveryLog
from notification_service.delivery.sql import for_driver
from notification_service.delivery.tables import suppressions
from notification_service.delivery.timestamps import aware
from notification_service.suppressions.keys import SHOWN_PREFIX, address_hash

#: Adds an entry, or renews one (a second hard bounce, an operator's new reason or expiry).
UPSERT = (
    "INSERT INTO suppressions (channel, address_hash, reason, source, created_at, expires_at)"
    " VALUES (:channel, :ahash, :reason, :source, :now, :expires) ON CONFLICT (channel, address_hash)"
    " DO UPDATE SET reason = excluded.reason, source = excluded.source, created_at = excluded.created_at,"
    " expires_at = excluded.expires_at")
#: Longest reason kept.
MAX_REASON = 200


@dataclass(frozen=True)
class Entry:
    """One entry as an operator sees it: never the address, a prefix of its hash."""

    channel: str
    hash_prefix: str
    reason: str
    source: str
    created_at: datetime
    expires_at: datetime | None

    def active(self, now: datetime) -> bool:
        return self.expires_at is None or self.expires_at > now


def upsert(cur, sqlite: bool, *, channel: str, ahash: str, reason: str, source: str, now, expires) -> None:
    """Add or renew an entry on an open write transaction's cursor (the webhook receiver's own transaction)."""
    cur.execute(for_driver(UPSERT, sqlite), {"channel": channel, "ahash": ahash, "reason": reason[:MAX_REASON],
                                             "source": source, "now": now, "expires": expires})


class Suppressions:
    """The list over one delivery log's database (its write lock and connection)."""

    def __init__(self, store: SqlDeliveryLog) -> None:
        self.store = store

    def add(self, channel: str, address: str, *, reason: str, source: str, now: datetime,
            expires_at: datetime | None = None) -> Entry:
        ahash = address_hash(channel, address)
        with self.store.writes.transaction() as cur:
            upsert(cur, self.store.sqlite, channel=channel, ahash=ahash, reason=reason, source=source,
                   now=self.store.time(now), expires=expires_at and self.store.time(expires_at))
        return Entry(channel, ahash[:SHOWN_PREFIX], reason[:MAX_REASON], source, now, expires_at)

    def remove(self, channel: str, *, address: str | None = None, hash_prefix: str | None = None) -> int:
        """Remove the entry of ``address``, or every entry whose hash starts with ``hash_prefix``; how many."""
        condition = suppressions.c.channel == channel
        if address is not None:
            condition &= suppressions.c.address_hash == address_hash(channel, address)
        elif hash_prefix:
            condition &= suppressions.c.address_hash.startswith(hash_prefix.lower(), autoescape=True)
        else:
            raise ValueError("an address or a hash prefix is needed")
        with self.store.engine.begin() as conn:
            return conn.execute(sa.delete(suppressions).where(condition)).rowcount

    def entries(self, channel: str | None = None) -> list[Entry]:
        query = sa.select(suppressions).order_by(suppressions.c.created_at, suppressions.c.address_hash)
        if channel:
            query = query.where(suppressions.c.channel == channel)
        with self.store.engine.connect() as conn:
            return [Entry(r.channel, r.address_hash[:SHOWN_PREFIX], r.reason, r.source,
                          aware(r.created_at) or datetime.now(UTC), aware(r.expires_at)) for r in conn.execute(query)]

    def is_suppressed(self, channel: str, address: str, now: datetime) -> bool:
        """What a claim decides (``delivery/sql.py``): an unexpired entry for this channel and address."""
        with self.store.engine.connect() as conn:
            expires = conn.execute(sa.select(suppressions.c.expires_at).where(
                (suppressions.c.channel == channel)
                & (suppressions.c.address_hash == address_hash(channel, address)))).first()
        if expires is None:
            return False
        until = aware(expires[0])
        return until is None or until > now
