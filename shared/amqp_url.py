"""One AMQP_URL for both client libraries.

Celery/kombu read ``amqp://host//`` as the vhost ``/``; pika reads the same URL
as the vhost ``""`` and the broker refuses it (530 vhost not found). pika
wants ``%2F``. Both services take a single ``AMQP_URL``, so pika users pass it
through :func:`for_pika` first. Pure string work, no I/O.
"""

from __future__ import annotations

import urllib.parse


def for_pika(url: str) -> str:
    """Return ``url`` with the default vhost spelled the way pika understands it."""
    parts = urllib.parse.urlsplit(url)
    if parts.path in ("", "/", "//"):
        parts = parts._replace(path="/%2F")
    return urllib.parse.urlunsplit(parts)
