"""Hostile raw AMQP messages, as an attacker or a broken producer would publish them to ``notifications``.

Each case is ``(name, headers, content_type, body, expected reason fragment)``. The
booking broker user may publish to the exchange, so each of these can reach a worker.
Replayed by ``tests/notification/test_hostile_amqp.py``: every one must end in a dead-letter
queue with its reason on the first delivery, and the worker must keep serving.
Only ever published into a test's own vhost: a forged ``x-death`` crashed a RabbitMQ 3.10
queue when a worker rejected it (issue 15 item 2).
"""

from __future__ import annotations

import json

import shared
from tests.hostile import changed
from tests.notification.harness import dispatch_message, notification
from tests.support import DISPATCH_HIGH, EMAIL_HIGH


def _dispatch_headers(message_id: str) -> dict:
    return dict(dispatch_message(notification(tokens=())).headers, id=message_id)


def _envelope(kwargs: dict) -> bytes:
    return json.dumps([[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]).encode()


def _payload(**changes) -> dict:
    return changed(notification(tokens=()), **changes)


def _email_task(message_id: str, **headers) -> dict:
    return dict(_dispatch_headers(message_id), task=shared.EMAIL_TASK, **headers)


def _email_body(message_id: str) -> bytes:
    return _envelope({"delivery_id": message_id, "notification_id": "n", "to": "ada@example.org",
                      "subject": "s", "text": "t", "html": "h"})


#: Issue 15 item 6: a dispatch whose callback made a worker publish a forged receipt.
RECEIPT_CALLBACK = {"task": "celery.accumulate", "args": [], "kwargs": {}, "subtask_type": None, "immutable": True,
                    "options": {"exchange": shared.RECEIPTS_EXCHANGE, "routing_key": "email.sent"}}


def _with_embed(kwargs: dict, **embed) -> bytes:
    workflow = {"callbacks": None, "errbacks": None, "chain": None, "chord": None, **embed}
    return json.dumps([[], kwargs, workflow]).encode()


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
        # Issue 15 item 2: forged dead-letter headers on a well-formed e-mail task.
        ("h-x-death-count-abc",
         _email_task("h-x-death-count-abc",
                     **{"x-death": [{"queue": EMAIL_HIGH, "reason": "rejected", "count": "abc"}]}),
         "application/json", _email_body("h-x-death-count-abc"), "'x-death'"),
        ("h-x-death-not-tables", _email_task("h-x-death-not-tables", **{"x-death": [1, "x"]}),
         "application/json", _email_body("h-x-death-not-tables"), "'x-death'"),
        ("h-x-first-death-queue", _email_task("h-x-first-death-queue", **{"x-first-death-queue": DISPATCH_HIGH,
                                                                         "x-last-death-reason": "expired"}),
         "application/json", _email_body("h-x-first-death-queue"), "'x-first-death-queue'"),
        ("h-unknown-x-header", dict(_dispatch_headers("h-unknown-x-header"), **{"x-priority-override": 9}),
         "application/json", _envelope({"message": notification(tokens=())}), "'x-priority-override'"),
        # Issue 15 item 6: a workflow in embed.
        ("h-receipt-callback", _dispatch_headers("h-receipt-callback"), "application/json",
         _with_embed({"message": notification(tokens=())}, callbacks=[RECEIPT_CALLBACK]), "callbacks"),
        ("h-errback-chain-chord", _dispatch_headers("h-errback-chain-chord"), "application/json",
         _with_embed({"message": notification(tokens=())}, errbacks=[RECEIPT_CALLBACK], chain=[RECEIPT_CALLBACK],
                     chord=RECEIPT_CALLBACK), "errbacks, chain, chord"),
        # Issue 15 item 4: addresses no mail server can be relied on to deliver (SMTPUTF8).
        ("h-non-ascii-local-part", _dispatch_headers("h-non-ascii-local-part"), "application/json",
         _envelope({"message": _payload(recipient__email=NON_ASCII_ADDRESSES[0])}), "ASCII"),
        ("h-non-ascii-address", _dispatch_headers("h-non-ascii-address"), "application/json",
         _envelope({"message": _payload(recipient__email=NON_ASCII_ADDRESSES[1])}), "ASCII"),
    ]


#: The addresses of the two cases above: none may appear in a log line, a reason or the CLI's output.
NON_ASCII_ADDRESSES = ("ädä@bücher.example", "用户@例子.广告")
