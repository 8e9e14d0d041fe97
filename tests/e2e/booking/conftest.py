"""The booking settings and database, from tests/booking/fixtures.py."""

from tests.booking.fixtures import settings  # noqa: F401 - fixture
