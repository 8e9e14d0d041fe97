"""HTTP request/response schemas (separate from the wire schemas in ``shared``).

The API rejects unknown fields (marshmallow's default ``RAISE``), unlike the
message consumers, which tolerate them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import Schema, fields, validate, validates_schema

from shared.messages import LOCALE_PATTERN, AwareDateTime, check_ends_after_start, validate_timezone

from ..outbox import iso_utc


class CustomerSchema(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    email = fields.Email(required=True, validate=validate.Length(max=320))
    locale = fields.String(load_default="en", validate=validate.Regexp(LOCALE_PATTERN))
    timezone = fields.String(load_default="UTC", validate=validate_timezone, metadata={"description": "IANA name"})
    push_tokens = fields.List(
        fields.String(validate=validate.Length(min=1, max=4096)), load_default=list, validate=validate.Length(max=20)
    )


class _TimeRange(Schema):
    starts_at = AwareDateTime(required=True, metadata={"description": "ISO-8601 with offset"})
    ends_at = AwareDateTime(required=True, metadata={"description": "ISO-8601 with offset, after starts_at"})

    @validates_schema
    def _order(self, data: dict, **kwargs: Any) -> None:
        check_ends_after_start(data)


class BookingCreateSchema(_TimeRange):
    resource_id = fields.String(required=True, validate=validate.Length(min=1, max=200))
    customer = fields.Nested(CustomerSchema, required=True)
    notes = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=2000))


class BookingRescheduleSchema(_TimeRange):
    pass


class BookingSchema(Schema):
    id = fields.String()
    status = fields.String()
    version = fields.Integer()
    resource_id = fields.String()
    starts_at = AwareDateTime()
    ends_at = AwareDateTime()
    customer = fields.Method("_customer")
    notes = fields.String(allow_none=True)
    created_at = AwareDateTime()
    updated_at = AwareDateTime()

    def _customer(self, booking: Any) -> dict:
        return {
            "name": booking.customer_name,
            "email": booking.customer_email,
            "locale": booking.customer_locale,
            "timezone": booking.customer_timezone,
            "push_tokens": list(booking.push_tokens or []),
        }


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
    }


class BookingQuerySchema(Schema):
    resource_id = fields.String()
    status = fields.String(validate=validate.OneOf(["confirmed", "cancelled"]))
    starts_from = AwareDateTime(data_key="from", metadata={"description": "bookings ending after this time"})
    starts_to = AwareDateTime(data_key="to", metadata={"description": "bookings starting before this time"})


class ApiErrorSchema(Schema):
    error = fields.Dict(metadata={"description": "{code, status, message, details?, request_id}"})
