#!/usr/bin/env bash
# bench/neo4j.sh — itbackup's Neo4j backup and restore beside the peer tools,
# in one run, on the bench stack (bench/lib.sh):
#   export: itbackup backup --neo4j-method logical   vs  neo4j-backup (PyPI) Extractor
#   import: itbackup restore (logical)                vs  neo4j-backup Importer
#   and APOC Core's apoc.export.json.all / apoc.import.json (server-side, the
#   plugin installed by testenv from Maven Central: IT_TESTENV_NEO4J_APOC=1)
#   offline limit: itbackup --neo4j-method dump (stop, neo4j-admin dump, start)
#                  vs bare neo4j-admin database dump/load with the server stopped
#   bulk load:  itbackup restore --neo4j-load import (the logical backup through
#               neo4j-admin database import, the server stopped) beside the
#               transactional logical restore and neo4j-admin database load
# NEO4J_STEPS=import measures only those three restores (and the logical backup
# and bare dump they need) and writes its own "neo4j-import" section.
# Dataset: NEO4J_NODES nodes (default 1,000,000: 80 % :Person, 20 % :Company)
# and NEO4J_RELS relationships (default 2,000,000 :KNOWS / :WORKS_AT), a few
# properties each, one uniqueness constraint and one index; generated as CSV
# (bench/tools/gen_graph.py) and loaded with neo4j-admin database import (the
# server stopped meanwhile), once: reused while the counts match.
# Before each logical import the database is emptied (not timed), since
# neo4j-backup refuses a non-empty database; the time that wipe takes is
# reported (itbackup's restore wipes by itself on a populated database). The
# server is then restarted (not timed either), so that every import starts
# alike, on a freshly started server with an empty database (as after a
# disaster), whatever ran before it: itbackup's restore took 57 s right after
# the dump steps' restart against 40 s on a server warmed by earlier work.
# neo4j-backup runs under a time cap (NEO4J_BACKUP_TIMEOUT, default 900 s
# each way); when it hits the cap, how far it got is reported.
# Each measurement runs once (RUNS=1; BENCH_RUNS=N for more: medians then).
# NEO4J_STEPS=apoc re-measures only APOC's two steps and keeps the last run's
# other measurements (say so when you report such a section).
# Updates the "neo4j" section of bench/RESULTS.md.
source "$(dirname "$0")/lib.sh"

RUNS=${1:-${BENCH_RUNS:-1}}
NODES=${NEO4J_NODES:-1000000}
RELS=${NEO4J_RELS:-2000000}
CAP=${NEO4J_BACKUP_TIMEOUT:-900}
W="$BENCH_WORK/neo4j"
MEASURE_OUT="$W/measure.tsv"
VENV="$BENCH_TOOLS/venv"

ensure_gnu_time
bench_build
bench_up neo4j
# testenv's neo4j-admin launcher runs with a 256 MB heap, which
# `neo4j-admin database import` of the reference graph outgrows
# (OutOfMemoryError, once a JVM crash): BENCH_NEO4J_ADMIN names another
# launcher (the same with -Xmx1g, say), used for every neo4j-admin step here
# and by itbackup.
[ -z "${BENCH_NEO4J_ADMIN:-}" ] || export IT_NEO4J_ADMIN=$BENCH_NEO4J_ADMIN
mkdir -p "$W"
# BENCH_REPORT_ONLY=1 rewrites the section from the last run's measurements.
REPORT_ONLY=${BENCH_REPORT_ONLY:-}
STEPS=${NEO4J_STEPS:-all}
step_on() { [ "$STEPS" = all ] || [ "$STEPS" = "$1" ]; }
if [ -z "$REPORT_ONLY" ] && [ "$STEPS" = apoc ]; then
  # Keep everything but APOC's rows; note when its steps were redone.
  awk -F'\t' '$1 !~ /^APOC /' "$MEASURE_OUT" >"$MEASURE_OUT.keep" && mv "$MEASURE_OUT.keep" "$MEASURE_OUT"
  awk -F'\t' '$1 != "apoc_size" && $1 != "count:APOC import" && $1 != "apoc_rerun"' "$W/notes.tsv" >"$W/notes.keep" && mv "$W/notes.keep" "$W/notes.tsv"
  printf 'apoc_rerun\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')" >>"$W/notes.tsv"
