#!/usr/bin/env bash
# bench/postgres.sh [RUNS] — itbackup's PostgreSQL backup and restore beside the
# bare tools, in one run, on the bench stack (bench/lib.sh):
#   backup:  itbackup backup --services postgres   vs  pg_dump -Fc -f FILE
#   restore: itbackup restore --services postgres  vs  psql -f <plain pg_dump>
# Dataset: pgbench -i -s $PG_SCALE (default 50: 5,000,000 accounts rows) in the
# database "bench" (created once, reused while its row count matches).
# Each measurement runs RUNS times (default 5), the two tools alternating which
# goes first; medians are reported. Updates the "postgres" section of
# bench/RESULTS.md.
source "$(dirname "$0")/lib.sh"

RUNS=${1:-${BENCH_RUNS:-5}}
PG_SCALE=${PG_SCALE:-50}
DB=bench
W="$BENCH_WORK/postgres"
MEASURE_OUT="$W/measure.tsv"

ensure_gnu_time
bench_build
bench_up postgres
PSQL=("$IT_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1)
PG_DUMP="$IT_PG_BIN/pg_dump"

mkdir -p "$W"
: >"$MEASURE_OUT"
LOAD_BEFORE=$(load_line)

# ---- dataset ------------------------------------------------------------
want_rows=$((PG_SCALE * 100000))
have_rows=$("${PSQL[@]}" -d "$DB" -Atc 'SELECT count(*) FROM pgbench_accounts' 2>/dev/null || echo 0)
if [ "$have_rows" != "$want_rows" ]; then
  blog "creating the dataset: pgbench -i -s $PG_SCALE in database $DB"
  "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
  "${PSQL[@]}" -d postgres -c "CREATE DATABASE $DB"
  "$IT_PG_BIN/pgbench" -i -q -s "$PG_SCALE" "$DB" >&2
fi
# Only "bench" besides postgres/templates, so itbackup (which dumps every
# database) and pg_dump (one database) move the same data.
others=$("${PSQL[@]}" -d postgres -Atc "SELECT string_agg(datname, ',') FROM pg_database WHERE NOT datistemplate AND datname NOT IN ('postgres', '$DB')")
# (bench/drill.sh creates bench_pgbench in the same cluster: run this script
# before the drill, or drop that database, e.g. psql -c 'DROP DATABASE bench_pgbench'.)
[ -z "$others" ] || bdie "the bench cluster has other databases ($others): itbackup would dump and restore them too while pg_dump/psql move only '$DB', so the comparison would be unfair; drop them (they are bench data) and run again"
db_size=$("${PSQL[@]}" -d postgres -Atc "SELECT pg_size_pretty(pg_database_size('$DB'))")
"${PSQL[@]}" -d "$DB" -c 'VACUUM ANALYZE' >/dev/null
blog "dataset: pgbench scale $PG_SCALE, $want_rows accounts rows, database size $db_size"

# A plain dump for psql, made once (not timed).
PLAIN="$W/bench.sql"
if [ ! -s "$PLAIN" ] || [ "$(cat "$W/plain.rows" 2>/dev/null)" != "$want_rows" ]; then
  "$PG_DUMP" -Fp -f "$PLAIN" -d "$DB"
  echo "$want_rows" >"$W/plain.rows"
fi

reset_db() { "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null; }
check_rows() {
  local n; n=$("${PSQL[@]}" -d "$DB" -Atc 'SELECT count(*) FROM pgbench_accounts')
  [ "$n" = "$want_rows" ] || bdie "after $1: pgbench_accounts has $n rows, expected $want_rows"
}

run_pg_dump() { rm -f "$W/bench.dump"; measure "pg_dump -Fc" "$PG_DUMP" -Fc -f "$W/bench.dump" -d "$DB"; }
run_it_backup() {
  rm -rf "$W/itroot"; mkdir -p "$W/itroot"
  measure "itbackup backup" "$ITBACKUP" --root "$W/itroot" --json backup --services postgres
}

# ---- backup: itbackup vs pg_dump -Fc --------------------------------------
for ((i = 1; i <= RUNS; i++)); do
  if ((i % 2)); then run_pg_dump; run_it_backup; else run_it_backup; run_pg_dump; fi
done
BACKUP_DIR=$(find "$W/itroot" -name backup-manifest.json -printf '%h\n' | head -n1)
[ -n "$BACKUP_DIR" ] || bdie "itbackup left no backup-manifest.json under $W/itroot"
it_size=$(du -sb "$BACKUP_DIR" | cut -f1)
dump_size=$(stat -c %s "$W/bench.dump")
plain_size=$(stat -c %s "$PLAIN")

# ---- restore: itbackup vs psql -f plain ------------------------------------
run_psql_restore() {
  reset_db
  "${PSQL[@]}" -d postgres -c "CREATE DATABASE $DB" >/dev/null
  measure "psql -f plain" "${PSQL[@]}" -d "$DB" -f "$PLAIN"
  check_rows "psql -f"
}
run_it_restore() {
  reset_db
  measure "itbackup restore" "$ITBACKUP" --root "$W/itroot" --json restore --path "$BACKUP_DIR" --services postgres --yes
  check_rows "itbackup restore"
}
# Extra reference point (not a goal): bare pg_restore -j of the pg_dump -Fc
# file, the tool itbackup's restore drives. The three rotate which goes first.
run_pg_restore() {
  reset_db
  measure "pg_restore -j$(nproc) (ref)" "$IT_PG_BIN/pg_restore" --create -j "$(nproc)" -d postgres "$W/bench.dump"
  check_rows "pg_restore"
}
for ((i = 1; i <= RUNS; i++)); do
  case $((i % 3)) in
    1) run_psql_restore; run_it_restore; run_pg_restore ;;
    2) run_it_restore; run_pg_restore; run_psql_restore ;;
    0) run_pg_restore; run_psql_restore; run_it_restore ;;
  esac
