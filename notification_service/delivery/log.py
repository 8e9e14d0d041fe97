"""The delivery log in SQL: the production adapter of ``delivery.DeliveryLog``.

Every operation is one short transaction, and the hot path is lean: dispatch
is one transaction per notification, a send one claiming write (an
``UPDATE … RETURNING`` that also checks staleness) and one recording write,
each counted in ``notification_db_transactions_total``. Every statement that
changes a delivery's reported status (retrying, sent, dead, stale, expired)
adds one to its ``receipt_seq`` (``RETURNING`` it) and inserts the receipt into
the ``receipts`` outbox in the same transaction: one more INSERT, no more
transactions, and a gapless sequence per delivery (``receipts.py`` publishes
them). On SQLite every
transaction begins ``IMMEDIATE`` (SQLite has no ``FOR UPDATE``), so claims are
atomic across threads and worker processes. The tables are ``tables.py``;
reads for the CLI and tests use SQLAlchemy Core.
"""

from __future__ import annotations

import fcntl
import re
import threading
from contextlib import contextmanager
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy import event

from notification_service.delivery.machine import (
    STALE_REASON,
    BookingRef,
    Claim,
    ClaimResult,
    Opened,
    delivery_id,
    utcnow,
)
from notification_service.delivery.status import CLAIMABLE, FINAL, DeliveryStatus
from notification_service.delivery.tables import dead_letters, deliveries, receipts
from notification_service.runtime import metrics

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


_STALE = ("EXISTS (SELECT 1 FROM booking_states b WHERE b.booking_id = deliveries.booking_id"
          " AND b.cancelled_version > deliveries.booking_version)")
_CLAIMABLE_SQL = ", ".join(f"'{s}'" for s in _CLAIMABLE)

