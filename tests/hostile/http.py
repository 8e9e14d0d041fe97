"""Hostile HTTP requests to the booking API, as found by trying them against the running service.

Each case is a ``Case``: a request and the 4xx it must get. Replayed by
``tests/booking/test_hostile_http.py`` against the app on SQLite and on PostgreSQL:
every one must be answered with that status in the one error shape, never a 500,
and must store nothing. ``{booking_id}`` in a path is an existing booking,
``{fully_rescheduled_id}`` one already rescheduled ``BOOKING_MAX_RESCHEDULES`` times.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from tests.hostile import changed

#: A booking body every case starts from (valid as it is).
VALID = {
    "resource_id": "room-hostile",
    "starts_at": "2031-03-01T09:00:00Z",
    "ends_at": "2031-03-01T10:00:00Z",
    "customer": {"name": "Grace Hopper", "email": "grace@example.org", "locale": "en",
                 "timezone": "America/New_York", "push_tokens": ["tok-1"]},
}


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    status: int
    body: bytes | None = None
    headers: dict = field(default_factory=dict)


def _with(**changes) -> dict:
    """VALID with ``customer__name=...`` style changes (a value of ``...`` removes the field)."""
    return changed(VALID, **changes)


def _json(value) -> bytes:
    return json.dumps(value).encode()


def post(name: str, body: bytes, status: int = 422, **headers) -> Case:
    return Case(name, "POST", "/v1/bookings", status, body, {"Content-Type": "application/json", **headers})


def patch(name: str, body: bytes, status: int = 422) -> Case:
    return Case(name, "PATCH", "/v1/bookings/{booking_id}", status, body, {"Content-Type": "application/json"})


def get(name: str, query: str, status: int = 422) -> Case:
    return Case(name, "GET", f"/v1/bookings?{query}", status)


def cases() -> list[Case]:
    surrogate = _json(_with(customer__name="X")).replace(b'"X"', b'"\\ud800"')
    move = {"starts_at": "2031-03-02T09:00:00Z", "ends_at": "2031-03-02T10:00:00Z"}
    return [
        # The JSON decoder: 400, before any schema.
        post("notes-1000-deep", b'{"notes": ' + b"[" * 1000 + b"]" * 1000 + b"}", 400),
        post("number-5001-digits", b'{"notes": ' + b"1" * 5001 + b"}", 400),
        post("lone-surrogate-in-name", surrogate, 400),
        post("lone-surrogate-in-key", _json(VALID)[:-1] + b', "\\udfff": 1}', 400),
        post("not-utf8", _json(_with(customer__name="X")).replace(b'"X"', b'"\xff\xfe"'), 400),
        post("nan", b'{"notes": NaN}', 400),
        post("infinity", b'{"notes": -Infinity}', 400),
        post("not-json", b"{not json", 400),
        post("truncated", _json(VALID)[:40], 400),
        post("duplicate-key", _json(VALID)[:-1] + b', "resource_id": "room-other"}', 400),
        post("duplicate-key-nested", _json(VALID).replace(b'"name": "Grace Hopper"',
                                                         b'"name": "Grace Hopper", "name": "Ada"'), 400),
        Case("wrong-content-type", "POST", "/v1/bookings", 415, _json(VALID), {"Content-Type": "text/plain"}),
        Case("form-content-type", "POST", "/v1/bookings", 415, b"resource_id=room",
             {"Content-Type": "application/x-www-form-urlencoded"}),
        post("brackets-over-the-size-limit", b"[" * 100_000, 413),
        post("notes-over-the-size-limit", _json(_with(notes="x" * 70_000)), 413),
        # The schema: 422 naming the field.
        post("array-body", b"[1, 2]"),
        post("string-body", b'"booking"'),
        post("empty-object", b"{}"),
        post("unknown-field", _json(_with(surprise=1))),
        post("customer-not-object", _json(_with(customer="Grace"))),
        post("locale-36-characters", _json(_with(customer__locale="en-" + "abcdefgh-" * 3 + "abcdef"))),
        post("locale-crlf", _json(_with(customer__locale="en\r\nX: y"))),
        post("nul-in-name", _json(_with(customer__name="Gr\x00ace"))),
        post("nul-in-resource", _json(_with(resource_id="room\x00a"))),
        post("nul-in-notes", _json(_with(notes="hello\x00world"))),
        post("nul-in-push-token", _json(_with(customer__push_tokens=["tok\x00"]))),
        post("control-char-in-notes", _json(_with(notes="bell\x07"))),
        post("crlf-in-resource", _json(_with(resource_id="room\r\nBcc: victim@example.org"))),
        post("lf-at-end-of-resource", _json(_with(resource_id="room\n"))),
        post("crlf-in-name", _json(_with(customer__name="Grace\r\nBcc: victim@example.org"))),
        post("crlf-in-email", _json(_with(customer__email="grace@example.org\r\nBcc: victim@example.org"))),
        post("resource-201-characters", _json(_with(resource_id="r" * 201))),
        post("name-201-characters", _json(_with(customer__name="n" * 201))),
        post("notes-2001-characters", _json(_with(notes="n" * 2001))),
        post("21-push-tokens", _json(_with(customer__push_tokens=[f"t{i}" for i in range(21)]))),
        # Every notification goes to every token: 20 tokens made one 72-byte PATCH 2 x 21 deliveries.
        post("6-push-tokens", _json(_with(customer__push_tokens=[f"t{i}" for i in range(6)]))),
        post("push-tokens-4097-characters-together", _json(_with(customer__push_tokens=["a" * 2048, "b" * 2049]))),
        # C1, line separators and bidi controls passed the "no control characters" rule.
        post("c1-next-line-in-name", _json(_with(customer__name="Grace\x85Bcc: victim@example.org"))),
        post("c1-csi-in-resource", _json(_with(resource_id="room\x9b31m"))),
        post("line-separator-in-name", _json(_with(customer__name="Grace\u2028Hopper"))),
        post("paragraph-separator-in-resource", _json(_with(resource_id="room\u2029"))),
        post("bidi-override-in-name", _json(_with(customer__name="Grace \u202egro.elpmaxe"))),
        post("bidi-isolate-in-push-token", _json(_with(customer__push_tokens=["tok\u2066"]))),
        post("byte-order-mark-in-resource", _json(_with(resource_id="\ufeffroom"))),
        post("c1-in-email-domain", _json(_with(customer__email="grace@exa\x85mple.org"))),
        post("bidi-override-in-email-domain", _json(_with(customer__email="grace@\u202eexample.org"))),
        post("c1-in-notes", _json(_with(notes="first line\n\x85second"))),
        post("line-separator-in-notes", _json(_with(notes="first line\u2028second"))),
        post("bidi-isolate-in-notes", _json(_with(notes="total: \u2067100\u2069"))),
        post("timezone-region-folder", _json(_with(customer__timezone="Europe"))),
        post("timezone-subfolder", _json(_with(customer__timezone="America/Argentina"))),
        post("timezone-path", _json(_with(customer__timezone="../../../etc/passwd"))),
        post("timezone-nul", _json(_with(customer__timezone="UTC\x00"))),
        post("timezone-5000-characters", _json(_with(customer__timezone="A/" * 2500))),
        post("timezone-lone-surrogate", _json(_with(customer__timezone="X")).replace(b'"X"', b'"\\udc00"'), 400),
        post("start-year-1", _json(_with(starts_at="0001-01-01T00:01:00Z"))),
        post("start-year-10000-in-utc", _json(_with(starts_at="9999-12-31T20:00:00-05:00",
                                                    ends_at="9999-12-31T21:00:00-05:00"))),
        post("start-before-1970", _json(_with(starts_at="1969-12-31T23:00:00Z"))),
        post("start-naive", _json(_with(starts_at="2031-03-01T09:00:00"))),
        post("start-not-a-date", _json(_with(starts_at="tomorrow"))),
        post("start-a-number", _json(_with(starts_at=1_700_000_000))),
        post("end-before-start", _json(_with(ends_at="2031-03-01T08:00:00Z"))),
        post("idempotency-key-201-characters", _json(VALID), **{"Idempotency-Key": "k" * 201}),
        post("idempotency-key-control-character", _json(VALID), **{"Idempotency-Key": "key\x7f"}),
        # Reschedule.
        patch("reschedule-start-year-1", _json({**move, "starts_at": "0001-01-01T00:01:00Z"})),
        patch("reschedule-start-year-10000-in-utc", _json({"starts_at": "9999-12-31T20:00:00-05:00",
                                                           "ends_at": "9999-12-31T21:00:00-05:00"})),
        patch("reschedule-deep", b'{"starts_at": ' + b"[" * 1000 + b"]" * 1000 + b"}", 400),
        patch("reschedule-surrogate", b'{"starts_at": "\\ud800", "ends_at": "2031-03-02T10:00:00Z"}', 400),
        patch("reschedule-unknown-field", _json({**move, "resource_id": "elsewhere"})),
        Case("reschedule-unknown-booking", "PATCH", "/v1/bookings/00000000-0000-4000-8000-000000000000", 404,
             _json(move), {"Content-Type": "application/json"}),
        # One booking moved without end: two more notifications to every address each time.
        Case("reschedule-over-the-limit", "PATCH", "/v1/bookings/{fully_rescheduled_id}", 409, _json(move),
             {"Content-Type": "application/json"}),
        Case("cancel-unknown-booking", "POST", "/v1/bookings/00000000-0000-4000-8000-000000000000/cancel", 404),
        # The listing's query.
        get("page-20-digits", "page=99999999999999999999"),
        get("page-zero", "page=0"),
        get("page-size-1000", "page_size=1000"),
        get("page-not-a-number", "page=one"),
        get("from-year-1", "from=0001-01-01T00:01:00Z"),
        get("from-year-10000-in-utc", "from=9999-12-31T20:00:00-05:00"),
        get("to-naive", "to=2031-03-01T09:00:00"),
        get("resource-nul", "resource_id=x%00y"),
        get("resource-crlf", "resource_id=x%0D%0Ay"),
        get("resource-201-characters", "resource_id=" + "r" * 201),
        get("status-unknown", "status=everything"),
        get("resource-line-separator", "resource_id=x%E2%80%A8y"),
        get("resource-c1", "resource_id=x%C2%85y"),
        # The notification story was one unpaginated answer (909 KB after 100 PATCHes).
        Case("notifications-page-zero", "GET", "/v1/bookings/{booking_id}/notifications?page=0", 422),
        Case("notifications-page-size-101", "GET", "/v1/bookings/{booking_id}/notifications?page_size=101", 422),
        Case("notifications-page-20-digits", "GET",
             "/v1/bookings/{booking_id}/notifications?page=99999999999999999999", 422),
        # Methods and routes.
        Case("made-up-method", "QHWIJGUUDKTU", "/v1/bookings", 405),
        Case("made-up-method-unknown-route", "QHWIJGUUDKTU", "/x", 404),
        Case("delete-collection", "DELETE", "/v1/bookings", 405),
        Case("booking-id-not-a-uuid", "GET", "/v1/bookings/not-a-uuid", 404),
        Case("double-slash-redirect-to-the-host-header", "GET", "/v1//bookings", 404, headers={"Host": "evil.example"}),
    ]
