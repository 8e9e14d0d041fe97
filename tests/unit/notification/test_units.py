"""Unit-level tests: providers (HTTP faked with responses, SMTP with a local server), templates, config, topology."""

from __future__ import annotations

import json
import pathlib
import shutil
import ssl
import subprocess
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import requests
import responses

import shared
from notification_service import cli
from notification_service.broker import topology
from notification_service.errors import PermanentError, TransientError
from notification_service.providers import (
    EmailContent,
    FileEmailProvider,
    HttpEmailProvider,
    HttpPushProvider,
    PushContent,
    SmtpEmailProvider,
    parse_retry_after,
)
from notification_service.rendering.templates import locale_chain, render
from notification_service.settings import ConfigError, Settings
from tests.notification.fake_smtp import serve_smtp as _serve_smtp
from tests.support import wait_for

REPO = pathlib.Path(__file__).resolve().parents[3]
PUSH_URL = "https://push.invalid/v1/projects/p/messages:send"
EMAIL_URL = "https://mail.invalid/send"


def settings(**overrides) -> Settings:
    base = dict(push_backend="http", push_http_url=PUSH_URL, push_http_token="secret",
                email_backend="http", email_http_url=EMAIL_URL, email_http_token="mail-secret")
    base.update(overrides)
    return Settings(**base)


PUSH = PushContent(delivery_id="d-1", token="tok", title="T", body="B", data={"notification_id": "n"})
MAIL = EmailContent(delivery_id="d-2", to="ada@example.org", subject="S", text="t", html="<p>h</p>",
                    headers={"X-Notification-Id": "n"})


@responses.activate
def test_http_push_sends_fcm_shape_with_auth_and_idempotency_key():
    responses.post(PUSH_URL, json={"name": "projects/p/messages/1"})
    assert HttpPushProvider(settings()).send(PUSH) == "projects/p/messages/1"
    call = responses.calls[0].request
    assert call.headers["Authorization"] == "Bearer secret"
    assert call.headers["Idempotency-Key"] == "d-1"
    assert json.loads(call.body) == {"message": {"token": "tok", "notification": {"title": "T", "body": "B"},
                                                 "data": {"notification_id": "n"}}}


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
@responses.activate
def test_http_transient_statuses(status):
    responses.post(PUSH_URL, status=status, headers={"Retry-After": "7"})
    with pytest.raises(TransientError) as info:
        HttpPushProvider(settings()).send(PUSH)
    assert info.value.retry_after == 7


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
@responses.activate
def test_http_permanent_statuses(status):
    responses.post(PUSH_URL, status=status)
    with pytest.raises(PermanentError):
        HttpPushProvider(settings()).send(PUSH)


@responses.activate
def test_http_error_text_never_carries_the_recipient():
    responses.post(PUSH_URL, status=400, json={"error": {"message": "token tok is not registered"}})
    with pytest.raises(PermanentError) as info:
        HttpPushProvider(settings()).send(PushContent(delivery_id="d-9", token="tok", title="T", body="B"))
    assert "tok " not in str(info.value) and "<recipient>" in str(info.value)


@responses.activate
def test_http_connection_error_and_timeout_are_transient():
    responses.post(PUSH_URL, body=requests.ConnectionError("refused"))
    responses.post(EMAIL_URL, body=requests.Timeout("slow"))
    with pytest.raises(TransientError):
        HttpPushProvider(settings()).send(PUSH)
    with pytest.raises(TransientError):
        HttpEmailProvider(settings()).send(MAIL)


@responses.activate
def test_http_email_idempotency_key_and_invalid_address():
    responses.post(EMAIL_URL, json={"id": "m-1"})
    assert HttpEmailProvider(settings()).send(MAIL) == "m-1"
    assert responses.calls[0].request.headers["Idempotency-Key"] == "d-2"
    with pytest.raises(PermanentError):
        HttpEmailProvider(settings()).send(EmailContent("d-3", "not-an-address", "S", "t", "h"))


