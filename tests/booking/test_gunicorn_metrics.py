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

from tests.support import free_port

from .conftest import API_KEY


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
        # A half-sent request keeps the sync worker that accepted it busy (the
        # listen queue is FIFO, so it is accepted first), so the next calls are
        # served by other workers: at least two processes count requests.
        held = socket.create_connection(("127.0.0.1", port), timeout=10)
        head = f"GET /v1/bookings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
        held.sendall(head.encode())
        for _ in range(30):
            assert requests.get(base + "/v1/bookings", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5).ok
        held.sendall(b"Connection: close\r\n\r\n")
        assert held.makefile("rb").readline().split()[1] == b"200"
        held.close()
        for _ in range(6):
            text = requests.get(base + "/metrics", timeout=5).text
            match = re.search(r'booking_http_requests_total\{method="GET",route="/v1/bookings",status="200"\} (\S+)', text)
            assert match and float(match.group(1)) == 31.0
        pids = {p.name for p in prom_dir.iterdir()}
        assert len({name.rsplit("_", 1)[-1] for name in pids}) >= 2, "several worker processes wrote metrics"
    finally:
        proc.terminate()
        proc.wait(20)
