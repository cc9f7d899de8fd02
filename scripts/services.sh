#!/usr/bin/env bash
# Start/stop the local Redis and Cassandra servers Canopy needs, without Docker.
#
#   scripts/services.sh start  [redis|redis-cluster|cassandra]   install if needed, start, wait until answering
#   scripts/services.sh stop   [redis|redis-cluster|cassandra]   stop what this script started (pid files)
#   scripts/services.sh status [redis|redis-cluster|cassandra]   exit 0 only if every named server answers
#   scripts/services.sh browser                    install Debian's chromium if missing (the
#                                                  admin page test drives it with Playwright)
#
# Redis:     Debian package redis-server (apt-get), our own instance from a
#            generated config -- the system service is never used.
# Redis Cluster: three masters on 127.0.0.1:7001-7003 (cluster-enabled yes, no
#            replicas), made one cluster by `redis-cli --cluster create` once.
# Cassandra: Apache Cassandra assembled from Maven Central (cassandra-all and its
#            runtime dependencies, fetched with mvn), run on the machine's JDK 17.
#
# Both listen on 127.0.0.1 only.  Environment knobs:
#   CANOPY_SERVICES_DIR   state: data, logs, pid files  (default /tmp/canopy-services)
#   CANOPY_CACHE          downloaded jars               (default ~/.cache/canopy)
#   CANOPY_CASSANDRA_VERSION                            (default 5.0.9)
#   CANOPY_CASSANDRA_START_TIMEOUT seconds              (default 180)
# Data survives stop/start; delete $CANOPY_SERVICES_DIR (servers stopped) to wipe it.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TEMPLATES="$SCRIPT_DIR/services"

HOST=127.0.0.1
REDIS_PORT=6379
CLUSTER_PORTS=(7001 7002 7003)
CQL_PORT=9042

STATE_DIR="${CANOPY_SERVICES_DIR:-/tmp/canopy-services}"
REDIS_STATE="$STATE_DIR/redis"
CLUSTER_STATE="$STATE_DIR/redis-cluster"
CASSANDRA_STATE="$STATE_DIR/cassandra"
REDIS_PIDFILE="$REDIS_STATE/redis.pid"
CASSANDRA_PIDFILE="$CASSANDRA_STATE/cassandra.pid"

CASSANDRA_VERSION="${CANOPY_CASSANDRA_VERSION:-5.0.9}"
CASSANDRA_LIB="${CANOPY_CACHE:-$HOME/.cache/canopy}/cassandra-$CASSANDRA_VERSION/lib"

REDIS_START_TIMEOUT=30
CASSANDRA_START_TIMEOUT="${CANOPY_CASSANDRA_START_TIMEOUT:-180}"
REDIS_STOP_TIMEOUT=30
CASSANDRA_STOP_TIMEOUT=90 # SIGTERM makes Cassandra drain (flush memtables) first

PYTHON="${PYTHON:-python3}"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"

# ---------------------------------------------------------------- helpers --

log() { printf '[services] %s\n' "$*"; }
die() {
    printf '[services] ERROR: %s\n' "$*" >&2
    exit 1
}

# Print the last lines of a log file to stderr (used when a start fails).
show_log_tail() {
    local file=$1
    [[ -s $file ]] || return 0
    printf '[services] ---- last 40 lines of %s ----\n' "$file" >&2
    tail -n 40 "$file" >&2
    printf '[services] ----\n' >&2
}

# Serialise concurrent invocations (e.g. parallel test workers all calling
# "start"), so only one of them launches each server.  fd 9 must not leak
# into the servers, or they would hold the lock forever: launches use 9>&-.
take_lock() {
    mkdir -p "$STATE_DIR"
    exec 9>"$STATE_DIR/.lock"
    flock 9
}

