"""Security: cancelwatch against a SASL_SSL (SCRAM-SHA-512 + TLS) broker, secrets kept out
of every output, and the HTTP API bound to loopback by default.

The secured broker is a Kafka of this module's own (stack/secure/broker.sh: a
CA and broker certificate made with openssl and keytool, SCRAM users created
by `StorageTool format --add-scram`), on its own ports and directory; the
shared broker is never touched. Its only client listener is SASL_SSL, so a
client that gets an answer has logged in over TLS.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from cancelwatch import settings as settings_module

from cancelwatch.core import events
from cancelwatch.tools.producer import EventProducer, ensure_topics
from tests.worker.test_worker import expected_answers, simulated_stream, strip_listing, wait_for_answers
from tests.workers import ROOT, Topics, WorkerProcess, free_port

pytestmark = pytest.mark.stack

BROKER_SCRIPT = ROOT / "stack" / "secure" / "broker.sh"
CANCELWATCH = str(Path(sys.executable).with_name("cancelwatch"))
KAFKA_LIB = Path(os.environ.get("KAFKA_LIB", ROOT / ".stack" / "kafka" / "lib"))


# The pages faust itself serves next to the API (index, routing, tables, stats).
FAUST_PAGES = ["/", "/router/", "/router/topics", "/table/", "/stats/", "/stats/assignment/", "/graph/",
               "/performance/"]


class SecureBroker:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.env = {**os.environ, "SECURE_DIR": str(directory), "SECURE_PORT": str(free_port()),
                    "SECURE_CONTROLLER_PORT": str(free_port()), "KAFKA_LIB": str(KAFKA_LIB),
                    "STACK_TIMEOUT": "120"}

    def run(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BROKER_SCRIPT), command], env=self.env, capture_output=True, text=True,
                              timeout=180)

    @property
    def client_settings(self) -> dict[str, str]:
        """The CANCELWATCH_* settings broker.sh wrote for clients (password by file)."""
        lines = (self.directory / "client.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    @property
    def password(self) -> str:
        return (self.directory / "cancelwatch.password").read_text().strip()


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory) -> Iterator[SecureBroker]:
    broker = SecureBroker(tmp_path_factory.mktemp("secure"))
    started = broker.run("start")
    assert started.returncode == 0, f"the SASL_SSL broker did not start:\n{started.stdout}\n{started.stderr}"
    try:
        yield broker
    finally:
        broker.run("stop")


def client_env(broker: SecureBroker, topics: Topics, **overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CANCELWATCH_")}
    env.update(broker.client_settings)
    env.update(topics.env())
    env.update(overrides)
    return env


def secret_free(text: str, secret: str) -> None:
    assert secret not in text, "the SASL password appears in the output"


def test_the_broker_refuses_plaintext_clients(secure_broker):
    """Nothing on the secured port answers without TLS: a PLAINTEXT client gets no broker."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    bootstrap = secure_broker.client_settings["CANCELWATCH_BROKER"].split("://", 1)[1]
    with pytest.raises(KafkaError):
        KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000, api_version_auto_timeout_ms=5000)


def test_worker_producer_and_publish_work_over_sasl_ssl_and_never_show_the_password(secure_broker, tmp_path):
    topics = Topics("sasl")
    stream = simulated_stream(seed=21, sellers=6, days=8)
    half = len(stream) // 2
    password = secure_broker.password
    env = client_env(secure_broker, topics)

    loaded = settings_module.load(env)
    assert loaded.kafka_security.protocol == "SASL_SSL"
    ensure_topics(loaded)
    with EventProducer(loaded) as producer:
        report = producer.send_all(stream[:half])
    assert report.sent_total == half and not report.failed

    lines = tmp_path / "events.jsonl"
    lines.write_bytes(b"\n".join(events.encode(event) for event in stream[half:]) + b"\n")
    published = subprocess.run([CANCELWATCH, "publish", str(lines)], env=env, capture_output=True, text=True,
                               timeout=180)
    assert published.returncode == 0, published.stderr
    secret_free(published.stdout + published.stderr, password)

    worker = WorkerProcess(topics, tmp_path / "state", extra_env={
        **secure_broker.client_settings, "CANCELWATCH_LOG_LEVEL": "debug"})
    worker.start()
    try:
        worker.wait_ready(timeout=180)
        _, expected = expected_answers(stream)
        expected = strip_listing(expected)
        assert wait_for_answers(worker, expected, timeout=180) == expected
        exposition = worker.get("/metrics").text
        assert "cancelwatch_events_total" in exposition
        secret_free(exposition, password)
        for path in FAUST_PAGES:                   # faust's own pages on the same port
            secret_free(worker.get(path).text, password)
    finally:
        worker.stop()
    log = worker.log_path.read_text(errors="replace")
    assert " DEBUG " in log or "[DEBUG]" in log          # the most talkative level was on
    secret_free(log, password)


