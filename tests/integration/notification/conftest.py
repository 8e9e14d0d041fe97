"""A fake SMTP server on loopback (tests/notification/fake_smtp.py)."""

from tests.notification.fake_smtp import smtp  # noqa: F401 - fixture
