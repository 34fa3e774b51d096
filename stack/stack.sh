#!/usr/bin/env bash
# The local stack: Kafka (KRaft, jars from Maven Central), Prometheus,
# Alertmanager (Debian packages) and the on-call webhook receiver, each a
# plain process with its pid file, data and log under $STACK_DIR.
#
#   stack/stack.sh up|down|status|clean
#   stack/stack.sh start|stop SERVICE     SERVICE: kafka prometheus alertmanager oncall,
#                                         or the demo's worker and simulate (not part of up);
#                                         with KAFKA_BROKERS=3, kafka is the whole cluster and
#                                         kafka-1, kafka-2, kafka-3 are its nodes
#   stack/stack.sh running SERVICE        exit 0 when SERVICE runs from this stack dir
#   stack/stack.sh jars                   copy Kafka's jars from the local Maven repository
#
# Environment: STACK_DIR (.stack), KAFKA_BROKERS (1, or 3 for a cluster of
# three KRaft nodes; by default the size of the cluster already running from
# this stack dir, else 1), KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (19093;
# node n of a cluster listens on KAFKA_PORT + 10(n-1) and
# KAFKA_CONTROLLER_PORT + 10(n-1)), PROMETHEUS_PORT (9090), ALERTMANAGER_PORT
# (9093), ONCALL_PORT (5001), WORKER_PORT (6066, scraped by Prometheus),
# STACK_TIMEOUT (seconds to wait for a service to become healthy, 90),
# KAFKA_HEAP (1G, per broker), ALERTS_DIR (alerts/: alertmanager.yml and
# rules/*.yml), CANCELWATCH_DATA_DIR (.state,
# wiped by clean); for the demo's simulator DEMO_SCENARIO (inventory-outage),
# DEMO_SPEED (60) and DEMO_REPORT_GAP (0.05: the share of one seller's orders
# never published, which Amazon's account-health reports still count).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_DIR="${STACK_DIR:-$ROOT/.stack}"
mkdir -p "$STACK_DIR"
STACK_DIR="$(cd "$STACK_DIR" && pwd)"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
PROMETHEUS_PORT="${PROMETHEUS_PORT:-9090}"
ALERTMANAGER_PORT="${ALERTMANAGER_PORT:-9093}"
ONCALL_PORT="${ONCALL_PORT:-5001}"
WORKER_PORT="${WORKER_PORT:-${CANCELWATCH_WEB_PORT:-6066}}"
STACK_TIMEOUT="${STACK_TIMEOUT:-90}"
KAFKA_HEAP="${KAFKA_HEAP:-1G}"
KAFKA_LIB="${KAFKA_LIB:-$STACK_DIR/kafka/lib}"
VENV="${VENV:-$ROOT/.venv}"
ALERTS_DIR="${ALERTS_DIR:-$ROOT/alerts}"
WORKER_STATE_DIR="${CANCELWATCH_DATA_DIR:-.state}"
[[ "$WORKER_STATE_DIR" = /* ]] || WORKER_STATE_DIR="$ROOT/$WORKER_STATE_DIR"
KAFKA_PORT_STEP=10
SERVICES=(kafka prometheus alertmanager oncall)
# The application itself, started by the demo; stopped by down and clean.
APPLICATION=(worker simulate)
DEMO_SCENARIO="${DEMO_SCENARIO:-inventory-outage}"
DEMO_SPEED="${DEMO_SPEED:-60}"
DEMO_REPORT_GAP="${DEMO_REPORT_GAP:-0.05}"

say() { printf 'stack: %s\n' "$*"; }
die() { printf 'stack: %s\n' "$*" >&2; exit 1; }

pid_file() { echo "$STACK_DIR/$1/$1.pid"; }
log_file() { echo "$STACK_DIR/$1/$1.out"; }

# The largest cluster stack.sh runs; its nodes are the services kafka-1..kafka-3.
CLUSTER_NODES=3
# Without KAFKA_BROKERS, a cluster already running from this stack dir is the one meant,
# so `stack.sh status` and `down` need no repeat of the variable given to `up`.
if [[ -z "${KAFKA_BROKERS:-}" ]]; then
    KAFKA_BROKERS=1
    for (( node=1; node<=CLUSTER_NODES; node++ )); do
        if [[ -f "$(pid_file "kafka-$node")" ]] && kill -0 "$(cat "$(pid_file "kafka-$node")")" 2>/dev/null; then
            KAFKA_BROKERS=$CLUSTER_NODES
        fi
    done
fi
[[ "$KAFKA_BROKERS" == 1 || "$KAFKA_BROKERS" == "$CLUSTER_NODES" ]] \
    || die "KAFKA_BROKERS=$KAFKA_BROKERS: the local stack runs 1 broker or a cluster of $CLUSTER_NODES"

# The Kafka processes of this stack: kafka alone, or the nodes of the cluster.
kafka_nodes() {
    if (( KAFKA_BROKERS == 1 )); then
        echo kafka
    else
        local node
        for (( node=1; node<=KAFKA_BROKERS; node++ )); do echo "kafka-$node"; done
    fi
}

node_number() { echo "${1#kafka-}"; }      # kafka-2 -> 2
node_port() { echo $(( KAFKA_PORT + KAFKA_PORT_STEP * ($(node_number "$1") - 1) )); }
node_controller_port() { echo $(( KAFKA_CONTROLLER_PORT + KAFKA_PORT_STEP * ($(node_number "$1") - 1) )); }

# host:port of every broker, comma-separated: the bootstrap list for clients.
bootstrap_servers() {
    if (( KAFKA_BROKERS == 1 )); then
        echo "127.0.0.1:$KAFKA_PORT"
    else
        local node servers=()
        for node in $(kafka_nodes); do servers+=("127.0.0.1:$(node_port "$node")"); done
        (IFS=,; echo "${servers[*]}")
    fi
}

# Whether SERVICE is a node of the configured cluster (kafka-1..kafka-3).
is_cluster_node() { [[ "$1" =~ ^kafka-[1-9]$ ]] && (( $(node_number "$1") <= KAFKA_BROKERS && KAFKA_BROKERS > 1 )); }

port_of() {
    if is_cluster_node "$1"; then node_port "$1"; return; fi
    case "$1" in
        kafka) echo "$KAFKA_PORT" ;;
        prometheus) echo "$PROMETHEUS_PORT" ;;
        alertmanager) echo "$ALERTMANAGER_PORT" ;;
        oncall) echo "$ONCALL_PORT" ;;
        worker) echo "$WORKER_PORT" ;;
        simulate) echo "-" ;;
        *) die "unknown service '$1' (services: ${SERVICES[*]} ${APPLICATION[*]})" ;;
    esac
}

port_variable_of() {
    case "$1" in
        kafka|kafka-*) echo KAFKA_PORT ;;
        prometheus) echo PROMETHEUS_PORT ;;
        alertmanager) echo ALERTMANAGER_PORT ;;
        oncall) echo ONCALL_PORT ;;
        worker) echo WORKER_PORT ;;
    esac
}

# The pid recorded for SERVICE when that process is still alive, else nothing.
live_pid() {
    local file pid
    file="$(pid_file "$1")"
    [[ -f "$file" ]] || return 1
    pid="$(cat "$file")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Who listens on PORT, for the error message ("pid 123 (java)").
port_holder() {
    local line
    line="$(ss -Htlnp "sport = :$1" 2>/dev/null | head -n 1 || true)"
    if [[ "$line" =~ pid=([0-9]+) ]]; then
        local pid="${BASH_REMATCH[1]}"
        echo "pid $pid ($(ps -o comm= -p "$pid" 2>/dev/null || echo unknown))"
    else
        echo "another process"
    fi
}

require_free_port() { # service port variable
    if port_open "$2"; then
        die "cannot start $1: port $2 is already in use by $(port_holder "$2"). Stop that process, or run with $3=<free port>."
    fi
}

# Run a command in its own session, detached, its output in the service log.
spawn() { # service command...
    local service="$1"; shift
    mkdir -p "$STACK_DIR/$service"
    setsid "$@" >>"$(log_file "$service")" 2>&1 < /dev/null &
    echo $! > "$(pid_file "$service")"
}

healthy() { # service
    if is_cluster_node "$1"; then
        port_open "$(node_port "$1")" && grep -q "Kafka Server started" "$STACK_DIR/$1/logs/server.log" 2>/dev/null
        return
    fi
    case "$1" in
        kafka) port_open "$KAFKA_PORT" && grep -q "Kafka Server started" "$STACK_DIR/kafka/logs/server.log" 2>/dev/null ;;
        prometheus) curl -fsS -o /dev/null "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" 2>/dev/null ;;
        alertmanager) curl -fsS -o /dev/null "http://127.0.0.1:$ALERTMANAGER_PORT/-/ready" 2>/dev/null ;;
        oncall) curl -fsS -o /dev/null "http://127.0.0.1:$ONCALL_PORT/notifications" 2>/dev/null ;;
        worker) curl -fsS -o /dev/null "http://127.0.0.1:$WORKER_PORT/metrics" 2>/dev/null ;;
        simulate) sleep 1; live_pid simulate > /dev/null ;;
    esac
}

wait_healthy() { # service
    local service="$1" pid deadline=$((SECONDS + STACK_TIMEOUT))
    pid="$(cat "$(pid_file "$service")")"
    until healthy "$service"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$(log_file "$service")" >&2 || true
            rm -f "$(pid_file "$service")"
            die "$service exited during start-up; its output is above and in $(log_file "$service")"
        fi
        if (( SECONDS >= deadline )); then
            tail -n 30 "$(log_file "$service")" >&2 || true
            stop_process "$service"
            die "$service did not become healthy within ${STACK_TIMEOUT}s (raise STACK_TIMEOUT if the machine is slow); see $(log_file "$service")"
        fi
        sleep 0.3
    done
}

copy_jars() {
    if compgen -G "$KAFKA_LIB/kafka_2.13-*.jar" > /dev/null; then
        return 0
    fi
    command -v mvn > /dev/null || die "Maven (mvn) is needed to fetch Kafka's jars: install it with 'apt-get install -y maven' (or run 'make install')."
    say "copying Kafka's jars from Maven Central into $KAFKA_LIB"
    mkdir -p "$KAFKA_LIB"
    mvn -q -B -f "$ROOT/stack/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIB" > "$STACK_DIR/maven.log" 2>&1 \
        || { tail -n 30 "$STACK_DIR/maven.log" >&2
             die "Maven could not fetch Kafka's jars (above, all in $STACK_DIR/maven.log); check that Maven Central is reachable."; }
}

render() { # template destination
    sed -e "s|@STACK_DIR@|$STACK_DIR|g" \
        -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" \
        -e "s|@KAFKA_CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
        "$1" > "$2"
}

# Format a node's storage once (all nodes of a cluster share one cluster id).
format_storage() { # service directory cluster-id-file
    local service="$1" dir="$2" id_file="$3"
    [[ -f "$dir/data/meta.properties" ]] && return 0
    mkdir -p "$(dirname "$id_file")"
    [[ -f "$id_file" ]] || java -cp "$KAFKA_LIB/*" kafka.tools.StorageTool random-uuid > "$id_file"
    say "formatting $service's storage in $dir/data (cluster $(cat "$id_file"))"
    java -cp "$KAFKA_LIB/*" -Dlog4j2.configurationFile="$ROOT/stack/kafka/log4j2.properties" \
        -Dkafka.logs.dir="$dir/logs" kafka.tools.StorageTool format \
        -t "$(cat "$id_file")" -c "$dir/server.properties" --ignore-formatted \
        >> "$(log_file "$service")" 2>&1 || die "formatting $service's storage failed; see $(log_file "$service")"
}

spawn_broker() { # service directory
    # kafka.Kafka appends to server.log; start from a fresh one so the
    # health check reads this run's "started" line, not the last run's.
    rm -f "$2/logs/server.log"
    spawn "$1" java "-Xmx$KAFKA_HEAP" "-Xms$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$ROOT/stack/kafka/log4j2.properties" \
        -Dkafka.logs.dir="$2/logs" \
        -cp "$KAFKA_LIB/*" kafka.Kafka "$2/server.properties"
}

require_java() {
    command -v java > /dev/null || die "Java 17 or newer is needed for Kafka: install it with 'apt-get install -y openjdk-17-jre-headless'."
}

# Start one node of the cluster (kafka-1..kafka-3); its health is waited for by the caller,
# since a node becomes ready only once a majority of the controller quorum runs.
require_node_ports() { # service
    require_free_port "$1" "$(node_port "$1")" KAFKA_PORT
    require_free_port "$1's controller" "$(node_controller_port "$1")" KAFKA_CONTROLLER_PORT
}

start_cluster_node() { # service
    local service="$1" node voters=() other
    node="$(node_number "$service")"
    require_node_ports "$service"
    require_java
    copy_jars
    for other in $(kafka_nodes); do
        voters+=("$(node_number "$other")@127.0.0.1:$(node_controller_port "$other")")
    done
    local dir="$STACK_DIR/$service"
    mkdir -p "$dir/data" "$dir/logs"
    sed -e "s|@STACK_DIR@|$STACK_DIR|g" \
        -e "s|@NODE_ID@|$node|g" \
        -e "s|@KAFKA_PORT@|$(node_port "$service")|g" \
        -e "s|@KAFKA_CONTROLLER_PORT@|$(node_controller_port "$service")|g" \
        -e "s|@VOTERS@|$(IFS=,; echo "${voters[*]}")|g" \
        "$ROOT/stack/kafka/cluster.properties" > "$dir/server.properties"
    format_storage "$service" "$dir" "$STACK_DIR/kafka-1/cluster-id"
    spawn_broker "$service" "$dir"
}

start_kafka() {
    require_free_port kafka "$KAFKA_PORT" KAFKA_PORT
    require_free_port "kafka's controller" "$KAFKA_CONTROLLER_PORT" KAFKA_CONTROLLER_PORT
    require_java
    copy_jars
    local dir="$STACK_DIR/kafka"
    mkdir -p "$dir/data" "$dir/logs"
    render "$ROOT/stack/kafka/server.properties" "$dir/server.properties"
    format_storage kafka "$dir" "$dir/cluster-id"
    spawn_broker kafka "$dir"
}

start_prometheus() {
    require_free_port prometheus "$PROMETHEUS_PORT" PROMETHEUS_PORT
    command -v prometheus > /dev/null || die "Prometheus is missing: install it with 'apt-get install -y prometheus' (or run 'make install')."
    compgen -G "$ALERTS_DIR/rules/*.yml" > /dev/null \
        || die "no Prometheus rule files in $ALERTS_DIR/rules/*.yml; Prometheus starts with the project's alert rules, so they must exist."
    local dir="$STACK_DIR/prometheus"
    mkdir -p "$dir/data"
    sed -e "s|\.\./alerts/rules/|$ALERTS_DIR/rules/|" \
        -e "s|127.0.0.1:9090|127.0.0.1:$PROMETHEUS_PORT|" \
        -e "s|127.0.0.1:9093|127.0.0.1:$ALERTMANAGER_PORT|g" \
        -e "s|127.0.0.1:6066|127.0.0.1:$WORKER_PORT|" \
        "$ROOT/stack/prometheus.yml" > "$dir/prometheus.yml"
    promtool check config "$dir/prometheus.yml" > "$dir/check.out" 2>&1 \
        || { cat "$dir/check.out" >&2; die "Prometheus config or rules are invalid (above)"; }
    spawn prometheus prometheus --config.file="$dir/prometheus.yml" \
        --storage.tsdb.path="$dir/data" \
        --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" \
        --web.enable-lifecycle --web.enable-admin-api
}

start_alertmanager() {
    require_free_port alertmanager "$ALERTMANAGER_PORT" ALERTMANAGER_PORT
    command -v prometheus-alertmanager > /dev/null || die "Alertmanager is missing: install it with 'apt-get install -y prometheus-alertmanager' (or run 'make install')."
    [[ -f "$ALERTS_DIR/alertmanager.yml" ]] \
        || die "$ALERTS_DIR/alertmanager.yml is missing; Alertmanager starts with the project's routing config, so it must exist."
    local dir="$STACK_DIR/alertmanager"
    mkdir -p "$dir/data"
    sed -e "s|127.0.0.1:5001|127.0.0.1:$ONCALL_PORT|g" "$ALERTS_DIR/alertmanager.yml" > "$dir/alertmanager.yml"
    amtool check-config "$dir/alertmanager.yml" > "$dir/check.out" 2>&1 \
        || { cat "$dir/check.out" >&2; die "Alertmanager config is invalid (above)"; }
    spawn alertmanager prometheus-alertmanager --config.file="$dir/alertmanager.yml" \
        --storage.path="$dir/data" \
        --web.listen-address="127.0.0.1:$ALERTMANAGER_PORT" \
        --cluster.listen-address=
}

start_oncall() {
    require_free_port oncall "$ONCALL_PORT" ONCALL_PORT
    [[ -x "$VENV/bin/python" ]] || die "the project's virtualenv $VENV is missing: run 'make install'."
    mkdir -p "$STACK_DIR/oncall"
    spawn oncall "$VENV/bin/python" -u -m cancelwatch.cli oncall --host 127.0.0.1 --port "$ONCALL_PORT" \
        --log "$STACK_DIR/oncall/notifications.jsonl"
}

# The worker and the simulator talk to this stack's ports.
application_environment() {
    export CANCELWATCH_BROKER="$(bootstrap_servers)"
    export CANCELWATCH_ALERTMANAGER_URL="http://127.0.0.1:$ALERTMANAGER_PORT"
    export CANCELWATCH_WEB_PORT="$WORKER_PORT"
}

start_worker() {
    require_free_port worker "$WORKER_PORT" WORKER_PORT
    [[ -x "$VENV/bin/python" ]] || die "the project's virtualenv $VENV is missing: run 'make install'."
    application_environment
    (cd "$ROOT" && spawn worker "$VENV/bin/python" -u -m cancelwatch.cli worker)
}

start_simulate() {
    [[ -x "$VENV/bin/python" ]] || die "the project's virtualenv $VENV is missing: run 'make install'."
    application_environment
    (cd "$ROOT" && spawn simulate "$VENV/bin/python" -u -m cancelwatch.cli simulate \
        --scenario "$DEMO_SCENARIO" --duration forever --speed "$DEMO_SPEED" \
        --reports --report-gap "$DEMO_REPORT_GAP")
}

# The cluster as one service: every node not yet running is started, then all are waited for.
# A busy port of any node stops start-up before a node is started.
start_cluster() {
    local node pid started=$SECONDS spawned=()
    for node in $(kafka_nodes); do
        live_pid "$node" > /dev/null || require_node_ports "$node"
    done
    for node in $(kafka_nodes); do
        if pid="$(live_pid "$node")"; then
            say "$node already running (pid $pid, port $(node_port "$node"))"
        else
            start_cluster_node "$node"
            spawned+=("$node")
        fi
    done
    for node in "${spawned[@]}"; do wait_healthy "$node"; done
    for node in "${spawned[@]}"; do
        say "$node up on 127.0.0.1:$(node_port "$node") (pid $(cat "$(pid_file "$node")"), $((SECONDS - started))s)"
    done
}

start_service() { # service
    local service="$1" pid
    if [[ "$service" == kafka ]] && (( KAFKA_BROKERS > 1 )); then
        start_cluster
        return
    fi
    port_of "$service" > /dev/null
    if pid="$(live_pid "$service")"; then
        say "$service already running (pid $pid, port $(port_of "$service"))"
        return 0
    fi
    local started=$SECONDS
    if is_cluster_node "$service"; then start_cluster_node "$service"; else "start_$service"; fi
    wait_healthy "$service"
    local where="on 127.0.0.1:$(port_of "$service")"
    [[ "$service" == simulate ]] && where="sending to Kafka on $(bootstrap_servers)"
    say "$service up $where (pid $(cat "$(pid_file "$service")"), $((SECONDS - started))s)"
}

# Every Kafka process that may run from this stack dir, whatever KAFKA_BROKERS says:
# the single broker and the cluster's nodes (newest first, so a cluster stops from the top).
every_kafka_process() {
    local node
    for (( node=CLUSTER_NODES; node>=1; node-- )); do echo "kafka-$node"; done
    echo kafka
}

# Stop the Kafka processes: the cluster's nodes all at once, since a node shutting down
# cleanly waits for the controller quorum, which the others form.
stop_kafka() {
    local service pids=() pid
    for service in $(every_kafka_process); do
        if pid="$(live_pid "$service")"; then
            kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
            pids+=("$service:$pid")
        else
            rm -f "$(pid_file "$service")"
        fi
    done
    for pid in "${pids[@]}"; do
        service="${pid%%:*}"
        if live_pid "$service" > /dev/null; then
            stop_process "$service"
        else
            rm -f "$(pid_file "$service")"
            say "$service stopped"
        fi
    done
}

stop_service() { # service
    if [[ "$1" == kafka ]] && (( KAFKA_BROKERS > 1 )); then
        stop_kafka
    else
        stop_process "$1"
    fi
}

stop_process() { # service
    local service="$1" pid
    if ! pid="$(live_pid "$service")"; then
        rm -f "$(pid_file "$service")"
        return 0
    fi
    # Each service runs in its own session (setsid): signal the whole group.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        say "$service (pid $pid) ignored SIGTERM for 30s; killing it"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    rm -f "$(pid_file "$service")"
    say "$service stopped"
}

status() {
    local service pid rc=0
    for service in $(kafka_nodes) "${SERVICES[@]:1}" "${APPLICATION[@]}"; do
        if pid="$(live_pid "$service")"; then
            if healthy "$service"; then
                printf '%-13s up        127.0.0.1:%-6s pid %s\n' "$service" "$(port_of "$service")" "$pid"
            else
                printf '%-13s unhealthy 127.0.0.1:%-6s pid %s (see %s)\n' "$service" "$(port_of "$service")" "$pid" "$(log_file "$service")"
                rc=1
            fi
        elif [[ " ${SERVICES[*]} " == *" $service "* ]] || is_cluster_node "$service"; then
            printf '%-13s down\n' "$service"
            rc=1
        fi
    done
    return $rc
}

command="${1:-}"
case "$command" in
    up)
        for service in "${SERVICES[@]}"; do start_service "$service"; done ;;
    down)
        for service in "${APPLICATION[@]}"; do stop_service "$service"; done
        for (( i=${#SERVICES[@]}-1; i>=1; i-- )); do stop_service "${SERVICES[i]}"; done
        stop_kafka ;;
    status)
        status ;;
    clean)
        for service in "${APPLICATION[@]}"; do stop_service "$service"; done
        for (( i=${#SERVICES[@]}-1; i>=1; i-- )); do stop_service "${SERVICES[i]}"; done
        stop_kafka
        # Keep the downloaded jars; everything else is data or logs.
        find "$STACK_DIR" -mindepth 1 -maxdepth 1 ! -name kafka -exec rm -rf {} +
        if [[ -d "$STACK_DIR/kafka" ]]; then
            find "$STACK_DIR/kafka" -mindepth 1 -maxdepth 1 ! -name lib -exec rm -rf {} +
        fi
        rm -rf "$WORKER_STATE_DIR"
        say "stopped; removed Kafka's data, Prometheus and Alertmanager storage, the webhook log and the worker state ($WORKER_STATE_DIR)" ;;
    start|stop|running)
        [[ $# -eq 2 ]] || die "usage: $0 $command SERVICE (services: ${SERVICES[*]})"
        port_of "$2" > /dev/null
        case "$command" in
            start) start_service "$2" ;;
            stop) stop_service "$2" ;;
            running)
                if [[ "$2" == kafka ]] && (( KAFKA_BROKERS > 1 )); then
                    for service in $(kafka_nodes); do live_pid "$service" > /dev/null || exit 1; done
                else
                    live_pid "$2" > /dev/null
                fi ;;
        esac ;;
    jars)
        copy_jars ;;
    *)
        die "usage: $0 up|down|status|clean|jars|start SERVICE|stop SERVICE|running SERVICE" ;;
esac
