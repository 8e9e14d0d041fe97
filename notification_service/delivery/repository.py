"""The delivery log in SQL: the production adapter of ``machine.DeliveryLog``.

Every operation is one short transaction, and the hot path is lean: dispatch
is one transaction per notification, a send one claiming write (an
``UPDATE … RETURNING`` that also checks staleness) and one recording write.
Every statement that changes a delivery's reported status (retrying, sent,
dead, stale, expired) adds one to its ``receipt_seq`` (``RETURNING`` it) and
inserts the receipt into the ``receipts`` outbox in the same transaction: one
more INSERT, no more transactions, and a gapless sequence per delivery
(``receipts/publisher.py`` publishes them). Reads for the CLI and tests use
SQLAlchemy Core over the tables of ``tables.py``.

Over 200 lines because it is one class, the adapter of one port: every method
is one transaction of the delivery's life, and they share the statements and
the receipt written beside each status change.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from notification_service.delivery.engine import make_engine
from notification_service.delivery.machine import (
    STALE_REASON,
    SUPERSEDED_REASON,
    SUPPRESSED_REASON,
    BookingRef,
    Claim,
    ClaimResult,
    Opened,
    delivery_id,
    utcnow,
)
from notification_service.delivery.sql import SQL, for_driver
from notification_service.delivery.status import FINAL, DeliveryStatus
from notification_service.delivery.tables import dead_letters, deliveries, receipts
from notification_service.delivery.timestamps import aware, to_column
from notification_service.delivery.write_lock import WriteLock

_FINAL = [s.value for s in FINAL]


class SqlDeliveryLog:
    """The delivery log of one database. One per process (``log.delivery_log``); thread-safe.

    The hot path (dispatch, claim, record) runs prepared SQL text (``sql.py``)
    on the DBAPI connection of one write transaction (``write_lock.py``).
    """

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.sqlite = self.engine.dialect.name == "sqlite"
        self.writes = WriteLock(self.engine)
        #: Set after a commit that wrote receipts: wakes this process's receipt publisher.
        self.receipts_written = threading.Event()
        self._local = threading.local()
        self.sql = {name: for_driver(text, self.sqlite) for name, text in SQL.items()}
        if not self.sqlite:
            # Concurrent dispatches of one booking take turns (SQLite: BEGIN IMMEDIATE does it).
            self.sql["select_booking"] += " FOR UPDATE"

    # -- transactions -------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        self._local.receipts = False
        with self.writes.transaction() as cursor:
            yield cursor
        if self._local.receipts:
            self.receipts_written.set()

    def write_receipt(self, cur, delivery_id: str, seq_and_attempt, status: str, ts, *, reason: str | None = None,
                 provider_message_id: str | None = None, provider: str | None = None) -> None:
        """Write the receipt of a status change the statement just made (``RETURNING receipt_seq, attempts``)."""
        seq, attempt = seq_and_attempt
        cur.execute(self.sql["insert_receipt"], {"did": delivery_id, "seq": seq, "rstatus": status, "attempt": attempt,
                                                 "reason": reason and reason[:2000], "pid": provider_message_id,
                                                 "now": ts, "provider": provider})
        self._local.receipts = True

    def time(self, moment: datetime) -> datetime | str:
        """A timestamp as the column stores it."""
        return to_column(moment, self.sqlite)

    # -- dispatch ---------------------------------------------------------------

    def open(self, notification_id: str, event: str, booking: BookingRef,
             addresses: list[tuple[str, str]], now: datetime, correlation_id: str | None = None) -> Opened:
        nid, ts = str(notification_id), self.time(now)
        rows = [(channel, address, delivery_id(nid, channel, address)) for channel, address in addresses]
        common = {"nid": nid, "bid": booking.booking_id, "version": booking.version, "event": event, "now": ts,
                  "cid": correlation_id and str(correlation_id)[:200]}
        with self._transaction() as cur:
            cancelled, newer_seen = self._observe_booking(cur, booking, ts)
            if cancelled:
                cur.execute(self.sql["stale_notification"], {"nid": nid, "now": ts, "reason": STALE_REASON})
                for did, seq, attempts in cur.fetchall():
                    self.write_receipt(cur, did, (seq, attempts), "stale", ts, reason=STALE_REASON)
                for channel, address, did in rows:
                    cur.execute(self.sql["insert_delivery"], {
                        **common, "did": did, "channel": channel, "address": address,
                        "status": DeliveryStatus.STALE.value, "error": STALE_REASON, "seq": 1})
                    if cur.fetchall():  # new, and stale from the start: its first receipt
                        self.write_receipt(cur, did, (1, 0), "stale", ts, reason=STALE_REASON)
                return Opened(stale=True, pending=[])
            fresh: set[str] = set()
            for channel, address, did in rows:
                cur.execute(self.sql["insert_delivery"], {
                    **common, "did": did, "channel": channel, "address": address,
                    "status": DeliveryStatus.PENDING.value, "error": None, "seq": 0})
                fresh.update(r[0] for r in cur.fetchall())
            if len(fresh) < len(rows):  # a re-run: which of the older ones are still pending?
                cur.execute(self.sql["pending_of_notification"], {"nid": nid})
                fresh.update(r[0] for r in cur.fetchall())
            superseded: set[str] = set()
            if newer_seen:  # only then can a newer version's message have been opened
                cur.execute(self.sql["stale_superseded"], {"nid": nid, "now": ts, "reason": SUPERSEDED_REASON})
                for did, seq, attempts in cur.fetchall():
                    self.write_receipt(cur, did, (seq, attempts), "stale", ts, reason=SUPERSEDED_REASON)
                    superseded.add(did)
        pending = [row for row in rows if row[2] in fresh - superseded]
        return Opened(stale=bool(superseded) and not pending, pending=pending)

    def _observe_booking(self, cur, booking: BookingRef, ts) -> tuple[bool, bool]:
        """Record a processed booking version.

        Returns (older than a processed cancellation, older than a version processed before).
        """
        params = {"bid": booking.booking_id, "version": booking.version, "now": ts,
                  "cancelled": booking.version if booking.cancelled else None}
        cur.execute(self.sql["select_booking"], params)
        state = cur.fetchone()
        if state is None:
            cur.execute(self.sql["insert_booking"], params)
            if cur.fetchall():
                return False, False
            cur.execute(self.sql["select_booking"], params)  # a concurrent dispatch inserted it first
            state = cur.fetchone()
        highest, cancelled = state
        if cancelled is not None and booking.version < cancelled:
            return True, True
        if booking.cancelled and booking.version > (cancelled or 0):
            cur.execute(self.sql["update_booking_cancelled"], params)
        elif booking.version > highest:
            cur.execute(self.sql["update_booking"], params)
        return False, booking.version < highest

    # -- one send ---------------------------------------------------------------

    def claim(self, delivery_id: str, owner: str, now: datetime, lease_until: datetime, *,
              address_hash: str | None = None) -> Claim:
        return self._lease("claim", {"did": delivery_id, "owner": owner, "until": self.time(lease_until),
                                     "now": self.time(now), "ahash": address_hash})

    def take_over(self, delivery_id: str, dead_owner: str, owner: str, now: datetime, lease_until: datetime, *,
                  address_hash: str | None = None) -> Claim:
        return self._lease("take_over", {"did": delivery_id, "dead": dead_owner, "owner": owner,
                                         "until": self.time(lease_until), "now": self.time(now),
                                         "ahash": address_hash})

    def _lease(self, statement: str, params: dict) -> Claim:
        """Run the leasing ``statement``; CLAIMED with the new attempt, or why the delivery is not ours."""
        with self._transaction() as cur:
            if not self.sqlite:  # SQLite: BEGIN IMMEDIATE already serialises every writer
                cur.execute(self.sql["gate_booking"], params)
            cur.execute(self.sql[statement], params)
            row = cur.fetchone()
            if row is not None:
                return Claim(ClaimResult.CLAIMED, attempt=row[0], provider=row[1])
            return self._why_not(cur, params["did"], params["now"], params.get("dead"), params["ahash"])

    def _why_not(self, cur, delivery_id: str, ts, dead_owner: str | None, address_hash: str | None) -> Claim:
        """The rare path: classify a failed claim, and record a stale delivery as such.

        A stale delivery is recorded stale at once unless a live attempt holds it (a lease that
        has not ended, of an owner not known dead): a copy never waits for a lease that has
        ended, nor for one whose owner is gone. A suppressed address is recorded ``suppressed`` the same way.
        """
        cur.execute(self.sql["why_not"], {"did": delivery_id, "now": ts, "ahash": address_hash})
        row = cur.fetchone()
        if row is None:
            return Claim(ClaimResult.MISSING)
        status, attempts, owner, expires, cancelled, superseded, suppressed = row
        if status in _FINAL:
            return Claim(ClaimResult.FINAL)
        if cancelled or superseded or suppressed:
            reason = STALE_REASON if cancelled else SUPERSEDED_REASON if superseded else SUPPRESSED_REASON
            marked_as = DeliveryStatus.STALE if cancelled or superseded else DeliveryStatus.SUPPRESSED
            cur.execute(self.sql["mark_stale"], {"did": delivery_id, "now": ts, "reason": reason, "dead": dead_owner,
                                                 "status": marked_as.value})
            marked = cur.fetchone()
            if marked is not None:
                self.write_receipt(cur, delivery_id, marked, marked_as.value, ts, reason=reason)
                return Claim(ClaimResult.STALE if marked_as is DeliveryStatus.STALE else ClaimResult.SUPPRESSED)
        if status == DeliveryStatus.SENDING.value:
            return Claim(ClaimResult.LEASED, attempt=attempts, lease_owner=owner, lease_expires_at=aware(expires))
        cur.execute(self.sql["older_in_flight"], {"did": delivery_id, "now": ts})
        older = cur.fetchone()
        if older is not None:
            return Claim(ClaimResult.WAITING, attempt=attempts, lease_owner=older[0], lease_expires_at=aware(older[1]))
        raise RuntimeError(f"delivery {delivery_id} could not be claimed in state {status!r}")

    def finish(self, delivery_id: str, owner: str, attempt: int, status: DeliveryStatus, now: datetime, *,
               error: str | None = None, provider_message_id: str | None = None, provider: str | None = None,
               suppress: str | None = None) -> bool:
        """Record an attempt's outcome; ``suppress`` (a reason) also puts the channel and address on the list."""
        ts = self.time(now)
        with self._transaction() as cur:
            if status is DeliveryStatus.SENT:
                # The provider took it: that is the truth even if this attempt's lease ran out meanwhile.
                cur.execute(self.sql["finish_sent"], {"did": delivery_id, "now": ts, "pid": provider_message_id,
                                                      "provider": provider})
                row = cur.fetchone()
                if row is not None:
                    self.write_receipt(cur, delivery_id, row, "sent", ts, provider_message_id=provider_message_id,
                                  provider=provider)
            else:
                # Only the attempt that still holds the lease records a failure: never over `sent`,
                # never over a newer attempt.
                cur.execute(self.sql["finish_failed"], {"did": delivery_id, "now": ts, "status": status.value,
                                                        "error": (error or "")[:2000], "owner": owner,
                                                        "attempt": attempt, "provider": provider})
                row = cur.fetchone()
                if row is not None:
                    reported = {DeliveryStatus.DEAD: "dead", DeliveryStatus.BOUNCED: "bounced"}.get(status, "retrying")
                    self.write_receipt(cur, delivery_id, row, reported, ts, reason=error, provider=provider)
                if suppress:
                    self._suppress(cur, delivery_id, suppress, ts)
            return row is not None

    def _suppress(self, cur, delivery_id: str, reason: str, ts) -> None:
        from notification_service.suppressions.keys import address_hash
        from notification_service.suppressions.store import upsert

        cur.execute(self.sql["address_of"], {"did": delivery_id})
        channel, address = cur.fetchone()
        upsert(cur, self.sqlite, channel=channel, ahash=address_hash(channel, address), reason=reason,
               source="unregistered", now=ts, expires=None)

    def release(self, delivery_id: str, owner: str, attempt: int, reason: str, now: datetime) -> bool:
        """Give back an attempt that called no provider: ``failed`` with ``reason``, the attempt not counted."""
        ts = self.time(now)
        with self._transaction() as cur:
            cur.execute(self.sql["release"], {"did": delivery_id, "now": ts, "error": reason[:2000], "owner": owner,
                                              "attempt": attempt})
            row = cur.fetchone()
            if row is not None:
                self.write_receipt(cur, delivery_id, row, "retrying", ts, reason=reason)
            return row is not None

    def drop(self, delivery_id: str, status: DeliveryStatus, reason: str, now: datetime) -> bool:
        """Record an unsent delivery as ``stale`` or ``expired``; False when sent or held by a live attempt."""
        with self._transaction() as cur:
            ts = self.time(now)
            cur.execute(self.sql["drop"], {"did": delivery_id, "status": status.value, "reason": reason, "now": ts})
            row = cur.fetchone()
            if row is not None:
                self.write_receipt(cur, delivery_id, row, status.value, ts, reason=reason)
                return True
            cur.execute(self.sql["why_not"], {"did": delivery_id, "now": ts, "ahash": None})
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
                    self.write_receipt(cur, delivery_id, row, "dead", ts, reason=reason)
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
