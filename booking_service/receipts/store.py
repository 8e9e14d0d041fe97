"""Storing a receipt: once per ``(delivery_id, sequence)``, and only when it agrees with what the booking side knows.

A receipt names a notification, its booking and one delivery of it. The
outbox knows which booking (and event, and booking version) each notification
was about, and the first stored receipt of a delivery fixes which notification,
booking and channel that delivery belongs to. A receipt that says otherwise
is forged or broken: ``Contradiction``, dead-lettered by the consumer. A
notification the outbox does not know (a purged row, another deployment's
database) contradicts nothing and is stored; the timeline never shows it.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from booking_service.receipts.poison import Contradiction
from booking_service.storage.models import NotificationReceipt, OutboxMessage, utcnow


def row_values(receipt: dict) -> dict:
    return {
        "delivery_id": str(receipt["delivery_id"]),
        "sequence": receipt["sequence"],
        "notification_id": str(receipt["notification_id"]),
        "booking_id": str(receipt["booking"]["id"]),
        "booking_version": receipt["booking"]["version"],
        "event": receipt["event"].value,
        "channel": receipt["channel"],
        "recipient": receipt["recipient"],
        "status": receipt["status"],
        "attempt": receipt["attempt"],
        "reason": receipt["reason"],
        "provider_message_id": receipt["provider_message_id"],
        # Absent from receipts of a notification service older than issue 17.
        "provider": receipt.get("provider"),
        "occurred_at": receipt["occurred_at"],
        "correlation_id": receipt["correlation_id"],
        "received_at": utcnow(),
    }


def _booking_version(payload: object) -> object:
    booking = payload.get("booking") if isinstance(payload, dict) else None
    return booking.get("version") if isinstance(booking, dict) else None


def contradiction(conn: sa.Connection, row: dict) -> str | None:
    """What in ``row`` contradicts the outbox or the delivery's earlier receipts (field names only), or None."""
    known = conn.execute(sa.select(OutboxMessage.booking_id, OutboxMessage.event, OutboxMessage.payload)
                         .where(OutboxMessage.notification_id == row["notification_id"])).first()
    if known is not None:
        pairs = {"booking.id": (known.booking_id, row["booking_id"]), "event": (known.event, row["event"]),
                 "booking.version": (_booking_version(known.payload), row["booking_version"])}
        differ = [name for name, (ours, theirs) in pairs.items() if ours != theirs]
        if differ:
            return f"contradicts the outbox: {', '.join(differ)} of notification_id differ"
    first = conn.execute(sa.select(NotificationReceipt.notification_id, NotificationReceipt.booking_id,
                                   NotificationReceipt.channel)
                         .where(NotificationReceipt.delivery_id == row["delivery_id"]).limit(1)).first()
    if first is not None:
        differ = [name for name in ("notification_id", "booking_id", "channel") if getattr(first, name) != row[name]]
        if differ:
            return f"contradicts earlier receipts of delivery_id: {', '.join(differ)} differ"
    return None


def store(engine: sa.Engine, receipt: dict) -> bool:
    """Store one receipt; False when it was there already (a duplicate); ``Contradiction`` when it disagrees."""
    row = row_values(receipt)
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    statement = insert(NotificationReceipt).values(**row).on_conflict_do_nothing(
        index_elements=["delivery_id", "sequence"]).returning(NotificationReceipt.id)
    with engine.begin() as conn:
        problem = contradiction(conn, row)
        if problem is not None:
            raise Contradiction(problem)
        return conn.execute(statement).first() is not None
