# Neo4j Community from Maven Central. Neo4j publishes no standalone tarball
# there, so testenv assembles one: the server's runtime dependency closure in
# lib/, a neo4j.conf, and two launchers — the server's own entry point
# (org.neo4j.server.CommunityEntryPoint) and neo4j-admin (org.neo4j.cli.AdminTool),
# the same classes bin/neo4j and bin/neo4j-admin start in the tarball.

NEO4J_DIR="$STATE/neo4j"
NEO4J_HOME_DIR="$NEO4J_DIR/home"
NEO4J_CONF_DIR="$NEO4J_DIR/conf"
NEO4J_DATA_DIR="$NEO4J_DIR/data"
NEO4J_LOGS="$NEO4J_DIR/logs"
NEO4J_PIDFILE="$NEO4J_DIR/run/neo4j.pid"
NEO4J_CONSOLE="$NEO4J_LOGS/console.log"
NEO4J_LOGFILES="$NEO4J_CONSOLE:$NEO4J_LOGS/neo4j.log:$NEO4J_LOGS/debug.log"
NEO4J_ADMIN_BIN="$NEO4J_HOME_DIR/bin/neo4j-admin"

# neo4j-admin's launcher, rewritten on every install check (it is tiny) so a
# change here reaches assembled homes. Its heap is HEAP_SIZE, as the tarball's
# bin/neo4j-admin reads it: 256m unless told (an import of a million-node
# graph needs about 1g).
neo4j_admin_launcher() {
  mkdir -p "$NEO4J_HOME_DIR/bin"
  cat >"$NEO4J_ADMIN_BIN.new" <<SH
#!/bin/sh
# neo4j-admin of the testenv Neo4j (the class bin/neo4j-admin runs in the tarball).
NEO4J_HOME="\${NEO4J_HOME:-$NEO4J_HOME_DIR}"
NEO4J_CONF="\${NEO4J_CONF:-$NEO4J_CONF_DIR}"
export NEO4J_HOME NEO4J_CONF
exec "$JAVA" -Xmx"\${HEAP_SIZE:-256m}" -cp "\$NEO4J_HOME/lib/*" org.neo4j.cli.AdminTool "\$@"
SH
  chmod +x "$NEO4J_ADMIN_BIN.new"
  mv "$NEO4J_ADMIN_BIN.new" "$NEO4J_ADMIN_BIN"
}

neo4j_install() {
  if [ -s "$NEO4J_HOME_DIR/lib/.complete" ]; then
    neo4j_admin_launcher
    return 0
  fi
  local build="$NEO4J_DIR/build"
  maven_write_pom "$build" "org.neo4j.app:neo4j-server:$NEO4J_VERSION" "org.neo4j:neo4j:$NEO4J_VERSION"
  log "assembling Neo4j $NEO4J_VERSION Community from Maven artifacts into $NEO4J_HOME_DIR"
  rm -rf "$NEO4J_HOME_DIR"
  mkdir -p "$NEO4J_HOME_DIR/bin"
  maven_copy_deps "$build" "$NEO4J_HOME_DIR/lib"
  neo4j_admin_launcher
  date >"$NEO4J_HOME_DIR/lib/.complete"
}

