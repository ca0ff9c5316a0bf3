#!/bin/sh
# Initialises PGDATA on first start (superuser postgres, password from POSTGRES_PASSWORD, password logins from any
# address), then runs the server in the foreground.
set -eu
if [ ! -s "${PGDATA}/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set for the first start}"
  mkdir -p "${PGDATA}"
  chmod 700 "${PGDATA}"
  pwfile="$(dirname "${PGDATA}")/.pwfile"
  (umask 077; printf '%s' "${POSTGRES_PASSWORD}" > "${pwfile}")
  initdb --pgdata="${PGDATA}" --username=postgres --pwfile="${pwfile}" --auth=scram-sha-256 --encoding=UTF8 \
    --no-sync >/dev/null
  rm -f "${pwfile}"
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "${PGDATA}/pg_hba.conf"
fi
exec postgres -D "${PGDATA}" -c listen_addresses='*' -c unix_socket_directories='' "$@"
