"""The delivery log: SQLAlchemy 2 models and the few operations the tasks need.

The log makes sending idempotent: a delivery row keyed by (notification id,
channel, address) is claimed before the provider is called and marked sent
after; a redelivered message whose row is already ``sent`` is skipped.
"""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

#: Delivery states. ``sending`` = claimed, provider call in flight (or the worker died there).
STATUSES = ("pending", "sending", "sent", "failed", "dead", "stale", "expired")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Delivery(Base):
    __tablename__ = "deliveries"
    __table_args__ = (sa.UniqueConstraint("notification_id", "channel", "address", name="uq_delivery_address"),)

    delivery_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    notification_id: Mapped[str] = mapped_column(sa.String(36), index=True)
    channel: Mapped[str] = mapped_column(sa.String(16))
    address: Mapped[str] = mapped_column(sa.String(4096))
    booking_id: Mapped[str | None] = mapped_column(sa.String(36), nullable=True)
    booking_version: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    event: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    status: Mapped[str] = mapped_column(sa.String(16), default="pending")
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    provider_message_id: Mapped[str | None] = mapped_column(sa.String(500), nullable=True)
    last_error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)


class BookingState(Base):
    __tablename__ = "booking_states"

    booking_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    highest_version: Mapped[int] = mapped_column(sa.Integer)
    cancelled_version: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class DeadLetter(Base):
    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str | None] = mapped_column(sa.String(200), index=True, nullable=True)
    queue: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    task: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    reason: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)


def delivery_id(notification_id: str, channel: str, address: str) -> str:
    """Stable id of one delivery: the Celery task id and the provider idempotency key."""
    return str(uuid.uuid5(uuid.UUID(str(notification_id)), f"{channel}:{address}"))


def make_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        # One pooled connection per worker thread: SQLAlchemy's default pool of 5
        # closed and reopened connections (and re-ran the PRAGMAs) under -c 8.
        engine = sa.create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=32, max_overflow=8
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            # WAL lets the CLI read while workers write; busy_timeout waits out short locks.
            dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            # WAL + NORMAL survives a killed worker (the SIGKILL test); only an OS crash can
            # lose the last commits. FULL cost an fsync per commit, about a fifth of the rate.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn):
            # SQLite ignores FOR UPDATE. Taking the write lock when the transaction
            # begins makes claim() atomic across threads and worker processes, and
            # avoids the read-then-upgrade deadlock that SQLite answers with BUSY.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


