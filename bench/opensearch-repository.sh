#!/usr/bin/env bash
# bench/opensearch-repository.sh — OpenSearch snapshots, first and
# incremental, on the bench stack (bench/lib.sh), in one run:
#   itbackup backup --opensearch-method repository (into a registered fs repository)
#   vs the bare snapshot API (PUT _snapshot/<repo>/<snap>?wait_for_completion=true
#      into a repository of its own: the limit, what OpenSearch itself takes)
#   vs itbackup backup --opensearch-method snapshot (the tarball: a new
#      temporary repository every time, packed into the backup directory)
# then 1 % more documents and the same three again (the incremental snapshot),
# and a restore of the second backup by each (the index deleted first, not timed);
# then, the index live, itbackup's restore in place against restore --switch,
# with a probe reading one document every 50 ms: the application's downtime.
# Dataset: OS_REPO_DOCS documents (default 1,000,000) of about 1 KB in the
# index bench-repo-docs (2 primaries, 0 replicas: a single node); the 1 % more
# are the generator's next OS_REPO_DOCS/100 documents. Bytes added to a
# repository: `du -sb` of its directory under path.repo before and after.
# bench/opensearch.sh runs this at its end; alone:
#   bench/opensearch-repository.sh
# Updates the "opensearch-repository" section of bench/RESULTS.md.
source "$(dirname "$0")/lib.sh"

DOCS=${OS_REPO_DOCS:-1000000}
MORE=$((DOCS / 100))
BATCH=1000
((DOCS % BATCH == 0 && MORE % BATCH == 0)) || bdie "OS_REPO_DOCS must be a multiple of $((BATCH * 100))"
INDEX=bench-repo-docs
W="$BENCH_WORK/opensearch-repository"
MEASURE_OUT="$W/measure.tsv"

ensure_gnu_time
bench_build
bench_up opensearch
mkdir -p "$W"
: >"$MEASURE_OUT"
LOAD_BEFORE=$(load_line)
RUN_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
URL="$OPENSEARCH_URL"
REPO_ROOT_DIR="$IT_OPENSEARCH_REPO"
IT="$ITBACKUP"

os() { curl -fsS -H 'Content-Type: application/json' "$@"; }
doc_count() {
  os -XPOST "$URL/$INDEX/_refresh" >/dev/null 2>&1 || true
  os "$URL/$INDEX/_count" 2>/dev/null | jq -r '.count // 0' 2>/dev/null || echo 0
}
delete_index() { curl -sS -XDELETE "$URL/$INDEX" >/dev/null; }
COUNT_PROBLEMS=()
check_count() {
  local n; n=$(doc_count)
  [ "$n" = "$2" ] || { blog "after $1: $n documents, expected $2"; COUNT_PROBLEMS+=("after $1: $n documents, expected $2"); }
}
# A repository of no snapshots, named NAME, under path.repo.
fresh_repository() {
  curl -sS -XDELETE "$URL/_snapshot/$1" >/dev/null
  rm -rf "${REPO_ROOT_DIR:?}/$1"
  os -XPUT "$URL/_snapshot/$1" -d "{\"type\":\"fs\",\"settings\":{\"location\":\"$REPO_ROOT_DIR/$1\"}}" >/dev/null
}
repo_bytes() { du -sb "$REPO_ROOT_DIR/$1" | cut -f1; }

# ---- dataset: DOCS + MORE generated documents, loaded DOCS first ----------
GEN="$W/docs-$((DOCS + MORE))"
if [ ! -s "$GEN/.complete" ]; then
  blog "generating $((DOCS + MORE)) documents of ~1 KB as _bulk NDJSON in $GEN"
  rm -rf "$GEN"
  python3 "$BENCH_DIR/tools/gen_docs.py" "$GEN" "$INDEX" "$((DOCS + MORE))" "$BATCH"
  date >"$GEN/.complete"
