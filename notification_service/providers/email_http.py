"""A JSON e-mail API (``EMAIL_BACKEND=http``); ``Idempotency-Key`` = the delivery id.

The recipient goes as given, but with its address in the ASCII form ``mime.deliverable``
gives (an international domain in IDNA): the form every such API accepts.
"""

from __future__ import annotations

import email.utils

from notification_service.providers.content import EmailContent
from notification_service.providers.http import HttpClient
from notification_service.providers.mime import deliverable
from notification_service.settings import Settings


class HttpEmailProvider:
    def __init__(self, settings: Settings) -> None:
        self.sender = settings.email_from
        self.client = HttpClient(settings.email_http_url, token=settings.email_http_token,
                                 timeout=settings.http_timeout, kind="email_http")

    def send(self, content: EmailContent) -> str:
        address = email.utils.parseaddr(content.to)[1]
        wire = deliverable(content.to)
        to = content.to if wire == address else content.to.replace(address, wire)
        payload = {"from": self.sender, "to": to, "subject": content.subject, "text": content.text,
                   "html": content.html, "headers": content.headers}
        return self.client.post(payload, key=content.delivery_id, personal=(content.to, wire))
