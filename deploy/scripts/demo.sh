#!/usr/bin/env bash
# `make demo`: start the mesh, create one booking over HTTP, show the e-mail
# and push message it produced, stop the mesh. Exits non-zero if nothing arrives.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${VENV:-.venv}"
export BOOKING_API_KEYS="${BOOKING_API_KEYS:-dev-key}"
export EMAIL_FILE_DIR="${EMAIL_FILE_DIR:-$PWD/var/demo/email}"
export PUSH_FILE_DIR="${PUSH_FILE_DIR:-$PWD/var/demo/push}"
API_KEY="${BOOKING_API_KEYS%%,*}"
rm -rf "$EMAIL_FILE_DIR" "$PUSH_FILE_DIR"
mkdir -p var

deploy/scripts/run-mesh.sh > var/demo-mesh.log 2>&1 &
MESH=$!
trap 'kill -INT $MESH 2>/dev/null; wait $MESH 2>/dev/null || true' EXIT

for _ in $(seq 1 60); do
  curl -fsS http://localhost:8000/healthz >/dev/null 2>&1 && break
  sleep 1
done
START=$(date -u -d '+3 days' +%Y-%m-%dT10:00:00Z)
END=$(date -u -d '+3 days' +%Y-%m-%dT11:00:00Z)
echo "POST /v1/bookings"
curl -fsS -X POST http://localhost:8000/v1/bookings \
  -H "Authorization: Bearer $API_KEY" -H 'Content-Type: application/json' \
  -d "{\"resource_id\": \"demo-room-$RANDOM\", \"starts_at\": \"$START\", \"ends_at\": \"$END\",
       \"customer\": {\"name\": \"Ada Lovelace\", \"email\": \"ada@example.org\", \"locale\": \"en\",
                      \"timezone\": \"Europe/London\", \"push_tokens\": [\"demo-device\"]}}"
echo
for _ in $(seq 1 30); do
  if compgen -G "$EMAIL_FILE_DIR/*.eml" >/dev/null && [ -n "$(ls -A "$PUSH_FILE_DIR" 2>/dev/null)" ]; then
    echo "--- e-mail ($EMAIL_FILE_DIR)"; cat "$EMAIL_FILE_DIR"/*.eml | head -40
    echo "--- push ($PUSH_FILE_DIR)"; cat "$PUSH_FILE_DIR"/*
    exit 0
  fi
  sleep 0.5
done
echo "no e-mail arrived within 15 s; see var/demo-mesh.log" >&2
exit 1