elif [ -z "$REPORT_ONLY" ]; then
  : >"$MEASURE_OUT"
  : >"$W/notes.tsv"
  printf 'load_before\t%s\nrun_date\t%s\nitbackup\t%s\n' "$(load_line)" "$(date -u '+%Y-%m-%d %H:%M UTC')" \
    "$(itbackup_version) (commit $(itbackup_commit))" >>"$W/notes.tsv"
fi

# ---- peer tool: neo4j-backup from PyPI, in a venv -------------------------
if ! "$VENV/bin/python" -c 'import neo4j_backup' 2>/dev/null; then
  blog "installing neo4j-backup from PyPI into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q neo4j-backup >&2 || bdie "pip install neo4j-backup failed"
fi
PY="$VENV/bin/python"
NB_VERSION=$("$VENV/bin/pip" show neo4j-backup 2>/dev/null | sed -n 's/^Version: //p')
DRIVER_VERSION=$("$VENV/bin/pip" show neo4j 2>/dev/null | sed -n 's/^Version: //p')
cypher() { "$PY" "$BENCH_DIR/tools/cypher.py" "$@"; }
count_nodes() { cypher 'MATCH (n) RETURN count(n)'; }
count_rels() { cypher 'MATCH ()-[r]->() RETURN count(r)'; }
stop_neo4j() { sh -c "$IT_NEO4J_STOP_CMD" >&2; }
start_neo4j() { sh -c "$IT_NEO4J_START_CMD" >&2; }
note() { printf '%s\t%s\n' "$1" "$2" >>"$W/notes.tsv"; }
note_of() { awk -F'\t' -v k="$1" '$1==k{v=$2} END{print v}' "$W/notes.tsv"; }
check_counts() {
  local n r
  n=$(count_nodes); r=$(count_rels)
  if [ "$n" != "$NODES" ] || [ "$r" != "$RELS" ]; then
    blog "after $1: $n nodes and $r relationships, expected $NODES and $RELS"
    note "count:$1" "$n nodes, $r relationships (expected $NODES, $RELS)"
    return 1
  fi
  note "count:$1" ok
}
# The last state of each tqdm progress bar neo4j-backup printed.
tqdm_tail() {
  tr '\r' '\n' <"$BENCH_WORK/last.err" | LC_ALL=C grep -aE '^[A-Z][A-Za-z /]+: +[0-9]+%' |
    awk -F: '{last[$1]=$0; if(!($1 in seen)){seen[$1]=1; order[++n]=$1}} END{for(i=1;i<=n;i++) printf "`%s` ", last[order[i]]}'
}
wipe() {
  local t0=$SECONDS
  cypher --wipe
  note wipe_seconds $((SECONDS - t0))
  stop_neo4j
  start_neo4j
}

# ---- dataset ------------------------------------------------------------
have_n=$(count_nodes); have_r=$(count_rels)
if [ "$have_n" != "$NODES" ] || [ "$have_r" != "$RELS" ] ||
  [ "$(cypher 'SHOW CONSTRAINTS YIELD name RETURN count(*)')" != 1 ]; then
  blog "creating the dataset: $NODES nodes, $RELS relationships (neo4j-admin database import)"
  CSV="$W/csv-$NODES-$RELS"
  [ -s "$CSV/works_at.csv" ] || "$PY" "$BENCH_DIR/tools/gen_graph.py" "$CSV" "$NODES" "$RELS"
  stop_neo4j
  # The database name first: --relationships takes a variable number of files.
  "$IT_NEO4J_ADMIN" database import full neo4j --overwrite-destination=true \
    --nodes=Person="$CSV/people.csv" --nodes=Company="$CSV/companies.csv" \
    --relationships=KNOWS="$CSV/knows.csv" --relationships=WORKS_AT="$CSV/works_at.csv" \
    >"$W/import.log" 2>&1 || { tail -n 20 "$W/import.log" >&2; bdie "neo4j-admin database import failed"; }
  start_neo4j
  cypher 'CREATE CONSTRAINT person_uid IF NOT EXISTS FOR (p:Person) REQUIRE p.uid IS UNIQUE' \
    'CREATE INDEX company_name IF NOT EXISTS FOR (c:Company) ON (c.name)' 'CALL db.awaitIndexes(600)'
  check_counts "dataset creation" || bdie "the generated dataset has the wrong size"
