"""An FCM HTTP v1-shaped push API (``PUSH_BACKEND=http``); ``Idempotency-Key`` = the delivery id."""

from __future__ import annotations

from notification_service.providers.content import PushContent
from notification_service.providers.http import HttpClient
from notification_service.settings import Settings


def fcm_payload(content: PushContent) -> dict:
    return {"message": {"token": content.token,
                        "notification": {"title": content.title, "body": content.body},
                        "data": {k: str(v) for k, v in content.data.items()}}}


class HttpPushProvider:
    def __init__(self, settings: Settings) -> None:
        self.client = HttpClient(settings.push_http_url, token=settings.push_http_token,
                                 timeout=settings.http_timeout, kind="push_http")

    def send(self, content: PushContent) -> str:
        return self.client.post(fcm_payload(content), key=content.delivery_id, personal=content.token)
