"""Hostile delivery receipts, as anyone allowed to publish to ``notifications.receipts`` could send them.

Each case is a ``Case``: a body for the ``booking.receipts`` queue and a fragment of
the reason it must be dead-lettered with. Every one used to stop the receipts consumer
for good (an exception it did not catch, the message unacked and fatal again at each
restart), be retried forever as "database unavailable" (a DataError on PostgreSQL), or
be trusted as it came (another booking's notification or delivery). Replayed by
``tests/booking/test_hostile_receipts.py`` against the real consumer on SQLite and on
PostgreSQL: each must be dead-lettered on its first delivery with its reason, nothing
of it stored, and the consumer must go on applying good receipts.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from tests.hostile import changed

#: Stands for a raw JSON token (``1e300``, ``NaN``) that ``json.dumps`` would not write from a Python value.
_RAW = "@raw@"


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    reason: str


def _body(receipt: dict, raw: str | None = None, **changes) -> bytes:
    """The receipt's JSON; ``raw`` replaces the one change whose value is ``_RAW`` (the default ensure_ascii
    writes a lone surrogate as ``\\ud800`` and NUL as ``\\u0000``, as a forger would)."""
    text = json.dumps(changed(receipt, **changes))
    return (text.replace(f'"{_RAW}"', raw) if raw is not None else text).encode()


def cases(valid: dict, other: dict) -> list[Case]:
    """The corpus around two receipts the consumer would apply.

    ``valid``: a receipt of one booking's notification whose delivery is already stored (sequence 1);
    ``other``: a receipt of another booking's notification.
    """
    later = {"sequence": 2, "status": "dead", "reason": "forged"}
    return [
        # Integers and datetimes past what the contract bounds (each one used to kill the consumer or loop it).
        Case("r-occurred-at-year-10000-in-utc", _body(valid, occurred_at="9999-12-31T23:59:59-14:00"), "occurred_at"),
        Case("r-occurred-at-year-1", _body(valid, occurred_at="0001-01-01T00:00:00+14:00"), "occurred_at"),
        Case("r-sequence-2-pow-31", _body(valid, sequence=2**31), "sequence"),
        Case("r-sequence-2-pow-63", _body(valid, sequence=2**63), "sequence"),
        Case("r-sequence-1e300", _body(valid, "1e300", sequence=_RAW), "sequence"),
        Case("r-sequence-infinity", _body(valid, "Infinity", sequence=_RAW), "sequence"),
        Case("r-sequence-nan", _body(valid, "NaN", sequence=_RAW), "sequence"),
        Case("r-sequence-fraction", _body(valid, "2.5", sequence=_RAW), "sequence"),
        Case("r-sequence-string", _body(valid, sequence="2"), "sequence"),
        Case("r-attempt-2-pow-63", _body(valid, attempt=2**63), "attempt"),
        Case("r-attempt-1e300", _body(valid, "1e300", attempt=_RAW), "attempt"),
        Case("r-booking-version-2-pow-63", _body(valid, booking__version=2**63), "booking"),
        Case("r-booking-version-1e300", _body(valid, "1e300", booking__version=_RAW), "booking"),
        # Text no database or log can hold, or that is shown to people.
        Case("r-reason-lone-surrogate", _body(valid, reason="\ud800"), "reason"),
        Case("r-correlation-id-lone-surrogate", _body(valid, correlation_id="req-\udfff"), "correlation_id"),
        Case("r-provider-message-id-lone-surrogate", _body(valid, provider_message_id="\udbff"), "provider_message_id"),
        Case("r-nul-in-recipient", _body(valid, recipient="g***@exa\x00mple.org"), "recipient"),
        Case("r-html-recipient", _body(valid, recipient="g***@<script>alert(1)</script>"), "recipient"),
        Case("r-recipient-final-newline", _body(valid, recipient="g***@example.org\n"), "recipient"),
        # Statuses are an open set for the consumer (issue 18), but a status stays a plain bounded word: a
        # status a newer producer invents is stored and shown; markup, a line break or a paragraph is not.
        Case("r-status-with-markup", _body(valid, status="Delivered<script>", sequence=2), "status"),
        Case("r-status-final-newline", _body(valid, status="delivered\n", sequence=2), "status"),
        Case("r-status-33-characters", _body(valid, status="d" * 33, sequence=2), "status"),
        Case("r-status-not-a-string", _body(valid, status=["sent"], sequence=2), "status"),
        # Bodies the JSON parser cannot take.
        Case("r-brackets-60000", b"[" * 60_000, "not JSON"),
        Case("r-deep-unknown-field", _body(valid, "[" * 30_000 + "]" * 30_000, surprise=_RAW), "not JSON"),
        # Contract-valid, but contradicting what the booking service knows.
        Case("r-another-bookings-notification", _body(valid, booking__id=other["booking"]["id"], **later),
             "booking.id"),
        Case("r-phantom-delivery-of-another-booking",
             _body(valid, booking__id=other["booking"]["id"], delivery_id=str(uuid.uuid4())), "booking.id"),
        Case("r-another-notifications-delivery", _body(other, delivery_id=valid["delivery_id"], **later),
             "delivery_id"),
        Case("r-another-channel-for-the-delivery", _body(valid, channel="push", recipient="tok-…-1", **later),
             "delivery_id"),
        Case("r-event-not-the-notifications", _body(valid, event="booking.cancelled", **later), "event"),
        Case("r-booking-version-not-the-notifications", _body(valid, booking__version=2, **later),
             "booking.version"),
    ]
