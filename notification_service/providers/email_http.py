"""A JSON e-mail API (``EMAIL_BACKEND=http``); ``Idempotency-Key`` = the delivery id."""

from __future__ import annotations

from notification_service.errors import PermanentError
from notification_service.providers.content import EmailContent
from notification_service.providers.http import HttpClient
from notification_service.providers.mime import valid_address
from notification_service.settings import Settings


class HttpEmailProvider:
    def __init__(self, settings: Settings) -> None:
        self.sender = settings.email_from
        self.client = HttpClient(settings.email_http_url, token=settings.email_http_token,
                                 timeout=settings.http_timeout, kind="email_http")

    def send(self, content: EmailContent) -> str:
        if not valid_address(content.to):
            raise PermanentError("invalid e-mail address")
        payload = {"from": self.sender, "to": content.to, "subject": content.subject, "text": content.text,
                   "html": content.html, "headers": content.headers}
        return self.client.post(payload, key=content.delivery_id, personal=content.to)