# True if process $1 exists and is not a zombie.  kill -0 alone is not
# enough: a daemon that exited stays a zombie until init reaps it, which
# takes ~2 s under this machine's init (or forever under a lazy one).
pid_running() {
    local stat
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# Print the pid recorded in $1 if that process is alive and its command line
# contains $2 (guards against a stale pid file whose pid was reused).
live_pid() {
    local pidfile=$1 pattern=$2 pid cmdline
    [[ -r $pidfile ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [[ -n $pid ]] && pid_running "$pid" || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *"$pattern"* ]] || return 1
    echo "$pid"
}

# Fill a template: every @KEY@ in $1 is replaced by VALUE, written to $2.
render() {
    local src=$1 dst=$2 key=$3 value=$4
    sed "s|@${key}@|${value}|g" "$src" >"$dst.tmp"
    mv "$dst.tmp" "$dst"
}

# wait_until NAME TIMEOUT CHECK_FN PIDFILE PATTERN LOGFILE...
# Poll CHECK_FN once a second; fail early if the server process died.  On
# failure the tails of the given logs are shown (the last one is named).
# PATTERN (the server's command line) was checked by live_pid before waiting.
wait_until() {
    local name=$1 timeout=$2 check=$3 pidfile=$4
    shift 5
    local logs=("$@") logfile="${*: -1}" start=$SECONDS elapsed f
    while ! "$check"; do
        elapsed=$((SECONDS - start))
        # Alive is enough: the pid is the one just launched (or checked by live_pid
        # before waiting), and until its exec the launching subshell's command line
        # does not name the server yet (a false "exited" under a slow machine).
        if ! pid_running "$(tr -dc '0-9' <"$pidfile" 2>/dev/null)"; then
            for f in "${logs[@]}"; do show_log_tail "$f"; done
            die "$name exited during start-up (log: $logfile)"
        fi
        if ((elapsed >= timeout)); then
            for f in "${logs[@]}"; do show_log_tail "$f"; done
            die "$name did not answer within ${timeout}s (log: $logfile); it is still running, see '$0 stop'"
        fi
        if ((elapsed > 0 && elapsed % 15 == 0)); then
            log "$name: still starting (${elapsed}s)..."
        fi
        sleep 1
    done
}

# stop_pid NAME PIDFILE PATTERN TIMEOUT: SIGTERM, wait, then SIGKILL.
stop_pid() {
    local name=$1 pidfile=$2 pattern=$3 timeout=$4 pid t0=$SECONDS
    if ! pid=$(live_pid "$pidfile" "$pattern"); then
        rm -f "$pidfile"
        log "$name: not running (no live process started by this script)"
        return 0
    fi
    log "$name: stopping pid $pid (SIGTERM)..."
    kill -TERM "$pid" 2>/dev/null || true
    while pid_running "$pid" && ((SECONDS - t0 < timeout)); do
        sleep 0.2
    done
    if pid_running "$pid"; then
        log "$name: still alive after ${timeout}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while pid_running "$pid"; do sleep 0.2; done
    fi
    rm -f "$pidfile"
    log "$name: stopped ($((SECONDS - t0))s)"
}

APT_UPDATED=
apt_install() {
    local sudo=""
    ((EUID == 0)) || sudo=sudo
    local apt_log="$STATE_DIR/apt.log"
    if [[ -z $APT_UPDATED ]]; then
        log "apt-get update..."
        $sudo apt-get update >"$apt_log" 2>&1 || { show_log_tail "$apt_log"; die "apt-get update failed"; }
        APT_UPDATED=1
    fi
    log "apt-get install $*..."
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "$@" >>"$apt_log" 2>&1 ||
        { show_log_tail "$apt_log"; die "apt-get install $* failed"; }
}

# ------------------------------------------------------------------ redis --

redis_up() {
    command -v redis-cli >/dev/null &&
        [[ $(timeout 3 redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]
}

redis_install() {
    if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
        return 0
    fi
    apt_install redis-server redis-tools
    # On a machine with systemd the package starts its own service on 6379;
    # we run our own instance instead, so switch off the one we just installed.
    if command -v systemctl >/dev/null && systemctl is-active --quiet redis-server 2>/dev/null; then
        log "redis: disabling the Debian redis-server service installed just now"
        systemctl disable --now redis-server >/dev/null 2>&1 || true
    fi
}

redis_start() {
    local pid
    if redis_up; then
        log "redis: already running on $HOST:$REDIS_PORT$(redis_owner_note)"
        return 0
    fi
    if pid=$(live_pid "$REDIS_PIDFILE" redis-server); then
        # Ours but not answering yet (e.g. still loading a big AOF): wait.
        log "redis: pid $pid is still starting up, waiting..."
    else
        redis_launch
    fi
    wait_until redis "$REDIS_START_TIMEOUT" redis_up "$REDIS_PIDFILE" redis-server "$REDIS_STATE/redis.log"
    log "redis: up on $HOST:$REDIS_PORT (pid $(cat "$REDIS_PIDFILE"))"
}

redis_launch() {
    redis_install
    mkdir -p "$REDIS_STATE/data"
    render "$TEMPLATES/redis.conf" "$REDIS_STATE/redis.conf" REDIS_STATE "$REDIS_STATE"
    rm -f "$REDIS_PIDFILE"
    log "redis: starting (state: $REDIS_STATE)..."
    # daemonize yes: redis-server forks and returns; the child writes the
    # pid file a moment later, so give it a few seconds to appear.
    redis-server "$REDIS_STATE/redis.conf" 9>&- ||
        { show_log_tail "$REDIS_STATE/redis.log"; die "redis-server failed to start"; }
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -s $REDIS_PIDFILE ]] && break
        sleep 0.1
    done
}

redis_owner_note() {
    local pid
    if pid=$(live_pid "$REDIS_PIDFILE" redis-server); then
        echo " (pid $pid)"
    else
        echo " (not started by this script)"
    fi
}

redis_stop() {
    stop_pid redis "$REDIS_PIDFILE" redis-server "$REDIS_STOP_TIMEOUT"
    if redis_up; then
        log "redis: a server not started by this script answers on $HOST:$REDIS_PORT; left alone"
    fi
}

redis_status() {
    if redis_up; then
        log "redis: UP on $HOST:$REDIS_PORT$(redis_owner_note)"
    else
        log "redis: DOWN ($HOST:$REDIS_PORT not answering PING)"
        return 1
    fi
}

# ---------------------------------------------------------- redis cluster --

cluster_node_state() { echo "$CLUSTER_STATE/$1"; }

cluster_node_up() {
    [[ $(timeout 3 redis-cli -h "$HOST" -p "$1" ping 2>/dev/null) == PONG ]]
}

cluster_nodes_up() {
    local port
    for port in "${CLUSTER_PORTS[@]}"; do cluster_node_up "$port" || return 1; done
}

# Every slot served: the masters have met and hold all 16384 slots between them.
cluster_ok() {
    command -v redis-cli >/dev/null &&
        timeout 3 redis-cli -h "$HOST" -p "${CLUSTER_PORTS[0]}" cluster info 2>/dev/null |
        grep -q '^cluster_state:ok'
}

cluster_node_launch() {
    local port=$1 state
    state=$(cluster_node_state "$port")
    mkdir -p "$state"
    sed -e "s|@PORT@|$port|g" -e "s|@NODE_STATE@|$state|g" \
        "$TEMPLATES/redis-cluster.conf" >"$state/redis.conf"
    rm -f "$state/redis.pid"
    redis-server "$state/redis.conf" 9>&- ||
        { show_log_tail "$state/redis.log"; die "redis-server on $port failed to start"; }
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -s $state/redis.pid ]] && break
        sleep 0.1
    done
}

