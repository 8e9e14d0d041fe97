"""/metrics under gunicorn: every worker's requests counted (multiprocess mode), and on a port of its own."""

from __future__ import annotations

import re
import socket

import pytest
import requests

from tests.booking.fixtures import API_KEY
from tests.booking.gunicorn_process import serve
from tests.support import free_port


def _env(settings, tmp_path, port: int, **extra) -> dict:
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    return {"BOOKING_DATABASE_URL": settings.database_url, "BOOKING_API_KEYS": API_KEY,
            "BOOKING_BIND": f"127.0.0.1:{port}", "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
            "BOOKING_LOG_FORMAT": "json", **extra}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_metrics_aggregate_all_gunicorn_workers(settings, tmp_path):
    port = free_port()
    env = _env(settings, tmp_path, port)
    base = f"http://127.0.0.1:{port}"
    with serve(env, workers=3):
        # A half-sent request keeps the sync worker that accepted it busy, so the
        # next calls are served by the other (ready) workers: at least two
        # processes count requests.
        held = socket.create_connection(("127.0.0.1", port), timeout=60)
        head = f"GET /v1/bookings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
        held.sendall(head.encode())
        for _ in range(30):
            assert requests.get(base + "/v1/bookings", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60).ok
        held.sendall(b"Connection: close\r\n\r\n")
        assert held.makefile("rb").readline().split()[1] == b"200"
        held.close()
        for _ in range(6):
            text = requests.get(base + "/metrics", timeout=60).text
            match = re.search(r'booking_http_requests_total\{method="GET",route="/v1/bookings",status="200"\} (\S+)',
                              text)
            assert match and float(match.group(1)) == 31.0
        pids = {p.name for p in (tmp_path / "prom").iterdir()}
        assert len({name.rsplit("_", 1)[-1] for name in pids}) >= 2, "several worker processes wrote metrics"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_metrics_on_their_own_port_are_not_on_the_api_port(settings, tmp_path):
    port, metrics_port = free_port(), free_port()
    env = _env(settings, tmp_path, port, BOOKING_METRICS_BIND=f"127.0.0.1:{metrics_port}")
    api, scrape = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with serve(env, workers=2):
        assert requests.get(api + "/v1/bookings", headers=auth, timeout=60).status_code == 200
        hidden = requests.get(api + "/metrics", timeout=60)
        assert hidden.status_code == 404 and hidden.json()["error"]["code"] == 404
        # The Host header names the metrics port: the socket, not the header, decides.
        spoofed = requests.get(api + "/metrics", headers={"Host": f"127.0.0.1:{metrics_port}"}, timeout=60)
        assert spoofed.status_code == 404
        metrics = requests.get(scrape + "/metrics", timeout=60)
        assert metrics.status_code == 200
        assert 'booking_http_requests_total{method="GET",route="/v1/bookings",status="200"}' in metrics.text
        # The metrics port serves nothing else.
        assert requests.get(scrape + "/v1/bookings", headers=auth, timeout=60).status_code == 404
        assert requests.get(scrape + "/healthz", timeout=60).status_code == 404
        assert requests.get(api + "/healthz", timeout=60).status_code == 200
