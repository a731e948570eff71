#!/usr/bin/env bash
# The runbook's recovery rehearsal: Populate → Backup → Wipe → Restore → Verify.
#
#   ./tests/backup_restore_synthetic.sh [itbackup drill options, e.g. --scale 100000 --yes]
#
# Runs `itbackup drill` against the stack in the environment (PGHOST…,
# OPENSEARCH_URL, NEO4J_URI…) and writes synthetic-validation.json — the final
# counts (postgres_rows, neo4j_nodes, opensearch_doc), digests, timings, the
# measured RTO and "ok" — to $SYNTHETIC_VALIDATION_FILE (default
# artifacts/synthetic-validation.json); the backup directory keeps a copy.
# Exit status: 0 when the drill passed, 1 when anything differed, 2 on bad usage.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/lib.sh"
out="${SYNTHETIC_VALIDATION_FILE:-$repo/artifacts/synthetic-validation.json}"
mkdir -p "$(dirname "$out")"
tmp="$(mktemp "$(dirname "$out")/.synthetic-validation.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
status=0
(itbackup_exec --json drill "$@") >"$tmp" || status=$?
if [ -s "$tmp" ]; then
  mv "$tmp" "$out"
  echo "synthetic validation written to $out" >&2
fi
exit "$status"
