#!/usr/bin/env bash
# Back up opensearch alone: scripts/backup_opensearch.sh --out DIR [--timestamp TS]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itbackup_exec backup --services opensearch "$@"
