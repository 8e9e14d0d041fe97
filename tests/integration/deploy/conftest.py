"""The committed broker definitions loaded into a vhost of their own, from tests/deploy/broker.py."""

from tests.deploy.broker import definitions, least_privilege, monitoring  # noqa: F401 - fixtures
