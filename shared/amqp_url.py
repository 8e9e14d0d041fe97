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


def pika_urls(url: str, *, shuffle: bool = True, last: str = "") -> list[str]:
    """Every node of ``url`` for pika, in a random order unless told otherwise, the node ``last``
    (``host:port``, see :func:`address`) after all the others.

    A random order spreads the clients of a cluster over its nodes. ``last`` is the node a
    reconnecting client just failed on: a node that refuses one thing (a queue missing from
    its view after a restart, a channel that only nacks) keeps refusing it, and with the nodes
    in a plain random order a client would land on it again one time in three.
    """
    urls = [for_pika(node) for node in nodes(url)]
    if shuffle:
        random.shuffle(urls)
    urls.sort(key=lambda node: address(node) == last)  # stable: the random order stays otherwise
    return urls


def address(node_url: str) -> str:
    """``host:port`` of one node's URL (the port its scheme implies when none is given)."""
    parts = urllib.parse.urlsplit(node_url)
    return f"{parts.hostname or 'localhost'}:{parts.port or (5671 if parts.scheme == 'amqps' else 5672)}"


def redact(url: str) -> str:
    """``url`` without passwords, for logs and error messages (each node's host and port kept)."""
    return SEPARATOR.join(f"{urllib.parse.urlsplit(node).scheme}://{address(node)}" for node in nodes(url))
