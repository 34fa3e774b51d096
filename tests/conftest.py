"""Shared fixtures for tests that run against the real local stack.

The stack is started by `make test` (or `make stack-up`); its ports come
from the same environment variables the Makefile reads. When a service is
not reachable the test fails, naming the service and how to start it: a
stack test never skips.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
STACK_SCRIPT = ROOT / "stack" / "stack.sh"


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


# The live pipeline (a worker fed by the simulator, scraped by Prometheus) is
# a session fixture of its own module; importing it here makes it available
# to every test module.
from tests.pipeline import live_pipeline  # noqa: E402,F401
