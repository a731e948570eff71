#!/usr/bin/env bash
# bench/postgres-switch.sh — how long the application is down during a
# PostgreSQL restore: in place (the default) against `restore --switch`, in
# one run, on the bench stack (bench/lib.sh).
# Dataset: pgbench -i -s $PG_SCALE (default 50: 5,000,000 accounts rows) in
# the database bench_switch, backed up once (custom format). Each restore
# puts back that database alone (--databases bench_switch) while a probe —
# the application — runs `SELECT abalance FROM pgbench_accounts WHERE aid =
# <last aid>` through a new psql connection every 50 ms (1 s timeout); the
# row is there only once the accounts table is loaded whole. Down: the
# longest run of failed probes, from the first failure to the next success.
# Updates the "postgres-switch" section of bench/RESULTS.md.
source "$(dirname "$0")/lib.sh"

PG_SCALE=${PG_SCALE:-50}
DB=bench_switch
W="$BENCH_WORK/postgres-switch"
MEASURE_OUT="$W/measure.tsv"

ensure_gnu_time
bench_build
bench_up postgres
PSQL=("$IT_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1)
mkdir -p "$W"
: >"$MEASURE_OUT"
LOAD_BEFORE=$(load_line)
RUN_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
LAST_AID=$((PG_SCALE * 100000))

have_rows=$("${PSQL[@]}" -d "$DB" -Atc 'SELECT count(*) FROM pgbench_accounts' 2>/dev/null || echo 0)
if [ "$have_rows" != "$LAST_AID" ]; then
  blog "creating the dataset: pgbench -i -s $PG_SCALE in database $DB"
  "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
  "${PSQL[@]}" -d postgres -c "CREATE DATABASE $DB"
  "$IT_PG_BIN/pgbench" -i -q -s "$PG_SCALE" "$DB" >&2
fi
DB_MB=$("${PSQL[@]}" -d postgres -Atc "SELECT pg_database_size('$DB') / 1048576")
rm -rf "$W/backups"
blog "backing up (custom format)"
"$ITBACKUP" --root "$W/backups" backup --services postgres --timestamp ref >/dev/null 2>"$W/backup.err" \
  || { tail "$W/backup.err" >&2; bdie "the backup failed"; }

# The application: one probe every 50 ms, "<epoch ms> ok|fail" per line.
cat >"$W/probe.sh" <<SH
#!/usr/bin/env bash
while :; do
  t=\$(date +%s%3N)
  if [ "\$(timeout 1 "${IT_PG_BIN}/psql" -X -Atq -d $DB -c 'SELECT 1 FROM pgbench_accounts WHERE aid = $LAST_AID' 2>/dev/null)" = 1 ]; then
    echo "\$t ok"
  else
    echo "\$t fail"
  fi
  sleep 0.05
done
SH
chmod +x "$W/probe.sh"

declare -A DOWN PROBES
restore() {
  local label="$1"; shift
  local log="$W/probe-${label// /_}.log" pid
  "$W/probe.sh" >"$log" &
  pid=$!
  sleep 2
  measure "$label" env RUST_LOG=itbackup=info "$ITBACKUP" --root "$W/backups" restore --path "$W/backups/ref" --services postgres --databases "$DB" --yes "$@" || true
  cp "$BENCH_WORK/last.err" "$W/restore-${label// /_}.err"
  sleep 2
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  IFS=$'\t' read -r DOWN["$label"] PROBES["$label"] < <(longest_down "$log")
  blog "$label: down ${DOWN[$label]} ms over ${PROBES[$label]} probes"
}
restore "in place"
restore "switch" --switch
SWITCH_LOGGED=$(sed -n 's/.*downtime_ms=\([0-9]*\).*/\1/p' "$W/restore-switch.err" | tail -n1)

body="$W/section.md"
{
  echo "## PostgreSQL: downtime of a restore in place against restore --switch"
  echo
  echo "Run $RUN_DATE with \`bench/postgres-switch.sh\` (PG_SCALE=$PG_SCALE)."
  echo "Machine: $(machine_line). PostgreSQL $("${PSQL[@]}" -d postgres -Atc 'SHOW server_version'), $(itbackup_version) (commit $(itbackup_commit)). System: $LOAD_BEFORE before the run."
  echo "Dataset: pgbench -i -s $PG_SCALE in one database ($DB_MB MB), backed up once in the custom format; each restore puts back that database alone (\`--databases $DB\`)."
  echo "The application: a new psql connection every 50 ms asking for the last pgbench_accounts row (1 s timeout); down is the longest run of failed probes."
  echo
  echo "| restore | wall s | application down (ms) | probes |"
  echo "| --- | ---: | ---: | ---: |"
  for l in "in place" "switch"; do
    d=${DOWN[$l]}
    [ "$d" != 0 ] || d="0 (no probe failed)"
    echo "| $l | $(median_of "$l") | $d | ${PROBES[$l]} |"
  done
  echo
  echo "itbackup's own log gave the switch step as ${SWITCH_LOGGED:-?} ms (\`downtime_ms\`: ending the sessions, renaming the old database aside and the copy in)."
  echo "In place, the database is renamed aside before the load and the application is down until the load is complete; with --switch the load runs beside the live database (the server holds both copies for a while)."
  echo
} >"$body"
update_section postgres-switch "$body"
cat "$body"
