"""A ``notification.status`` receipt from one outbox row: scrubbed, validated, ready to publish.

No address travels: the recipient is masked (``a***@example.org``,
``devi…42``) and the reason is scrubbed of the address (and of anything shaped
like an e-mail address) before the message is validated against the contract.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pika

import shared
from notification_service.delivery.timestamps import aware
from notification_service.providers.http import scrub
from notification_service.receipts.outbox import ReceiptRow
from shared.messages import INVISIBLE_CONTROLS
from shared.receipts import MAX_REASON_LENGTH, mask_email
from shared.wire import CORRELATION_HEADER, MESSAGE_TYPE_HEADER

_EMAIL_LIKE = re.compile(r"[^\s@<>\"'(),;:\[\]]+@[^\s@<>\"'(),;:\[\]]+")
# The contract's text rule: a reason with a C1 or bidi control would be refused as a receipt.
_CONTROL = re.compile(rf"[\x00-\x1f{INVISIBLE_CONTROLS}]")


def one_line(text: str | None, limit: int) -> str | None:
    """``text`` as one line without control characters, at most ``limit`` characters (None when empty)."""
    if not text:
        return None
    text = " ".join(_CONTROL.sub(" ", text).split())
    return text[:limit] or None


def receipt_reason(text: str | None, address: str) -> str | None:
    """A short reason without personal data: the address scrubbed, other e-mail-shaped strings masked."""
    if not text:
        return None
    text = scrub(text, address)
    text = _EMAIL_LIKE.sub(lambda match: mask_email(match.group(0)), text)
    return one_line(text, MAX_REASON_LENGTH)


@dataclass(frozen=True)
class Receipt:
    """One message ready to publish."""

    row_id: int
    routing_key: str
    body: bytes
    properties: pika.BasicProperties


def build_receipt(row: ReceiptRow) -> dict:
    """The ``notification.status`` message (JSON-ready, validated strictly) of one joined outbox row."""
    return shared.dump_notification_status({
        "message_type": shared.NOTIFICATION_STATUS,
        "schema_version": 1,
        "notification_id": row.notification_id,
        "delivery_id": row.delivery_id,
        "booking": {"id": row.booking_id, "version": row.booking_version},
        "event": shared.Event(row.event),
        "channel": row.channel,
        "recipient": shared.mask_address(row.channel, row.address),
        "status": row.status,
        "attempt": row.attempt,
        "sequence": row.sequence,
        "occurred_at": aware(row.occurred_at),
        "correlation_id": one_line(row.correlation_id, 200),
        "reason": receipt_reason(row.reason, row.address),
        "provider_message_id": one_line(row.provider_message_id, 500),
        "provider": one_line(row.provider, 40),
    })


def to_message(row: ReceiptRow, message: dict) -> Receipt:
    """The AMQP message of a built receipt: JSON body, persistent, ``<delivery_id>:<sequence>`` as its id."""
    headers = {MESSAGE_TYPE_HEADER: shared.NOTIFICATION_STATUS}
    if message["correlation_id"]:
        headers[CORRELATION_HEADER] = message["correlation_id"]
    properties = pika.BasicProperties(
        content_type="application/json", content_encoding="utf-8", delivery_mode=2,
        message_id=f"{message['delivery_id']}:{message['sequence']}", type=shared.NOTIFICATION_STATUS,
        headers=headers)
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Receipt(row.id, shared.receipt_routing_key(message["channel"], message["status"]), body, properties)
