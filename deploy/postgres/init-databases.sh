#!/usr/bin/env bash
# Runs once, on the first start of the compose PostgreSQL container (an
# empty data volume): one database and one login role per service, so each
# team's service can only reach its own tables.
set -euo pipefail

create() {  # create ROLE PASSWORD DATABASE
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    --set=role="$1" --set=password="$2" --set=db="$3" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"db" OWNER :"role";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
SQL
}

# The postgres image sources or executes this file depending on its mode bit,
# so the switch is a variable, not BASH_SOURCE: tests set it to only define
# `create` and call it with throwaway names.
if [[ -z "${INIT_DATABASES_DEFINE_ONLY:-}" ]]; then
  create booking "${BOOKING_DB_PASSWORD:?}" booking
  create notification "${NOTIFICATION_DB_PASSWORD:?}" notification
fi
