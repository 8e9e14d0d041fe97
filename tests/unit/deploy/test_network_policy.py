"""NetworkPolicies: schema-valid, and their selectors match the labels the Deployments and Jobs really carry.

Kubernetes' own selector semantics (matchLabels, matchExpressions, a peer's
namespaceSelector AND podSelector, an empty selector matching everything)
are applied here to the pod templates of deploy/k8s/, so a renamed label or
component fails a test instead of silently opening or closing a port.
"""

from __future__ import annotations

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy import repo

from .test_k8s import K8S, KUBERNETES_VERSIONS, RABBITMQ_CLUSTER_SCHEMA, container_argv, of_kind

PLATFORM = K8S / "platform"
#: Pods by (team, name): which servers each process opens. Decided here from what each runs.
BROKER_CLIENTS = {("booking", "booking-api"), ("booking", "booking-relay"), ("booking", "booking-receipts"),
                  ("notification", "dispatch-worker"), ("notification", "email-worker"),
                  ("notification", "push-worker")}
DATABASE_CLIENTS = BROKER_CLIENTS | {("booking", "booking-migrate"), ("notification", "notification-migrate")}


def namespace(team: str) -> str:
    (kustomization,) = of_kind(team, "Kustomization")
    return kustomization["namespace"]


def pods(team: str) -> dict[str, dict]:
    """Pod template name -> {"labels", "ports" (name -> number)} of every Deployment and Job."""
    found = {}
    for doc in [*of_kind(team, "Deployment"), *of_kind(team, "Job")]:
        template = doc["spec"]["template"]
        ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        found[doc["metadata"]["name"]] = {"labels": template["metadata"]["labels"], "ports": ports}
    return found


def selects(selector: dict | None, labels: dict[str, str]) -> bool:
    """Kubernetes label selector semantics; an empty selector selects everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def policies(team: str) -> list[dict]:
    return of_kind(team, "NetworkPolicy")


def allowed_ingress(team: str, pod: str) -> list[tuple[dict, list]]:
    """Every (peers, ports) ingress rule of the team's policies that select ``pod``."""
    labels = pods(team)[pod]["labels"]
    rules = []
    for policy in policies(team):
        if selects(policy["spec"]["podSelector"], labels):
            rules += [(rule.get("from", []), rule.get("ports", [])) for rule in policy["spec"].get("ingress", [])]
    return rules


def platform_documents() -> list[dict]:
    return [doc for path in sorted(PLATFORM.glob("*.yaml")) for doc in repo.load_yaml_documents(path)]


