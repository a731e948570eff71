# Shared by testenv/up, testenv/down and testenv/env. Sourced, never run.
#
# Layout: everything a server writes (installed distribution, data, logs, pid
# files) lives under $STATE (default <repo>/.testenv, gitignored), so
# `testenv/down && rm -rf .testenv` is a clean slate. Downloads stay in Maven's
# local repository (~/.m2), Debian's package cache and Go's module and build
# caches, so a second install is offline and quick.

set -euo pipefail

TESTENV_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$TESTENV_SRC/.." && pwd)"
# shellcheck source=versions
source "$TESTENV_SRC/versions"

STATE="${IT_TESTENV_DIR:-$REPO_ROOT/$PROFILE_STATE}"
JAVA_HOME="${IT_TESTENV_JAVA_HOME:-${JAVA_HOME:-/usr/lib/jvm/java-17-openjdk-amd64}}"
JAVA="$JAVA_HOME/bin/java"
ALL_SERVICES=(postgres opensearch neo4j s3)

log() { printf 'testenv: %s\n' "$*" >&2; }
die() { printf 'testenv: error: %s\n' "$*" >&2; exit 1; }

# Run a command as USER: through runuser when we are root, directly otherwise
# (a developer running testenv as themselves owns every file already).
as_user() {
  local user="$1"; shift
  if [ "$(id -u)" -eq 0 ]; then runuser -u "$user" -- "$@"; else "$@"; fi
}

# The unprivileged user a server runs as when testenv runs as root.
service_user() {
  if [ "$(id -u)" -ne 0 ]; then id -un; else echo "$1"; fi
}

ensure_system_user() {
  local user="$1"
  [ "$(id -u)" -eq 0 ] || return 0
  id "$user" >/dev/null 2>&1 && return 0
  log "creating system user $user"
  useradd --system --no-create-home --shell /usr/sbin/nologin "$user"
}

# Servers run as unprivileged users, which must be able to walk down to $STATE.
ensure_reachable_by() {
  local user="$1" dir="$2"
  [ "$(id -u)" -eq 0 ] || return 0
  if ! runuser -u "$user" -- test -x "$dir"; then
    die "user $user cannot reach $dir (a parent directory is not world-searchable); set IT_TESTENV_DIR to a directory under /var/tmp, for example"
  fi
}

# What the process named by PIDFILE is, printed as one word:
#   ours     its command line mentions MARKER (our install directory);
#   gone     no such process, or a zombie waiting to be reaped;
#   unknown  alive, but its command line does not mention MARKER.
# "unknown" is normal for a moment after a launch: `cmd &` puts the pid of a
# fork of this shell in $!, and until that fork has passed through execve its
# /proc cmdline reads as this shell's ("bash testenv/up") and, inside execve, as
# empty (measured: 45 of 300 reads right after `env … setsid sleep &`). It is
# also what a stale pid reused by another program looks like, which must never
# be touched. The command line is read with bash's own mapfile, not through a
# pipe: `tr | grep -q` under pipefail failed whenever tr was still writing a
# long (Java) command line when grep had matched and exited.
pid_state() {
  local pidfile="$1" marker="$2" pid="" stat="" args=()
  # stderr is redirected before the file: the file may vanish in between.
  [ -s "$pidfile" ] && read -r pid 2>/dev/null <"$pidfile" || true
  [[ "$pid" =~ ^[0-9]+$ ]] || { echo gone; return 0; }
  read -r stat 2>/dev/null <"/proc/$pid/stat" || { echo gone; return 0; }
  # Field 3, after "pid (comm) "; comm may itself hold spaces and parentheses.
  stat="${stat##*) }"
  [ "${stat:0:1}" != Z ] || { echo gone; return 0; }
  mapfile -d '' -t args 2>/dev/null <"/proc/$pid/cmdline" || true
  if [[ " ${args[*]} " == *"$marker"* ]]; then echo ours; else echo unknown; fi
}

# A pid file names a live process of ours only when the process's command line
# mentions MARKER: a stale pid reused by another program is never touched.
pid_alive() {
  [ "$(pid_state "$1" "$2")" = ours ]
}

# Stop the process named by PIDFILE (TERM, then KILL after GRACE seconds).
stop_pidfile() {
  local name="$1" pidfile="$2" marker="$3" grace="${4:-60}" pid i
  if ! pid_alive "$pidfile" "$marker"; then
    rm -f "$pidfile"
    return 0
  fi
  pid="$(head -n1 "$pidfile")"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 5; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) did not stop in ${grace}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$pidfile"
}

# Run one server's start or stop (a function) holding that server's lock, so
# that two never overlap. They did: a backup killed with SIGKILL while its
# start command ran leaves that command running, and the rerun's own start
# stopped the half-started server and launched another, which then lost its
# ports to the first one's launch ("Address already in use") and the server
# stayed down. The lock is on fd 8, which every server launch closes: a
# server that inherited it would hold the lock for its whole life.
LOCK_TIMEOUT="${IT_TESTENV_LOCK_TIMEOUT:-600}"
with_server_lock() {
  local name="$1"; shift
  mkdir -p "$STATE/locks"
  exec 8>"$STATE/locks/$name.lock"
  if ! flock -n 8; then
    log "$name: another testenv start or stop of it is running; waiting for it (up to ${LOCK_TIMEOUT}s)"
    flock -w "$LOCK_TIMEOUT" 8 || die "$name: another testenv start or stop still holds $STATE/locks/$name.lock after ${LOCK_TIMEOUT}s"
  fi
  "$@"
  exec 8>&-
}

