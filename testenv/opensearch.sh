# OpenSearch from Maven Central's integ-test-zip distribution (no security
# plugin), run by an unprivileged system user. That zip carries only the
# transport module, so the modules a real stack relies on for ingest pipelines
# and analyzers (ingest-common, analysis-common) are added from their Maven
# artifacts, as the full distribution ships them.

OS_DIR="$STATE/opensearch"
OS_HOME="$OS_DIR/home"
OS_CONF="$OS_DIR/config"
OS_DATA="$OS_DIR/data"
OS_REPO="$OS_DIR/data/snapshots"
OS_LOGS="$OS_DIR/logs"
OS_PIDFILE="$OS_DIR/run/opensearch.pid"
# Console output of the launcher, and the node's own log (named after the cluster).
OS_CONSOLE="$OS_LOGS/console.log"
OS_LOGFILES="$OS_CONSOLE:$OS_LOGS/itbackup-testenv.log"
OS_URL="http://127.0.0.1:$OPENSEARCH_PORT"
# module name:plugin class, added to the integ-test distribution.
OS_EXTRA_MODULES=(
  "analysis-common:org.opensearch.analysis.common.CommonAnalysisPlugin"
  "ingest-common:org.opensearch.ingest.common.IngestCommonPlugin"
)

opensearch_add_module() {
  local name="$1" class="$2"
  local build="$OS_DIR/build/$name" dest="$OS_HOME/modules/$name"
  [ -s "$dest/plugin-descriptor.properties" ] && return 0
  mkdir -p "$build" "$dest.tmp"
  maven_write_pom "$build" "org.opensearch.plugin:$name:$OPENSEARCH_VERSION"
  maven_copy_deps "$build" "$build/jars"
  # Keep the module's own jars: whatever the server's lib/ already has is dropped.
  local jar base
  for jar in "$build"/jars/*.jar; do
    base="$(basename "$jar")"
    [ -e "$OS_HOME/lib/$base" ] || cp "$jar" "$dest.tmp/"
  done
  cat >"$dest.tmp/plugin-descriptor.properties" <<PROPS
description=$name module (added by itbackup testenv)
version=$OPENSEARCH_VERSION
name=$name
classname=$class
java.version=11
opensearch.version=$OPENSEARCH_VERSION
extended.plugins=
has.native.controller=false
custom.foldername=
PROPS
  mv "$dest.tmp" "$dest"
}

opensearch_install() {
  if [ ! -x "$OS_HOME/bin/opensearch" ]; then
    local zip
    zip="$(maven_fetch org.opensearch.distribution.integ-test-zip opensearch "$OPENSEARCH_VERSION" zip)"
    log "unpacking OpenSearch $OPENSEARCH_VERSION into $OS_HOME"
    rm -rf "$OS_DIR/unpack" "$OS_HOME"
    mkdir -p "$OS_DIR/unpack"
    unzip -q "$zip" -d "$OS_DIR/unpack"
    mv "$OS_DIR/unpack/opensearch-$OPENSEARCH_VERSION" "$OS_HOME"
    rm -rf "$OS_DIR/unpack"
  fi
  local entry
  for entry in "${OS_EXTRA_MODULES[@]}"; do
    opensearch_add_module "${entry%%:*}" "${entry#*:}"
  done
}

opensearch_configure() {
  local user="$1"
  mkdir -p "$OS_CONF" "$OS_DATA" "$OS_REPO" "$OS_LOGS" "$OS_DIR/run"
  if [ ! -s "$OS_CONF/jvm.options" ]; then
    cp -r "$OS_HOME/config/." "$OS_CONF/"
    # The shipped options write GC logs, heap dumps and crash files relative to
    # the working directory; point them at this node's own directories.
    sed -i -e "s#file=logs/#file=$OS_LOGS/#" -e "s#HeapDumpPath=data#HeapDumpPath=$OS_DATA#" \
      -e "s#ErrorFile=logs/#ErrorFile=$OS_LOGS/#" "$OS_CONF/jvm.options"
  fi
  cat >"$OS_CONF/opensearch.yml" <<YML
# Written by testenv/up: single node on loopback, snapshots allowed under path.repo.
cluster.name: itbackup-testenv
node.name: testenv-node
discovery.type: single-node
network.host: 127.0.0.1
http.port: $OPENSEARCH_PORT
transport.port: $((OPENSEARCH_PORT + 100))-$((OPENSEARCH_PORT + 199))
path.data: $OS_DATA
path.logs: $OS_LOGS
path.repo: ["$OS_REPO"]
cluster.routing.allocation.disk.threshold_enabled: false
action.destructive_requires_name: false
YML
  if [ "$(id -u)" -eq 0 ]; then
    chown -R "$user" "$OS_CONF" "$OS_DATA" "$OS_LOGS" "$OS_DIR/run"
  fi
  ensure_reachable_by "$user" "$OS_HOME/bin"
}

opensearch_answers() {
  curl -fsS --max-time 5 "$OS_URL/_cluster/health?wait_for_status=yellow&timeout=4s" >/dev/null
}

opensearch_start() {
  local user; user="$(service_user "$OPENSEARCH_OS_USER")"
  if pid_alive "$OS_PIDFILE" "$OS_HOME" && opensearch_answers; then return 0; fi
  opensearch_install
  ensure_system_user "$user"
  opensearch_configure "$user"
  stop_pidfile opensearch "$OS_PIDFILE" "$OS_HOME" 30
  require_free_port opensearch "$OPENSEARCH_PORT"
  : >"$OS_CONSOLE"
  as_user "$user" env JAVA_HOME="$JAVA_HOME" OPENSEARCH_JAVA_HOME="$JAVA_HOME" \
    OPENSEARCH_PATH_CONF="$OS_CONF" \
    OPENSEARCH_JAVA_OPTS="-Xms$OPENSEARCH_HEAP -Xmx$OPENSEARCH_HEAP" \
    "$OS_HOME/bin/opensearch" -d -p "$OS_PIDFILE" </dev/null >>"$OS_CONSOLE" 2>&1 8>&- \
    || fail_start opensearch "$OS_LOGFILES" "bin/opensearch -d failed"
  wait_until opensearch "$OS_LOGFILES" "$OS_PIDFILE" "$OS_HOME" opensearch_answers
}

opensearch_stop() {
  stop_pidfile opensearch "$OS_PIDFILE" "$OS_HOME" 60
}

opensearch_describe() {
  local version
  version="$(curl -fsS --max-time 5 "$OS_URL/" | sed -n 's/.*"number" *: *"\([^"]*\)".*/\1/p' | head -n1)"
  printf '%-10s %-22s %s\n' opensearch "OpenSearch $version" "$OS_URL"
}

opensearch_env() {
  cat <<ENV
export OPENSEARCH_URL=$OS_URL
export IT_OPENSEARCH_HOME=$OS_HOME
export IT_OPENSEARCH_DATA=$OS_DATA
export IT_OPENSEARCH_REPO=$OS_REPO
export IT_OPENSEARCH_USER=$(service_user "$OPENSEARCH_OS_USER")
ENV
}
