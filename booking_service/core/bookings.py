"""The service layer: create, cancel and reschedule bookings with their outbox rows.

Each change is one transaction: the booking change and the notifications it
promises commit together or not at all. Creating a booking, the hot path, is
one short transaction of fixed driver SQL (``booking_insert``) whose values
(ids, payloads, validation, parameters) are all built before it begins; cancel
and reschedule use the ORM.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

import shared
from booking_service.core import outbox
from booking_service.core.errors import Conflict, NotFound
from booking_service.storage import booking_insert
from booking_service.storage.models import ACTIVE, Booking, Resource, utcnow

RESOURCES = Resource.__table__
BOOKINGS = Booking.__table__


@dataclass(frozen=True)
class NewBooking:
    resource_id: str
    starts_at: datetime
    ends_at: datetime
    customer_name: str
    customer_email: str
    customer_locale: str = "en"
    customer_timezone: str = "UTC"
    push_tokens: tuple[str, ...] = ()
    notes: str | None = None


def _lock_resource(session: Session, resource_id: str) -> None:
    """Serialise changes of one resource's bookings (ORM flavour of ``_lock_resource_core``)."""
    _lock_resource_core(session.connection(), resource_id)


def _lock_resource_core(conn: sa.Connection, resource_id: str) -> None:
    """Create the resource row if missing and lock it until the transaction ends.

    PostgreSQL: an upsert that always touches the row locks it in one round
    trip, so concurrent transactions for the same resource queue up while
    others run freely. SQLite: the transaction already holds the one write lock.
    """
    if conn.dialect.name == "sqlite":
        conn.execute(sqlite_insert(RESOURCES).values(id=resource_id).on_conflict_do_nothing())
        return
    statement = pg_insert(RESOURCES).values(id=resource_id)
    conn.execute(statement.on_conflict_do_update(index_elements=[RESOURCES.c.id], set_={"id": statement.excluded.id}))


def _overlap(resource_id: str, starts_at: datetime, ends_at: datetime, ignore: str | None = None) -> sa.Select:
    query = sa.select(BOOKINGS.c.id).where(
        BOOKINGS.c.resource_id == resource_id,
        BOOKINGS.c.status == ACTIVE,
        BOOKINGS.c.starts_at < ends_at,
        BOOKINGS.c.ends_at > starts_at,
    )
    if ignore:
        query = query.where(BOOKINGS.c.id != ignore)
    return query.limit(1)


def _refuse_overlap(conn: sa.Connection, resource_id: str, starts_at: datetime, ends_at: datetime,
                    ignore: str | None = None) -> None:
    if conn.execute(_overlap(resource_id, starts_at, ends_at, ignore)).first() is not None:
        raise Conflict(f"Resource {resource_id!r} is already booked between {starts_at.isoformat()} and "
                       f"{ends_at.isoformat()}.")


@dataclass(frozen=True)
class IdempotencyRecord:
    """The Idempotency-Key of a create and the response it is answered with from now on."""

    client: str
    key: str
    request_hash: str


def prepare(new: NewBooking, correlation_id: str, reminder_lead: timedelta) -> tuple[dict, list[dict]]:
    """Everything a booking's transaction writes, built before it begins (no lock held meanwhile).

    Returns the booking's column values and its outbox rows (payloads built and
    validated against the contract).
    """
    now = utcnow()
    booking = {
        "id": str(uuid.uuid4()),
        "resource_id": new.resource_id,
        "status": ACTIVE,
        "version": 1,
        "starts_at": new.starts_at,
        "ends_at": new.ends_at,
        "customer_name": new.customer_name,
        "customer_email": new.customer_email,
        "customer_locale": new.customer_locale,
        "customer_timezone": new.customer_timezone,
        "push_tokens": list(new.push_tokens),
        "notes": new.notes,
        "created_at": now,
        "updated_at": now,
    }
    return booking, outbox.rows_for_new_booking(booking, correlation_id, reminder_lead, now)


def create(engine: sa.Engine, booking: dict, outbox_rows: list[dict], response: dict | None = None,
           idempotency: IdempotencyRecord | None = None) -> None:
    """Write a prepared booking and its outbox rows in one short transaction (driver SQL, ``booking_insert``).

    Raises ``Conflict`` when the slot is taken, ``IntegrityError`` when the
    Idempotency-Key was used already (the caller replays the stored response).
    """
    statements = booking_insert.statements_for(engine)
    booking_insert.write(engine, statements, booking_insert.parameters(statements, booking, outbox_rows, response,
                                                                       idempotency))


def get(session: Session, booking_id: str) -> Booking:
    booking = session.get(Booking, booking_id)
    if booking is None:
        raise NotFound(f"Booking {booking_id} does not exist.")
    return booking


def _get_for_change(session: Session, booking_id: str) -> Booking:
    booking = get(session, booking_id)
    _lock_resource(session, booking.resource_id)
    session.refresh(booking)
    if booking.status != ACTIVE:
        raise Conflict(f"Booking {booking_id} is {booking.status} and cannot change.")
    return booking


def cancel(session: Session, booking_id: str, correlation_id: str) -> Booking:
    booking = _get_for_change(session, booking_id)
    booking.status = "cancelled"
    booking.version += 1
    booking.updated_at = utcnow()
    outbox.supersede_reminders(session, booking.id)
    outbox.enqueue(session, booking, shared.Event.CANCELLED, correlation_id)
    return booking


def reschedules(booking: Booking) -> int:
    """Times ``booking`` was rescheduled: its version - 1, as every change of an active booking is a reschedule."""
    return booking.version - 1


def reschedule(session: Session, booking_id: str, starts_at: datetime, ends_at: datetime, correlation_id: str,
               reminder_lead: timedelta, max_reschedules: int) -> Booking:
    """Move an active booking; ``Conflict`` when the slot is taken or it was moved ``max_reschedules`` times."""
    booking = _get_for_change(session, booking_id)
    if reschedules(booking) >= max_reschedules:
        # Each move stores and sends two more notifications to every address of the booking: without
        # a limit one booking could be moved, and its customer notified, without end.
        raise Conflict(f"Booking {booking_id} was rescheduled {reschedules(booking)} times, the limit "
                       f"(BOOKING_MAX_RESCHEDULES={max_reschedules}); cancel it and make a new booking instead.")
    _refuse_overlap(session.connection(), booking.resource_id, starts_at, ends_at, ignore=booking.id)
    previous = booking.starts_at
    booking.starts_at, booking.ends_at = starts_at, ends_at
    booking.version += 1
    booking.updated_at = utcnow()
    outbox.supersede_reminders(session, booking.id)
    outbox.enqueue(session, booking, shared.Event.RESCHEDULED, correlation_id, previous_starts_at=previous)
    outbox.schedule_reminder(session, booking, correlation_id, reminder_lead)
    return booking


def search(session: Session, *, resource_id: str | None = None, status: str | None = None,
           starts_from: datetime | None = None, starts_to: datetime | None = None) -> sa.Select:
    query = sa.select(Booking).order_by(Booking.starts_at, Booking.id)
    if resource_id:
        query = query.where(Booking.resource_id == resource_id)
    if status:
        query = query.where(Booking.status == status)
    if starts_from:
        query = query.where(Booking.ends_at > starts_from)
    if starts_to:
        query = query.where(Booking.starts_at < starts_to)
    return query
