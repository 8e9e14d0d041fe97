"""Tables of the booking service: bookings, their outbox, delivery receipts, dead-letter reasons, idempotency keys."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, ClassVar

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

#: Status of a booking that holds its slot.
ACTIVE = "confirmed"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware datetimes on every backend (SQLite stores naive UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    if TYPE_CHECKING:
        # DeclarativeBase types __table__ as any FromClause (a class may be mapped to
        # a subquery); every class here declares __tablename__, so it is a Table, which
        # is what sa.insert/sa.update and the statement builders take.
        __table__: ClassVar[sa.Table]


class Resource(Base):
    """One row per bookable resource; locked FOR UPDATE to serialise its bookings."""

    __tablename__ = "resources"
    id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)


class Booking(Base):
    __tablename__ = "bookings"
    __table_args__ = (sa.Index("ix_bookings_resource_time", "resource_id", "starts_at", "ends_at"),)

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    resource_id: Mapped[str] = mapped_column(sa.String(200), sa.ForeignKey("resources.id"), nullable=False)
    status: Mapped[str] = mapped_column(sa.String(20), nullable=False, default=ACTIVE, index=True)
    version: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=1)
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    customer_name: Mapped[str] = mapped_column(sa.String(200), nullable=False)
    customer_email: Mapped[str] = mapped_column(sa.String(320), nullable=False)
    customer_locale: Mapped[str] = mapped_column(sa.String(35), nullable=False, default="en")
    customer_timezone: Mapped[str] = mapped_column(sa.String(64), nullable=False, default="UTC")
    push_tokens: Mapped[list] = mapped_column(sa.JSON, nullable=False, default=list)
    notes: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class OutboxMessage(Base):
    """A notification promised by a booking change, waiting to be published."""

    __tablename__ = "outbox"
    __table_args__ = (sa.Index("ix_outbox_due", "status", "available_at"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    #: Also the Celery task id: stable across republishing, the consumer's dedupe key.
    notification_id: Mapped[str] = mapped_column(sa.String(36), unique=True, nullable=False)
    booking_id: Mapped[str] = mapped_column(sa.String(36), sa.ForeignKey("bookings.id"), nullable=False, index=True)
    event: Mapped[str] = mapped_column(sa.String(40), nullable=False)
    priority: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    #: The contract message (JSON-ready dict), validated strictly when written.
    payload: Mapped[dict] = mapped_column(sa.JSON, nullable=False)
    #: sha256 of the payload as validated (``outbox.digest``): the relay validates
    #: again only a payload that no longer matches it (edited, or written before 0003).
    payload_sha256: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    correlation_id: Mapped[str] = mapped_column(sa.String(200), nullable=False)
    #: pending → published | superseded | expired | invalid
    status: Mapped[str] = mapped_column(sa.String(20), nullable=False, default="pending")
    available_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: Set while a relay is publishing the row; another relay leaves it alone until then.
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    last_error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class NotificationReceipt(Base):
    """A delivery receipt (``notification.status``) from the notification service, stored once.

    ``(delivery_id, sequence)`` is unique: a redelivered or duplicated receipt
    changes nothing. A delivery's current state is its receipt with the highest
    sequence, whatever order they arrived in. Addresses are masked by the sender.
    """

    __tablename__ = "notification_receipts"
    __table_args__ = (sa.UniqueConstraint("delivery_id", "sequence", name="uq_notification_receipt"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(sa.String(36), nullable=False)
    sequence: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    notification_id: Mapped[str] = mapped_column(sa.String(36), nullable=False, index=True)
    booking_id: Mapped[str] = mapped_column(sa.String(36), nullable=False, index=True)
    booking_version: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    event: Mapped[str] = mapped_column(sa.String(40), nullable=False)
    channel: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    #: Masked by the notification service (a***@example.org, devi…42).
    recipient: Mapped[str] = mapped_column(sa.String(300), nullable=False)
    #: sent | retrying | dead | stale | expired | delivered | bounced | complained | suppressed, or one this
    #: service does not know yet (an open set, ``shared.receipts.STATUS_PATTERN``: at most 32 characters).
    status: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    attempt: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    reason: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    provider_message_id: Mapped[str | None] = mapped_column(sa.String(500), nullable=True)
    #: The provider that took the message (email_http, push_file …), or that may have it (retrying); None before.
    provider: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    correlation_id: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    #: When the consumer stored it (the age of the newest one is the consumer's lag in /readyz).
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow, index=True)


class ReceiptDeadLetter(Base):
    """Why the receipts consumer dead-lettered a message into ``booking.receipts.dlq``, written before the reject.

    The broker's ``x-death`` says only "rejected"; ``booking-service receipts-dlq list`` shows
    this reason next to each dead letter, found by message id (the latest row of an id wins).
    The reason names fields and error classes, never a value (``receipts.poison.reason``).
    """

    __tablename__ = "receipt_dead_letters"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    #: The AMQP message id as the consumer read it (at most 100 characters); None when it had none.
    message_id: Mapped[str | None] = mapped_column(sa.String(100), nullable=True, index=True)
    routing_key: Mapped[str | None] = mapped_column(sa.String(255), nullable=True)
    reason: Mapped[str] = mapped_column(sa.String(500), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class IdempotencyKey(Base):
    """The first response to a POST carrying an Idempotency-Key, replayed on retries."""

    __tablename__ = "idempotency_keys"

    #: sha256 of the API key, so two clients' keys never collide.
    client: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    request_hash: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    status_code: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    response: Mapped[dict] = mapped_column(sa.JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
