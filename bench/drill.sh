#!/usr/bin/env bash
# bench/drill.sh [SCALE] — the recovery drill at the reference scale, on the
# bench stack: PostgreSQL ~1 GB (a `pgbench -i -s 50` database next to the
# drill's own), 1,000,000 OpenSearch documents, 1,000,000 Neo4j nodes with
# 2,000,000 relationships (SCALE, default 1000000).
#
# One drill per restore plan, in one run (DRILL_MODES, default all four):
#   auto    the default (`--parallel auto`: decided from where the servers run
#           and the cores)
#   all     every store at once (`--parallel all`)
#   none    one store after the other (`--parallel none`)
#   import  the default plan with Neo4j bulk-loaded (`--neo4j-load import`,
#           the server stopped meanwhile; neo4j-admin gets HEAP_SIZE, 1g)
#   dump    (on request) Neo4j by the runbook's offline dump/load
# and reports, in bench/RESULTS.md: backup time, the RTO (the whole restore),
# each store's restore time, itbackup's own peak memory (the drill reports it
# from the kernel, per phase), the process tree's, and the verdicts: the
# default within 5 % of the best plan, RTO ≤ 60 s, import ≥ 5× the
# transactional Neo4j restore, itbackup ≤ 100 MB.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SCALE="${1:-1000000}"
MEASURE_OUT="$BENCH_WORK/drill.tsv"
# REPORT_ONLY=1 rewrites the section from the last runs' results (no server needed).
if [ -z "${REPORT_ONLY:-}" ]; then
ensure_gnu_time
bench_build
bench_up postgres opensearch neo4j
# A subset of DRILL_MODES redoes those runs; the report takes the others'
# results from the previous run of this script (their JSON stays in BENCH_WORK).
ALL_MODES="auto all none import"
DRILL_MODES=${DRILL_MODES:-$ALL_MODES}
[ "$DRILL_MODES" != "$ALL_MODES" ] || : >"$MEASURE_OUT"
touch "$MEASURE_OUT"
# neo4j-admin's heap (testenv's launcher reads HEAP_SIZE as the tarball's does):
# importing the reference graph outgrows its 256m default.
export HEAP_SIZE=${BENCH_NEO4J_ADMIN_HEAP:-1g}

ensure_pgbench_database bench 50
others=$(psql -X -Atqc "SELECT string_agg(datname, ',') FROM pg_database WHERE NOT datistemplate AND datname NOT IN ('postgres', 'bench', 'itbackup_drill')" postgres)
[ -z "$others" ] || bdie "other databases on the bench PostgreSQL ($others) would change the reference scale: drop them first"
# bench/neo4j.sh leaves its own graph (1M nodes) in the same Neo4j: the drill
# would back up and restore twice the reference graph.
others=$(neo4j_scalar "MATCH (n) WHERE NOT n:ItbackupDrill AND NOT n:ItbackupDrillEvent RETURN count(n)")
[ "$others" = 0 ] || bdie "$others nodes besides the drill's on the bench Neo4j (bench/neo4j.sh's graph) would change the reference scale: empty it first (MATCH (n) CALL { WITH n DETACH DELETE n } IN TRANSACTIONS)"

root="$BENCH_WORK/drill-backups"
for mode in $DRILL_MODES; do
  rm -rf "$root"
  extra=()
  case "$mode" in
    auto) ;;
    all | none) extra=(--parallel "$mode") ;;
    import) extra=(--neo4j-load import) ;;
    dump) extra=(--neo4j-method dump) ;;
    *) bdie "unknown drill mode $mode (auto, all, none, import, dump)" ;;
  esac
  rm -f "$BENCH_WORK/drill-$mode.json"
  measure "drill ($mode)" \
    "$ITBACKUP" --root "$root" --json drill --yes --scale "$SCALE" "${extra[@]}" || true
  [ -s "$BENCH_WORK/last.out" ] && cp "$BENCH_WORK/last.out" "$BENCH_WORK/drill-$mode.json"
  # Which build ran it and when: the report may mix runs of several invocations.
  echo "$(itbackup_commit), $(date -u '+%Y-%m-%d %H:%M') UTC" >"$BENCH_WORK/drill-$mode.run"
done
rm -rf "$root"
fi

