"""HTTP request/response schemas (separate from the wire schemas in ``shared``).

The API rejects unknown fields (marshmallow's default ``RAISE``), unlike the
message consumers, which tolerate them. Every input is bounded here, so bad
input is a 422 naming the field, never a database or encoding error (a 500):
lengths within the columns, single-line text where the value can reach an
e-mail header, no NUL anywhere (PostgreSQL refuses it), datetimes inside a
range every backend and every reminder computation can hold.

Over 200 lines on purpose: every HTTP schema of the API, so the rules /openapi.json documents read
in one place (the resources import them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from booking_service.core.outbox import iso_utc
from shared.messages import (
    INVISIBLE_CONTROLS,
    LOCALE_PATTERN,
    MAX_TIMEZONE_LENGTH,
    AwareDateTime,
    check_ends_after_start,
    deliverable_email,
    single_line,
    validate_timezone,
)

#: Earliest and (exclusive) latest instant accepted anywhere a datetime is.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)
#: Longest locale tag the column holds.
MAX_LOCALE_LENGTH = 35
#: Highest page number of a listing (page x page_size stays far inside a 64-bit OFFSET).
MAX_PAGE = 1_000_000
MAX_PAGE_SIZE = 100
#: Free text (notes) may span lines with tab, LF and CR, but holds no other control character (NUL
#: breaks PostgreSQL) and none of the contract's ``INVISIBLE_CONTROLS`` (C1, U+2028/U+2029, bidi controls).
MULTI_LINE_PATTERN = rf"^[^\x00-\x08\x0b\x0c\x0e-\x1f{INVISIBLE_CONTROLS}]*$"
#: Push tokens of one booking. Every notification goes to each of them, so this bounds the fan-out
#: of one request: a create or a reschedule writes 2 outbox rows, each 1 e-mail + at most 5 pushes.
#: (The contract takes 20; bookings stored before this limit keep theirs.)
MAX_PUSH_TOKENS = 5
#: Characters of one booking's push tokens together. Each outbox row of the booking copies them, so
#: this bounds what one request stores; one token may still use the contract's 4096.
MAX_PUSH_TOKENS_CHARACTERS = 4096


def _no_final_newline(value: str) -> None:
    # shared.messages.single_line is re.match with "$", and Python's "$" also matches
    # before a final "\n": "room\n" passes it. Everything else it refuses.
    if value.endswith("\n"):
        raise ValidationError(single_line.error)


#: One line of text without control characters: the contract's rule (documented as its
#: pattern), held to the whole value.
ONE_LINE: list[Callable[[str], Any]] = [single_line, _no_final_newline]


def _text(max_length: int, min_length: int = 1) -> list:
    return [validate.Length(min=min_length, max=max_length), *ONE_LINE]


class BoundedDateTime(AwareDateTime):
    """An ISO-8601 datetime with an offset, from 1970 up to (not including) the year 9999 in UTC.

    ``9999-12-31T20:00:00-05:00`` parses, but is year 10000 in UTC; ``0001-01-01T00:01:00Z``
    minus a reminder's lead is before year 1: both overflowed into 500s.
    """

    default_error_messages = {"range": "Must be between 1970-01-01T00:00:00Z and 9999-01-01T00:00:00Z."}

    def __init__(self, **kwargs: Any) -> None:
        metadata = kwargs.pop("metadata", {})
        description = metadata.get("description", "ISO-8601 with offset")
        super().__init__(metadata={**metadata, "description": f"{description}; {self.default_error_messages['range']}"},
                         **kwargs)

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> datetime:
        parsed = super()._deserialize(value, attr, data, **kwargs)
        try:
            in_utc = parsed.astimezone(UTC)
        except OverflowError:
            raise self.make_error("range") from None
        if not EARLIEST <= in_utc < LATEST:
            raise self.make_error("range")
        return parsed


def _push_tokens_characters(tokens: list[str]) -> None:
    if sum(len(token) for token in tokens) > MAX_PUSH_TOKENS_CHARACTERS:
        raise ValidationError(f"Push tokens may hold at most {MAX_PUSH_TOKENS_CHARACTERS} characters together.")


class CustomerSchema(Schema):
    name = fields.String(required=True, validate=_text(200))
    # deliverable_email is one line too (ONE_LINE's rule): one pattern for the OpenAPI document.
    email = fields.Email(required=True, validate=[validate.Length(max=320), deliverable_email])
    locale = fields.String(load_default="en", validate=[validate.Length(max=MAX_LOCALE_LENGTH),
                                                        validate.Regexp(LOCALE_PATTERN)])
    timezone = fields.String(load_default="UTC",
                             validate=[validate.Length(min=1, max=MAX_TIMEZONE_LENGTH), validate_timezone],
                             metadata={"description": "IANA name"})
    push_tokens = fields.List(
        fields.String(validate=_text(MAX_PUSH_TOKENS_CHARACTERS)), load_default=list,
        validate=[validate.Length(max=MAX_PUSH_TOKENS), _push_tokens_characters],
        metadata={"description": f"At most {MAX_PUSH_TOKENS} tokens of at most {MAX_PUSH_TOKENS_CHARACTERS} "
                                 "characters together; each notification is pushed to every one"})


class _TimeRange(Schema):
    starts_at = BoundedDateTime(required=True)
    ends_at = BoundedDateTime(required=True, metadata={"description": "ISO-8601 with offset, after starts_at"})

    @validates_schema
    def _order(self, data: dict, **kwargs: Any) -> None:
        check_ends_after_start(data)


class BookingCreateSchema(_TimeRange):
    resource_id = fields.String(required=True, validate=_text(200))
    customer = fields.Nested(CustomerSchema, required=True)
    notes = fields.String(load_default=None, allow_none=True, validate=[
        validate.Length(max=2000),
        validate.Regexp(MULTI_LINE_PATTERN,
                        error="Must be text without control characters other than tab and line breaks "
                              "(no C1, line-separator or bidi-override characters)."),
    ])


class BookingRescheduleSchema(_TimeRange):
    pass


class BookingCustomerSchema(Schema):
    """The customer as a booking is read back (from the booking's columns)."""

    name = fields.String(required=True, attribute="customer_name")
    email = fields.String(required=True, attribute="customer_email", metadata={"format": "email"})
    locale = fields.String(required=True, attribute="customer_locale")
    timezone = fields.String(required=True, attribute="customer_timezone")
    push_tokens = fields.List(fields.String(), required=True)


class _Columns(fields.Nested):
    """A nested object built from the parent's own attributes (the customer_* columns)."""

    def get_value(self, obj: Any, attr: str, accessor: Any = None, default: Any = None) -> Any:
        return obj


#: What ``contact_issues`` of a booking means (core/contact_issues.py derives it).
CONTACT_ISSUES = (
    "What the receipts of the booking's notifications say about the customer's contact, newest delivery per channel "
    "and address: email_bounced | email_complained (marked as spam) | email_suppressed (not sent: on the "
    "notification service's suppression list) | push_token_unregistered | push_token_suppressed. Empty when there is "
    "no problem; never the address itself."
)


class BookingSchema(Schema):
    id = fields.UUID(required=True)
    status = fields.String(required=True, validate=validate.OneOf(["confirmed", "cancelled"]))
    version = fields.Integer(required=True)
    resource_id = fields.String(required=True)
    starts_at = AwareDateTime(required=True)
    ends_at = AwareDateTime(required=True)
    customer = _Columns(BookingCustomerSchema, required=True)
    notes = fields.String(required=True, allow_none=True)
    created_at = AwareDateTime(required=True)
    updated_at = AwareDateTime(required=True)
    contact_issues = fields.List(fields.String(), required=True, metadata={"description": CONTACT_ISSUES})


def booking_document(values: Mapping[str, Any]) -> dict:
    """What ``BookingSchema`` dumps, from a new booking's column values, without a schema pass.

    The create endpoint answers with this (its hot path); a test holds it equal
    to ``BookingSchema``'s output for the same booking.
    """
    return {
        "id": values["id"],
        "status": values["status"],
        "version": values["version"],
        "resource_id": values["resource_id"],
        "starts_at": iso_utc(values["starts_at"]),
        "ends_at": iso_utc(values["ends_at"]),
        "customer": {
            "name": values["customer_name"],
            "email": values["customer_email"],
            "locale": values["customer_locale"],
            "timezone": values["customer_timezone"],
            "push_tokens": list(values["push_tokens"] or []),
        },
        "notes": values["notes"],
        "created_at": iso_utc(values["created_at"]),
        "updated_at": iso_utc(values["updated_at"]),
        "contact_issues": [],  # a new booking has no receipt yet
    }


class PageQuerySchema(Schema):
    """``page`` and ``page_size`` of a paginated listing (its X-Pagination header says where it is)."""

    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=MAX_PAGE))
    page_size = fields.Integer(load_default=10, validate=validate.Range(min=1, max=MAX_PAGE_SIZE))