# A node that already belongs to a cluster knows other nodes (or holds slots): a
# fresh one knows only itself.  `--cluster create` runs only over fresh nodes.
cluster_fresh() {
    local port
    for port in "${CLUSTER_PORTS[@]}"; do
        [[ $(redis-cli -h "$HOST" -p "$port" cluster info | sed -n 's/^cluster_known_nodes:\([0-9]*\).*/\1/p') == 1 ]] ||
            return 1
    done
}

CHECK_PORT=
cluster_check_port() { cluster_node_up "$CHECK_PORT"; }

redis-cluster_start() {
    local port state addresses=()
    if cluster_ok; then
        log "redis-cluster: already running on $HOST:${CLUSTER_PORTS[*]}"
        return 0
    fi
    redis_install
    log "redis-cluster: starting (state: $CLUSTER_STATE)..."
    for port in "${CLUSTER_PORTS[@]}"; do
        state=$(cluster_node_state "$port")
        if cluster_node_up "$port"; then
            continue
        fi
        live_pid "$state/redis.pid" redis-server >/dev/null || cluster_node_launch "$port"
        CHECK_PORT=$port
        wait_until "redis-cluster $port" "$REDIS_START_TIMEOUT" cluster_check_port \
            "$state/redis.pid" redis-server "$state/redis.log"
    done
    if cluster_fresh; then
        for port in "${CLUSTER_PORTS[@]}"; do addresses+=("$HOST:$port"); done
        redis-cli --cluster create "${addresses[@]}" --cluster-replicas 0 --cluster-yes \
            >"$CLUSTER_STATE/create.log" 2>&1 ||
            { show_log_tail "$CLUSTER_STATE/create.log"; die "redis-cli --cluster create failed"; }
    fi
    wait_until redis-cluster "$REDIS_START_TIMEOUT" cluster_ok \
        "$(cluster_node_state "${CLUSTER_PORTS[0]}")/redis.pid" redis-server \
        "$(cluster_node_state "${CLUSTER_PORTS[0]}")/redis.log"
    log "redis-cluster: up on $HOST:${CLUSTER_PORTS[*]}"
}

