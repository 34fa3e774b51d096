"""Run `cancelwatch worker` as a real process for tests: isolated topics, state and port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

from cancelwatch import names

ROOT = Path(__file__).resolve().parent.parent
CANCELWATCH = str(Path(sys.executable).with_name("cancelwatch"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(nodes: int, step: int) -> tuple[int, int] | None:
    """(KAFKA_PORT, KAFKA_CONTROLLER_PORT) whose runs of `nodes` ports, `step` apart, are all
    free (stack/stack.sh: node n listens on KAFKA_PORT + step(n-1)); None when none is found."""
    for _ in range(200):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            second.bind(("127.0.0.1", 0))
            bases = first.getsockname()[1], second.getsockname()[1]
        every = [base + step * node for base in bases for node in range(nodes)]
        if max(every) < 65536 and len(set(every)) == len(every) and all(_free(port) for port in every):
            return bases
    return None


def process_stopped(pid: int) -> bool:
    """Whether every thread of process `pid` is stopped (SIGSTOP): the signal only asks, and
    on a busy machine a process can still run for a moment after kill() returns."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        except (OSError, IndexError):
            continue
    return bool(states) and all(state in "Tt" for state in states)


class Topics:
    """Unique topic names and consumer group for one test, as worker settings."""

    def __init__(self, prefix: str = "t") -> None:
        tag = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.app_id = f"cw-{tag}"
        self.orders = f"{tag}-orders"
        self.cancellations = f"{tag}-cancellations"
        self.reroute = f"{tag}-reroute"
        self.dead_letters = f"{tag}-dlq"
        self.account_health = f"{tag}-account-health"
        self.targets = f"{tag}-targets"

    @classmethod
    def of_app(cls, app_id: str, orders: str, cancellations: str) -> "Topics":
        """Given source topics, and the worker's own topics named after `app_id` (benchmarks)."""
        topics = cls.__new__(cls)
        topics.app_id, topics.orders, topics.cancellations = app_id, orders, cancellations
        topics.reroute, topics.dead_letters = f"{app_id}-reroute", f"{app_id}-dlq"
        topics.account_health, topics.targets = f"{app_id}-account-health", f"{app_id}-targets"
        return topics

    def env(self) -> dict[str, str]:
        return {
            "CANCELWATCH_APP_ID": self.app_id,
            "CANCELWATCH_ORDERS_TOPIC": self.orders,
            "CANCELWATCH_CANCELLATIONS_TOPIC": self.cancellations,
            "CANCELWATCH_REROUTE_TOPIC": self.reroute,
            "CANCELWATCH_DEAD_LETTER_TOPIC": self.dead_letters,
            "CANCELWATCH_ACCOUNT_HEALTH_TOPIC": self.account_health,
            "CANCELWATCH_TARGETS_TOPIC": self.targets,
        }


class WorkerProcess:
    """One `cancelwatch worker` process with topics, data dir, port and log of its own; the one
    harness of the tests and the benchmarks (`bench/common.Worker` extends it)."""

    error = AssertionError          # what a worker that exits or never answers raises
    stop_seconds = 30.0             # how long a SIGTERM may take before SIGKILL

    def __init__(self, topics: Topics, data_dir: Path, *, clock: str = "event", port: int | None = None,
                 alertmanager_url: str = "", extra_env: dict[str, str] | None = None,
                 log_path: Path | None = None) -> None:
        self.topics = topics
        self.port = port or free_port()
        self.data_dir = data_dir
        self.log_path = log_path or data_dir.with_suffix(".log")
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("CANCELWATCH_")}
        self.env.update(topics.env())
        self.env.update({
            "CANCELWATCH_BROKER": f"kafka://127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}",
            "CANCELWATCH_WEB_PORT": str(self.port),
            "CANCELWATCH_DATA_DIR": str(data_dir),
            "CANCELWATCH_CLOCK": clock,
            "CANCELWATCH_ALERTMANAGER_URL": alertmanager_url,
        })
        self.env.update(extra_env or {})
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def partitions(self) -> int:
        """The partitions of its source topics (the worker's setting, as it creates them)."""
        return int(self.env.get("CANCELWATCH_PARTITIONS", names.DEFAULT_PARTITIONS))

    @property
    def pid(self) -> int:
        return self.process.pid

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        """argv, environment and working directory of the worker process."""
        return [CANCELWATCH, "worker"], self.env, ROOT

    def start(self) -> "WorkerProcess":
        argv, env, cwd = self.command()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        return self

    def alive(self) -> None:
        if self.process.poll() is not None:
            raise self.error(f"worker exited with {self.process.returncode}; log: {self.log_path}\n"
                             + self.tail())

    def wait_ready(self, timeout: float = 90) -> float:
        """Wait until the HTTP API answers; return the seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            self.alive()
            try:
                response = requests.get(f"{self.url}/sellers/at-risk?marketplace=US&limit=1", timeout=2)
                if response.status_code == 200:
                    return time.monotonic() - started
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise self.error(f"worker not ready after {timeout}s; log: {self.log_path}\n" + self.tail())

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final commit, no flush."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.stop_seconds)
            except subprocess.TimeoutExpired:
                self.kill()

    def get(self, path: str, **params) -> requests.Response:
        return requests.get(self.url + path, params=params, timeout=10)

    def metrics_text(self, *only: str) -> str:
        """/metrics; `only`: just these sample names (the worker builds no other family)."""
        return requests.get(self.url + "/metrics", params=[("name[]", name) for name in only], timeout=30).text

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples matching the labels, from /metrics."""
        total = 0.0
        for line in self.metrics_text(name).splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            if head.split("{")[0] != name:
                continue
            if all(f'{key}="{val}"' in head for key, val in labels.items()):
                total += float(value)
        return total
