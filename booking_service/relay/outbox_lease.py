"""Which outbox rows a relay may publish now, and what it writes once the broker has answered.

A batch is claimed in one short transaction that leases its rows
(``locked_until``), published outside any transaction, and its outcomes
recorded in a second one (one UPDATE per outcome, ``WHERE id IN``); no database
lock is held while waiting for the broker. On PostgreSQL the claim reads
``FOR UPDATE SKIP LOCKED``; on SQLite the due rows are read without the write
lock and leased by a conditional UPDATE, so several relays can run at once and
each row is published by one of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa
import structlog

import shared
from booking_service.relay.message import OutboxRow, build_message, contract_violation
from booking_service.runtime import metrics
from booking_service.runtime.backoff import capped_exponential
from booking_service.storage.db import READ_ONLY, is_sqlite
from booking_service.storage.models import OutboxMessage, utcnow

log = structlog.get_logger(__name__)

OUTBOX = OutboxMessage.__table__
#: How long a claimed row belongs to the relay that claimed it. A relay that
#: dies mid-batch leaves its rows to the others (or to itself after a restart)
#: once this passes; a live one gives unconfirmed rows back long before
#: (``BOOKING_RELAY_CONFIRM_TIMEOUT_SECONDS``, which must stay below it).
CLAIM_LEASE = timedelta(seconds=120)
#: First wait before an unroutable row is tried again; doubles per attempt.
RETRY_BASE = timedelta(seconds=30)
#: Longest wait between two attempts of one row.
RETRY_CEILING = timedelta(hours=1)

CLAIM_COLUMNS = (OUTBOX.c.id, OUTBOX.c.notification_id, OUTBOX.c.booking_id, OUTBOX.c.event, OUTBOX.c.priority,
                 OUTBOX.c.payload, OUTBOX.c.payload_sha256, OUTBOX.c.correlation_id, OUTBOX.c.expires_at,
                 OUTBOX.c.attempts)

#: A row ready to publish and the message it becomes.
Claimed = tuple[OutboxRow, shared.TaskMessage]


def retry_delay(attempts: int) -> timedelta:
    """Exponential backoff with jitter for a row the broker refused ``attempts`` times.

    Jitter (up to half the step) spreads rows refused together (a missing
    binding refuses them all) over time, so they do not come back as one burst.
    """
    return timedelta(seconds=capped_exponential(attempts, RETRY_BASE.total_seconds(),
                                                RETRY_CEILING.total_seconds(), 0.5))


class OutboxLease:
    """Claims batches of due rows for one relay and records the broker's answers about them."""

    def __init__(self, engine: sa.Engine, batch_size: int) -> None:
        self.engine = engine
        self.batch_size = batch_size

    def _due(self, now: datetime) -> sa.Select:
        return (
            sa.select(*CLAIM_COLUMNS)
            .where(
                OUTBOX.c.status == "pending",
                OUTBOX.c.available_at <= now,
                sa.or_(OUTBOX.c.locked_until.is_(None), OUTBOX.c.locked_until <= now),
            )
            .order_by(OUTBOX.c.priority.desc(), OUTBOX.c.available_at, OUTBOX.c.id)
            .limit(self.batch_size)
        )

    def claim(self) -> list[Claimed]:
        """Lease a batch of due rows in one short transaction; settle the ones that must never be sent.

        The lease (``locked_until``) is what keeps a second relay off these rows
        while this one publishes them outside any transaction, so no database
        lock is held across network waits: on SQLite a stalled broker would
        otherwise hold the one write lock and stall every booking.
        """
        now = utcnow()
        lease = now + CLAIM_LEASE
        if is_sqlite(self.engine):
            with self.engine.connect() as conn:  # a plain read: no write lock while nothing is due
                rows = conn.execution_options(**{READ_ONLY: True}).execute(self._due(now)).all()
            if not rows:
                return []
            with self.engine.begin() as conn:
                leased = set(conn.execute(
                    sa.update(OUTBOX)
                    .where(OUTBOX.c.id.in_([r.id for r in rows]), OUTBOX.c.status == "pending",
                           sa.or_(OUTBOX.c.locked_until.is_(None), OUTBOX.c.locked_until <= now))
                    .values(locked_until=lease, attempts=OUTBOX.c.attempts + 1)
                    .returning(OUTBOX.c.id)
                ).scalars())
                return _settle_unsendable(conn, [r for r in rows if r.id in leased], now)
        with self.engine.begin() as conn:
            rows = conn.execute(self._due(now).with_for_update(skip_locked=True)).all()
            if rows:
                conn.execute(sa.update(OUTBOX).where(OUTBOX.c.id.in_([r.id for r in rows]))
                             .values(locked_until=lease, attempts=OUTBOX.c.attempts + 1))
            return _settle_unsendable(conn, rows, now)

    def record(self, published: Sequence[OutboxRow], refused: Sequence[tuple[OutboxRow, str]],
               released: Sequence[OutboxRow], nacked: Sequence[OutboxRow] = (), nack_error: str = "") -> None:
        """Write what the broker said about a batch, one statement per outcome, and drop the leases.

        ``released`` rows are due again at once; those among them in ``nacked`` keep ``nack_error``
        as their last error, so an operator sees why a row went out more than once.
        """
        now = utcnow()
        nacked_ids = {r.id for r in nacked}
        with self.engine.begin() as conn:
            if published:
                # Recorded even if the row was superseded meanwhile: it did go out.
                conn.execute(sa.update(OUTBOX).where(OUTBOX.c.id.in_([r.id for r in published])).values(
                    status="published", published_at=now, last_error=None, locked_until=None))
            if unanswered := [r.id for r in released if r.id not in nacked_ids]:
                conn.execute(sa.update(OUTBOX).where(OUTBOX.c.id.in_(unanswered),
                                                     OUTBOX.c.status == "pending").values(locked_until=None))
            if nacked_ids:
                conn.execute(sa.update(OUTBOX).where(OUTBOX.c.id.in_(nacked_ids), OUTBOX.c.status == "pending")
                             .values(locked_until=None, last_error=nack_error))
            if refused:
                conn.execute(
                    sa.update(OUTBOX).where(OUTBOX.c.id == sa.bindparam("b_id"), OUTBOX.c.status == "pending")
                    .values(available_at=sa.bindparam("b_at"), last_error=sa.bindparam("b_error"), locked_until=None),
                    [{"b_id": r.id, "b_at": now + retry_delay(r.attempts + 1), "b_error": error}
                     for r, error in refused],
                )


def _settle_unsendable(conn: sa.Connection, rows: Sequence[OutboxRow], now: datetime) -> list[Claimed]:
    """Expired and contract-breaking rows are closed for good (same transaction); the rest are returned."""
    claimed: list[Claimed] = []
    expired: list[int] = []
    invalid: list[dict[str, object]] = []
    for row in rows:
        if row.expires_at is not None and row.expires_at <= now:
            expired.append(row.id)
        elif (problem := contract_violation(row)) is not None:
            invalid.append({"b_id": row.id, "b_error": problem})
            metrics.publish_failures().labels("invalid").inc()
            log.error("outbox_row_invalid", notification_id=row.notification_id, errors=problem)
        else:
            claimed.append((row, build_message(row)))
    if expired:
        conn.execute(sa.update(OUTBOX).where(OUTBOX.c.id.in_(expired)).values(
            status="expired", last_error="due after the booking started; not sent", locked_until=None))
    if invalid:
        conn.execute(sa.update(OUTBOX).where(OUTBOX.c.id == sa.bindparam("b_id")).values(
            status="invalid", last_error=sa.bindparam("b_error"), locked_until=None), invalid)
    return claimed
