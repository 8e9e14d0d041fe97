"""The ``notification.status`` message (version 1): a delivery receipt.

The notification service publishes one on every status change of a delivery
(one channel and address of one notification) to the ``notifications.receipts``
exchange as plain JSON (not a Celery task); the booking service stores them
and tells a booking's notification story from them.

* ``sequence`` grows by one per status change of a delivery, without gaps:
  receipts arriving out of order are applied in order, the one with the highest
  sequence is the delivery's current state, and ``(delivery_id, sequence)`` is
  the dedupe key of a redelivered or duplicated receipt.
* Addresses never travel: ``recipient`` is a masked form (``a***@example.org``
  for an e-mail, ``devi…42`` for a push token) and the contract refuses
  anything else; ``reason`` is short, one line, and scrubbed of the address by
  the producer.
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, RAISE, Schema, fields, validate

from .messages import AwareDateTime, dump_strict, load_versioned, single_line
from .names import CHANNEL_EMAIL, CHANNEL_PUSH, Event

#: ``message_type`` of a delivery receipt.
NOTIFICATION_STATUS = "notification.status"
#: Versions of it that consumers understand.
NOTIFICATION_STATUS_VERSIONS = (1,)

#: The statuses a receipt reports. ``retrying``: an attempt failed transiently and a retry is
#: scheduled; ``dead``: given up (in a dead-letter queue); ``stale``: older than a processed
#: cancellation, never sent; ``expired``: its moment passed (a reminder after the start).
RECEIPT_STATUSES = ("sent", "retrying", "dead", "stale", "expired")
#: Statuses after which a delivery does not change again unless an operator replays it.
FINAL_RECEIPT_STATUSES = ("sent", "stale", "expired")
#: Longest ``reason``.
MAX_REASON_LENGTH = 200
#: A masked e-mail (one visible character, then ``***@domain``) or a masked push token (at most
#: four characters, ``…``, at most two), or ``***`` alone. Full addresses never match.
MASKED_RECIPIENT_PATTERN = r"^(?:[^@\s*]?\*\*\*@[^@\s]{1,253}|[^\s…]{0,4}…[^\s…]{0,2}|\*\*\*)$"


def _schema(unknown: str) -> type[Schema]:
    class Base(Schema):
        class Meta:
            pass

    Base.Meta.unknown = unknown  # type: ignore[attr-defined]

    class BookingRefV1(Base):
        id = fields.UUID(required=True, metadata={"description": "Booking id."})
        version = fields.Integer(required=True, validate=validate.Range(min=1),
                                 metadata={"description": "Booking version the notification was about."})

    class NotificationStatusV1(Base):
        """What became of one delivery of a notification: a receipt (version 1)."""

        message_type = fields.String(required=True, validate=validate.OneOf([NOTIFICATION_STATUS]))
        schema_version = fields.Integer(required=True, validate=validate.Equal(1))
        notification_id = fields.UUID(required=True, metadata={"description": "The notification.requested id."})
        delivery_id = fields.UUID(required=True, metadata={"description": "One channel and address of it."})
        booking = fields.Nested(BookingRefV1, required=True, unknown=unknown)
        event = fields.Enum(Event, by_value=True, required=True)
        channel = fields.String(required=True, validate=validate.OneOf([CHANNEL_EMAIL, CHANNEL_PUSH]))
        recipient = fields.String(
            required=True, validate=validate.Regexp(MASKED_RECIPIENT_PATTERN, error="Must be a masked address."),
            metadata={"description": "Masked address (a***@example.org, devi…42); never the address."})
        status = fields.String(required=True, validate=validate.OneOf(RECEIPT_STATUSES))
        attempt = fields.Integer(required=True, validate=validate.Range(min=0),
                                 metadata={"description": "Provider attempts so far (0: never tried)."})
        sequence = fields.Integer(
            required=True, validate=validate.Range(min=1),
            metadata={"description": "Per delivery, gapless from 1: apply in this order; highest = current."})
        occurred_at = AwareDateTime(required=True, metadata={"description": "When the status changed (UTC)."})
        correlation_id = fields.String(
            required=True, allow_none=True, validate=[validate.Length(min=1, max=200), single_line],
            metadata={"description": "Request id of the booking call that caused the notification."})
        reason = fields.String(
            load_default=None, allow_none=True, validate=[validate.Length(max=MAX_REASON_LENGTH), single_line],
            metadata={"description": "Why (retrying, dead, stale, expired); no personal data."})
        provider_message_id = fields.String(
            load_default=None, allow_none=True, validate=[validate.Length(max=500), single_line],
            metadata={"description": "The provider's id of the sent message, where there is one."})

    return NotificationStatusV1


#: Producers validate with this one: unknown fields are an error.
StrictNotificationStatusV1 = _schema(RAISE)
#: Consumers load with this one: unknown fields are ignored (forward compatibility).
NotificationStatusV1 = _schema(EXCLUDE)

_STRICT = StrictNotificationStatusV1()
_TOLERANT = NotificationStatusV1()


def load_notification_status(payload: Any) -> dict:
    """Load a receipt as a consumer (tolerant of new fields); ``ValidationError`` when it breaks the contract."""
    return load_versioned(payload, NOTIFICATION_STATUS_VERSIONS, _TOLERANT)


def dump_notification_status(data: dict) -> dict:
    """Validate and serialise a receipt as a producer (strict); JSON-ready."""
    return dump_strict(_STRICT, data)


def mask_email(address: str) -> str:
    """``ada@example.org`` → ``a***@example.org``: enough to recognise, not enough to write to."""
    local, at, domain = address.rpartition("@")
    if not at or not domain:
        return "***"
    first = local[:1] if local[:1] not in ("", "*", "@") and not local[:1].isspace() else ""
    return f"{first}***@{domain.strip()[:253]}"


def mask_token(token: str) -> str:
    """A push token as its first four and last two characters: ``devi…42`` (``…`` alone when short)."""
    token = "".join(token.split())
    if len(token) < 12:
        return "…"
    return f"{token[:4].replace('…', '')}…{token[-2:].replace('…', '')}"


def mask_address(channel: str, address: str) -> str:
    return mask_email(address) if channel == CHANNEL_EMAIL else mask_token(address)