#: The hot path's statements, written once with ``:name`` parameters (see ``_paramstyle``).
SQL = {
    "select_booking": "SELECT highest_version, cancelled_version FROM booking_states WHERE booking_id = :bid",
    "insert_booking": "INSERT INTO booking_states (booking_id, highest_version, cancelled_version, updated_at)"
                      " VALUES (:bid, :version, :cancelled, :now) ON CONFLICT DO NOTHING RETURNING booking_id",
    "update_booking": "UPDATE booking_states SET highest_version = MAX_(highest_version, :version),"
                      " updated_at = :now WHERE booking_id = :bid",
    "update_booking_cancelled": "UPDATE booking_states SET highest_version = MAX_(highest_version, :version),"
                                " cancelled_version = MAX_(COALESCE(cancelled_version, 0), :version),"
                                " updated_at = :now WHERE booking_id = :bid",
    "insert_delivery": "INSERT INTO deliveries (delivery_id, notification_id, channel, address, booking_id,"
                       " booking_version, event, status, attempts, last_error, created_at, updated_at,"
                       " correlation_id, receipt_seq)"
                       " VALUES (:did, :nid, :channel, :address, :bid, :version, :event, :status, 0, :error,"
                       " :now, :now, :cid, :seq) ON CONFLICT DO NOTHING RETURNING delivery_id",
    "pending_of_notification": "SELECT delivery_id FROM deliveries WHERE notification_id = :nid"
                               " AND status = 'pending'",
    "stale_notification": "UPDATE deliveries SET status = 'stale', last_error = :reason, updated_at = :now,"
                          " receipt_seq = receipt_seq + 1 WHERE notification_id = :nid"
                          " AND status IN ('pending', 'failed') RETURNING delivery_id, receipt_seq, attempts",
    "claim": f"UPDATE deliveries SET status = 'sending', attempts = attempts + 1, lease_owner = :owner,"
             f" lease_expires_at = :until, updated_at = :now WHERE delivery_id = :did"
             f" AND (status IN ({_CLAIMABLE_SQL}) OR (status = 'sending' AND lease_expires_at < :now))"
             f" AND NOT {_STALE} RETURNING attempts",
    "take_over": f"UPDATE deliveries SET attempts = attempts + 1, lease_owner = :owner, lease_expires_at = :until,"
                 f" updated_at = :now WHERE delivery_id = :did AND status = 'sending' AND lease_owner = :dead"
                 f" AND NOT {_STALE} RETURNING attempts",
    "why_not": f"SELECT status, attempts, lease_owner, lease_expires_at, {_STALE} FROM deliveries"
               f" WHERE delivery_id = :did",
    "mark_stale": "UPDATE deliveries SET status = 'stale', last_error = :reason, updated_at = :now,"
                  " receipt_seq = receipt_seq + 1 WHERE delivery_id = :did RETURNING receipt_seq, attempts",
    "finish_sent": "UPDATE deliveries SET status = 'sent', sent_at = :now, provider_message_id = :pid,"
                   " lease_owner = NULL, lease_expires_at = NULL, updated_at = :now, receipt_seq = receipt_seq + 1"
                   " WHERE delivery_id = :did AND status <> 'sent' RETURNING receipt_seq, attempts",
    "finish_failed": "UPDATE deliveries SET status = :status, last_error = :error, lease_owner = NULL,"
                     " lease_expires_at = NULL, updated_at = :now, receipt_seq = receipt_seq + 1"
                     " WHERE delivery_id = :did AND status = 'sending' AND lease_owner = :owner"
                     " AND attempts = :attempt RETURNING receipt_seq, attempts",
    "drop": f"UPDATE deliveries SET status = :status, last_error = :reason, updated_at = :now,"
            f" receipt_seq = receipt_seq + 1 WHERE delivery_id = :did AND status IN ({_CLAIMABLE_SQL})"
            f" RETURNING receipt_seq, attempts",
    # Not over `dead`: a permanent failure was recorded dead (and its receipt written) by `finish`.
    "mark_dead": "UPDATE deliveries SET status = 'dead', last_error = :reason, updated_at = :now,"
                 " receipt_seq = receipt_seq + 1 WHERE delivery_id = :did AND status IN ('pending', 'failed')"
                 " RETURNING receipt_seq, attempts",
    "insert_receipt": "INSERT INTO receipts (delivery_id, sequence, status, attempt, reason, provider_message_id,"
                      " occurred_at) VALUES (:did, :seq, :rstatus, :attempt, :reason, :pid, :now)",
    "insert_dead_letter": "INSERT INTO dead_letters (message_id, queue, task, reason, created_at)"
                          " VALUES (:mid, :queue, :task, :reason, :now)",
}


def _paramstyle(sql: str, sqlite_dialect: bool) -> str:
    """SQLite takes ``:name`` as it is; psycopg wants ``%(name)s`` (and GREATEST for a two-value MAX)."""
    if sqlite_dialect:
        return sql.replace("MAX_(", "MAX(")
    sql = sql.replace("MAX_(", "GREATEST(")
    return re.sub(r"(?<!:):([a-z_]+)", r"%(\1)s", sql)