fi
NEO4J_VERSION=$(cypher 'CALL dbms.components() YIELD versions, edition RETURN versions[0] + " " + edition')
if [ -z "$REPORT_ONLY" ]; then note store_size "$(du -sh "$IT_NEO4J_DATA/databases/neo4j" | cut -f1)"; fi
STORE_SIZE=$(note_of store_size)
# APOC Core: a server started before IT_TESTENV_NEO4J_APOC=1 was set lacks it; restart it once.
apoc_version() { cypher 'RETURN apoc.version()' 2>/dev/null || true; }
APOC_VERSION=$(apoc_version)
if [ -z "$APOC_VERSION" ] && [ -z "$REPORT_ONLY" ]; then
  blog "restarting Neo4j with APOC Core"
  stop_neo4j; start_neo4j
  APOC_VERSION=$(apoc_version)
fi
[ -n "$APOC_VERSION" ] || blog "APOC Core is not available: its steps are left out"
APOC_FILE=bench-apoc.json
APOC_PATH="$IT_TESTENV_DIR/neo4j/import/$APOC_FILE"
blog "dataset: $NODES nodes, $RELS relationships (store $STORE_SIZE), Neo4j $NEO4J_VERSION"

size_of() { [ -e "$1" ] && du -sh "$1" | cut -f1 || echo n/a; }
backup_dir() { find "$1" -name backup-manifest.json -printf '%h\n' | head -n1; }
IT="$ITBACKUP"

IMPORT_LABEL="itbackup restore (logical, --neo4j-load import)"
# The transactional and the import restore of the logical backup $1, each
# onto a wiped graph, their counts checked.
restore_logical_both() {
  wipe
  measure "itbackup restore (logical)" "$IT" --root "$W/it-logical" --json restore --path "$1" --services neo4j --yes || true
  check_counts "itbackup restore (logical)" || true
  wipe
  measure "$IMPORT_LABEL" "$IT" --root "$W/it-logical" --json restore --path "$1" --services neo4j --yes --neo4j-load import || true
  check_counts "$IMPORT_LABEL" || true
}
# NEO4J_STEPS=import: the three ways back, each on a freshly started server.
if [ "$STEPS" = import ] && [ -z "$REPORT_ONLY" ]; then
  for ((i = 1; i <= RUNS; i++)); do
    L=$(backup_dir "$W/it-logical" 2>/dev/null || true)
    if [ -z "$L" ]; then
      rm -rf "$W/it-logical" && mkdir -p "$W/it-logical"
      measure "itbackup backup (logical)" "$IT" --root "$W/it-logical" --json backup --services neo4j --neo4j-method logical
      L=$(backup_dir "$W/it-logical")
    fi
    rm -rf "$W/bare" && mkdir -p "$W/bare"
    stop_neo4j
    measure "neo4j-admin dump (bare)" "$IT_NEO4J_ADMIN" database dump neo4j --to-path="$W/bare" --overwrite-destination=true || true
    start_neo4j
    restore_logical_both "$L"
    note import_scratch "$(awk '/import files written/ {for (i=1;i<=NF;i++) if ($i ~ /^bytes=/) {sub("bytes=","",$i); printf "%.0f MB", $i/1e6}}' "$BENCH_WORK/last.err" | tail -n1)"
    stop_neo4j
    measure "neo4j-admin load (bare)" "$IT_NEO4J_ADMIN" database load neo4j --from-path="$W/bare" --overwrite-destination=true || true
    start_neo4j
    check_counts "neo4j-admin load" || true
  done
