"""Hostile raw AMQP messages, as an attacker or a broken producer would publish them to ``notifications``.

Each case is ``(name, headers, content_type, body, expected reason fragment)``. The
booking broker user may publish to the exchange, so each of these can reach a worker.
Replayed by ``tests/notification/test_hostile_amqp.py``: every one must end in a dead-letter
queue with its reason on the first delivery, and the worker must keep serving.
"""

from __future__ import annotations

import json

import shared
from tests.notification.harness import dispatch_message, notification


def _dispatch_headers(message_id: str) -> dict:
    return dict(dispatch_message(notification(tokens=())).headers, id=message_id)


def _envelope(kwargs: dict) -> bytes:
    return json.dumps([[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]).encode()


def _payload(**changes) -> dict:
    payload = notification(tokens=())
    for path, value in changes.items():
        target = payload
        *parents, leaf = path.split("__")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return payload


def cases() -> list[tuple[str, dict, str | None, bytes, str]]:
    deep = 50_000
    return [
        ("h-brackets", _dispatch_headers("h-brackets"), "application/json",
         b"[" * 100_000 + b"]" * 100_000, "nests deeper"),
        ("h-deep-message", _dispatch_headers("h-deep-message"), "application/json",
         b'[[], {"message": ' + b"[" * deep + b"]" * deep + b"}, {}]", "nests deeper"),
        ("h-oversized", _dispatch_headers("h-oversized"), "application/json",
         _envelope({"message": "x" * (2 * 1024 * 1024)}), "limit"),
        ("h-not-utf8", _dispatch_headers("h-not-utf8"), "application/json",
         b'[[], {"message": "\xff\xfe"}, {}]', "not JSON"),
        ("h-huge-number", _dispatch_headers("h-huge-number"), "application/json",
         b'[[], {"message": ' + b"1" * 5001 + b"}, {}]", "not JSON"),
        ("h-lone-surrogate", _dispatch_headers("h-lone-surrogate"), "application/json",
         _envelope({"message": _payload(recipient__name="\\ud800")}).replace(b"\\\\ud800", b"\\ud800"),
         "surrogate"),
        ("h-long-id", _dispatch_headers("x" * 5000), "application/json",
         _envelope({"message": notification(tokens=())}), "'id' header"),
        ("h-timezone-folder", _dispatch_headers("h-timezone-folder"), "application/json",
         _envelope({"message": _payload(booking__timezone="Europe")}), "timezone"),
        ("h-crlf-resource", _dispatch_headers("h-crlf-resource"), "application/json",
         _envelope({"message": _payload(booking__resource_id="room\r\nBcc: victim@example.org")}), "one line"),
        ("h-email-task-crlf-subject", dict(_dispatch_headers("h-email-task-crlf-subject"), task=shared.EMAIL_TASK),
         "application/json",
         _envelope({"delivery_id": "h-email-task-crlf-subject", "notification_id": "n", "to": "ada@example.org",
                    "subject": "Hi\r\nBcc: victim@example.org", "text": "t", "html": "h"}), "not in the delivery log"),
    ]
