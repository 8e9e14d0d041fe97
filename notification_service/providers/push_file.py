"""The default push provider: one ``<delivery id>.json`` (FCM v1 shape) per delivery in a folder."""

from __future__ import annotations

import json
import pathlib
import time

from notification_service.errors import NotAccepted
from notification_service.providers.content import PushContent
from notification_service.providers.files import atomic_write
from notification_service.providers.push_http import fcm_payload
from notification_service.runtime import metrics
from notification_service.settings import Settings


class FilePushProvider:
    def __init__(self, settings: Settings) -> None:
        self.directory = pathlib.Path(settings.push_file_dir)

    def send(self, content: PushContent) -> str:
        data = json.dumps(fcm_payload(content), sort_keys=True, indent=2).encode("utf-8")
        started = time.perf_counter()
        try:
            atomic_write(self.directory, f"{content.delivery_id}.json", data)
        except OSError as exc:  # a full or read-only disk: the file is not there
            raise NotAccepted(f"file sink could not write: {type(exc).__name__}") from exc
        metrics.PROVIDER_LATENCY.labels("push_file").observe(time.perf_counter() - started)
        return content.delivery_id
