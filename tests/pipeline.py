"""The `live_pipeline` fixture: a worker on the port Prometheus scrapes, fed by the simulator.

Starts `cancelwatch worker` (wall clock, delivering to the stack's
Alertmanager) on WORKER_PORT (default 6066, the port stack/prometheus.yml
scrapes), publishes eight days of `inventory-outage` traffic and a few
malformed messages with `cancelwatch simulate`, and returns Prometheus's base
URL once it has scraped the worker's data and evaluated the recording rules.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import requests
from kafka import KafkaProducer

from tests.workers import CANCELWATCH, ROOT, Topics, WorkerProcess


def _query(prometheus: str, expr: str) -> list:
    body = requests.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    return body.get("data", {}).get("result", []) if body.get("status") == "success" else []


def _wait(what: str, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    pytest.fail(f"live pipeline: {what} did not happen within {timeout:.0f}s", pytrace=False)


@pytest.fixture(scope="session")
def live_pipeline(kafka_bootstrap, prometheus_url, alertmanager_url, tmp_path_factory):
    topics = Topics("live")
    state = tmp_path_factory.mktemp("live-worker")
    worker = WorkerProcess(topics, state / "state", clock="wall",
                           port=int(os.environ.get("WORKER_PORT", "6066")),
                           alertmanager_url=alertmanager_url,
                           extra_env={"CANCELWATCH_ALERT_RESEND_SECONDS": "5"}).start()
    try:
        worker.wait_ready()
        env = dict(worker.env)
        simulate = subprocess.run(
            [CANCELWATCH, "simulate", "--scenario", "inventory-outage", "--sellers", "40",
             "--history", "8d", "--seed", "5"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert simulate.returncode == 0, simulate.stderr[-2000:]
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        for value in (b"not json", b'{"schema_version": 1}'):
            producer.send(topics.orders, key=b"bad", value=value)
        producer.flush()
        producer.close()
        _wait("the worker firing an alert",
              lambda: worker.metric("cancelwatch_alerts_active") > 0, 300)
        _wait("Prometheus scraping the worker's events",
              lambda: _query(prometheus_url, 'cancelwatch_events_total{job="cancelwatch"}'), 60)
        _wait("Prometheus seeing delivered alerts",
              lambda: _query(prometheus_url, 'cancelwatch_alert_deliveries_total{outcome="sent"}'), 60)
        # The malformed messages come last on the topic: wait until they are counted and
        # their recording rule has two scrapes to work with.
        _wait("the worker dead-lettering the malformed messages",
              lambda: worker.metric("cancelwatch_dead_letters_total") >= 2, 120)
        _wait("Prometheus recording the dead letters",
              lambda: _query(prometheus_url, "job_topic_kind:cancelwatch_dead_letters:rate5m"), 90)
        time.sleep(12)  # two more scrapes and a rule evaluation, so rates and recording rules have data
        yield prometheus_url
    finally:
        worker.stop()
