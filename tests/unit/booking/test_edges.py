"""The relay's retry and reconnect delays."""

from __future__ import annotations

from datetime import timedelta

from booking_service.relay.outbox_lease import retry_delay
from booking_service.runtime.backoff import reconnect_delay


def test_retry_delay_grows_and_is_capped():
    assert timedelta(seconds=15) <= retry_delay(1) <= timedelta(seconds=30)
    assert timedelta(seconds=60) <= retry_delay(3) <= timedelta(seconds=120)
    assert retry_delay(10_000) <= timedelta(hours=1)


def test_reconnect_delay_doubles_then_stays_at_the_cap_with_small_jitter():
    assert 0.18 <= reconnect_delay(1, 3.0) <= 0.25
    assert all(2.25 <= reconnect_delay(n, 3.0) <= 3.0 for n in (5, 50, 10_000))