fi
if [ "$STEPS" = import ]; then
  t_tx=$(median_of "itbackup restore (logical)"); t_im=$(median_of "$IMPORT_LABEL"); t_bare=$(median_of "neo4j-admin load (bare)")
  sp=$(ratio "$t_tx" "$t_im")
  body="$W/section-import.md"
  {
    echo "## Neo4j: bulk load of a logical backup (\`--neo4j-load import\`)"
    echo
    echo "Run $(note_of run_date) with \`NEO4J_STEPS=import bench/neo4j.sh $RUNS\` (NEO4J_NODES=$NODES NEO4J_RELS=$RELS), the dataset of the Neo4j section."
    echo "Machine: $(machine_line). Neo4j $NEO4J_VERSION (heap $IT_TESTENV_NEO4J_HEAP, page cache $IT_TESTENV_NEO4J_PAGECACHE), $(note_of itbackup)."
    echo "System load: $(note_of load_before) before the run. Each restore starts on a freshly started server with an empty database."
    echo "The import's times include stopping and starting the server and waiting for its indexes; its CSV scratch files took $(note_of import_scratch)."
    echo
    echo "| restore | wall s (median of $RUNS) | peak RSS MB |"
    echo "| --- | ---: | ---: |"
    for l in "itbackup restore (logical)" "$IMPORT_LABEL" "neo4j-admin load (bare)"; do
      echo "| $l | $(median_of "$l")$( [ "$(fails_of "$l")" = 0 ] || echo " (failed: $(fails_of "$l") run(s))") | $(max_rss_of "$l") |"
    done
    echo
    echo "| goal | measured | verdict |"
    echo "| --- | ---: | --- |"
    echo "| import load ≥ 5× faster than the transactional restore | ${sp}× | $(verdict "$sp" '>=' 5) |"
    echo "| itbackup's peak RSS during the import load ≤ 100 MB | see note | the RSS column is the largest process: neo4j-admin's JVM |"
    echo
    echo "Import load vs bare \`neo4j-admin database load\` of a dump: $(ratio "$t_im" "$t_bare")×."
    awk -F'\t' '$1 ~ /^count:/ && $2 != "ok" {print "Count check " substr($1,7) ": " $2}' "$W/notes.tsv"
    echo
  } >"$body"
  update_section neo4j-import "$body"
  cat "$body"
  exit 0
fi

