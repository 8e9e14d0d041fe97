"""A booking's contact issues: what its deliveries' receipts say about the customer's address or push token.

Derived, never stored: for each of the booking's deliveries, the current receipt
(highest sequence), and per channel and masked recipient the delivery whose
current receipt is the newest. A status in ``ISSUES`` there is a contact issue:
``["email_bounced"]`` tells the booking team that the customer's e-mail address
bounced, without the address (receipts never carry it). A later delivery to the
same recipient that went through (an operator lifted the suppression, the
mailbox came back) clears it. A status this service does not know (statuses are
an open set) is no issue.

Like the timeline, a receipt counts only for a notification of the booking it
names (joined with the outbox): a forged receipt adds no issue to a booking.
One query for a whole page of bookings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from booking_service.storage.models import Booking, NotificationReceipt, OutboxMessage

#: (channel, current status of the recipient's newest delivery) → the contact issue the booking shows.
ISSUES = {
    ("email", "bounced"): "email_bounced",
    ("email", "complained"): "email_complained",
    ("email", "suppressed"): "email_suppressed",
    ("push", "bounced"): "push_token_unregistered",
    ("push", "suppressed"): "push_token_suppressed",
}


def contact_issues(session: Session, booking_ids: Sequence[str]) -> dict[str, list[str]]:
    """``booking id → sorted contact issues`` for each of ``booking_ids`` (an empty list when there is none)."""
    found: dict[str, list[str]] = {booking_id: [] for booking_id in booking_ids}
    if not booking_ids:
        return found
    receipt = NotificationReceipt
    current = (
        sa.select(receipt.delivery_id, sa.func.max(receipt.sequence).label("sequence"))
        .join(OutboxMessage, sa.and_(OutboxMessage.notification_id == receipt.notification_id,
                                     OutboxMessage.booking_id == receipt.booking_id))
        .where(receipt.booking_id.in_(booking_ids))
        .group_by(receipt.delivery_id)
        .subquery()
    )
    rows = session.execute(
        sa.select(receipt.booking_id, receipt.channel, receipt.recipient, receipt.status)
        .join(current, sa.and_(receipt.delivery_id == current.c.delivery_id, receipt.sequence == current.c.sequence))
        .where(receipt.booking_id.in_(booking_ids))
        # Oldest first: the newest delivery of each recipient is the one left in ``newest``.
        .order_by(receipt.occurred_at, receipt.id)
    ).all()
    newest = {(row.booking_id, row.channel, row.recipient): row.status for row in rows}
    for (booking_id, channel, _recipient), status in newest.items():
        issue = ISSUES.get((channel, status))
        if issue is not None and issue not in found[booking_id]:
            found[booking_id].append(issue)
    return {booking_id: sorted(issues) for booking_id, issues in found.items()}


@dataclass(frozen=True)
class BookingWithIssues:
    """A booking as the API shows it: its columns, and its ``contact_issues``."""

    booking: Booking
    contact_issues: list[str]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.booking, name)


def with_contact_issues(session: Session, bookings: Iterable[Booking]) -> list[BookingWithIssues]:
    bookings = list(bookings)
    issues = contact_issues(session, [b.id for b in bookings])
    return [BookingWithIssues(b, issues[b.id]) for b in bookings]
