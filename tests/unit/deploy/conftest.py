"""The committed broker definitions, from tests/deploy/broker.py."""

from tests.deploy.broker import definitions  # noqa: F401 - fixture
