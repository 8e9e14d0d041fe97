"""The definitions a compose broker imports: the committed topology, with users whose passwords come from compose.env.

``deploy/rabbitmq/definitions.json`` equals ``notification-service topology
export`` (tests/notification) and so carries hashes of the development
passwords; ``deploy/rabbitmq/render_definitions.py`` replaces every user
before the broker sees the file. The hashes it writes are proven on the real
RabbitMQ: a user created from one logs in with the password, and not without.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse

import pytest

from tests.deploy import compose_env, repo

USERS = {"admin", "booking", "monitoring", "notification"}
#: What a compose service logs in as, by the image it runs.
AMQP_USER = {"deploy/booking/Dockerfile": "booking", "deploy/notification/Dockerfile": "notification",
             "deploy/flower/Dockerfile": "notification"}  # Flower reads the workers' events as their user


def committed() -> dict:
    return json.loads(repo.DEFINITIONS_FILE.read_text())


def rendered(env: dict[str, str] | None = None) -> dict:
    return compose_env.renderer().render(committed(), env or compose_env.filled())


def matches(user: dict, password: str) -> bool:
    return compose_env.renderer()._matches(user, password)


def users_of(definitions: dict) -> dict[str, dict]:
    return {u["name"]: u for u in definitions["users"]}


def test_committed_file_holds_development_password_hashes_so_it_is_never_imported_as_is():
    """Why the renderer exists: anyone can log in with the committed file's users (topology.DEV_PASSWORDS)."""
    from notification_service.broker import topology

    for name, password in topology.DEV_PASSWORDS.items():
        assert matches(users_of(committed())[name], password)
    mounted = [v.split(":")[0] for s in repo.compose()["services"].values() for v in s.get("volumes", [])]
    rabbit = repo.compose()["services"]["rabbitmq"]["volumes"]
    assert not any("definitions.json" in v for v in rabbit), "the broker must not mount the committed file"
    assert "./deploy/rabbitmq/definitions.json" in mounted  # only the renderer reads it


def test_rendered_definitions_keep_the_topology_and_replace_every_password():
    env = compose_env.filled()
    result = rendered(env)
    for key in ("exchanges", "queues", "bindings", "policies", "vhosts", "topic_permissions"):
        assert result[key] == committed()[key], key
    service_permissions = [p for p in result["permissions"] if p["user"] in ("booking", "notification")]
    assert service_permissions == committed()["permissions"]
    users = users_of(result)
    assert set(users) == USERS
    renderer = compose_env.renderer()
    from notification_service.broker import topology

    for name, user in users.items():
        assert matches(user, env[renderer.PASSWORD_ENV[name]]), name
        assert not matches(user, topology.DEV_PASSWORDS.get(name, name)), name
    assert users["admin"]["tags"] == ["administrator"]
    assert users["monitoring"]["tags"] == ["monitoring"]
    assert users["booking"]["tags"] == users["notification"]["tags"] == []
    # A fresh salt on every render: equal passwords never give equal hashes.
    assert users_of(rendered(env))["booking"]["password_hash"] != users["booking"]["password_hash"]


def test_monitoring_user_is_allowed_no_name_at_all():
    (permission,) = [p for p in rendered()["permissions"] if p["user"] == "monitoring"]
    nothing = {"configure": "^$", "write": "^$", "read": "^$"}
    assert {k: permission[k] for k in ("configure", "write", "read")} == nothing


