"""Unit tests of issue 15 items 2, 4 and 6: the envelope guard's header and workflow rules, the
address forms the providers send, and what the dead-letter tools print."""

from __future__ import annotations

import email
import email.policy
import json
import smtplib

import pika
import pytest
import responses

import shared
from notification_service.broker import dlq
from notification_service.errors import PermanentError
from notification_service.providers import EmailContent, HttpEmailProvider, SmtpEmailProvider, build_email
from notification_service.settings import Settings
from notification_service.worker import envelope_guard as envelope
from tests.support import DISPATCH_HIGH, EMAIL_HIGH

EMAIL_URL = "https://mail.invalid/send"
GOOD_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def _inspect(headers: dict, embed: dict | None = None) -> str | None:
    body = json.dumps([[], {"message": {}}, GOOD_EMBED if embed is None else embed])
    problem, _ = envelope.inspect({"id": "i", "task": shared.DISPATCH_TASK, **headers}, "application/json", "utf-8",
                                  body, None)
    return problem


@pytest.mark.parametrize("headers", [
    {"x-death": [{"queue": EMAIL_HIGH, "reason": "rejected", "count": "abc"}]},
    {"x-death": [1, "x"]},
    {"x-death": [{"queue": EMAIL_HIGH, "reason": "rejected", "count": 1}]},  # well-formed: still not a client's
    {"x-first-death-queue": DISPATCH_HIGH},
    {"x-last-death-reason": "expired"},
    {"x-anything": "1"},
    {"X-Death": []},
])
def test_the_guard_refuses_broker_reserved_and_unknown_x_headers_on_arrival(headers):
    problem = _inspect(headers)
    assert problem is not None and "reserved for the broker" in problem and next(iter(headers)) in problem


def test_the_guard_accepts_the_x_headers_producers_and_quorum_queues_set():
    assert _inspect({shared.wire.CORRELATION_HEADER: "c", shared.wire.MESSAGE_TYPE_HEADER: "m",
                     "x-delivery-count": 2}) is None


@pytest.mark.parametrize("field", envelope.WORKFLOW_FIELDS)
def test_the_guard_refuses_a_workflow_in_embed(field):
    # Issue 15 item 6: this callback made a worker publish a forged receipt.
    signature = {"task": "celery.accumulate", "args": [], "kwargs": {}, "subtask_type": None, "immutable": False,
                 "options": {"exchange": shared.RECEIPTS_EXCHANGE, "routing_key": "email.sent"}}
    problem = _inspect({}, {**GOOD_EMBED, field: [signature] if field != "chord" else signature})
    assert problem is not None and field in problem


def test_strip_reserved_keeps_everything_else():
    headers = {"id": "i", "task": "t", "x-correlation-id": "c", "x-death": [1], "x-first-death-queue": "q", "x-foo": 1}
    assert envelope.strip_reserved(headers) == {"id": "i", "task": "t", "x-correlation-id": "c"}
    assert envelope.strip_reserved(None) == {}


def _dead(headers: dict, body: bytes, dlq_name: str = shared.dead_letter_queue(EMAIL_HIGH)) -> dlq.DeadMessage:
    return dlq.DeadMessage(dlq_name, 1, pika.BasicProperties(headers=headers, content_type="application/json",
                                                             content_encoding="utf-8"), body)


def test_dead_letter_tools_read_forged_x_death_without_crashing_and_replay_to_the_dlqs_own_queue():
    message = _dead({"id": "i", "task": shared.EMAIL_TASK, "x-death": [1, "x", {"count": "abc", "queue": "elsewhere"}],
                     "x-first-death-queue": DISPATCH_HIGH}, b"[[], {}, {}]")
    assert message.death_count == 0 and message.origin_queue == EMAIL_HIGH
    assert dlq.poison_reason(message) is None  # replay strips x-death: the copy is a sound message


def test_dlq_show_and_list_print_no_address_or_token():
    body = json.dumps([[], {"delivery_id": "d", "to": "ada@bücher.example", "token": "tok-secret",
                            "message": {"recipient": {"email": "grace@example.org", "push_tokens": ["t-1"],
                                                      "name": "Grace"}}}, GOOD_EMBED]).encode()
    message = _dead({"id": "i", "task": shared.EMAIL_TASK}, body)
    shown = json.dumps(dlq.show(message, {"i": "permanent: SMTP refused ädä@bücher.example"}), ensure_ascii=False)
    for personal in ("ada@bücher.example", "tok-secret", "grace@example.org", "t-1", "ädä@bücher.example"):
        assert personal not in shown
    assert "Grace" in shown  # only addresses and tokens are masked
    raw = _dead({"id": "j"}, b"not json, mail ada@example.org")
    assert "ada@example.org" not in json.dumps(dlq.show(raw, {}))