redis-cluster_stop() {
    local port state
    for port in "${CLUSTER_PORTS[@]}"; do
        state=$(cluster_node_state "$port")
        stop_pid "redis-cluster $port" "$state/redis.pid" redis-server "$REDIS_STOP_TIMEOUT"
    done
}

redis-cluster_status() {
    if cluster_ok; then
        log "redis-cluster: UP on $HOST:${CLUSTER_PORTS[*]}"
    else
        log "redis-cluster: DOWN (no cluster_state:ok on $HOST:${CLUSTER_PORTS[0]})"
        return 1
    fi
}

# -------------------------------------------------------------- cassandra --

# Real CQL handshake + "SELECT release_version FROM system.local"; prints the version.
cassandra_version() { "$PYTHON" "$TEMPLATES/cql_ping.py" "$HOST" "$CQL_PORT" 3 2>/dev/null; }
cassandra_up() { cassandra_version >/dev/null; }

# Fetch cassandra-all + runtime dependencies from Maven Central once; later
# runs reuse the jar directory (and mvn itself reuses ~/.m2).
cassandra_install() {
    if [[ -f $CASSANDRA_LIB/.complete ]]; then
        return 0
    fi
    command -v mvn >/dev/null || die "mvn (Maven) is required to fetch Cassandra"
    log "cassandra: fetching cassandra-all $CASSANDRA_VERSION and dependencies from Maven Central..."
    # Download into a side directory and rename at the end, so an
    # interrupted download is never mistaken for a complete one.
    local tmp="$CASSANDRA_LIB.partial" mvn_log="${CASSANDRA_LIB%/lib}/mvn.log"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    if ! mvn -B -f "$TEMPLATES/cassandra-pom.xml" -Dstyle.color=never \
        -Dcassandra.version="$CASSANDRA_VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" \
        >"$mvn_log" 2>&1 9>&-; then
        show_log_tail "$mvn_log"
        die "mvn could not fetch Cassandra $CASSANDRA_VERSION (log: $mvn_log)"
    fi
    touch "$tmp/.complete"
    rm -rf "$CASSANDRA_LIB"
    mv "$tmp" "$CASSANDRA_LIB"
    log "cassandra: $(find "$CASSANDRA_LIB" -name '*.jar' | wc -l) jars cached in $CASSANDRA_LIB"
}