def test_retry_after_parsing():
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_retry_after("120") == 120
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_celery_retry_settings_come_from_ours_and_retry_after_is_capped(monkeypatch):
    from notification_service.worker.app import create_app

    app = create_app(Settings(retry_base_seconds=2, retry_max_seconds=900, max_retries=5))
    app.loader.import_default_modules()
    task = app.tasks[shared.PUSH_TASK]
    # No count for Celery to check: NotificationTask.retry bounds an outage by age and a bug by max_retries.
    assert (task.max_retries, task.retry_backoff, task.retry_backoff_max, task.retry_jitter) == (None, 2, 900, True)
    assert task.acks_on_failure is False  # a task that fails for good is rejected: RabbitMQ dead-letters it
    seen = {}
    monkeypatch.setattr("celery.app.task.Task.retry", lambda self, **kw: seen.update(kw))
    task.retry(exc=TransientError("429", retry_after=5000), countdown=3)
    assert seen["countdown"] == 900 and seen["kwargsrepr"] == "{}" and seen["argsrepr"] == "()"
    task.retry(exc=TransientError("503"), countdown=3)
    assert seen["countdown"] == 3  # no Retry-After: Celery's own backoff


def test_an_outage_is_retried_until_the_notification_is_too_old_and_a_bug_max_retries_times(monkeypatch):
    from notification_service.worker.app import create_app
    from notification_service.worker.failure_policy import TooOld

    app = create_app(Settings(max_retries=2, max_age_seconds=3600))
    app.loader.import_default_modules()
    task = app.tasks[shared.PUSH_TASK]
    retried = []
    monkeypatch.setattr("celery.app.task.Task.retry", lambda self, **kw: retried.append(kw))
    opened = {"at": datetime.now(UTC) - timedelta(minutes=59)}
    monkeypatch.setattr(type(task), "started_at", lambda self: opened["at"])

    task.push_request(retries=500, kwargs={"delivery_id": "d-1"})
    try:
        # 500 retries of a provider outage, 59 minutes in: retried again, whatever the count
        task.retry(exc=TransientError("503"), countdown=900)
        assert len(retried) == 1
        opened["at"] = datetime.now(UTC) - timedelta(minutes=61)
        with pytest.raises(TooOld) as too_old:
            task.retry(exc=TransientError("503"), countdown=900)
        assert "501 attempts" in str(too_old.value) and "NOTIFICATION_MAX_AGE_SECONDS" in str(too_old.value)
        assert "503" in str(too_old.value)
        # the database away is an outage too
        with pytest.raises(TooOld):
            task.retry(exc=OSError("connection refused"), countdown=1)
    finally:
        task.pop_request()

    task.push_request(retries=1, kwargs={"delivery_id": "d-1"})
    try:
        task.retry(exc=KeyError("bug"), countdown=1)  # the second attempt of a bug: retried
        assert len(retried) == 2
    finally:
        task.pop_request()
    task.push_request(retries=2, kwargs={"delivery_id": "d-1"})
    try:
        with pytest.raises(KeyError):  # its third: max_retries (2) spent, the task fails with the bug itself
            task.retry(exc=KeyError("bug"), countdown=1)
    finally:
        task.pop_request()


def test_file_sink_overwrites_same_delivery(tmp_path):
    provider = FileEmailProvider(settings(email_file_dir=str(tmp_path)))
    provider.send(MAIL)
    provider.send(MAIL)
    assert [p.name for p in tmp_path.iterdir()] == ["d-2.eml"]
    text = (tmp_path / "d-2.eml").read_text()
    assert "X-Notification-Id: n" in text and "Message-ID: <d-2@example.org>" in text