for ((i = 1; i <= RUNS; i++)); do
  [ -z "$REPORT_ONLY" ] || break
  # Untimed: one read of every node and relationship with its properties, so
  # that the first tool measured does not pay alone for a cold page cache
  # (after a restart, e.g. to load APOC, the export ran 30 % slower).
  cypher 'MATCH (n) RETURN sum(size(keys(properties(n))))' 'MATCH ()-[r]->() RETURN sum(size(keys(properties(r))))' >/dev/null
  # ---- export / backup ----------------------------------------------------
  L="" D=""
  if step_on all; then
    rm -rf "$W/it-logical" && mkdir -p "$W/it-logical"
    measure "itbackup backup (logical)" "$IT" --root "$W/it-logical" --json backup --services neo4j --neo4j-method logical || true

    rm -rf "$W/nb" && mkdir -p "$W/nb"
    if ! (cd "$W/nb" && measure "neo4j-backup export" timeout "$CAP" "$PY" "$BENCH_DIR/tools/neo4j_backup_run.py" export project); then
      note "nb_export" "did not finish within ${CAP}s (or failed); its last progress lines: $(tqdm_tail)"
    fi
  fi

  if [ -n "$APOC_VERSION" ] && step_on apoc; then
    rm -f "$APOC_PATH"
    measure "APOC export (apoc.export.json.all)" "$PY" "$BENCH_DIR/tools/cypher.py" \
      "CALL apoc.export.json.all('$APOC_FILE', {useTypes: true}) YIELD nodes RETURN nodes" || true
    note apoc_size "$(size_of "$APOC_PATH")"
  fi

  if step_on all; then
    rm -rf "$W/it-dump" && mkdir -p "$W/it-dump"
    measure "itbackup backup (dump)" "$IT" --root "$W/it-dump" --json backup --services neo4j --neo4j-method dump || true

    rm -rf "$W/bare" && mkdir -p "$W/bare"
    measure "server stop (testenv)" sh -c "$IT_NEO4J_STOP_CMD" || true
    measure "neo4j-admin dump (bare)" "$IT_NEO4J_ADMIN" database dump neo4j --to-path="$W/bare" --overwrite-destination=true || true
    measure "server start (testenv)" sh -c "$IT_NEO4J_START_CMD" || true

    # ---- import / restore ---------------------------------------------------
    L=$(backup_dir "$W/it-logical"); D=$(backup_dir "$W/it-dump")
    if [ -n "$L" ]; then
      restore_logical_both "$L"
    fi

    if [ -f "$W/nb/project/compressed.json" ]; then
      wipe
      if ! (cd "$W/nb" && measure "neo4j-backup import" timeout "$CAP" "$PY" "$BENCH_DIR/tools/neo4j_backup_run.py" import project); then
        note "nb_import" "stopped at the ${CAP}s cap (or failed) with $(count_nodes) of $NODES nodes and $(count_rels) of $RELS relationships imported; its last progress lines: $(tqdm_tail)"
      else
        check_counts "neo4j-backup import" || true
      fi
    fi
  fi

  if [ -n "$APOC_VERSION" ] && [ -s "$APOC_PATH" ] && step_on apoc; then
    wipe
    # As APOC's documentation asks: a uniqueness constraint on the import id per
    # label (timed: part of its import). Its own `cleanup: true` left no
    # relationship at all here (APOC 5.26.12: 1,000,000 nodes, 0 relationships),
    # so the import id is removed by Cypher afterwards, also timed: itbackup's
    # restore removes its temporary state too.
    measure "APOC import (apoc.import.json)" "$PY" "$BENCH_DIR/tools/cypher.py" \
      "CREATE CONSTRAINT bench_apoc_person IF NOT EXISTS FOR (n:Person) REQUIRE n.neo4jImportId IS UNIQUE" \
      "CREATE CONSTRAINT bench_apoc_company IF NOT EXISTS FOR (n:Company) REQUIRE n.neo4jImportId IS UNIQUE" \
      "CALL apoc.import.json('$APOC_FILE') YIELD nodes RETURN nodes" \
      "DROP CONSTRAINT bench_apoc_person IF EXISTS" "DROP CONSTRAINT bench_apoc_company IF EXISTS" \
      "MATCH (n) WHERE n.neo4jImportId IS NOT NULL CALL (n) { REMOVE n.neo4jImportId } IN TRANSACTIONS OF 10000 ROWS" \
      "MATCH ()-[r]->() WHERE r.neo4jImportId IS NOT NULL CALL (r) { REMOVE r.neo4jImportId } IN TRANSACTIONS OF 10000 ROWS" || true
    check_counts "APOC import" || true
  fi

  if [ -n "$D" ] && step_on all; then
    measure "itbackup restore (dump)" "$IT" --root "$W/it-dump" --json restore --path "$D" --services neo4j --yes || true
    check_counts "itbackup restore (dump)" || true
  fi

  stop_neo4j
  load_bare=("$IT_NEO4J_ADMIN" database load neo4j --from-path="$W/bare" --overwrite-destination=true)
  if step_on all; then
    measure "neo4j-admin load (bare)" "${load_bare[@]}" || true
  else
    # Only APOC's steps ran: put the dataset back from the last bare dump, untimed.
    "${load_bare[@]}" >&2
  fi
  start_neo4j
  check_counts "neo4j-admin load" || true
