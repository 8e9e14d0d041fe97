"""deploy/k8s/platform/rabbitmq-cluster.yaml: three nodes that outlive the loss of one, loading rendered definitions.

The RabbitmqCluster kind is the RabbitMQ Cluster Operator's CRD, which
kubernetes-validate cannot know: schemas/rabbitmqcluster.schema.json checks
its fields (written from the operator's CRD, see its $comment), and these
tests check what the operator will build from it against the other manifests.
"""

from __future__ import annotations

import copy
import urllib.parse

import jsonschema
import pytest

from shared import amqp_url
from tests.deploy import repo

from .test_k8s import KUBERNETES_VERSIONS, RABBITMQ_CLUSTER_SCHEMA, of_kind
from .test_network_policy import platform_documents, platform_policy, selects

#: What the operator names and labels after a RabbitmqCluster ``<name>``.
OPERATOR_POD_LABELS = {"app.kubernetes.io/name": "rabbitmq", "app.kubernetes.io/component": "rabbitmq",
                       "app.kubernetes.io/part-of": "rabbitmq"}
ERLANG_PORTS = {4369, 25672}


def cluster() -> dict:
    (doc,) = [d for d in platform_documents() if d["kind"] == "RabbitmqCluster"]
    return doc


def additional_config() -> dict[str, str]:
    """``rabbitmq.additionalConfig`` as the rabbitmq.conf key/value pairs it adds."""
    found = {}
    for raw in cluster()["spec"]["rabbitmq"]["additionalConfig"].splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found[key.strip()] = value.strip()
    return found


def test_cluster_is_schema_valid_and_the_schema_refuses_a_typo():
    jsonschema.validate(cluster(), RABBITMQ_CLUSTER_SCHEMA)
    broken = copy.deepcopy(cluster())
    broken["spec"]["replica"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, RABBITMQ_CLUSTER_SCHEMA)
    too_long = copy.deepcopy(cluster())
    too_long["spec"]["rabbitmq"]["additionalConfig"] = "x" * 2001  # the CRD's limit
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(too_long, RABBITMQ_CLUSTER_SCHEMA)


def test_three_nodes_on_three_machines_with_bounded_resources():
    spec = cluster()["spec"]
    assert spec["replicas"] == 3
    resources = spec["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    (rule,) = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert rule["topologyKey"] == "kubernetes.io/hostname"
    assert selects(rule["labelSelector"], OPERATOR_POD_LABELS), "the anti-affinity must select the broker's own pods"


def test_at_most_one_broker_pod_is_evicted_at_a_time():
    (budget,) = [d for d in platform_documents() if d["kind"] == "PodDisruptionBudget"]
    assert budget["spec"]["maxUnavailable"] == 1 and "minAvailable" not in budget["spec"]
    assert selects(budget["spec"]["selector"], OPERATOR_POD_LABELS)


def test_network_policy_and_cluster_select_the_same_pods():
    assert cluster()["metadata"]["name"] == OPERATOR_POD_LABELS["app.kubernetes.io/name"]
    policy = platform_policy("rabbitmq")
    assert selects(policy["spec"]["podSelector"], OPERATOR_POD_LABELS)
    peers = [rule for rule in policy["spec"]["ingress"]
             if any(selects(p.get("podSelector"), OPERATOR_POD_LABELS) and "namespaceSelector" not in p
                    for p in rule["from"])]
    assert {p["port"] for rule in peers for p in rule["ports"]} >= ERLANG_PORTS, "the nodes must reach each other"


def test_each_node_imports_the_rendered_definitions_from_their_secret():
    """load_definitions names a file in the folder the Secret is mounted at, and nothing else is mounted there."""
    path = additional_config()["load_definitions"]
    folder, name = path.rsplit("/", 1)
    template = cluster()["spec"]["override"]["statefulSet"]["spec"]["template"]["spec"]
    (container,) = [c for c in template["containers"] if c["name"] == "rabbitmq"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == folder]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in template["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "rabbitmq-definitions"
    assert name == "definitions.json"


def test_quorum_queues_regain_three_members_when_a_node_joins():
    config = additional_config()
    assert config["quorum_queue.continuous_membership_reconciliation.enabled"] == "true"
    assert int(config["quorum_queue.continuous_membership_reconciliation.target_group_size"]) == 3
    compose_conf = (repo.DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text()
    assert f"consumer_timeout = {config['consumer_timeout']}" in compose_conf, "one consumer timeout everywhere"


@pytest.mark.parametrize("team", ["booking", "notification"])
def test_example_amqp_url_lists_every_node_of_the_cluster(team):
    (secret,) = [s for s in of_kind(team, "Secret") if "AMQP_URL" in s["stringData"]]
    hosts = [urllib.parse.urlsplit(node).hostname for node in amqp_url.nodes(secret["stringData"]["AMQP_URL"])]
    name = cluster()["metadata"]["name"]
    # The operator's StatefulSet <name>-server and headless Service <name>-nodes.
    assert [h.split(".")[:2] for h in hosts] == [[f"{name}-server-{i}", f"{name}-nodes"]
                                                 for i in range(cluster()["spec"]["replicas"])]


def test_pod_disruption_budget_is_valid_kubernetes():
    import kubernetes_validate

    for doc in platform_documents():
        if doc["kind"] == "PodDisruptionBudget":
            for version in KUBERNETES_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)
