"""The receipts consumer's lag for /readyz: its queue's depth and the age of the newest stored receipt."""

from __future__ import annotations

import pika
import pika.exceptions
import sqlalchemy as sa
from sqlalchemy.orm import Session

import shared
from booking_service.runtime import amqp
from booking_service.storage.models import NotificationReceipt, utcnow


def last_applied_age(session: Session) -> float | None:
    """Seconds since the newest receipt was stored (None: none yet). Uses the received_at index."""
    newest = session.execute(sa.select(NotificationReceipt.received_at)
                             .order_by(NotificationReceipt.received_at.desc()).limit(1)).scalar()
    return None if newest is None else round((utcnow() - newest).total_seconds(), 3)


def queue_state(amqp_url: str, timeout: float) -> dict | str:
    """``booking.receipts``' depth and consumer count (a passive declare: no rights needed), or why not known.

    0 consumers means no receipts consumer is attached: it is down, or the queue was deleted and
    declared again while it was not looking (it reconnects on the broker's cancel, see consumer.py).
    """
    nodes = amqp.parameters(amqp_url)
    for params in nodes:
        params.socket_timeout = timeout
        params.blocked_connection_timeout = timeout
        params.stack_timeout = timeout * 2
    try:
        connection = pika.BlockingConnection(nodes)
    except (pika.exceptions.AMQPError, OSError):
        return "unreachable"
    try:
        method = connection.channel().queue_declare(shared.BOOKING_RECEIPTS_QUEUE, passive=True).method
        return {"queue_depth": method.message_count, "consumers": method.consumer_count}
    except pika.exceptions.ChannelClosedByBroker:
        return "missing"  # not declared yet: the notification service declares it at start
    except (pika.exceptions.AMQPError, OSError):
        return "unreachable"
    finally:
        if connection.is_open:
            connection.close()