done

# ---- report ---------------------------------------------------------------
e_it=$(median_of "itbackup backup (logical)"); e_nb=$(median_of "neo4j-backup export")
i_it=$(median_of "itbackup restore (logical)"); i_nb=$(median_of "neo4j-backup import")
d_it=$(median_of "itbackup backup (dump)"); d_bare=$(median_of "neo4j-admin dump (bare)")
l_it=$(median_of "itbackup restore (dump)"); l_bare=$(median_of "neo4j-admin load (bare)")
rss_e=$(max_rss_of "itbackup backup (logical)"); rss_i=$(max_rss_of "itbackup restore (logical)")
e_apoc=$(median_of "APOC export (apoc.export.json.all)"); i_apoc=$(median_of "APOC import (apoc.import.json)")
sp_ae=$(ratio "$e_apoc" "$e_it"); sp_ai=$(ratio "$i_apoc" "$i_it")
sp_e=$(ratio "$e_nb" "$e_it"); sp_i=$(ratio "$i_nb" "$i_it")
nb_export_note=$(note_of nb_export); nb_import_note=$(note_of nb_import)
[ -z "$nb_import_note" ] || sp_i=">$(ratio "$CAP" "$i_it")"
[ -z "$nb_export_note" ] || sp_e=">$(ratio "$CAP" "$e_it")"
speed_verdict() { case "$1" in \>*) awk -v v="${1#>}" 'BEGIN{v=v+0; print (v>=10) ? "**met** (neo4j-backup hit the cap: a lower bound)" : "neo4j-backup hit the cap: a lower bound only (see below)"}' ;; *) verdict "$1" '>=' 10 ;; esac; }

