"""The ``receipts`` outbox as the publisher uses it: claim a batch with a lease, record what became of it.

A claim leases rows (``locked_until``, ``lease_owner``; ``FOR UPDATE SKIP
LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so several publishers
never publish the same row under normal operation; a dead publisher's lease
runs out and its rows are claimed again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa

from notification_service.delivery.machine import utcnow
from notification_service.delivery.repository import SqlDeliveryLog
from notification_service.delivery.sql import for_driver
from notification_service.delivery.tables import receipts

#: How long a claimed row belongs to the publisher that claimed it.
CLAIM_LEASE = timedelta(seconds=60)
#: A row the broker returned (no queue bound) waits this long before it is tried again.
REFUSED_DELAY = timedelta(seconds=30)
#: Kept on a nacked row, which is due again at once (the publisher sends it on a new connection).
NACKED_ERROR = "nacked by the broker; sent again on a new connection"

#: The outbox statements (``:name`` parameters, adapted to the driver like the delivery log's).
_CLAIM = ("UPDATE receipts SET locked_until = :until, lease_owner = :owner WHERE id IN (SELECT id FROM receipts"
          " WHERE published_at IS NULL AND (locked_until IS NULL OR locked_until < :now) ORDER BY id LIMIT :limit"
          "{skip_locked})")
_CLAIMED = ("SELECT r.id, r.delivery_id, r.sequence, r.status, r.attempt, r.reason, r.provider_message_id,"
            " r.occurred_at, d.notification_id, d.channel, d.address, d.booking_id, d.booking_version, d.event,"
            " d.correlation_id, r.provider FROM receipts r JOIN deliveries d ON d.delivery_id = r.delivery_id"
            " WHERE r.published_at IS NULL AND r.lease_owner = :owner AND r.locked_until = :until ORDER BY r.id")
_PUBLISHED = "UPDATE receipts SET published_at = :now, locked_until = NULL, last_error = NULL WHERE id = :id"
_RELEASE = ("UPDATE receipts SET locked_until = :until, last_error = :error WHERE id = :id"
            " AND published_at IS NULL")
_CLOSED = "UPDATE receipts SET published_at = :now, locked_until = NULL, last_error = :error WHERE id = :id"


@dataclass(frozen=True)
class ReceiptRow:
    """An outbox row joined with its delivery: what a receipt is built from."""

    id: int
    delivery_id: str
    sequence: int
    status: str
    attempt: int
    reason: str | None
    provider_message_id: str | None
    occurred_at: datetime | str
    notification_id: str
    channel: str
    address: str
    booking_id: str
    booking_version: int
    event: str
    correlation_id: str | None
    provider: str | None = None


@dataclass
class BatchOutcome:
    """What became of a claimed batch; :meth:`ReceiptOutbox.record` writes it in one transaction."""

    published: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)  # unroutable: held back for REFUSED_DELAY
    released: list[int] = field(default_factory=list)  # unanswered: due again at once
    nacked: list[int] = field(default_factory=list)  # due again at once, with NACKED_ERROR
    closed: list[tuple[int, str]] = field(default_factory=list)  # broke the contract: (row id, error)


class ReceiptOutbox:
    """Two write transactions per batch, on the delivery log's own connection and write lock.

    The workers' threads and processes take turns there (no second connection
    sleeps in SQLite's busy handler), and the transactions count in
    ``notification_db_transactions_total`` like the rest.
    """

    def __init__(self, store: SqlDeliveryLog) -> None:
        self.store = store  # the process's delivery log
        skip_locked = "" if store.sqlite else " FOR UPDATE SKIP LOCKED"
        self.sql = {name: for_driver(text.replace("{skip_locked}", skip_locked), store.sqlite) for name, text in
                    (("claim", _CLAIM), ("claimed", _CLAIMED), ("published", _PUBLISHED), ("release", _RELEASE),
                     ("closed", _CLOSED))}

    def claim(self, owner: str, limit: int, now: datetime | None = None) -> list[ReceiptRow]:
        """Lease up to ``limit`` unpublished rows (oldest first) and return them joined with their delivery."""
        now = now or utcnow()
        params = {"owner": owner, "until": self.store.time(now + CLAIM_LEASE), "now": self.store.time(now),
                  "limit": limit}
        with self.store.writes.transaction() as cur:
            cur.execute(self.sql["claim"], params)
            if not cur.rowcount:
                return []
            cur.execute(self.sql["claimed"], params)
            return [ReceiptRow(*row) for row in cur.fetchall()]

    def record(self, outcome: BatchOutcome, now: datetime | None = None) -> None:
        now = now or utcnow()
        ts = self.store.time(now)
        held_until = self.store.time(now + REFUSED_DELAY)
        refused_error = "refused by the broker (unroutable)"
        with self.store.writes.transaction() as cur:
            if outcome.published:
                cur.executemany(self.sql["published"], [{"now": ts, "id": i} for i in outcome.published])
            if outcome.refused:
                cur.executemany(self.sql["release"], [{"until": held_until, "error": refused_error, "id": i}
                                                      for i in outcome.refused])
            if outcome.released:
                cur.executemany(self.sql["release"], [{"until": None, "error": None, "id": i}
                                                      for i in outcome.released])
            if outcome.nacked:
                cur.executemany(self.sql["release"], [{"until": None, "error": NACKED_ERROR, "id": i}
                                                      for i in outcome.nacked])
            if outcome.closed:
                cur.executemany(self.sql["closed"], [{"now": ts, "error": error[:2000], "id": i}
                                                     for i, error in outcome.closed])

    def backlog(self) -> int:
        with self.store.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(receipts)
                                .where(receipts.c.published_at.is_(None))).scalar_one()
