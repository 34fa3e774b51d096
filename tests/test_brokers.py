"""A three-broker Kafka cluster (`stack/stack.sh` with `KAFKA_BROKERS=3`): the worker's topics
replicated, and a broker lost under load.

The test starts a cluster of its own (its own stack dir and free ports: the shared stack has
one broker) and stops it at the end. The source topics are created as the producer client
creates them and filled with two thirds of a simulated replay; a worker (event clock, an
Alertmanager of the test's own) starts reading, and as soon as it has applied its first
events the broker leading the most source records is SIGKILLed. The last third is published
while that broker is down. The worker, never restarted, must answer every seller exactly as
`tests/oracle.py` and hold every breached seller's alert in Alertmanager, first with the
broker down, then again once it has been started and is back in every partition's in-sync
replicas, and go on re-sending those alerts. The figures go to docs/faults.json (row
`broker-failover`).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from cancelwatch import names, settings as settings_module, topics as topics_module
from tests import faults_table
from tests.delivery.test_alerting_e2e import wait_for
from tests.delivery.test_alertmanager import alertmanager  # noqa: F401 - the fixture: an Alertmanager of the test's own
from tests.worker.test_faults import assert_exact, stack, stack_env
from tests.worker.test_worker import expected_answers, publish, simulated_stream, strip_listing
from tests import workers
from tests.workers import Topics, WorkerProcess

pytestmark = pytest.mark.stack

BROKERS = 3
PORT_STEP = 10                  # stack/stack.sh: node n listens on KAFKA_PORT + 10(n-1)
TABLE_CHANGELOG = "order-buckets-changelog"
LEADER_TOPIC = "__assignor-__leader"
CLOCK_TOPIC = names.CLOCK_TOPIC_SUFFIX    # the workers' shared event clock (Settings.clock_topic)
WORKER_ENV = {"CANCELWATCH_ALERT_RESEND_SECONDS": "2", "CANCELWATCH_SESSION_TIMEOUT_SECONDS": "10"}


def cluster_ports() -> tuple[int, int]:
    ports = workers.cluster_ports(BROKERS, PORT_STEP)
    if ports is None:
        pytest.fail(f"no {2 * BROKERS} free ports {PORT_STEP} apart for a cluster of {BROKERS} brokers")
    return ports


@dataclass
class Cluster:
    """The test's own cluster: its nodes are the stack services kafka-1..kafka-3."""

    env: dict[str, str]
    stack_dir: Path
    kafka_port: int

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.kafka_port + PORT_STEP * node}" for node in range(BROKERS))

    def admin(self) -> KafkaAdminClient:
        return KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="cancelwatch-tests")

    def pid(self, node: int) -> int:
        return int((self.stack_dir / f"kafka-{node}" / f"kafka-{node}.pid").read_text())

    def kill(self, node: int) -> None:
        """SIGKILL: no controlled shutdown, no leadership handed over, no flush."""
        pid = self.pid(node)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{pid}").exists()
                 or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z", f"kafka-{node} (pid {pid}) gone")

    def start(self, node: int) -> None:
        stack("start", f"kafka-{node}", self.env)


@pytest.fixture
def cluster(tmp_path):
    kafka_port, controller_port = cluster_ports()
    env = {**stack_env(tmp_path / "stack", KAFKA_PORT=kafka_port, KAFKA_CONTROLLER_PORT=controller_port),
           "KAFKA_BROKERS": str(BROKERS)}
    try:
        stack("start", "kafka", env)
        yield Cluster(env, tmp_path / "stack", kafka_port)
    finally:
        stack("stop", "kafka", env)


def described(admin: KafkaAdminClient, wanted: list[str]) -> dict[str, list[dict]]:
    return {description["topic"]: description["partitions"] for description in admin.describe_topics(wanted)}


def min_insync(admin: KafkaAdminClient, topic: str) -> str:
    response = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    return next(entry[1] for entry in response[0].resources[0][4] if entry[0] == "min.insync.replicas")


def records_per_leader(cluster: Cluster, source: list[str]) -> tuple[dict[int, int], dict[int, list[str]]]:
    """(broker -> records in the source partitions it leads, broker -> those partitions)."""
    admin = cluster.admin()
    try:
        partitions = described(admin, source)
    finally:
        admin.close()
    consumer = KafkaConsumer(bootstrap_servers=cluster.bootstrap)
    try:
        ends = consumer.end_offsets([TopicPartition(topic, p["partition"]) for topic in source
                                     for p in partitions[topic]])
    finally:
        consumer.close()
    records: dict[int, int] = {}
    led: dict[int, list[str]] = {}
    for topic in source:
        for partition in partitions[topic]:
            leader = partition["leader"]
            records[leader] = records.get(leader, 0) + ends[TopicPartition(topic, partition["partition"])]
            led.setdefault(leader, []).append(f"{topic.rsplit('-', 1)[-1]}/{partition['partition']}")
    return records, led


def breach_alerts(alertmanager) -> set[tuple[str, str]]:
    return {(alert["labels"][names.LABEL_SELLER], alert["labels"][names.LABEL_MARKETPLACE])
            for alert in alertmanager.active() if alert["labels"]["alertname"] == names.ALERT_BREACHED}


