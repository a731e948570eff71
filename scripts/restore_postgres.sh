#!/usr/bin/env bash
# Restore postgres alone from a backup: scripts/restore_postgres.sh --path DIR
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itbackup_exec restore --yes --services postgres "$@"
