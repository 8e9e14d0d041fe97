"""Deployments open the workers' /metrics (loopback by default) where their probes and scraper need it."""

from __future__ import annotations

from tests.unit.deploy.test_compose import argv_of, env_of, our_services, services
from tests.unit.deploy.test_k8s import configured_env, of_kind


def test_kubernetes_workers_open_metrics_to_their_probes_and_scraper():
    """The kubelet probes the pod's IP: a loopback-only /metrics would fail every probe."""
    for deployment in of_kind("notification", "Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert configured_env("notification", container)["NOTIFICATION_METRICS_ADDR"] == "0.0.0.0"


def test_compose_workers_open_metrics_on_the_compose_network_only():
    for name, image in our_services().items():
        if image == "notification" and "worker" in argv_of(name):
            assert env_of(name)["NOTIFICATION_METRICS_ADDR"] == "0.0.0.0", name
            assert not any("9808" in str(port) for port in services()[name].get("ports", [])), name
