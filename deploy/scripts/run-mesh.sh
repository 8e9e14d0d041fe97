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

if [ -f .env ]; then
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in ''|'#'*) continue ;; esac
    name="${line%%=*}"; value="${line#*=}"
    value="${value%\"}"; value="${value#\"}"
    set_default "$name" "$value"
  done < .env
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
notification-service topology declare

echo "booking API on http://localhost:8000 (API key: see BOOKING_API_KEYS), docs at /docs"
echo "e-mails appear in $EMAIL_FILE_DIR, push messages in $PUSH_FILE_DIR"
exec honcho --env /dev/null start --procfile Procfile
