#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers on AMQP_URL. If nothing answers and a
# local rabbitmq-server is installed, start it detached and wait until it is
# ready. Used by `make test` and `make run`; exits non-zero when it cannot help.
set -euo pipefail

AMQP_URL="${AMQP_URL:-amqp://guest:guest@localhost:5672//}"
PYTHON="${PYTHON:-python3}"
read -r HOST PORT < <("$PYTHON" - "$AMQP_URL" <<'PY'
import sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
print(u.hostname or "localhost", u.port or (5671 if u.scheme == "amqps" else 5672))
PY
)

enable_management() {
  # The tests give each case its own vhost through the management API, and
  # operators want the UI on :15672. Best effort: only a local broker we may manage.
  if command -v rabbitmq-plugins >/dev/null 2>&1; then
    rabbitmq-plugins enable --quiet rabbitmq_management >/dev/null 2>&1 \
      || echo "note: could not enable rabbitmq_management on this broker" >&2
  fi
}

answers() { "$PYTHON" -c "import socket,sys; socket.create_connection(('$HOST', $PORT), timeout=1).close()" 2>/dev/null; }

is_local() { case "$HOST" in localhost|127.*|::1) return 0 ;; *) return 1 ;; esac; }

if answers; then
  echo "RabbitMQ answers on $HOST:$PORT"
  if is_local; then enable_management; fi
  exit 0
fi
if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "RabbitMQ does not answer on $HOST:$PORT and rabbitmq-server is not installed here." >&2
  exit 1
fi
if ! is_local; then
  echo "RabbitMQ does not answer on $HOST:$PORT (not local, so not starting one)." >&2
  exit 1
fi
echo "RabbitMQ does not answer on $HOST:$PORT; starting rabbitmq-server -detached"
rabbitmq-server -detached
for _ in $(seq 1 60); do
  if answers; then
    rabbitmqctl await_startup >/dev/null 2>&1 || true  # a no-op on brokers that are ready
    enable_management
    echo "RabbitMQ is ready on $HOST:$PORT"
    exit 0
  fi
  sleep 1
done
echo "RabbitMQ did not come up on $HOST:$PORT within 60 s" >&2
exit 1
