"""Outbox rows: the notifications a booking change promises, written in its transaction.

Each payload is built JSON-ready by hand and validated once, strictly, with the
contract's schema (``shared.validate_notification_requested``) before the
transaction that stores it begins; its sha256 is stored beside it, so the relay
re-validates only a payload that changed since.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, update
from sqlalchemy.orm import Session

import shared
from booking_service.storage.models import Booking, OutboxMessage, utcnow


def iso_utc(value: datetime | None) -> str | None:
    """The contract's datetime form: UTC, ISO-8601, ``Z`` (as ``shared.messages.AwareDateTime`` writes it)."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def digest(payload: dict) -> str:
    """sha256 of the payload's canonical JSON: what was validated, recognisable later."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def contract_message(booking: Mapping, event: shared.Event, notification_id: str, correlation_id: str,
                     requested_at: datetime, previous_starts_at: datetime | None = None) -> dict:
    """The contract's notification-requested message for ``booking`` (column values), validated and JSON-ready.

    Raises ``marshmallow.ValidationError`` when it would break the contract.
    """
    wire = {
        "message_type": shared.NOTIFICATION_REQUESTED,
        "schema_version": 1,
        "notification_id": notification_id,
        "event": event.value,
        "priority": shared.DEFAULT_PRIORITY[event].label,
        "booking": {
            "id": booking["id"],
            "version": booking["version"],
            "status": booking["status"],
            "resource_id": booking["resource_id"],
            "starts_at": iso_utc(booking["starts_at"]),
            "ends_at": iso_utc(booking["ends_at"]),
            "timezone": booking["customer_timezone"],
            "previous_starts_at": iso_utc(previous_starts_at),
        },
        "recipient": {
            "name": booking["customer_name"],
            "email": booking["customer_email"],
            "locale": booking["customer_locale"],
            "push_tokens": list(booking["push_tokens"] or []),
        },
        "requested_at": iso_utc(requested_at),
        "correlation_id": correlation_id,
    }
    shared.validate_notification_requested(wire)
    return wire


def row_values(booking: Mapping, event: shared.Event, correlation_id: str, now: datetime, *,
               available_at: datetime | None = None, expires_at: datetime | None = None,
               previous_starts_at: datetime | None = None, validated_sibling: dict | None = None) -> dict:
    """Column values of one outbox row (payload built and validated here, outside any transaction).

    ``validated_sibling``: a validated payload of the same booking change (same
    booking values, moment, correlation id, no ``previous_starts_at``); this
    row's payload is then that one with its own id, event and priority.
    """
    notification_id = str(uuid.uuid4())
    if validated_sibling is None:
        payload = contract_message(booking, event, notification_id, correlation_id, now, previous_starts_at)
    else:
        # The three fields that differ come from the contract's own enums and a
        # uuid4, so this message is valid exactly when its sibling is: validating
        # it again cost a tenth of a POST's CPU and could not fail.
        payload = {**validated_sibling, "notification_id": notification_id, "event": event.value,
                   "priority": shared.DEFAULT_PRIORITY[event].label}
    return {
        "notification_id": notification_id,
        "booking_id": booking["id"],
        "event": event.value,
        "priority": int(shared.DEFAULT_PRIORITY[event]),
        "payload": payload,
        "payload_sha256": digest(payload),
        "correlation_id": correlation_id,
        "status": "pending",
        "available_at": available_at or now,
        "expires_at": expires_at,
        "attempts": 0,
        "created_at": now,
    }


def rows_for_new_booking(booking: Mapping, correlation_id: str, lead: timedelta, now: datetime) -> list[dict]:
    """The confirmation, and the reminder due ``lead`` before the start (none if that moment has passed)."""
    confirmation = row_values(booking, shared.Event.CONFIRMED, correlation_id, now)
    reminder = reminder_values(booking, correlation_id, lead, now, validated_sibling=confirmation["payload"])
    return [confirmation] + ([reminder] if reminder else [])


def reminder_values(booking: Mapping, correlation_id: str, lead: timedelta, now: datetime, *,
                    validated_sibling: dict | None = None) -> dict | None:
    due = booking["starts_at"] - lead
    if due <= now:
        return None
    return row_values(booking, shared.Event.REMINDER, correlation_id, now, available_at=due,
                      expires_at=booking["starts_at"], validated_sibling=validated_sibling)


def columns(booking: Booking) -> dict:
    """An ORM booking's column values, for the functions above."""
    return {c.key: getattr(booking, c.key) for c in Booking.__table__.columns}


def enqueue(session: Session, booking: Booking, event: shared.Event, correlation_id: str, *,
            previous_starts_at: datetime | None = None) -> OutboxMessage:
    row = OutboxMessage(**row_values(columns(booking), event, correlation_id, utcnow(),
                                     previous_starts_at=previous_starts_at))
    session.add(row)
    return row


def schedule_reminder(session: Session, booking: Booking, correlation_id: str, lead: timedelta) -> OutboxMessage | None:
    """Write the reminder row, due ``lead`` before the start; none if that moment has passed."""
    values = reminder_values(columns(booking), correlation_id, lead, utcnow())
    if values is None:
        return None
    row = OutboxMessage(**values)
    session.add(row)
    return row


def supersede_reminders(session: Session, booking_id: str) -> int:
    """Withdraw the booking's unpublished reminders (cancel / reschedule)."""
    # An UPDATE answers with a CursorResult (it has the rowcount); Session.execute is typed for any statement.
    result = cast(CursorResult[Any], session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.booking_id == booking_id,
            OutboxMessage.event == shared.Event.REMINDER.value,
            OutboxMessage.status == "pending",
        )
        .values(status="superseded")
    ))
    return result.rowcount or 0
