#!/usr/bin/env bash
# Restore neo4j alone from a backup: scripts/restore_neo4j.sh --path DIR
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itbackup_exec restore --yes --services neo4j "$@"
