#!/usr/bin/env bash
# bench/consistency.sh [SCALE] — how long `backup --consistent` keeps the
# writers paused on the reference data set (the drill's: PostgreSQL drill
# rows plus a `pgbench -i -s 50` database, SCALE OpenSearch documents, SCALE
# Neo4j nodes with 2×SCALE relationships; default 1000000), per method.
#
# The data is made once by `itbackup drill --keep` (which also checks it
# round-trips). Each run is then a backup with hooks that return at once
# (`true`), so the freeze measured is itbackup's own: from the freeze hook's
# start until every store has its position. No other tool coordinates a
# moment across stores, so there is no peer to run beside it; the backup
# without --consistent is the baseline for the total time.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SCALE="${1:-1000000}"
ensure_gnu_time
bench_build
bench_up postgres opensearch neo4j
MEASURE_OUT="$BENCH_WORK/consistency.tsv"
# REPORT_ONLY=1 writes the report from the last run's results.
if [ -z "${REPORT_ONLY:-}" ]; then
: >"$MEASURE_OUT"

ensure_pgbench_database bench 50

root="$BENCH_WORK/consistency-backups"
rm -rf "$root"
have_nodes=$(curl -fsS "$OPENSEARCH_URL/itbackup-drill-docs/_count" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])' 2>/dev/null || echo 0)
if [ "$have_nodes" != "$SCALE" ]; then
  blog "populating the reference set (itbackup drill --keep --scale $SCALE)"
  "$ITBACKUP" --root "$root" --json drill --yes --keep --scale "$SCALE" >"$BENCH_WORK/consistency-drill.json"
  rm -rf "${root:?}"/*
fi

run() {
  local name="$1"; shift
  blog "backup: $name"
  measure "$name" "$ITBACKUP" --root "$root" --json backup --timestamp "$name" "$@"
  rm -rf "${root:?}/$name"
  cp "$BENCH_WORK/last.out" "$BENCH_WORK/consistency-$name.json"
}
hooks=(--consistent --freeze-hook true --thaw-hook true --max-freeze 600s)
run baseline
run all-default "${hooks[@]}"
run neo4j-dump "${hooks[@]}" --neo4j-method dump
run without-neo4j "${hooks[@]}" --services postgres,opensearch
run opensearch-logical "${hooks[@]}" --services postgres,opensearch --opensearch-method logical
fi

report="$BENCH_WORK/consistency-section.md"
python3 - "$BENCH_WORK" "$MEASURE_OUT" >"$report" <<'PY'
import csv, json, sys
work, tsv = sys.argv[1], sys.argv[2]
rows = {r[0]: (float(r[1]), int(r[2]) // 1024) for r in csv.reader(open(tsv), delimiter="\t") if r}
names = {
    "baseline": "all three, no --consistent (baseline)",
    "all-default": "all three: PostgreSQL custom, OpenSearch snapshot, Neo4j logical",
    "neo4j-dump": "all three, Neo4j dump (server stopped)",
    "without-neo4j": "PostgreSQL custom + OpenSearch snapshot",
    "opensearch-logical": "PostgreSQL custom + OpenSearch logical",
}
print("| backup | freeze s | held | window of the positions s | whole backup s | peak RSS MB |")
print("| --- | ---: | --- | ---: | ---: | ---: |")
for key, label in names.items():
    m = json.load(open(f"{work}/consistency-{key}.json"))["result"]["manifest"]
    c = m.get("consistency") or {}
    f = c.get("freeze") or {}
    wall, rss = rows[key]
    print(f"| {label} | {f.get('seconds', '—')} | {f.get('outcome', '—')} | {c.get('window_seconds', '—')} | {wall:.1f} | {rss} |")
PY
{
  echo "## Coordinated moment (backup --consistent) at reference scale"
  echo
  echo "Run $(date -u '+%Y-%m-%d %H:%M') UTC with \`bench/consistency.sh $SCALE\`."
  echo "Machine: $(machine_line). itbackup $(itbackup_commit). $(load_line) at the end."
  echo "Hooks are \`true\`: the freeze is itbackup's own, from the freeze hook's start to the thaw."
  echo "No other backup tool takes one moment across stores; the baseline is the same backup without --consistent."
  echo
  cat "$report"
  echo
} >"$report.full"
update_section consistency "$report.full"
cat "$report.full"
