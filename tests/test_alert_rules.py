"""Tests of alerts/: Prometheus rules (promtool) and Alertmanager routing (amtool).

- promtool check rules / test rules over alerts/rules and alerts/tests;
- every rule file name, metric and label checked against streams/cancelwatch/names.py;
- every rule, recording or alerting, has a promtool test;
- amtool check-config and `amtool config routes test` for each kind of alert;
- against a real Alertmanager running alerts/alertmanager.yml (its own, on a
  free port) with a webhook receiver of the test: a climbing seller's warning
  is notified before its breach, and a breach mutes the seller's warnings.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import yaml

from cancelwatch import names
from tests import http_servers
from tests.delivery.test_alertmanager import LocalAlertmanager, free_port

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "alerts"
RULE_FILES = sorted((ALERTS / "rules").glob("*.yml"))
TEST_FILES = sorted((ALERTS / "tests").glob("*.yaml"))
ALERTMANAGER_CONFIG = ALERTS / "alertmanager.yml"
ONCALL_URL = "http://127.0.0.1:5001" + names.ONCALL_ALERTS_PATH
# Labels Prometheus itself adds to every scraped series, and the histogram bucket label.
SCRAPE_LABELS = {"job", "instance"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
RECORDING_NAME = re.compile(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+")
METRIC_IN_EXPR = re.compile(r"(?<![:\w])(cancelwatch_\w+)(\{[^}]*\})?")
RECORDING_IN_EXPR = re.compile(r"(?<![\w:])([a-z_]+:[a-z0-9_]+:[a-z0-9_]+)")
LABEL_MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: apt-get install -y prometheus prometheus-alertmanager "
                    "(or `make install`)", pytrace=False)
    return path


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)


def rules() -> list[dict]:
    found = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            found.extend(group["rules"])
    return found


def alert_rules() -> dict[str, dict]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def recording_rules() -> dict[str, dict]:
    return {rule["record"]: rule for rule in rules() if "record" in rule}


def metric_of(name: str) -> tuple[str, tuple[str, ...]]:
    """The METRICS entry a series name belongs to (a histogram's _bucket is its histogram)."""
    if name in names.METRICS:
        return name, names.METRICS[name][1]
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and names.METRICS.get(base, ("",))[0] == "histogram":
            return base, names.METRICS[base][1] + (("le",) if suffix == "_bucket" else ())
    raise AssertionError(f"{name} is not in streams/cancelwatch/names.py METRICS: a rule queries a metric "
                         "the worker does not export")


# --- promtool ------------------------------------------------------------------------


def test_rule_files_exist():
    assert [path.name for path in RULE_FILES] == ["marketplace.yml", "pipeline.yml"]
    assert [path.name for path in TEST_FILES] == ["marketplace_test.yaml", "pipeline_test.yaml"]


def test_promtool_check_rules():
    result = run(tool("promtool"), "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules():
    result = run(tool("promtool"), "test", "rules", *map(str, TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(TEST_FILES), result.stdout


# --- rules against streams/cancelwatch/names.py -------------------------------------------------------


def test_alert_names_and_severities_are_those_of_names_py():
    found = {name: rule["labels"]["severity"] for name, rule in alert_rules().items()}
    assert found == names.PROMETHEUS_ALERTS


def test_every_alert_rule_carries_team_severity_and_the_three_annotations():
    for name, rule in alert_rules().items():
        assert rule["labels"] == {"severity": names.PROMETHEUS_ALERTS[name],
                                  names.LABEL_TEAM: names.TEAM_OPS}, name
        assert set(rule["annotations"]) == {"summary", "description", "action"}, name
        assert all(text.strip() for text in rule["annotations"].values()), name


def test_recording_rules_are_those_of_names_py_and_named_level_metric_operations():
    recorded = recording_rules()
    assert sorted(recorded) == sorted(names.RECORDING_RULES)
    for name in recorded:
        assert RECORDING_NAME.fullmatch(name), f"{name} is not level:metric:operations"
        metric = name.split(":")[1]
        assert metric.startswith(names.METRIC_PREFIX), name


def test_every_metric_and_label_a_rule_queries_is_exported():
    queried = set()
    for rule in rules():
        for metric, selector in METRIC_IN_EXPR.findall(rule["expr"]):
            base, labels = metric_of(metric)
            queried.add(base)
            for label in LABEL_MATCHER.findall(selector or ""):
                assert label in set(labels) | SCRAPE_LABELS, (
                    f"{rule.get('alert') or rule.get('record')}: {metric} has no label {label!r}")
        for match in re.finditer(r"\b(?:by|without|on)\s*\(([^)]*)\)", rule["expr"]):
            for label in filter(None, (part.strip() for part in match.group(1).split(","))):
                assert label in {"marketplace", "topic", "kind", "outcome", "le", "partition"} | \
                    SCRAPE_LABELS, f"{rule.get('alert') or rule.get('record')}: grouping by {label}"
    assert queried >= {
        "cancelwatch_consumer_lag_messages", "cancelwatch_dead_letters_total",
        "cancelwatch_alert_deliveries_total", "cancelwatch_processing_latency_seconds",
        "cancelwatch_seller_fault_cancellations_total", "cancelwatch_orders_total",
    }


def test_every_recording_rule_a_rule_uses_is_defined_before_use():
    defined: set[str] = set()
    for rule in rules():
        for used in RECORDING_IN_EXPR.findall(rule["expr"]):
            assert used in defined, f"{used} is used before (or without) its recording rule"
        if "record" in rule:
            defined.add(rule["record"])


def test_every_rule_has_a_promtool_test():
    tested_records, tested_alerts, untested_eval = set(), set(), []
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("promql_expr_test", []):
                if check["exp_samples"]:
                    tested_records.add(check["expr"])
            for check in case.get("alert_rule_test", []):
                if check["exp_alerts"]:
                    tested_alerts.add(check["alertname"])
                    for alert in check["exp_alerts"]:
                        assert alert["exp_annotations"], f"{path.name}: {check['alertname']}"
                else:
                    untested_eval.append(check["alertname"])
    assert set(recording_rules()) <= tested_records, set(recording_rules()) - tested_records
    assert set(alert_rules()) <= tested_alerts, set(alert_rules()) - tested_alerts
    # Each alert is also pinned where it must not (yet) fire.
    assert set(alert_rules()) <= set(untested_eval), set(alert_rules()) - set(untested_eval)


# --- Alertmanager configuration -----------------------------------------------------------


def alertmanager_config() -> dict:
    return yaml.safe_load(ALERTMANAGER_CONFIG.read_text())


def test_amtool_check_config():
    result = run(tool("amtool"), "check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def seller_labels(alertname: str, **extra: str) -> dict[str, str]:
    return {names.LABEL_ALERTNAME: alertname, names.LABEL_SELLER: "A1",
            names.LABEL_MARKETPLACE: "US", names.LABEL_SEVERITY: names.ALERT_SEVERITY[alertname],
            names.LABEL_WINDOW_DAYS: "7", **extra}


ROUTE_CASES = [
    *[(seller_labels(alertname), f"oncall-{names.ALERT_SEVERITY[alertname]}")
      for alertname in names.SELLER_ALERTS],
    (seller_labels(names.ALERT_LISTING, sku="SKU-1"), "oncall-warning"),
    *[({names.LABEL_ALERTNAME: alertname, "severity": severity, names.LABEL_TEAM: names.TEAM_OPS,
        "job": names.PROMETHEUS_JOB}, f"ops-{severity}")
      for alertname, severity in names.PROMETHEUS_ALERTS.items()],
    ({names.LABEL_ALERTNAME: "SomethingElse"}, "ops-warning"),
]


@pytest.mark.parametrize("labels, receiver", ROUTE_CASES,
                         ids=[labels[names.LABEL_ALERTNAME] for labels, _ in ROUTE_CASES])
def test_amtool_routes(labels, receiver):
    result = run(tool("amtool"), "config", "routes", "test",
                 f"--config.file={ALERTMANAGER_CONFIG}", f"--verify.receivers={receiver}",
                 *(f"{key}={value}" for key, value in labels.items()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [receiver]


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)(ms|s|m|h)", duration)
    assert "".join(number + unit for number, unit in parts) == duration, duration
    return sum(int(number) * units[unit] for number, unit in parts)


def seller_routes() -> dict[str, dict]:
    [route] = [route for route in alertmanager_config()["route"]["routes"]
               if route["matchers"] == ['seller_id=~".+"']]
    assert route["group_by"] == [names.LABEL_SELLER, names.LABEL_MARKETPLACE]
    return {child["matchers"][0].split('"')[1]: child for child in route["routes"]}


def test_warning_group_wait_is_never_longer_than_critical():
    routes = seller_routes()
    warning, critical = seconds(routes["warning"]["group_wait"]), seconds(routes["critical"]["group_wait"])
    assert warning <= critical <= 1, (warning, critical)


def test_breach_inhibits_the_warning_family_of_the_same_seller_and_marketplace():
    [seller_rule] = [rule for rule in alertmanager_config()["inhibit_rules"]
                     if rule["source_matchers"] == [f'alertname="{names.ALERT_BREACHED}"']]
    [target] = seller_rule["target_matchers"]
    assert target == f'alertname=~"{"|".join(names.WARNING_FAMILY)}"'
    assert seller_rule["equal"] == [names.LABEL_SELLER, names.LABEL_MARKETPLACE]


def test_every_receiver_is_the_oncall_webhook_with_resolved_notifications():
    receivers = alertmanager_config()["receivers"]
    assert {receiver["name"] for receiver in receivers} == {
        "oncall-critical", "oncall-warning", "ops-critical", "ops-warning"}
    for receiver in receivers:
        assert receiver["webhook_configs"] == [{"url": ONCALL_URL, "send_resolved": True}]


# --- a real Alertmanager with this configuration --------------------------------------------


class Webhook:
    """A webhook receiver of the test's own: keeps every notification in arrival order."""

    def __init__(self) -> None:
        self.notifications: list[dict] = []
        received = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body))
                self.send_response(HTTPStatus.OK)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        http_servers.start(self.server)

    def firing(self) -> list[tuple[str, str]]:
        """(seller_id, alertname) of every firing alert notified, in order."""
        return [(alert["labels"].get(names.LABEL_SELLER), alert["labels"][names.LABEL_ALERTNAME])
                for notification in self.notifications for alert in notification["alerts"]
                if alert["status"] == "firing"]

    def close(self) -> None:
        http_servers.stop(self.server)


@pytest.fixture
def routed(tmp_path):
    """Alertmanager with alerts/alertmanager.yml, its webhook URL pointed at the test's receiver."""
    webhook = Webhook()
    config = ALERTMANAGER_CONFIG.read_text().replace("127.0.0.1:5001", f"127.0.0.1:{webhook.port}")
    server = LocalAlertmanager(tmp_path, config)
    server.start()
    yield server, webhook
    server.stop()
    webhook.close()


def post(server: LocalAlertmanager, *alerts: dict) -> None:
    now = datetime.now(timezone.utc)
    body = [{"labels": labels, "annotations": {"summary": "test"},
             "startsAt": now.isoformat(), "endsAt": (now + timedelta(minutes=5)).isoformat()}
            for labels in alerts]
    response = requests.post(server.url + "/api/v2/alerts", json=body, timeout=5)
    assert response.status_code == 200, response.text


def wait_for(condition, what: str, seconds_: float = 30.0):
    deadline = time.monotonic() + seconds_
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"{what}: not reached within {seconds_}s")


def with_seller(labels: dict[str, str], seller: str) -> dict[str, str]:
    return {**labels, names.LABEL_SELLER: seller}


@pytest.mark.stack
def test_climbing_seller_is_warned_before_the_breach_is_notified(routed):
    server, webhook = routed
    post(server, with_seller(seller_labels(names.ALERT_WARNING), "CLIMB"))
    wait_for(lambda: ("CLIMB", names.ALERT_WARNING) in webhook.firing(), "warning notified")
    post(server, with_seller(seller_labels(names.ALERT_WARNING), "CLIMB"),
         with_seller(seller_labels(names.ALERT_BREACHED), "CLIMB"))
    wait_for(lambda: ("CLIMB", names.ALERT_BREACHED) in webhook.firing(), "breach notified")
    order = [alertname for seller, alertname in webhook.firing() if seller == "CLIMB"]
    assert order[0] == names.ALERT_WARNING
    assert order.index(names.ALERT_WARNING) < order.index(names.ALERT_BREACHED)
    [breach] = [n for n in webhook.notifications
                if n["alerts"][0]["labels"][names.LABEL_ALERTNAME] == names.ALERT_BREACHED]
    assert breach["receiver"] == "oncall-critical"
    assert breach["groupLabels"] == {names.LABEL_SELLER: "CLIMB", names.LABEL_MARKETPLACE: "US"}


@pytest.mark.stack
def test_a_breach_mutes_the_warnings_of_that_seller_only(routed):
    server, webhook = routed
    post(server,
         with_seller(seller_labels(names.ALERT_BREACHED), "JUMP"),
         with_seller(seller_labels(names.ALERT_HEADROOM_LOW), "JUMP"),
         with_seller(seller_labels(names.ALERT_FORECAST_BREACH), "JUMP"),
         with_seller(seller_labels(names.ALERT_HEADROOM_LOW), "OTHER"))
    wait_for(lambda: {("JUMP", names.ALERT_BREACHED), ("OTHER", names.ALERT_HEADROOM_LOW)}
             <= set(webhook.firing()), "breach of JUMP and warning of OTHER notified")
    states = {alert["labels"][names.LABEL_ALERTNAME]: alert["status"]
              for alert in requests.get(server.url + "/api/v2/alerts",
                                        params={"filter": f'{names.LABEL_SELLER}="JUMP"'},
                                        timeout=5).json()}
    assert states[names.ALERT_HEADROOM_LOW]["state"] == "suppressed"
    assert states[names.ALERT_FORECAST_BREACH]["inhibitedBy"]
    assert ("JUMP", names.ALERT_HEADROOM_LOW) not in webhook.firing()
    assert ("JUMP", names.ALERT_FORECAST_BREACH) not in webhook.firing()


# --- docs/alerts.md -----------------------------------------------------------------------

DOC = ROOT / "docs" / "alerts.md"


def test_doc_has_a_section_per_alert():
    headings = re.findall(r"^### (\w+)$", DOC.read_text(), flags=re.MULTILINE)
    expected = [*names.SELLER_ALERTS, names.ALERT_LISTING, *names.PROMETHEUS_ALERTS]
    assert [h for h in headings if h in expected] == [
        names.ALERT_WARNING, names.ALERT_HEADROOM_LOW, names.ALERT_FORECAST_BREACH,
        names.ALERT_BREACHED, names.ALERT_LISTING, *names.PROMETHEUS_ALERTS]


def test_doc_action_table_is_names_group_actions():
    rows = [f"| {group} | " + ", ".join(f"`{reason}`" for reason in names.REASON_GROUPS[group])
            + f" | {action} |" for group, action in names.GROUP_ACTIONS.items()]
    text = DOC.read_text()
    assert "\n".join(rows) in text


def test_doc_names_every_recording_rule_window_and_receiver():
    text = DOC.read_text()
    for name in names.RECORDING_RULES:
        if "ratio_rate" not in name:
            assert f"`{name}`" in text, name
    for window in names.BURN_RATE_WINDOWS:
        assert f"`{window}`" in text or f"| {window} |" in text, window
    for receiver in alertmanager_config()["receivers"]:
        assert f"`{receiver['name']}`" in text, receiver["name"]
