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
* Every integer and every datetime is bounded, and the JSON Schema says so
  (``maximum``, and a ``pattern`` on the written year): a receipt is forged as
  easily as it is sent, and ``sequence = 2**63`` or ``9999-12-31T23:59:59-14:00``
  (year 10000 in UTC) used to pass the contract and break the consumer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate

from .messages import AwareDateTime, _WholeValue, dump_strict, load_versioned, single_line
from .names import CHANNEL_EMAIL, CHANNEL_PUSH, Event

#: ``message_type`` of a delivery receipt.
NOTIFICATION_STATUS = "notification.status"
#: Versions of it that consumers understand.
NOTIFICATION_STATUS_VERSIONS = (1,)

#: The statuses a receipt reports. ``retrying``: an attempt failed transiently and a retry is
#: scheduled; ``dead``: given up (in a dead-letter queue); ``stale``: older than a processed
#: cancellation, never sent; ``expired``: its moment passed (a reminder after the start).
#: Added in place (additive, still version 1) from the providers' events: ``delivered`` (the mailbox took
#: it), ``bounced`` (a hard bounce: the address does not exist; for push, the token is unregistered),
#: ``complained`` (marked as spam), and ``suppressed`` (never sent: the address or token is on the
#: suppression list).
RECEIPT_STATUSES = ("sent", "retrying", "dead", "stale", "expired", "delivered", "bounced", "complained",
                    "suppressed")
#: What a consumer accepts as a status: statuses are an open set for consumers (a producer one version
#: ahead may report one this consumer does not know; it is stored and shown, never dead-lettered), while
#: producers send only ``RECEIPT_STATUSES``. Bounded and plain so that an unknown one is harmless to store and show.
STATUS_PATTERN = r"^[a-z_]{1,32}$"
#: Statuses after which a delivery is never sent again (``sent`` may still be followed by the provider's
#: events: ``delivered``, ``bounced``, ``complained``).
FINAL_RECEIPT_STATUSES = ("sent", "stale", "expired", "delivered", "bounced", "complained", "suppressed")
#: Longest ``reason``.
MAX_REASON_LENGTH = 200
#: Characters a masked recipient never shows besides whitespace: control characters (NUL broke
#: PostgreSQL) and markup or quotes (a recipient is shown to people; ``<script>`` must not get through).
_NEVER_SHOWN = "\\x00-\\x1f\\x7f<>&\"'`"
#: A masked e-mail (one visible character, then ``***@domain``) or a masked push token (at most
#: four characters, ``…``, at most two), or ``***`` alone. Full addresses never match.
MASKED_RECIPIENT_PATTERN = (
    f"^(?:[^@\\s*{_NEVER_SHOWN}]?\\*\\*\\*@[^@\\s{_NEVER_SHOWN}]{{1,253}}"
    f"|[^\\s…{_NEVER_SHOWN}]{{0,4}}…[^\\s…{_NEVER_SHOWN}]{{0,2}}|\\*\\*\\*)$"
)
#: Highest integer a receipt carries: what the INTEGER columns that store it hold (PostgreSQL refused
#: ``sequence = 2**31`` with a DataError, SQLite ``2**63`` with an OverflowError).
MAX_INTEGER = 2**31 - 1
#: Years ``occurred_at`` may be written in (1970-9998). Checked on the text, so the JSON Schema can say it
#: as a pattern; with any offset the instant stays inside what Python, SQLite and PostgreSQL hold.
OCCURRED_AT_PATTERN = r"^(?:19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-"
_OCCURRED_AT = re.compile(OCCURRED_AT_PATTERN)
#: What a recipient mask drops from the part of an address it shows.
_HIDDEN = re.compile(f"[\\s@*…\\ud800-\\udfff{_NEVER_SHOWN}]")


