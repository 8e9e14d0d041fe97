"""What the relay sends for one outbox row: its Celery v2 envelope, and whether its payload may go out at all."""

from __future__ import annotations

from typing import Any, TypeAlias

import sqlalchemy as sa
from marshmallow import ValidationError

import shared
from booking_service.core.outbox import digest

#: One outbox row as the relay claims it (the columns of ``outbox_lease.CLAIM_COLUMNS``).
OutboxRow: TypeAlias = sa.Row[Any]

#: Hard and soft time limits the dispatch task runs under ([hard, soft] on the wire).
DISPATCH_TIME_LIMIT = 120
DISPATCH_SOFT_TIME_LIMIT = 100


def build_message(row: OutboxRow) -> shared.TaskMessage:
    """The Celery v2 envelope of one outbox row (payload already valid)."""
    return shared.task_message(
        task=shared.DISPATCH_TASK,
        task_id=row.notification_id,
        # The dispatch lane of its priority: a confirmation never queues behind a reminder backlog.
        routing_key=shared.lane_queue(shared.DISPATCH_QUEUE, shared.lane_for(row.priority)),
        kwargs={"message": row.payload},
        priority=row.priority,
        expires=row.expires_at,
        time_limit=DISPATCH_TIME_LIMIT,
        soft_time_limit=DISPATCH_SOFT_TIME_LIMIT,
        # No personal data: operators see the event and ids only.
        kwargsrepr=f"{{'message': <{row.event} notification={row.notification_id} booking={row.booking_id}>}}",
        origin="booking-service-relay",
        correlation_id=row.correlation_id,
        message_type=shared.NOTIFICATION_REQUESTED,
    )


def contract_violation(row: OutboxRow) -> str | None:
    """Why the row's payload breaks the contract, or None.

    Payloads were validated against the contract when written; only a payload
    whose sha256 no longer matches (edited, or older than the column) is
    validated again, so a healthy batch costs one hash per row.
    """
    if row.payload_sha256 is not None and digest(row.payload) == row.payload_sha256:
        return None  # exactly what was validated when the row was written
    try:
        shared.validate_notification_requested(row.payload)
    except ValidationError as exc:
        return f"contract violation: {exc.messages}"
    return None