# Fails when something that is not ours already listens on PORT.
require_free_port() {
  local name="$1" port="$2"
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "$name: port $port on 127.0.0.1 is already taken by a process testenv did not start: $(port_holder "$port")"
  fi
}

# Who listens on PORT, as `ss` tells it (for error messages).
port_holder() {
  ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*users:((\(.*\)))/\1/p' | head -n1 || true
}

# Wait until CHECK (a command) succeeds; on timeout print the log tail, stop
# what we started and fail. The server counts as exited only when its process
# is gone, or when its pid has stayed someone else's (not naming MARKER) over
# UNKNOWN_LIMIT checks a second apart: a launch still inside fork/exec reads as
# "unknown" for a moment and is not a failure (see pid_state).
wait_until() {
  local name="$1" logfile="$2" pidfile="$3" marker="$4"; shift 4
  local deadline=$((SECONDS + START_TIMEOUT)) unknown=0 state
  while ! "$@" >/dev/null 2>&1; do
    # A daemon may write its pid file a moment after its launcher returns.
    if [ -n "$pidfile" ] && [ -s "$pidfile" ]; then
      state="$(pid_state "$pidfile" "$marker")"
      case "$state" in
        gone) fail_start "$name" "$logfile" "the server process (pid $(head -n1 "$pidfile")) exited" ;;
        unknown)
          unknown=$((unknown + 1))
          ((unknown < UNKNOWN_LIMIT)) || fail_start "$name" "$logfile" \
            "pid $(head -n1 "$pidfile") has not named $marker in its command line over $unknown checks: it is not the server"
          ;;
        *) unknown=0 ;;
      esac
    fi
    if ((SECONDS >= deadline)); then
      [ -n "$pidfile" ] && stop_pidfile "$name" "$pidfile" "$marker" 10
      fail_start "$name" "$logfile" "no answer after ${START_TIMEOUT}s"
    fi
    sleep 1
  done
}
UNKNOWN_LIMIT=5

# LOGFILES is one path or several separated by ':'; each non-empty one is shown.
fail_start() {
  local name="$1" logfiles="$2" why="$3" f
  printf 'testenv: error: %s failed to start: %s.\n' "$name" "$why" >&2
  IFS=':' read -r -a files <<<"$logfiles"
  for f in "${files[@]}"; do
    [ -s "$f" ] || continue
    printf 'testenv: last lines of %s:\n' "$f" >&2
    tail -n 30 "$f" | sed 's/^/  | /' >&2
  done
  exit 1
}

# Maven, its output kept in $STATE/maven.log and shown only when it fails.
mvn_quiet() {
  mkdir -p "$STATE"
  if ! mvn -B -Dstyle.color=never "$@" >"$STATE/maven.log" 2>&1; then
    grep -E 'ERROR|BUILD' "$STATE/maven.log" | tail -n 20 | sed 's/^/  | /' >&2
    return 1
  fi
}

# Resolve Maven coordinates into the local repository (~/.m2) and print the file.
maven_fetch() {
  local group="$1" artifact="$2" version="$3" packaging="$4"
  local file="$HOME/.m2/repository/${group//.//}/$artifact/$version/$artifact-$version.$packaging"
  if [ ! -s "$file" ]; then
    log "fetching $group:$artifact:$version ($packaging) with Maven"
    mvn_quiet dependency:get -Dtransitive=false -Dartifact="$group:$artifact:$version:$packaging" \
      || die "Maven could not fetch $group:$artifact:$version:$packaging"
  fi
  printf '%s\n' "$file"
}

# maven_write_pom DIR GROUP:ARTIFACT:VERSION... — a pom in DIR whose only
# content is those dependencies (its artifactId is DIR's name).
maven_write_pom() {
  local dir="$1" coord group artifact version; shift
  mkdir -p "$dir"
  {
    printf '<project xmlns="http://maven.apache.org/POM/4.0.0">\n  <modelVersion>4.0.0</modelVersion>\n'
    printf '  <groupId>itbackup.testenv</groupId>\n  <artifactId>%s</artifactId>\n  <version>1</version>\n' "$(basename "$dir")"
    printf '  <dependencies>\n'
    for coord in "$@"; do
      IFS=: read -r group artifact version <<<"$coord"
      printf '    <dependency><groupId>%s</groupId><artifactId>%s</artifactId><version>%s</version></dependency>\n' \
        "$group" "$artifact" "$version"
    done
    printf '  </dependencies>\n</project>\n'
  } >"$dir/pom.xml"
}

# Copy the runtime dependency closure of the pom in POM_DIR into OUT.
maven_copy_deps() {
  local pom_dir="$1" out="$2"; shift 2
  mvn_quiet -f "$pom_dir/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$out" "$@" \
    || die "Maven could not resolve the dependencies in $pom_dir/pom.xml"
}

load_services() {
  local svc
  for svc in "${ALL_SERVICES[@]}"; do
    # shellcheck source=/dev/null
    source "$TESTENV_SRC/$svc.sh"
  done
}

# Validate service names given on the command line (none = all).
select_services() {
  local svc known
  if [ "$#" -eq 0 ]; then
    printf '%s\n' "${ALL_SERVICES[@]}"
    return
  fi
  for svc in "$@"; do
    known=0
    for k in "${ALL_SERVICES[@]}"; do [ "$k" = "$svc" ] && known=1; done
    [ "$known" -eq 1 ] || { echo "testenv: unknown service '$svc' (valid: ${ALL_SERVICES[*]})" >&2; exit 2; }
    printf '%s\n' "$svc"
  done
}