class SqlDeliveryLog:
    """The delivery log of one database. One instance per process; thread-safe.

    The hot path (dispatch, claim, record) runs prepared SQL text on the DBAPI
    connection: SQLAlchemy's statement execution cost more CPU than the
    statements themselves. On SQLite the process keeps one connection and its
    threads take turns on it (a lock), so they never sleep in SQLite's busy
    handler waiting for each other, and worker processes take turns on a
    ``<database>-writelock`` file lock (readers such as the CLI need no lock in
    WAL mode). On PostgreSQL each call checks a pooled connection out.
    """

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.sqlite = self.engine.dialect.name == "sqlite"
        self._lock = threading.Lock()
        self._connection = None
        #: Set after a commit that wrote receipts: wakes this process's receipt publisher.
        self.receipts_written = threading.Event()
        self._local = threading.local()
        self.sql = {name: _paramstyle(text, self.sqlite) for name, text in SQL.items()}
        if not self.sqlite:
            # Concurrent dispatches of one booking take turns (SQLite: BEGIN IMMEDIATE does it).
            self.sql["select_booking"] += " FOR UPDATE"

    # -- transactions -------------------------------------------------------------

    @contextmanager
    def _transaction(self):
        self._local.receipts = False
        with self._raw_transaction() as cursor:
            yield cursor
        if self._local.receipts:
            self.receipts_written.set()

    def _receipt(self, cur, delivery_id: str, seq_and_attempt, status: str, ts, *, reason: str | None = None,
                 provider_message_id: str | None = None) -> None:
        """Write the receipt of a status change the statement just made (``RETURNING receipt_seq, attempts``)."""
        seq, attempt = seq_and_attempt
        cur.execute(self.sql["insert_receipt"], {"did": delivery_id, "seq": seq, "rstatus": status, "attempt": attempt,
                                                 "reason": reason and reason[:2000], "pid": provider_message_id,
                                                 "now": ts})
        self._local.receipts = True

    @contextmanager
    def _raw_transaction(self):
        if self.sqlite:
            with self._lock:
                if self._connection is None:
                    self._connection = self.engine.raw_connection()
                    self._writelock = open(self.engine.url.database + "-writelock", "a+b")
                # Worker processes queue on a file lock the kernel hands over at once, instead
                # of sleeping in SQLite's busy handler (1, 2, 5 … 100 ms steps) for each other.
                fcntl.flock(self._writelock, fcntl.LOCK_EX)
                cursor = self._connection.cursor()
                try:
                    cursor.execute("BEGIN IMMEDIATE")
                    try:
                        yield cursor
                    except BaseException:
                        cursor.execute("ROLLBACK")
                        raise
                    else:
                        cursor.execute("COMMIT")
                finally:
                    fcntl.flock(self._writelock, fcntl.LOCK_UN)
                    metrics.DB_TRANSACTIONS.inc()
                    cursor.close()
            return
        connection = self.engine.raw_connection()
        try:
            cursor = connection.cursor()
            try:
                yield cursor
            except BaseException:
                connection.rollback()
                raise
            else:
                connection.commit()
            finally:
                metrics.DB_TRANSACTIONS.inc()
                cursor.close()
        finally:
            connection.close()  # back to the pool

    def write_transaction(self):
        """A DBAPI cursor in one write transaction taken as the hot path takes it (on SQLite: the
        process's connection, its thread lock and the workers' file lock), counted like the rest."""
        return self._raw_transaction()

    def prepare(self, sql: str) -> str:
        """``sql`` written with ``:name`` parameters, in this driver's parameter style."""
        return _paramstyle(sql, self.sqlite)

    def time(self, moment: datetime):
        """A timestamp as the column stores it (SQLAlchemy's SQLite format: naive UTC text)."""
        if self.sqlite:
            return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        return moment

    # -- dispatch ---------------------------------------------------------------

    def open(self, notification_id: str, event: str, booking: BookingRef,
             addresses: list[tuple[str, str]], now: datetime, correlation_id: str | None = None) -> Opened:
        nid, ts = str(notification_id), self.time(now)
        rows = [(channel, address, delivery_id(nid, channel, address)) for channel, address in addresses]
        common = {"nid": nid, "bid": booking.booking_id, "version": booking.version, "event": event, "now": ts,
                  "cid": correlation_id and str(correlation_id)[:200]}
        with self._transaction() as cur:
            if self._observe_booking(cur, booking, ts):
                cur.execute(self.sql["stale_notification"], {"nid": nid, "now": ts, "reason": STALE_REASON})
                for did, seq, attempts in cur.fetchall():
                    self._receipt(cur, did, (seq, attempts), "stale", ts, reason=STALE_REASON)
                for channel, address, did in rows:
                    cur.execute(self.sql["insert_delivery"], {
                        **common, "did": did, "channel": channel, "address": address,
                        "status": DeliveryStatus.STALE.value, "error": STALE_REASON, "seq": 1})
                    if cur.fetchall():  # new, and stale from the start: its first receipt
                        self._receipt(cur, did, (1, 0), "stale", ts, reason=STALE_REASON)
                return Opened(stale=True, pending=[])
            fresh = set()
            for channel, address, did in rows:
                cur.execute(self.sql["insert_delivery"], {
                    **common, "did": did, "channel": channel, "address": address,
                    "status": DeliveryStatus.PENDING.value, "error": None, "seq": 0})
                fresh.update(r[0] for r in cur.fetchall())
            if len(fresh) < len(rows):  # a re-run: which of the older ones are still pending?
                cur.execute(self.sql["pending_of_notification"], {"nid": nid})
                fresh.update(r[0] for r in cur.fetchall())
        return Opened(stale=False, pending=[row for row in rows if row[2] in fresh])

    def _observe_booking(self, cur, booking: BookingRef, ts) -> bool:
        """Record a processed booking version; True when it is older than a processed cancellation."""
        params = {"bid": booking.booking_id, "version": booking.version, "now": ts,
                  "cancelled": booking.version if booking.cancelled else None}
        cur.execute(self.sql["select_booking"], params)
        state = cur.fetchone()
        if state is None:
            cur.execute(self.sql["insert_booking"], params)
            if cur.fetchall():
                return False
            cur.execute(self.sql["select_booking"], params)  # a concurrent dispatch inserted it first
            state = cur.fetchone()
        highest, cancelled = state
        if cancelled is not None and booking.version < cancelled:
            return True
        if booking.cancelled and booking.version > (cancelled or 0):
            cur.execute(self.sql["update_booking_cancelled"], params)
        elif booking.version > highest:
            cur.execute(self.sql["update_booking"], params)
        return False

    # -- one send ---------------------------------------------------------------

    def claim(self, delivery_id: str, owner: str, now: datetime, lease_until: datetime) -> Claim:
        return self._lease("claim", {"did": delivery_id, "owner": owner, "until": self.time(lease_until),
                                     "now": self.time(now)})

    def take_over(self, delivery_id: str, dead_owner: str, owner: str, now: datetime, lease_until: datetime) -> Claim:
        return self._lease("take_over", {"did": delivery_id, "dead": dead_owner, "owner": owner,
                                         "until": self.time(lease_until), "now": self.time(now)})

    def _lease(self, statement: str, params: dict) -> Claim:
        """Run the leasing ``statement``; CLAIMED with the new attempt, or why the delivery is not ours."""
        with self._transaction() as cur:
            cur.execute(self.sql[statement], params)
            row = cur.fetchone()
            if row is not None:
                return Claim(ClaimResult.CLAIMED, attempt=row[0])
            return self._why_not(cur, params["did"], params["now"])

    def _why_not(self, cur, delivery_id: str, ts) -> Claim:
        """The rare path: classify a failed claim (and record a stale delivery as such)."""
        cur.execute(self.sql["why_not"], {"did": delivery_id})
        row = cur.fetchone()
        if row is None:
            return Claim(ClaimResult.MISSING)
        status, attempts, owner, expires, stale = row
        if status in _FINAL:
            return Claim(ClaimResult.FINAL)
        if status == DeliveryStatus.SENDING.value:
            return Claim(ClaimResult.LEASED, attempt=attempts, lease_owner=owner, lease_expires_at=aware(expires))
        if stale:
            cur.execute(self.sql["mark_stale"], {"did": delivery_id, "now": ts, "reason": STALE_REASON})
            self._receipt(cur, delivery_id, cur.fetchone(), "stale", ts, reason=STALE_REASON)
            return Claim(ClaimResult.STALE)
        raise RuntimeError(f"delivery {delivery_id} could not be claimed in state {status!r}")

    def finish(self, delivery_id: str, owner: str, attempt: int, status: DeliveryStatus, now: datetime, *,
               error: str | None = None, provider_message_id: str | None = None) -> bool:
        ts = self.time(now)
        with self._transaction() as cur:
            if status is DeliveryStatus.SENT:
                # The provider took it: that is the truth even if this attempt's lease ran out meanwhile.
                cur.execute(self.sql["finish_sent"], {"did": delivery_id, "now": ts, "pid": provider_message_id})
                row = cur.fetchone()
                if row is not None:
                    self._receipt(cur, delivery_id, row, "sent", ts, provider_message_id=provider_message_id)
            else:
                # Only the attempt that still holds the lease records a failure: never over `sent`,
                # never over a newer attempt.
                cur.execute(self.sql["finish_failed"], {"did": delivery_id, "now": ts, "status": status.value,
                                                        "error": (error or "")[:2000], "owner": owner,
                                                        "attempt": attempt})
                row = cur.fetchone()
                if row is not None:
                    reported = "dead" if status is DeliveryStatus.DEAD else "retrying"
                    self._receipt(cur, delivery_id, row, reported, ts, reason=error)
            return row is not None

    def drop(self, delivery_id: str, status: DeliveryStatus, reason: str, now: datetime) -> bool:
        """Record an unsent delivery as ``stale`` or ``expired``; False when sent or held by a live attempt."""
        with self._transaction() as cur:
            ts = self.time(now)
            cur.execute(self.sql["drop"], {"did": delivery_id, "status": status.value, "reason": reason, "now": ts})
            row = cur.fetchone()
            if row is not None:
                self._receipt(cur, delivery_id, row, status.value, ts, reason=reason)
                return True
            cur.execute(self.sql["why_not"], {"did": delivery_id})
            row = cur.fetchone()
            return row is not None and row[0] in (DeliveryStatus.STALE.value, DeliveryStatus.EXPIRED.value)

    # -- giving up ----------------------------------------------------------------

    def give_up(self, *, message_id: str | None, queue: str | None, task: str | None, reason: str,
                delivery_id: str | None = None, now: datetime | None = None) -> None:
        """A message goes to its dead-letter queue: store why, and mark its delivery ``dead`` (never over sent)."""
        ts = self.time(now or utcnow())
        with self._transaction() as cur:
            if delivery_id:
                cur.execute(self.sql["mark_dead"], {"did": delivery_id, "now": ts, "reason": reason[:2000]})
                row = cur.fetchone()
                if row is not None:
                    self._receipt(cur, delivery_id, row, "dead", ts, reason=reason)
            cur.execute(self.sql["insert_dead_letter"], {
                "mid": message_id and str(message_id)[:200], "queue": queue and str(queue)[:200],
                "task": task and str(task)[:200], "reason": reason[:4000], "now": ts})

    # -- reading (CLI, tests) ------------------------------------------------------

    def for_notification(self, notification_id: str) -> list:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(deliveries).where(deliveries.c.notification_id == str(notification_id))
                                     .order_by(deliveries.c.channel, deliveries.c.address)))

    def receipts_of(self, delivery_id: str) -> list:
        """The receipts outbox rows of one delivery, in sequence order (tests, operators)."""
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(receipts).where(receipts.c.delivery_id == delivery_id)
                                     .order_by(receipts.c.sequence)))

    def get(self, delivery_id: str):
        with self.engine.connect() as conn:
            return conn.execute(sa.select(deliveries).where(deliveries.c.delivery_id == delivery_id)).first()

    def dead_letter_reasons(self) -> dict[str, str]:
        """message id → latest recorded reason."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(dead_letters.c.message_id, dead_letters.c.reason).order_by(dead_letters.c.id))
            return {mid: reason for mid, reason in rows if mid}


def aware(value: datetime | str | None) -> datetime | None:
    """A stored timestamp as an aware datetime (SQLite keeps naive UTC text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value

_logs: dict[str, SqlDeliveryLog] = {}
_lock = threading.Lock()


def delivery_log(url: str) -> SqlDeliveryLog:
    """The process-wide delivery log of ``url`` (created lazily, never at import)."""
    with _lock:
        if url not in _logs:
            _logs[url] = SqlDeliveryLog(url)
        return _logs[url]
