"""Receipts carry no address and a short, scrubbed reason."""

from __future__ import annotations

import json

import shared
from notification_service.receipts.message import build_receipt, receipt_reason, to_message
from tests.integration.notification.test_receipts import EMAIL, TOKEN, joined_row


def test_a_receipt_masks_the_address_and_scrubs_the_reason():
    message = build_receipt(joined_row())
    assert message["recipient"] == "fcm-…42" and message["sequence"] == 3 and message["attempt"] == 2
    assert message["occurred_at"] == "2030-05-01T12:00:00Z" and message["booking"]["version"] == 2
    text = json.dumps(message)
    assert TOKEN not in text and EMAIL not in text and "bob@example.com" not in text
    assert "<recipient>" in message["reason"] and "b***@example.com" in message["reason"]
    shared.load_notification_status(message)
    email = build_receipt(joined_row(channel="email", address=EMAIL, reason=f"550 {EMAIL.upper()} unknown\r\nmore"))
    assert email["recipient"] == "a***@example.org" and EMAIL not in json.dumps(email).lower()
    assert "\n" not in email["reason"]


def test_a_reason_is_one_short_line():
    assert len(receipt_reason("x" * 5000, EMAIL)) == 200
    assert receipt_reason("a\x00b\nc", EMAIL) == "a b c"
    assert receipt_reason(None, EMAIL) is None


def test_the_provider_event_and_suppression_statuses_are_built_and_routed_by_their_status():
    for status, reason, attempt in (("delivered", None, 1), ("bounced", "hard bounce", 1),
                                    ("complained", "complaint", 1), ("suppressed", "on the suppression list", 0)):
        row = joined_row(channel="email", address=EMAIL, status=status, reason=reason, attempt=attempt)
        message = build_receipt(row)
        assert (message["status"], message["reason"]) == (status, reason)
        assert to_message(row, message).routing_key == f"email.{status}"
