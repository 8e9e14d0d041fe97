"""Hostile webhook requests to the notification service's webhook receiver.

Each case is a ``Case``: an endpoint, a raw body, how it is signed, and the 4xx it must get. Replayed by
``tests/integration/notification/test_hostile_webhooks.py`` against the app on SQLite and PostgreSQL:
every one is answered with that status and the one JSON error shape, never a 500, and stores nothing.
``sign``: ``"valid"`` signs the body correctly (so the case reaches the decoder), ``None`` sends it unsigned,
any other string is sent as the signature as it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

GENERIC = "/webhooks/email/http"
MAILGUN = "/webhooks/email/mailgun"

#: A generic event every case starts from (valid as it is).
VALID = {"id": "evt-hostile", "type": "bounced", "bounce": "hard", "message_id": "<m@x>",
         "occurred_at": "2030-05-01T12:00:00Z"}


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: bytes
    status: int
    sign: str | None = "valid"


def _with(**changes) -> bytes:
    doc = {**VALID, **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def cases() -> list[Case]:
    return [
        Case("unsigned", GENERIC, _with(), 401, sign=None),
        Case("signature of another body", GENERIC, _with(), 401, sign="sha256=" + "ab" * 32),
        Case("signature not hex", GENERIC, _with(), 401, sign="sha256=zz"),
        Case("signature without scheme", GENERIC, _with(), 401, sign="ab" * 32),
        Case("huge signature", GENERIC, _with(), 401, sign="sha256=" + "a" * 4000),
        Case("not json", GENERIC, b"{type: delivered}", 400),
        Case("not utf-8", GENERIC, b'{"id": "\xff"}', 400),
        Case("lone surrogate", GENERIC, _with(id="X").replace(b'"X"', b'"\\ud800"'), 422),
        Case("NaN", GENERIC, b'{"id": NaN}', 400),
        Case("deep nesting", GENERIC, b"[" * 1500 + b"]" * 1500, 400),
        Case("array body", GENERIC, b"[]", 422),
        Case("null body", GENERIC, b"null", 422),
        Case("empty body", GENERIC, b"", 400),
        Case("unknown type", GENERIC, _with(type="opened"), 422),
        Case("bounce without its kind", GENERIC, _with(bounce=...), 422),
        Case("bounce kind unknown", GENERIC, _with(bounce="medium"), 422),
        Case("id a number", GENERIC, _with(id=7), 422),
        Case("id empty", GENERIC, _with(id=""), 422),
        Case("id too long", GENERIC, _with(id="x" * 201), 422),
        Case("id with a newline", GENERIC, _with(id="a\nb"), 422),
        Case("message id missing", GENERIC, _with(message_id=...), 422),
        Case("message id too long", GENERIC, _with(message_id="m" * 501), 422),
        Case("occurred_at naive", GENERIC, _with(occurred_at="2030-05-01T12:00:00"), 422),
        Case("occurred_at year 10000", GENERIC, _with(occurred_at="10000-01-01T00:00:00+00:00"), 422),
        Case("occurred_at a number", GENERIC, _with(occurred_at=1900000000), 422),
        Case("body over the limit", GENERIC, _with(padding="x" * 70_000), 413),
        Case("mailgun unsigned", MAILGUN, json.dumps({"event-data": {"event": "delivered"}}).encode(), 401),
        Case("mailgun signature not an object", MAILGUN, json.dumps({"signature": "x"}).encode(), 401),
        Case("mailgun not json", MAILGUN, b"\x00\x01", 400),
        Case("mailgun body an array", MAILGUN, b"[1]", 401),
    ]


def mailgun_signed() -> list[Case]:
    """Cases whose Mailgun signature is valid (the test signs them) but whose event is not."""
    return [Case(name, MAILGUN, json.dumps(data).encode(), 422) for name, data in (
        ("mailgun event-data missing", None),
        ("mailgun event not a string", {"event": 5}),
        ("mailgun failed without severity", {"id": "e", "event": "failed", "timestamp": 1.0,
                                              "message": {"headers": {"message-id": "m"}}}),
        ("mailgun timestamp a string", {"id": "e", "event": "delivered", "timestamp": "now",
                                        "message": {"headers": {"message-id": "m"}}}),
        ("mailgun timestamp a bool", {"id": "e", "event": "delivered", "timestamp": True,
                                      "message": {"headers": {"message-id": "m"}}}),
        ("mailgun headers not an object", {"id": "e", "event": "delivered", "timestamp": 1.0,
                                           "message": {"headers": ["message-id"]}}),
        ("mailgun message id empty", {"id": "e", "event": "complained", "timestamp": 1.0,
                                      "message": {"headers": {"message-id": ""}}}),
    )]
