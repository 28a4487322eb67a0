#!/usr/bin/env bash
# Starts a PostgreSQL server from Debian's packages on 127.0.0.1 (loopback only) for the sweep's
# multi-process test (tests/test_sweep.py), and creates its database. Idempotent: installs the
# package only if missing, initialises the cluster once, starts the server only if it is down.
# Prints the URL the test uses (RVSEG_TEST_POSTGRES_URL overrides it there).
set -euo pipefail
PORT="${RVSEG_PG_PORT:-54329}"
DATA="${RVSEG_PG_DATA:-/var/tmp/rvseg-postgres}"
DATABASE=rvseg
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
# The server refuses to run as root: it runs as the 'postgres' user the Debian package creates.
as_postgres() { $SUDO su postgres -s /bin/bash -c "$*"; }

if [ ! -f "$DATA/PG_VERSION" ]; then
    $SUDO mkdir -p "$DATA"
    $SUDO chown postgres "$DATA"
    as_postgres "'$BIN/initdb' -D '$DATA' -U postgres -A trust" >/dev/null
fi
if ! as_postgres "'$BIN/pg_ctl' -D '$DATA' status" >/dev/null 2>&1; then
    as_postgres "'$BIN/pg_ctl' -D '$DATA' -l '$DATA/server.log' -w -o \"-c listen_addresses=127.0.0.1 -p $PORT -k /tmp\" start" >/dev/null
fi
if ! as_postgres "psql -h 127.0.0.1 -p $PORT -U postgres -tAc \"SELECT 1 FROM pg_database WHERE datname = '$DATABASE'\"" | grep -q 1; then
    as_postgres "createdb -h 127.0.0.1 -p $PORT -U postgres $DATABASE"
fi
echo "postgresql://postgres@127.0.0.1:$PORT/$DATABASE"