done

# ---- report ---------------------------------------------------------------
b_it=$(median_of "itbackup backup"); b_pg=$(median_of "pg_dump -Fc")
r_it=$(median_of "itbackup restore"); r_ps=$(median_of "psql -f plain")
r_pr=$(median_of "pg_restore -j$(nproc) (ref)")
rb=$(ratio "$b_it" "$b_pg"); rr=$(ratio "$r_it" "$r_ps")
pg_version=$("${PSQL[@]}" -d postgres -Atc 'SHOW server_version' | cut -d' ' -f1)

body="$W/section.md"
{
  echo "## PostgreSQL"
  echo
  echo "Run $(date -u '+%Y-%m-%d %H:%M UTC') with \`bench/postgres.sh $RUNS\` (PG_SCALE=$PG_SCALE)."
  echo "Machine: $(machine_line). PostgreSQL $pg_version, $(itbackup_version) (commit $(itbackup_commit))."
  echo "Dataset: \`pgbench -i -s $PG_SCALE\`: $want_rows rows in pgbench_accounts, database $db_size;"
  echo "pg_dump -Fc file $((dump_size / 1048576)) MiB, itbackup backup directory $((it_size / 1048576)) MiB, plain dump $((plain_size / 1048576)) MiB."
  echo "System load: $LOAD_BEFORE before the runs, $(load_line) after (other work on this 2-core machine, e.g. a test suite, adds noise)."
  echo "$RUNS runs each, alternating which tool goes first; median wall time, largest peak RSS (of the measured process tree's largest process, /usr/bin/time -v)."
  echo
  echo "| step | tool | median s | runs (s) | peak RSS MB |"
  echo "| --- | --- | ---: | --- | ---: |"
  for l in "pg_dump -Fc" "itbackup backup" "psql -f plain" "itbackup restore" "pg_restore -j$(nproc) (ref)"; do
    case "$l" in *backup|pg_dump*) s=backup ;; *) s=restore ;; esac
    echo "| $s | $l | $(median_of "$l") | $(runs_of "$l") | $(max_rss_of "$l") |"
  done
  echo
  echo "| goal | measured | verdict |"
  echo "| --- | ---: | --- |"
  echo "| backup: itbackup ≤ 1.05× pg_dump -Fc | ${rb}× | $(verdict "$rb" '<=' 1.05) |"
  echo "| restore: itbackup ≤ 0.6× psql -f plain dump | ${rr}× | $(verdict "$rr" '<=' 0.6) |"
  echo
  echo "itbackup restore vs bare \`pg_restore -j$(nproc)\` of the same custom dump: $(ratio "$r_it" "$r_pr")× (reference, no goal)."
  if [ -s "$BENCH_DIR/notes/postgres.md" ]; then echo; cat "$BENCH_DIR/notes/postgres.md"; fi
  echo
} >"$body"
update_section postgres "$body"
cat "$body"
