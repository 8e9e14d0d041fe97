"""``notification-service``: migrate, delivery status, dead-letter queues, topology."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import pathlib
import socket
import sys
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

from notification_service.settings import EXIT_CONFIG, ConfigError, Settings
from notification_service.suppressions import commands as suppression_commands

DEFINITIONS_PATH = pathlib.Path("deploy/rabbitmq/definitions.json")

#: sysexits.h EX_UNAVAILABLE: a broker or database to wait for, unlike EXIT_CONFIG (a setting to fix).
EXIT_UNAVAILABLE = 69

#: `topology declare` gives up after this many connection retries per broker node, this many
#: seconds in all: kombu retries without end unless told, which would hang a deploy step.
CONNECT_RETRIES_PER_NODE = 2
CONNECT_TIMEOUT_SECONDS = 10.0

#: Library loggers the CLI turns down unless NOTIFICATION_LOG_LEVEL=DEBUG: pika logs a failed
#: connection at ERROR with a traceback (the CLI's own line says it); alembic announces each of
#: its plugins at INFO before every migration.
QUIET_LOGGERS = {"pika": logging.CRITICAL, "alembic.runtime.plugins": logging.WARNING}

#: ``dlq replay`` skipped at least one dead letter (it stays in its queue; each is reported).
EXIT_SKIPPED = 1

EPILOG = """\
settings: environment variables, then ./.env for those the environment does not set
(notification_service/.env.example lists them all).
exit status: 0 done, 1 not found or refused (dlq replay: at least one dead letter skipped),
2 usage, 69 broker or database failed, 78 a setting is invalid."""


def _version() -> str:
    try:
        return importlib.metadata.version("booking-notifications")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _where(amqp_url: str) -> str:
    """The broker nodes of ``amqp_url`` as host:port, without credentials."""
    nodes = []
    for url in amqp_url.split(";"):
        parts = urllib.parse.urlsplit(url.strip())
        try:
            port = str(parts.port or (5671 if parts.scheme == "amqps" else 5672))
        except ValueError:  # a port that is not a number: show what was written
            port = parts.netloc.rpartition(":")[2]
        nodes.append(f"{parts.hostname}:{port}")
    return ", ".join(nodes)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _strings(params: object) -> Iterator[str]:
    """Every string among statement parameters (a tuple, a dict, or a list of them for executemany)."""
    if isinstance(params, str):
        if params:
            yield params
    elif isinstance(params, Mapping):
        for value in params.values():
            yield from _strings(value)
    elif isinstance(params, list | tuple):
        for value in params:
            yield from _strings(value)


def _database_failure(exc: Exception) -> str:
    """One line about a SQLAlchemy/driver error: the driver's first line, never the statement or parameters."""
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, DBAPIError):
        # str(exc) would append "[SQL: ...]" and "[parameters: ...]"; the driver's own first line
        # is what an operator acts on (refused, no such table, authentication failed). A driver
        # may quote a value it could not use: that value is masked too.
        line = _first_line(str(exc.orig))
        for value in _strings(exc.params):
            line = line.replace(value, "?")
        return f"{type(exc.orig).__name__}: {line}"
    return f"{type(exc).__name__}: {_first_line(str(exc))}"


def _failure(exc: Exception, settings: Settings) -> str | None:
    """One line for a broker or database failure, or None for anything else (a bug: let it raise)."""
    import amqp.exceptions
    import kombu.exceptions
    import pika.exceptions
    from pika.adapters.utils.connection_workflow import AMQPConnectorException
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(exc, SQLAlchemyError):
        return f"database (NOTIFICATION_DATABASE_URL): {_database_failure(exc)}"
    where = f"broker {_where(settings.amqp_url)} (AMQP_URL)"
    # pika raises a handshake timeout as an AMQPConnectorException, outside its AMQPError tree.
    if isinstance(exc, pika.exceptions.AMQPConnectionError | AMQPConnectorException
                  | kombu.exceptions.OperationalError | ConnectionError | TimeoutError | socket.gaierror):
        pika_error = isinstance(exc, pika.exceptions.AMQPError | AMQPConnectorException)
        reason = repr(exc) if pika_error else f"{type(exc).__name__}: {exc}"
        return f"{where} unavailable: {_first_line(reason)}"
    if isinstance(exc, pika.exceptions.AMQPError | amqp.exceptions.AMQPError):
        return f"{where} refused: {_first_line(repr(exc))}"
    return None


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def render_definitions() -> str:
    from notification_service.broker.topology import definitions

    return json.dumps(definitions(), indent=2, sort_keys=True) + "\n"


