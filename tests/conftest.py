"""Fixtures every test package uses: the real broker and the real databases.

Tests that need RabbitMQ or PostgreSQL are skipped on a laptop without them
but *fail* under CI (``CI=true``), where both must be there.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
import uuid

import pytest

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672//")
#: Server-level URL used to create throwaway databases; trust auth on the dev machines.
POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@localhost:5432/test")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _answers(url: str, default_port: int) -> bool:
    parts = urllib.parse.urlsplit(url)
    try:
        socket.create_connection((parts.hostname or "localhost", parts.port or default_port), timeout=1).close()
        return True
    except OSError:
        return False


def _need(service: str, url: str, port: int) -> None:
    if not _answers(url, port):
        message = f"{service} does not answer at {url}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def amqp_url() -> str:
    _need("RabbitMQ", AMQP_URL, 5672)
    return AMQP_URL


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    _need("PostgreSQL", POSTGRES_ADMIN_URL, 5432)
    return POSTGRES_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_admin_url: str):
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(postgres_admin_url).set(database=name)
    yield url.render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request) -> str:
    """Run the test once on a SQLite file and once on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def unique() -> str:
    """A short unique suffix for broker names a test creates."""
    return uuid.uuid4().hex[:10]


#: RabbitMQ management API, used to give each test its own vhost.
MANAGEMENT_URL = os.environ.get("RABBITMQ_MANAGEMENT_URL", "http://guest:guest@localhost:15672")


@pytest.fixture(scope="session")
def management(amqp_url):
    """A requests session on the RabbitMQ management API (base URL in ``.base``)."""
    import requests

    parts = urllib.parse.urlsplit(MANAGEMENT_URL)
    session = requests.Session()
    session.auth = (urllib.parse.unquote(parts.username or "guest"), urllib.parse.unquote(parts.password or "guest"))
    session.base = f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}/api"
    try:
        session.get(f"{session.base}/overview", timeout=5).raise_for_status()
    except requests.RequestException as exc:
        message = f"RabbitMQ management API not reachable at {session.base}: {exc} (make test enables it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return session


@pytest.fixture
def vhost_url(amqp_url, management):
    """AMQP URL of a fresh vhost of its own for one test; deleted afterwards.

    Tests that declare the real topology or run workers use this so they
    never see each other's messages, nor a developer's running mesh.
    """
    name = f"test-{uuid.uuid4().hex[:12]}"
    quoted = urllib.parse.quote(name, safe="")
    user = urllib.parse.unquote(urllib.parse.urlsplit(amqp_url).username or "guest")
    management.put(f"{management.base}/vhosts/{quoted}", timeout=10).raise_for_status()
    management.put(
        f"{management.base}/permissions/{quoted}/{user}",
        json={"configure": ".*", "write": ".*", "read": ".*"},
        timeout=10,
    ).raise_for_status()
    parts = urllib.parse.urlsplit(amqp_url)
    yield urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + quoted, parts.query, ""))
    management.delete(f"{management.base}/vhosts/{quoted}", timeout=10)
