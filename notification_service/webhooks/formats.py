"""The webhook bodies the receiver understands, decoded once into a :class:`ProviderEvent` or refused.

Generic format (the project's HTTP e-mail provider), one JSON object per request::

    {"id": "evt-1", "type": "delivered" | "bounced" | "complained", "message_id": "<…>",
     "occurred_at": "2030-05-01T12:00:05Z", "bounce": "hard" | "soft"}   # bounce: with "bounced" only

Mailgun (documentation.mailgun.com, webhooks, JSON body): ``{"signature": {…}, "event-data": {"id",
"event": "delivered" | "failed" | "complained", "severity": "permanent" | "temporary" (failed),
"timestamp": <unix seconds>, "message": {"headers": {"message-id"}}}}``. A ``failed``/``permanent`` is a
hard bounce, ``temporary`` a soft one. Other event types (opened, clicked, …) are not ours: :data:`IGNORED`.

Unknown fields are ignored in both (providers add fields); every field used is typed and bounded.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from notification_service.webhooks.events import SOFT_BOUNCE, BadEvent, ProviderEvent

#: Provider names events are stored under (``provider_events.provider``).
GENERIC, MAILGUN = "email_http", "mailgun"
#: A Mailgun event type this receiver does not record (answered 200 so Mailgun does not retry it).
IGNORED = None
_MAILGUN_KINDS = {"delivered": "delivered", "complained": "complained"}


def _text(data: dict, key: str, limit: int) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= limit or not value.isprintable():
        raise BadEvent(f"{key}: a printable string of 1 to {limit} characters is required")
    return value


def _object(value: Any, name: str) -> dict:
    if not isinstance(value, dict):
        raise BadEvent(f"{name}: an object is required")
    return value


def _instant(value: Any) -> datetime:
    if isinstance(value, str) and len(value) <= 40:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None and 1970 <= moment.year <= 9998:
            return moment.astimezone(UTC)
    raise BadEvent("occurred_at: an ISO-8601 datetime with an offset is required")


def generic(body: Any) -> ProviderEvent:
    data = _object(body, "body")
    kind = data.get("type")
    if kind not in ("delivered", "bounced", "complained"):
        raise BadEvent("type: one of delivered, bounced, complained is required")
    if kind == "bounced":
        bounce = data.get("bounce")
        if bounce not in ("hard", "soft"):
            raise BadEvent("bounce: hard or soft is required with type bounced")
        kind = "bounced" if bounce == "hard" else SOFT_BOUNCE
    return ProviderEvent(GENERIC, _text(data, "id", 200), kind, _text(data, "message_id", 500),
                         _instant(data.get("occurred_at")))


def mailgun(body: Any) -> ProviderEvent | None:
    data = _object(_object(body, "body").get("event-data"), "event-data")
    event = data.get("event")
    if not isinstance(event, str):
        raise BadEvent("event-data.event: a string is required")
    if event == "failed":
        severity = data.get("severity")
        if severity not in ("permanent", "temporary"):
            raise BadEvent("event-data.severity: permanent or temporary is required with failed")
        kind = "bounced" if severity == "permanent" else SOFT_BOUNCE
    elif event in _MAILGUN_KINDS:
        kind = _MAILGUN_KINDS[event]
    else:
        return IGNORED
    headers = _object(_object(data.get("message"), "event-data.message").get("headers"), "message.headers")
    timestamp = data.get("timestamp")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float) or not 0 <= timestamp < 253370764800:
        raise BadEvent("event-data.timestamp: unix seconds are required")
    return ProviderEvent(MAILGUN, _text(data, "id", 200), kind, _text(headers, "message-id", 500),
                         datetime.fromtimestamp(timestamp, UTC))
