#!/usr/bin/env bash
# Back up neo4j alone: scripts/backup_neo4j.sh --out DIR [--timestamp TS]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itbackup_exec backup --services neo4j "$@"
