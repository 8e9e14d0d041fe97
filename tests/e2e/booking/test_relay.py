"""The relay as its own process: its metrics port."""

from __future__ import annotations

from tests import support
from tests.booking.fixtures import AUTH, booking_body
from tests.integration.booking.test_relay import _reset_seen, drain_into, seen, wait_for  # noqa: F401 - _reset_seen: autouse fixture


def test_relay_serves_its_own_metrics_port(session_factory, bound_queue, client, tmp_path):
    """A relay in its own container exposes its publish counters on BOOKING_RELAY_METRICS_PORT."""
    import os
    import subprocess
    import sys

    import requests

    url, channel, queue = bound_queue
    client.post("/v1/bookings", json=booking_body(), headers=AUTH)
    port = support.free_port()
    engine_url = session_factory.kw["bind"].url.render_as_string(hide_password=False)
    env = {**os.environ, "AMQP_URL": url, "BOOKING_DATABASE_URL": engine_url,
           "BOOKING_RELAY_METRICS_PORT": str(port), "BOOKING_LOG_FORMAT": "json"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "booking_service", "relay"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(drain_into(channel, queue, seen)) >= 1)

        def scraped():
            try:
                text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
            except requests.RequestException:
                return None
            return 'booking_outbox_published_total{event="booking.confirmed"} 1.0' in text

        wait_for(scraped)
    finally:
        proc.terminate()
        assert proc.wait(15) == 0  # SIGTERM is a clean stop