class DeliveryLog:
    """Operations on the log. One instance per process; thread-safe (session per call)."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    # -- deliveries ------------------------------------------------------------

    def ensure(self, *, notification_id: str, channel: str, address: str, booking_id=None,
               booking_version=None, event=None, status: str = "pending") -> Delivery:
        """Insert the delivery row if it is missing and return it."""
        did = delivery_id(notification_id, channel, address)
        with self.sessions.begin() as session:
            row = session.get(Delivery, did)
            if row is None:
                row = Delivery(delivery_id=did, notification_id=str(notification_id), channel=channel,
                               address=address, booking_id=booking_id and str(booking_id),
                               booking_version=booking_version, event=event, status=status, attempts=0)
                session.add(row)
                try:
                    session.flush()
                except sa.exc.IntegrityError:
                    session.rollback()
                    return self.get(did)
            return row

    def get(self, did: str) -> Delivery | None:
        with self.sessions() as session:
            return session.get(Delivery, did)

    def claim(self, did: str, *, redelivered: bool = False) -> tuple[str, Delivery | None]:
        """Take the delivery for one send attempt; returns ``(outcome, row)``.

        * ``claimed``: the row is now ``sending`` and the attempt is counted: go and send;
        * ``done``: already sent, stale or expired: never send again;
        * ``in_flight``: another attempt holds it (``sending``) and this message is not a
          broker redelivery, i.e. a duplicate task from a re-run dispatch: it must not send
          in parallel (SMTP has no idempotency key). A *redelivered* message that finds
          ``sending`` carries the attempt of a worker that died mid-send and takes over;
        * ``missing``: the log has no such delivery.
        """
        with self.sessions.begin() as session:
            row = session.get(Delivery, did, with_for_update=True)
            if row is None:
                return "missing", None
            if row.status in ("sent", "stale", "expired"):
                return "done", row
            if row.status == "sending" and not redelivered:
                return "in_flight", row
            row.status = "sending"
            row.attempts = (row.attempts or 0) + 1
            return "claimed", row

    def mark(self, did: str, status: str, *, error: str | None = None, provider_message_id: str | None = None) -> None:
        with self.sessions.begin() as session:
            row = session.get(Delivery, did, with_for_update=True)
            if row is None:
                return
            row.status = status
            if error is not None:
                row.last_error = error[:2000]
            if provider_message_id is not None:
                row.provider_message_id = provider_message_id
            if status == "sent":
                row.sent_at = utcnow()

    def for_notification(self, notification_id: str) -> list[Delivery]:
        with self.sessions() as session:
            return list(session.scalars(
                sa.select(Delivery).where(Delivery.notification_id == str(notification_id)).order_by(Delivery.channel, Delivery.address)
            ))

    # -- booking states (staleness) --------------------------------------------

    def observe_booking(self, booking_id: str, version: int, cancelled: bool) -> bool:
        """Record a processed booking version; return True when the message is stale.

        Stale = older than a cancellation already processed for that booking.
        """
        booking_id = str(booking_id)
        with self.sessions.begin() as session:
            state = session.get(BookingState, booking_id, with_for_update=True)
            if state is None:
                state = BookingState(booking_id=booking_id, highest_version=version,
                                     cancelled_version=version if cancelled else None)
                session.add(state)
                try:
                    session.flush()
                except sa.exc.IntegrityError:
                    session.rollback()
                    return self.observe_booking(booking_id, version, cancelled)
                return False
            if _older_than_cancellation(state, version):
                return True
            state.highest_version = max(state.highest_version, version)
            if cancelled:
                state.cancelled_version = max(state.cancelled_version or 0, version)
            return False

    def is_stale(self, booking_id: str, version: int) -> bool:
        """True when ``version`` is older than a cancellation already processed for the booking."""
        with self.sessions() as session:
            return _older_than_cancellation(session.get(BookingState, str(booking_id)), int(version))

    def drop(self, did: str, status: str, reason: str) -> bool:
        """Record an unsent delivery as dropped (``stale`` or ``expired``).

        False when it was already sent (or is unknown): then nothing changes.
        """
        with self.sessions.begin() as session:
            row = session.get(Delivery, did, with_for_update=True)
            if row is None or row.status == "sent":
                return False
            if row.status not in ("stale", "expired"):
                row.status = status
                row.last_error = reason
            return True

    # -- dead letters ----------------------------------------------------------

    def record_dead_letter(self, *, message_id: str | None, queue: str | None, task: str | None, reason: str) -> None:
        with self.sessions.begin() as session:
            session.add(DeadLetter(message_id=message_id and str(message_id)[:200], queue=queue, task=task and str(task)[:200], reason=reason[:4000]))

    def dead_letter_reasons(self) -> dict[str, str]:
        """message id → latest recorded reason."""
        with self.sessions() as session:
            rows = session.execute(sa.select(DeadLetter.message_id, DeadLetter.reason).order_by(DeadLetter.id))
            return {mid: reason for mid, reason in rows if mid}


def _older_than_cancellation(state: BookingState | None, version: int) -> bool:
    return state is not None and state.cancelled_version is not None and version < state.cancelled_version


_logs: dict[str, DeliveryLog] = {}
_lock = threading.Lock()


def delivery_log(url: str) -> DeliveryLog:
    """The process-wide DeliveryLog of ``url`` (created lazily, never at import)."""
    with _lock:
        if url not in _logs:
            _logs[url] = DeliveryLog(url)
        return _logs[url]