@pytest.fixture
def smtp_server():
    server = _serve_smtp(None)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def tls_smtp_server(tmp_path, monkeypatch):
    """An SMTP server offering STARTTLS with a certificate for localhost that the client trusts."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI needed to make a test certificate")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", "key.pem", "-out", "cert.pem"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=60)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    # The provider verifies with the default trust store; OpenSSL reads SSL_CERT_FILE for it.
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "cert.pem"))
    server = _serve_smtp(context)
    yield server
    server.shutdown()
    server.server_close()


def test_smtp_provider_authenticates_and_sends(smtp_server):
    s = settings(email_backend="smtp", smtp_host="127.0.0.1", smtp_port=smtp_server.server_address[1],
                 smtp_username="u", smtp_password="p", smtp_timeout=5)
    SmtpEmailProvider(s).send(MAIL)
    assert smtp_server.auth and "X-Notification-Id: n" in smtp_server.messages[0]
    with pytest.raises(PermanentError):
        SmtpEmailProvider(s).send(EmailContent("d-4", "reject@example.org", "S", "t", "h"))


def test_smtp_starttls_before_auth(tls_smtp_server):
    s = settings(email_backend="smtp", smtp_host="localhost", smtp_port=tls_smtp_server.server_address[1],
                 smtp_username="u", smtp_password="p", smtp_starttls=True, smtp_timeout=5)
    SmtpEmailProvider(s).send(MAIL)
    assert "X-Notification-Id: n" in tls_smtp_server.messages[0]
    assert [over_tls for _line, over_tls in tls_smtp_server.auth] == [True]  # the password only crossed TLS


def test_smtp_starttls_with_an_untrusted_certificate_does_not_send(tls_smtp_server, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE")
    s = settings(email_backend="smtp", smtp_host="localhost", smtp_port=tls_smtp_server.server_address[1],
                 smtp_username="u", smtp_password="p", smtp_starttls=True, smtp_timeout=5)
    with pytest.raises(TransientError):
        SmtpEmailProvider(s).send(MAIL)
    assert tls_smtp_server.messages == [] and tls_smtp_server.auth == []
    wait_for(lambda: tls_smtp_server.errors, what="server saw the refused handshake")
    assert isinstance(tls_smtp_server.errors[0], ssl.SSLError)


def test_smtp_unreachable_is_transient():
    s = settings(email_backend="smtp", smtp_host="127.0.0.1", smtp_port=1, smtp_timeout=2)
    with pytest.raises(TransientError):
        SmtpEmailProvider(s).send(MAIL)


def _example(name: str) -> dict:
    path = pathlib.Path(shared.__file__).parent / "examples" / f"notification.requested.v1.valid.{name}.json"
    return shared.load_notification_requested(json.loads(path.read_text()))


@pytest.mark.parametrize("event", ["confirmed", "cancelled", "rescheduled", "reminder"])
@pytest.mark.parametrize("locale", ["en", "de"])
def test_every_event_renders_in_both_locales(event, locale):
    message = _example(event)
    message["recipient"]["locale"] = locale
    email_parts, push_parts = render(message, "email"), render(message, "push")
    assert set(email_parts) == {"subject", "txt", "html"} and set(push_parts) == {"title", "body"}
    assert all(email_parts.values()) and all(push_parts.values())


def test_times_are_in_booking_timezone_and_locale_falls_back():
    message = _example("confirmed")
    message["recipient"]["locale"] = "de-AT"
    message["booking"]["timezone"] = "America/New_York"
    starts = message["booking"]["starts_at"].astimezone(__import__("zoneinfo").ZoneInfo("America/New_York"))
    parts = render(message, "email")
    assert "bestätigt" in parts["subject"] and starts.strftime("%H:%M") in parts["txt"]
    message["recipient"]["locale"] = "fr"
    assert "confirmed" in render(message, "email")["subject"].lower()
    assert locale_chain("de-AT") == ["de-AT", "de", "en"]


def test_html_is_autoescaped_text_is_not():
    message = _example("confirmed")
    message["recipient"]["name"] = "<script>x</script>"
    parts = render(message, "email")
    assert "&lt;script&gt;" in parts["html"] and "<script>" not in parts["html"]
    assert "<script>x</script>" in parts["txt"]


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError):
        Settings.from_env({"EMAIL_BACKEND": "pigeon"})
    with pytest.raises(ConfigError):
        Settings.from_env({"PUSH_BACKEND": "http"})
    with pytest.raises(ConfigError):
        Settings.from_env({"NOTIFICATION_RETRY_MAX_SECONDS": "3600"})
    with pytest.raises(ConfigError):
        Settings.from_env({"NOTIFICATION_MAX_RETRIES": "many"})
    s = Settings.from_env({})
    assert (s.database_url, s.email_file_dir, s.metrics_port, s.max_retries) == (
        "sqlite:///var/notification.db", "var/outbox/email", 9808, 8)
    assert "secret" not in repr(Settings(smtp_password="secret", push_http_token="secret"))


def test_committed_definitions_equal_the_export():
    committed = (REPO / "deploy" / "rabbitmq" / "definitions.json").read_text()
    assert committed == cli.render_definitions()
    data = json.loads(committed)
    queues = {q["name"]: q["arguments"] for q in data["queues"]}
    assert queues["notifications.email.low"] == {
        "x-queue-type": "quorum", "x-queue-leader-locator": "balanced", "x-dead-letter-exchange": "notifications.dlx",
        "x-dead-letter-routing-key": "notifications.email.low.dlq", "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish", "x-delivery-limit": 50}
    assert all(q["arguments"]["x-queue-type"] == "quorum" for q in data["queues"])  # DLQs and receipts too
    assert not any("x-max-priority" in q["arguments"] for q in data["queues"])  # refused by quorum queues (406)
    legacy = [b for b in data["bindings"] if b["routing_key"] == "notifications.dispatch"]
    assert [(b["source"], b["destination"]) for b in legacy] == [("notifications", "notifications.dispatch.high")]
    assert {e["name"]: e["arguments"] for e in data["exchanges"]}[shared.EXCHANGE] == {}


def test_password_hash_is_rabbitmq_sha256_format():
    import base64
    import hashlib

    raw = base64.b64decode(topology.password_hash("booking", "booking"))
    salt, digest = raw[:4], raw[4:]
    assert hashlib.sha256(salt + b"booking").digest() == digest


def test_email_is_built_as_a_standard_multipart_message_and_refuses_header_injection():
    import email.policy

    from notification_service.providers import build_email

    content = EmailContent(delivery_id="d-7", to="Zoë Müller <zoe@example.org>", subject="Bestätigung für Raum 1",
                           text="Grüße\nline = two", html="<p>Grüße</p>", headers={"X-Notification-Id": "n"})
    data, message_id = build_email(content, "Bookings <bookings@example.org>")
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert parsed["To"].addresses[0].addr_spec == "zoe@example.org"
    assert parsed["To"].addresses[0].display_name == "Zoë Müller"
    assert parsed["From"].addresses[0].addr_spec == "bookings@example.org"
    assert parsed["Subject"] == "Bestätigung für Raum 1" and parsed["Message-ID"] == message_id == "<d-7@example.org>"
    assert parsed["X-Notification-Id"] == "n" and parsed.get_content_type() == "multipart/alternative"
    # on the wire every line ends in CRLF (RFC 5322), the text's own line breaks included
    assert parsed.get_body(("plain",)).get_content().rstrip() == "Grüße\r\nline = two"
    assert parsed.get_body(("html",)).get_content().rstrip() == "<p>Grüße</p>"
    for bad in (dict(subject="Hi\r\nBcc: victim@example.org"), dict(headers={"X-Booking-Id": "1\nBcc: x@y.z"}),
                dict(to="ada@example.org\r\nBcc: x@y.z")):
        with pytest.raises(PermanentError):
            build_email(EmailContent(**{**content.__dict__, **bad}), "bookings@example.org")


def test_json_log_lines_carry_the_traceback(capsys):
    import logging

    import structlog

    from notification_service.runtime import logs

    logs.configure("json", logging.INFO)
    try:
        try:
            raise ValueError("provider exploded")
        except ValueError:
            structlog.get_logger("t").exception("task failed")
            logging.getLogger("celery.worker").error("stdlib failure", exc_info=True)
    finally:
        logging.getLogger().handlers[:] = []
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert len(lines) == 2
    for line in lines:
        assert "Traceback (most recent call last)" in line["exception"] and "provider exploded" in line["exception"]


@responses.activate
def test_scrubbing_catches_the_token_however_the_provider_escapes_it():
    token = "tök-ünïcode\\secret"
    escaped = json.dumps({"error": f"bad token {token}"})  # ASCII-escaped: t\\u00f6k-\\u00fcn\\u00efcode\\\\secret
    raw = json.dumps({"error": f"bad token {token}"}, ensure_ascii=False)
    for body in (escaped, raw, f"bad token {token}"):
        responses.post(PUSH_URL, status=400, body=body)
        with pytest.raises(PermanentError) as info:
            HttpPushProvider(settings()).send(PushContent(delivery_id="d-9", token=token, title="T", body="B"))
        text = str(info.value)
        assert "<recipient>" in text and "secret" not in text and "\\u00f6k" not in text, text