def test_the_password_is_not_shown_by_settings_check(secure_broker):
    password = secure_broker.password
    for env in ({"CANCELWATCH_KAFKA_PASSWORD": password},
                {"CANCELWATCH_KAFKA_PASSWORD_FILE": str(secure_broker.directory / "cancelwatch.password")}):
        full = client_env(secure_broker, Topics("check"))
        full.pop("CANCELWATCH_KAFKA_PASSWORD_FILE")
        full.update(env)
        done = subprocess.run([CANCELWATCH, "settings", "--check"], env=full, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        assert "SASL_SSL" in done.stdout and "cancelwatch" in done.stdout
        secret_free(done.stdout + done.stderr, password)
        assert password not in repr(settings_module.load(full))


def test_a_wrong_password_stops_the_worker_with_a_clear_error(secure_broker, tmp_path):
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    topics = Topics("wrong")
    env = client_env(secure_broker, topics, CANCELWATCH_KAFKA_PASSWORD_FILE=str(wrong),
                     CANCELWATCH_WEB_PORT=str(free_port()), CANCELWATCH_DATA_DIR=str(tmp_path / "state"))
    done = subprocess.run([CANCELWATCH, "worker"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "Authentication failed" in done.stderr            # the broker's answer, logged by the client
    last = done.stderr.strip().splitlines()[-1]
    assert "CANCELWATCH_KAFKA_USERNAME" in last and "password" in last, last
    assert "Traceback" not in done.stderr
    secret_free(done.stderr, "not-the-password")
    secret_free(done.stderr, secure_broker.password)


def test_a_wrong_password_stops_publish_with_a_clear_error(secure_broker, tmp_path):
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    lines = tmp_path / "events.jsonl"
    lines.write_bytes(events.encode(simulated_stream(seed=22, sellers=1, days=1)[0]) + b"\n")
    env = client_env(secure_broker, Topics("wrongpub"), CANCELWATCH_KAFKA_PASSWORD_FILE=str(wrong))
    done = subprocess.run([CANCELWATCH, "publish", str(lines)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "CANCELWATCH_KAFKA" in done.stderr.strip().splitlines()[-1]


def listening_addresses(port: int) -> set[str]:
    output = subprocess.run(["ss", "-Htln", f"sport = :{port}"], capture_output=True, text=True,
                            check=True).stdout
    return {line.split()[3].rsplit(":", 1)[0] for line in output.splitlines() if line.strip()}


def non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))        # TEST-NET: no packet is sent for UDP connect
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_the_http_api_listens_on_loopback_only_by_default(kafka_bootstrap, tmp_path):
    """Also when faust's own variables, which it would let override its arguments, say otherwise."""
    assert settings_module.load({}).web_host == "127.0.0.1"
    worker = WorkerProcess(Topics("bind"), tmp_path / "state",
                           extra_env={"WEB_BIND": "0.0.0.0", "WEB_HOST": "0.0.0.0"}).start()
    try:
        worker.wait_ready(timeout=180)
        assert listening_addresses(worker.port) == {"127.0.0.1"}
        outside = non_loopback_address()
        if outside is not None:
            with pytest.raises(OSError):
                socket.create_connection((outside, worker.port), timeout=3).close()
        assert worker.get("/metrics").status_code == 200
    finally:
        worker.stop()


def test_the_http_api_binds_where_configured(kafka_bootstrap, tmp_path):
    worker = WorkerProcess(Topics("bindall"), tmp_path / "state",
                           extra_env={"CANCELWATCH_WEB_HOST": "0.0.0.0"}).start()
    try:
        worker.wait_ready(timeout=180)
        assert listening_addresses(worker.port) == {"0.0.0.0"}
    finally:
        worker.stop()


def test_the_client_settings_file_points_at_the_password_file_only(secure_broker):
    settings = secure_broker.client_settings
    assert settings["CANCELWATCH_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert settings["CANCELWATCH_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert "CANCELWATCH_KAFKA_PASSWORD" not in settings            # by file only, never inline
    assert oct((secure_broker.directory / "cancelwatch.password").stat().st_mode & 0o777) == "0o600"
    assert secure_broker.password not in json.dumps(settings)
