"""What the deployment files are checked against: the repository's real entry points and settings.

Everything here reads files of the checkout or the installed packages; the
tests decide what must hold.
"""

from __future__ import annotations

import functools
import importlib
import os
import pathlib
import re
import subprocess
import sys
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DEFINITIONS_FILE = DEPLOY / "rabbitmq" / "definitions.json"
#: Console scripts live next to the interpreter running the tests (the venv).
BIN = pathlib.Path(sys.executable).parent

#: Which package each image ships, and so which code its env vars must be read by.
#: Flower's image loads the notification service's Celery app.
IMAGE_PACKAGES = {
    "booking": "booking_service",
    "notification": "notification_service",
    "flower": "notification_service",
    "webhooks": "notification_service",
}
#: The extras of pyproject.toml each image's lock (deploy/<image>/requirements.lock) holds.
IMAGE_EXTRAS = {"booking": ["booking"], "notification": ["notification"], "flower": ["notification", "flower"],
                "webhooks": ["notification", "webhooks"]}

#: Variables read by the interpreter, pip or a library rather than by our code,
#: with the library that reads them (its presence is checked, not assumed).
THIRD_PARTY_ENV = {
    "PROMETHEUS_MULTIPROC_DIR": "prometheus_client",
}
#: Prefixes of interpreter/pip variables every Python image may set.
INTERPRETER_ENV_PREFIXES = ("PYTHON", "PIP_")

_ENV_LINE = re.compile(r"^#?\s*(?:export\s+)?([A-Z][A-Z0-9_]*)=(.*)$")


@functools.cache
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def console_scripts() -> dict[str, str]:
    """``[project.scripts]``: script name -> ``module:function``."""
    return dict(pyproject()["project"]["scripts"])


def extra(name: str) -> list[str]:
    """Requirement names (lower-case, no version) of one optional-dependency extra."""
    reqs = pyproject()["project"]["optional-dependencies"][name]
    return [re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower() for r in reqs]


def resolve_script(script: str):
    """Import the function a console script runs; raises if it does not exist."""
    module_name, _, attr = console_scripts()[script].partition(":")
    return getattr(importlib.import_module(module_name), attr)


@functools.cache
def subcommands(script: str) -> frozenset[str]:
    """Subcommands a console script's ``--help`` lists (argparse ``{a,b,c}``)."""
    exe = BIN / script
    assert exe.exists(), f"console script {script} is not installed at {exe} (pip install -e .)"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, f"{script} --help failed: {out.stderr}"
    choices = re.search(r"\{([a-z0-9_,-]+)\}", out.stdout)
    assert choices, f"{script} --help lists no subcommands:\n{out.stdout}"
    return frozenset(choices.group(1).split(","))


def env_example(package: str) -> dict[str, str]:
    """Variables ``<package>/.env.example`` documents, with their example values."""
    path = ROOT / package / ".env.example"
    assert path.exists(), f"{path.relative_to(ROOT)} is missing: every variable must be documented there"
    found = {}
    for line in path.read_text().splitlines():
        match = _ENV_LINE.match(line.strip())
        if match:
            found[match.group(1)] = match.group(2).strip().strip('"').strip("'")
    return found


@functools.cache
def package_source(package: str) -> str:
    """All Python source of one package, to check a variable name is really read there."""
    return "\n".join(p.read_text() for p in sorted((ROOT / package).rglob("*.py")))


def unknown_env(package: str, names) -> list[str]:
    """Names from ``names`` that ``package`` neither documents nor reads.

    A variable passes when the package's ``.env.example`` documents it AND the
    package's source mentions it, or when a library we ship reads it.
    """
    documented = env_example(package)
    source = package_source(package)
    bad = []
    for name in names:
        if name.startswith(INTERPRETER_ENV_PREFIXES):
            continue
        if name in THIRD_PARTY_ENV:
            importlib.import_module(THIRD_PARTY_ENV[name])
            continue
        if name.startswith("FLOWER_"):
            if not flower_option_exists(name.removeprefix("FLOWER_").lower()):
                bad.append(name)
            continue
        if name not in documented or name not in source:
            bad.append(name)
    return bad


def flower_option_exists(option: str) -> bool:
    """Flower turns every ``FLOWER_<OPTION>`` variable into its ``--<option>``."""
    from flower.options import options

    # tornado keeps option names with dashes (basic_auth -> basic-auth).
    return option.replace("_", "-") in options._options


def load_yaml_documents(path: pathlib.Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@functools.cache
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())