def _reasons(settings: Settings) -> dict[str, str]:
    from notification_service.delivery.log import delivery_log

    try:
        return delivery_log(settings.database_url).dead_letter_reasons()
    except Exception as exc:  # noqa: BLE001 - list still works from x-death alone; say why
        from sqlalchemy.exc import SQLAlchemyError

        reason = _database_failure(exc) if isinstance(exc, SQLAlchemyError) else f"{type(exc).__name__}: {exc}"
        print(f"warning: reasons unavailable from the delivery log: {_first_line(reason)}", file=sys.stderr)
        return {}


def cmd_migrate(args, settings: Settings) -> int:
    from notification_service.delivery.migrate import upgrade

    upgrade(settings.database_url)
    print("migrated")
    return 0


def cmd_status(args, settings: Settings) -> int:
    from notification_service.delivery.log import delivery_log

    rows = delivery_log(settings.database_url).for_notification(args.notification_id)
    if not rows:
        print(f"no deliveries for {args.notification_id}", file=sys.stderr)
        return 1
    _print_json([
        {"delivery_id": r.delivery_id, "channel": r.channel, "status": r.status, "attempts": r.attempts,
         "provider_message_id": r.provider_message_id, "last_error": r.last_error, "event": r.event,
         "booking_id": r.booking_id, "booking_version": r.booking_version,
         "created_at": r.created_at, "updated_at": r.updated_at, "sent_at": r.sent_at}
        for r in rows
    ])
    return 0


def _dlq_list(args, settings: Settings, dlq) -> int:
    # Messages first, reasons second: a worker stores the reason before it rejects the
    # message, so every message listed has its reason in what is read after it.
    messages = dlq.list_messages(settings.amqp_url, args.queue)
    reasons = _reasons(settings)
    _print_json([m.summary(reasons) for m in messages])
    return 0


def _dlq_show(args, settings: Settings, dlq) -> int:
    matches = [m for m in dlq.list_messages(settings.amqp_url, args.queue) if m.message_id == args.message_id]
    if not matches:
        print(f"no dead letter {args.message_id}", file=sys.stderr)
        return 1
    reasons = _reasons(settings)
    _print_json([dlq.show(m, reasons) for m in matches])
    return 0


def _report_replay(outcome) -> None:
    """One line per dead letter as it is handled, so an interrupted replay has said what it did."""
    if outcome.problem is None:
        line = f"replayed {outcome.message_id} from {outcome.dlq} to {outcome.queue}"
    else:
        kind = "poison" if outcome.poison else "refused"
        line = f"skipped {outcome.message_id} in {outcome.dlq} ({kind}): {outcome.problem}"
    print(line, file=sys.stderr, flush=True)


def _dlq_replay(args, settings: Settings, dlq) -> int:
    if not (args.message_id or args.all or args.task or args.queue):
        # Replaying everything must be asked for explicitly.
        print("give a message id, --task T, --queue Q or --all", file=sys.stderr)
        return 2
    outcomes = dlq.replay(settings.amqp_url, message_id=args.message_id, queue=args.queue, task=args.task,
                          report=_report_replay)
    if args.message_id and not outcomes:
        print(f"no dead letter {args.message_id}", file=sys.stderr)
        return 1
    replayed = [o.message_id for o in outcomes if o.problem is None]
    skipped = [o for o in outcomes if o.problem is not None]
    _print_json({"replayed": replayed,
                 "skipped_poison": _by_id(o for o in skipped if o.poison),
                 "skipped_refused": _by_id(o for o in skipped if not o.poison)})
    print(f"replayed {len(replayed)}, skipped {len(skipped)}", file=sys.stderr)
    if args.message_id and skipped and skipped[0].poison:
        print(f"not replayed: {skipped[0].message_id} is poison ({skipped[0].problem})", file=sys.stderr)
    return EXIT_SKIPPED if skipped else 0


