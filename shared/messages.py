"""marshmallow schemas of every message on the wire, by version.

Two flavours of each schema exist:

* the *strict* one (``unknown=RAISE`` all the way down) is what a producer
  validates with before publishing, so a typo never leaves the building;
* the *tolerant* one (``unknown=EXCLUDE`` all the way down) is what a consumer
  loads with, so a newer producer that added a field (versions evolve
  additively) is still understood.

Over 200 lines on purpose: every message schema of the wire, by version, with the text rules they
share; the JSON Schema files are generated from this one source.
"""

from __future__ import annotations

import re
import uuid
import zoneinfo
from datetime import datetime
from typing import Any

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema
from marshmallow.types import UnknownOption

from .names import Event, Priority

#: ``message_type`` of the notification-requested message.
NOTIFICATION_REQUESTED = "notification.requested"
#: Versions of it that consumers understand.
NOTIFICATION_REQUESTED_VERSIONS = (1,)
#: Locales are BCP 47-ish tags: ``en``, ``de``, ``pt-BR``.
LOCALE_PATTERN = r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$"
#: Invisible characters that change how text reads, refused in all text besides the C0 controls
#: (a regular-expression class body, for the patterns below and the API's multi-line rule):
#: DEL and the C1 controls U+0080-U+009F (NEL is a line break to some readers, CSI starts a
#: terminal escape); the line and paragraph separators U+2028/U+2029 (line breaks to JavaScript,
#: ``str.splitlines`` and some mail clients, not to others); the bidi embedding, override and
#: isolate controls U+202A-U+202E and U+2066-U+2069 (they reorder what a reader sees: a name
#: could make the line of an e-mail read backwards, "Trojan Source"); the deprecated format
#: controls U+206A-U+206F; U+FEFF (a byte-order mark has no place inside text); the interlinear
#: annotation controls U+FFF9-U+FFFB. Kept, because languages need them: ZWJ and ZWNJ (Persian,
#: Indic scripts, emoji sequences), the direction marks LRM, RLM and ALM (they only mark, never
#: override), the soft hyphen and the zero-width space (Thai, Khmer).
INVISIBLE_CONTROLS = r"\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u206f\ufeff\ufff9-\ufffb"
#: One line of text: no control characters (CR/LF would end an e-mail header, NUL breaks PostgreSQL),
#: nor any of ``INVISIBLE_CONTROLS``.
SINGLE_LINE_PATTERN = rf"^[^\x00-\x1f{INVISIBLE_CONTROLS}]*$"


class _WholeValue(validate.Validator):
    """``Regexp`` over the whole value: Python's ``$`` also matches before a final newline.

    Not a ``validate.Regexp`` subclass: that one takes str or bytes patterns and values, this
    one only text. apispec reads the ``regex`` attribute into the JSON Schema's ``pattern``.
    """

    def __init__(self, regex: str, *, error: str) -> None:
        self.regex: re.Pattern[str] = re.compile(regex)
        self.error: str = error

    def _repr_args(self) -> str:
        return f"regex={self.regex!r}"

    def __call__(self, value: str) -> str:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self.error.format(input=value, regex=self.regex.pattern))
        return value


#: The same rule as a marshmallow validator (apispec turns it into the JSON Schema's ``pattern``).
single_line = _WholeValue(SINGLE_LINE_PATTERN,
                          error="Must be one line without control, line-separator or bidi-override characters.")
#: An address every mail server can take. Only ASCII before the @: a non-ASCII local part
#: needs SMTPUTF8 on every hop to the mailbox, which no producer can know. The domain may be
#: international (sent in its IDNA ASCII form, ``ascii_email``), without the four characters
#: IDNA 2003 and IDNA 2008 read differently (ß, ς, ZWNJ, ZWJ: one address, two domains).
#: One line, like ``SINGLE_LINE_PATTERN``: no control character (nor ``INVISIBLE_CONTROLS``) anywhere.
DELIVERABLE_EMAIL_PATTERN = rf"^[\x20-\x7e]+@[^@\x00-\x1f{INVISIBLE_CONTROLS}\u00df\u03c2\u200c\u200d]+$"
deliverable_email = _WholeValue(
    DELIVERABLE_EMAIL_PATTERN,
    error="Must be an address every mail server can deliver: one line, only ASCII characters before the @ "
          "(an international domain is fine; ß, ς and joiners in it are not).")

