#!/usr/bin/env bash
# The runbook's backup entry point: scripts/backup.sh --out DIR [--services LIST] [--timestamp TS]
# All options are itbackup's (`itbackup backup --help`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itbackup_exec backup "$@"
