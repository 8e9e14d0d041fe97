"""Kubernetes manifests per service: schema-valid offline, and wired to the images' real commands, ports and settings.

Built-in kinds are validated with kubernetes-validate (strict: unknown fields
fail). Kinds it has no schema for are listed in ``NON_CORE_KINDS`` with the
check that replaces it; any other unknown kind fails the test.
"""

from __future__ import annotations

import copy
import json
import pathlib
import re
import urllib.parse

import jsonschema
import kubernetes_validate
import pytest

import shared
from shared import amqp_url
from tests.deploy import commands, dockerfiles, repo

K8S = repo.DEPLOY / "k8s"
TEAMS = {"booking": "booking", "notification": "notification"}
#: The priority lanes of the topology, urgent first (issue 16).
LANES = ("high", "low")
#: The oldest cluster we promise to run on, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())
SCHEMAS = pathlib.Path(__file__).parent / "schemas"
KEDA_SCHEMA = json.loads((SCHEMAS / "keda.schema.json").read_text())
RABBITMQ_CLUSTER_SCHEMA = json.loads((SCHEMAS / "rabbitmqcluster.schema.json").read_text())
#: (apiVersion, kind) that kubernetes-validate cannot know, and how each is checked instead.
NON_CORE_KINDS = {
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"): "test_kustomization_lists_every_manifest",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.schema.json + test_each_worker_scales_on_its_own_queue",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.schema.json + test_each_worker_scales_on_its_own_queue",
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): "rabbitmqcluster.schema.json + test_rabbitmq_cluster.py",
}


def documents(team: str) -> list[tuple[pathlib.Path, dict]]:
    return [(path, doc) for path in sorted((K8S / team).glob("*.yaml")) for doc in repo.load_yaml_documents(path)]


def of_kind(team: str, kind: str) -> list[dict]:
    return [doc for _, doc in documents(team) if doc["kind"] == kind]


def pod_specs(team: str) -> list[tuple[str, dict]]:
    found = [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in of_kind(team, "Deployment")]
    return found + [(j["metadata"]["name"], j["spec"]["template"]["spec"]) for j in of_kind(team, "Job")]


#: Images of a team's directory besides ``<team>-service``: the webhook receiver has its own.
EXTRA_IMAGES = {"notification": {"notification-webhooks": "webhooks"}}


def workers(team: str) -> list[dict]:
    """The team's Deployments that run its own image (the notification team's: the Celery workers)."""
    return [d for d in of_kind(team, "Deployment")
            if d["spec"]["template"]["spec"]["containers"][0]["image"] == f"{team}-service"]


def container_argv(team: str, container: dict) -> list[str]:
    """What runs: ``command`` replaces the image's ENTRYPOINT, ``args`` its CMD."""
    image = dockerfiles.load(EXTRA_IMAGES.get(team, {}).get(container["image"], team))
    entrypoint = container.get("command", image.runtime.exec_form("ENTRYPOINT"))
    cmd = container.get("args", image.runtime.exec_form("CMD") if "command" not in container else [])
    return [*entrypoint, *cmd]


def configured_env(team: str, container: dict) -> dict[str, str]:
    """Every variable a container gets: its env plus the ConfigMaps and Secrets it loads whole."""
    maps = {m["metadata"]["name"]: m["data"] for m in of_kind(team, "ConfigMap")}
    secrets = {s["metadata"]["name"]: s.get("stringData", {}) for s in of_kind(team, "Secret")}
    env = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps[source["configMapRef"]["name"]])
        else:
            env.update(secrets[source["secretRef"]["name"]])
    env.update({e["name"]: e.get("value", "") for e in container.get("env", [])})
    return env


@pytest.fixture(params=sorted(TEAMS))
def team(request) -> str:
    return request.param


def test_every_manifest_is_schema_valid_or_explicitly_checked_elsewhere(team):
    seen_non_core = set()
    for _path, doc in documents(team):
        key = (doc["apiVersion"], doc["kind"])
        if key in NON_CORE_KINDS:
            seen_non_core.add(key)
            if doc["apiVersion"].startswith("keda.sh/"):
                jsonschema.validate(doc, KEDA_SCHEMA)
            continue
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)  # raises on any error
    assert ("kustomize.config.k8s.io/v1beta1", "Kustomization") in seen_non_core