body="$W/section.md"
{
  echo "## Neo4j"
  echo
  echo "Run $(note_of run_date) with \`bench/neo4j.sh $RUNS\` (NEO4J_NODES=$NODES NEO4J_RELS=$RELS NEO4J_BACKUP_TIMEOUT=$CAP)."
  echo "Machine: $(machine_line). Neo4j $NEO4J_VERSION (heap $IT_TESTENV_NEO4J_HEAP, page cache $IT_TESTENV_NEO4J_PAGECACHE), $(note_of itbackup),"
  echo "neo4j-backup $NB_VERSION (PyPI; Python driver neo4j $DRIVER_VERSION). System load: $(note_of load_before) before the run."
  echo "Dataset: $NODES nodes (80 % :Person with 5 properties, 20 % :Company with 4), $RELS relationships (:KNOWS / :WORKS_AT, 2 properties each),"
  echo "one uniqueness constraint, one range index; store $STORE_SIZE. Artifacts: itbackup logical $(size_of "$W/it-logical"),"
  echo "neo4j-backup $(size_of "$W/nb/project"), itbackup dump $(size_of "$W/it-dump"), bare neo4j-admin dump $(size_of "$W/bare")."
  if [ -n "$APOC_VERSION" ]; then
    echo "APOC Core $APOC_VERSION (org.neo4j.procedure:apoc-core from Maven Central, the plugin the Neo4j tarball ships in labs/, installed by testenv):"
    echo "\`apoc.export.json.all\` with useTypes to a file in the server's import directory ($(note_of apoc_size), uncompressed), \`apoc.import.json\`"
    echo "after uniqueness constraints on its import id per label, as its documentation asks, the import id then removed with Cypher (its own cleanup"
    echo "option left no relationship; timed with the import). Both run inside the server: their time is Cypher client start to"
    echo "end of the call, their peak RSS (of the small Python client) says nothing about the server's memory; APOC's JSON carries no schema."
  else
    echo "APOC Core could not be started on this stack, so APOC's JSON export/import is not compared."
  fi
  echo "Peak RSS is the largest process of the measured tree (/usr/bin/time -v): for the dump method that is neo4j-admin's JVM, not itbackup."
  echo
  echo "| step | tool | wall s (median of $RUNS) | peak RSS MB |"
  echo "| --- | --- | ---: | ---: |"
  for l in "itbackup backup (logical)" "neo4j-backup export" "itbackup backup (dump)" "neo4j-admin dump (bare)" \
    "APOC export (apoc.export.json.all)" "server stop (testenv)" "server start (testenv)" \
    "itbackup restore (logical)" "$IMPORT_LABEL" "neo4j-backup import" "APOC import (apoc.import.json)" "itbackup restore (dump)" "neo4j-admin load (bare)"; do
    m=$(median_of "$l"); f=$(fails_of "$l")
    [ "$m" != n/a ] || [ "$f" != 0 ] || continue
    [ "$f" = 0 ] || m="$m (failed or capped: $f run(s), ${CAP}s cap)"
    echo "| $(case "$l" in *restore*|*import|*import.json\)|*load*) echo restore ;; server*) echo "(offline steps)" ;; *) echo backup ;; esac) | $l | $m | $(max_rss_of "$l") |"
  done
  echo
  echo "| goal | measured | verdict |"
  echo "| --- | ---: | --- |"
  echo "| export ≥ 10× faster than neo4j-backup | ${sp_e}× | $(speed_verdict "$sp_e") |"
  echo "| import ≥ 10× faster than neo4j-backup | ${sp_i}× | $(speed_verdict "$sp_i") |"
  if [ -n "$APOC_VERSION" ]; then
    echo "| export ≥ 2× faster than APOC (apoc.export.json.all) | ${sp_ae}× | $(verdict "$sp_ae" '>=' 2) |"
    echo "| import ≥ 2× faster than APOC (apoc.import.json) | ${sp_ai}× | $(verdict "$sp_ai" '>=' 2) |"
  fi
  sp_load=$(ratio "$i_it" "$(median_of "$IMPORT_LABEL")")
  echo "| logical restore with --neo4j-load import ≥ 5× faster than transactional | ${sp_load}× | $(verdict "$sp_load" '>=' 5) |"
  echo "| itbackup logical export peak RSS ≤ 100 MB | $rss_e MB | $(verdict "$rss_e" '<=' 100) |"
  echo "| itbackup logical restore peak RSS ≤ 100 MB | $rss_i MB | $(verdict "$rss_i" '<=' 100) |"
  echo
  ss=$(awk -v a="$(median_of "server stop (testenv)")" -v b="$(median_of "server start (testenv)")" 'BEGIN{ if (a=="n/a" || b=="n/a") print "n/a"; else printf "%.2f", a+b }')
  echo "Offline limit: itbackup dump method $(ratio "$d_it" "$d_bare")× bare \`neo4j-admin database dump\` (itbackup's time includes stopping and starting the server$( [ "$ss" = n/a ] || echo ": stop + start alone took $ss s here")),"
  echo "$(ratio "$l_it" "$l_bare")× bare \`neo4j-admin database load\` for the restore. Logical export vs bare dump: $(ratio "$e_it" "$d_bare")×; logical restore vs bare load: $(ratio "$i_it" "$l_bare")×."
  echo "Emptying the database before each logical import (Cypher, not timed above) took $(note_of wipe_seconds) s."
  [ -z "$(note_of apoc_rerun)" ] || echo "APOC's two steps were measured again on $(note_of apoc_rerun) (\`NEO4J_STEPS=apoc\`), same stack and dataset; the other rows are from the run above."
  [ -z "$nb_export_note" ] || echo "neo4j-backup export: $nb_export_note"
  [ -z "$nb_import_note" ] || echo "neo4j-backup import: $nb_import_note"
  awk -F'\t' '$1 ~ /^count:/ && $2 != "ok" {print "Count check " substr($1,7) ": " $2}' "$W/notes.tsv"
  if [ -s "$BENCH_DIR/notes/neo4j.md" ]; then echo; cat "$BENCH_DIR/notes/neo4j.md"; fi
  echo
} >"$body"
update_section neo4j "$body"
cat "$body"
