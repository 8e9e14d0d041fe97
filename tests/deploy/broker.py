"""Fixtures of the deployment tests: the committed broker definitions, loaded into a vhost of their own.

Imported by the conftest.py of each tier's deploy folder.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import urllib.parse

import pytest

from . import repo

#: The users definitions.json must hold, by the process that logs in as each.
SERVICE_USERS = ("booking", "notification")


@dataclasses.dataclass
class LeastPrivilegeBroker:
    """A fresh vhost holding the committed topology, and throwaway users with the committed permissions."""

    vhost: str
    admin_url: str
    urls: dict[str, str]
    users: dict[str, str]
    definitions: dict

    def url(self, service: str) -> str:
        return self.urls[service]


@pytest.fixture(scope="session")
def definitions() -> dict:
    if not repo.DEFINITIONS_FILE.exists():
        pytest.fail(f"{repo.DEFINITIONS_FILE.relative_to(repo.ROOT)} is missing: run `make definitions`")
    return json.loads(repo.DEFINITIONS_FILE.read_text())


def _vhost_items(definitions: dict, key: str, vhost: str = "/") -> list[dict]:
    """Items of one vhost from a cluster-wide export, without their ``vhost`` field."""
    return [{k: v for k, v in item.items() if k != "vhost"}
            for item in definitions.get(key, []) if item["vhost"] == vhost]


@pytest.fixture
def least_privilege(vhost_url, management, definitions, unique):
    """Load the file's exchanges, queues, bindings and policies of vhost "/" into a fresh vhost,
    and create one user per service with *exactly* the file's permissions there.

    The real ``booking``/``notification`` users and the "/" vhost are never touched.
    """
    vhost = urllib.parse.unquote(urllib.parse.urlsplit(vhost_url).path[1:])
    quoted = urllib.parse.quote(vhost, safe="")
    body = {key: _vhost_items(definitions, key) for key in ("exchanges", "queues", "bindings", "policies")}
    management.post(f"{management.base}/definitions/{quoted}", json=body, timeout=30).raise_for_status()

    users, urls = {}, {}
    parts = urllib.parse.urlsplit(vhost_url)
    try:
        for service in SERVICE_USERS:
            (permission,) = [p for p in definitions["permissions"] if p["user"] == service and p["vhost"] == "/"]
            name, password = f"test-{service}-{unique}", secrets.token_urlsafe(16)
            (user,) = [u for u in definitions["users"] if u["name"] == service]
            tags = user.get("tags", [])
            tags = ",".join(tags) if isinstance(tags, list) else tags
            management.put(f"{management.base}/users/{name}", json={"password": password, "tags": tags},
                           timeout=10).raise_for_status()
            users[service] = name
            management.put(
                f"{management.base}/permissions/{quoted}/{name}",
                json={k: permission[k] for k in ("configure", "write", "read")},
                timeout=10,
            ).raise_for_status()
            for topic in definitions.get("topic_permissions", []):
                if topic["user"] == service and topic["vhost"] == "/":
                    management.put(f"{management.base}/topic-permissions/{quoted}/{name}",
                                   json={k: topic[k] for k in ("exchange", "write", "read")},
                                   timeout=10).raise_for_status()
            login = f"{urllib.parse.quote(name, safe='')}:{urllib.parse.quote(password, safe='')}"
            netloc = f"{login}@{parts.hostname}:{parts.port or 5672}"
            urls[service] = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        yield LeastPrivilegeBroker(vhost=vhost, admin_url=vhost_url, urls=urls, users=users, definitions=definitions)
    finally:
        for name in users.values():
            management.delete(f"{management.base}/users/{name}", timeout=10)


@dataclasses.dataclass
class MonitoringLogin:
    """A throwaway user with the tags and permissions the rendered definitions give `monitoring`."""

    name: str
    password: str
    url: str


@pytest.fixture
def monitoring(least_privilege, management, unique):
    """The `monitoring` user of deploy/rabbitmq/render_definitions.py, created in the test's vhost.

    Made from the rendered document itself (its tags, its permissions on "/",
    its password hash), so the test proves what a compose broker imports.
    """
    from . import compose_env

    env = compose_env.filled()
    rendered = compose_env.renderer().render(json.loads(repo.DEFINITIONS_FILE.read_text()), env)
    (user,) = [u for u in rendered["users"] if u["name"] == "monitoring"]
    (permission,) = [p for p in rendered["permissions"] if p["user"] == "monitoring" and p["vhost"] == "/"]
    assert not [p for p in rendered.get("topic_permissions", []) if p["user"] == "monitoring"]
    name, password = f"test-monitoring-{unique}", env[compose_env.renderer().PASSWORD_ENV["monitoring"]]
    quoted = urllib.parse.quote(least_privilege.vhost, safe="")
    management.put(f"{management.base}/users/{name}", timeout=10, json={
        "password_hash": user["password_hash"], "hashing_algorithm": user["hashing_algorithm"],
        "tags": ",".join(user["tags"])}).raise_for_status()
    try:
        management.put(f"{management.base}/permissions/{quoted}/{name}", timeout=10,
                       json={k: permission[k] for k in ("configure", "write", "read")}).raise_for_status()
        parts = urllib.parse.urlsplit(least_privilege.admin_url)
        url = urllib.parse.urlunsplit((parts.scheme, f"{name}:{password}@{parts.hostname}:{parts.port or 5672}",
                                       parts.path, "", ""))
        yield MonitoringLogin(name=name, password=password, url=url)
    finally:
        management.delete(f"{management.base}/users/{name}", timeout=10)
