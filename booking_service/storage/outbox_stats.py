"""Outbox backlog figures for /readyz and /metrics."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from booking_service.storage.models import OutboxMessage, utcnow


def backlog(session: Session) -> dict:
    """Rows due but not yet published, and the age in seconds of the oldest one."""
    now = utcnow()
    count, oldest = session.execute(
        sa.select(sa.func.count(), sa.func.min(OutboxMessage.available_at)).where(
            OutboxMessage.status == "pending", OutboxMessage.available_at <= now
        )
    ).one()
    return {"pending_due": count, "oldest_due_age_seconds": round((now - oldest).total_seconds(), 3) if oldest else 0.0}
