# OpenSearch from Maven Central's integ-test-zip distribution (no security
# plugin), run by an unprivileged system user. That zip carries only the
# transport module, so the modules a real stack relies on for ingest pipelines
# and analyzers (ingest-common, analysis-common) are added from their Maven
# artifacts, as the full distribution ships them.
#
# Two modes, chosen by IT_TESTENV_OPENSEARCH_NODES (OPENSEARCH_NODES, testenv/versions):
# - 1 (the default): one node, `discovery.type: single-node`, in $OS_DIR's
#   config/, data/, logs/ and run/; what the suite and CI run against.
# - N from 2 to 9: N nodes of one cluster, node i in $OS_CLUSTER_DIR/node-i with
#   HTTP on OPENSEARCH_PORT+i-1 and transport on OPENSEARCH_PORT+100+i-1, and
#   one path.repo, $OS_CLUSTER_DIR/snapshots, shared by all (a shared
#   filesystem, as the `fs` repository type requires, since they share a host).
#   Its data is apart from the single node's: switching modes loses neither.
# Both modes share the installation ($OS_HOME) and HTTP port OPENSEARCH_PORT,
# so `up` in one mode first stops whatever runs of the other.

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
OS_CLUSTER_DIR="$OS_DIR/cluster"
OS_CLUSTER_REPO="$OS_CLUSTER_DIR/snapshots"
# The node count `up` last started a cluster with (read by testenv/opensearch-node).
OS_CLUSTER_COUNT_FILE="$OS_CLUSTER_DIR/nodes"
OS_CLUSTER_NAME=itbackup-testenv-cluster
OS_MAX_NODES=9
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