def _unicode_text(value: str) -> None:
    """JSON may escape half a UTF-16 pair (``"\\ud800"``): no database or log can encode such a string."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("Must be Unicode text (no lone surrogate).") from None


#: Every free-text field: one line, no control character, encodable.
_TEXT: list[Callable[[str], Any]] = [single_line, _unicode_text]


def _integer(minimum: int, description: str) -> fields.Integer:
    """A JSON integer (not a float or a string that looks like one) from ``minimum`` to ``MAX_INTEGER``."""
    return fields.Integer(required=True, strict=True, validate=validate.Range(min=minimum, max=MAX_INTEGER),
                          metadata={"description": description})


class OccurredAt(AwareDateTime):
    """An ISO-8601 datetime with an offset, written with a year from 1970 to 9998."""

    default_error_messages = {"range": "Must be written with a year from 1970 to 9998."}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metadata = {**self.metadata, "pattern": OCCURRED_AT_PATTERN}

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str) and not _OCCURRED_AT.match(value):
            raise self.make_error("range")
        return super()._deserialize(value, attr, data, **kwargs)


def _status(*, strict: bool) -> fields.String:
    """The producer sends a status it knows (``RECEIPT_STATUSES``); a consumer takes any well-formed one."""
    if strict:
        return fields.String(required=True, validate=validate.OneOf(RECEIPT_STATUSES))
    return fields.String(required=True,
                         validate=_WholeValue(STATUS_PATTERN, error="Must be a status: 1 to 32 of a-z and _."),
                         metadata={"description": "An open set for consumers: a status they do not know is stored "
                                                  "and shown, never refused (producers send RECEIPT_STATUSES)."})


def _schema(unknown: Literal["exclude", "raise"]) -> type[Schema]:
    class Base(Schema):
        class Meta:
            pass

    Base.Meta.unknown = unknown  # type: ignore[attr-defined]

    class BookingRefV1(Base):
        id = fields.UUID(required=True, metadata={"description": "Booking id."})
        version = _integer(1, "Booking version the notification was about.")

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
            required=True,
            validate=[_WholeValue(MASKED_RECIPIENT_PATTERN, error="Must be a masked address."), _unicode_text],
            metadata={"description": "Masked address (a***@example.org, devi…42); never the address."})
        status = _status(strict=unknown == RAISE)
        attempt = _integer(0, "Provider attempts so far (0: never tried).")
        sequence = _integer(1, "Per delivery, gapless from 1: apply in this order; highest = current.")
        occurred_at = OccurredAt(required=True, metadata={
            "description": "When the status changed (UTC); written with a year from 1970 to 9998."})
        correlation_id = fields.String(
            required=True, allow_none=True, validate=[validate.Length(min=1, max=200), *_TEXT],
            metadata={"description": "Request id of the booking call that caused the notification."})
        reason = fields.String(
            load_default=None, allow_none=True, validate=[validate.Length(max=MAX_REASON_LENGTH), *_TEXT],
            metadata={"description": "Why (retrying, dead, stale, expired, bounced, complained, suppressed); "
                                     "no personal data."})
        provider_message_id = fields.String(
            load_default=None, allow_none=True, validate=[validate.Length(max=500), *_TEXT],
            metadata={"description": "The provider's id of the sent message, where there is one."})
        provider = fields.String(
            load_default=None, allow_none=True, validate=[validate.Length(min=1, max=40), *_TEXT],
            metadata={"description": "The provider that took the message (sent: email_http, email_smtp, email_file, "
                                     "push_http, push_file), or that may have it and gets the retry (retrying)."})

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


def _shown(text: str) -> str:
    """``text`` without what a mask never shows (whitespace, markup, quotes, controls, ``@*…``)."""
    return _HIDDEN.sub("", text)


def mask_email(address: str) -> str:
    """``ada@example.org`` → ``a***@example.org``: enough to recognise, not enough to write to."""
    local, at, domain = address.rpartition("@")
    domain = _shown(domain)[:253]
    if not at or not domain:
        return "***"
    return f"{_shown(local[:1])}***@{domain}"


def mask_token(token: str) -> str:
    """A push token as its first four and last two characters: ``devi…42`` (``…`` alone when short)."""
    token = "".join(token.split())
    if len(token) < 12:
        return "…"
    return f"{_shown(token[:4])}…{_shown(token[-2:])}"


def mask_address(channel: str, address: str) -> str:
    return mask_email(address) if channel == CHANNEL_EMAIL else mask_token(address)
