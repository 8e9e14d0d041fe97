"""docker-compose.yml: valid by the compose spec, and wired to the code's real entry points, variables and ports.

Docker is not available on the test machines; these checks are what can be
proven without it. The PostgreSQL init script and Flower's password are run
for real against the local server / a local Flower process.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import urllib.parse

import pytest
import yaml

from tests.deploy import commands, compose_env, dockerfiles, repo

CHECK_JSONSCHEMA = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
#: Which of our images a service runs, from its Dockerfile path.
IMAGE_OF = {"deploy/booking/Dockerfile": "booking", "deploy/notification/Dockerfile": "notification",
            "deploy/flower/Dockerfile": "flower", "deploy/webhooks/Dockerfile": "webhooks"}
#: The broker user each team's processes must log in as (least privilege).
AMQP_USER = {"booking": "booking", "notification": "notification"}


def services() -> dict[str, dict]:
    return repo.compose()["services"]


def our_services() -> dict[str, str]:
    """Compose service name -> image key ("booking"/"notification"/"flower") for services built from this repo."""
    found = {}
    for name, spec in services().items():
        build = spec.get("build")
        if build:
            found[name] = IMAGE_OF[build["dockerfile"]]
    return found


def interpolate(value: str) -> str:
    """``value`` as compose resolves it with an operator's compose.env (every secret filled in)."""
    return compose_env.interpolate(value, compose_env.filled())


def env_of(name: str) -> dict[str, str]:
    return {k: interpolate(str(v)) for k, v in (services()[name].get("environment") or {}).items()}


def argv_of(name: str) -> list[str]:
    image = dockerfiles.load(our_services()[name])
    return image.argv(services()[name].get("command"))


def _schema_check(path) -> subprocess.CompletedProcess:
    return subprocess.run([*CHECK_JSONSCHEMA, str(path)], capture_output=True, text=True, timeout=120)


