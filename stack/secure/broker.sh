#!/usr/bin/env bash
# A Kafka broker that only speaks SASL_SSL (TLS + SCRAM-SHA-512), for trying
# cancelwatch against a secured cluster. Separate from the local stack: its own
# directory, ports and process; the shared broker on 9092 is not touched.
#
#   stack/secure/broker.sh start    make a CA, the broker's keystore and two SCRAM
#                                   users (cancelwatch, broker), format, start
#   stack/secure/broker.sh stop
#   stack/secure/broker.sh status
#
# Environment: SECURE_DIR (.stack/secure), SECURE_PORT (19094),
# SECURE_CONTROLLER_PORT (19095), KAFKA_LIB (.stack/kafka/lib, from
# `make install`), KAFKA_HEAP (512M), STACK_TIMEOUT (90).
#
# After start, $SECURE_DIR holds:
#   ca.pem                  the CA that signed the broker's certificate (for clients)
#   cancelwatch.password    the SCRAM password of user `cancelwatch` (mode 600)
#   client.env              CANCELWATCH_* settings that point a worker, `cancelwatch
#                           publish` or the producer client at this broker:
#                           `set -a; . $SECURE_DIR/client.env; set +a`
# Passwords are random per directory and never printed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SECURE_DIR="${SECURE_DIR:-$ROOT/.stack/secure}"
mkdir -p "$SECURE_DIR"
SECURE_DIR="$(cd "$SECURE_DIR" && pwd)"
SECURE_PORT="${SECURE_PORT:-19094}"
SECURE_CONTROLLER_PORT="${SECURE_CONTROLLER_PORT:-19095}"
KAFKA_LIB="${KAFKA_LIB:-$ROOT/.stack/kafka/lib}"
KAFKA_HEAP="${KAFKA_HEAP:-512M}"
STACK_TIMEOUT="${STACK_TIMEOUT:-90}"
PID_FILE="$SECURE_DIR/kafka.pid"
LOG_FILE="$SECURE_DIR/kafka.out"
USER_NAME=cancelwatch