# APOC Core of the same version as the server, with the libraries it needs
# that the server does not already have (a second copy of a library in lib/
# and plugins/ would put two versions of its classes on the classpath).
neo4j_install_apoc() {
  local plugins="$NEO4J_DIR/plugins" build="$NEO4J_DIR/build-apoc" jar base
  # apoc-common and Guava (which apoc.import.json needs) are inside the
  # tarball's plugin jar, separate artifacts on Maven Central.
  maven_write_pom "$build" "org.neo4j.procedure:apoc-core:$NEO4J_VERSION" \
    "org.neo4j.procedure:apoc-common:$NEO4J_VERSION" "com.google.guava:guava:33.5.0-jre"
  # Installed from this very pom already: nothing to do.
  cmp -s "$build/pom.xml" "$plugins/.apoc-pom.xml" && return 0
  log "installing APOC Core $NEO4J_VERSION from Maven Central into $plugins"
  rm -rf "$build/jars" && mkdir -p "$build/jars" "$plugins"
  maven_copy_deps "$build" "$build/jars"
  rm -f "$plugins"/*.jar
  for jar in "$build/jars"/*.jar; do
    base=$(basename "$jar" | sed -E 's/-[0-9][^-]*(-[A-Za-z0-9.]+)?\.jar$//')
    compgen -G "$NEO4J_HOME_DIR/lib/$base-[0-9]*.jar" >/dev/null || cp "$jar" "$plugins/"
  done
  cp "$build/pom.xml" "$plugins/.apoc-pom.xml"
}

neo4j_configure() {
  mkdir -p "$NEO4J_CONF_DIR" "$NEO4J_DATA_DIR" "$NEO4J_LOGS" "$NEO4J_DIR/run" "$NEO4J_DIR/import" "$NEO4J_DIR/plugins"
  cat >"$NEO4J_CONF_DIR/neo4j.conf" <<CONF
# Written by testenv/up.
server.default_listen_address=127.0.0.1
server.default_advertised_address=127.0.0.1
server.bolt.listen_address=:$NEO4J_BOLT_PORT
server.http.listen_address=:$NEO4J_HTTP_PORT
server.https.enabled=false
server.directories.data=$NEO4J_DATA_DIR
server.directories.logs=$NEO4J_LOGS
server.directories.run=$NEO4J_DIR/run
server.directories.import=$NEO4J_DIR/import
server.directories.plugins=$NEO4J_DIR/plugins
server.memory.heap.initial_size=$NEO4J_HEAP
server.memory.heap.max_size=$NEO4J_HEAP
server.memory.pagecache.size=$NEO4J_PAGECACHE
dbms.security.auth_enabled=true
# Test servers never need old transaction logs. The default keeps two days of
# them, which repeated million-node drills turned into 47 GB (a full disk).
db.tx_log.rotation.retention_policy=512M size
# A stop waited 10 s for Bolt connections and its network threads to wind
# down (5 s each by default), on a test server nobody else connects to; the
# tests stop and start it dozens of times (the dump method).
internal.server.bolt.connection_shutdown_wait_time=0s
internal.server.bolt.thread_pool_shutdown_wait_time=0s
internal.dbms.bolt.netty_server_shutdown_quiet_period=0
CONF
  if [ "$NEO4J_APOC" = 1 ]; then
    neo4j_install_apoc
    printf 'dbms.security.procedures.unrestricted=apoc.*\n' >>"$NEO4J_CONF_DIR/neo4j.conf"
    # Files are read and written in the import directory only.
    printf 'apoc.export.file.enabled=true\napoc.import.file.enabled=true\n' >"$NEO4J_CONF_DIR/apoc.conf"
  else
    rm -f "$NEO4J_CONF_DIR/apoc.conf" "$NEO4J_DIR/plugins"/*.jar "$NEO4J_DIR/plugins"/.apoc-*
  fi
  if [ ! -e "$NEO4J_DATA_DIR/dbms/auth.ini" ]; then
    "$NEO4J_ADMIN_BIN" dbms set-initial-password "$NEO4J_PASSWORD" >"$NEO4J_LOGS/set-password.log" 2>&1 \
      || fail_start neo4j "$NEO4J_LOGS/set-password.log" "neo4j-admin dbms set-initial-password failed"
  fi
}

# One statement over HTTP against database $1; prints the answer.
neo4j_http() {
  curl -fsS --max-time 5 -u "$NEO4J_USER:$NEO4J_PASSWORD" -H 'Content-Type: application/json' \
    -d "{\"statements\":[{\"statement\":\"$2\"}]}" \
    "http://127.0.0.1:$NEO4J_HTTP_PORT/db/$1/tx/commit"
}

# The server answers: its system database runs a query. The user database is
# not asked here: a server whose `neo4j` database failed to start (a store a
# killed `neo4j-admin database load` left half-written) is still up, as
# `systemctl start` or `docker compose start` would leave it, and a restore of
# a dump is what repairs that database.
neo4j_answers() {
  neo4j_http system "SHOW DATABASE system YIELD name" | grep -q '"errors":\[\]'
}

# The status of the user database `neo4j` (online, offline, starting, ...).
neo4j_database_status() {
  neo4j_http system "SHOW DATABASE neo4j YIELD currentStatus, statusMessage" \
    | sed -n 's/.*"row":\["\([a-z]*\)",\("[^"]*"\).*/\1 \2/p'
}

