"""docker-compose.yml's `cluster` profile: three RabbitMQ nodes that form one cluster, and every service on all three.

Docker does not run here; what is checked is what compose and RabbitMQ will
read: the node names the peer discovery lists against the services'
hostnames, one cookie, one definitions volume, and the AMQP_URL each service
gets with the env file of a cluster.
"""

from __future__ import annotations

import re
import urllib.parse

from shared import amqp_url
from tests.deploy import compose_env, repo

NODES = ("rabbitmq1", "rabbitmq2", "rabbitmq3")
CLUSTER_ENV = {f"RABBITMQ_NODE{i}_HOST": name for i, name in enumerate(NODES, start=1)}


def compose(extra: dict[str, str] | None = None) -> dict:
    return compose_env.compose_with({**compose_env.filled(), **(extra or {})})


def mounts(service: dict) -> dict[str, str]:
    """Container path -> source of a service's volumes."""
    return {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}


def cluster_conf() -> str:
    return (repo.DEPLOY / "rabbitmq" / "cluster.conf").read_text()


def test_cluster_nodes_start_only_with_the_profile_and_the_single_node_without_it():
    services = compose()["services"]
    for name in NODES:
        assert services[name]["profiles"] == ["cluster"], name
    assert "profiles" not in services["rabbitmq"]
    assert services["rabbitmq1"]["image"] == services["rabbitmq"]["image"], "one RabbitMQ version in both setups"


def test_peer_discovery_lists_exactly_the_three_nodes_by_their_hostnames():
    services = compose()["services"]
    listed = re.findall(r"^cluster_formation\.classic_config\.nodes\.\d+ = (\S+)$", cluster_conf(), re.M)
    assert listed == [f"rabbit@{services[name]['hostname']}" for name in NODES]
    assert "cluster_formation.peer_discovery_backend = classic_config" in cluster_conf()


def test_every_node_has_the_same_config_definitions_and_cookie_and_a_volume_of_its_own():
    services = compose()["services"]
    single = mounts(services["rabbitmq"])
    data = set()
    for name in NODES:
        node = mounts(services[name])
        assert node["/etc/rabbitmq/rabbitmq.conf"] == single["/etc/rabbitmq/rabbitmq.conf"], name
        assert node["/etc/rabbitmq/conf.d/20-cluster.conf"] == "./deploy/rabbitmq/cluster.conf", name
        assert node["/etc/rabbitmq/definitions.d"] == single["/etc/rabbitmq/definitions.d"], name
        data.add(node["/var/lib/rabbitmq"])
        deps = services[name]["depends_on"]
        assert deps["rabbitmq-definitions"]["condition"] == "service_completed_successfully", name
        cookie = services[name]["environment"]["RABBITMQ_CLUSTER_COOKIE"]
        assert cookie == compose_env.filled()["RABBITMQ_ERLANG_COOKIE"], name
        assert "$RABBITMQ_CLUSTER_COOKIE" in " ".join(services[name]["entrypoint"])
        assert services[name]["healthcheck"]["test"][:2] == ["CMD", "rabbitmq-diagnostics"], name
    assert len(data) == len(NODES) and single["/var/lib/rabbitmq"] not in data
    assert "RABBITMQ_ERLANG_COOKIE" in compose_env.secret_names(), "the cookie has no default"


def test_later_nodes_join_a_running_first_node():
    services = compose()["services"]
    for name in NODES[1:]:
        assert services[name]["depends_on"]["rabbitmq1"]["condition"] == "service_healthy", name


def test_quorum_queues_grow_to_three_members_as_nodes_join():
    assert "quorum_queue.continuous_membership_reconciliation.enabled = true" in cluster_conf()
    assert "quorum_queue.continuous_membership_reconciliation.target_group_size = 3" in cluster_conf()


def _amqp_hosts(services: dict) -> dict[str, list[str]]:
    return {name: [urllib.parse.urlsplit(n).hostname for n in amqp_url.nodes(spec["environment"]["AMQP_URL"])]
            for name, spec in services.items() if "AMQP_URL" in (spec.get("environment") or {})}


def test_services_use_the_single_node_by_default_and_every_cluster_node_with_the_cluster_env():
    single = _amqp_hosts(compose()["services"])
    assert single and all(hosts == ["rabbitmq"] * 3 for hosts in single.values()), single
    clustered = _amqp_hosts(compose(CLUSTER_ENV)["services"])
    assert clustered.keys() == single.keys()
    assert all(hosts == list(NODES) for hosts in clustered.values()), clustered
    # Each node of a service's URL logs in as the same user with the same password.
    for name, spec in compose(CLUSTER_ENV)["services"].items():
        if "AMQP_URL" in (spec.get("environment") or {}):
            logins = {(urllib.parse.urlsplit(n).username, urllib.parse.urlsplit(n).password)
                      for n in amqp_url.nodes(spec["environment"]["AMQP_URL"])}
            assert len(logins) == 1, name
