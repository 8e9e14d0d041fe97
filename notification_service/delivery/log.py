"""This process's delivery log: one :class:`SqlDeliveryLog` per database URL, shared by every thread.

One instance per process matters: on SQLite its write lock is what makes the
threads take turns, and its ``receipts_written`` event is what wakes the
process's receipt publisher after a commit.
"""

from __future__ import annotations

import threading

from notification_service.delivery.repository import SqlDeliveryLog

_logs: dict[str, SqlDeliveryLog] = {}
_lock = threading.Lock()


def delivery_log(url: str) -> SqlDeliveryLog:
    """The process-wide delivery log of ``url`` (created lazily, never at import)."""
    with _lock:
        if url not in _logs:
            _logs[url] = SqlDeliveryLog(url)
        return _logs[url]