def test_validators_reject_broken_manifests():
    """Both validators must fail on a typo, or passing them proves nothing."""
    deployment = copy.deepcopy(of_kind("booking", "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
    scaled = copy.deepcopy(of_kind("notification", "ScaledObject")[0])
    scaled["spec"]["triggers"][0]["metadata"]["queueLength"] = "5"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, KEDA_SCHEMA)


def test_kustomization_lists_every_manifest(team):
    (kustomization,) = of_kind(team, "Kustomization")
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in (K8S / team).glob("*.yaml")} - {"kustomization.yaml"}
    # The Secret is a template the operator fills from a secret store; never applied from git.
    assert listed == on_disk - {"secret.example.yaml"}
    images = {i["name"] for i in kustomization["images"]}
    used = {c["image"] for _, spec in pod_specs(team) for c in spec["containers"]}
    assert used == images == {f"{team}-service", *EXTRA_IMAGES.get(team, {})}


def test_pods_run_non_root_with_the_images_uid_and_bounded_resources(team):
    uid = int(dockerfiles.load(team).runtime.last("USER").split(":")[0])
    for name, spec in pod_specs(team):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == uid, name
        assert spec.get("automountServiceAccountToken") is False, name
        for container in spec["containers"]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]


def test_every_process_of_the_service_is_deployed(team):
    argvs = [container_argv(team, c) for _, spec in pod_specs(team) for c in spec["containers"]]
    jobs = [container_argv(team, c) for j in of_kind(team, "Job") for c in j["spec"]["template"]["spec"]["containers"]]
    assert any(argv[-1] == "migrate" for argv in jobs), "a migration Job per service"
    if team == "booking":
        assert sorted(argv[1] for argv in argvs) == ["migrate", "receipts", "relay", "serve"]
    else:
        queues = {q for argv in argvs if "worker" in argv for q in commands.option(argv, "--queues", "-Q").split(",")}
        assert queues == set(shared.WORK_QUEUES)
        assert ["notification-service", "webhooks"] in argvs


def test_container_commands_are_real_entry_points(team):
    for name, spec in pod_specs(team):
        for container in spec["containers"]:
            assert commands.problems(container_argv(team, container), repo.IMAGE_PACKAGES[team]) == [], name


def test_containers_get_only_variables_their_code_reads(team):
    for name, spec in pod_specs(team):
        for container in spec["containers"]:
            env = set(configured_env(team, container)) - {"POD_NAME"}  # only used in the worker's --hostname
            assert repo.unknown_env(repo.IMAGE_PACKAGES[team], env) == [], name


def test_every_process_gets_its_broker_and_database(team):
    """Unset, both fall back to development defaults (guest, a SQLite file in the pod): never in a cluster."""
    for name, spec in pod_specs(team):
        for container in spec["containers"]:
            env = configured_env(team, container)
            assert env["AMQP_URL"].startswith(("amqp://", "amqps://")), name
            assert urllib.parse.urlsplit(env["AMQP_URL"]).username == team, f"{name} must log in as {team}"
            for node in amqp_url.nodes(env["AMQP_URL"]):
                assert urllib.parse.urlsplit(node).username == team, f"{name} must log in as {team} on every node"
            assert env[f"{team.upper()}_DATABASE_URL"].startswith("postgresql+psycopg://"), name