def test_an_international_domain_is_written_in_idna_form():
    content = EmailContent("d-1", "Ada Lovelace <ada@bücher.example>", "S", "t", "<p>h</p>")
    data, _ = build_email(content, "Bookings <bookings@example.org>")
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert parsed["To"].addresses[0].addr_spec == "ada@xn--bcher-kva.example"
    assert data.isascii()


@pytest.mark.parametrize("address", ["ädä@bücher.example", "用户@例子.广告", "ada@straße.example"])
def test_an_undeliverable_address_is_a_permanent_error_that_never_names_it(address):
    with pytest.raises(PermanentError) as raised:
        build_email(EmailContent("d-1", address, "S", "t", "h"), "bookings@example.org")
    assert address.split("@")[0] not in str(raised.value) and address.split("@")[1] not in str(raised.value)
    assert raised.value.__cause__ is None  # no UnicodeEncodeError (whose repr holds the address) attached


@responses.activate
def test_the_http_provider_sends_the_idna_form():
    responses.post(EMAIL_URL, json={"id": "m-1"})
    provider = HttpEmailProvider(Settings(email_backend="http", email_http_url=EMAIL_URL, email_http_token="x"))
    provider.send(EmailContent("d-1", "Ada <ada@bücher.example>", "S", "t", "h"))
    assert json.loads(responses.calls[0].request.body)["to"] == "Ada <ada@xn--bcher-kva.example>"
    with pytest.raises(PermanentError):
        provider.send(EmailContent("d-2", "ädä@bücher.example", "S", "t", "h"))


class RecordingSmtp:
    """Stands in for ``smtplib.SMTP`` and records the envelope."""

    def __init__(self, *args, **kwargs) -> None:
        self.commands: list[tuple[str, str]] = []
        RecordingSmtp.last = self

    def mail(self, sender):
        self.commands.append(("mail", sender))
        return 250, b"ok"

    def rcpt(self, recipient):
        recipient.encode("ascii")  # smtplib writes a command in ASCII: a non-ASCII address raises here
        self.commands.append(("rcpt", recipient))
        return 250, b"ok"

    def data(self, data):
        return 250, b"ok"

    def close(self):
        return None


def test_smtp_envelope_carries_the_idna_form(monkeypatch):
    monkeypatch.setattr(smtplib, "SMTP", RecordingSmtp)
    provider = SmtpEmailProvider(Settings(email_backend="smtp", smtp_host="localhost", smtp_starttls=False))
    provider.send(EmailContent("d-1", "ada@bücher.example", "S", "t", "h"))
    assert ("rcpt", "ada@xn--bcher-kva.example") in RecordingSmtp.last.commands


def test_ascii_email_is_the_one_rule():
    assert shared.messages.ascii_email("ada@bücher.example") == "ada@xn--bcher-kva.example"
    assert shared.messages.ascii_email("ada@example.org") == "ada@example.org"
    with pytest.raises(ValueError, match="not deliverable") as raised:
        shared.messages.ascii_email("ädä@example.org")
    assert "ädä" not in str(raised.value)


def test_a_retry_held_by_native_delayed_delivery_keeps_the_death_headers_the_broker_wrote():
    from kombu.transport.native_delayed_delivery import calculate_routing_key

    delayed = calculate_routing_key(3, EMAIL_HIGH)
    deaths = [{"queue": f"celery_delayed_{level}", "reason": "expired", "count": 1} for level in (1, 0)]
    headers = {"id": "x", "task": "t", "x-death": deaths, "x-first-death-queue": "celery_delayed_1",
               "x-first-death-reason": "expired", "x-first-death-exchange": "celery_delayed_1"}
    assert envelope.reserved_headers(headers, delayed) == []
    # Without the delay prefix (a client's publish), or naming another queue, they are forged.
    assert "x-death" in envelope.reserved_headers(headers, EMAIL_HIGH)
    forged = {**headers, "x-death": [{"queue": EMAIL_HIGH, "reason": "rejected", "count": 1}]}
    assert "x-death" in envelope.reserved_headers(forged, delayed)
    assert "x-death" in envelope.reserved_headers({**headers, "x-death": [{**deaths[0], "count": "abc"}]}, delayed)
