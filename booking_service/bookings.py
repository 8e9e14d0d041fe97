"""The service layer: create, cancel and reschedule bookings with their outbox rows.

Each function is one transaction: the booking change and the notifications it
promises commit together or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

import shared

from . import outbox
from .db import is_sqlite
from .errors import Conflict, NotFound
from .models import Booking, Resource, utcnow

ACTIVE = "confirmed"


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
    """Serialise bookings of one resource.

    PostgreSQL: the resource row is created if missing and locked FOR UPDATE,
    so concurrent transactions for the same resource queue up while others
    run freely. SQLite: every write transaction already began IMMEDIATE.
    """
    bind = session.get_bind()
    if is_sqlite(bind):
        if session.get(Resource, resource_id) is None:
            session.add(Resource(id=resource_id))
            session.flush()
        return
    from sqlalchemy.dialects.postgresql import insert

    session.execute(insert(Resource).values(id=resource_id).on_conflict_do_nothing())
    session.execute(sa.select(Resource.id).where(Resource.id == resource_id).with_for_update())


def _ensure_free(session: Session, resource_id: str, starts_at: datetime, ends_at: datetime, ignore: str | None = None) -> None:
    query = sa.select(Booking.id).where(
        Booking.resource_id == resource_id,
        Booking.status == ACTIVE,
        Booking.starts_at < ends_at,
        Booking.ends_at > starts_at,
    )
    if ignore:
        query = query.where(Booking.id != ignore)
    clash = session.execute(query.limit(1)).scalar_one_or_none()
    if clash:
        raise Conflict(f"Resource {resource_id!r} is already booked between {starts_at.isoformat()} and {ends_at.isoformat()}.")


def create(session: Session, new: NewBooking, correlation_id: str, reminder_lead: timedelta) -> Booking:
    _lock_resource(session, new.resource_id)
    _ensure_free(session, new.resource_id, new.starts_at, new.ends_at)
    booking = Booking(
        resource_id=new.resource_id,
        status=ACTIVE,
        version=1,
        starts_at=new.starts_at,
        ends_at=new.ends_at,
        customer_name=new.customer_name,
        customer_email=new.customer_email,
        customer_locale=new.customer_locale,
        customer_timezone=new.customer_timezone,
        push_tokens=list(new.push_tokens),
        notes=new.notes,
    )
    session.add(booking)
    session.flush()
    outbox.enqueue(session, booking, shared.Event.CONFIRMED, correlation_id)
    outbox.schedule_reminder(session, booking, correlation_id, reminder_lead)
    return booking


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


def reschedule(session: Session, booking_id: str, starts_at: datetime, ends_at: datetime, correlation_id: str,
               reminder_lead: timedelta) -> Booking:
    booking = _get_for_change(session, booking_id)
    _ensure_free(session, booking.resource_id, starts_at, ends_at, ignore=booking.id)
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
