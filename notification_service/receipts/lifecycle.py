"""This process's one receipts publisher: started when the worker is ready, stopped when it shuts down."""

from __future__ import annotations

import threading

from notification_service.delivery.log import delivery_log
from notification_service.delivery.owner import process_owner
from notification_service.receipts.publisher import ReceiptPublisher
from notification_service.settings import Settings


class _Running:
    """The publisher of this process, if one runs (a holder instead of a module-level ``global``)."""

    publisher: ReceiptPublisher | None = None
    lock = threading.Lock()


def start_publisher(settings: Settings) -> ReceiptPublisher | None:
    """Start this process's publisher thread (once); None when turned off."""
    if not settings.receipts_publisher:
        return None
    with _Running.lock:
        if _Running.publisher is None:
            _Running.publisher = ReceiptPublisher(
                delivery_log(settings.database_url), settings.amqp_url, process_owner().id,
                poll_seconds=settings.receipts_poll_seconds, batch_size=settings.receipts_batch_size,
                max_backoff=settings.receipts_max_backoff_seconds).start()
        return _Running.publisher


def stop_publisher() -> None:
    with _Running.lock:
        publisher, _Running.publisher = _Running.publisher, None
    if publisher is not None:
        publisher.stop()
