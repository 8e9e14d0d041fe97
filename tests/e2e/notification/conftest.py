"""A vhost per test module, a fake push API and a fake SMTP server, from tests/notification (the worker too).

And a RabbitMQ node of a test's own, which it may SIGKILL (tests/private_broker.py).
"""

from tests.notification.fake_smtp import smtp  # noqa: F401 - fixture
from tests.notification.harness import fake_push, module_vhost  # noqa: F401 - fixtures
from tests.private_broker import private_broker  # noqa: F401 - fixture
