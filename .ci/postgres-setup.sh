#!/usr/bin/env bash
# Start a throwaway PostgreSQL for the PostgreSQL store's tests (SPEC §12):
# crates/store/tests/conformance_postgres.rs and the gateway's tests on it.
#
# Installs postgresql (Debian/Ubuntu, apt) if missing, creates a cluster in
# $GIMMM_PG_DIR (default /tmp/gimmm-pg) listening on 127.0.0.1 only, with a
# password for TCP logins, starts it in the background and writes what the
# tests need to $GIMMM_PG_DIR/env:
#
#   GIMMM_TEST_POSTGRES_URL  postgres://postgres:<password>@127.0.0.1:<port>/postgres
#                            (a superuser: each test creates its own database)
#
# Usage:
#   .ci/postgres-setup.sh          # start (idempotent: restarts a previous one)
#   .ci/postgres-setup.sh stop     # stop it
#   set -a; . /tmp/gimmm-pg/env; set +a
#   cargo test -p store --test conformance_postgres
#
# Port: GIMMM_PG_PORT (default 15432). As root the cluster belongs to the
# `postgres` user the Debian package creates (initdb refuses to run as root).
set -euo pipefail

DIR="${GIMMM_PG_DIR:-/tmp/gimmm-pg}"
PORT="${GIMMM_PG_PORT:-15432}"
PASSWORD="${GIMMM_PG_PASSWORD:-gimmm-test-pw}"
DATA="$DIR/data"

log() { echo "postgres-setup: $*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    if [ -n "$d" ] && [ -x "$d/initdb" ]; then
        echo "$d"
    elif command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
    fi
}

# Runs a PostgreSQL tool as the cluster's owner.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

BIN=$(bindir)
if [ "${1:-}" = "stop" ]; then
    if [ -n "$BIN" ] && [ -f "$DATA/postmaster.pid" ]; then
        as_owner "$BIN/pg_ctl" -D "$DATA" -m immediate stop >/dev/null || true
    fi
    exit 0
fi

if [ -z "$BIN" ]; then
    log "installing postgresql"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    as_root apt-get install -y -qq postgresql >/dev/null
    BIN=$(bindir)
    [ -n "$BIN" ] || { log "no initdb after installing postgresql"; exit 1; }
fi

# A previous run: stop it and start afresh.
if [ -f "$DATA/postmaster.pid" ]; then
    as_owner "$BIN/pg_ctl" -D "$DATA" -m immediate stop >/dev/null 2>&1 || true
fi
rm -rf "$DIR"
mkdir -p "$DIR"
PWFILE="$DIR/pwfile"
printf '%s\n' "$PASSWORD" >"$PWFILE"
if [ "$(id -u)" -eq 0 ]; then
    chown -R postgres:postgres "$DIR"
fi
as_owner "$BIN/initdb" -D "$DATA" -U postgres --pwfile="$PWFILE" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 >/dev/null
rm -f "$PWFILE"
# Loopback only; the socket in the cluster's own directory. fsync stays on:
# the store's durability is what the tests are about.
cat >>"$DATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DIR'
max_connections = 300
shared_buffers = 128MB
EOF
as_owner "$BIN/pg_ctl" -D "$DATA" -l "$DIR/server.log" -w -t 60 start >/dev/null
URL="postgres://postgres:$PASSWORD@127.0.0.1:$PORT/postgres"
printf 'GIMMM_TEST_POSTGRES_URL=%s\n' "$URL" >"$DIR/env"
chmod 644 "$DIR/env"
log "PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT (data $DATA); env in $DIR/env"
