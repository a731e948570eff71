#!/usr/bin/env bash
# The runbook's restore entry point: scripts/restore.sh --path DIR [--manifest FILE] [--services LIST]
# Like the runbook's script it does not ask for confirmation (it passes --yes);
# every artifact is still verified before any service is touched.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itbackup_exec restore --yes "$@"
