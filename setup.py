"""Builds the compiled core (streams/cancelwatch/compiled.py): Cython compiles its modules'
Python source into extension modules beside it. Everything else is in pyproject.toml.

`make install` runs `python setup.py build_ext --inplace` when a module's extension is
missing or older than its source; without Cython nothing is compiled and the core runs
as Python."""

import sys
from pathlib import Path

from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "streams"))

from cancelwatch import compiled  # noqa: E402


def extensions() -> list:
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    modules = [Extension(module, [str(compiled.source_of(module).relative_to(ROOT))])
               for module in compiled.MODULES]
    return cythonize(modules, build_dir="build/cython", compiler_directives=compiled.DIRECTIVES,
                     nthreads=2, quiet=True)


setup(ext_modules=extensions())
