"""Metric labels and the metrics bind, checked without an app or a database."""

from __future__ import annotations

import pytest

from booking_service.api.app import create_app
from booking_service.settings import Settings


@pytest.mark.parametrize("bind", ["9109", "host:", ":9109", "host:99999", "host:nine"])
def test_a_metrics_bind_that_is_not_host_and_port_is_refused(bind):
    with pytest.raises(ValueError, match="BOOKING_METRICS_BIND"):
        create_app(Settings(database_url="sqlite://", metrics_bind=bind))
