"""The compiled core (`cancelwatch.compiled`): built by `make install` here, imported in place
of the source, never when out of date, and giving the Python source's answers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from cancelwatch import compiled

ROOT = Path(__file__).resolve().parent.parent
CAN_COMPILE = bool(shutil.which("cc")) and Path(sysconfig.get_paths()["include"], "Python.h").is_file()
needs_build = pytest.mark.skipif(not CAN_COMPILE, reason="no C compiler or Python.h: `make install` builds no compiled core")


def _python(code: str, *, streams: Path = ROOT / "streams", cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != compiled.VARIABLE}
    environment.update(PYTHONPATH=f"{streams}{os.pathsep}{ROOT}", **env)
    return subprocess.run([sys.executable, "-W", "always", "-c", code], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300, check=True)


def _changed_in_a_checkout_copy(tmp_path: Path, file: str) -> Path:
    """A copy of the package with its built extensions and setup.py (a checkout), in which
    `file` (under streams/cancelwatch/) changed after the build; returns its path."""
    shutil.copytree(ROOT / "streams" / "cancelwatch", tmp_path / "streams" / "cancelwatch",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.py", tmp_path / "setup.py")
    changed = tmp_path / "streams" / "cancelwatch" / file
    later = time.time() + 10
    os.utime(changed, (later, later))
    return changed


_FILES = "import importlib, json; print(json.dumps({m: importlib.import_module(m).__file__ for m in %r}))"


@needs_build
def test_make_install_built_every_module_of_the_core_and_they_are_the_ones_imported():
    assert compiled.stale() == [], "`make install` left these modules uncompiled"
    files = json.loads(_python(_FILES % (compiled.MODULES,)).stdout)
    assert all(not path.endswith(".py") for path in files.values()), files
    assert _python("from cancelwatch import compiled; import cancelwatch.core.state; "
                   "print(compiled.running())").stdout.strip() == "compiled"


@needs_build
def test_in_a_checkout_a_module_whose_source_changed_after_its_build_is_imported_from_its_source(tmp_path):
    changed = _changed_in_a_checkout_copy(tmp_path, "core/window.py")
    run = _python(_FILES % (("cancelwatch.core.window", "cancelwatch.core.ledger"),), streams=tmp_path / "streams",
                  cwd=tmp_path)
    files = json.loads(run.stdout)
    assert files["cancelwatch.core.window"] == str(changed)
    assert not files["cancelwatch.core.ledger"].endswith(".py")       # unchanged: still compiled
    assert "window.py changed after its compiled module" in run.stderr and "make install" in run.stderr
    assert _python("import cancelwatch.core.state; from cancelwatch import compiled; print(compiled.running())",
                   streams=tmp_path / "streams", cwd=tmp_path).stdout.strip() == "mixed"
    # installed (no setup.py beside streams/: a wheel's files), the extensions are used whatever their times
    (tmp_path / "setup.py").unlink()
    run = _python(_FILES % (("cancelwatch.core.window",),), streams=tmp_path / "streams", cwd=tmp_path)
    assert not json.loads(run.stdout)["cancelwatch.core.window"].endswith(".py") and "changed after" not in run.stderr


@needs_build
def test_declarations_changed_after_the_build_count_as_a_changed_source(tmp_path):
    # worker/records.pxd gives Cython the C types of records.py: an edit to it alone needs a build too
    _changed_in_a_checkout_copy(tmp_path, "worker/records.pxd")
    run = _python("from cancelwatch import compiled; print(' '.join(compiled.stale()))",
                  streams=tmp_path / "streams", cwd=tmp_path)
    assert run.stdout.split() == ["cancelwatch.worker.records"]


def test_cancelwatch_core_python_imports_every_module_from_its_source():
    files = json.loads(_python(_FILES % (compiled.MODULES,), CANCELWATCH_CORE="python").stdout)
    assert files == {module: str(compiled.source_of(module)) for module in compiled.MODULES}
    assert _python("import cancelwatch.core.state; from cancelwatch import compiled; print(compiled.running())",
                   CANCELWATCH_CORE="python").stdout.strip() == "python"


# Ten days of a simulated fleet through the worker's runtime (tests/dict_runtime.py): every
# store value, every seller's evaluation and every alert decision, per group.
_REPLAY = """
import hashlib, json, os
from datetime import datetime, timedelta, timezone
from cancelwatch import compiled, settings as settings_module
from cancelwatch.core import events, policy as policy_module
from cancelwatch.tools import scenarios
from tests import dict_runtime

start = datetime(2026, 11, 1, tzinfo=timezone.utc)
settings = settings_module.load({**os.environ, "CANCELWATCH_CLOCK": "event"})
policy = policy_module.load(settings.policy_path)
stream = scenarios.disorder(scenarios.generate("inventory-outage", 5, start=start, end=start + timedelta(days=10),
                                               sellers=60), duplicates=0.02, reorder=0.01, seed=5)
records = dict_runtime.messages([events.encode(event) for event in stream], settings)
runtime = dict_runtime.runtime(settings, policy)
decisions = []
def record(outbox):
    decisions.append([sorted(str(alert.labels) for alert in outbox.fire),
                      sorted(str(alert.labels) for alert in outbox.resolve)])
dict_runtime.feed(runtime, records, 500, record)
store = hashlib.sha256()
for key in sorted(runtime.store):
    if key.startswith(b"a"):
        continue    # a seller's firing alerts hold the wall-clock time they were sent: compared as decisions
    store.update(key + b"=" + runtime.store[key] + b";")
sellers = sorted(repr((state.seller_id, state.marketplace, state.summary.status, state.summary.band,
                       state.summary.windows)) for state in runtime.book.states())
print(json.dumps({"core": compiled.running(), "records": len(records), "store": store.hexdigest(),
                  "sellers": sellers, "decisions": decisions}))
"""


def test_the_compiled_core_and_the_python_source_give_the_same_answers():
    runs = {core: json.loads(_python(_REPLAY, CANCELWATCH_CORE=core).stdout) for core in compiled.CHOICES}
    assert runs["python"]["core"] == "python"
    if CAN_COMPILE:
        assert runs["compiled"]["core"] == "compiled"
    fired = sum(len(fire) for fire, _ in runs["python"]["decisions"])
    assert runs["python"]["records"] > 10_000 and fired > 0 and len(runs["python"]["sellers"]) >= 60
    for part in ("store", "sellers", "decisions"):
        assert runs["compiled"][part] == runs["python"][part], f"the two cores differ in {part}"
