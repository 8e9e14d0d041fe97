"""docker-compose.yml's defaults are safe: ports on loopback, no secret with a default, secrets from the env file.

Compose itself cannot run here; ``compose_env.interpolate`` applies the
compose specification's interpolation, which is where compose substitutes
the env file and where it refuses to start.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import urllib.parse

import pytest

from tests.deploy import compose_env, repo

#: A setting whose name says it is a credential.
CREDENTIAL_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEYS$|BASIC_AUTH")
LOOPBACK = "127.0.0.1"


def _references(text: str) -> list[tuple[str, str | None]]:
    """Every ``${NAME<op>...}`` in ``text`` as (NAME, operator)."""
    return re.findall(r"\$\{(\w+)(:?[-?+])?", text)


def published_ports(compose: dict) -> dict[str, list[str]]:
    return {name: spec["ports"] for name, spec in compose["services"].items() if spec.get("ports")}


def test_every_credential_setting_is_a_secret_the_example_leaves_empty():
    text = repo.COMPOSE_FILE.read_text()
    credentials = {name for name, _ in _references(text) if CREDENTIAL_NAME.search(name)}
    assert credentials, "the compose file reads no credential at all?"
    assert credentials <= set(compose_env.secret_names())
    # The AMQP passwords have no credential-looking name of their own in an URL: they are secrets too.
    assert {"BOOKING_AMQP_PASSWORD", "NOTIFICATION_AMQP_PASSWORD", "RABBITMQ_ADMIN_PASSWORD",
            "RABBITMQ_MONITORING_PASSWORD", "POSTGRES_PASSWORD", "BOOKING_API_KEYS",
            "FLOWER_BASIC_AUTH"} <= set(compose_env.secret_names())


def test_no_secret_has_a_default_anywhere_in_the_compose_file():
    """Each use of a secret is ``${NAME:?...}``: a ``:-default`` or a bare ``${NAME}`` would start without it."""
    secrets = set(compose_env.secret_names())
    for name, operator in _references(repo.COMPOSE_FILE.read_text()):
        if name in secrets:
            assert operator == ":?", f"${{{name}}} must be written ${{{name}:?...}} (found operator {operator!r})"


@pytest.mark.parametrize("secret", compose_env.secret_names())
def test_compose_refuses_to_start_without_each_secret(secret):
    for missing in ({k: v for k, v in compose_env.filled().items() if k != secret},
                    {**compose_env.filled(), secret: ""}):
        with pytest.raises(compose_env.MissingVariable) as refused:
            compose_env.compose_with(missing)
        assert refused.value.name == secret


def test_compose_refuses_to_start_with_the_example_copied_unedited():
    with pytest.raises(compose_env.MissingVariable):
        compose_env.compose_with(compose_env.example())
    compose_env.compose_with(compose_env.filled())  # and starts once every secret is set


def test_interpolation_follows_the_compose_rules():
    """The helper the tests above rely on, checked against the specification's cases."""
    env = {"SET": "v", "EMPTY": ""}
    cases = {"${SET}": "v", "${UNSET}": "", "$SET": "v", "$$SET": "$SET", "${UNSET:-d}": "d", "${EMPTY:-d}": "d",
             "${EMPTY-d}": "", "${SET:-d}": "v", "${SET:+r}": "r", "${EMPTY+r}": "r", "${EMPTY:+r}": "",
             "${EMPTY?e}": "", "a${SET:?e}b": "avb"}
    assert {text: compose_env.interpolate(text, env) for text in cases} == cases
    for text in ("${UNSET:?e}", "${EMPTY:?e}", "${UNSET?e}"):
        with pytest.raises(compose_env.MissingVariable):
            compose_env.interpolate(text, env)


def test_every_credential_in_a_service_comes_from_the_env_file():
    """With the operator's values in, every password a service gets is one of them: none is written in the file."""
    env = compose_env.filled()
    values = {env[name] for name in compose_env.secret_names()}
    for name, spec in compose_env.compose_with(env)["services"].items():
        environment = spec.get("environment") or {}
        for key, raw in environment.items():
            value = str(raw)
            password = urllib.parse.urlsplit(value).password if "://" in value else None
            if password is not None:
                assert password in values, f"{name}: {key} carries a password that is not from compose.env"
            if CREDENTIAL_NAME.search(key):
                assert value in values, f"{name}: {key} is not from compose.env"


@pytest.mark.parametrize("service", sorted(published_ports(compose_env.compose_with(compose_env.filled()))))
def test_published_ports_are_on_loopback_unless_the_operator_opts_in(service):
    env = {k: v for k, v in compose_env.filled().items() if not k.endswith("_HOST_ADDRESS")}
    default = published_ports(compose_env.compose_with(env))[service]
    for port in default:
        address, host_port, container_port = port.split(":")
        assert address == LOOPBACK, f"{service} publishes {port} beyond this machine by default"
        assert host_port.isdigit() and container_port.isdigit(), port
    # The opt-in: one variable per service, named in the example, moves only that service's ports.
    raw = repo.compose()["services"][service]["ports"]
    (variable,) = {name for port in raw for name, _ in _references(port) if name.endswith("_HOST_ADDRESS")}
    assert compose_env.example()[variable] == LOOPBACK
    opened = compose_env.compose_with({**env, variable: "0.0.0.0"})
    assert [p.split(":")[0] for p in published_ports(opened)[service]] == ["0.0.0.0"] * len(default)
    others = {s: p for s, p in published_ports(opened).items() if s != service}
    assert all(p.startswith(LOOPBACK + ":") for ports in others.values() for p in ports)


def test_new_compose_env_script_writes_a_private_file_compose_starts_with(tmp_path):
    target = tmp_path / "compose.env"
    script = repo.DEPLOY / "scripts" / "new-compose-env.sh"
    run = subprocess.run([str(script), str(target)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    env = compose_env.read_env_file(target)
    assert set(env) == set(compose_env.example())
    secrets = [env[name] for name in compose_env.secret_names()]
    assert len(set(secrets)) == len(secrets), "every secret must be different"
    compose_env.compose_with(env)  # starts: nothing missing
    # The broker passwords pass the renderer's checks (length, URL-safe, not a development one).
    compose_env.renderer().render(repo_definitions(), env)
    again = subprocess.run([str(script), str(target)], capture_output=True, text=True, timeout=30)
    assert again.returncode != 0 and compose_env.read_env_file(target) == env, "must never overwrite"


def test_operator_env_file_is_kept_out_of_git_and_out_of_the_build_context():
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/compose.env"], cwd=repo.ROOT)
    assert ignored.returncode == 0, "deploy/compose.env must be git-ignored"
    patterns = (repo.ROOT / ".dockerignore").read_text().split()
    assert "deploy/compose.env" in patterns


def repo_definitions() -> dict:
    import json

    return json.loads(repo.DEFINITIONS_FILE.read_text())
