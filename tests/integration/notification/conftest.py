"""A vhost per test module, from tests/notification/harness.py."""

from tests.notification.harness import module_vhost  # noqa: F401 - fixture
