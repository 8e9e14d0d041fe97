#!/usr/bin/env python3
"""Write the definitions a RabbitMQ node imports, with users whose passwords come from the environment.

``deploy/rabbitmq/definitions.json`` is the export of the notification
service's topology module (``make definitions``): exchanges, queues,
bindings, the two service users with their permissions, and password hashes
of the development passwords that module documents. Those hashes are of
known passwords, so no broker may import that file as it is. This script
copies it with every user replaced:

* ``booking`` and ``notification``: the file's users (tags, limits,
  permissions kept), with a fresh salted hash of the password in
  ``BOOKING_AMQP_PASSWORD`` / ``NOTIFICATION_AMQP_PASSWORD``;
* ``admin``: an administrator for the management UI (``RABBITMQ_ADMIN_PASSWORD``);
* ``monitoring``: the ``monitoring`` tag and permissions that match no name
  (``^$``) on ``/``: the management API shows it the queues' lengths (what
  KEDA reads) and it can neither configure, publish nor consume
  (``RABBITMQ_MONITORING_PASSWORD``).

The compose file runs it as a one-shot container before RabbitMQ starts, so
the broker container never sees a password, only hashes. It uses only the
standard library, so ``python:3.11-slim`` runs it as it is; for another
broker run it by hand and import the result (``rabbitmqctl
import_definitions``).

    render_definitions.py SOURCE TARGET

Exits 2, naming the variable and never its value, when a password is
missing, short, not URL-safe (it goes into ``AMQP_URL`` unescaped) or is
the development password the source file holds a hash of.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sys
import tempfile

#: User -> the variable holding its password.
PASSWORD_ENV = {
    "booking": "BOOKING_AMQP_PASSWORD",
    "notification": "NOTIFICATION_AMQP_PASSWORD",
    "admin": "RABBITMQ_ADMIN_PASSWORD",
    "monitoring": "RABBITMQ_MONITORING_PASSWORD",
}
#: The users this script adds to the file's service users, with tags and permissions on "/".
EXTRA_USERS = {
    "admin": (["administrator"], {"configure": ".*", "write": ".*", "read": ".*"}),
    # Vhost access without any resource: the management API answers GET
    # /api/queues/<vhost>/<queue> only for a vhost the user may access.
    "monitoring": (["monitoring"], {"configure": "^$", "write": "^$", "read": "^$"}),
}
MIN_LENGTH = 16
#: RFC 3986 unreserved characters: safe inside amqp://user:PASSWORD@host without escaping.
URL_SAFE = re.compile(r"^[A-Za-z0-9._~-]+$")
VHOST = "/"


class RenderError(Exception):
    """Raised when a password is missing or unfit; the message names the variable, never the value."""


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt(4) + sha256(salt + password))."""
    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode("utf-8")).digest()).decode("ascii")


def _matches(stored: dict, password: str) -> bool:
    raw = base64.b64decode(stored["password_hash"])
    return password_hash(password, raw[:4]) == stored["password_hash"]


def _password(user: str, env: dict[str, str], known: dict | None) -> str:
    name = PASSWORD_ENV[user]
    value = env.get(name, "")
    if not value:
        raise RenderError(f"{name} is not set: the {user!r} broker user needs a password")
    if len(value) < MIN_LENGTH:
        raise RenderError(f"{name} is shorter than {MIN_LENGTH} characters")
    if not URL_SAFE.match(value):
        raise RenderError(f"{name} may only hold letters, digits and - . _ ~ (it goes into AMQP_URL unescaped)")
    if value == user or (known is not None and _matches(known, value)):
        raise RenderError(f"{name} is the development password of {user!r}: choose another")
    return value


def render(source: dict, env: dict[str, str]) -> dict:
    """``source`` with its users replaced by the four users above, passwords from ``env``."""
    known = {u["name"]: u for u in source.get("users", [])}
    missing = set(PASSWORD_ENV) - set(EXTRA_USERS) - set(known)
    if missing:
        raise RenderError(f"the source definitions have no user {sorted(missing)}")
    users, permissions = [], [p for p in source.get("permissions", []) if p["user"] not in EXTRA_USERS]
    for user in sorted(PASSWORD_ENV):
        password = _password(user, env, known.get(user))
        if user in EXTRA_USERS:
            tags, allowed = EXTRA_USERS[user]
            permissions.append({"user": user, "vhost": VHOST, **allowed})
        else:
            tags = known[user].get("tags", [])
        users.append({"name": user, "password_hash": password_hash(password),
                      "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": tags, "limits": {}})
    return {**source, "users": users, "permissions": permissions}


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: render_definitions.py SOURCE TARGET", file=sys.stderr)
        return 2
    source_path, target_path = argv[1], argv[2]
    with open(source_path, encoding="utf-8") as source:
        document = json.load(source)
    try:
        rendered = render(document, dict(os.environ))
    except RenderError as exc:
        print(f"render_definitions: {exc}", file=sys.stderr)
        return 2
    # Written next to the target and renamed, so the broker never reads half a file.
    folder = os.path.dirname(os.path.abspath(target_path))
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=".definitions-")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(rendered, out, indent=2, sort_keys=True)
    # Hashes only; the broker's own user (uid 999 in the rabbitmq image) must read it.
    os.chmod(temporary, 0o644)
    os.replace(temporary, target_path)
    print(f"render_definitions: wrote {target_path} with users {[u['name'] for u in rendered['users']]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
