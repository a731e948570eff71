# bench/lib.sh — sourced by every bench/*.sh, never run.
#
# Points every testenv call at the separate benchmark stack (its own directory
# under /var/tmp and its own ports), starts the services a script needs
# (harmless when they are up), exports their connection variables, and gives
# helpers for timing (wall time + peak RSS through /usr/bin/time -v), medians
# and updating one section of bench/RESULTS.md.
#
# Nothing here stops a server: `bench/down` (or testenv/down with the same
# variables) does, explicitly.

set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"

export IT_TESTENV_DIR=${IT_TESTENV_DIR:-/var/tmp/itbackup-bench}
export IT_TESTENV_PG_PORT=${IT_TESTENV_PG_PORT:-15432}
export IT_TESTENV_OPENSEARCH_PORT=${IT_TESTENV_OPENSEARCH_PORT:-19200}
export IT_TESTENV_NEO4J_BOLT_PORT=${IT_TESTENV_NEO4J_BOLT_PORT:-17687}
export IT_TESTENV_NEO4J_HTTP_PORT=${IT_TESTENV_NEO4J_HTTP_PORT:-17474}
export IT_TESTENV_S3_PORT=${IT_TESTENV_S3_PORT:-19900}
export IT_TESTENV_S3_CONSOLE_PORT=${IT_TESTENV_S3_CONSOLE_PORT:-19901}
export IT_TESTENV_OPENSEARCH_HEAP=${IT_TESTENV_OPENSEARCH_HEAP:-1g}
export IT_TESTENV_NEO4J_HEAP=${IT_TESTENV_NEO4J_HEAP:-1g}
export IT_TESTENV_NEO4J_PAGECACHE=${IT_TESTENV_NEO4J_PAGECACHE:-512m}
# APOC Core in the bench Neo4j: bench/neo4j.sh compares against its JSON export/import.
export IT_TESTENV_NEO4J_APOC=${IT_TESTENV_NEO4J_APOC:-1}

# Scratch space for datasets, backups and peer tools (never inside the repo).
BENCH_WORK=${BENCH_WORK:-/var/tmp/itbackup-bench-work}
BENCH_TOOLS=${BENCH_TOOLS:-/var/tmp/itbackup-bench-tools}
RESULTS="$BENCH_DIR/RESULTS.md"
# The binary under test: target/release/itbackup of this work tree (built by
# bench_build), or a prebuilt one named by ITBACKUP_BIN (then not rebuilt), e.g.
# a build of a committed tree while the work tree is mid-change:
#   git archive HEAD | tar -x -C /var/tmp/src && (cd /var/tmp/src && cargo build --release)
#   ITBACKUP_BIN=/var/tmp/src/target/release/itbackup bench/postgres.sh
ITBACKUP="${ITBACKUP_BIN:-$REPO_ROOT/target/release/itbackup}"
mkdir -p "$BENCH_WORK" "$BENCH_TOOLS"

blog() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
bdie() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

# bench_up SERVICE... — start (or reuse) the bench stack and export its env.
bench_up() {
  "$REPO_ROOT/testenv/up" "$@" >&2
  eval "$("$REPO_ROOT/testenv/env")"
}

# Build itbackup once (cargo is quick when nothing changed).
bench_build() {
  if [ -n "${ITBACKUP_BIN:-}" ]; then
    [ -x "$ITBACKUP" ] || bdie "ITBACKUP_BIN=$ITBACKUP is not an executable"
    return 0
  fi
  (cd "$REPO_ROOT" && cargo build --release -q) >&2 || bdie "cargo build --release failed"
  [ -x "$ITBACKUP" ] || bdie "no $ITBACKUP after the build"
}

ensure_gnu_time() {
  [ -x /usr/bin/time ] && return 0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >&2 || bdie "cannot install GNU time"
}

