"""A booking's notification story: its outbox rows joined with the delivery receipts they caused.

Each notification the booking caused (event, when requested, when the relay
published it, or that it was withdrawn) with, per delivery (one channel and
masked address), the current status (the receipt with the highest sequence,
whatever order receipts arrived in), attempts, last change, reason and the
history in sequence order. Read-only; three queries, each bounded by one page of
notifications (a booking's notifications grow with every reschedule: the page keeps
one answer's size and work bounded however many there are).

Receipts can be forged, so the timeline takes a receipt only for the booking
and the delivery it names: one of this booking's notifications *and* this
booking's id, grouped by notification and delivery together (a receipt that
borrowed another booking's notification or delivery id changes nothing here).
Its strings are plain data for a JSON answer; a recipient stored before the
contract refused markup in it, and that no longer reads as a mask, is shown
as ``***``.
"""

from __future__ import annotations

import re
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from booking_service.core import bookings
from booking_service.storage.models import NotificationReceipt, OutboxMessage, utcnow
from shared.receipts import MASKED_RECIPIENT_PATTERN

#: What an outbox row's status means to a reader of the timeline.
NOTIFICATION_STATES = {"published": "published", "superseded": "withdrawn", "expired": "expired", "invalid": "invalid"}
_MASKED = re.compile(MASKED_RECIPIENT_PATTERN)


def notification_state(status: str, available_at: datetime, now: datetime) -> str:
    if status == "pending":
        return "scheduled" if available_at > now else "pending"
    return NOTIFICATION_STATES.get(status, status)


def _delivery(history: list[NotificationReceipt]) -> dict:
    history = sorted(history, key=lambda r: r.sequence)
    current = history[-1]
    return {
        "delivery_id": current.delivery_id,
        "channel": current.channel,
        "recipient": current.recipient if _MASKED.fullmatch(current.recipient) else "***",
        "status": current.status,
        "attempts": max(r.attempt for r in history),
        "last_change_at": current.occurred_at,
        "reason": current.reason,
        "provider_message_id": current.provider_message_id,
        # The latest provider named: the one that took the message, or the one its retry goes back to.
        "provider": next((r.provider for r in reversed(history) if r.provider), None),
        "sequence": current.sequence,
        # False while an earlier receipt is still on its way (one arrived out of order).
        "history_complete": [r.sequence for r in history] == list(range(1, len(history) + 1)),
        "history": [{"sequence": r.sequence, "status": r.status, "attempt": r.attempt, "occurred_at": r.occurred_at,
                     "reason": r.reason} for r in history],
    }


def timeline(session: Session, booking_id: str, page: int, page_size: int) -> tuple[dict, int]:
    """One page of the story of ``booking_id``'s notifications, oldest first, and how many it has in all.

    Raises ``NotFound`` when there is no such booking.
    """
    booking = bookings.get(session, booking_id)
    total = session.execute(
        sa.select(sa.func.count()).select_from(OutboxMessage).where(OutboxMessage.booking_id == booking.id)
    ).scalar_one()
    rows = session.execute(
        sa.select(OutboxMessage.notification_id, OutboxMessage.event, OutboxMessage.status,
                  OutboxMessage.created_at, OutboxMessage.available_at, OutboxMessage.published_at,
                  OutboxMessage.correlation_id)
        .where(OutboxMessage.booking_id == booking.id)
        .order_by(OutboxMessage.created_at, OutboxMessage.id)
        .offset((page - 1) * page_size).limit(page_size)
    ).all()
    by_delivery: dict[tuple[str, str], list[NotificationReceipt]] = {}
    if rows:
        receipts = session.execute(
            sa.select(NotificationReceipt).where(
                NotificationReceipt.notification_id.in_([r.notification_id for r in rows]),
                NotificationReceipt.booking_id == booking.id)
        ).scalars()
        for receipt in receipts:
            by_delivery.setdefault((receipt.notification_id, receipt.delivery_id), []).append(receipt)
    per_notification: dict[str, list[dict]] = {}
    for history in by_delivery.values():
        per_notification.setdefault(history[0].notification_id, []).append(_delivery(history))
    now = utcnow()
    story = {
        "booking_id": booking.id,
        "booking_status": booking.status,
        "booking_version": booking.version,
        "notifications": [
            {
                "notification_id": row.notification_id,
                "event": row.event,
                "state": notification_state(row.status, row.available_at, now),
                "requested_at": row.created_at,
                "due_at": row.available_at,
                "published_at": row.published_at,
                "correlation_id": row.correlation_id,
                "deliveries": sorted(per_notification.get(row.notification_id, []),
                                     key=lambda d: (d["channel"], d["recipient"], d["delivery_id"])),
            }
            for row in rows
        ],
    }
    return story, total
