"""The compiled core: the worker's hot modules, built into C extension modules by Cython.

`make install` (stack/install.sh, through setup.py) compiles the modules of `MODULES`
from their unchanged Python source when the machine has a C compiler: each gets an
extension module beside its `.py`, which Python imports instead. The same code, about
10% fewer instructions per event on the hot path (docs/design.md, "The compiled core"). Without a
compiler, or with `CANCELWATCH_CORE=python`, everything runs as Python.

In a checkout (a `setup.py` beside `streams/`), Python would import an extension module
before the source beside it even after the source has changed, running old code.
`install()` (called by the package's `__init__`) prevents that: there, a module whose
extension is older than its source is imported from its source, with a warning, until
`make install` builds it again. An installed package (a wheel: the Docker image) has no
source to edit and uses its extensions.
"""

from __future__ import annotations

import os
import sys
import warnings
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec
from importlib.util import spec_from_file_location
from pathlib import Path

# The modules compiled: the core's hot path (decoding, applying, the store, evaluation)
# and the worker's reader of fetched records. The rest of the worker's shell (faust
# agents, HTTP, delivery) stays Python. A `.pxd` beside a module's source gives Cython
# C types for it (worker/records.pxd); the `.py` stays plain Python.
MODULES = (
    "cancelwatch.core.alerting",
    "cancelwatch.core.events",
    "cancelwatch.core.ledger",
    "cancelwatch.core.order_filter",
    "cancelwatch.core.policy",
    "cancelwatch.core.state",
    "cancelwatch.core.window",
    "cancelwatch.worker.records",
)
VARIABLE = "CANCELWATCH_CORE"
CHOICES = ("compiled", "python")
# Cython's options: the source's annotations are documentation, not C types (a `dict`
# annotation would otherwise refuse a defaultdict), and functions keep their Python
# introspection (signatures, __defaults__).
DIRECTIVES = {"language_level": 3, "annotation_typing": False, "binding": True}

_STREAMS = Path(__file__).resolve().parent.parent
_CHECKOUT = (_STREAMS.parent / "setup.py").is_file()


def source_of(module: str) -> Path:
    """The `.py` file of one of `MODULES`."""
    return _STREAMS.joinpath(*module.split(".")).with_suffix(".py")


def extension_of(module: str) -> Path | None:
    """The module's compiled extension beside its source, for this Python; None when not built."""
    source = source_of(module)
    for suffix in EXTENSION_SUFFIXES:
        candidate = source.with_name(source.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def _older(extension: Path, module: str) -> bool:
    """The extension was built before its module's source (or the `.pxd` beside it) last changed."""
    source = source_of(module)
    changed = source.stat().st_mtime
    declarations = source.with_suffix(".pxd")
    if declarations.is_file():
        changed = max(changed, declarations.stat().st_mtime)
    return extension.stat().st_mtime < changed


def stale(modules: tuple[str, ...] = MODULES) -> list[str]:
    """The modules whose extension is missing or older than their source: to build."""
    found = []
    for module in modules:
        extension = extension_of(module)
        if extension is None or _older(extension, module):
            found.append(module)
    return found


def wanted(environ=os.environ) -> str:
    """`compiled` or `python`, from CANCELWATCH_CORE (settings.py checks its value at start-up)."""
    return "python" if environ.get(VARIABLE, "").strip() == "python" else "compiled"


def running() -> str:
    """How the core runs in this process: `compiled` (every module of `MODULES` imported so
    far is an extension module), `python` (none is) or `mixed`."""
    kinds = {getattr(sys.modules[module], "__file__", "").endswith(".py")
             for module in MODULES if module in sys.modules}
    if len(kinds) > 1:
        return "mixed"
    return "compiled" if kinds == {False} else "python"


class _SourceWhenStale:
    """A meta path finder that sends a compiled module to its source when its extension is
    out of date or CANCELWATCH_CORE=python; otherwise Python's own finders take it."""

    _names = frozenset(MODULES)

    def find_spec(self, fullname: str, path=None, target=None) -> ModuleSpec | None:
        if fullname not in self._names:
            return None
        extension = extension_of(fullname)
        if extension is None:
            return None         # Python's finder imports the source, as for any module
        source = source_of(fullname)
        if wanted() == "compiled":
            if not _CHECKOUT or not _older(extension, fullname):
                return None
            warnings.warn(f"{fullname}: {source.name} changed after its compiled module "
                          f"{extension.name} was built; running the source (`make install` "
                          f"compiles it again)", RuntimeWarning, stacklevel=2)
        return spec_from_file_location(fullname, source)


def install() -> None:
    """Put the finder in front of Python's own (once)."""
    if not any(isinstance(finder, _SourceWhenStale) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourceWhenStale())
