"""A throwaway RabbitMQ vhost for one benchmark run, through the management API (loopback)."""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import Callable

import requests


def make_vhost(amqp_url: str) -> tuple[str, Callable[[], None]]:
    """Create a fresh vhost on ``amqp_url``'s broker; return its AMQP URL and a function that deletes it."""
    parts = urllib.parse.urlsplit(amqp_url)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    api = f"http://{parts.hostname}:15672/api"
    auth = (urllib.parse.unquote(parts.username or "guest"), urllib.parse.unquote(parts.password or "guest"))
    requests.put(f"{api}/vhosts/{name}", auth=auth, timeout=10).raise_for_status()
    requests.put(f"{api}/permissions/{name}/{auth[0]}", json={"configure": ".*", "write": ".*", "read": ".*"},
                 auth=auth, timeout=10).raise_for_status()
    url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + name, "", ""))
    return url, lambda: requests.delete(f"{api}/vhosts/{name}", auth=auth, timeout=10)
