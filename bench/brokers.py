"""One broker or three: the worker's throughput on the stack's single broker beside a
three-broker cluster, in one run.

The cluster is started for this benchmark (`stack/stack.sh` with `KAFKA_BROKERS=3`, a stack
dir of its own and free ports) and stopped after it. Both hold the same pre-filled simulator
events; on the cluster the topics have three replicas and `min.insync.replicas=2` (created the
way the worker creates its own), and the worker replicates its changelog, reroute and
dead-letter topics the same way and writes them with `acks=all` and idempotence. Every
repetition runs one worker (event clock) on each, one after the other, from its first
processed event until every message is processed or the time cap.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import common
from common import ROOT, BenchError, Worker, delete_topics, log, prefilled, spread, wait_processed
from tests.workers import cluster_ports

STACK = ROOT / "stack" / "stack.sh"
NODES = 3
PORT_STEP = 10      # stack/stack.sh: node n listens on KAFKA_PORT + 10(n-1)


def run(sizes: dict, workdir: Path) -> dict:
    single = common.BOOTSTRAP
    kafka_port, controller_port = _cluster_ports()
    cluster = ",".join(f"127.0.0.1:{kafka_port + PORT_STEP * node}" for node in range(NODES))
    env = {**os.environ, "STACK_DIR": str(workdir / "cluster"), "KAFKA_BROKERS": str(NODES),
           "KAFKA_PORT": str(kafka_port), "KAFKA_CONTROLLER_PORT": str(controller_port),
           "KAFKA_LIB": os.environ.get("KAFKA_LIB", str(ROOT / ".stack" / "kafka" / "lib"))}
    topics = {single: prefilled(sizes["sellers"], sizes["duration"], sizes["events"])}
    _stack("start", env)
    try:
        with _on(cluster):
            topics[cluster] = prefilled(sizes["sellers"], sizes["duration"], sizes["events"])
        runs: dict[str, list] = {"one_broker": [], "three_brokers": []}
        for repetition in range(sizes["brokers_repetitions"]):
            for name, bootstrap in (("one_broker", single), ("three_brokers", cluster)):
                orders, cancellations, total = topics[bootstrap]
                with _on(bootstrap):
                    result = _worker(orders, cancellations, total, sizes["worker_cap_seconds"], workdir)
                runs[name].append(result)
                log(f"brokers {repetition + 1}/{sizes['brokers_repetitions']} {name}: "
                    f"{result['events_per_s']:,.0f} events/s ({result['events']} events in {result['seconds']:.1f}s)")
    finally:
        _stack("stop", env)
    rates = {name: spread([r["events_per_s"] for r in results]) for name, results in runs.items()}
    return {
        "messages": topics[single][2], "partitions": common.PARTITIONS,
        "events_per_s": rates,
        "ratio": rates["three_brokers"]["median"] / rates["one_broker"]["median"],
        "runs": runs,
    }


def _worker(orders: str, cancellations: str, total: int, cap: float, workdir: Path) -> dict:
    worker = Worker(workdir, orders=orders, cancellations=cancellations, clock="event", name="brokers")
    try:
        worker.start()
        worker.wait_ready()
        result = wait_processed([worker], total, cap, poll=0.5)
        result.pop("samples")
        return result
    finally:
        worker.stop()
        delete_topics(worker.internal_topics())


@contextmanager
def _on(bootstrap: str):
    """The suite's helpers (topics, producer, workers) talk to `bootstrap` meanwhile."""
    before, common.BOOTSTRAP = common.BOOTSTRAP, bootstrap
    try:
        yield
    finally:
        common.BOOTSTRAP = before


def _stack(command: str, env: dict) -> None:
    done = subprocess.run([str(STACK), command, "kafka"], env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise BenchError(f"stack.sh {command} kafka (KAFKA_BROKERS={NODES}) failed:\n{done.stdout}{done.stderr}")


def _cluster_ports() -> tuple[int, int]:
    ports = cluster_ports(NODES, PORT_STEP)
    if ports is None:
        raise BenchError(f"no {2 * NODES} free ports {PORT_STEP} apart for a cluster of {NODES} brokers")
    return ports
