"""Check that a container's argv runs a real entry point of the package its image ships."""

from __future__ import annotations

import importlib
import warnings

import click

import shared

from . import repo


def problems(argv: list[str], package: str) -> list[str]:
    """Reasons ``argv`` would not start in an image that ships ``package``; empty when it would."""
    if not argv:
        return ["no command"]
    program, *rest = argv
    if program in repo.console_scripts():
        return _console_script(program, rest, package)
    if program == "celery":
        if package != "notification_service":
            return [f"{package} image must not run celery"]
        return _celery(rest)
    return [f"{program!r} is neither a console script of pyproject.toml nor celery"]


def _console_script(script: str, rest: list[str], package: str) -> list[str]:
    target = repo.console_scripts()[script]
    if not target.startswith(package + "."):
        return [f"{script} runs {target}, which the {package} image does not ship"]
    repo.resolve_script(script)  # raises if the function does not exist
    if not rest:
        return [f"{script} needs a subcommand"]
    if rest[0] not in repo.subcommands(script):
        return [f"{script} has no subcommand {rest[0]!r} (has {sorted(repo.subcommands(script))})"]
    return []


def _celery(args: list[str]) -> list[str]:  # noqa: PLR0911 - one early return per reason a command would not start
    """Parse the arguments with Celery's own click commands, against the real app module."""
    from celery import Celery
    from celery.bin.base import CLIContext
    from celery.bin.celery import celery as cli

    try:
        ctx = cli.make_context("celery", list(args))
    except click.ClickException as exc:
        return [f"celery {args}: {exc.format_message()}"]
    module = ctx.params.get("app")
    if not module:
        return ["celery without -A <app module>"]
    try:
        app = getattr(importlib.import_module(module), "app", None)
    except ImportError as exc:
        return [f"-A {module}: {exc}"]
    if not isinstance(app, Celery):
        return [f"{module}.app is not a Celery application"]
    ctx.obj = CLIContext(app=app, no_color=True, workdir=None, quiet=True)
    with warnings.catch_warnings():
        # Click 8.2 keeps the subcommand in protected_args (deprecated, not yet gone).
        warnings.simplefilter("ignore", DeprecationWarning)
        sub, *sub_args = [*ctx.protected_args, *ctx.args]
    if sub == "worker":
        return _worker(cli, ctx, sub_args)
    if sub == "flower":
        return _flower(sub_args)
    return [f"unexpected celery subcommand {sub!r}"]


def _worker(cli, ctx, args: list[str]) -> list[str]:
    with ctx:
        try:
            params = cli.get_command(ctx, "worker").make_context("worker", list(args), parent=ctx).params
        except click.ClickException as exc:
            return [f"celery worker {args}: {exc.format_message()}"]
    queues = params.get("queues") or []
    if not queues:
        return ["a worker must name its queues (-Q): the default queue 'celery' is not in the topology"]
    strange = [q for q in queues if q not in shared.WORK_QUEUES]
    return [f"worker consumes unknown queues {strange}"] if strange else []


def _flower(args: list[str]) -> list[str]:
    from flower.options import options

    for arg in args:
        # tornado keeps option names with dashes (basic_auth -> basic-auth).
        name = arg.lstrip("-").split("=", 1)[0].replace("_", "-")
        if name not in options._options:
            return [f"flower has no option {arg!r}"]
    return []


def option(argv: list[str], *names: str) -> str | None:
    """Value of ``--name value`` / ``--name=value`` in ``argv``."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None
