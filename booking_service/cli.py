"""``booking-service migrate | relay | receipts | serve``, also ``python -m booking_service``.

Every command reads its settings the same way (``Settings.from_env``: the
environment, then ``./.env``). Whatever stops a command is one line on stderr
and a non-zero exit, because the reader is an operator looking at a crash-looping
container, not a developer: a bad variable exits 2 (like a bad command line),
any other failure exits 1. ``BOOKING_LOG_LEVEL=DEBUG`` adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from importlib.metadata import PackageNotFoundError, version

from booking_service.settings import Settings, SettingsError

PROG = "booking-service"
#: A bad variable is a usage error, like a bad option (argparse exits 2 for those).
EXIT_BAD_SETTINGS = 2
EXIT_FAILURE = 1
#: What a shell reports for a process ended by Ctrl-C.
EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        for problem in exc.problems:
            _error(problem)
        return EXIT_BAD_SETTINGS

    from booking_service.runtime import logs

    logs.configure(settings.log_format, settings.log_level)
    try:
        return int(args.run(settings, args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # the last stop before the shell: one line instead of a traceback
        _error(f"{args.command}: {one_line(exc)}")
        if settings.log_level == "DEBUG":
            traceback.print_exc()
        return EXIT_FAILURE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The booking service: its HTTP API, the outbox relay, the receipts consumer and its migrations.",
        epilog="Settings come from environment variables, then from ./.env (the environment wins); "
               "booking_service/.env.example and the README list them.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{migrate,relay,receipts,serve}",
                                help="the process to run (`booking-service COMMAND --help` for more)")
    _command(sub, "migrate", _migrate, "apply the database migrations (alembic upgrade head) and exit")
    _command(sub, "relay", _relay, "publish the outbox to RabbitMQ until stopped (SIGTERM/SIGINT); "
                                   "a broker that is away is retried, never fatal")
    _command(sub, "receipts", _receipts, "store delivery receipts from booking.receipts until stopped "
                                         "(SIGTERM/SIGINT); a broker or database that is away is retried")
    serve = _command(sub, "serve", _serve, "run the HTTP API under gunicorn on BOOKING_BIND (default 0.0.0.0:8000)")
    serve.add_argument("gunicorn_args", nargs=argparse.REMAINDER, metavar="GUNICORN_ARG",
                       help="passed on to gunicorn after the settings of booking_service/runtime/gunicorn_conf.py")
    return parser


def one_line(exc: BaseException) -> str:
    """The first line of what went wrong; for a database error the driver's own message, not SQLAlchemy's SQL."""
    # SQLAlchemy wraps the driver's exception as ``orig`` and appends the statement and a link to its message.
    cause = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__


def _command(sub, name: str, run, text: str) -> argparse.ArgumentParser:
    command = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
    command.set_defaults(run=run)
    return command


def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from booking_service.storage.migrate import upgrade

    upgrade(settings.database_url)
    print("booking database is at the latest migration")
    return 0


def _relay(settings: Settings, _args: argparse.Namespace) -> int:
    from booking_service.relay.relay import run_forever

    run_forever(settings)
    return 0


def _receipts(settings: Settings, _args: argparse.Namespace) -> int:
    from booking_service.receipts.consumer import run_forever

    run_forever(settings)
    return 0


def _serve(_settings: Settings, args: argparse.Namespace) -> int:
    # The settings were checked above, so a bad variable stops here with one line rather than
    # in every gunicorn worker; gunicorn_conf and create_app() read the same environment and .env.
    gunicorn = [sys.executable, "-m", "gunicorn", "--config", "python:booking_service.runtime.gunicorn_conf"]
    os.execv(sys.executable, [*gunicorn, *args.gunicorn_args, "booking_service.api.app:create_app()"])
    return 0  # not reached: execv replaces this process


def _version() -> str:
    try:
        return version("booking-notifications")
    except PackageNotFoundError:  # run from a checkout that was never pip-installed
        return "(not installed)"


def _error(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)