def test_compose_file_is_valid_by_the_compose_spec_schema(tmp_path):
    result = _schema_check(repo.COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    # The same check must reject a broken file, or it proves nothing.
    broken = copy.deepcopy(repo.compose())
    broken["services"]["booking-api"]["depends_on"]["booking-migrate"]["condition"] = "service_ready"
    (tmp_path / "compose.yml").write_text(yaml.safe_dump(broken))
    assert _schema_check(tmp_path / "compose.yml").returncode != 0


def test_stack_has_every_process_of_the_mesh():
    by_image = {}
    for name, image in our_services().items():
        by_image.setdefault(image, []).append(argv_of(name))
    booking = [argv[1] for argv in by_image["booking"]]
    assert sorted(booking) == ["migrate", "receipts", "relay", "serve"]
    notification = by_image["notification"]
    worker_queues = {commands.option(argv, "--queues", "-Q") for argv in notification if "worker" in argv}
    assert {f"notifications.{stage}.{lane}" for stage in ("dispatch", "email", "push") for lane in ("high", "low")} <= {
        q for queues in worker_queues for q in queues.split(",")
    }
    assert not any("flower" in argv for argv in notification), "Flower runs from its own image"
    assert [argv[3] for argv in by_image["flower"]] == ["flower"]
    assert ["notification-service", "migrate"] in notification
    images = {name: spec.get("image", "") for name, spec in services().items()}
    rabbit = re.fullmatch(r"rabbitmq:(\d+)\.(\d+)[\w.-]*-management", images["rabbitmq"])
    assert rabbit and (int(rabbit.group(1)), int(rabbit.group(2))) >= (3, 13), images["rabbitmq"]
    assert images["postgres"].startswith("postgres:16")
    assert images["mailpit"].startswith("axllent/mailpit")


@pytest.mark.parametrize("name", sorted(our_services()))
def test_service_command_is_a_real_entry_point_of_its_image(name):
    assert commands.problems(argv_of(name), repo.IMAGE_PACKAGES[our_services()[name]]) == []


def test_command_check_rejects_what_would_not_start():
    """The entry-point check itself must fail on a wrong subcommand, queue or option."""
    package = "notification_service"
    assert commands.problems(["booking-service", "serve"], package)
    assert commands.problems(["notification-service", "serve-forever"], package)
    worker = ["celery", "-A", "notification_service.celery_app", "worker"]
    assert commands.problems(worker + ["--queues", "notifications.sms"], package)
    assert commands.problems(worker + ["--queues", "notifications.email", "--pool", "fibers"], package)
    assert commands.problems(["celery", "-A", "notification_service.no_such_module", "worker"], package)
    assert commands.problems(["celery", "-A", "notification_service.celery_app", "flower", "--no-such-flag"], package)
    assert commands.problems(["celery", "-A", "notification_service.celery_app", "worker", "-Q", "notifications.email"],
                             "booking_service")


def test_variable_check_rejects_settings_nobody_reads():
    """The env check itself must flag a made-up variable, or a typo would pass."""
    assert repo.unknown_env("booking_service", ["BOOKING_DATABASE_URI"]) == ["BOOKING_DATABASE_URI"]
    assert repo.unknown_env("notification_service", ["FLOWER_BASIC_AUTHENTICATION"]) == ["FLOWER_BASIC_AUTHENTICATION"]
    assert repo.unknown_env("notification_service", ["FLOWER_BASIC_AUTH", "PYTHONUNBUFFERED"]) == []


@pytest.mark.parametrize("name", sorted(our_services()))
def test_service_sets_only_variables_its_code_reads(name):
    package = repo.IMAGE_PACKAGES[our_services()[name]]
    assert repo.unknown_env(package, env_of(name)) == []


def test_every_interpolated_setting_is_documented_for_operators():
    text = repo.COMPOSE_FILE.read_text()
    used = set(re.findall(r"\$\{(\w+)", text))
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", (repo.DEPLOY / "compose.env.example").read_text(), re.M))
    assert used == documented


def test_api_port_matches_the_bind_address_the_code_defaults_to():
    api = services()["booking-api"]
    default_bind = repo.env_example("booking_service")["BOOKING_BIND"]
    port = int(default_bind.rsplit(":", 1)[1])
    assert port == 8000
    assert int(env_of("booking-api").get("BOOKING_BIND", default_bind).rsplit(":", 1)[1]) == port
    assert [p.rsplit(":", 1)[1] for p in map(interpolate, api["ports"])] == [str(port)]
    assert f"127.0.0.1:{port}/healthz" in " ".join(api["healthcheck"]["test"])
    assert port in dockerfiles.load("booking").exposed_ports()


def test_booking_processes_get_an_empty_prometheus_multiprocess_folder():
    folder = dockerfiles.load("booking").env()["PROMETHEUS_MULTIPROC_DIR"]
    for name in ("booking-api", "booking-relay"):
        mounts = [m.split(":")[0] for m in services()[name].get("tmpfs", [])]
        assert folder in mounts, f"{name}: {folder} must be a fresh tmpfs (multiprocess files must start empty)"


def test_worker_healthcheck_probes_the_metrics_port_the_workers_serve():
    default_port = repo.env_example("notification_service")["NOTIFICATION_METRICS_PORT"]
    for name, image in our_services().items():
        argv = argv_of(name)
        if image != "notification" or "worker" not in argv:
            continue
        port = env_of(name).get("NOTIFICATION_METRICS_PORT", default_port)
        assert port == default_port, name
        assert f"127.0.0.1:{port}/metrics" in " ".join(services()[name]["healthcheck"]["test"]), name


def test_flower_port_and_email_workers_smtp_target_match_their_services():
    flower = services()["flower"]
    port = commands.option(argv_of("flower"), "--port")
    assert [p.rsplit(":", 1)[1] for p in map(interpolate, flower["ports"])] == [port]
    assert f"127.0.0.1:{port}/" in " ".join(flower["healthcheck"]["test"])
    assert env_of("flower")["FLOWER_BASIC_AUTH"], "Flower must be password protected"
    smtp = env_of("email-worker")
    assert smtp["EMAIL_PROVIDERS"].split(",")[0] == "smtp"  # SMTP first, the file sink behind it
    assert smtp["SMTP_HOST"] in services()
    assert smtp["SMTP_PORT"] in {str(p) for p in services()[smtp["SMTP_HOST"]].get("expose", [])}
    assert smtp["SMTP_STARTTLS"] == "false"


def _healthchecked(name: str) -> bool:
    spec = services()[name]
    if "healthcheck" in spec:
        return not spec["healthcheck"].get("disable", False)
    return name in our_services() and bool(dockerfiles.load(our_services()[name]).runtime.values("HEALTHCHECK"))


def test_start_order_waits_for_health_and_for_migrations():
    for name, spec in services().items():
        for dependency, condition in (spec.get("depends_on") or {}).items():
            assert dependency in services(), f"{name} depends on unknown {dependency}"
            if condition["condition"] == "service_healthy":
                assert _healthchecked(dependency), f"{name} waits for {dependency}, which has no healthcheck"
    for name, image in our_services().items():
        argv = argv_of(name)
        deps = services()[name].get("depends_on") or {}
        if argv[-1] == "migrate":
            assert deps["postgres"]["condition"] == "service_healthy"
            assert services()[name].get("restart") == "no", "a migration is a one-shot job"
            continue
        if "flower" in argv:  # reads only the broker, never the database
            assert deps == {"rabbitmq": {"condition": "service_healthy"}}
            continue
        if image == "webhooks":  # the delivery log only: no broker
            assert deps == {"notification-migrate": {"condition": "service_completed_successfully"}}
            continue
        migrate = f"{image}-migrate"
        assert deps[migrate]["condition"] == "service_completed_successfully", name
        if name != "booking-api":  # a booking must succeed while the broker is down
            assert deps["rabbitmq"]["condition"] == "service_healthy", name


def test_database_urls_match_the_roles_and_databases_postgres_creates():
    postgres_env = env_of("postgres")
    init = repo.DEPLOY / "postgres" / "init-databases.sh"
    created = re.findall(r'^\s*create (\w+) "\$\{(\w+):\?\}" (\w+)$', init.read_text(), re.M)
    roles = {role: (postgres_env[var], db) for role, var, db in created}
    for name, image in our_services().items():
        key = f"{repo.IMAGE_PACKAGES[image].removesuffix('_service').upper()}_DATABASE_URL"
        url = urllib.parse.urlsplit(env_of(name)[key])
        assert url.scheme == "postgresql+psycopg" and url.hostname == "postgres", name
        assert roles[url.username] == (url.password, url.path.lstrip("/")), name