def test_the_broker_leading_the_busiest_partitions_killed_during_a_replay(cluster, alertmanager, tmp_path):
    started = time.monotonic()
    topics = Topics("failover")
    stream = simulated_stream(seed=19, sellers=40, days=9)
    before, during = stream[:2 * len(stream) // 3], stream[2 * len(stream) // 3:]
    _, expected = expected_answers(stream)
    expected = strip_listing(expected)
    breached = {key for key, answer in expected.items() if any(w["status"] == "breach" for w in answer["windows"])}
    assert breached, "the scenario must breach at least one seller"

    # The source topics as the producer client creates them: replicated by the cluster's size.
    configured = settings_module.load({"CANCELWATCH_BROKER": cluster.bootstrap, **topics.env()})
    admin = cluster.admin()
    try:
        topics_module.create_missing(admin, configured.source_topics.values(), configured.partitions)
    finally:
        admin.close()
    sent = publish(cluster.bootstrap, topics, before, seed=1)

    worker = WorkerProcess(topics, tmp_path / "state", alertmanager_url=alertmanager.url,
                           extra_env={**WORKER_ENV, "CANCELWATCH_BROKER": cluster.bootstrap}).start()
    try:
        applied = wait_for(lambda: _events_applied(worker), "the worker applying its first events", seconds=180)
        source = [topics.orders, topics.cancellations]
        records, led = records_per_leader(cluster, source)
        victim = max(records, key=records.get)
        delivered_at_kill = _delivered(worker)
        cluster.kill(victim)
        killed = time.monotonic()
        sent_during = publish(cluster.bootstrap, topics, during, seed=2)
        sent += sent_during

        lost, double = assert_exact(worker, expected, timeout=240)
        wait_for(lambda: breach_alerts(alertmanager) == breached,
                 f"the breaches of {sorted(breached)} active in Alertmanager with kafka-{victim} down", seconds=60)
        exact_down = time.monotonic() - killed
        assert worker.process.poll() is None, "the worker exited while a broker was down:\n" + worker.tail()

        cluster.start(victim)
        down_seconds = time.monotonic() - killed
        internal = [f"{topics.app_id}-{name}" for name in (TABLE_CHANGELOG, LEADER_TOPIC, CLOCK_TOPIC)]
        every_topic = source + [topics.reroute, topics.dead_letters, topics.account_health] + internal
        admin = cluster.admin()
        try:
            wait_for(lambda: all(victim in partition["isr"]
                                 for partitions in described(admin, every_topic).values()
                                 for partition in partitions),
                     f"kafka-{victim} back in the in-sync replicas of every partition", seconds=120)
            replicas = {topic: {len(partition["replicas"]) for partition in partitions}
                        for topic, partitions in described(admin, every_topic).items()}
            insync = {topic: min_insync(admin, topic) for topic in every_topic}
        finally:
            admin.close()
        assert replicas == {topic: {BROKERS} for topic in every_topic}
        assert insync == {topic: "2" for topic in every_topic}

        after = assert_exact(worker, expected, timeout=60)
        lost, double = lost + after[0], double + after[1]
        assert breach_alerts(alertmanager) == breached
        delivered_back = _delivered(worker)
        delivered_at_end = wait_for(lambda: _delivered(worker) > delivered_back and _delivered(worker),
                                    "the worker re-sending its alerts with every broker back", seconds=60)
        assert worker.metric("cancelwatch_dead_letters_total") == 0
        assert worker.process.poll() is None, "the worker exited after the broker came back:\n" + worker.tail()
    finally:
        worker.stop()
    faults_table.record_fault(
        "broker-failover",
        fault=f"on a cluster of {BROKERS} brokers (replication {BROKERS}, min.insync.replicas 2), the broker "
              "leading the most source records SIGKILLed during a replay, started again later (same worker process)",
        injected=1, events=len(stream), lost=lost, double_counted=double, sellers=len(expected),
        seconds=time.monotonic() - started,
        checked=f"{sent:,} messages sent, {sent_during:,} of them with the broker down; killed when the worker "
                f"had applied {applied:,.0f} events; the broker led {', '.join(sorted(led[victim]))} "
                f"({records[victim]:,} of {sum(records.values()):,} records); exact, and every breach alert "
                f"({len(breached)}) active in Alertmanager, {exact_down:.0f} s after the kill with the broker "
                f"down; restarted after {down_seconds:.0f} s, back in every ISR, exact again; alert posts accepted by "
                f"Alertmanager: {delivered_at_kill:.0f} at the kill, {delivered_back:.0f} once the broker was back, "
                f"{delivered_at_end:.0f} at the end")


def _delivered(worker: WorkerProcess) -> float:
    """Alerts the worker has posted to Alertmanager and had accepted, re-sends included."""
    return worker.metric("cancelwatch_alert_deliveries_total", outcome="sent")


def _events_applied(worker: WorkerProcess) -> float:
    if worker.process.poll() is not None:
        raise AssertionError(f"worker exited with {worker.process.returncode}:\n{worker.tail()}")
    try:
        return worker.metric("cancelwatch_events_total")
    except OSError:
        return 0.0