# measure LABEL CMD... — run CMD under /usr/bin/time -v; append
# "LABEL<TAB>wall_seconds<TAB>peak_rss_kb" to $MEASURE_OUT (a TSV); CMD's
# stdout goes to $BENCH_WORK/last.out, stderr to $BENCH_WORK/last.err.
# Fails (returns non-zero) when CMD fails, after showing its stderr tail.
measure() {
  local label="$1"; shift
  local tfile="$BENCH_WORK/time.$$" start end rc=0
  start=$(date +%s.%N)
  /usr/bin/time -v -o "$tfile" "$@" >"$BENCH_WORK/last.out" 2>"$BENCH_WORK/last.err" || rc=$?
  end=$(date +%s.%N)
  local rss wall
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): *//p' "$tfile")
  wall=$(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.2f", b-a}')
  rm -f "$tfile"
  if [ "$rc" -ne 0 ]; then
    blog "$label FAILED (exit $rc): $*"
    tail -n 15 "$BENCH_WORK/last.err" | sed 's/^/  | /' >&2
    printf '%s\t%s\t%s\tFAILED\n' "$label" "$wall" "$rss" >>"$MEASURE_OUT"
    return "$rc"
  fi
  printf '%s\t%s\t%s\n' "$label" "$wall" "$rss" >>"$MEASURE_OUT"
  blog "$(printf '%-34s %8ss  %8s KB peak RSS' "$label" "$wall" "$rss")"
}

# median_of LABEL — median wall seconds of the successful runs of LABEL.
median_of() {
  awk -F'\t' -v l="$1" '$1==l && $4!="FAILED"{print $2}' "$MEASURE_OUT" | sort -g |
    awk '{a[NR]=$1} END{if(NR==0){print "n/a"; exit} if(NR%2){print a[(NR+1)/2]} else {printf "%.2f\n",(a[NR/2]+a[NR/2+1])/2}}'
}
# max_rss_of LABEL — the largest peak RSS (MB) over the runs of LABEL.
max_rss_of() {
  awk -F'\t' -v l="$1" '$1==l && $4!="FAILED"{ if($3>m) m=$3 } END{ if(m=="") print "n/a"; else printf "%.0f\n", m/1024 }' "$MEASURE_OUT"
}
runs_of() {
  awk -F'\t' -v l="$1" '$1==l && $4!="FAILED"{printf "%s%s", s, $2; s=", "} END{print ""}' "$MEASURE_OUT"
}
fails_of() {
  awk -F'\t' -v l="$1" '$1==l && $4=="FAILED"{n++} END{print n+0}' "$MEASURE_OUT"
}
# ratio A B — A/B with two decimals ("n/a" when either is missing).
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN{ if (a=="n/a" || b=="n/a" || b==0) print "n/a"; else printf "%.2f", a/b }'
}
# verdict VALUE OP LIMIT — "met" or "missed" (OP is <= or >=).
verdict() {
  awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN{ if (v=="n/a") {print "not measured"; exit}
    ok = (op=="<=") ? (v+0 <= l+0) : (v+0 >= l+0); print ok ? "**met**" : "**missed**" }'
}

machine_line() {
  local cpu mem
  cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
  mem=$(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo)
  printf '%s cores (%s), %s RAM, %s, kernel %s' "$(nproc)" "$cpu" "$mem" \
    "$(. /etc/os-release && echo "$PRETTY_NAME")" "$(uname -r)"
}

# Load average now, and the other processes' CPU share: on a 2-core machine a
# concurrent test suite moves every number, so each section records it.
load_line() { printf 'load average %s' "$(cut -d' ' -f1-3 /proc/loadavg)"; }