say() { printf 'secure: %s\n' "$*"; }
die() { printf 'secure: %s\n' "$*" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
random_secret() { openssl rand -hex 24; }

live_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

# The secret in FILE, made once per directory.
secret() { # file
    local file="$SECURE_DIR/$1"
    [[ -s "$file" ]] || (umask 077; random_secret > "$file")
    cat "$file"
}

make_certificates() {
    local dir="$SECURE_DIR" store
    [[ -f "$dir/broker.p12" && -f "$dir/truststore.p12" && -f "$dir/ca.pem" ]] && return 0
    store="$(secret store.password)"
    say "making a CA and the broker's certificate (127.0.0.1, localhost) in $dir"
    (umask 077
     openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 30 -subj "/CN=cancelwatch test CA" \
         -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
         -keyout "$dir/ca.key" -out "$dir/ca.pem"
     openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=localhost" \
         -keyout "$dir/broker.key" -out "$dir/broker.csr"
     printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
         "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth,clientAuth" \
         > "$dir/broker.ext"
     openssl x509 -req -sha256 -days 30 -in "$dir/broker.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
         -CAcreateserial -extfile "$dir/broker.ext" -out "$dir/broker.pem"
     openssl pkcs12 -export -name broker -in "$dir/broker.pem" -inkey "$dir/broker.key" \
         -certfile "$dir/ca.pem" -out "$dir/broker.p12" -passout "pass:$store"
     rm -f "$dir/truststore.p12"
     keytool -importcert -noprompt -alias ca -file "$dir/ca.pem" -keystore "$dir/truststore.p12" \
         -storetype PKCS12 -storepass "$store") > "$dir/certificates.log" 2>&1 \
        || { cat "$dir/certificates.log" >&2; die "making the certificates failed (above)"; }
    chmod 644 "$dir/ca.pem"
}

render() {
    sed -e "s|@DIR@|$SECURE_DIR|g" \
        -e "s|@PORT@|$SECURE_PORT|g" \
        -e "s|@CONTROLLER_PORT@|$SECURE_CONTROLLER_PORT|g" \
        -e "s|@BROKER_PASSWORD@|$(secret broker.password)|g" \
        -e "s|@STORE_PASSWORD@|$(secret store.password)|g" \
        "$ROOT/stack/secure/server.properties" > "$SECURE_DIR/server.properties"
    chmod 600 "$SECURE_DIR/server.properties"
}

write_client_env() {
    secret "$USER_NAME.password" > /dev/null
    cat > "$SECURE_DIR/client.env" <<EOF
CANCELWATCH_BROKER=kafka://127.0.0.1:$SECURE_PORT
CANCELWATCH_KAFKA_SECURITY_PROTOCOL=SASL_SSL
CANCELWATCH_KAFKA_SASL_MECHANISM=SCRAM-SHA-512
CANCELWATCH_KAFKA_USERNAME=$USER_NAME
CANCELWATCH_KAFKA_PASSWORD_FILE=$SECURE_DIR/$USER_NAME.password
CANCELWATCH_KAFKA_CA_FILE=$SECURE_DIR/ca.pem
EOF
}

java_run() { # main class and arguments
    java -cp "$KAFKA_LIB/*" -Dlog4j2.configurationFile="$ROOT/stack/kafka/log4j2.properties" \
        -Dkafka.logs.dir="$SECURE_DIR/logs" "$@"
}

start() {
    local pid
    if pid="$(live_pid)"; then
        say "already running (pid $pid, SASL_SSL on 127.0.0.1:$SECURE_PORT)"
        return 0
    fi
    for port in "$SECURE_PORT" "$SECURE_CONTROLLER_PORT"; do
        port_open "$port" && die "port $port is in use; set SECURE_PORT and SECURE_CONTROLLER_PORT to free ports"
    done
    compgen -G "$KAFKA_LIB/kafka_2.13-*.jar" > /dev/null \
        || die "Kafka's jars are missing in $KAFKA_LIB: run 'make install' (or set KAFKA_LIB)"
    make_certificates
    render
    write_client_env
    mkdir -p "$SECURE_DIR/data" "$SECURE_DIR/logs"
    if [[ ! -f "$SECURE_DIR/data/meta.properties" ]]; then
        say "formatting storage with SCRAM-SHA-512 users $USER_NAME and broker"
        java_run kafka.tools.StorageTool format -t "$(java_run kafka.tools.StorageTool random-uuid)" \
            -c "$SECURE_DIR/server.properties" \
            --add-scram "SCRAM-SHA-512=[name=$USER_NAME,password=$(secret "$USER_NAME.password")]" \
            --add-scram "SCRAM-SHA-512=[name=broker,password=$(secret broker.password)]" \
            >> "$LOG_FILE" 2>&1 || die "formatting the storage failed; see $LOG_FILE"
    fi
    rm -f "$SECURE_DIR/logs/server.log"
    setsid java "-Xmx$KAFKA_HEAP" "-Xms$KAFKA_HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$ROOT/stack/kafka/log4j2.properties" \
        -Dkafka.logs.dir="$SECURE_DIR/logs" \
        -cp "$KAFKA_LIB/*" kafka.Kafka "$SECURE_DIR/server.properties" >> "$LOG_FILE" 2>&1 < /dev/null &
    pid=$!
    echo "$pid" > "$PID_FILE"
    local deadline=$((SECONDS + STACK_TIMEOUT))
    until port_open "$SECURE_PORT" && grep -q "Kafka Server started" "$SECURE_DIR/logs/server.log" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || { tail -n 30 "$LOG_FILE" "$SECURE_DIR/logs/server.log" >&2 || true
                                         die "the broker exited during start-up (above)"; }
        (( SECONDS < deadline )) || { stop; die "the broker did not start within ${STACK_TIMEOUT}s; see $SECURE_DIR/logs/server.log"; }
        sleep 0.3
    done
    say "up: SASL_SSL (SCRAM-SHA-512) on 127.0.0.1:$SECURE_PORT (pid $pid); client settings in $SECURE_DIR/client.env"
}

stop() {
    local pid
    if ! pid="$(live_pid)"; then
        rm -f "$PID_FILE"
        return 0
    fi
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE"
    say "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) if pid="$(live_pid)"; then say "running (pid $pid) on 127.0.0.1:$SECURE_PORT"; else say "not running"; exit 1; fi ;;
    *) die "usage: $0 start|stop|status" ;;
esac
