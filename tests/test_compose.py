"""docker-compose.yml, checked by parsing: Docker cannot run on the machines
that build cancelwatch, so instead of starting it these tests check that
every mounted host path exists in the repository and that every service
listens on, and points at, the same host:port as the local stack's config."""

from __future__ import annotations

import posixpath
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from cancelwatch import names

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
PROMETHEUS = yaml.safe_load((ROOT / "stack" / "prometheus.yml").read_text())


def bind_mounts(service: str) -> list[tuple[str, str]]:
    """(host path, container path) of the service's bind mounts."""
    mounts = []
    for volume in SERVICES[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts.append((source, target))
    return mounts


def flag(service: str, name: str) -> str:
    for argument in SERVICES[service]["command"]:
        if argument.startswith(f"--{name}="):
            return argument.split("=", 1)[1]
    raise AssertionError(f"{service} has no --{name}")


def kafka_template() -> dict[str, str]:
    """stack/kafka/server.properties with the default ports filled in."""
    text = (ROOT / "stack" / "kafka" / "server.properties").read_text()
    text = text.replace("@KAFKA_PORT@", "9092").replace("@KAFKA_CONTROLLER_PORT@", "19093")
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def prometheus_targets(job: str) -> list[str]:
    for scrape in PROMETHEUS["scrape_configs"]:
        if scrape["job_name"] == job:
            return scrape["static_configs"][0]["targets"]
    raise AssertionError(f"stack/prometheus.yml has no job {job}")


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_mounted_host_path_exists(service):
    for source, _ in bind_mounts(service):
        assert (ROOT / source).exists(), f"{service} mounts {source}, which is not in the repository"


def test_every_service_shares_the_host_network():
    assert {name for name, service in SERVICES.items() if service.get("network_mode") != "host"} == set()


def test_the_services_named_in_the_brief_are_there():
    assert {"kafka", "worker", "simulate", "oncall", "prometheus", "alertmanager",
            "grafana"} <= set(SERVICES)
    assert SERVICES["simulate"]["profiles"] == ["demo"]
    assert "profiles" not in SERVICES["worker"]


def test_kafka_image_matches_the_local_broker_version_and_config():
    pom = ElementTree.parse(ROOT / "stack" / "pom.xml").getroot()
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    version = pom.find("m:properties/m:kafka.version", namespace).text
    assert SERVICES["kafka"]["image"] == f"apache/kafka:{version}"

    environment = SERVICES["kafka"]["environment"]
    local = kafka_template()
    for key in ("process.roles", "node.id", "controller.quorum.voters", "listeners",
                "advertised.listeners", "controller.listener.names", "num.partitions",
                "offsets.topic.replication.factor", "transaction.state.log.min.isr",
                "group.initial.rebalance.delay.ms"):
        variable = "KAFKA_" + key.upper().replace(".", "_")
        assert environment[variable] == local[key], variable
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", environment["CLUSTER_ID"])


def test_application_services_point_at_the_stack():
    broker = kafka_template()["advertised.listeners"].split("://", 1)[1]
    alertmanager_target = PROMETHEUS["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0]
    for service in ("worker", "simulate", "oncall"):
        environment = SERVICES[service]["environment"]
        assert environment["CANCELWATCH_BROKER"] == f"kafka://{broker}"
        assert environment["CANCELWATCH_ALERTMANAGER_URL"] == f"http://{alertmanager_target}"
    worker_target = prometheus_targets(names.PROMETHEUS_JOB)
    assert worker_target == [f"127.0.0.1:{SERVICES['worker']['environment']['CANCELWATCH_WEB_PORT']}"]


def test_prometheus_listens_where_it_scrapes_itself_and_finds_its_rules():
    assert [flag("prometheus", "web.listen-address")] == prometheus_targets("prometheus")
    config_target = flag("prometheus", "config.file")
    mounts = dict((target, source) for source, target in bind_mounts("prometheus"))
    assert mounts[config_target] == "./stack/prometheus.yml"
    for pattern in PROMETHEUS["rule_files"]:
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(config_target), pattern))
        directory = posixpath.dirname(resolved)
        assert directory in mounts, f"rule files {resolved} are not mounted"
        assert (ROOT / mounts[directory]).resolve() == (ROOT / "alerts" / "rules").resolve()


def test_alertmanager_listens_where_prometheus_sends_and_uses_the_project_config():
    assert [flag("alertmanager", "web.listen-address")] == \
        PROMETHEUS["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert flag("alertmanager", "cluster.listen-address") == ""
    mounts = dict((target, source) for source, target in bind_mounts("alertmanager"))
    assert mounts[flag("alertmanager", "config.file")] == "./alerts/alertmanager.yml"
    assert prometheus_targets("alertmanager") == [flag("alertmanager", "web.listen-address")]


def test_alertmanager_delivers_to_the_oncall_receiver():
    command = SERVICES["oncall"]["command"]
    host, port = command[command.index("--host") + 1], command[command.index("--port") + 1]
    config = yaml.safe_load((ROOT / "alerts" / "alertmanager.yml").read_text())
    urls = [webhook["url"] for receiver in config["receivers"]
            for webhook in receiver.get("webhook_configs", [])]
    assert f"http://{host}:{port}{names.ONCALL_ALERTS_PATH}" in urls


def test_grafana_reaches_its_data_sources_and_dashboards():
    grafana = SERVICES["grafana"]
    hosts = dict(entry.split(":", 1) for entry in grafana["extra_hosts"])
    mounts = dict((target, source) for source, target in bind_mounts("grafana"))
    datasources_dir = mounts["/etc/grafana/provisioning/datasources"]
    listen = {"prometheus": flag("prometheus", "web.listen-address"),
              "alertmanager": flag("alertmanager", "web.listen-address")}
    for path in (ROOT / datasources_dir).glob("*.y*ml"):
        for datasource in yaml.safe_load(path.read_text())["datasources"]:
            url = urlparse(datasource["url"])
            address = f"{hosts.get(url.hostname, url.hostname)}:{url.port}"
            assert address == listen[datasource["type"]], datasource["name"]

    providers_dir = mounts["/etc/grafana/provisioning/dashboards"]
    for path in (ROOT / providers_dir).glob("*.y*ml"):
        for provider in yaml.safe_load(path.read_text())["providers"]:
            source = mounts[provider["options"]["path"]]
            assert list((ROOT / source).glob("*.json")), f"no dashboards in {source}"
