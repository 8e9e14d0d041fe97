"""/v1/bookings/<id>/notifications: what became of a booking's notifications (read-only).

Every string comes from a delivery receipt, that is from outside: it is plain
data in a JSON answer (sent with ``X-Content-Type-Options: nosniff``), never
markup, and a client escapes it like any other text before showing it.
"""

from __future__ import annotations

import json

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from booking_service.api.auth import require_api_key
from booking_service.api.context import db_session
from booking_service.api.openapi import PAGINATION_HEADERS, error_responses
from booking_service.api.schemas import MAX_PAGE_SIZE, PageQuerySchema, pagination_metadata
from booking_service.core import timeline
from shared.messages import AwareDateTime

#: How the reason of a receipt reaches a client.
PLAIN_TEXT = "Plain text from the notification service, at most 200 characters; escape it before showing it as HTML"

#: The statuses a receipt reports, as the timeline shows them.
STATUSES = ("sent (the provider took it) | delivered | bounced | complained (marked as spam) | suppressed (not "
            "sent: the address is on the suppression list) | retrying | dead | stale | expired. An open set: a "
            "status a newer notification service reports is shown as it came; show an unknown one as text")

blp = Blueprint("notifications", __name__, url_prefix="/v1/bookings",
                description="What became of a booking's notifications (delivery receipts)")
blp.before_request(require_api_key)


class ReceiptStepSchema(Schema):
    sequence = fields.Integer(metadata={"description": "Per delivery, from 1, in the order things happened"})
    status = fields.String(metadata={"description": STATUSES})
    attempt = fields.Integer()
    occurred_at = AwareDateTime()
    reason = fields.String(allow_none=True, metadata={"description": PLAIN_TEXT})


class DeliveryStatusSchema(Schema):
    delivery_id = fields.String()
    channel = fields.String(metadata={"description": "email | push"})
    recipient = fields.String(metadata={"description": "Masked address: a***@example.org, devi…42 (*** when a stored "
                                                       "one no longer reads as a mask)"})
    status = fields.String(metadata={
        "description": f"Current status: the receipt with the highest sequence. {STATUSES}"})
    attempts = fields.Integer(metadata={"description": "Provider attempts so far"})
    last_change_at = AwareDateTime()
    reason = fields.String(allow_none=True,
                           metadata={"description": f"Why (retrying, dead, stale, expired, bounced …). {PLAIN_TEXT}"})
    provider_message_id = fields.String(allow_none=True)
    provider = fields.String(allow_none=True, metadata={
        "description": "The provider that took the message (email_http, email_smtp, email_file, push_http, push_file), "
                       "or, while retrying after a timeout, the one that may have it and gets the retry; null before "
                       "any provider was reached"})
    sequence = fields.Integer(metadata={"description": "Sequence of the current status"})
    history_complete = fields.Boolean(metadata={"description": "False while an earlier receipt is still on its way"})
    history = fields.List(fields.Nested(ReceiptStepSchema))


class NotificationStorySchema(Schema):
    notification_id = fields.String()
    event = fields.String(metadata={"description": "booking.confirmed | booking.cancelled | booking.rescheduled | "
                                                   "booking.reminder"})
    state = fields.String(metadata={"description": "scheduled | pending | published (handed to the broker) | "
                                                   "withdrawn (cancelled or moved before it was due) | expired | "
                                                   "invalid"})
    requested_at = AwareDateTime(metadata={"description": "When the booking change asked for it"})
    due_at = AwareDateTime()
    published_at = AwareDateTime(allow_none=True, metadata={"description": "When the relay published it"})
    correlation_id = fields.String()
    deliveries = fields.List(fields.Nested(DeliveryStatusSchema),
                             metadata={"description": "One per channel and address; empty until a receipt arrived"})


class BookingNotificationsSchema(Schema):
    booking_id = fields.String()
    booking_status = fields.String()
    booking_version = fields.Integer()
    notifications = fields.List(fields.Nested(NotificationStorySchema))


#: Default page size: every notification of a booking within the default reschedule limit
#: (confirmation and reminder, two per reschedule, the cancellation: 23) fits on the first page.
DEFAULT_PAGE_SIZE = 25


class NotificationQuerySchema(PageQuerySchema):
    page_size = fields.Integer(load_default=DEFAULT_PAGE_SIZE, validate=validate.Range(min=1, max=MAX_PAGE_SIZE))


@blp.route("/<uuid:booking_id>/notifications")
class BookingNotifications(MethodView):
    @blp.arguments(NotificationQuerySchema, location="query")
    @blp.response(200, BookingNotificationsSchema, headers=PAGINATION_HEADERS)
    @blp.doc(responses=error_responses(404))  # 401 and the error shape come with every /v1 operation
    def get(self, query, booking_id):
        """What became of the booking's notifications: each one, and per channel its current status.

        Paginated (page, page_size; the X-Pagination header counts notifications), oldest first.
        """
        story, total = timeline.timeline(db_session(), str(booking_id), query["page"], query["page_size"])
        return story, {"X-Pagination": json.dumps(pagination_metadata(query["page"], query["page_size"], total))}
