"""The default e-mail provider: one ``<delivery id>.eml`` per delivery in a folder (a resend overwrites it)."""

from __future__ import annotations

import pathlib
import time

from notification_service.errors import NotAccepted
from notification_service.providers.content import EmailContent
from notification_service.providers.files import atomic_write
from notification_service.providers.mime import build_email
from notification_service.runtime import metrics
from notification_service.settings import Settings


class FileEmailProvider:
    def __init__(self, settings: Settings) -> None:
        self.directory = pathlib.Path(settings.email_file_dir)
        self.sender = settings.email_from

    def send(self, content: EmailContent) -> str:
        data, message_id = build_email(content, self.sender)
        started = time.perf_counter()
        try:
            atomic_write(self.directory, f"{content.delivery_id}.eml", data)
        except OSError as exc:  # a full or read-only disk: the file is not there
            raise NotAccepted(f"file sink could not write: {type(exc).__name__}") from exc
        metrics.PROVIDER_LATENCY.labels("email_file").observe(time.perf_counter() - started)
        return message_id
