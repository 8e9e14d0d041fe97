"""The booking app, its database and a bound broker queue, from tests/booking/fixtures.py."""

from tests.booking.fixtures import app, bound_queue, client, session_factory, settings  # noqa: F401 - fixtures
