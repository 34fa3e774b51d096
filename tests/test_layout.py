"""The tree as README.md and docs/design.md describe it, and the imports the layout promises.

README's layout section names every subpackage and top-level folder, design.md's
module table every module, and no page points at a module that is not there. The
core and the shell's parts that need no broker import no Kafka client.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "streams" / "cancelwatch"
README = (ROOT / "README.md").read_text()
DESIGN = (ROOT / "docs" / "design.md").read_text()
KAFKA_CLIENTS = ("kafka", "aiokafka", "faust")


def layout_section() -> str:
    return README.split("## Layout", 1)[1].split("\n## ", 1)[0]


def modules() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if path.name != "__init__.py")


def test_the_readme_layout_names_every_subpackage_and_top_level_folder():
    section = layout_section()
    subpackages = [path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()]
    assert subpackages, "no subpackage found"
    missing = [name for name in subpackages if f"  {name}/" not in section]
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    folders = {line.split("/", 1)[0] for line in tracked.splitlines() if "/" in line and not line.startswith(".")}
    missing += [name for name in sorted(folders) if not re.search(rf"^{re.escape(name)}/", section, re.M)]
    assert not missing, f"README.md's layout section does not name {missing}"


def test_design_names_every_module_of_the_package():
    table = DESIGN.split("## Modules", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `streams/")]
    named: set[str] = set()
    for row in rows:
        cell = row.split("|")[1]
        paths = re.findall(r"`([^`]+)`", cell)
        folder = Path(paths[0]).parent
        named.update(str(folder / Path(path).name) for path in paths)
    missing = [str(path.relative_to(ROOT)) for path in modules() if str(path.relative_to(ROOT)) not in named]
    assert not missing, f"the module table of docs/design.md does not name {missing}"


def test_no_page_points_at_a_module_that_is_not_there():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    stale = [f"{page.relative_to(ROOT)}: {path}" for page in pages
             for path in re.findall(r"streams/[\w/.-]*\w", page.read_text())
             if not (ROOT / path).exists()]
    assert not stale, f"pages point at paths that do not exist: {stale}"


def test_the_core_and_the_brokerless_parts_import_no_kafka_client():
    names = [".".join(path.relative_to(ROOT / "streams").with_suffix("").parts) for path in modules()
             if path.parent.name in ("core", "delivery", "receivers")]
    names += ["cancelwatch.worker.web", "cancelwatch.worker.ownership", "cancelwatch.worker.mailbox",
              "cancelwatch.worker.table_store", "cancelwatch.worker.metrics", "cancelwatch.worker.runtime"]
    check = (f"import importlib, sys; [importlib.import_module(name) for name in {names!r}]; "
             f"print(sorted(name for name in {KAFKA_CLIENTS!r} if name in sys.modules))")
    done = subprocess.run([sys.executable, "-c", check], cwd=ROOT / "streams", capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
