#!/usr/bin/env bash
# Write deploy/compose.env (or the file given) from compose.env.example with a
# fresh random value for every empty secret, readable by the owner only.
# Refuses to overwrite an existing file: rotating a database password also
# needs the role changed in PostgreSQL (its init script runs only once).
#   deploy/scripts/new-compose-env.sh [TARGET]
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
example="$here/compose.env.example"
target="${1:-$here/compose.env}"

if [[ -e "$target" ]]; then
  echo "$target exists; not overwriting it" >&2
  exit 1
fi

random() { od -An -tx1 -N24 /dev/urandom | tr -d ' \n'; }  # 48 hex characters

umask 077
while IFS= read -r line; do
  case "$line" in
    FLOWER_BASIC_AUTH=) echo "FLOWER_BASIC_AUTH=admin:$(random)" ;;
    [A-Z]*=) echo "$line$(random)" ;;
    *) echo "$line" ;;
  esac
done < "$example" > "$target"
echo "wrote $target (mode 600); start with: docker compose --env-file ${target#"$PWD"/} up --build"
