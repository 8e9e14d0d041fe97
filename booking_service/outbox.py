"""Outbox rows: the notifications a booking change promises, written in its transaction."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

import shared

from .models import Booking, OutboxMessage, utcnow


def contract_message(booking: Booking, event: shared.Event, notification_id: str, correlation_id: str,
                     previous_starts_at: datetime | None = None) -> dict:
    """The contract's notification-requested message for ``booking`` (validated, JSON-ready)."""
    return shared.dump_notification_requested(
        {
            "message_type": shared.NOTIFICATION_REQUESTED,
            "schema_version": 1,
            "notification_id": uuid.UUID(notification_id),
            "event": event,
            "priority": shared.DEFAULT_PRIORITY[event].label,
            "booking": {
                "id": uuid.UUID(booking.id),
                "version": booking.version,
                "status": booking.status,
                "resource_id": booking.resource_id,
                "starts_at": booking.starts_at,
                "ends_at": booking.ends_at,
                "timezone": booking.customer_timezone,
                "previous_starts_at": previous_starts_at,
            },
            "recipient": {
                "name": booking.customer_name,
                "email": booking.customer_email,
                "locale": booking.customer_locale,
                "push_tokens": list(booking.push_tokens or []),
            },
            "requested_at": utcnow(),
            "correlation_id": correlation_id,
        }
    )


def enqueue(session: Session, booking: Booking, event: shared.Event, correlation_id: str, *,
            available_at: datetime | None = None, expires_at: datetime | None = None,
            previous_starts_at: datetime | None = None) -> OutboxMessage:
    notification_id = str(uuid.uuid4())
    row = OutboxMessage(
        notification_id=notification_id,
        booking_id=booking.id,
        event=event.value,
        priority=int(shared.DEFAULT_PRIORITY[event]),
        payload=contract_message(booking, event, notification_id, correlation_id, previous_starts_at),
        correlation_id=correlation_id,
        status="pending",
        available_at=available_at or utcnow(),
        expires_at=expires_at,
    )
    session.add(row)
    return row


def schedule_reminder(session: Session, booking: Booking, correlation_id: str, lead: timedelta) -> OutboxMessage | None:
    """Write the reminder row, due ``lead`` before the start; none if that moment has passed."""
    due = booking.starts_at - lead
    if due <= utcnow():
        return None
    return enqueue(session, booking, shared.Event.REMINDER, correlation_id, available_at=due, expires_at=booking.starts_at)


def supersede_reminders(session: Session, booking_id: str) -> int:
    """Withdraw the booking's unpublished reminders (cancel / reschedule)."""
    result = session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.booking_id == booking_id,
            OutboxMessage.event == shared.Event.REMINDER.value,
            OutboxMessage.status == "pending",
        )
        .values(status="superseded")
    )
    return result.rowcount or 0