@pytest.mark.parametrize("case", ["missing", "short", "not-url-safe", "development-password"])
def test_renderer_refuses_an_unfit_password_and_never_prints_it(case, tmp_path):
    source = committed()
    env = {**os.environ, **compose_env.filled()}
    if case == "missing":
        env.pop("NOTIFICATION_AMQP_PASSWORD")
        bad = "NOTIFICATION_AMQP_PASSWORD"
    elif case == "short":
        bad = env["NOTIFICATION_AMQP_PASSWORD"] = "Short-Secret-1"
    elif case == "not-url-safe":
        bad = env["NOTIFICATION_AMQP_PASSWORD"] = "long-enough-but@has:reserved/chars"
    else:  # a committed development hash of a password long enough to pass every other check
        bad = env["NOTIFICATION_AMQP_PASSWORD"] = "notification-development-only"
        (user,) = [u for u in source["users"] if u["name"] == "notification"]
        user["password_hash"] = compose_env.renderer().password_hash(bad)
    (tmp_path / "source.json").write_text(json.dumps(source))
    target = tmp_path / "definitions.json"
    run = subprocess.run([sys.executable, str(compose_env.RENDERER), str(tmp_path / "source.json"), str(target)],
                         env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "NOTIFICATION_AMQP_PASSWORD" in run.stderr
    if case != "missing":
        assert bad not in run.stdout + run.stderr
    assert not target.exists()


def test_renderer_writes_a_file_the_broker_user_can_read(tmp_path):
    target = tmp_path / "definitions.json"
    run = subprocess.run([sys.executable, str(compose_env.RENDERER), str(repo.DEFINITIONS_FILE), str(target)],
                         env={**os.environ, **compose_env.filled()}, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert set(users_of(json.loads(target.read_text()))) == USERS
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == ["definitions.json"], "no temporary file left behind"
    for value in (compose_env.filled()[n] for n in compose_env.renderer().PASSWORD_ENV.values()):
        assert value not in run.stdout + target.read_text()


# ---- compose wiring ---------------------------------------------------------------

def _mounts(service: dict) -> dict[str, str]:
    """Container path -> source of a compose service's volumes."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        found[target] = source
    return found


def test_broker_imports_only_what_the_renderer_wrote_before_it_started():
    compose = compose_env.compose_with(compose_env.filled())
    services = compose["services"]
    renderer, rabbit = services["rabbitmq-definitions"], services["rabbitmq"]
    assert rabbit["depends_on"]["rabbitmq-definitions"]["condition"] == "service_completed_successfully"
    assert renderer.get("restart") == "no" and renderer.get("network_mode") == "none"
    program, script, source, target = renderer["command"]
    sources = _mounts(renderer)
    assert program == "python" and renderer["image"].startswith("python:3.11")
    assert (repo.ROOT / sources[script]).resolve() == compose_env.RENDERER
    assert (repo.ROOT / sources[source]).resolve() == repo.DEFINITIONS_FILE
    folder, name = target.rsplit("/", 1)
    assert name.endswith(".json")
    volume = sources[folder]
    assert volume in compose["volumes"], "the rendered file lives in a named volume"
    # RabbitMQ loads the folder its config names, and that folder is this volume and nothing else.
    broker = _mounts(rabbit)
    conf = (repo.ROOT / broker["/etc/rabbitmq/rabbitmq.conf"]).read_text()
    loaded = conf.split("load_definitions", 1)[1].split("=", 1)[1].split()[0].rstrip("/")
    assert broker[loaded] == volume
    assert [t for t in broker if t.startswith(loaded + "/")] == [], "nothing else may be mounted into that folder"
    # Every password the renderer needs is given to it, from compose.env.
    env = renderer["environment"]
    assert set(env) == set(compose_env.renderer().PASSWORD_ENV.values())
    assert all(env[k] == compose_env.filled()[k] for k in env)


def test_services_log_in_with_passwords_the_rendered_definitions_hold():
    compose = compose_env.compose_with(compose_env.filled())
    users = users_of(rendered(compose["services"]["rabbitmq-definitions"]["environment"]))
    ours = {n: s for n, s in compose["services"].items() if s.get("build")}
    assert ours
    for name, spec in ours.items():
        if spec["build"]["dockerfile"] == "deploy/webhooks/Dockerfile":  # the webhook receiver uses no broker
            assert "AMQP_URL" not in spec["environment"], name
            continue
        url = urllib.parse.urlsplit(spec["environment"]["AMQP_URL"])
        expected = AMQP_USER[spec["build"]["dockerfile"]]
        assert url.username == expected and url.hostname == "rabbitmq", name
        assert matches(users[expected], urllib.parse.unquote(url.password)), name


# ---- on the real broker -------------------------------------------------------------
