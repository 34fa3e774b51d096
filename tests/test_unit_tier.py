"""The test suite's own rules: the unit tier (`make test-unit`) and the tests' tables.

`make test-unit` runs `pytest -m "not stack and not slow"`: tests/conftest.py then skips
the modules marked `stack` as a whole without importing them, and imports no
Kafka client itself. Tables of cases in the tests are dict literals; a key
written twice silently drops a case, so none may repeat one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests import conftest

TESTS = Path(__file__).resolve().parent
KAFKA_CLIENTS = ("kafka", "aiokafka", "faust")


def repeated_keys(source: str) -> list[tuple[int, str]]:
    """(line, key) of every key a dict literal in `source` repeats."""
    repeats = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Dict):
            continue
        seen: set = set()
        for key in node.keys:
            if key is None:  # `**mapping`
                continue
            try:
                value = ("literal", ast.literal_eval(key))
            except ValueError:
                value = ("expression", ast.dump(key))
            if value in seen:
                repeats.append((key.lineno, ast.unparse(key)))
            seen.add(value)
    return repeats


def test_the_repeated_key_check_sees_a_repeated_key():
    assert repeated_keys('CASES = {"a": 1, "b": 2, "a": 3}') == [(1, "'a'")]
    assert repeated_keys("CASES = {names.X: 1, names.Y: 2, names.X: 3, **more}") == [(1, "names.X")]
    assert repeated_keys('CASES = {"a": 1, "b": {"a": 2}}') == []


def test_no_dict_literal_in_the_tests_repeats_a_key():
    repeats = {f"{path.relative_to(TESTS.parent)}:{line}": key
               for path in sorted(TESTS.rglob("*.py")) for line, key in repeated_keys(path.read_text())}
    assert repeats == {}, "a repeated key drops the earlier entry; give each case its own key"


@pytest.mark.parametrize("markexpr, excluded", [
    ("not stack", True), ("not stack and not slow", True), ("(not stack)", True),
    ("stack", False), ("stack or not stack", False), ("slow", False), ("not slow", False),
    ("not (stack and slow)", False), ("stack and not slow", False),
])
def test_which_mark_expressions_leave_out_every_stack_test(markexpr, excluded):
    assert conftest._expression_excludes_stack(markexpr) is excluded


def test_modules_marked_stack_as_a_whole_are_recognised():
    whole = {path.name for path in TESTS.rglob("test_*.py") if conftest._marked_stack_as_a_whole(path)}
    declared = {path.name for path in TESTS.rglob("test_*.py")
                if any(line.startswith("pytestmark") and "pytest.mark.stack" in line
                       for line in path.read_text().splitlines())}
    assert whole == declared
    assert "test_worker.py" in whole and "test_unit_tier.py" not in whole


def test_the_shared_fixtures_import_no_kafka_client():
    check = ("import sys, tests.conftest; "
             f"print(sorted(name for name in {KAFKA_CLIENTS!r} if name in sys.modules))")
    done = subprocess.run([sys.executable, "-c", check], cwd=TESTS.parent, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
