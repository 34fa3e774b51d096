#!/usr/bin/env bash
# Install whatever the project needs and is missing: Debian packages
# (Java, Maven, Prometheus, Alertmanager), the virtualenv .venv with the
# package and its test extras, the compiled core, and Kafka's jars. Each step is skipped when
# its result is already there, so running it again costs a second.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
export DEBIAN_FRONTEND=noninteractive

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: %s\n' "$*" >&2; exit 1; }

# command -> Debian package that provides it
declare -A PACKAGE_OF=(
    [java]=openjdk-17-jre-headless
    [mvn]=maven
    [prometheus]=prometheus
    [promtool]=prometheus
    [prometheus-alertmanager]=prometheus-alertmanager
    [amtool]=prometheus-alertmanager
    [curl]=curl
    [ss]=iproute2
    [setsid]=util-linux
    [valgrind]=valgrind     # bench/hotpath.py --instructions, and its test
)

missing=()
for command in "${!PACKAGE_OF[@]}"; do
    command -v "$command" > /dev/null || missing+=("${PACKAGE_OF[$command]}")
done
if (( ${#missing[@]} )); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    command -v apt-get > /dev/null \
        || die "missing: ${missing[*]}. This machine has no apt-get: install these with its package manager (Java 17+, Maven, Prometheus 2.x with promtool, Alertmanager with amtool, curl, ss, valgrind)."
    [[ "$(id -u)" == 0 ]] \
        || die "missing: ${missing[*]}. Install them as root: sudo apt-get install -y ${missing[*]}"
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq || die "apt-get update failed (above); check the network and /etc/apt/sources.list"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null \
        || die "apt-get install ${missing[*]} failed (above)"
fi

java_major="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1)"
(( ${java_major:-0} >= 17 )) || die "Kafka 4 needs Java 17 or newer, found '${java_major:-none}': apt-get install -y openjdk-17-jre-headless"

if [[ ! -x "$VENV/bin/python" ]]; then
    command -v "$PYTHON" > /dev/null || die "no $PYTHON: install Python 3.11 or 3.12 (apt-get install -y python3 python3-venv), or set PYTHON=/path/to/python3.11"
    say "creating the virtualenv $VENV"
    "$PYTHON" -m venv "$VENV" || die "could not create $VENV: install the venv module (apt-get install -y python3-venv)"
fi
stamp="$VENV/.cancelwatch-installed"
if [[ ! -f "$stamp" || "$ROOT/pyproject.toml" -nt "$stamp" ]]; then
    say "installing cancelwatch with its test, dashboards and compile extras into $VENV"
    mkdir -p "$ROOT/.stack"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[test,dashboards,compile]" \
        > "$ROOT/.stack/pip-install.log" 2>&1 \
        || { tail -n 30 "$ROOT/.stack/pip-install.log" >&2
             die "pip could not install the project (above, all in .stack/pip-install.log); check that PyPI is reachable"; }
    touch "$stamp"
fi

# The compiled core (streams/cancelwatch/compiled.py): pip builds it on install; a module
# whose source changed since (an edit, a checkout) is built again here. Without a C compiler
# or Python's headers the core runs as Python, which is correct, only slower.
stale_modules() { "$VENV/bin/python" -c 'from cancelwatch import compiled; print(" ".join(compiled.stale()))'; }
stale="$(stale_modules)"
if [[ -n "$stale" ]]; then
    include="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    if ! command -v cc > /dev/null; then
        say "warning: no C compiler (apt-get install -y gcc): the core runs as Python, about 10% more CPU per event"
    elif [[ ! -f "$include/Python.h" ]]; then
        say "warning: no Python.h in $include (apt-get install -y python3-dev): the core runs as Python, about 10% more CPU per event"
    else
        say "compiling the core (Cython): ${stale//cancelwatch./}"
        mkdir -p "$ROOT/.stack"
        (cd "$ROOT" && "$VENV/bin/python" setup.py -q build_ext --inplace --parallel 2) \
            > "$ROOT/.stack/build-core.log" 2>&1 \
            || { tail -n 30 "$ROOT/.stack/build-core.log" >&2
                 die "could not compile the core (above, all in .stack/build-core.log)"; }
        left="$(stale_modules)"
        [[ -z "$left" ]] || die "the core's build left $left uncompiled (.stack/build-core.log); is Cython in $VENV?"
    fi
fi

"$ROOT/stack/stack.sh" jars
