#!/usr/bin/env bash
# `make run`: migrate both databases, declare the topology, then run every
# process of the mesh in the foreground under honcho (Ctrl-C stops them all).
#
# Precedence of settings: the environment, then an optional .env file, then
# the development defaults below. honcho itself would let .env override the
# environment, so it is handed /dev/null and this script does the merging.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${VENV:-.venv}"
export PATH="$PWD/$VENV/bin:$PATH"

set_default() {  # set_default NAME VALUE: only when NAME is not already set
  if [ -z "${!1+x}" ]; then export "$1=$2"; fi
}

# .env is parsed by python-dotenv, the parser every entry point reads it with
# (pydantic-settings), so quotes, comments, `export` and ${VAR} mean the same here
# as there. Names and values cross as NUL-terminated pairs: a value may hold any
# character, newlines included, and nothing of it is evaluated by the shell.
if [ -f .env ]; then
  while IFS= read -r -d '' name && IFS= read -r -d '' value; do
    set_default "$name" "$value"
  done < <("$VENV/bin/python" - <<'PY'
import re
import sys

from dotenv import dotenv_values

for name, value in dotenv_values(".env").items():
    if value is None:  # a bare NAME line sets nothing
        continue
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        print(f".env: {name!r} is not a variable name; ignored", file=sys.stderr)
        continue
    sys.stdout.write(f"{name}\0{value}\0")
PY
  )
fi

set_default AMQP_URL "amqp://guest:guest@localhost:5672//"
set_default BOOKING_API_KEYS "dev-key"
set_default BOOKING_DATABASE_URL "sqlite:///$PWD/var/booking.db"
set_default NOTIFICATION_DATABASE_URL "sqlite:///$PWD/var/notification.db"
set_default EMAIL_FILE_DIR "$PWD/var/outbox/email"
set_default PUSH_FILE_DIR "$PWD/var/outbox/push"
set_default BOOKING_LOG_FORMAT console
set_default NOTIFICATION_LOG_FORMAT console
# The API's gunicorn workers and the relay share one prometheus multiprocess
# directory (the Procfile hands it to those two only; the worker runs its own
# single-process registry). It must start empty.
set_default BOOKING_PROMETHEUS_MULTIPROC_DIR "$PWD/var/prometheus-booking"
mkdir -p var "$EMAIL_FILE_DIR" "$PUSH_FILE_DIR"
rm -rf "$BOOKING_PROMETHEUS_MULTIPROC_DIR" && mkdir -p "$BOOKING_PROMETHEUS_MULTIPROC_DIR"

booking-service migrate
notification-service migrate
# migrate = declare, plus moving what a previous version left in classic queues (a no-op on a new broker)
notification-service topology migrate >/dev/null

echo "booking API on http://localhost:8000 (API key: see BOOKING_API_KEYS), docs at /docs"
echo "e-mails appear in $EMAIL_FILE_DIR, push messages in $PUSH_FILE_DIR"
exec honcho --env /dev/null start --procfile Procfile
