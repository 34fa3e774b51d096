#!/usr/bin/env bash
# `make demo`: install, start the stack, then the worker and a simulator in
# which a seller drifts toward the limit, and say where to look.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="$ROOT/stack/stack.sh"
STACK_DIR="${STACK_DIR:-$ROOT/.stack}"
PROMETHEUS_PORT="${PROMETHEUS_PORT:-9090}"
ALERTMANAGER_PORT="${ALERTMANAGER_PORT:-9093}"
ONCALL_PORT="${ONCALL_PORT:-5001}"
WORKER_PORT="${WORKER_PORT:-${CANCELWATCH_WEB_PORT:-6066}}"
DEMO_SCENARIO="${DEMO_SCENARIO:-inventory-outage}"

"$ROOT/stack/install.sh"
"$STACK" up

"$STACK" start worker
"$STACK" start simulate

cat <<TEXT

cancelwatch demo: scenario '$DEMO_SCENARIO' (DEMO_SCENARIO=...; see 'cancelwatch simulate --help')
  worker API     http://127.0.0.1:$WORKER_PORT/sellers/at-risk?marketplace=US
  metrics        http://127.0.0.1:$WORKER_PORT/metrics
  terminal view  .venv/bin/cancelwatch top   (sellers at risk, rate bars, active alerts)
  Prometheus     http://127.0.0.1:$PROMETHEUS_PORT/alerts
  Alertmanager   http://127.0.0.1:$ALERTMANAGER_PORT/#/alerts
  on-call log    $STACK_DIR/oncall/notifications.jsonl   (one line per alert: $STACK_DIR/oncall/oncall.out)
                 http://127.0.0.1:$ONCALL_PORT/notifications
  process logs   $STACK_DIR/<service>/<service>.out
  'make stack-status' shows what runs; 'make stack-down' stops everything.
TEXT