def test_api_probes_healthz_and_readyz_on_the_port_the_service_targets():
    (api,) = [d for d in of_kind("booking", "Deployment") if d["metadata"]["name"] == "booking-api"]
    (container,) = api["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    bind = configured_env("booking", container)["BOOKING_BIND"]
    assert ports["http"] == int(bind.rsplit(":", 1)[1]) and ports["http"] in dockerfiles.load("booking").exposed_ports()
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    (service,) = of_kind("booking", "Service")
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


def test_the_webhook_receiver_is_probed_on_healthz_on_the_port_its_service_targets():
    (deployment,) = [d for d in of_kind("notification", "Deployment") if d["metadata"]["name"] == "webhooks"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    bind = configured_env("notification", container)["NOTIFICATION_WEBHOOK_BIND"]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert port == int(bind.rsplit(":", 1)[1]) and port in dockerfiles.load("webhooks").exposed_ports()
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    (service,) = of_kind("notification", "Service")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_booking_pods_mount_a_fresh_prometheus_multiprocess_folder():
    folder = dockerfiles.load("booking").env()["PROMETHEUS_MULTIPROC_DIR"]
    for deployment in of_kind("booking", "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        (container,) = spec["containers"]
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == folder]
        assert "emptyDir" in volumes[mount["name"]], deployment["metadata"]["name"]


def test_workers_are_probed_on_the_metrics_port_they_serve():
    for deployment in workers("notification"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        port = int(configured_env("notification", container)["NOTIFICATION_METRICS_PORT"])
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": port}
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}


def test_each_worker_scales_on_its_own_queue():
    deployments = {d["metadata"]["name"]: d for d in workers("notification")}
    scaled = of_kind("notification", "ScaledObject")
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled} == set(deployments)
    for obj in scaled:
        (container,) = deployments[obj["spec"]["scaleTargetRef"]["name"]]["spec"]["template"]["spec"]["containers"]
        queues = commands.option(container_argv("notification", container), "--queues", "-Q").split(",")
        triggers = obj["spec"]["triggers"]
        # One trigger per lane queue the worker consumes: KEDA scales to the largest of them.
        assert [t["metadata"]["queueName"] for t in triggers] == queues
        assert obj["spec"]["minReplicaCount"] >= 1 and obj["spec"]["maxReplicaCount"] > obj["spec"]["minReplicaCount"]
        for trigger in triggers:
            assert trigger["type"] == "rabbitmq"
            assert trigger["metadata"]["mode"] == "QueueLength"
            assert trigger["metadata"]["protocol"] == "http", "queue length from the management API, not an AMQP login"


def test_workers_consume_each_stage_in_both_lanes():
    """The dispatch worker takes both dispatch lanes, each send worker its channel's two lanes."""
    by_worker = {}
    for deployment in workers("notification"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        argv = container_argv("notification", container)
        by_worker[deployment["metadata"]["name"]] = commands.option(argv, "--queues", "-Q").split(",")
    assert by_worker == {f"{stage}-worker": [f"notifications.{stage}.{lane}" for lane in LANES]
                         for stage in ("dispatch", "email", "push")}


def test_keda_reads_queue_lengths_as_the_monitoring_user_from_a_secret_no_worker_loads():
    """The scaler's credential can read queue lengths and nothing else.

    (tests/integration/deploy/test_broker_permissions.py checks it on a broker.)
    """
    from tests.deploy import compose_env

    auths = {a["metadata"]["name"]: a for a in of_kind("notification", "TriggerAuthentication")}
    secrets = {s["metadata"]["name"]: s["stringData"] for s in of_kind("notification", "Secret")}
    loaded = {source["secretRef"]["name"] for _, spec in pod_specs("notification") for c in spec["containers"]
              for source in c.get("envFrom", []) if "secretRef" in source}
    monitoring_tags, _ = compose_env.renderer().EXTRA_USERS["monitoring"]
    assert monitoring_tags == ["monitoring"]
    used = {t["authenticationRef"]["name"]
            for obj in of_kind("notification", "ScaledObject") for t in obj["spec"]["triggers"]}
    assert used and used <= set(auths)
    for name in used:
        (ref,) = auths[name]["spec"]["secretTargetRef"]
        assert ref["parameter"] == "host"
        assert ref["name"] not in loaded, "no worker may load the scaler's credential, nor the scaler the workers'"
        url = urllib.parse.urlsplit(secrets[ref["name"]][ref["key"]])
        assert url.scheme in ("http", "https") and url.username == "monitoring", url._replace(netloc=url.hostname)


_CREDENTIAL_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|_KEYS$")
#: A URL with user:password@ in it (AMQP_URL, *_DATABASE_URL).
_CREDENTIAL_VALUE = re.compile(r"://[^/@\s]+:[^/@\s]*@")


def test_no_secret_values_in_the_manifests(team):
    for name, data in ((m["metadata"]["name"], m["data"]) for m in of_kind(team, "ConfigMap")):
        leaked = [k for k, v in data.items() if _CREDENTIAL_NAME.search(k) or _CREDENTIAL_VALUE.search(v)]
        assert not leaked, f"ConfigMap {name} carries credentials {leaked}: they belong in the Secret"
    for secret in of_kind(team, "Secret"):
        for key, value in secret["stringData"].items():
            assert "REPLACE_ME" in value, f"{key}: only placeholders may be committed"