cassandra_check_prereqs() {
    command -v "$PYTHON" >/dev/null || die "$PYTHON is required for the CQL readiness check"
    command -v "$JAVA" >/dev/null || die "java (JDK 17) is required for Cassandra"
    local major
    major=$("$JAVA" -version 2>&1 | sed -n 's/.* version "\([0-9]*\).*/\1/p' | head -n1)
    [[ $major == 17 ]] || log "cassandra: WARNING: Cassandra 5.0 flags here target Java 17, found Java $major"
}

# JVM flags: conf/jvm17-server.options of Cassandra 5.0 (JPMS opens/exports,
# netty settings) plus a modest heap and fast-start choices for a 2-core box.
# 2 GiB: at 1 GiB it died of OutOfMemoryError twice in a day of test runs side by
# side (each run's keyspace holds its tables' memtables until dropped).
cassandra_jvm_opts() {
    local jamm=("$CASSANDRA_LIB"/jamm-*.jar)
    local opts=(
        -Xms512m -Xmx2g -XX:MaxDirectMemorySize=512m
        -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1
        # Don't mmap /tmp/hsperfdata (GC pauses on slow disks); no jstat needed.
        -XX:+PerfDisableSharedMem
        # Die rather than limp on after OOM (Cassandra's own advice); no
        # heap dump, a 1 GiB file per OOM in /tmp helps nobody here.
        -XX:+ExitOnOutOfMemoryError
        -ea -da:net.openhft...
        -Djava.net.preferIPv4Stack=true
        -Djdk.attach.allowAttachSelf=true
        --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
        --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
        --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
        --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
        --add-exports java.sql/java.sql=ALL-UNNAMED
        --add-exports java.base/java.lang.ref=ALL-UNNAMED
        --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
        --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
        --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
        --add-opens java.base/java.lang.module=ALL-UNNAMED
        --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
        --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
        --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
        --add-opens java.base/jdk.internal.math=ALL-UNNAMED
        --add-opens java.base/jdk.internal.module=ALL-UNNAMED
        --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
        --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
        --add-opens java.base/sun.nio.ch=ALL-UNNAMED
        --add-opens java.base/java.io=ALL-UNNAMED
        --add-opens java.base/java.lang.reflect=ALL-UNNAMED
        --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
        --add-opens java.base/java.lang=ALL-UNNAMED
        --add-opens java.base/java.util=ALL-UNNAMED
        -Dio.netty.tryReflectionSetAccessible=true
        -Dio.netty.allocator.useCacheForAllThreads=true
        -Dio.netty.allocator.maxOrder=11
        # jamm measures object sizes for memtable accounting (as bin/cassandra does).
        "-javaagent:${jamm[0]}"
        "-Dcassandra.config=file://$CASSANDRA_STATE/conf/cassandra.yaml"
        "-Dlogback.configurationFile=file://$CASSANDRA_STATE/conf/logback.xml"
        "-Dcassandra.logdir=$CASSANDRA_STATE/logs"
        "-Dcassandra.storagedir=$CASSANDRA_STATE"
        "-Dcassandra.triggers_dir=$CASSANDRA_STATE/triggers"
        -Dcassandra-foreground=yes
        # Single node: nothing to wait for in gossip.
        -Dcassandra.skip_wait_for_gossip_to_settle=0
        # ...and no peers to announce shutdown to (saves 2 s per stop).
        -Dcassandra.shutdown_announce_in_ms=0
        -cp "$CASSANDRA_LIB/*"
    )
    printf '%s\n' "${opts[@]}"
}

