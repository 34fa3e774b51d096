#!/usr/bin/env bash
# `make test`: install what is missing, start the services of the stack
# that are not running yet, run pytest, stop only what this run started,
# and exit with pytest's code (5, "no tests collected", is a failure too).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="$ROOT/stack/stack.sh"
SERVICES=(kafka prometheus alertmanager oncall)

"$ROOT/stack/install.sh" || exit $?
# tests/test_bench.py runs the bench's Quix Streams peer on the broker: the bench extra, as `make bench` installs it.
"$ROOT/.venv/bin/python" -c 'import quixstreams, confluent_kafka' 2>/dev/null \
    || "$ROOT/.venv/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[bench]" || exit $?

started=()
stop_started() {
    local i
    for (( i=${#started[@]}-1; i>=0; i-- )); do "$STACK" stop "${started[i]}" || true; done
}
trap stop_started EXIT

for service in "${SERVICES[@]}"; do
    "$STACK" running "$service" && continue
    started+=("$service")
    "$STACK" start "$service" || exit $?
done

cd "$ROOT"
# PYTEST_ARGS is split on spaces on purpose: `make test PYTEST_ARGS="-k stack -x"`.
# shellcheck disable=SC2086
"$ROOT/.venv/bin/python" -m pytest ${PYTEST_ARGS:-}
code=$?
if (( code == 5 )); then
    echo "test: pytest collected no tests; that is a failure" >&2
fi
exit $code
