"""``booking-service migrate | relay | receipts | serve`` (also ``python -m booking_service``)."""

from __future__ import annotations

import argparse
import os
import sys

from booking_service.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="booking-service", description="The booking service.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply the database migrations (alembic upgrade head)")
    sub.add_parser("relay", help="publish the outbox to RabbitMQ until stopped (SIGTERM/SIGINT)")
    sub.add_parser("receipts", help="store delivery receipts from booking.receipts until stopped (SIGTERM/SIGINT)")
    serve = sub.add_parser("serve", help="run the HTTP API under gunicorn (BOOKING_BIND, default 0.0.0.0:8000)")
    serve.add_argument("gunicorn_args", nargs=argparse.REMAINDER, help="extra gunicorn arguments")
    args = parser.parse_args(argv)
    settings = Settings.from_env()

    from booking_service.runtime import logs

    logs.configure(settings.log_format, settings.log_level)
    if args.command == "migrate":
        from booking_service.storage.migrate import upgrade

        upgrade(settings.database_url)
        print("booking database is at the latest migration")
        return 0
    if args.command == "relay":
        from booking_service.relay.relay import run_forever

        run_forever(settings)
        return 0
    if args.command == "receipts":
        from booking_service.receipts.consumer import run_forever as consume_receipts

        consume_receipts(settings)
        return 0
    gunicorn = [sys.executable, "-m", "gunicorn", "--config", "python:booking_service.runtime.gunicorn_conf"]
    os.execv(sys.executable, gunicorn + list(args.gunicorn_args or []) + ["booking_service.api.app:create_app()"])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
