"""``booking-service migrate | relay | receipts | receipts-dlq | serve``, also ``python -m booking_service``.

Every command reads its settings the same way (``Settings.from_env``: the
environment, then ``./.env``). Whatever stops a command is one line on stderr
and a non-zero exit, because the reader is an operator looking at a crash-looping
container, not a developer: a bad variable exits 2 (like a bad command line),
any other failure exits 1. ``BOOKING_LOG_LEVEL=DEBUG`` adds the traceback.

Over 200 lines on purpose: each subcommand is a few lines, but every option carries its help text
and every failure its one-line message.
"""

from __future__ import annotations

import argparse
import json
import logging
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
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{migrate,relay,receipts,receipts-dlq,serve}",
                                help="the process to run (`booking-service COMMAND --help` for more)")
    _command(sub, "migrate", _migrate, "apply the database migrations (alembic upgrade head) and exit")
    _command(sub, "relay", _relay, "publish the outbox to RabbitMQ until stopped (SIGTERM/SIGINT); "
                                   "a broker that is away is retried, never fatal")
    _command(sub, "receipts", _receipts, "store delivery receipts from booking.receipts until stopped "
                                         "(SIGTERM/SIGINT); a broker or database that is away is retried")
    _receipts_dlq_commands(sub)
    serve = _command(sub, "serve", _serve, "run the HTTP API under gunicorn on BOOKING_BIND (default 0.0.0.0:8000)")
    serve.add_argument("gunicorn_args", nargs=argparse.REMAINDER, metavar="GUNICORN_ARG",
                       help="passed on to gunicorn after the settings of booking_service/runtime/gunicorn_conf.py")
    return parser


def _receipts_dlq_commands(sub) -> None:
    dlq = sub.add_parser("receipts-dlq", help="the receipts the consumer dead-lettered (booking.receipts.dlq)",
                         description="List, replay or purge the receipts the consumer dead-lettered into "
                                     "booking.receipts.dlq, with the reason it stored for each.")
    dsub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="{list,replay,purge}",
                              help="what to do with the dead letters (`booking-service receipts-dlq ACTION --help`)")
    _command(dsub, "list", _dlq_list, "list the dead letters with their reason as JSON (nothing is removed)")
    replay = _command(dsub, "replay", _dlq_replay,
                      "republish dead letters to notifications.receipts with the routing key each first had "
                      "(publisher confirms); each is handled on its own: one the broker refuses stays in the "
                      "queue and is reported on stderr, then 'replayed N, skipped M'; exit 1 when any was skipped")
    replay.add_argument("message_id", nargs="?", help="replay only the dead letters with this message id")
    replay.add_argument("--all", action="store_true", help="replay every dead letter (must be asked for)")
    purge = _command(dsub, "purge", _dlq_purge, "delete every dead letter of booking.receipts.dlq for good")
    purge.add_argument("--yes", action="store_true", help="really delete (without it nothing is purged)")


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
    from booking_service.relay.process import run_forever

    run_forever(settings)
    return 0


def _receipts(settings: Settings, _args: argparse.Namespace) -> int:
    from booking_service.receipts.consumer import run_forever

    run_forever(settings)
    return 0


def _quiet_pika(settings: Settings) -> None:
    """pika logs a returned message with the start of its body (an address, maybe): not on an operator's screen."""
    if settings.log_level != "DEBUG":
        logging.getLogger("pika").setLevel(logging.CRITICAL)


def _stored_reasons(settings: Settings) -> dict[str, str]:
    from booking_service.receipts.dead_letters import reasons
    from booking_service.storage.db import make_engine

    engine = make_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    try:
        return reasons(engine)
    except Exception as exc:  # noqa: BLE001 - the list still works from x-death alone; say why
        _error(f"warning: reasons unavailable from the database: {one_line(exc)}")
        return {}
    finally:
        engine.dispose()


def _dlq_list(settings: Settings, _args: argparse.Namespace) -> int:
    _quiet_pika(settings)
    from booking_service.receipts import dead_letters

    # Messages first, reasons second: the consumer stores a reason before it rejects the receipt.
    messages = dead_letters.list_messages(settings.amqp_url)
    reasons = _stored_reasons(settings)
    print(json.dumps([m.summary(reasons) for m in messages], indent=2, sort_keys=True, default=str))
    return 0


def _dlq_replay(settings: Settings, args: argparse.Namespace) -> int:
    _quiet_pika(settings)
    from booking_service.receipts import dead_letters
    from shared import RECEIPTS_EXCHANGE

    if not (args.message_id or args.all):
        _error("receipts-dlq replay: give a message id or --all")
        return EXIT_BAD_SETTINGS

    def report(outcome: dead_letters.Outcome) -> None:
        if outcome.problem is None:
            line = f"replayed {outcome.message_id} to {RECEIPTS_EXCHANGE} with routing key {outcome.routing_key}"
        else:
            line = f"skipped {outcome.message_id}: {outcome.problem}"
        print(line, file=sys.stderr, flush=True)

    outcomes = dead_letters.replay(settings.amqp_url, message_id=args.message_id, report=report)
    if args.message_id and not outcomes:
        _error(f"no dead letter {args.message_id}")
        return EXIT_FAILURE
    replayed = [o.message_id for o in outcomes if o.problem is None]
    skipped = [{"message_id": o.message_id, "reason": o.problem} for o in outcomes if o.problem is not None]
    print(json.dumps({"replayed": replayed, "skipped": skipped}, indent=2, sort_keys=True))
    print(f"replayed {len(replayed)}, skipped {len(skipped)}", file=sys.stderr)
    return EXIT_FAILURE if skipped else 0


def _dlq_purge(settings: Settings, args: argparse.Namespace) -> int:
    _quiet_pika(settings)
    from booking_service.receipts import dead_letters

    if not args.yes:
        _error("receipts-dlq purge: refusing to purge without --yes")
        return EXIT_BAD_SETTINGS
    print(json.dumps({"purged": {dead_letters.DLQ: dead_letters.purge(settings.amqp_url)}}, sort_keys=True))
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