cassandra_launch() {
    mkdir -p "$CASSANDRA_STATE"/{conf,logs,data,commitlog,saved_caches,hints,cdc_raw,triggers}
    render "$TEMPLATES/cassandra.yaml" "$CASSANDRA_STATE/conf/cassandra.yaml" CASSANDRA_STATE "$CASSANDRA_STATE"
    cp "$TEMPLATES/logback.xml" "$CASSANDRA_STATE/conf/logback.xml"
    local opts
    mapfile -t opts < <(cassandra_jvm_opts)
    log "cassandra: starting $CASSANDRA_VERSION (state: $CASSANDRA_STATE)..."
    # setsid: own session, so killing the caller's process group (test
    # runner timeouts, Ctrl-C) does not take the server down.  The subshell
    # execs through setsid and nohup, so $! is the java pid itself.
    (
        cd "$CASSANDRA_STATE"
        exec setsid nohup "$JAVA" "${opts[@]}" org.apache.cassandra.service.CassandraDaemon \
            </dev/null >>"$CASSANDRA_STATE/logs/console.log" 2>&1 9>&-
    ) &
    echo $! >"$CASSANDRA_PIDFILE"
}

cassandra_start() {
    local version pid t0=$SECONDS
    if version=$(cassandra_version); then
        log "cassandra: already running on $HOST:$CQL_PORT, version $version$(cassandra_owner_note)"
        return 0
    fi
    cassandra_check_prereqs
    if pid=$(live_pid "$CASSANDRA_PIDFILE" CassandraDaemon); then
        # Launched by an earlier invocation and still booting: just wait.
        log "cassandra: pid $pid is still starting up, waiting..."
    else
        cassandra_install
        cassandra_launch
    fi
    wait_until cassandra "$CASSANDRA_START_TIMEOUT" cassandra_up \
        "$CASSANDRA_PIDFILE" CassandraDaemon \
        "$CASSANDRA_STATE/logs/console.log" "$CASSANDRA_STATE/logs/system.log"
    log "cassandra: up on $HOST:$CQL_PORT, version $(cassandra_version), pid $(cat "$CASSANDRA_PIDFILE") ($((SECONDS - t0))s)"
}

cassandra_owner_note() {
    local pid
    if pid=$(live_pid "$CASSANDRA_PIDFILE" CassandraDaemon); then
        echo " (pid $pid)"
    else
        echo " (not started by this script)"
    fi
}

cassandra_stop() {
    stop_pid cassandra "$CASSANDRA_PIDFILE" CassandraDaemon "$CASSANDRA_STOP_TIMEOUT"
    if cassandra_up; then
        log "cassandra: a server not started by this script answers on $HOST:$CQL_PORT; left alone"
    fi
}

cassandra_status() {
    local version pid
    if version=$(cassandra_version); then
        log "cassandra: UP on $HOST:$CQL_PORT, version $version$(cassandra_owner_note)"
    elif pid=$(live_pid "$CASSANDRA_PIDFILE" CassandraDaemon); then
        log "cassandra: STARTING (pid $pid, CQL not answering yet on $HOST:$CQL_PORT)"
        return 1
    else
        log "cassandra: DOWN ($HOST:$CQL_PORT not answering CQL)"
        return 1
    fi
}

# ---------------------------------------------------------------- browser --

# Debian's chromium: Playwright (from PyPI) drives it by its path, so no browser
# build is ever downloaded.
browser_install() {
    if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
        return 0
    fi
    mkdir -p "$STATE_DIR"
    apt_install chromium
    log "browser: $(chromium --version 2>/dev/null || echo chromium) installed"
}

# ------------------------------------------------------------------- main --

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

main() {
    local cmd=${1:-} target=${2:-all}
    if [[ $cmd == browser ]]; then
        browser_install
        return
    fi
    local services
    case $target in
        all) services=(redis redis-cluster cassandra) ;;
        redis | redis-cluster | cassandra) services=("$target") ;;
        *) usage ;;
    esac
    case $cmd in
        start)
            take_lock
            for s in "${services[@]}"; do "${s}_start"; done
            ;;
        stop)
            take_lock
            # Reverse order: Cassandra first, it takes longest to drain.
            for ((i = ${#services[@]} - 1; i >= 0; i--)); do "${services[i]}_stop"; done
            ;;
        status)
            local rc=0
            for s in "${services[@]}"; do "${s}_status" || rc=1; done
            return "$rc"
            ;;
        *) usage ;;
    esac
}

# Sourced (tests/test_services_script.py), it only defines its functions.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