_DELIVERABLE_EMAIL = re.compile(DELIVERABLE_EMAIL_PATTERN)


def ascii_email(address: str) -> str:
    """``address`` with its domain in IDNA ASCII form: ``ada@bücher.example`` → ``ada@xn--bcher-kva.example``.

    Raises ``ValueError`` (whose text never holds the address) when the address does not
    follow ``DELIVERABLE_EMAIL_PATTERN`` or its domain has no IDNA form.
    """
    if not isinstance(address, str) or _DELIVERABLE_EMAIL.fullmatch(address) is None:
        raise ValueError("address is not deliverable (non-ASCII before the @, or ß, ς or a joiner in the domain)")
    local, _, domain = address.rpartition("@")
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        raise ValueError("address domain has no IDNA (ASCII) form") from None


#: Longest IANA timezone name accepted (the longest real one has 32 characters).
MAX_TIMEZONE_LENGTH = 64


class AwareDateTime(fields.AwareDateTime):
    """ISO-8601 datetime that must carry an offset; serialised in UTC."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(format="iso", **kwargs)

    def _serialize(self, value: datetime | None, attr: Any, obj: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValidationError("Datetime must be timezone-aware.")
        return value.astimezone(zoneinfo.ZoneInfo("UTC")).isoformat().replace("+00:00", "Z")


def validate_timezone(name: str) -> None:
    """Raise ValidationError unless ``name`` is an IANA timezone name.

    ``zoneinfo`` raises more than ZoneInfoNotFoundError for names that are not zones:
    IsADirectoryError for a region folder ("Europe"), ValueError for odd paths,
    UnicodeEncodeError for lone surrogates; each is an unknown timezone here.
    """
    if not name or len(name) > MAX_TIMEZONE_LENGTH or "\x00" in name:
        raise ValidationError(f"Unknown IANA timezone {name[:MAX_TIMEZONE_LENGTH]!r}.")
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, OSError, ValueError, UnicodeError) as exc:
        raise ValidationError(f"Unknown IANA timezone {name!r}.") from exc


def check_ends_after_start(data: dict) -> None:
    """Schema-level rule shared by the wire and the HTTP schemas: a booking ends after it starts."""
    if data.get("starts_at") and data.get("ends_at") and data["ends_at"] <= data["starts_at"]:
        raise ValidationError("Must be after starts_at.", field_name="ends_at")


def _schemas(unknown: UnknownOption) -> type[Schema]:
    """Build the v1 schema family with one ``unknown`` policy at every level."""

    class Base(Schema):
        class Meta:
            pass

    Base.Meta.unknown = unknown  # type: ignore[attr-defined]

    class BookingV1(Base):
        id = fields.UUID(required=True, metadata={"description": "Booking id."})
        version = fields.Integer(
            required=True,
            validate=validate.Range(min=1),
            metadata={"description": "Booking version; grows on every change. Consumers drop stale versions."},
        )
        status = fields.String(
            required=True, validate=validate.OneOf(["confirmed", "cancelled"]),
            metadata={"description": "Status after the change."},
        )
        resource_id = fields.String(required=True, validate=[validate.Length(min=1, max=200), single_line])
        starts_at = AwareDateTime(required=True, metadata={"description": "UTC ISO-8601."})
        ends_at = AwareDateTime(required=True, metadata={"description": "UTC ISO-8601."})
        timezone = fields.String(
            required=True, validate=[validate.Length(min=1, max=MAX_TIMEZONE_LENGTH), validate_timezone],
            metadata={"description": "IANA timezone the customer sees times in."},
        )
        previous_starts_at = AwareDateTime(
            load_default=None, allow_none=True, metadata={"description": "Old start of a rescheduled booking."}
        )

        @validates_schema
        def _ends_after_start(self, data: dict, **kwargs: Any) -> None:
            check_ends_after_start(data)

    class RecipientV1(Base):
        name = fields.String(required=True, validate=[validate.Length(min=1, max=200), single_line])
        email = fields.Email(required=True, validate=[validate.Length(max=320), deliverable_email])
        locale = fields.String(load_default="en", validate=validate.Regexp(LOCALE_PATTERN))
        push_tokens = fields.List(
            fields.String(validate=[validate.Length(min=1, max=4096), single_line]),
            load_default=list,
            validate=validate.Length(max=20),
            metadata={"description": "Device tokens or topics for push; may be empty."},
        )

    class NotificationRequestedV1(Base):
        """A booking event asks for its notifications to be sent (version 1)."""

        message_type = fields.String(required=True, validate=validate.OneOf([NOTIFICATION_REQUESTED]))
        schema_version = fields.Integer(required=True, validate=validate.Equal(1))
        notification_id = fields.UUID(
            required=True, metadata={"description": "Stable across republishing: the dedupe and idempotency key."}
        )
        event = fields.Enum(Event, by_value=True, required=True)
        priority = fields.String(
            required=True,
            validate=validate.OneOf([p.label for p in Priority]),
            metadata={"description": "Named level; see shared.names.Priority for the AMQP value."},
        )
        booking = fields.Nested(BookingV1, required=True, unknown=unknown)
        recipient = fields.Nested(RecipientV1, required=True, unknown=unknown)
        requested_at = AwareDateTime(required=True)
        correlation_id = fields.String(required=True, validate=[validate.Length(min=1, max=200), single_line])

    return NotificationRequestedV1


#: Producers validate with this one: unknown fields are an error.
StrictNotificationRequestedV1 = _schemas(RAISE)
#: Consumers load with this one: unknown fields are ignored (forward compatibility).
NotificationRequestedV1 = _schemas(EXCLUDE)


#: Schema instances are stateless and safe to share; building one costs more than a load.
_STRICT = StrictNotificationRequestedV1()
_TOLERANT = NotificationRequestedV1()


def load_notification_requested(payload: Any) -> dict:
    """Load a notification-requested message as a consumer (tolerant of new fields).

    Raises ``ValidationError`` with per-field messages when the payload breaks
    the contract, including an unsupported ``schema_version``.
    """
    return load_versioned(payload, NOTIFICATION_REQUESTED_VERSIONS, _TOLERANT)


def dump_notification_requested(data: dict) -> dict:
    """Validate and serialise a message as a producer (strict).

    ``data`` holds Python values (UUIDs, aware datetimes, Event); the result is
    JSON-ready. Raises ``ValidationError`` when it would break the contract.
    """
    return dump_strict(_STRICT, data)


def load_versioned(payload: Any, versions, schema: Schema) -> dict:
    """Load ``payload`` with the consumer's ``schema`` once its ``schema_version`` is one of ``versions``."""
    if not isinstance(payload, dict):
        raise ValidationError("Message must be a JSON object.")
    version = payload.get("schema_version")
    if version not in versions:
        raise ValidationError(
            f"Unsupported schema_version {version!r}; supported: {list(versions)}.",
            field_name="schema_version",
        )
    return schema.load(payload)


def dump_strict(schema: Schema, data: dict) -> dict:
    """``data`` serialised by the producer's strict ``schema`` and validated (dump does not validate, load does)."""
    wire = schema.dump(data)
    schema.load(wire)
    return wire


def validate_notification_requested(wire: Any) -> None:
    """Raise ``ValidationError`` unless ``wire`` is a valid message by the producer's strict rules."""
    _STRICT.load(wire)


def new_notification_id() -> uuid.UUID:
    return uuid.uuid4()
