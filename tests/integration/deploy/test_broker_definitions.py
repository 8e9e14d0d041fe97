"""The rendered broker definitions on the real broker: its hashes log in."""

from __future__ import annotations

import urllib.parse
import uuid

import pika
import pika.exceptions

from tests.deploy import compose_env
from tests.unit.deploy.test_broker_definitions import rendered


def _connects(amqp_url: str, vhost: str, user: str, password: str) -> bool:
    parts = urllib.parse.urlsplit(amqp_url)
    params = pika.ConnectionParameters(host=parts.hostname, port=parts.port or 5672, virtual_host=vhost,
                                       credentials=pika.PlainCredentials(user, password),
                                       connection_attempts=1, socket_timeout=5)
    try:
        pika.BlockingConnection(params).close()
        return True
    except pika.exceptions.ProbableAuthenticationError:
        return False


def test_rendered_hashes_log_in_on_the_real_broker(amqp_url, management, vhost_url):
    """RabbitMQ itself checks the hash format: a user created from a rendered hash logs in with its password."""
    vhost = urllib.parse.unquote(urllib.parse.urlsplit(vhost_url).path[1:])
    env = compose_env.filled()
    created = []
    try:
        for user in rendered(env)["users"]:
            name = f"test-rendered-{user['name']}-{uuid.uuid4().hex[:6]}"
            body = {"password_hash": user["password_hash"], "hashing_algorithm": user["hashing_algorithm"], "tags": ""}
            management.put(f"{management.base}/users/{name}", json=body, timeout=10).raise_for_status()
            created.append(name)
            management.put(f"{management.base}/permissions/{urllib.parse.quote(vhost, safe='')}/{name}",
                           json={"configure": "^$", "write": "^$", "read": "^$"}, timeout=10).raise_for_status()
            password = env[compose_env.renderer().PASSWORD_ENV[user["name"]]]
            assert _connects(amqp_url, vhost, name, password), user["name"]
            assert not _connects(amqp_url, vhost, name, password + "x"), user["name"]
    finally:
        for name in created:
            management.delete(f"{management.base}/users/{name}", timeout=10)