class BookingQuerySchema(PageQuerySchema):
    resource_id = fields.String(validate=_text(200))
    status = fields.String(validate=validate.OneOf(["confirmed", "cancelled"]))
    starts_from = BoundedDateTime(data_key="from", metadata={"description": "bookings ending after this time"})
    starts_to = BoundedDateTime(data_key="to", metadata={"description": "bookings starting before this time"})


class PaginationSchema(Schema):
    """What the X-Pagination header carries, as a JSON string (flask-smorest's fields and rules)."""

    total = fields.Integer(required=True, metadata={"description": "Number of items (bookings, notifications) "
                                                                   "that match"})
    total_pages = fields.Integer(required=True)
    first_page = fields.Integer(metadata={"description": "Absent when nothing matches"})
    last_page = fields.Integer(metadata={"description": "Absent when nothing matches"})
    page = fields.Integer(metadata={"description": "Absent past the last page"})
    previous_page = fields.Integer()
    next_page = fields.Integer()


def pagination_metadata(page: int, page_size: int, total: int) -> dict:
    """The X-Pagination object, as flask-smorest's ``paginate`` made it before (clients keep parsing it)."""
    metadata: dict[str, int] = {"total": total, "total_pages": 0}
    if total:
        last_page = (total - 1) // page_size + 1
        metadata.update(total_pages=last_page, first_page=1, last_page=last_page)
        if page <= last_page:
            metadata["page"] = page
            if page > 1:
                metadata["previous_page"] = page - 1
            if page < last_page:
                metadata["next_page"] = page + 1
    return metadata
