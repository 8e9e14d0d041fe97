"""The worker's /metrics listens on loopback unless NOTIFICATION_METRICS_ADDR opens it."""

from __future__ import annotations

import ipaddress
import urllib.request

import pytest

from notification_service.runtime import metrics
from notification_service.settings import ConfigError, Settings
from tests.support import free_port


def test_metrics_listen_on_loopback_by_default_and_the_variable_moves_them():
    assert Settings().metrics_addr == ipaddress.ip_address("127.0.0.1")
    assert Settings.from_env({"NOTIFICATION_METRICS_ADDR": "0.0.0.0"}).metrics_addr == ipaddress.ip_address("0.0.0.0")
    assert Settings.from_env({"NOTIFICATION_METRICS_ADDR": "::1"}).metrics_addr == ipaddress.ip_address("::1")
    with pytest.raises(ConfigError, match="NOTIFICATION_METRICS_ADDR.*'everywhere'"):
        Settings.from_env({"NOTIFICATION_METRICS_ADDR": "everywhere"})


def test_the_metrics_server_binds_the_address_it_is_given_once_per_port():
    port = free_port()

    listening = metrics.start(port, "127.0.0.1")

    assert listening == ("127.0.0.1", port)
    assert metrics.start(port, "127.0.0.1") == listening  # a second worker_init starts nothing
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert b"notification_tasks_total" in response.read()
    assert metrics.start(0) is None
