"""An FCM HTTP v1-shaped push API (``PUSH_BACKEND=http``); ``Idempotency-Key`` = the delivery id."""

from __future__ import annotations

import requests

from notification_service.providers.content import PushContent
from notification_service.providers.http import HttpClient
from notification_service.settings import Settings


def unregistered(response: requests.Response) -> bool:
    """FCM's answer for a token that is no longer valid: 404, or 400 whose error details say ``UNREGISTERED``.

    (firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode: UNREGISTERED is sent with HTTP 404; older
    and self-hosted FCM-shaped APIs answer 400 with the same error code.)
    """
    if response.status_code == 404:
        return True
    return response.status_code == 400 and "UNREGISTERED" in response.text[:10_000]


def fcm_payload(content: PushContent) -> dict:
    return {"message": {"token": content.token,
                        "notification": {"title": content.title, "body": content.body},
                        "data": {k: str(v) for k, v in content.data.items()}}}


class HttpPushProvider:
    def __init__(self, settings: Settings) -> None:
        self.client = HttpClient(settings.push_http_url, token=settings.push_http_token,
                                 timeout=settings.http_timeout, kind="push_http", gone=unregistered)

    def send(self, content: PushContent) -> str:
        return self.client.post(fcm_payload(content), key=content.delivery_id, personal=content.token)
