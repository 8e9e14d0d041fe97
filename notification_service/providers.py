"""E-mail and push providers: file sinks (default), SMTP, HTTP APIs.

Every provider takes a ``Delivery``-like payload and returns the provider's
message id, raising ``TransientError`` or ``PermanentError``. The delivery id
is the idempotency key everywhere: file names, ``Message-ID``, and the
``Idempotency-Key`` HTTP header, so a resend after a crash is one message.
"""

from __future__ import annotations

import email.utils
import json
import os
import pathlib
import smtplib
import socket
import ssl
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage

import requests

from .config import Settings
from .errors import PermanentError, TransientError
from . import metrics

#: HTTP statuses worth retrying.
TRANSIENT_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))


@dataclass(frozen=True)
class EmailContent:
    delivery_id: str
    to: str
    subject: str
    text: str
    html: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PushContent:
    delivery_id: str
    token: str
    title: str
    body: str
    data: dict[str, str] = field(default_factory=dict)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or HTTP date); None when absent/unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def _atomic_write(directory: pathlib.Path, name: str, data: bytes) -> pathlib.Path:
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        target = directory / name
        os.replace(tmp, target)  # atomic: a reader sees the whole file or none
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def _valid_address(address: str) -> bool:
    name, addr = email.utils.parseaddr(address)
    return bool(addr) and "@" in addr and "\n" not in address and "\r" not in address


def build_email(content: EmailContent, sender: str) -> EmailMessage:
    if not _valid_address(content.to):
        raise PermanentError("invalid e-mail address")
    message = EmailMessage()
    message["From"] = sender
    message["To"] = content.to
    message["Subject"] = content.subject
    message["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
    domain = sender.rpartition("@")[2] or "localhost"
    message["Message-ID"] = f"<{content.delivery_id}@{domain}>"
    for key, value in sorted(content.headers.items()):
        message[key] = str(value)
    message.set_content(content.text)
    message.add_alternative(content.html, subtype="html")
    return message


def _http_post(url: str, *, token: str, key: str, payload: dict, timeout: float, kind: str, personal: str) -> str:
    """POST ``payload``; ``personal`` (the address or push token) is scrubbed from error texts,
    which end up in logs and the dead-letter reason."""
    headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    started = time.perf_counter()
    try:
        response = requests.post(url, json=payload, headers=headers, timeout=timeout)
    except (requests.Timeout, requests.ConnectionError) as exc:
        raise TransientError(f"{kind} provider unreachable: {type(exc).__name__}") from exc
    finally:
        metrics.PROVIDER_LATENCY.labels(kind).observe(time.perf_counter() - started)
    if response.status_code in TRANSIENT_STATUSES:
        raise TransientError(f"{kind} provider answered {response.status_code}",
                             retry_after=parse_retry_after(response.headers.get("Retry-After")))
    if response.status_code >= 400:
        detail = (response.text.replace(personal, "<recipient>") if personal else response.text)[:200]
        raise PermanentError(f"{kind} provider answered {response.status_code}: {detail}")
    try:
        body = response.json()
    except ValueError:
        body = {}
    if isinstance(body, dict):
        return str(body.get("name") or body.get("id") or body.get("message_id") or key)
    return key


class FileEmailProvider:
    def __init__(self, settings: Settings) -> None:
        self.directory = pathlib.Path(settings.email_file_dir)
        self.sender = settings.email_from

    def send(self, content: EmailContent) -> str:
        message = build_email(content, self.sender)
        with metrics.PROVIDER_LATENCY.labels("email_file").time():
            _atomic_write(self.directory, f"{content.delivery_id}.eml", message.as_bytes())
        return message["Message-ID"]


class SmtpEmailProvider:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def send(self, content: EmailContent) -> str:
        s = self.settings
        message = build_email(content, s.email_from)
        started = time.perf_counter()
        try:
            with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout) as smtp:
                if s.smtp_starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if s.smtp_username:
                    smtp.login(s.smtp_username, s.smtp_password)
                smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if all(500 <= code < 600 for code in codes):
                raise PermanentError(f"SMTP refused recipient: {codes}") from exc
            raise TransientError(f"SMTP refused recipient temporarily: {codes}") from exc
        except smtplib.SMTPAuthenticationError as exc:
            raise TransientError(f"SMTP authentication failed ({exc.smtp_code})") from exc
        except smtplib.SMTPResponseException as exc:
            if 500 <= exc.smtp_code < 600:
                raise PermanentError(f"SMTP error {exc.smtp_code}") from exc
            raise TransientError(f"SMTP error {exc.smtp_code}") from exc
        except (smtplib.SMTPException, OSError, socket.timeout) as exc:
            raise TransientError(f"SMTP unavailable: {type(exc).__name__}") from exc
        finally:
            metrics.PROVIDER_LATENCY.labels("smtp").observe(time.perf_counter() - started)
        return message["Message-ID"]


class HttpEmailProvider:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def send(self, content: EmailContent) -> str:
        if not _valid_address(content.to):
            raise PermanentError("invalid e-mail address")
        s = self.settings
        payload = {"from": s.email_from, "to": content.to, "subject": content.subject, "text": content.text,
                   "html": content.html, "headers": content.headers}
        return _http_post(s.email_http_url, token=s.email_http_token, key=content.delivery_id, personal=content.to,
                          payload=payload, timeout=s.http_timeout, kind="email_http")


class FilePushProvider:
    def __init__(self, settings: Settings) -> None:
        self.directory = pathlib.Path(settings.push_file_dir)

    def send(self, content: PushContent) -> str:
        document = fcm_payload(content)
        data = json.dumps(document, sort_keys=True, indent=2).encode("utf-8")
        with metrics.PROVIDER_LATENCY.labels("push_file").time():
            _atomic_write(self.directory, f"{content.delivery_id}.json", data)
        return content.delivery_id


def fcm_payload(content: PushContent) -> dict:
    return {"message": {"token": content.token,
                        "notification": {"title": content.title, "body": content.body},
                        "data": {k: str(v) for k, v in content.data.items()}}}


class HttpPushProvider:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def send(self, content: PushContent) -> str:
        s = self.settings
        return _http_post(s.push_http_url, token=s.push_http_token, key=content.delivery_id, personal=content.token,
                          payload=fcm_payload(content), timeout=s.http_timeout, kind="push_http")


EMAIL_PROVIDERS = {"file": FileEmailProvider, "smtp": SmtpEmailProvider, "http": HttpEmailProvider}
PUSH_PROVIDERS = {"file": FilePushProvider, "http": HttpPushProvider}


def email_provider(settings: Settings):
    return EMAIL_PROVIDERS[settings.email_backend](settings)


def push_provider(settings: Settings):
    return PUSH_PROVIDERS[settings.push_backend](settings)