def _by_id(outcomes) -> dict[str, str]:
    """Message id → reason; a second dead letter with the same id gets its place in the list appended."""
    found: dict[str, str] = {}
    for number, outcome in enumerate(outcomes):
        key = outcome.message_id if outcome.message_id not in found else f"{outcome.message_id} ({number})"
        found[key] = outcome.problem
    return found


def _dlq_purge(args, settings: Settings, dlq) -> int:
    if not args.yes:
        print("refusing to purge without --yes", file=sys.stderr)
        return 2
    _print_json({"purged": dlq.purge(settings.amqp_url, args.queue)})
    return 0


DLQ_COMMANDS = {"list": _dlq_list, "show": _dlq_show, "replay": _dlq_replay, "purge": _dlq_purge}


def cmd_dlq(args, settings: Settings) -> int:
    from notification_service.broker import dlq

    try:
        return DLQ_COMMANDS[args.dlq_command](args, settings, dlq)
    except dlq.DlqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def cmd_topology(args, settings: Settings) -> int:
    if args.topology_command == "export":
        text = render_definitions()
        if args.path == "-":
            sys.stdout.write(text)
        else:
            path = pathlib.Path(args.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(path)
        return 0
    _declare(settings)
    if args.topology_command == "migrate":
        return _migrate(settings)
    print("declared")
    return 0


def _declare(settings: Settings) -> None:
    from kombu import Connection

    from notification_service.broker.topology import declare

    nodes = settings.amqp_url.count(";") + 1
    # Failover opts in transport_options bound every reconnect kombu makes, including the one
    # behind default_channel; each retry moves to the next node of a ';'-separated AMQP_URL.
    bounded = {"max_retries": CONNECT_RETRIES_PER_NODE * nodes, "interval_start": 0, "interval_step": 1,
               "interval_max": 2, "connect_retries_timeout": CONNECT_TIMEOUT_SECONDS}
    with Connection(settings.amqp_url, connect_timeout=5, transport_options=bounded) as connection:
        declare(connection)


def _migrate(settings: Settings) -> int:
    from notification_service.broker import migration

    try:
        report = migration.migrate(settings.amqp_url)
    except migration.MigrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _print_json({"moved": report.moved, "deleted": report.deleted})
    print(f"migrated: {sum(report.moved.values())} message(s) moved, {len(report.deleted)} queue(s) deleted",
          file=sys.stderr)
    return 0


def cmd_webhooks(args, settings: Settings) -> int:
    # exec: gunicorn's arbiter owns the process (signals, workers); it reads the same settings.
    import os

    gunicorn = [sys.executable, "-m", "gunicorn", "--config", "python:notification_service.webhooks.gunicorn_conf"]
    os.execv(sys.executable, [*gunicorn, *args.gunicorn_args, "notification_service.webhooks.gunicorn_conf:app()"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="notification-service", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{migrate,status,dlq,topology,suppressions,webhooks}")
    sub.add_parser("migrate", help="alembic upgrade head on NOTIFICATION_DATABASE_URL",
                   description="Create or upgrade the delivery log tables (alembic upgrade head).")
    status = sub.add_parser("status", help="print the delivery log rows of one notification",
                            description="Print every delivery (channel, address) of one notification as JSON.")
    status.add_argument("notification_id", help="the notification id (the task id of its messages)")

    dlq = sub.add_parser("dlq", help="dead-letter queues",
                         description="Inspect, replay or purge the dead-letter queues (*.dlq) on AMQP_URL.")
    dsub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="{list,show,replay,purge}")
    queue_help = "only the dead-letter queue of this work queue (default: every one)"
    lst = dsub.add_parser("list", help="list dead letters with reason (nothing is removed)",
                          description="List dead letters with their reason; every message stays in its queue.")
    lst.add_argument("--queue", help=queue_help)
    shw = dsub.add_parser("show", help="show one dead letter with headers and body",
                          description="Show one dead letter with its headers and decoded body.")
    shw.add_argument("message_id", help="the message (task) id of the dead letter")
    shw.add_argument("--queue", help=queue_help)
    rep = dsub.add_parser("replay", help="republish dead letters to their origin queue",
                          description="Republish dead letters to their origin queue with a fresh retry budget. "
                                      "Each is handled on its own: one that is poison, or that the broker returns "
                                      "or nacks, is skipped, stays in its queue and is reported on stderr, and the "
                                      "replay goes on. stdout: JSON of what was replayed and skipped; stderr: one "
                                      "line per dead letter, then 'replayed N, skipped M'. Exit 1 when anything "
                                      "was skipped.")
    rep.add_argument("message_id", nargs="?", help="replay only this message id")
    rep.add_argument("--all", action="store_true", help="replay every dead letter (must be asked for explicitly)")
    rep.add_argument("--queue", help=queue_help)
    rep.add_argument("--task", help="only dead letters of this task name, e.g. notifications.email.send")
    pur = dsub.add_parser("purge", help="delete dead letters", description="Delete dead letters for good.")
    pur.add_argument("--queue", help=queue_help)
    pur.add_argument("--yes", action="store_true", help="really delete (without it nothing is purged)")

    topo = sub.add_parser("topology", help="broker topology",
                          description="The exchanges and queues of the notification service.")
    tsub = topo.add_subparsers(dest="topology_command", required=True, metavar="{export,declare,migrate}")
    exp = tsub.add_parser("export", help="write RabbitMQ definitions.json ('-' for stdout)",
                          description="Write the topology as RabbitMQ definitions (what the broker imports).")
    exp.add_argument("path", nargs="?", default=str(DEFINITIONS_PATH),
                     help=f"file to write, '-' for stdout (default: {DEFINITIONS_PATH})")
    tsub.add_parser("declare", help="declare exchanges and queues on AMQP_URL",
                    description="Declare every exchange and queue on AMQP_URL (idempotent; the workers do it "
                                "at start too).")
    tsub.add_parser("migrate", help="move a classic priority-queue installation to the quorum lanes",
                    description="Declare the topology, then move every message of the classic queues of the "
                                "previous version (notifications.dispatch|email|push and their .dlq) to the "
                                "lane of its priority, with publisher confirms, and delete each old queue once "
                                "empty; classic booking.receipts queues are replaced by quorum ones through a "
                                "holding queue. Stop the previous version's workers first (a queue with "
                                "consumers is refused). Idempotent: run it again after an interruption. Needs a "
                                "user that may configure every queue (the broker's administrator). stdout: "
                                "JSON of what was moved and deleted.")
    suppression_commands.add_parser(sub)
    hooks = sub.add_parser("webhooks", help="run the providers' webhook receiver under gunicorn",
                           description="Serve POST /webhooks/email/http and /webhooks/email/mailgun on "
                                       "NOTIFICATION_WEBHOOK_BIND under gunicorn "
                                       "(notification_service/webhooks/gunicorn_conf.py).")
    hooks.add_argument("gunicorn_args", nargs=argparse.REMAINDER, metavar="GUNICORN_ARG",
                       help="passed on to gunicorn after the settings of its config")
    return parser


COMMANDS = {"migrate": cmd_migrate, "status": cmd_status, "dlq": cmd_dlq, "topology": cmd_topology,
            "suppressions": suppression_commands.cmd_suppressions, "webhooks": cmd_webhooks}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from notification_service.runtime.logs import configure

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"{parser.prog}: invalid setting: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure(settings.log_format, settings.log_level)
    if settings.log_level != "DEBUG":
        for name, level in QUIET_LOGGERS.items():
            logging.getLogger(name).setLevel(level)
    try:
        return COMMANDS[args.command](args, settings)
    except Exception as exc:
        message = _failure(exc, settings)
        if message is None:
            raise
        print(f"{parser.prog}: {message}", file=sys.stderr)
        return EXIT_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