def platform_policy(server: str) -> dict:
    (policy,) = [d for d in platform_documents() if d["kind"] == "NetworkPolicy"
                 and d["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == server]
    return policy


@pytest.fixture(params=["booking", "notification"])
def team(request) -> str:
    return request.param


def test_platform_policies_are_schema_valid_and_listed():
    for doc in platform_documents():
        if doc["kind"] == "Kustomization":
            assert doc["resources"] == ["rabbitmq-cluster.yaml", "networkpolicy.yaml"]
            assert "namespace" not in doc, "applied into the namespace the servers run in (-n)"
            continue
        if doc["kind"] == "RabbitmqCluster":
            jsonschema.validate(doc, RABBITMQ_CLUSTER_SCHEMA)
            continue
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_team_policies_are_in_the_kustomization(team):
    (kustomization,) = of_kind(team, "Kustomization")
    assert "networkpolicy.yaml" in kustomization["resources"]
    assert namespace(team) == team


def test_every_pod_of_the_team_is_denied_ingress_by_default(team):
    deny = [p for p in policies(team) if p["spec"]["policyTypes"] == ["Ingress"] and not p["spec"].get("ingress")]
    assert deny, "a default-deny ingress policy per team"
    for name, pod in pods(team).items():
        assert any(selects(p["spec"]["podSelector"], pod["labels"]) for p in deny), f"{name} is not covered"


def test_only_the_api_port_is_open_and_to_anyone_and_its_metrics_port_to_monitoring():
    api = pods("booking")["booking-api"]
    rules = allowed_ingress("booking", "booking-api")
    public = [(peers, ports) for peers, ports in rules if peers == []]
    assert len(public) == 1, "the public API takes connections from any source, on one port"
    ((_, ports),) = public
    assert [api["ports"][p["port"]] for p in ports] == [api["ports"]["http"]]
    (service,) = of_kind("booking", "Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [p["port"] for p in ports]
    scraped = [(peers, ports) for peers, ports in rules if peers != []]
    assert [[api["ports"][p["port"]] for p in ports] for _peers, ports in scraped] == [[api["ports"]["metrics"]]]
    assert [peers for peers, _ports in scraped] == [
        [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]]
    assert {n: allowed_ingress("booking", n) for n in pods("booking") if n != "booking-api"} == {
        "booking-relay": [], "booking-receipts": [], "booking-migrate": []}


def test_workers_take_only_their_metrics_port_and_only_from_the_monitoring_namespace():
    workers = {d["metadata"]["name"] for d in of_kind("notification", "Deployment")
               if any("worker" in container_argv("notification", c)
                      for c in d["spec"]["template"]["spec"]["containers"])}
    assert workers == {"dispatch-worker", "email-worker", "push-worker"}
    for name, pod in pods("notification").items():
        rules = allowed_ingress("notification", name)
        if name == "webhooks":  # the providers' events: its HTTP port from anywhere, nothing else
            ((peers, ports),) = rules
            assert peers == [] and [pod["ports"][p["port"]] for p in ports] == [pod["ports"]["http"]]
            continue
        if name not in workers:
            assert rules == [], name
            continue
        ((peers, ports),) = rules
        assert peers == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
        assert [pod["ports"][p["port"]] for p in ports] == [pod["ports"]["metrics"]]
        assert pod["ports"]["metrics"] == 9808


def _admitted(policy: dict, ports: set[int]) -> set[tuple[str, str]]:
    """Our pods (team, name) some rule of ``policy`` admits on one of ``ports``."""
    teams = {namespace(t): t for t in ("booking", "notification")}
    found = set()
    for rule in policy["spec"]["ingress"]:
        if not {p["port"] for p in rule["ports"]} & ports:
            continue
        for peer in rule.get("from", []):
            ns = (peer.get("namespaceSelector") or {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
            if ns not in teams:
                continue
            matched = {(teams[ns], n) for n, p in pods(teams[ns]).items()
                       if selects(peer.get("podSelector"), p["labels"])}
            assert matched, f"a peer in {ns} matches none of that team's pods: {peer}"
            found |= matched
    return found


def test_broker_admits_exactly_the_processes_that_use_it():
    policy = platform_policy("rabbitmq")
    assert _admitted(policy, {5671, 5672}) == BROKER_CLIENTS
    assert _admitted(policy, {15671, 15672, 15692, 4369, 25672, 35672}) == set(), "no service pod on the other ports"
    (keda,) = [r for r in policy["spec"]["ingress"] if any(
        (p.get("namespaceSelector") or {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") == "keda"
        for p in r["from"])]
    assert {p["port"] for p in keda["ports"]} == {15671, 15672}, "KEDA reads the management API only"


def test_database_admits_exactly_the_processes_that_use_it():
    assert _admitted(platform_policy("postgresql"), {5432}) == DATABASE_CLIENTS


def test_server_ports_match_the_urls_the_secrets_point_at():
    """The example Secrets' URLs use ports the policies open (AMQP over TLS, the management API over TLS, 5432)."""
    import urllib.parse

    secrets = {**{k: v for s in of_kind("booking", "Secret") for k, v in s["stringData"].items()},
               **{f"keda:{k}": v for s in of_kind("notification", "Secret") for k, v in s["stringData"].items()}}
    rabbit = {p["port"] for r in platform_policy("rabbitmq")["spec"]["ingress"] for p in r["ports"]}
    postgres = {p["port"] for r in platform_policy("postgresql")["spec"]["ingress"] for p in r["ports"]}
    assert urllib.parse.urlsplit(secrets["AMQP_URL"]).port in rabbit
    from shared import amqp_url

    assert all(urllib.parse.urlsplit(node).port in rabbit for node in amqp_url.nodes(secrets["AMQP_URL"]))
    assert urllib.parse.urlsplit(secrets["keda:host"]).port in rabbit
    assert urllib.parse.urlsplit(secrets["BOOKING_DATABASE_URL"]).port in postgres


def test_selector_semantics_used_above():
    labels = {"app.kubernetes.io/name": "notification-service", "app.kubernetes.io/component": "email-worker"}
    assert selects({}, labels) and selects(None, labels)
    assert selects({"matchLabels": {"app.kubernetes.io/name": "notification-service"}}, labels)
    assert not selects({"matchLabels": {"app.kubernetes.io/name": "booking-service"}}, labels)
    assert selects({"matchExpressions": [{"key": "app.kubernetes.io/component", "operator": "In",
                                          "values": ["email-worker"]}]}, labels)
    assert not selects({"matchExpressions": [{"key": "app.kubernetes.io/component", "operator": "NotIn",
                                              "values": ["email-worker"]}]}, labels)
    assert not selects({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, labels)
