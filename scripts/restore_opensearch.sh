#!/usr/bin/env bash
# Restore opensearch alone from a backup: scripts/restore_opensearch.sh --path DIR
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itbackup_exec restore --yes --services opensearch "$@"