report="$BENCH_WORK/drill-section.md"
python3 - "$BENCH_WORK" "$SCALE" "$MEASURE_OUT" >"$report" <<'PY'
import json, os, sys, csv
work, scale, tsv = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tree_rss = {row[0]: int(row[2]) // 1024 for row in csv.reader(open(tsv), delimiter="\t") if len(row) > 2 and row[2]}
names = {"auto": "default (`--parallel auto`)", "all": "`--parallel all`", "none": "`--parallel none`",
         "import": "default, `--neo4j-load import`", "dump": "default, Neo4j `--neo4j-method dump`"}
runs = {}
for m in names:
    f = f"{work}/drill-{m}.json"
    if os.path.exists(f):
        runs[m] = json.load(open(f))
def verdict(ok): return "**met**" if ok else "**missed**"
def run_of(m):
    f = f"{work}/drill-{m}.run"
    return open(f).read().strip() if os.path.exists(f) else "?"
print(f"Reference scale {scale:,}: PostgreSQL drill rows plus a pgbench -s 50 database, "
      f"{scale:,} OpenSearch documents, {scale:,} Neo4j nodes and {2*scale:,} relationships. "
      "Every run populates, backs up, wipes, restores and verifies every record (counts and content digests).\n")
first = next(iter(runs.values()))
print("| store | method | artifact | records | backup s |")
print("| --- | --- | ---: | ---: | ---: |")
for name, s in first["services"].items():
    print(f"| {name} | {s['method']} | {s['artifact_bytes']/1048576:.0f} MiB | {s['expected']['count']:,} | {s['backup_seconds']:.1f} |")
print()
stores = list(first["services"])
print("| run | plan | RTO s | " + " | ".join(f"{s} restore s" for s in stores) +
      " | verified | itbackup peak MB (populated/backed up/restored/verified) | process tree peak MB | itbackup, run |")
print("| --- | --- | ---: | " + " | ".join("---:" for _ in stores) + " | --- | --- | ---: | --- |")
for mode, v in runs.items():
    plan = v.get("restore_plan") or {}
    lanes = plan.get("lanes") or []
    shown = ("at once" if plan.get("parallel") else
             " \\| ".join(", ".join(lane) for lane in lanes) if len(lanes) > 1 else "one after the other")
    pm = v.get("peak_memory") or {}
    phases = "/".join(str(pm.get(k, "?")) for k in ("populated_mb", "backed_up_mb", "restored_mb", "verified_mb"))
    per = " | ".join(f"{(v['services'][s]['restore_seconds'] or 0):.1f}" for s in stores)
    print(f"| {names[mode]} | {shown} | "
          f"{v['rto_seconds'] or 0:.1f} | {per} | {'yes' if v['ok'] else 'NO'} | {phases} | "
          f"{tree_rss.get(f'drill ({mode})', 'n/a')} | {run_of(mode)} |")
print()
rto = {m: v["rto_seconds"] for m, v in runs.items() if v.get("ok") and v.get("rto_seconds")}
if "auto" in rto:
    best = min(rto, key=rto.get)
    a = rto["auto"]
    print(f"- The default plan: {runs['auto']['restore_plan']['reason']}.")
    print(f"- Default RTO {a:.1f} s; best {names[best]} {rto[best]:.1f} s: the default is "
          f"{100*(a/rto[best]-1):.1f} % slower. Within 5 %: {verdict(a <= 1.05*rto[best])}.")
    print(f"- Goal RTO ≤ 60 s with the default: {verdict(a <= 60)} ({a:.1f} s; the runbook's 1800 s: "
          f"{'met' if runs['auto']['rto_ok'] else 'missed'}).")
if "none" in runs and "import" in runs:
    t = runs["none"]["services"]["neo4j"]["restore_seconds"] or 0
    i = runs["import"]["services"]["neo4j"]["restore_seconds"] or 0
    if t and i:
        print(f"- Neo4j: transactional restore {t:.1f} s (one after the other), `--neo4j-load import` {i:.1f} s: "
              f"{t/i:.2f}×. Goal ≥ 5×: {verdict(t/i >= 5)}.")
peaks = {m: (v.get("peak_memory") or {}).get("verified_mb") for m, v in runs.items()}
if all(peaks.values()):
    print(f"- itbackup's own peak RSS ≤ 100 MB in every plan: {verdict(max(peaks.values()) <= 100)} "
          f"(largest {max(peaks.values())} MB). The process tree column is GNU time's figure for the whole drill, "
          "the stores' tools (pg_dump, pg_restore, neo4j-admin) included.")
PY
{
  echo "## Recovery drill at reference scale"
  echo
  if [ -n "${REPORT_ONLY:-}" ]; then
    echo "The last run of each mode of \`bench/drill.sh $SCALE\` (its build and time in the last column; \`DRILL_MODES=auto\` redoes one)."
    echo "Machine: $(machine_line)."
  else
    echo "Run $(date -u '+%Y-%m-%d %H:%M') UTC with \`bench/drill.sh $SCALE\` (modes: $DRILL_MODES)."
    echo "Machine: $(machine_line). itbackup $(itbackup_commit). $(load_line) at the end."
  fi
  echo
  cat "$report"
  echo
} >"$report.full"
update_section drill "$report.full"
cat "$report.full"
