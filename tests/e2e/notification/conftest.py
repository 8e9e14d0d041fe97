"""A vhost per test module and a fake push API, from tests/notification/harness.py (the worker is there too).

And a RabbitMQ node of a test's own, which it may SIGKILL (tests/private_broker.py).
"""

from tests.notification.harness import fake_push, module_vhost  # noqa: F401 - fixtures
from tests.private_broker import private_broker  # noqa: F401 - fixture
