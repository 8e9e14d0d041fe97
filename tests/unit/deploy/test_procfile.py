"""The Procfile `make run` hands to honcho: every line a real entry point, every worker a metrics port of its own."""

from __future__ import annotations

import re
import shlex

from tests.deploy import commands, repo

#: `${NAME:-default}` as the shell honcho runs each line in expands it when NAME is unset.
_DEFAULTED = re.compile(r"^\$\{(\w+):-([^}]*)\}$")
PACKAGE_OF_PROGRAM = {"booking-service": "booking_service", "celery": "notification_service",
                      "notification-service": "notification_service"}


def processes() -> dict[str, tuple[dict[str, str], list[str]]]:
    """Procfile name -> (variables its `env` prefix sets, argv after `env` and `nice`)."""
    found = {}
    for line in (repo.ROOT / "Procfile").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _, command = line.partition(":")
        words = shlex.split(command)
        env = {}
        if words[0] == "env":
            words = words[1:]
            while "=" in words[0]:
                key, _, value = words.pop(0).partition("=")
                env[key] = value
        if words[:2] == ["nice", "-n"]:
            words = words[3:]
        found[name.strip()] = (env, words)
    return found


def test_every_process_runs_a_real_entry_point():
    for name, (_, argv) in processes().items():
        assert commands.problems(argv, PACKAGE_OF_PROGRAM[argv[0]]) == [], name


def test_each_worker_serves_metrics_on_a_port_of_its_own_that_the_environment_can_move():
    workers = {name: env for name, (env, argv) in processes().items() if "worker" in argv}
    assert set(workers) == {"dispatch", "send"}
    ports = {}
    for name, env in workers.items():
        defaulted = _DEFAULTED.match(env["NOTIFICATION_METRICS_PORT"])
        assert defaulted, f"{name}: the port must come from the environment, with a default"
        variable, default = defaulted.groups()
        assert variable.startswith("NOTIFICATION_") and variable.endswith("_METRICS_PORT"), variable
        assert variable in (repo.ROOT / "README.md").read_text(), f"{variable} is not documented in the README"
        ports[variable] = int(default)
    assert len(ports) == len(set(ports.values())) == len(workers), "two workers would bind one port"
