#!/usr/bin/env bash
# Back up postgres alone: scripts/backup_postgres.sh --out DIR [--timestamp TS]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itbackup_exec backup --services postgres "$@"
