"""Fixtures every test package uses: the real broker and the real databases; the tiers and their markers.

Tests live in three tiers, by folder: ``tests/unit`` (no service, no process of
the system: seconds), ``tests/integration`` (the real broker and databases, in
this process) and ``tests/e2e`` (processes: gunicorn, relays, Celery workers,
a private RabbitMQ node, the whole mesh). Markers say what a test needs; they
are set here from the folder and from the fixtures a test asks for, so
``-m "not rabbitmq"`` or ``-m "not postgres"`` leaves out what a machine lacks.

Tests that need RabbitMQ or PostgreSQL are skipped on a laptop without them
but *fail* under CI (``CI=true``), where both must be there.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
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


#: The tier of a test is the first folder under tests/.
TIERS = ("unit", "integration", "e2e")
#: Fixtures that reach a service, by the marker a test using them gets.
#: ``database_url`` is absent: only its ``postgresql`` parameter needs the server (see below).
SERVICE_FIXTURES = {
    "rabbitmq": {"amqp_url", "management", "vhost_url", "module_vhost"},
    "postgres": {"postgres_admin_url", "postgres_url"},
    "private_broker": {"private_broker", "private_cluster"},
}
TESTS = pathlib.Path(__file__).parent


def _tier(item: pytest.Item) -> str | None:
    parts = item.path.relative_to(TESTS).parts
    return parts[0] if len(parts) > 1 and parts[0] in TIERS else None


def _needs(item: pytest.Item) -> set[str]:
    fixtures = set(getattr(item, "fixturenames", ()))
    needs = {marker for marker, names in SERVICE_FIXTURES.items() if fixtures & names}
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.params.get("database_url") == "postgresql":
        needs.add("postgres")
    return needs


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its tier and with the services its fixtures reach.

    A unit test that asks for a service, or a test outside the three tiers, is a
    collection error: the unit tier must run on a machine with nothing else installed.
    """
    misplaced = []
    for item in items:
        tier = _tier(item)
        needs = _needs(item) | {m.name for m in item.iter_markers() if m.name in SERVICE_FIXTURES}
        if tier is None:
            misplaced.append(f"{item.nodeid}: not under tests/{{{','.join(TIERS)}}}/")
            continue
        if tier == "unit" and needs:
            misplaced.append(f"{item.nodeid}: a unit test needs {', '.join(sorted(needs))}")
        item.add_marker(tier)
        for marker in needs:
            item.add_marker(marker)
        if tier == "e2e" or "private_broker" in needs:
            item.add_marker("processes")
    if misplaced:
        raise pytest.UsageError("tests in the wrong tier:\n  " + "\n  ".join(misplaced))


@pytest.fixture(scope="session")
def amqp_url() -> str:
    _need("RabbitMQ", AMQP_URL, 5672)
    return AMQP_URL


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    _need("PostgreSQL", POSTGRES_ADMIN_URL, 5432)
    return POSTGRES_ADMIN_URL


@contextlib.contextmanager
def fresh_postgres(postgres_admin_url: str):
    """A fresh, empty PostgreSQL database (its URL), dropped afterwards."""
    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(postgres_admin_url).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url(postgres_admin_url: str):
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    with fresh_postgres(postgres_admin_url) as url:
        yield url


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
    with fresh_vhost(amqp_url, management) as url:
        yield url


@contextlib.contextmanager
def fresh_vhost(amqp_url, management):
    """AMQP URL of a fresh vhost of the shared broker; deleted afterwards."""
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
    try:
        yield urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + quoted, parts.query, ""))
    finally:
        management.delete(f"{management.base}/vhosts/{quoted}", timeout=10)
