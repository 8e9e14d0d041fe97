"""/metrics under gunicorn with several workers counts every worker's requests (multiprocess mode)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import pytest
import requests

from .conftest import API_KEY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_metrics_aggregate_all_gunicorn_workers(settings, tmp_path):
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    port = free_port()
    env = {**os.environ, "BOOKING_DATABASE_URL": settings.database_url, "BOOKING_API_KEYS": API_KEY,
           "BOOKING_BIND": f"127.0.0.1:{port}", "BOOKING_WORKERS": "3", "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
           "BOOKING_LOG_FORMAT": "json"}
    proc = subprocess.Popen([sys.executable, "-m", "booking_service", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(base + "/healthz", timeout=1)
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        for _ in range(30):
            # A new connection each time, so gunicorn spreads the calls over its workers.
            assert requests.get(base + "/v1/bookings", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5).ok
        for _ in range(6):
            text = requests.get(base + "/metrics", timeout=5).text
            match = re.search(r'booking_http_requests_total\{method="GET",route="/v1/bookings",status="200"\} (\S+)', text)
            assert match and float(match.group(1)) == 30.0
        pids = {p.name for p in prom_dir.iterdir()}
        assert len({name.rsplit("_", 1)[-1] for name in pids}) >= 2, "several worker processes wrote metrics"
    finally:
        proc.terminate()
        proc.wait(20)
