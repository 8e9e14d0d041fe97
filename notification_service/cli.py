"""``notification-service``: migrate, delivery status, dead-letter queues, topology."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

from notification_service.settings import Settings

DEFINITIONS_PATH = pathlib.Path("deploy/rabbitmq/definitions.json")


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
        print(f"warning: reasons unavailable from the delivery log: {exc}", file=sys.stderr)
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


def cmd_dlq(args, settings: Settings) -> int:
    from notification_service.broker import dlq

    try:
        if args.dlq_command == "list":
            # Messages first, reasons second: a worker stores the reason before it rejects the
            # message, so every message listed has its reason in what is read after it.
            messages = dlq.list_messages(settings.amqp_url, args.queue)
            reasons = _reasons(settings)
            _print_json([m.summary(reasons) for m in messages])
        elif args.dlq_command == "show":
            matches = [m for m in dlq.list_messages(settings.amqp_url, args.queue) if m.message_id == args.message_id]
            if not matches:
                print(f"no dead letter {args.message_id}", file=sys.stderr)
                return 1
            reasons = _reasons(settings)
            _print_json([dlq.show(m, reasons) for m in matches])
        elif args.dlq_command == "replay":
            if not (args.message_id or args.all or args.task or args.queue):
                # Replaying everything must be asked for explicitly.
                print("give a message id, --task T, --queue Q or --all", file=sys.stderr)
                return 2
            skipped: dict[str, str] = {}
            replayed = dlq.replay(settings.amqp_url, message_id=args.message_id, queue=args.queue, task=args.task,
                                  skipped=skipped)
            if args.message_id and not replayed and not skipped:
                print(f"no dead letter {args.message_id}", file=sys.stderr)
                return 1
            _print_json({"replayed": replayed, "skipped_poison": skipped})
            if args.message_id and skipped:
                print(f"not replayed: {args.message_id} is poison ({next(iter(skipped.values()))})", file=sys.stderr)
                return 1
        elif args.dlq_command == "purge":
            if not args.yes:
                print("refusing to purge without --yes", file=sys.stderr)
                return 2
            _print_json({"purged": dlq.purge(settings.amqp_url, args.queue)})
    except dlq.DlqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


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
    from kombu import Connection

    from notification_service.broker.topology import declare

    with Connection(settings.amqp_url) as connection:
        declare(connection)
    print("declared")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="notification-service", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="alembic upgrade head on NOTIFICATION_DATABASE_URL")
    status = sub.add_parser("status", help="print the delivery log rows of one notification")
    status.add_argument("notification_id")

    dlq = sub.add_parser("dlq", help="dead-letter queues")
    dsub = dlq.add_subparsers(dest="dlq_command", required=True)
    lst = dsub.add_parser("list", help="list dead letters with reason (nothing is removed)")
    lst.add_argument("--queue")
    shw = dsub.add_parser("show", help="show one dead letter with headers and body")
    shw.add_argument("message_id")
    shw.add_argument("--queue")
    rep = dsub.add_parser("replay", help="republish dead letters to their origin queue")
    rep.add_argument("message_id", nargs="?")
    rep.add_argument("--all", action="store_true")
    rep.add_argument("--queue")
    rep.add_argument("--task")
    pur = dsub.add_parser("purge", help="delete dead letters")
    pur.add_argument("--queue")
    pur.add_argument("--yes", action="store_true")

    topo = sub.add_parser("topology", help="broker topology")
    tsub = topo.add_subparsers(dest="topology_command", required=True)
    exp = tsub.add_parser("export", help="write RabbitMQ definitions.json ('-' for stdout)")
    exp.add_argument("path", nargs="?", default=str(DEFINITIONS_PATH))
    tsub.add_parser("declare", help="declare exchanges and queues on AMQP_URL")
    return parser


COMMANDS = {"migrate": cmd_migrate, "status": cmd_status, "dlq": cmd_dlq, "topology": cmd_topology}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from notification_service.runtime.logs import configure

    settings = Settings.from_env()
    configure(settings.log_format)
    return COMMANDS[args.command](args, settings)


if __name__ == "__main__":
    sys.exit(main())
