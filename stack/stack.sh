#!/usr/bin/env bash
# The local stack: Kafka (KRaft, jars from Maven Central), Prometheus,
# Alertmanager (Debian packages) and the on-call webhook receiver, each a
# plain process with its pid file, data and log under $STACK_DIR.
#
#   stack/stack.sh up|down|status|clean
#   stack/stack.sh start|stop SERVICE     SERVICE: kafka prometheus alertmanager oncall,
#                                         or the demo's worker and simulate (not part of up)
#   stack/stack.sh running SERVICE        exit 0 when SERVICE runs from this stack dir
#   stack/stack.sh jars                   copy Kafka's jars from the local Maven repository
#
# Environment: STACK_DIR (.stack), KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT
# (19093), PROMETHEUS_PORT (9090), ALERTMANAGER_PORT (9093), ONCALL_PORT
# (5001), WORKER_PORT (6066, scraped by Prometheus), STACK_TIMEOUT (seconds
# to wait for a service to become healthy, 90), KAFKA_HEAP (1G), ALERTS_DIR
# (alerts/: alertmanager.yml and rules/*.yml), CANCELWATCH_DATA_DIR (.state,
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

port_of() {
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
        kafka) echo KAFKA_PORT ;;
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
            stop_service "$service"
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

start_kafka() {
    require_free_port kafka "$KAFKA_PORT" KAFKA_PORT
    require_free_port "kafka's controller" "$KAFKA_CONTROLLER_PORT" KAFKA_CONTROLLER_PORT
    command -v java > /dev/null || die "Java 17 or newer is needed for Kafka: install it with 'apt-get install -y openjdk-17-jre-headless'."
    copy_jars
    local dir="$STACK_DIR/kafka"
    mkdir -p "$dir/data" "$dir/logs"
    render "$ROOT/stack/kafka/server.properties" "$dir/server.properties"
    if [[ ! -f "$dir/data/meta.properties" ]]; then
        [[ -f "$dir/cluster-id" ]] || java -cp "$KAFKA_LIB/*" kafka.tools.StorageTool random-uuid > "$dir/cluster-id"
        say "formatting Kafka's storage in $dir/data (cluster $(cat "$dir/cluster-id"))"
        java -cp "$KAFKA_LIB/*" -Dlog4j2.configurationFile="$ROOT/stack/kafka/log4j2.properties" \
            -Dkafka.logs.dir="$dir/logs" kafka.tools.StorageTool format \
            -t "$(cat "$dir/cluster-id")" -c "$dir/server.properties" --ignore-formatted \
            >> "$(log_file kafka)" 2>&1 || die "formatting Kafka's storage failed; see $(log_file kafka)"
    fi
    # kafka.Kafka appends to server.log; start from a fresh one so the
    # health check reads this run's "started" line, not the last run's.
    rm -f "$dir/logs/server.log"
    spawn kafka java "-Xmx$KAFKA_HEAP" "-Xms$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$ROOT/stack/kafka/log4j2.properties" \
        -Dkafka.logs.dir="$dir/logs" \
        -cp "$KAFKA_LIB/*" kafka.Kafka "$dir/server.properties"
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
    export CANCELWATCH_BROKER="kafka://127.0.0.1:$KAFKA_PORT"
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

start_service() { # service
    local service="$1" pid
    port_of "$service" > /dev/null
    if pid="$(live_pid "$service")"; then
        say "$service already running (pid $pid, port $(port_of "$service"))"
        return 0
    fi
    local started=$SECONDS
    "start_$service"
    wait_healthy "$service"
    local where="on 127.0.0.1:$(port_of "$service")"
    [[ "$service" == simulate ]] && where="sending to Kafka on 127.0.0.1:$KAFKA_PORT"
    say "$service up $where (pid $(cat "$(pid_file "$service")"), $((SECONDS - started))s)"
}

stop_service() { # service
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
    for service in "${SERVICES[@]}" "${APPLICATION[@]}"; do
        if pid="$(live_pid "$service")"; then
            if healthy "$service"; then
                printf '%-13s up        127.0.0.1:%-6s pid %s\n' "$service" "$(port_of "$service")" "$pid"
            else
                printf '%-13s unhealthy 127.0.0.1:%-6s pid %s (see %s)\n' "$service" "$(port_of "$service")" "$pid" "$(log_file "$service")"
                rc=1
            fi
        elif [[ " ${SERVICES[*]} " == *" $service "* ]]; then
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
        for (( i=${#SERVICES[@]}-1; i>=0; i-- )); do stop_service "${SERVICES[i]}"; done ;;
    status)
        status ;;
    clean)
        for service in "${APPLICATION[@]}"; do stop_service "$service"; done
        for (( i=${#SERVICES[@]}-1; i>=0; i-- )); do stop_service "${SERVICES[i]}"; done
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
            running) live_pid "$2" > /dev/null ;;
        esac ;;
    jars)
        copy_jars ;;
    *)
        die "usage: $0 up|down|status|clean|jars|start SERVICE|stop SERVICE|running SERVICE" ;;
esac
