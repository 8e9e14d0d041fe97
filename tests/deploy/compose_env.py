"""docker-compose.yml's variables: compose's interpolation rules, the operator's env file, the definitions renderer.

Docker does not run on the test machines, so ``interpolate`` follows the
compose specification's interpolation (``$$``, ``$VAR``, ``${VAR}``,
``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``,
``${VAR:+replacement}``, ``${VAR+replacement}``): what compose substitutes
before it starts anything, and where it refuses to start.
"""

from __future__ import annotations

import functools
import importlib.util
import re

from . import repo

EXAMPLE = repo.DEPLOY / "compose.env.example"
RENDERER = repo.DEPLOY / "rabbitmq" / "render_definitions.py"

_VARIABLE = re.compile(r"\$(?:(\$)|(\w+)|\{(\w+)(?:(:?[-?+])([^}]*))?\})")


class MissingVariable(Exception):
    """Raised where compose refuses to start: a ``${VAR:?error}`` whose variable is unset or empty."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.name = name


def interpolate(text: str, env: dict[str, str]) -> str:
    def substitute(match: re.Match) -> str:
        escaped, bare, name, operator, argument = match.groups()
        if escaped:
            return "$"
        if bare:
            return env.get(bare, "")
        value = env.get(name)
        empty_counts = operator is not None and operator.startswith(":")
        unset = value is None or (empty_counts and value == "")
        kind = (operator or "").lstrip(":")
        if kind == "?" and unset:
            raise MissingVariable(name, argument)
        if kind == "-":
            return argument if unset else value
        if kind == "+":
            return "" if unset else argument
        return value or ""

    return _VARIABLE.sub(substitute, text)


def read_env_file(path) -> dict[str, str]:
    """``NAME=value`` lines of a compose env file (comments and blank lines skipped)."""
    found = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            found[name.strip()] = value.strip()
    return found


def example() -> dict[str, str]:
    return read_env_file(EXAMPLE)


def secret_names() -> list[str]:
    """The settings the example leaves empty: the ones the operator must fill in."""
    return sorted(name for name, value in example().items() if value == "")


def filled() -> dict[str, str]:
    """The example with a distinct test value in every secret (what an operator's compose.env holds)."""
    env = dict(example())
    for name in secret_names():
        value = f"test-{name.lower().replace('_', '-')}-0123456789"
        env[name] = f"admin:{value}" if name == "FLOWER_BASIC_AUTH" else value
    return env


def compose_with(env: dict[str, str]) -> dict:
    """docker-compose.yml as compose sees it with ``env`` as its environment (values interpolated, not comments)."""

    def walk(node):
        if isinstance(node, dict):
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return interpolate(node, env) if isinstance(node, str) else node

    return walk(repo.compose())


@functools.cache
def renderer():
    """deploy/rabbitmq/render_definitions.py as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("render_definitions", RENDERER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
