"""One AMQP_URL for both client libraries, with one or several broker nodes.

Celery/kombu read ``amqp://host//`` as the vhost ``/``; pika reads the same URL
as the vhost ``""`` and the broker refuses it (530 vhost not found). pika
wants ``%2F``. Both services take a single ``AMQP_URL``, so pika users pass it
through :func:`for_pika` first.

A cluster is given as several URLs separated by ``;`` (kombu's failover
convention): ``amqp://u:p@h1:5672/v;amqp://u:p@h2:5672/v;amqp://u:p@h3:5672/v``.
kombu takes that string as it is; pika reads everything after the first ``;``
as URL parameters, so pika users split it with :func:`nodes` and hand pika a
list of connection parameters, which it tries in turn. Pure string work, no I/O.
"""

from __future__ import annotations

import random
import urllib.parse

#: What separates the nodes of a cluster in one ``AMQP_URL`` (kombu's failover convention).
SEPARATOR = ";"


def nodes(url: str) -> list[str]:
    """The node URLs in ``url`` (one for a single broker), blanks dropped; ValueError when there are none."""
    found = [part.strip() for part in url.split(SEPARATOR) if part.strip()]
    if not found:
        raise ValueError("AMQP_URL names no broker")
    return found


def for_pika(url: str) -> str:
    """Return one node's ``url`` with the default vhost spelled the way pika understands it."""
    parts = urllib.parse.urlsplit(url)
    if parts.path in ("", "/", "//"):
        parts = parts._replace(path="/%2F")
    return urllib.parse.urlunsplit(parts)


def pika_urls(url: str, *, shuffle: bool = True) -> list[str]:
    """Every node of ``url`` for pika, in a random order unless told otherwise.

    A random order spreads the clients of a cluster over its nodes, and a client that
    reconnects after its node died does not try that node first every time.
    """
    urls = [for_pika(node) for node in nodes(url)]
    if shuffle:
        random.shuffle(urls)
    return urls


def redact(url: str) -> str:
    """``url`` without passwords, for logs and error messages (each node's host and port kept)."""
    shown = []
    for node in nodes(url):
        parts = urllib.parse.urlsplit(node)
        host = parts.hostname or "localhost"
        shown.append(f"{parts.scheme}://{host}:{parts.port or (5671 if parts.scheme == 'amqps' else 5672)}")
    return SEPARATOR.join(shown)