itbackup_version() { "$ITBACKUP" --version 2>/dev/null | head -n1; }
# ITBACKUP_COMMIT names what a prebuilt ITBACKUP_BIN was built from.
itbackup_commit() {
  if [ -n "${ITBACKUP_BIN:-}" ]; then echo "${ITBACKUP_COMMIT:-prebuilt $ITBACKUP}"; return; fi
  local c dirty=""
  c=$(cd "$REPO_ROOT" && git rev-parse --short HEAD 2>/dev/null) || { echo unknown; return; }
  [ -z "$(cd "$REPO_ROOT" && git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ] || dirty="+uncommitted changes"
  echo "$c$dirty"
}

# update_section NAME FILE — replace the text between
# <!-- BEGIN NAME --> and <!-- END NAME --> in RESULTS.md with FILE's content
# (appending the section when it is not there yet).
update_section() {
  local name="$1" body="$2" tmp
  [ -f "$RESULTS" ] || printf '# itbackup benchmarks\n' >"$RESULTS"
  tmp="$(mktemp)"
  if grep -q "^<!-- BEGIN $name -->" "$RESULTS"; then
    awk -v name="$name" -v body="$body" '
      $0 == "<!-- BEGIN " name " -->" { print; while ((getline line < body) > 0) print line; skip=1; next }
      $0 == "<!-- END " name " -->" { skip=0 }
      !skip { print }' "$RESULTS" >"$tmp"
  else
    { cat "$RESULTS"; printf '\n<!-- BEGIN %s -->\n' "$name"; cat "$body"; printf '<!-- END %s -->\n' "$name"; } >"$tmp"
  fi
  mv "$tmp" "$RESULTS"
  chmod 0644 "$RESULTS"
}

# longest_down FILE — from a probe's "<epoch ms> ok|fail" lines: the longest
# run of failures in ms (first failure to the next success; "never came
# back" when the last probe failed), a tab, and the number of probes.
longest_down() {
  awk '$2=="fail" && !down {down=1; start=$1}
       $2=="ok" && down {down=0; if ($1-start > max) max=$1-start}
       END {if (down) printf "never came back\t%d\n", NR; else printf "%d\t%d\n", max, NR}' "$1"
}

# ensure_blob_dataset MB — database bench_blob on the bench PostgreSQL holding
# MB megabytes of random (incompressible) bytes, created once: the artifact
# is as large as the data (bench/remote.sh, bench/remote-throttle.sh).
ensure_blob_dataset() {
  local want=$(($1 * 1024)) have
  local psql=("$IT_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1)
  have=$("${psql[@]}" -d bench_blob -Atc 'SELECT count(*) FROM blob' 2>/dev/null || echo 0)
  [ "$have" != "$want" ] || return 0
  blog "creating the dataset: $1 MB of random bytes in database bench_blob"
  "${psql[@]}" -d postgres -c "DROP DATABASE IF EXISTS bench_blob WITH (FORCE)"
  "${psql[@]}" -d postgres -c "CREATE DATABASE bench_blob"
  "${psql[@]}" -d bench_blob -c "CREATE EXTENSION IF NOT EXISTS pgcrypto" \
    -c "CREATE TABLE blob AS SELECT g AS id, gen_random_bytes(1024) AS v FROM generate_series(1, $want) g"
}

# ensure_pgbench_database [DB] [SCALE] — a `pgbench -i -s SCALE` database DB
# (default bench, 50: 5,000,000 accounts rows, ~750 MB) on the bench
# PostgreSQL, made once and reused while its row count matches.
ensure_pgbench_database() {
  local db=${1:-bench} scale=${2:-50} have
  have=$(psql -X -Atqc "SELECT count(*) FROM pgbench_accounts" "$db" 2>/dev/null || echo 0)
  [ "$have" != "$((scale * 100000))" ] || return 0
  blog "creating $db (pgbench -i -s $scale)"
  psql -X -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" postgres
  psql -X -qc "CREATE DATABASE \"$db\"" postgres
  "$IT_PG_BIN/pgbench" -i -s "$scale" -q "$db" >&2
}

# neo4j_scalar CYPHER — the one value CYPHER returns, from the bench Neo4j
# (its HTTP API: no driver needed).
neo4j_scalar() {
  local body
  body=$(python3 -c 'import json,sys; print(json.dumps({"statements": [{"statement": sys.argv[1]}]}))' "$1")
  curl -fsS -u "$NEO4J_USER:$NEO4J_PASSWORD" -H 'Content-Type: application/json' -d "$body" \
    "http://127.0.0.1:$IT_TESTENV_NEO4J_HTTP_PORT/db/neo4j/tx/commit" |
    python3 -c 'import json,sys
r = json.load(sys.stdin)
sys.exit("neo4j: " + r["errors"][0]["message"]) if r["errors"] else print(r["results"][0]["data"][0]["row"][0])'
}
