"""/v1/bookings: create, read, list, cancel, reschedule."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import sqlalchemy as sa
from flask import current_app, g, jsonify, request
from flask.views import MethodView
from sqlalchemy.exc import IntegrityError

from booking_service.api.auth import require_api_key
from booking_service.api.context import db_session
from booking_service.api.json_body import Blueprint
from booking_service.api.openapi import (
    CREATED_HEADERS,
    IDEMPOTENCY_KEY_PARAMETER,
    PAGINATION_HEADERS,
    error_responses,
)
from booking_service.api.schemas import (
    BookingCreateSchema,
    BookingQuerySchema,
    BookingRescheduleSchema,
    BookingSchema,
    booking_document,
    pagination_metadata,
)
from booking_service.core import bookings
from booking_service.core.contact_issues import BookingWithIssues, with_contact_issues
from booking_service.core.errors import Conflict, IdempotencyMismatch
from booking_service.storage.models import IdempotencyKey

blp = Blueprint("bookings", __name__, url_prefix="/v1/bookings", description="Bookings of resources")
blp.before_request(require_api_key)

#: Schema instances are stateless; webargs builds a new one per request from a
#: class (and with it the nested schemas), a tenth of a POST's CPU.
CREATE_SCHEMA = BookingCreateSchema()

IDEMPOTENCY_HEADER = "Idempotency-Key"


def _settings():
    return current_app.config["BOOKING_SETTINGS"]


def _lead() -> timedelta:
    return timedelta(seconds=_settings().reminder_lead_seconds)


def _request_hash() -> str:
    # The body as the bounded decoder read it (json_body.BoundedParser).
    canonical = json.dumps(g.get("json_body"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(session, key: str, request_hash: str):
    stored = session.get(IdempotencyKey, (g.client, key))
    if stored is None:
        return None
    if stored.request_hash != request_hash:
        raise IdempotencyMismatch(
            f"Idempotency-Key {key!r} was already used with a different request body; use a new key for a new booking."
        )
    response = jsonify(stored.response)
    response.status_code = stored.status_code
    response.headers["Idempotent-Replayed"] = "true"
    if stored.status_code == 201:
        response.headers["Location"] = f"/v1/bookings/{stored.response['id']}"
    return response


def _shown(booking) -> BookingWithIssues:
    return with_contact_issues(db_session(), [booking])[0]


@blp.route("")
class BookingCollection(MethodView):
    @blp.arguments(BookingQuerySchema, location="query")
    @blp.response(200, BookingSchema(many=True), headers=PAGINATION_HEADERS)
    def get(self, query):
        """List bookings, filtered by resource, status and time range (paginated: page, page_size)."""
        page, page_size = query.pop("page"), query.pop("page_size")
        select = bookings.search(db_session(), **query)
        total = db_session().execute(
            sa.select(sa.func.count()).select_from(select.order_by(None).subquery())
        ).scalar_one()
        rows = db_session().execute(select.offset((page - 1) * page_size).limit(page_size)).scalars().all()
        pages = json.dumps(pagination_metadata(page, page_size, total))
        return with_contact_issues(db_session(), rows), {"X-Pagination": pages}

    @blp.arguments(CREATE_SCHEMA)
    @blp.response(201, BookingSchema, headers=CREATED_HEADERS)
    @blp.doc(parameters=[IDEMPOTENCY_KEY_PARAMETER], responses=error_responses(409))
    def post(self, data):
        """Book a resource. Send an ``Idempotency-Key`` header to retry safely.

        409: the resource is already booked for that time. 422: invalid input, or the
        Idempotency-Key was used before with another body.
        """
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is not None and not (0 < len(key) <= 200 and key.isprintable()):
            raise IdempotencyMismatch("Idempotency-Key must be 1 to 200 printable characters.")
        customer = data["customer"]
        new = bookings.NewBooking(
            resource_id=data["resource_id"],
            starts_at=data["starts_at"],
            ends_at=data["ends_at"],
            customer_name=customer["name"],
            customer_email=customer["email"],
            customer_locale=customer["locale"],
            customer_timezone=customer["timezone"],
            push_tokens=tuple(customer["push_tokens"]),
            notes=data.get("notes"),
        )
        # All CPU work (ids, contract payloads and their validation, the response)
        # happens here, before the transaction: on SQLite it holds the one write lock.
        values, outbox_rows = bookings.prepare(new, g.request_id, _lead())
        body = booking_document(values)
        idempotency = bookings.IdempotencyRecord(g.client, key, _request_hash()) if key else None
        try:
            bookings.create(current_app.extensions["booking_engine"], values, outbox_rows, body, idempotency)
        except (IntegrityError, Conflict):
            # The key was used before, or a concurrent request with it won the race:
            # answer what that request answered (no lookup on the normal path).
            if idempotency is not None:
                with db_session().begin():
                    if (replayed := _replay(db_session(), idempotency.key, idempotency.request_hash)) is not None:
                        return replayed
            raise
        response = jsonify(body)
        response.status_code = 201
        response.headers["Location"] = f"/v1/bookings/{values['id']}"
        return response


@blp.route("/<uuid:booking_id>")
class BookingItem(MethodView):
    @blp.response(200, BookingSchema)
    @blp.doc(responses=error_responses(404))
    def get(self, booking_id):
        """Read one booking, with its contact issues (what its notifications' receipts say about the address)."""
        return _shown(bookings.get(db_session(), str(booking_id)))

    @blp.arguments(BookingRescheduleSchema)
    @blp.response(200, BookingSchema)
    @blp.doc(responses=error_responses(404, 409))
    def patch(self, data, booking_id):
        """Reschedule: move the booking; its reminder moves with it.

        409: the resource is already booked for that time, the booking is cancelled, or it was
        rescheduled as often as the service allows (``BOOKING_MAX_RESCHEDULES``, 10 by default).
        """
        with db_session().begin():
            booking = bookings.reschedule(db_session(), str(booking_id), data["starts_at"], data["ends_at"],
                                          g.request_id, _lead(), _settings().max_reschedules)
        return _shown(booking)


@blp.route("/<uuid:booking_id>/cancel")
class BookingCancel(MethodView):
    @blp.response(200, BookingSchema)
    @blp.doc(responses=error_responses(404, 409))
    def post(self, booking_id):
        """Cancel: the customer is told, and the pending reminder is withdrawn."""
        with db_session().begin():
            booking = bookings.cancel(db_session(), str(booking_id), g.request_id)
        return _shown(booking)
