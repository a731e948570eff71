#!/usr/bin/env bash
# bench/drill.sh [SCALE] — the recovery drill at the reference scale, on the
# bench stack: PostgreSQL ~1 GB (a `pgbench -i -s 50` database next to the
# drill's own), 1,000,000 OpenSearch documents, 1,000,000 Neo4j nodes with
# 2,000,000 relationships (SCALE, default 1000000). Runs the drill three times —
# stores restored in parallel (the default), one after the other, and in
# parallel with Neo4j's offline dump/load method — and
# reports backup time, restore time (the measured RTO), artifact sizes and
# peak memory in bench/RESULTS.md. Goal: RTO under 3 minutes on this machine.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SCALE="${1:-1000000}"
ensure_gnu_time
bench_build
bench_up postgres opensearch neo4j
MEASURE_OUT="$BENCH_WORK/drill.tsv"
# DRILL_MODES picks runs to (re)do; the report takes the others' results from
# the previous run of this script (their JSON and peak RSS stay in BENCH_WORK).
DRILL_MODES=${DRILL_MODES:-parallel sequential dump}
[ "$DRILL_MODES" != "parallel sequential dump" ] || : >"$MEASURE_OUT"

# ~750 MB of ordinary PostgreSQL data beside the drill's table: the same
# `pgbench -i -s 50` database "bench" that bench/postgres.sh uses (made once,
# reused while its row count matches).
have_rows=$(psql -X -Atqc "SELECT count(*) FROM pgbench_accounts" bench 2>/dev/null || echo 0)
if [ "$have_rows" != 5000000 ]; then
  blog "creating bench (pgbench -i -s 50)"
  psql -X -qc "DROP DATABASE IF EXISTS bench WITH (FORCE)" postgres
  psql -X -qc "CREATE DATABASE bench" postgres
  "$IT_PG_BIN/pgbench" -i -s 50 -q bench >&2
fi
others=$(psql -X -Atqc "SELECT string_agg(datname, ',') FROM pg_database WHERE NOT datistemplate AND datname NOT IN ('postgres', 'bench', 'itbackup_drill')" postgres)
[ -z "$others" ] || bdie "other databases on the bench PostgreSQL ($others) would change the reference scale: drop them first"

root="$BENCH_WORK/drill-backups"
rm -rf "$root"
for mode in $DRILL_MODES; do
  extra=()
  [ "$mode" = sequential ] && extra=(--sequential)
  # The runbook's own Neo4j method: offline neo4j-admin dump/load, stores in parallel.
  [ "$mode" = dump ] && extra=(--neo4j-method dump)
  measure "drill ($mode restore)" "$ITBACKUP" --root "$root" --json drill --yes --scale "$SCALE" "${extra[@]}"
  cp "$BENCH_WORK/last.out" "$BENCH_WORK/drill-$mode.json"
done

report="$BENCH_WORK/drill-section.md"
python3 - "$BENCH_WORK" "$SCALE" "$MEASURE_OUT" >"$report" <<'PY'
import json, sys, csv
work, scale, tsv = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rss = {row[0]: int(row[2]) // 1024 for row in csv.reader(open(tsv), delimiter="\t") if row}
runs = {m: json.load(open(f"{work}/drill-{m}.json")) for m in ("parallel", "sequential", "dump")}
p = runs["parallel"]
print(f"Reference scale {scale:,}: PostgreSQL drill rows plus a pgbench -s 50 database, "
      f"{scale:,} OpenSearch documents, {scale:,} Neo4j nodes and {2*scale:,} relationships.\n")
print("| store | method | artifact | records | backup s | restore s (parallel run) | verified |")
print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
for name, s in p["services"].items():
    print(f"| {name} | {s['method']} | {s['artifact_bytes']/1048576:.0f} MiB | {s['expected']['count']:,} | "
          f"{s['backup_seconds']:.1f} | {s['restore_seconds'] or 0:.1f} | {'yes' if s['ok'] else 'NO'} |")
print()
print("| run | backup s | restore s = RTO | drill ok | peak RSS MB (itbackup) |")
print("| --- | ---: | ---: | --- | ---: |")
names = {"parallel": "stores restored in parallel", "sequential": "stores restored one after the other",
         "dump": "in parallel, Neo4j by neo4j-admin dump/load (offline)"}
for mode, v in runs.items():
    print(f"| {names[mode]} | "
          f"{v['backup_seconds']:.1f} | {v['rto_seconds'] or 0:.1f} | {v['ok']} | {rss.get(f'drill ({mode} restore)', 'n/a')} |")
gain = runs["sequential"]["rto_seconds"] / p["rto_seconds"] if p["rto_seconds"] else 0
print(f"\nParallel restore: RTO {p['rto_seconds']:.0f} s against {runs['sequential']['rto_seconds']:.0f} s "
      f"one after the other ({gain:.2f}× faster). Goal RTO < 180 s: "
      f"{'**met**' if p['rto_seconds'] < 180 else '**missed**'} (the runbook's objective, 1800 s: "
      f"{'met' if p['rto_ok'] else 'missed'}).")
d = runs["dump"]
print(f"With the runbook's offline Neo4j method (neo4j-admin dump/load) the RTO is {d['rto_seconds']:.0f} s "
      f"({'**met**' if d['rto_seconds'] < 180 else '**missed**'} against 180 s); Neo4j restore "
      f"{d['services']['neo4j']['restore_seconds'] or 0:.0f} s against {p['services']['neo4j']['restore_seconds'] or 0:.0f} s logical.")
PY
{
  echo "## Recovery drill at reference scale"
  echo
  echo "Run $(date -u '+%Y-%m-%d %H:%M') UTC with \`bench/drill.sh $SCALE\`."
  echo "Machine: $(machine_line). itbackup $(itbackup_commit). $(load_line) at the end."
  echo
  cat "$report"
  echo
} >"$report.full"
update_section drill "$report.full"
cat "$report.full"
