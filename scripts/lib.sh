# Shared by the runbook's scripts: find (or build) the itbackup binary and run it.
# ITBACKUP_BIN overrides the lookup.
itbackup_exec() {
  local here repo bin
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  repo="$(dirname "$here")"
  bin="${ITBACKUP_BIN:-}"
  if [ -z "$bin" ]; then
    for candidate in "$repo/target/release/itbackup" "$repo/target/debug/itbackup"; do
      if [ -x "$candidate" ]; then bin="$candidate"; break; fi
    done
  fi
  if [ -z "$bin" ]; then
    if command -v itbackup >/dev/null 2>&1; then
      bin="$(command -v itbackup)"
    else
      echo "itbackup not built yet: building it (cargo build --release)…" >&2
      cargo build --release --quiet --manifest-path "$repo/Cargo.toml" >&2
      bin="$repo/target/release/itbackup"
    fi
  fi
  exec "$bin" "$@"
}