opensearch_single_start() {
  local user; user="$(service_user "$OPENSEARCH_OS_USER")"
  if pid_alive "$OS_PIDFILE" "$OS_HOME" && opensearch_answers; then return 0; fi
  opensearch_cluster_stop_all "a single node is asked for"
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

# ---- Several nodes (OPENSEARCH_NODES > 1) ----------------------------------

opensearch_check_node_count() {
  [[ "$1" =~ ^[1-9]$ ]] && [ "$1" -le "$OS_MAX_NODES" ] \
    || die "opensearch: IT_TESTENV_OPENSEARCH_NODES must be a number from 1 to $OS_MAX_NODES, not '$1'"
}

# Node I's directories, ports and URL, in NODE_* variables.
opensearch_node_vars() {
  local i="$1"
  NODE_NAME="testenv-node-$i"
  NODE_DIR="$OS_CLUSTER_DIR/node-$i"
  NODE_CONF="$NODE_DIR/config"
  NODE_DATA="$NODE_DIR/data"
  NODE_LOGS="$NODE_DIR/logs"
  NODE_PIDFILE="$NODE_DIR/run/opensearch.pid"
  NODE_CONSOLE="$NODE_LOGS/console.log"
  NODE_LOGFILES="$NODE_CONSOLE:$NODE_LOGS/$OS_CLUSTER_NAME.log"
  NODE_HTTP_PORT=$((OPENSEARCH_PORT + i - 1))
  NODE_TRANSPORT_PORT=$((OPENSEARCH_PORT + 100 + i - 1))
  NODE_URL="http://127.0.0.1:$NODE_HTTP_PORT"
}

# The URLs of nodes 1..N, comma-separated.
opensearch_node_urls() {
  local n="$1" i urls=()
  for ((i = 1; i <= n; i++)); do
    opensearch_node_vars "$i"
    urls+=("$NODE_URL")
  done
  (IFS=,; printf '%s\n' "${urls[*]}")
}

# Node I's configuration, for a cluster of N nodes. Every node lists every
# node's transport port as a seed and every node as an initial cluster
# manager: the first N nodes started form the cluster (a majority of them
# elects), later starts rejoin it from the state in their data directory.
opensearch_node_configure() {
  local i="$1" n="$2" user="$3" j seeds=() managers=()
  opensearch_node_vars "$i"
  for ((j = 1; j <= n; j++)); do
    seeds+=("\"127.0.0.1:$((OPENSEARCH_PORT + 100 + j - 1))\"")
    managers+=("\"testenv-node-$j\"")
  done
  mkdir -p "$NODE_CONF" "$NODE_DATA" "$NODE_LOGS" "$NODE_DIR/run" "$OS_CLUSTER_REPO"
  if [ ! -s "$NODE_CONF/jvm.options" ]; then
    cp -r "$OS_HOME/config/." "$NODE_CONF/"
    sed -i -e "s#file=logs/#file=$NODE_LOGS/#" -e "s#HeapDumpPath=data#HeapDumpPath=$NODE_DATA#" \
      -e "s#ErrorFile=logs/#ErrorFile=$NODE_LOGS/#" "$NODE_CONF/jvm.options"
  fi
  cat >"$NODE_CONF/opensearch.yml" <<YML
# Written by testenv: node $i of a $n-node cluster on loopback; path.repo is
# one directory shared by every node.
cluster.name: $OS_CLUSTER_NAME
node.name: $NODE_NAME
network.host: 127.0.0.1
http.port: $NODE_HTTP_PORT
transport.port: $NODE_TRANSPORT_PORT
discovery.seed_hosts: [$(IFS=,; echo "${seeds[*]}")]
cluster.initial_cluster_manager_nodes: [$(IFS=,; echo "${managers[*]}")]
path.data: $NODE_DATA
path.logs: $NODE_LOGS
path.repo: ["$OS_CLUSTER_REPO"]
cluster.routing.allocation.disk.threshold_enabled: false
action.destructive_requires_name: false
YML
  if [ "$(id -u)" -eq 0 ]; then
    chown -R "$user" "$NODE_CONF" "$NODE_DATA" "$NODE_LOGS" "$NODE_DIR/run" "$OS_CLUSTER_REPO"
  fi
}

# Launch node I of N unless it runs already. bin/opensearch -d returns once
# the node has joined a cluster or given up waiting (30 s), so the nodes of a
# new cluster are launched together (see opensearch_cluster_start).
opensearch_node_launch() {
  local i="$1" n="$2" user="$3"
  opensearch_node_vars "$i"
  pid_alive "$NODE_PIDFILE" "$OS_HOME" && return 0
  opensearch_node_configure "$i" "$n" "$user"
  rm -f "$NODE_PIDFILE"
  require_free_port "opensearch node $i" "$NODE_HTTP_PORT"
  require_free_port "opensearch node $i" "$NODE_TRANSPORT_PORT"
  : >"$NODE_CONSOLE"
  as_user "$user" env JAVA_HOME="$JAVA_HOME" OPENSEARCH_JAVA_HOME="$JAVA_HOME" \
    OPENSEARCH_PATH_CONF="$NODE_CONF" \
    OPENSEARCH_JAVA_OPTS="-Xms$OPENSEARCH_HEAP -Xmx$OPENSEARCH_HEAP" \
    "$OS_HOME/bin/opensearch" -d -p "$NODE_PIDFILE" </dev/null >>"$NODE_CONSOLE" 2>&1 8>&- \
    || fail_start "opensearch node $i" "$NODE_LOGFILES" "bin/opensearch -d failed"
}

# Succeeds when node I answers and the cluster lists it.
opensearch_node_joined() {
  opensearch_node_vars "$1"
  curl -fsS --max-time 5 "$NODE_URL/_cat/nodes?h=name" | grep -qx "$NODE_NAME"
}

# Succeeds when the cluster, asked through node 1, has N nodes and is green.
opensearch_cluster_green() {
  curl -fsS --max-time 6 "$OS_URL/_cluster/health?wait_for_nodes=$1&wait_for_status=green&timeout=4s" >/dev/null
}

# Wait until CHECK (a command) succeeds while NODES (node numbers separated by
# spaces) run. Fails as soon as one of their processes is gone, or after
# START_TIMEOUT, leaving the nodes running (`testenv/down opensearch` stops
# them): a cluster that formed but stays yellow is best looked at live.
opensearch_cluster_wait() {
  local nodes="$1" why="$2"; shift 2
  local deadline=$((SECONDS + START_TIMEOUT)) i state
  while ! "$@" >/dev/null 2>&1; do
    for i in $nodes; do
      opensearch_node_vars "$i"
      # A node writes its pid file a while after its launcher has returned.
      [ -s "$NODE_PIDFILE" ] || continue
      state="$(pid_state "$NODE_PIDFILE" "$OS_HOME")"
      [ "$state" != gone ] || fail_start "opensearch node $i" "$NODE_LOGFILES" "its process exited"
    done
    if ((SECONDS >= deadline)); then
      curl -fsS --max-time 5 "$OS_URL/_cat/nodes?v" >&2 || true
      curl -fsS --max-time 5 "$OS_URL/_cat/shards?v" 2>/dev/null | grep -v STARTED >&2 || true
      opensearch_node_vars "${nodes%% *}"
      fail_start "opensearch node ${nodes%% *}" "$NODE_LOGFILES" \
        "$why after ${START_TIMEOUT}s (the nodes are left running; testenv/down opensearch stops them)"
    fi
    sleep 1
  done
}

# Start nodes 1..N of the cluster (those not running), stop any node above N,
# and wait until the cluster has N nodes and is green. Green, not yellow: with
# two nodes or more, every replica of an index with fewer replicas than nodes
# has a node to live on, so yellow means an unfinished recovery or a replica
# that cannot be placed (number_of_replicas >= N; `up` then fails naming the
# unassigned shards and leaves the nodes running). A fresh cluster, with no
# index, is green as soon as it has formed.
opensearch_cluster_start() {
  local n="$OPENSEARCH_NODES" user i pids=() pid launched=0 f
  user="$(service_user "$OPENSEARCH_OS_USER")"
  if pid_alive "$OS_PIDFILE" "$OS_HOME"; then
    log "opensearch: stopping the single node: IT_TESTENV_OPENSEARCH_NODES=$n asks for a cluster on its port"
  fi
  stop_pidfile opensearch "$OS_PIDFILE" "$OS_HOME" 60
  for f in "$OS_CLUSTER_DIR"/node-*/run/opensearch.pid; do
    [ -e "$f" ] || continue
    i="${f#"$OS_CLUSTER_DIR"/node-}"; i="${i%%/*}"
    if [[ "$i" =~ ^[0-9]+$ ]] && ((i > n)); then
      log "opensearch: stopping node $i (the cluster is asked to have $n)"
      stop_pidfile "opensearch node $i" "$f" "$OS_HOME" 60
    fi
  done
  opensearch_install
  ensure_system_user "$user"
  mkdir -p "$OS_CLUSTER_DIR"
  echo "$n" >"$OS_CLUSTER_COUNT_FILE"
  for ((i = 1; i <= n; i++)); do
    opensearch_node_vars "$i"
    pid_alive "$NODE_PIDFILE" "$OS_HOME" && continue
    launched=$((launched + 1))
    opensearch_node_launch "$i" "$n" "$user" &
    pids+=("$!")
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || exit 1
  done
  ensure_reachable_by "$user" "$OS_HOME/bin"
  ((launched == 0)) || log "opensearch: launched $launched of $n nodes; waiting for the cluster to form and turn green"
  opensearch_cluster_wait "$(seq -s ' ' 1 "$n")" "no cluster of $n nodes with status green" opensearch_cluster_green "$n"
}

# Stop every node of the cluster there is a pid file for, whatever N is now
# (TERM to all at once, each waited for by its own pid).
opensearch_cluster_stop_all() {
  local why="$1" f pids=() pid any=0
  for f in "$OS_CLUSTER_DIR"/node-*/run/opensearch.pid; do
    [ -e "$f" ] || continue
    if pid_alive "$f" "$OS_HOME"; then any=1; fi
    stop_pidfile "opensearch $(basename "$(dirname "$(dirname "$f")")")" "$f" "$OS_HOME" 60 &
    pids+=("$!")
  done
  ((any == 0)) || log "opensearch: stopping the cluster's nodes: $why"
  for pid in "${pids[@]}"; do wait "$pid" || true; done
}

# ---- The service functions testenv/up, down and env call -------------------

opensearch_start() {
  opensearch_check_node_count "$OPENSEARCH_NODES"
  if [ "$OPENSEARCH_NODES" -eq 1 ]; then
    opensearch_single_start
  else
    opensearch_cluster_start
  fi
}

# Stops both modes' processes: `down` needs no IT_TESTENV_OPENSEARCH_NODES.
opensearch_stop() {
  stop_pidfile opensearch "$OS_PIDFILE" "$OS_HOME" 60
  opensearch_cluster_stop_all "testenv/down"
}

opensearch_describe() {
  local version
  version="$(curl -fsS --max-time 5 "$OS_URL/" | sed -n 's/.*"number" *: *"\([^"]*\)".*/\1/p' | head -n1)"
  if [ "$OPENSEARCH_NODES" -eq 1 ]; then
    printf '%-10s %-22s %s\n' opensearch "OpenSearch $version" "$OS_URL"
  else
    printf '%-10s %-22s %s (%s nodes: %s)\n' opensearch "OpenSearch $version" "$OS_URL" \
      "$OPENSEARCH_NODES" "$(opensearch_node_urls "$OPENSEARCH_NODES")"
  fi
}

# OPENSEARCH_URL is node 1 in both modes; IT_OPENSEARCH_NODES lists every
# node's URL and IT_OPENSEARCH_NODE_COUNT counts them (1 for the single node).
# In a cluster IT_OPENSEARCH_DATA is node 1's data directory and
# IT_OPENSEARCH_REPO the path.repo every node shares.
opensearch_env() {
  opensearch_check_node_count "$OPENSEARCH_NODES"
  local data="$OS_DATA" repo="$OS_REPO"
  if [ "$OPENSEARCH_NODES" -gt 1 ]; then
    opensearch_node_vars 1
    data="$NODE_DATA"
    repo="$OS_CLUSTER_REPO"
  fi
  cat <<ENV
export OPENSEARCH_URL=$OS_URL
export IT_OPENSEARCH_NODES=$(opensearch_node_urls "$OPENSEARCH_NODES")
export IT_OPENSEARCH_NODE_COUNT=$OPENSEARCH_NODES
export IT_OPENSEARCH_HOME=$OS_HOME
export IT_OPENSEARCH_DATA=$data
export IT_OPENSEARCH_REPO=$repo
export IT_OPENSEARCH_USER=$(service_user "$OPENSEARCH_OS_USER")
ENV
}
