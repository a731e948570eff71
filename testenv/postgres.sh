# PostgreSQL from Debian's packages, one cluster under $STATE/postgres owned by
# the `postgres` system user, password authentication over TCP.

PG_BIN="/usr/lib/postgresql/$POSTGRES_MAJOR/bin"
PG_DIR="$STATE/postgres"
PG_DATA="$PG_DIR/data"
PG_LOG="$PG_DIR/log/postgres.log"
PG_SOCKET_DIR="$PG_DIR/run"

postgres_install() {
  [ -x "$PG_BIN/postgres" ] && [ -x "$PG_BIN/pg_dump" ] && return 0
  [ "$(id -u)" -eq 0 ] || die "PostgreSQL $POSTGRES_MAJOR is not installed and installing it needs root (apt-get install postgresql-$POSTGRES_MAJOR)"
  log "installing postgresql-$POSTGRES_MAJOR from Debian's packages"
  # No packaged 'main' cluster: testenv runs its own under $STATE.
  mkdir -p /etc/postgresql-common
  if ! grep -qs '^create_main_cluster *= *false' /etc/postgresql-common/createcluster.conf; then
    echo 'create_main_cluster = false' >>/etc/postgresql-common/createcluster.conf
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || die "apt-get update failed"
  apt-get install -y -qq -o Dpkg::Options::=--force-confold \
    "postgresql-$POSTGRES_MAJOR" "postgresql-client-$POSTGRES_MAJOR" "postgresql-contrib" >&2 \
    || die "apt-get install postgresql-$POSTGRES_MAJOR failed"
}

postgres_init() {
  local user; user="$(service_user postgres)"
  [ -s "$PG_DATA/PG_VERSION" ] && return 0
  log "initialising a PostgreSQL cluster in $PG_DATA"
  mkdir -p "$PG_DIR"/{data,log,run}
  chmod 0700 "$PG_DATA"
  [ "$(id -u)" -eq 0 ] && chown -R "$user" "$PG_DIR"
  ensure_reachable_by "$user" "$PG_DIR"
  local pwfile="$PG_DIR/run/pwfile"
  printf '%s\n' "$PG_PASSWORD" >"$pwfile"
  [ "$(id -u)" -eq 0 ] && chown "$user" "$pwfile"
  chmod 0600 "$pwfile"
  as_user "$user" "$PG_BIN/initdb" -D "$PG_DATA" -U "$PG_SUPERUSER" --pwfile="$pwfile" \
    --auth-host=scram-sha-256 --auth-local=trust --encoding=UTF8 --locale=C.UTF-8 >"$PG_DIR/log/initdb.log" 2>&1 \
    || { rm -f "$pwfile"; fail_start postgres "$PG_DIR/log/initdb.log" "initdb failed"; }
  rm -f "$pwfile"
}

# Settings the WAL archiving tests need (docs/postgres-pitr.md). They live in
# a file of the data directory included from postgresql.conf, not on pg_ctl's
# -o line: a setting given on the command line beats ALTER SYSTEM, and the
# tests set archive_command with ALTER SYSTEM (reset afterwards, when this
# file's no-op applies again). '/bin/true' marks every segment archived: with
# archive_mode=on and no command, pg_wal would keep every segment for ever.
# Written on every start, so an existing data directory gets them too.
postgres_configure() {
  local user; user="$(service_user postgres)"
  cat >"$PG_DATA/testenv.conf" <<CONF
# Written by testenv/up on every start; edit testenv/postgres.sh instead.
wal_level = replica
archive_mode = on
archive_command = '/bin/true'
max_wal_senders = 4
CONF
  grep -qx "include_if_exists = 'testenv.conf'" "$PG_DATA/postgresql.conf" \
    || printf "\n# testenv/up: WAL archiving and replication settings.\ninclude_if_exists = 'testenv.conf'\n" >>"$PG_DATA/postgresql.conf"
  # Replication (pg_basebackup, pg_receivewal) for the superuser over loopback.
  local hba="host replication $PG_SUPERUSER 127.0.0.1/32 scram-sha-256"
  grep -qx "$hba" "$PG_DATA/pg_hba.conf" || printf '%s\n' "$hba" >>"$PG_DATA/pg_hba.conf"
  [ "$(id -u)" -eq 0 ] && chown "$user" "$PG_DATA/testenv.conf" "$PG_DATA/postgresql.conf" "$PG_DATA/pg_hba.conf"
  chmod 0600 "$PG_DATA/testenv.conf"
}

# Whether the running server already has the settings of postgres_configure
# (archive_mode and wal_level take effect only at a start).
postgres_configured() {
  [ "$(PGPASSWORD="$PG_PASSWORD" "$PG_BIN/psql" -X -h 127.0.0.1 -p "$PG_PORT" -U "$PG_SUPERUSER" \
    -d postgres -Atqc "SELECT current_setting('archive_mode') || current_setting('wal_level')" 2>/dev/null)" = onreplica ]
}

postgres_answers() {
  PGPASSWORD="$PG_PASSWORD" "$PG_BIN/psql" -X -h 127.0.0.1 -p "$PG_PORT" -U "$PG_SUPERUSER" \
    -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1
}

postgres_running() {
  [ -s "$PG_DATA/postmaster.pid" ] && as_user "$(service_user postgres)" "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1
}

postgres_start() {
  postgres_install
  postgres_init
  postgres_configure
  if postgres_running && postgres_answers; then
    postgres_configured && return 0
    log "restarting PostgreSQL to apply wal_level=replica and archive_mode=on"
    postgres_stop
  fi
  require_free_port postgres "$PG_PORT"
  local user; user="$(service_user postgres)"
  as_user "$user" "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t "$START_TIMEOUT" \
    -o "-p $PG_PORT -k $PG_SOCKET_DIR -c listen_addresses=127.0.0.1 -c shared_buffers=128MB -c max_wal_size=2GB" \
    start >/dev/null 2>&1 8>&- || fail_start postgres "$PG_LOG" "pg_ctl start failed"
  wait_until postgres "$PG_LOG" "" "" postgres_answers
}

postgres_stop() {
  [ -s "$PG_DATA/postmaster.pid" ] || return 0
  as_user "$(service_user postgres)" "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null 2>&1 || true
}

postgres_describe() {
  local version
  version="$(PGPASSWORD="$PG_PASSWORD" "$PG_BIN/psql" -X -h 127.0.0.1 -p "$PG_PORT" -U "$PG_SUPERUSER" \
    -d postgres -Atqc 'SHOW server_version' 2>/dev/null | cut -d' ' -f1)"
  printf '%-10s %-22s %s\n' postgres "PostgreSQL $version" "postgresql://$PG_SUPERUSER@127.0.0.1:$PG_PORT"
}

# The command that stops (down) or starts (up) this stack's PostgreSQL, for
# IT_PG_STOP_CMD / IT_PG_START_CMD (the PITR restore stops and starts it).
postgres_lifecycle() {
  printf 'IT_TESTENV_DIR=%s IT_TESTENV_PG_PORT=%s %s/%s postgres' "$STATE" "$PG_PORT" "$TESTENV_SRC" "$1"
}

postgres_env() {
  cat <<ENV
export PGHOST=127.0.0.1
export PGPORT=$PG_PORT
export PGUSER=$PG_SUPERUSER
export PGPASSWORD=$PG_PASSWORD
export IT_PG_BIN=$PG_BIN
export IT_PG_DATA=$PG_DATA
export IT_PG_STOP_CMD="$(postgres_lifecycle down)"
export IT_PG_START_CMD="$(postgres_lifecycle up)"
ENV
}
