"""The delivery log in SQL (SQLAlchemy Core): the production adapter of ``delivery.DeliveryLog``.

Every operation is one short transaction, and the hot path is lean: dispatch
is one transaction per notification, a send one claiming write (an
``UPDATE … RETURNING`` that also checks staleness) and one recording write.
On SQLite every transaction begins ``IMMEDIATE`` (SQLite has no ``FOR
UPDATE``), so claims are atomic across threads and worker processes.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite

from .delivery import STALE_REASON, BookingRef, Claim, ClaimResult, Opened, delivery_id, utcnow
from .status import CLAIMABLE, FINAL, DeliveryStatus
from .tables import booking_states, dead_letters, deliveries

_CLAIMABLE = [s.value for s in CLAIMABLE]
_FINAL = [s.value for s in FINAL]


def make_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=16, max_overflow=64
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            dbapi_connection.isolation_level = None  # BEGIN is emitted below
            cursor = dbapi_connection.cursor()
            # WAL: the CLI and the other worker processes read while one writes.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            # WAL + NORMAL survives a killed worker (the SIGKILL test); only an OS crash can
            # lose the last commits. FULL costs an fsync per commit.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # No pool_pre_ping: a dead pooled connection fails one task, which is retried anyway.
    return sa.create_engine(url, pool_size=16, max_overflow=64)


def _insert(engine: sa.Engine, table: sa.Table):
    return (postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert)(table)


_stale_clause = sa.exists().where(
    booking_states.c.booking_id == deliveries.c.booking_id,
    booking_states.c.cancelled_version > deliveries.c.booking_version,
)


class SqlDeliveryLog:
    """The delivery log of one database. One instance per process; thread-safe."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self._for_update = self.engine.dialect.name == "postgresql"
        self._claim = (
            sa.update(deliveries)
            .where(deliveries.c.delivery_id == sa.bindparam("did"),
                   sa.or_(deliveries.c.status.in_(_CLAIMABLE),
                          sa.and_(deliveries.c.status == DeliveryStatus.SENDING.value,
                                  deliveries.c.lease_expires_at < sa.bindparam("now"))),
                   ~_stale_clause)
            .values(status=DeliveryStatus.SENDING.value, attempts=deliveries.c.attempts + 1,
                    lease_owner=sa.bindparam("owner"), lease_expires_at=sa.bindparam("until"),
                    updated_at=sa.bindparam("now"))
            .returning(deliveries.c.attempts)
        )

    # -- dispatch ---------------------------------------------------------------

    def open(self, notification_id: str, event: str, booking: BookingRef,
             addresses: list[tuple[str, str]], now: datetime) -> Opened:
        nid = str(notification_id)
        with self.engine.begin() as conn:
            stale = self._observe_booking(conn, booking, now)
            status = DeliveryStatus.STALE if stale else DeliveryStatus.PENDING
            rows = [
                {"delivery_id": delivery_id(nid, channel, address), "notification_id": nid, "channel": channel,
                 "address": address, "booking_id": booking.booking_id, "booking_version": booking.version,
                 "event": event, "status": status.value, "attempts": 0, "created_at": now, "updated_at": now,
                 "last_error": STALE_REASON if stale else None}
                for channel, address in addresses
            ]
            if rows:
                conn.execute(_insert(self.engine, deliveries).on_conflict_do_nothing(), rows)
            if stale:
                conn.execute(sa.update(deliveries)
                             .where(deliveries.c.notification_id == nid,
                                    deliveries.c.status.in_([DeliveryStatus.PENDING.value, DeliveryStatus.FAILED.value]))
                             .values(status=DeliveryStatus.STALE.value, last_error=STALE_REASON, updated_at=now))
                return Opened(stale=True, pending=[])
            found = dict(conn.execute(sa.select(deliveries.c.delivery_id, deliveries.c.status)
                                      .where(deliveries.c.notification_id == nid)).all())
        pending = []
        for row in rows:
            if found.get(row["delivery_id"]) == DeliveryStatus.PENDING.value:
                pending.append((row["channel"], row["address"], row["delivery_id"]))
        return Opened(stale=False, pending=pending)

    def _observe_booking(self, conn, booking: BookingRef, now: datetime) -> bool:
        """Record a processed booking version; True when it is older than a processed cancellation."""
        select = sa.select(booking_states.c.highest_version, booking_states.c.cancelled_version).where(
            booking_states.c.booking_id == booking.booking_id)
        if self._for_update:
            select = select.with_for_update()
        state = conn.execute(select).first()
        if state is None:
            inserted = conn.execute(
                _insert(self.engine, booking_states).on_conflict_do_nothing().returning(booking_states.c.booking_id),
                {"booking_id": booking.booking_id, "highest_version": booking.version,
                 "cancelled_version": booking.version if booking.cancelled else None, "updated_at": now},
            ).first()
            if inserted is not None:
                return False
            state = conn.execute(select).first()  # a concurrent dispatch inserted it first
        highest, cancelled = state
        if cancelled is not None and booking.version < cancelled:
            return True
        values = {"highest_version": max(highest, booking.version), "updated_at": now}
        if booking.cancelled:
            values["cancelled_version"] = max(cancelled or 0, booking.version)
        conn.execute(sa.update(booking_states).where(booking_states.c.booking_id == booking.booking_id).values(**values))
        return False

    # -- one send ---------------------------------------------------------------

    def claim(self, delivery_id: str, owner: str, now: datetime, lease_until: datetime) -> Claim:
        with self.engine.begin() as conn:
            row = conn.execute(self._claim, {"did": delivery_id, "owner": owner, "until": lease_until, "now": now}).first()
            if row is not None:
                return Claim(ClaimResult.CLAIMED, attempt=row[0])
            return self._why_not(conn, delivery_id, now)

    def take_over(self, delivery_id: str, dead_owner: str, owner: str, now: datetime, lease_until: datetime) -> Claim:
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.update(deliveries)
                .where(deliveries.c.delivery_id == delivery_id, deliveries.c.status == DeliveryStatus.SENDING.value,
                       deliveries.c.lease_owner == dead_owner, ~_stale_clause)
                .values(attempts=deliveries.c.attempts + 1, lease_owner=owner, lease_expires_at=lease_until, updated_at=now)
                .returning(deliveries.c.attempts)
            ).first()
            if row is not None:
                return Claim(ClaimResult.CLAIMED, attempt=row[0])
            return self._why_not(conn, delivery_id, now)

    def _why_not(self, conn, delivery_id: str, now: datetime) -> Claim:
        """The rare path: classify a failed claim (and record a stale delivery as such)."""
        row = conn.execute(
            sa.select(deliveries.c.status, deliveries.c.attempts, deliveries.c.lease_owner,
                      deliveries.c.lease_expires_at, _stale_clause.label("stale"))
            .where(deliveries.c.delivery_id == delivery_id)
        ).first()
        if row is None:
            return Claim(ClaimResult.MISSING)
        if row.status in _FINAL:
            return Claim(ClaimResult.FINAL)
        if row.status == DeliveryStatus.SENDING.value:
            return Claim(ClaimResult.LEASED, attempt=row.attempts, lease_owner=row.lease_owner,
                         lease_expires_at=_aware(row.lease_expires_at))
        if row.stale:
            conn.execute(sa.update(deliveries).where(deliveries.c.delivery_id == delivery_id)
                         .values(status=DeliveryStatus.STALE.value, last_error=STALE_REASON, updated_at=now))
            return Claim(ClaimResult.STALE)
        raise RuntimeError(f"delivery {delivery_id} could not be claimed in state {row.status!r}")

    def finish(self, delivery_id: str, owner: str, attempt: int, status: DeliveryStatus, now: datetime, *,
               error: str | None = None, provider_message_id: str | None = None) -> bool:
        values = {"status": status.value, "updated_at": now, "lease_owner": None, "lease_expires_at": None}
        where = [deliveries.c.delivery_id == delivery_id]
        if status is DeliveryStatus.SENT:
            # The provider took it: that is the truth even if this attempt's lease ran out meanwhile.
            values.update(sent_at=now, provider_message_id=provider_message_id)
            where.append(deliveries.c.status != DeliveryStatus.SENT.value)
        else:
            # Only the attempt that still holds the lease records a failure: never over `sent`,
            # never over a newer attempt.
            values["last_error"] = (error or "")[:2000]
            where += [deliveries.c.status == DeliveryStatus.SENDING.value, deliveries.c.lease_owner == owner,
                      deliveries.c.attempts == attempt]
        with self.engine.begin() as conn:
            return conn.execute(sa.update(deliveries).where(*where).values(**values)).rowcount == 1

    def drop(self, delivery_id: str, status: DeliveryStatus, reason: str, now: datetime) -> bool:
        """Record an unsent delivery as ``stale`` or ``expired``; False when sent or held by a live attempt."""
        with self.engine.begin() as conn:
            done = conn.execute(
                sa.update(deliveries)
                .where(deliveries.c.delivery_id == delivery_id, deliveries.c.status.in_(_CLAIMABLE))
                .values(status=status.value, last_error=reason, updated_at=now)
            ).rowcount == 1
            if done:
                return True
            current = conn.execute(sa.select(deliveries.c.status).where(deliveries.c.delivery_id == delivery_id)).scalar()
            return current in (DeliveryStatus.STALE.value, DeliveryStatus.EXPIRED.value)

    # -- giving up ----------------------------------------------------------------

    def give_up(self, *, message_id: str | None, queue: str | None, task: str | None, reason: str,
                delivery_id: str | None = None, now: datetime | None = None) -> None:
        """A message goes to its dead-letter queue: store why, and mark its delivery ``dead`` (never over sent)."""
        now = now or utcnow()
        with self.engine.begin() as conn:
            if delivery_id:
                conn.execute(sa.update(deliveries)
                             .where(deliveries.c.delivery_id == delivery_id, deliveries.c.status.in_(_CLAIMABLE))
                             .values(status=DeliveryStatus.DEAD.value, last_error=reason[:2000], updated_at=now))
            conn.execute(sa.insert(dead_letters).values(
                message_id=message_id and str(message_id)[:200], queue=queue and str(queue)[:200],
                task=task and str(task)[:200], reason=reason[:4000], created_at=now))

    # -- reading (CLI, tests) ------------------------------------------------------

    def for_notification(self, notification_id: str) -> list:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(deliveries).where(deliveries.c.notification_id == str(notification_id))
                                     .order_by(deliveries.c.channel, deliveries.c.address)))

    def get(self, delivery_id: str):
        with self.engine.connect() as conn:
            return conn.execute(sa.select(deliveries).where(deliveries.c.delivery_id == delivery_id)).first()

    def dead_letter_reasons(self) -> dict[str, str]:
        """message id → latest recorded reason."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(dead_letters.c.message_id, dead_letters.c.reason).order_by(dead_letters.c.id))
            return {mid: reason for mid, reason in rows if mid}


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands timezone-aware columns back naive (in UTC)."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value

_logs: dict[str, SqlDeliveryLog] = {}
_lock = threading.Lock()


def delivery_log(url: str) -> SqlDeliveryLog:
    """The process-wide delivery log of ``url`` (created lazily, never at import)."""
    with _lock:
        if url not in _logs:
            _logs[url] = SqlDeliveryLog(url)
        return _logs[url]
