"""The local stack (stack/stack.sh, stack/install.sh) against the real services:
Kafka topics, produce/consume, consumer groups, a faust app with a RocksDB
table, Prometheus and Alertmanager loaded with the project's config, and
the scripts' behaviour: idempotent start, clear errors on busy ports and
missing tools."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import requests
import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient

from cancelwatch import names
from tests.workers import free_port

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "stack" / "stack.sh"
INSTALL = ROOT / "stack" / "install.sh"
SERVICES = ("kafka", "prometheus", "alertmanager", "oncall")

pytestmark = pytest.mark.stack


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_topic_gets_the_partition_count_the_app_needs(kafka_bootstrap, kafka_topic):
    topic = kafka_topic(partitions=names.DEFAULT_PARTITIONS)
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    try:
        assert consumer.partitions_for_topic(topic) == set(range(names.DEFAULT_PARTITIONS))
    finally:
        consumer.close()


def test_produce_consume_round_trip_and_group_commit(kafka_bootstrap, kafka_topic):
    topic = kafka_topic(partitions=names.DEFAULT_PARTITIONS)
    sent = {f"seller-{number}": f"value-{number}".encode() for number in range(40)}
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for key, value in sent.items():
        producer.send(topic, key=key.encode(), value=value)
    producer.flush()
    producer.close()

    group = f"test-group-{uuid.uuid4().hex[:8]}"
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=group,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=20_000)
    received = {}
    partitions_seen = set()
    for message in consumer:
        received[message.key.decode()] = message.value
        partitions_seen.add(message.partition)
        if len(received) == len(sent):
            break
    consumer.commit()
    consumer.close()
    assert received == sent
    assert len(partitions_seen) > 1, "40 keys should spread over several partitions"

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        offsets = admin.list_consumer_group_offsets(group)
    finally:
        admin.close()
    assert sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic) == len(sent)


FAUST_APP = textwrap.dedent('''
    """A tiny faust app: an agent counting events per key into a RocksDB table."""
    import asyncio, os
    import faust

    APP_ID = os.environ["SMOKE_APP_ID"]
    COUNT = 20
    app = faust.App(APP_ID, broker=os.environ["SMOKE_BROKER"], store="rocksdb://",
                    datadir=os.environ["SMOKE_DATA"], topic_partitions=4, web_enabled=False,
                    web_port=int(os.environ["SMOKE_WEB_PORT"]), web_bind="127.0.0.1",
                    web_host="127.0.0.1")  # faust's worker binds its web port even when disabled
    source = app.topic(os.environ["SMOKE_TOPIC"], key_type=str, value_type=str, partitions=4)
    counts = app.Table("counts", default=int, partitions=4)
    done = asyncio.Event()

    @app.agent(source)
    async def count(stream):
        total = 0
        async for key, value in stream.items():
            counts[key] += 1
            total += 1
            if total >= COUNT:
                done.set()

    @app.task
    async def drive():
        for number in range(COUNT):
            await source.send(key=f"seller-{number % 5}", value="event")
        await asyncio.wait_for(done.wait(), 90)
        await asyncio.sleep(3)  # let the changelog producer flush
        print("COUNTS", sorted(counts.items()), flush=True)
        os._exit(0 if sum(counts.values()) == COUNT else 3)

    if __name__ == "__main__":
        app.main()
''')


def test_faust_app_with_rocksdb_table_runs_against_the_broker(kafka_bootstrap, kafka_topic, tmp_path):
    source = kafka_topic(partitions=4, prefix="faust-source")
    app_id = f"faust-smoke-{uuid.uuid4().hex[:8]}"
    script = tmp_path / "smoke_app.py"
    script.write_text(FAUST_APP)
    env = {**os.environ, "SMOKE_APP_ID": app_id, "SMOKE_BROKER": f"kafka://{kafka_bootstrap}",
           "SMOKE_DATA": str(tmp_path / "data"), "SMOKE_TOPIC": source,
           "SMOKE_WEB_PORT": str(free_port())}
    changelog = f"{app_id}-counts-changelog"
    try:
        run = subprocess.run([sys.executable, str(script), "worker", "-l", "warn"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, f"faust app failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"

        consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, consumer_timeout_ms=5_000,
                                 auto_offset_reset="earliest")
        partitions = consumer.partitions_for_topic(changelog)
        assert partitions == set(range(4)), f"changelog {changelog} should have 4 partitions"
        consumer.assign([TopicPartition(changelog, partition) for partition in partitions])
        latest = {json.loads(message.key): json.loads(message.value) for message in consumer}
        consumer.close()
        assert latest == {f"seller-{number}": 4 for number in range(5)}
    finally:
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        internal = [topic for topic in admin.list_topics() if topic.startswith(app_id)]
        if internal:
            admin.delete_topics(internal)
        admin.close()


def test_prometheus_config_is_valid():
    check = subprocess.run(["promtool", "check", "config", "--syntax-only",
                            str(ROOT / "stack" / "prometheus.yml")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_prometheus_scrapes_the_worker_job_and_loaded_the_rules(prometheus_url):
    loaded = yaml.safe_load(requests.get(prometheus_url + "/api/v1/status/config",
                                         timeout=5).json()["data"]["yaml"])
    jobs = {job["job_name"]: job for job in loaded["scrape_configs"]}
    assert names.PROMETHEUS_JOB in jobs
    worker_port = os.environ.get("WORKER_PORT", os.environ.get("CANCELWATCH_WEB_PORT", "6066"))
    assert jobs[names.PROMETHEUS_JOB]["static_configs"][0]["targets"] == [f"127.0.0.1:{worker_port}"]
    assert jobs[names.PROMETHEUS_JOB]["scrape_interval"] == "5s"

    groups = requests.get(prometheus_url + "/api/v1/rules", timeout=5).json()["data"]["groups"]
    loaded_files = {Path(group["file"]).name for group in groups}
    rule_files = {path.name for path in (ROOT / "alerts" / "rules").glob("*.yml")}
    assert rule_files, "alerts/rules/*.yml should hold the project's rules"
    assert loaded_files == rule_files


def test_prometheus_sends_alerts_to_the_local_alertmanager(prometheus_url, alertmanager_url):
    active = requests.get(prometheus_url + "/api/v1/alertmanagers", timeout=5).json()
    urls = [entry["url"] for entry in active["data"]["activeAlertmanagers"]]
    assert urls == [alertmanager_url + "/api/v2/alerts"]


def test_alertmanager_config_is_valid_and_loaded(alertmanager_url):
    config = ROOT / "alerts" / "alertmanager.yml"
    assert config.is_file(), "alerts/alertmanager.yml is missing"
    check = subprocess.run(["amtool", "check-config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    status = requests.get(alertmanager_url + "/api/v2/status", timeout=5).json()
    running = yaml.safe_load(status["config"]["original"])
    committed = yaml.safe_load(config.read_text())
    assert running["route"]["receiver"] == committed["route"]["receiver"]
    assert [r["name"] for r in running["receivers"]] == [r["name"] for r in committed["receivers"]]


def test_stack_status_reports_every_service_up():
    status = subprocess.run([str(STACK), "status"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    for service in SERVICES:
        assert any(line.split()[:2] == [service, "up"] for line in status.stdout.splitlines()), status.stdout


def test_stack_up_again_is_harmless(kafka_bootstrap, prometheus_url, alertmanager_url, oncall_url):
    stack_dir = Path(os.environ.get("STACK_DIR", ROOT / ".stack"))
    before = {service: (stack_dir / service / f"{service}.pid").read_text() for service in SERVICES}
    again = subprocess.run([str(STACK), "up"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("already running") == len(SERVICES)
    after = {service: (stack_dir / service / f"{service}.pid").read_text() for service in SERVICES}
    assert after == before


@pytest.mark.parametrize("service,variable", [
    ("kafka", "KAFKA_PORT"), ("prometheus", "PROMETHEUS_PORT"),
    ("alertmanager", "ALERTMANAGER_PORT"), ("oncall", "ONCALL_PORT"),
])
def test_busy_port_gives_a_clear_message(service, variable, tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        env = {**os.environ, "STACK_DIR": str(tmp_path / "stack"), variable: str(port),
               "KAFKA_CONTROLLER_PORT": str(free_port())}
        run = subprocess.run([str(STACK), "start", service], env=env, capture_output=True,
                             text=True, timeout=60)
    assert run.returncode != 0
    assert f"cannot start {service}: port {port} is already in use" in run.stderr
    assert f"{variable}=<free port>" in run.stderr
    assert not (tmp_path / "stack" / service / f"{service}.pid").exists()


def test_a_busy_port_of_a_cluster_node_stops_the_cluster_before_any_node_starts(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]     # kafka-2's: node n listens on KAFKA_PORT + 10(n-1)
        env = {**os.environ, "STACK_DIR": str(tmp_path / "stack"), "KAFKA_BROKERS": "3",
               "KAFKA_PORT": str(port - 10), "KAFKA_CONTROLLER_PORT": str(free_port())}
        run = subprocess.run([str(STACK), "start", "kafka"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert f"cannot start kafka-2: port {port} is already in use" in run.stderr
    assert not list((tmp_path / "stack").glob("kafka-*/kafka-*.pid"))


def test_the_local_stack_runs_one_broker_or_three(tmp_path):
    env = {**os.environ, "STACK_DIR": str(tmp_path / "stack"), "KAFKA_BROKERS": "2"}
    run = subprocess.run([str(STACK), "status"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "KAFKA_BROKERS=2: the local stack runs 1 broker or a cluster of 3" in run.stderr


def _bin_with(tmp_path: Path, *commands: str) -> str:
    """A PATH directory holding only the given commands (to simulate missing tools)."""
    directory = tmp_path / "bin"
    directory.mkdir(exist_ok=True)
    for command in commands:
        (directory / command).symlink_to(shutil.which(command))
    return str(directory)


def test_missing_java_says_what_to_install(tmp_path):
    env = {**os.environ, "PATH": _bin_with(tmp_path, "dirname", "mkdir"),
           "STACK_DIR": str(tmp_path / "stack"), "KAFKA_PORT": str(free_port()),
           "KAFKA_CONTROLLER_PORT": str(free_port())}
    run = subprocess.run(["/bin/bash", str(STACK), "start", "kafka"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "Java 17 or newer is needed" in run.stderr
    assert "apt-get install -y openjdk-17-jre-headless" in run.stderr


def test_missing_maven_says_what_to_install(tmp_path):
    env = {**os.environ, "PATH": _bin_with(tmp_path, "dirname", "mkdir", "java"),
           "STACK_DIR": str(tmp_path / "stack"), "KAFKA_PORT": str(free_port()),
           "KAFKA_CONTROLLER_PORT": str(free_port())}
    run = subprocess.run(["/bin/bash", str(STACK), "start", "kafka"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "Maven (mvn) is needed" in run.stderr
    assert "apt-get install -y maven" in run.stderr


def test_missing_prometheus_says_what_to_install(tmp_path):
    env = {**os.environ, "PATH": _bin_with(tmp_path, "dirname", "mkdir"),
           "STACK_DIR": str(tmp_path / "stack"), "PROMETHEUS_PORT": str(free_port())}
    run = subprocess.run(["/bin/bash", str(STACK), "start", "prometheus"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "apt-get install -y prometheus" in run.stderr


def test_missing_apt_get_says_what_to_install(tmp_path):
    env = {**os.environ, "PATH": _bin_with(tmp_path, "dirname", "sort", "id")}
    run = subprocess.run(["/bin/bash", str(INSTALL)], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode != 0
    assert "This machine has no apt-get" in run.stderr
    for package in ("maven", "openjdk-17-jre-headless", "prometheus", "prometheus-alertmanager"):
        assert package in run.stderr.split(". ")[0]