# After the server answers, wait until its user database has started or
# failed to; a failed one is named (with Neo4j's reason), not fatal.
neo4j_wait_for_database() {
  local deadline=$((SECONDS + START_TIMEOUT)) status
  while ((SECONDS < deadline)); do
    # A slow answer (curl's 5 s) is asked again, not fatal under `set -e`.
    status="$(neo4j_database_status || true)"
    case "$status" in
      online*) return 0 ;;
      "" | starting* | *' ""') sleep 1 ;;
      *)
        printf 'testenv: warning: neo4j is up but its database neo4j is %s; a restore of a dump (itbackup restore --services neo4j) replaces it, or remove %s for an empty one\n' \
          "$status" "$NEO4J_DATA_DIR" >&2
        return 0
        ;;
    esac
  done
  printf 'testenv: warning: neo4j is up but its database neo4j has not started in %ss (%s)\n' "$START_TIMEOUT" "$status" >&2
}

neo4j_start() {
  if pid_alive "$NEO4J_PIDFILE" "$NEO4J_HOME_DIR" && neo4j_answers; then return 0; fi
  neo4j_install
  neo4j_configure
  stop_pidfile neo4j "$NEO4J_PIDFILE" "$NEO4J_HOME_DIR" 30
  require_free_port neo4j "$NEO4J_BOLT_PORT"
  require_free_port neo4j "$NEO4J_HTTP_PORT"
  : >"$NEO4J_CONSOLE"
  # setsid: the server outlives this script and the caller's terminal or pipe.
  # plugins/ is on the class path as bin/neo4j puts it there: APOC's extensions
  # (its configuration component) are found only that way.
  NEO4J_HOME="$NEO4J_HOME_DIR" NEO4J_CONF="$NEO4J_CONF_DIR" setsid "$JAVA" \
    -Xms"$NEO4J_HEAP" -Xmx"$NEO4J_HEAP" -XX:+ExitOnOutOfMemoryError \
    -cp "$NEO4J_HOME_DIR/lib/*:$NEO4J_DIR/plugins/*" org.neo4j.server.CommunityEntryPoint \
    --home-dir="$NEO4J_HOME_DIR" --config-dir="$NEO4J_CONF_DIR" \
    </dev/null >>"$NEO4J_CONSOLE" 2>&1 8>&- &
  echo $! >"$NEO4J_PIDFILE"
  wait_until neo4j "$NEO4J_LOGFILES" "$NEO4J_PIDFILE" "$NEO4J_HOME_DIR" neo4j_answers
  neo4j_wait_for_database
}

neo4j_stop() {
  stop_pidfile neo4j "$NEO4J_PIDFILE" "$NEO4J_HOME_DIR" 60
}

neo4j_describe() {
  local version
  version="$(curl -fsS --max-time 5 "http://127.0.0.1:$NEO4J_HTTP_PORT/" | sed -n 's/.*"neo4j_version" *: *"\([^"]*\)".*/\1/p')"
  printf '%-10s %-22s %s\n' neo4j "Neo4j $version Community" "bolt://127.0.0.1:$NEO4J_BOLT_PORT"
}

# The command that stops or starts this very stack (its directory and ports).
neo4j_lifecycle() {
  printf 'IT_TESTENV_DIR=%s IT_TESTENV_NEO4J_BOLT_PORT=%s IT_TESTENV_NEO4J_HTTP_PORT=%s IT_TESTENV_NEO4J_HEAP=%s IT_TESTENV_NEO4J_PAGECACHE=%s IT_TESTENV_NEO4J_APOC=%s %s/%s neo4j' \
    "$STATE" "$NEO4J_BOLT_PORT" "$NEO4J_HTTP_PORT" "$NEO4J_HEAP" "$NEO4J_PAGECACHE" "$NEO4J_APOC" "$TESTENV_SRC" "$1"
}

neo4j_env() {
  cat <<ENV
export NEO4J_URI=bolt://127.0.0.1:$NEO4J_BOLT_PORT
export NEO4J_USER=$NEO4J_USER
export NEO4J_PASSWORD=$NEO4J_PASSWORD
export NEO4J_HOME=$NEO4J_HOME_DIR
export NEO4J_CONF=$NEO4J_CONF_DIR
export IT_NEO4J_DATA=$NEO4J_DATA_DIR
export IT_NEO4J_ADMIN=$NEO4J_ADMIN_BIN
export IT_NEO4J_STOP_CMD="$(neo4j_lifecycle down)"
export IT_NEO4J_START_CMD="$(neo4j_lifecycle up)"
ENV
}
