#!/usr/bin/env bash
# bench/postgres-physical.sh [SCALE] — PostgreSQL physical backup and
# point-in-time restore on one pgbench database (scale 100 by default, about
# 1.5 GB), side by side in one run:
#   * itbackup backup --postgres-method physical  vs  pgbackrest backup --type=full
#     (zstd level 3, one process, local repository: the same work)  vs  bare
#     pg_basebackup -Ft -X fetch (no compression, no checks: the floor);
#   * itbackup restore --until latest (checks the chain, stops the server,
#     keeps the old data directory, replays the WAL, waits for the promotion)
#     vs  the same steps around `pgbackrest restore` (stop, move the data
#     directory aside, restore, start, wait for the promotion);
#   * WAL archiving under a pgbench run at full speed through `itbackup wal
#     push`: the largest archive lag (segments written but not yet archived).
# One archive_command feeds both tools' archives, so both restores replay the
# same WAL. Reports times, peak RSS and repository sizes in the
# "postgres-physical" section of bench/RESULTS.md.
source "$(dirname "$0")/lib.sh"

SCALE=${1:-${PG_PHYSICAL_SCALE:-100}}
DB=physbench
W="$BENCH_WORK/postgres-physical"
MEASURE_OUT="$W/measure.tsv"

ensure_gnu_time
bench_build
bench_up postgres
command -v pgbackrest >/dev/null || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbackrest >&2 || bdie "cannot install pgbackrest"
}
PSQL=("$IT_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -d postgres)
PG_USER=$(stat -c %U "$IT_PG_DATA")

rm -rf "$W" && mkdir -p "$W/itb" "$W/pgbr/repo" "$W/pgbr/log" "$W/pgbr/lock" && : >"$MEASURE_OUT"
chown -R "$PG_USER" "$W"
LOAD_BEFORE=$(load_line)

cat >"$W/pgbr/pgbackrest.conf" <<CONF
[global]
repo1-path=$W/pgbr/repo
compress-type=zst
compress-level=3
process-max=1
archive-async=n
start-fast=y
log-level-console=warn
log-level-file=off
lock-path=$W/pgbr/lock
log-path=$W/pgbr/log

[bench]
pg1-path=$IT_PG_DATA
pg1-port=$IT_TESTENV_PG_PORT
pg1-socket-path=$IT_TESTENV_DIR/postgres/run
CONF
chown "$PG_USER" "$W/pgbr/pgbackrest.conf"
pgbr() { runuser -u "$PG_USER" -- pgbackrest --config="$W/pgbr/pgbackrest.conf" --stanza=bench "$@"; }
ITB_PUSH="$ITBACKUP wal push --root $W/itb %p"
PGBR_PUSH="pgbackrest --config=$W/pgbr/pgbackrest.conf --stanza=bench archive-push %p"

set_archive() {
  "${PSQL[@]}" -c "ALTER SYSTEM SET archive_command = '$1'" -c "SELECT pg_reload_conf()" >/dev/null
}
reset_archive() {
  "${PSQL[@]}" -c "ALTER SYSTEM RESET archive_command" -c "SELECT pg_reload_conf()" >/dev/null 2>&1 || true
}
trap reset_archive EXIT

# ---- data -----------------------------------------------------------------
set_archive "$ITB_PUSH && $PGBR_PUSH"
pgbr stanza-create >&2
blog "pgbench -i -s $SCALE"
"${PSQL[@]}" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
"$IT_PG_BIN/pgbench" -i -q -s "$SCALE" "$DB" >&2
db_mb=$(( $("${PSQL[@]}" -Atc "SELECT pg_database_size('$DB')") / 1048576 ))
cluster_mb=$(du -sm "$IT_PG_DATA" | cut -f1)
rows_expected=$((SCALE * 100000))
"${PSQL[@]}" -Atc "SELECT pg_switch_wal()" >/dev/null

# ---- backups ----------------------------------------------------------------
measure "itbackup physical backup" "$ITBACKUP" backup --root "$W/itb" --services postgres --postgres-method physical
itb_backup_mb=$(du -sm "$W/itb"/2* | cut -f1)
measure "pgbackrest backup --type=full" runuser -u "$PG_USER" -- pgbackrest --config="$W/pgbr/pgbackrest.conf" --stanza=bench backup --type=full
pgbr_backup_mb=$(du -sm "$W/pgbr/repo/backup" | cut -f1)
mkdir -p "$W/basebackup"
measure "pg_basebackup -Ft (bare)" "$IT_PG_BIN/pg_basebackup" -D "$W/basebackup" -Ft -X fetch -c fast --no-password
bare_mb=$(du -sm "$W/basebackup" | cut -f1)
rm -rf "$W/basebackup"

# Changes after the backups, archived: the restores replay them.
"$IT_PG_BIN/pgbench" -T 15 -c 2 "$DB" >/dev/null 2>&1
"${PSQL[@]}" -Atc "SELECT pg_switch_wal()" >/dev/null
sleep 5

count_rows() { "$IT_PG_BIN/psql" -X -Atc "SELECT count(*) FROM pgbench_accounts" "$DB"; }
wait_promoted() {
  local deadline=$((SECONDS + 1800))
  until [ "$("$IT_PG_BIN/psql" -X -Atc 'SELECT pg_is_in_recovery()' postgres 2>/dev/null)" = f ]; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}
drop_kept() { rm -rf "$IT_PG_DATA".itbackup-* "$IT_PG_DATA".pgbr-old; }

# ---- restores ------------------------------------------------------------------
measure "itbackup restore --until latest" "$ITBACKUP" restore --root "$W/itb" --services postgres --until latest --yes
[ "$(count_rows)" = "$rows_expected" ] || bdie "itbackup restore: pgbench_accounts has $(count_rows) rows, not $rows_expected"
drop_kept

pgbr_restore() {
  sh -c "$IT_PG_STOP_CMD" >/dev/null 2>&1
  mv "$IT_PG_DATA" "$IT_PG_DATA.pgbr-old"
  install -d -m 0700 -o "$PG_USER" "$IT_PG_DATA"
  runuser -u "$PG_USER" -- pgbackrest --config="$W/pgbr/pgbackrest.conf" --stanza=bench restore --type=default --target-timeline=latest
  sh -c "$IT_PG_START_CMD" >/dev/null 2>&1
  wait_promoted
}
export -f pgbr_restore wait_promoted
export IT_PG_STOP_CMD IT_PG_START_CMD IT_PG_DATA PG_USER W IT_PG_BIN
measure "pgbackrest restore (same steps)" bash -c pgbr_restore
[ "$(count_rows)" = "$rows_expected" ] || bdie "pgbackrest restore: pgbench_accounts has $(count_rows) rows, not $rows_expected"
drop_kept

# ---- archiving under pgbench at full speed -------------------------------------
set_archive "$ITB_PUSH"
blog "pgbench -T 60 -c 4 with archive_command = itbackup wal push: sampling the archive lag"
"$IT_PG_BIN/pgbench" -T 60 -c 4 "$DB" >"$W/pgbench.out" 2>&1 &
bench_pid=$!
max_lag=0
# A 16 MiB segment's number: log * 256 + segment (the name's last 16 hex digits).
segment_no() { echo $(( 16#${1:8:8} * 256 + 16#${1:16:8} )); }
while kill -0 "$bench_pid" 2>/dev/null; do
  row=$("$IT_PG_BIN/psql" -X -Atc "SELECT pg_walfile_name(pg_current_wal_lsn()), coalesce(last_archived_wal, '') FROM pg_stat_archiver" postgres 2>/dev/null || true)
  current=${row%%|*} archived=${row##*|}
  if [ -n "$archived" ] && [ "${#archived}" -eq 24 ]; then
    lag=$(( $(segment_no "$current") - $(segment_no "$archived") - 1 ))
    [ "$lag" -gt "$max_lag" ] && max_lag=$lag
  fi
  sleep 1
done
wait "$bench_pid" || true
tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$W/pgbench.out" | head -n1)
reset_archive
"${PSQL[@]}" -c "DROP DATABASE $DB WITH (FORCE)" >/dev/null

itb_b=$(median_of "itbackup physical backup"); pgbr_b=$(median_of "pgbackrest backup --type=full"); bare_b=$(median_of "pg_basebackup -Ft (bare)")
itb_r=$(median_of "itbackup restore --until latest"); pgbr_r=$(median_of "pgbackrest restore (same steps)")
body="$W/section.md"
cat >"$body" <<MD
## PostgreSQL physical backup and point-in-time restore (\`bench/postgres-physical.sh $SCALE\`)

$(date -u +%Y-%m-%d) · $(machine_line) · itbackup $(itbackup_commit) · $LOAD_BEFORE · $(pgbackrest version)

pgbench scale $SCALE: database $db_mb MiB, cluster $cluster_mb MiB. One archive_command feeds both archives; each restore replays the same 15 s of pgbench WAL after its backup and is checked ($rows_expected rows in pgbench_accounts).

| step | itbackup | pgBackRest | ratio | goal | bare pg_basebackup -Ft |
|---|---|---|---|---|---|
| backup (s) | $itb_b | $pgbr_b | $(ratio "$itb_b" "$pgbr_b") | ≤ 1.0 $(verdict "$(ratio "$itb_b" "$pgbr_b")" "<=" 1.0) | $bare_b |
| backup peak RSS (MB) | $(max_rss_of "itbackup physical backup") | $(max_rss_of "pgbackrest backup --type=full") | | ≤ 100 $(verdict "$(max_rss_of "itbackup physical backup")" "<=" 100) | $(max_rss_of "pg_basebackup -Ft (bare)") |
| repository (MiB) | $itb_backup_mb | $pgbr_backup_mb | $(ratio "$itb_backup_mb" "$pgbr_backup_mb") | | $bare_mb (uncompressed) |
| restore to latest, whole command (s) | $itb_r | $pgbr_r | $(ratio "$itb_r" "$pgbr_r") | ≤ 1.0 $(verdict "$(ratio "$itb_r" "$pgbr_r")" "<=" 1.0) | |
| restore peak RSS (MB) | $(max_rss_of "itbackup restore --until latest") | $(max_rss_of "pgbackrest restore (same steps)") | | ≤ 100 $(verdict "$(max_rss_of "itbackup restore --until latest")" "<=" 100) | |

Archiving under \`pgbench -T 60 -c 4\` ($tps tps) through \`itbackup wal push\`: largest archive lag $max_lag segments (goal < 10: $(verdict "$max_lag" "<=" 9)).
Both compress with zstd level 3 on one core (pgBackRest process-max=1, in its own process on the database host; itbackup has PostgreSQL 15's server-side compression do it, \`pg_basebackup --compress=server-zstd:level=3\`, so only compressed bytes leave the server); itbackup then checks every file against PostgreSQL's backup_manifest (CRC-32C) as it copies the server's tar into the artifact. Its restore checks the WAL chain and writes the new data directory beside the live one before it stops the server, so its downtime is the stop, two renames, the start and the replay. On this 2-core machine the times move with whatever else runs (load average above). Per-segment \`wal push\` against \`pgbackrest archive-push\`: the wal-push section.

MD
cat "$body"
update_section postgres-physical "$body"