fi
rm -rf "$W/base" "$W/more" && mkdir -p "$W/base" "$W/more"
for f in "$GEN"/bulk-*.ndjson; do
  n=$((10#$(basename "$f" .ndjson | sed 's/bulk-//')))
  if ((n < DOCS / BATCH)); then ln -s "$f" "$W/base/"; else ln -s "$f" "$W/more/"; fi
done
load() {
  "$(command -v python3)" "$BENCH_DIR/tools/os_bare.py" load "$URL" "$1" 3 >/dev/null
  os -XPOST "$URL/$INDEX/_refresh" >/dev/null
}
blog "loading $DOCS documents into $INDEX"
delete_index
os -XPUT "$URL/$INDEX" -d '{"settings":{"number_of_shards":2,"number_of_replicas":0}}' >/dev/null
load "$W/base"
check_count "the load" "$DOCS"
OS_VERSION=$(os "$URL/" | jq -r .version.number)
STORE_MB=$(os "$URL/_cat/indices/$INDEX?bytes=m&h=pri.store.size" | tr -d ' \n')

fresh_repository bench-it
fresh_repository bench-bare
# The bare calls, as scripts (measure runs a command, not a function).
cat >"$W/bare_snapshot.sh" <<SH
#!/bin/sh
set -e
curl -fsS -XPUT -H 'Content-Type: application/json' "$URL/_snapshot/bench-bare/\$1?wait_for_completion=true" \\
  -d '{"indices":"$INDEX","include_global_state":true}' | jq -e '.snapshot.state == "SUCCESS"' >/dev/null
SH
cat >"$W/bare_restore.sh" <<SH
#!/bin/sh
set -e
curl -fsS -XPOST -H 'Content-Type: application/json' "$URL/_snapshot/bench-bare/\$1/_restore?wait_for_completion=true" \\
  -d '{"indices":"$INDEX","include_global_state":false}' >/dev/null
curl -fsS "$URL/_cluster/health/$INDEX?wait_for_status=yellow&timeout=600s" >/dev/null
SH
chmod +x "$W/bare_snapshot.sh" "$W/bare_restore.sh"
rm -rf "$W/it-repo" "$W/it-tar" && mkdir -p "$W/it-repo" "$W/it-tar"
declare -A BYTES
backups() {
  local round="$1" before
  before=$(repo_bytes bench-it)
  measure "itbackup repository ($round)" "$IT" --root "$W/it-repo" --json backup --services opensearch --opensearch-method repository --opensearch-repository bench-it --indices "$INDEX" --timestamp "r-$round"
  BYTES["itbackup repository ($round)"]=$(($(repo_bytes bench-it) - before))
  before=$(repo_bytes bench-bare)
  measure "bare snapshot API ($round)" "$W/bare_snapshot.sh" "s-$round"
  BYTES["bare snapshot API ($round)"]=$(($(repo_bytes bench-bare) - before))
  measure "itbackup tarball snapshot ($round)" "$IT" --root "$W/it-tar" --json backup --services opensearch --opensearch-method snapshot --indices "$INDEX" --timestamp "t-$round"
  BYTES["itbackup tarball snapshot ($round)"]=$(du -sb "$W/it-tar/t-$round" | cut -f1)
}
backups first
blog "adding $MORE documents (1 %)"
load "$W/more"
check_count "adding 1 %" "$((DOCS + MORE))"
backups incremental

# ---- restores of the incremental backups ----------------------------------
delete_index
measure "itbackup repository (restore)" "$IT" --root "$W/it-repo" --json restore --path "$W/it-repo/r-incremental" --services opensearch --yes
check_count "itbackup repository restore" "$((DOCS + MORE))"
delete_index
measure "bare snapshot API (restore)" "$W/bare_restore.sh" s-incremental
check_count "bare restore" "$((DOCS + MORE))"
delete_index
measure "itbackup tarball snapshot (restore)" "$IT" --root "$W/it-tar" --json restore --path "$W/it-tar/t-incremental" --services opensearch --yes
check_count "itbackup tarball restore" "$((DOCS + MORE))"

# ---- downtime: restore in place against --switch, the index live ---------
# The application: GET one document every 50 ms (1 s timeout); down is the
# longest run of failed reads. Writers are blocked longer under --switch
# (from the write block to the clone): itbackup logs that as downtime_ms.
cat >"$W/probe.sh" <<SH
#!/usr/bin/env bash
while :; do
  t=\$(date +%s%3N)
  if curl -fsS --max-time 1 "$URL/$INDEX/_doc/0" 2>/dev/null | grep -q '"found":true'; then echo "\$t ok"; else echo "\$t fail"; fi
  sleep 0.05
done
SH
chmod +x "$W/probe.sh"
declare -A DOWN
probed_restore() {
  local label="$1"; shift
  local log="$W/probe-${label// /_}.log" pid
  "$W/probe.sh" >"$log" &
  pid=$!
  sleep 2
  measure "$label" env RUST_LOG=itbackup=info "$IT" --root "$W/it-repo" restore --path "$W/it-repo/r-incremental" --services opensearch --yes "$@" || true
  cp "$BENCH_WORK/last.err" "$W/restore-${label// /_}.err"
  sleep 2
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  IFS=$'\t' read -r DOWN["$label"] _ < <(longest_down "$log")
}
check_count "before the probed restores" "$((DOCS + MORE))"
probed_restore "restore in place, index live"
probed_restore "restore --switch, index live" --switch
check_count "itbackup restore --switch" "$((DOCS + MORE))"
SWITCH_LOGGED=$(sed -n 's/.*downtime_ms=\([0-9]*\).*/\1/p' "$W/restore-restore_--switch,_index_live.err" | tail -n1)

# ---- report ----------------------------------------------------------------
mib() { awk -v b="$1" 'BEGIN{printf "%.1f", b/1048576}'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b==0) print "n/a"; else printf "%.1f", 100*a/b }'; }
t_first=$(median_of "itbackup repository (first)"); t_inc=$(median_of "itbackup repository (incremental)")
b_first=${BYTES["itbackup repository (first)"]}; b_inc=${BYTES["itbackup repository (incremental)"]}
time_share=$(ratio "$t_inc" "$t_first"); byte_share=$(pct "$b_inc" "$b_first")
body="$W/section.md"
{
  echo "## OpenSearch: snapshots into the cluster's repository, first and incremental"
  echo
  echo "Run $RUN_DATE with \`bench/opensearch-repository.sh\` (OS_REPO_DOCS=$DOCS; also run by \`bench/opensearch.sh\`)."
  echo "Machine: $(machine_line). OpenSearch $OS_VERSION (single node, heap $IT_TESTENV_OPENSEARCH_HEAP), $(itbackup_version) (commit $(itbackup_commit)). System: $LOAD_BEFORE before the run."
  echo "Dataset: $DOCS generated documents of about 1 KB in one index (2 primaries, 0 replicas, primary store $STORE_MB MB); then $MORE more (1 %) before the incremental round."
  echo "Each of the three writes into a repository of its own under path.repo (\`fs\`): itbackup's repository method into \`bench-it\`, the bare API (one PUT with wait_for_completion, the limit) into \`bench-bare\`; the tarball method registers a new temporary repository each time and packs it into the backup directory (bytes: that directory)."
  echo
  echo "| step | wall s | bytes added | peak RSS MB |"
  echo "| --- | ---: | ---: | ---: |"
  for round in first incremental restore; do
    for tool in "itbackup repository" "bare snapshot API" "itbackup tarball snapshot"; do
      l="$tool ($round)"
      b=${BYTES["$l"]:-}
      echo "| $l | $(median_of "$l") | $([ -n "$b" ] && echo "$(mib "$b") MiB" || echo -) | $(max_rss_of "$l") |"
    done
  done
  echo
  echo "| goal | measured | verdict |"
  echo "| --- | ---: | --- |"
  echo "| incremental backup adds ≤ 10 % of the first's bytes to the repository | $byte_share % | $(verdict "$byte_share" '<=' 10) |"
  echo "| incremental backup takes ≤ 1/3 of the first's time | $(ratio "$t_inc" "$t_first")× ($t_inc s vs $t_first s) | $(verdict "$time_share" '<=' 0.3334) |"
  echo "| repository method within 1.3× of the bare API, first snapshot | $(ratio "$t_first" "$(median_of "bare snapshot API (first)")")× | $(verdict "$(ratio "$t_first" "$(median_of "bare snapshot API (first)")")" '<=' 1.3) |"
  echo "| repository restore within 1.3× of the bare API restore | $(ratio "$(median_of "itbackup repository (restore)")" "$(median_of "bare snapshot API (restore)")")× | $(verdict "$(ratio "$(median_of "itbackup repository (restore)")" "$(median_of "bare snapshot API (restore)")")" '<=' 1.3) |"
  echo
  echo "Downtime of a restore of the repository backup while the index is live (the application reads one document every 50 ms; down: the longest run of failed reads):"
  echo
  echo "| restore | wall s | reads down (ms) |"
  echo "| --- | ---: | ---: |"
  for l in "restore in place, index live" "restore --switch, index live"; do
    d=${DOWN["$l"]:-n/a}; [ "$d" != 0 ] || d="0 (no read failed)"
    echo "| $l | $(median_of "$l") | $d |"
  done
  echo
  echo "Under --switch writers are blocked for the switch step itself: ${SWITCH_LOGGED:-?} ms (itbackup's downtime_ms: write block, clone of the live index aside, delete, clone of the restored copy in, its primaries active)."
  echo
  echo "The tarball method copies everything every time by design: its incremental backup wrote $(pct "${BYTES["itbackup tarball snapshot (incremental)"]}" "${BYTES["itbackup tarball snapshot (first)"]}") % of its first's bytes."
  echo "itbackup's repository restore checks the snapshot (state, UUID, shards, files, bytes) and \`_verify\`s the repository before it deletes anything, restores with the global state (templates, pipelines), then waits for yellow and compares every index's document count; the bare restore only restores and waits for yellow."
  for p in "${COUNT_PROBLEMS[@]}"; do echo "Count check: $p"; done
  echo
} >"$body"
update_section opensearch-repository "$body"
cat "$body"
# The dataset of this bench is its own: leave the cluster as it was.
delete_index
curl -sS -XDELETE "$URL/_snapshot/bench-it" >/dev/null
curl -sS -XDELETE "$URL/_snapshot/bench-bare" >/dev/null
