"""Shared fixtures for tests that run against the real local stack, and the unit tier's rules.

The stack is started by `make test` (or `make stack-up`); its ports come
from the same environment variables the Makefile reads. When a service is
not reachable the test fails, naming the service and how to start it: a
stack test never skips.

A test that uses a service is marked `stack` (a test asking for one of the
fixtures below without the mark stops the run); `make test-unit` runs the
others but the `slow` ones (`-m "not stack and not slow"`). Under such a mark
expression a module whose `pytestmark` is `pytest.mark.stack` is not even
imported, and no fixture here imports a Kafka client before a test asks for
it: collecting the unit tier loads only the Kafka clients that the modules
under test import themselves.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import os
import re
import socket
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
STACK_SCRIPT = ROOT / "stack" / "stack.sh"
# The fixtures of this file that reach a service; a test using one is a stack test.
SERVICE_FIXTURES = ("kafka_bootstrap", "prometheus_url", "alertmanager_url", "oncall_url", "kafka_topic",
                    "live_pipeline")


def _marked_stack_as_a_whole(module: Path) -> bool:
    """Whether the module sets `pytestmark = pytest.mark.stack` (alone or in a list)."""
    try:
        tree = ast.parse(module.read_bytes())
    except (OSError, SyntaxError):
        return False
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id == "pytestmark" for target in node.targets):
            marks = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
            return any(ast.unparse(mark) == "pytest.mark.stack" for mark in marks)
    return False


def _expression_excludes_stack(markexpr: str) -> bool:
    """Whether `-m markexpr` deselects every test marked `stack`, whatever its other marks."""
    from _pytest.mark.expression import Expression

    if "=" in markexpr:  # marks with keyword arguments: keep it simple, collect everything
        return False
    others = sorted(set(re.findall(r"[A-Za-z_][\w.-]*", markexpr)) - {"and", "or", "not", "stack"})
    if len(others) > 8:
        return False
    try:
        expression = Expression.compile(markexpr)
    except Exception:  # pytest itself reports a bad expression
        return False
    for values in itertools.product((False, True), repeat=len(others)):
        present = {"stack"} | {name for name, value in zip(others, values) if value}
        if expression.evaluate(lambda name, /, **kwargs: not kwargs and name in present):
            return False
    return True


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under `-m "not stack"`, skip importing the modules that are stack tests as a whole
    (they import Kafka clients at the top); pytest would only deselect them after importing."""
    if collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    markexpr = config.getoption("markexpr", "")
    if markexpr and _expression_excludes_stack(markexpr) and _marked_stack_as_a_whole(collection_path):
        return True
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that asks for a service and is not marked `stack` would run in the unit tier."""
    unmarked = [item.nodeid for item in items
                if item.get_closest_marker("stack") is None
                and set(SERVICE_FIXTURES) & set(getattr(item, "fixturenames", ()))]
    if unmarked:
        raise pytest.UsageError(
            "these tests use a service fixture (" + ", ".join(SERVICE_FIXTURES) + ") but are not "
            "marked `stack`; add `@pytest.mark.stack` (or `pytestmark = pytest.mark.stack`):\n  "
            + "\n  ".join(unmarked))


def _port(variable: str, default: int) -> int:
    return int(os.environ.get(variable, default))


def _require_tcp(service: str, port: int) -> None:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
    except OSError as error:
        pytest.fail(f"{service} is not reachable on 127.0.0.1:{port} ({error.strerror or error}); "
                    "start the stack with `make stack-up` or run the tests with `make test`",
                    pytrace=False)


def _require_http(service: str, url: str) -> None:
    try:
        response = requests.get(url, timeout=5)
    except requests.RequestException as error:
        pytest.fail(f"{service} is not reachable at {url} ({error.__class__.__name__}); "
                    "start the stack with `make stack-up` or run the tests with `make test`",
                    pytrace=False)
    if response.status_code != 200:
        pytest.fail(f"{service} answered {response.status_code} at {url}: it is not ready; "
                    "see `make stack-status` and its log under .stack/", pytrace=False)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """`127.0.0.1:<KAFKA_PORT>` of the running broker."""
    port = _port("KAFKA_PORT", 9092)
    _require_tcp("Kafka", port)
    return f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
def prometheus_url() -> str:
    url = f"http://127.0.0.1:{_port('PROMETHEUS_PORT', 9090)}"
    _require_http("Prometheus", url + "/-/ready")
    return url


@pytest.fixture(scope="session")
def alertmanager_url() -> str:
    url = f"http://127.0.0.1:{_port('ALERTMANAGER_PORT', 9093)}"
    _require_http("Alertmanager", url + "/-/ready")
    return url


@pytest.fixture(scope="session")
def oncall_url() -> str:
    """Base URL of the on-call webhook receiver (`cancelwatch oncall`)."""
    url = f"http://127.0.0.1:{_port('ONCALL_PORT', 5001)}"
    _require_http("The on-call webhook receiver", url + "/notifications")
    return url


@pytest.fixture
def kafka_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Factory: `kafka_topic(partitions=4, prefix="test")` creates a uniquely
    named topic and returns its name; every topic made is deleted afterwards."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="cancelwatch-tests")
    created: list[str] = []

    def create(partitions: int = 4, prefix: str = "test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        created.append(name)
        return name

    yield create
    if created:
        admin.delete_topics(created)
    admin.close()


@pytest.fixture(scope="session")
def live_pipeline(request: pytest.FixtureRequest) -> Iterator[str]:
    """Prometheus's base URL once a worker fed by the simulator has been scraped.

    The fixture is written in tests/pipeline.py, which needs a Kafka client: it is
    imported here only when a test asks for it, not when the unit tests
    (`make test-unit`) are collected."""
    from tests import pipeline

    build = pipeline.live_pipeline.__wrapped__
    arguments = {name: request.getfixturevalue(name) for name in inspect.signature(build).parameters}
    yield from build(**arguments)
