"""A vhost per test module and a fake push API, from tests/notification/harness.py (the worker is there too)."""

from tests.notification.harness import fake_push, module_vhost  # noqa: F401 - fixtures
