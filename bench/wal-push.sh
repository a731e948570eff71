#!/usr/bin/env bash
# bench/wal-push.sh [SEGMENTS] — WAL archiving throughput: how many 16 MiB
# segments per second `itbackup wal push` archives when called as
# PostgreSQL's archiver calls archive_command (one process per segment, one
# after the other), beside `pgbackrest archive-push` (synchronous, zstd level
# 3, a local repository: the same work) when pgBackRest is installed
# (Debian package pgbackrest).
# Real segments: pgbench writes WAL into the bench PostgreSQL and the closed
# segments still in pg_wal are copied into a spool directory, so both tools
# compress the same real WAL. Updates the "wal-push" section of bench/RESULTS.md.
source "$(dirname "$0")/lib.sh"

SEGMENTS=${1:-${WAL_SEGMENTS:-32}}
DB=walbench
W="$BENCH_WORK/wal-push"
MEASURE_OUT="$W/measure.tsv"

ensure_gnu_time
bench_build
bench_up postgres
PSQL=("$IT_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1)
PG_USER=$(stat -c %U "$IT_PG_DATA")

rm -rf "$W" && mkdir -p "$W/spool" && : >"$MEASURE_OUT"
chown "$PG_USER" "$W"
LOAD_BEFORE=$(load_line)

# ---- real WAL -----------------------------------------------------------
blog "writing WAL with pgbench (scale 20, then 20 s of transactions)"
"${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
"$IT_PG_BIN/pgbench" -i -q -s 20 "$DB" >&2
"$IT_PG_BIN/pgbench" -T 20 -c 4 "$DB" >/dev/null 2>&1
current=$("${PSQL[@]}" -d postgres -Atc 'SELECT pg_walfile_name(pg_current_wal_lsn())')
mapfile -t names < <(ls "$IT_PG_DATA/pg_wal" | grep -E '^[0-9A-F]{24}$' | awk -v c="$current" '$0 < c' | tail -n "$SEGMENTS")
[ "${#names[@]}" -gt 0 ] || bdie "no closed segment in $IT_PG_DATA/pg_wal"
for n in "${names[@]}"; do cp "$IT_PG_DATA/pg_wal/$n" "$W/spool/"; done
chown -R "$PG_USER" "$W/spool"
count=${#names[@]}
spool_mb=$(du -sm "$W/spool" | cut -f1)
blog "$count segments ($spool_mb MiB) in the spool"
"${PSQL[@]}" -d postgres -c "DROP DATABASE $DB WITH (FORCE)"

# ---- itbackup wal push, one process per segment --------------------------
push_all_itbackup() {
  local f
  for f in "$W"/spool/*; do "$ITBACKUP" wal push --root "$W/itb" "$f" 2>/dev/null || return 1; done
}
export -f push_all_itbackup
export ITBACKUP W
measure "itbackup wal push" bash -c push_all_itbackup
itb_secs=$(median_of "itbackup wal push")
itb_rss=$(max_rss_of "itbackup wal push")
itb_mb=$(du -sm "$W/itb/wal" | cut -f1)

# ---- pgbackrest archive-push ----------------------------------------------
pgbr_secs=n/a pgbr_rss=n/a pgbr_mb=n/a pgbr_note="not installed"
if command -v pgbackrest >/dev/null; then
  pgbr_note="$(pgbackrest version)"
  mkdir -p "$W/pgbr/repo" "$W/pgbr/log" "$W/pgbr/lock" && chown -R "$PG_USER" "$W/pgbr"
  cat >"$W/pgbr/pgbackrest.conf" <<CONF
[global]
repo1-path=$W/pgbr/repo
compress-type=zst
compress-level=3
archive-async=n
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
  pgbr stanza-create >&2
  push_all_pgbackrest() {
    local f
    for f in "$W"/spool/*; do
      runuser -u "$PG_USER" -- pgbackrest --config="$W/pgbr/pgbackrest.conf" --stanza=bench archive-push "$f" || return 1
    done
  }
  export -f push_all_pgbackrest
  export PG_USER
  measure "pgbackrest archive-push" bash -c push_all_pgbackrest
  pgbr_secs=$(median_of "pgbackrest archive-push")
  pgbr_rss=$(max_rss_of "pgbackrest archive-push")
  pgbr_mb=$(du -sm "$W/pgbr/repo/archive" | cut -f1)
fi

rate() { awk -v n="$count" -v s="$1" 'BEGIN{ if (s=="n/a" || s==0) print "n/a"; else printf "%.1f", n/s }'; }
body="$W/section.md"
cat >"$body" <<MD
## WAL archiving: \`itbackup wal push\` (one process per 16 MiB segment)

$(date -u +%Y-%m-%d) · $(machine_line) · itbackup $(itbackup_commit) · $LOAD_BEFORE

$count real segments ($spool_mb MiB, from pgbench), pushed one after the other as PostgreSQL's archiver does.

| tool | seconds | segments/s | peak RSS | stored |
|---|---|---|---|---|
| itbackup wal push (zstd 3) | $itb_secs | $(rate "$itb_secs") | $itb_rss MB | $itb_mb MiB |
| pgbackrest archive-push (zstd 3, sync; $pgbr_note) | $pgbr_secs | $(rate "$pgbr_secs") | $pgbr_rss MB | $pgbr_mb MiB |

MD
cat "$body"
update_section wal-push "$body"
