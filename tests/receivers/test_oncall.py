"""The on-call webhook receiver (streams/cancelwatch/receivers/oncall.py): what it logs, prints and
serves, in-process and as `cancelwatch oncall`, and the whole path from the
running Alertmanager to the running receiver of the stack."""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from cancelwatch import names

from cancelwatch.receivers import oncall
from tests import http_servers


def webhook(status: str, *alerts: dict) -> dict:
    """An Alertmanager webhook body (version 4) holding the given alerts."""
    return {"version": "4", "groupKey": "{}:{}", "status": status, "receiver": "oncall-critical",
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://127.0.0.1:9093", "truncatedAlerts": 0, "alerts": list(alerts)}


def alert(alertname: str, seller: str, status: str = "firing", **annotations: str) -> dict:
    return {"status": status,
            "labels": {"alertname": alertname, "seller_id": seller, "marketplace": "US",
                       "severity": names.ALERT_SEVERITY[alertname], "window_days": "7"},
            "annotations": annotations, "startsAt": "2026-11-20T13:05:00Z",
            "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": uuid.uuid4().hex[:16]}


@pytest.fixture
def receiver(tmp_path):
    """A receiver in a thread on a free port, logging to a temporary file."""
    log = tmp_path / "notifications.jsonl"
    server = oncall.OncallServer(("127.0.0.1", 0), oncall.NotificationLog(log))
    with http_servers.serving(server):
        yield f"http://127.0.0.1:{server.server_address[1]}", log


def test_notification_is_logged_listed_and_filtered(receiver, capsys):
    url, log = receiver
    breach = alert(names.ALERT_BREACHED, "A1", rate="0.031", headroom="0",
                   action="Confirm shipment on time.")
    warning = alert(names.ALERT_WARNING, "B2", rate="0.021", headroom="3", action="Restock.")
    response = requests.post(url + names.ONCALL_ALERTS_PATH, json=webhook("firing", breach, warning),
                             timeout=5)
    assert response.status_code == 200
    assert response.json() == {"received": 2}

    lines = log.read_text().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["alerts"] == [breach, warning]

    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "FIRING SellerCancelRateBreached seller=A1 marketplace=US window=7d rate=0.031 "
        "headroom=0 action=Confirm shipment on time.",
        "FIRING SellerCancelRateWarning seller=B2 marketplace=US window=7d rate=0.021 "
        "headroom=3 action=Restock.",
    ]

    everything = requests.get(url + names.ONCALL_NOTIFICATIONS_PATH, timeout=5).json()
    assert len(everything) == 1 and len(everything[0]["alerts"]) == 2
    assert "received_at" in everything[0]

    only_breach = requests.get(url + names.ONCALL_NOTIFICATIONS_PATH,
                               params={"alertname": names.ALERT_BREACHED}, timeout=5).json()
    assert [a["labels"]["seller_id"] for n in only_breach for a in n["alerts"]] == ["A1"]
    nobody = requests.get(url + names.ONCALL_NOTIFICATIONS_PATH,
                          params={"seller_id": "A1", "alertname": names.ALERT_WARNING}, timeout=5).json()
    assert nobody == []


def test_resolved_alerts_are_filtered_by_status(receiver):
    url, _ = receiver
    requests.post(url + names.ONCALL_ALERTS_PATH,
                  json=webhook("resolved", alert(names.ALERT_HEADROOM_LOW, "C3", status="resolved")),
                  timeout=5)
    requests.post(url + names.ONCALL_ALERTS_PATH,
                  json=webhook("firing", alert(names.ALERT_HEADROOM_LOW, "C3")), timeout=5)
    resolved = requests.get(url + names.ONCALL_NOTIFICATIONS_PATH, params={"status": "resolved"},
                            timeout=5).json()
    assert [n["status"] for n in resolved] == ["resolved"]


def test_delete_clears_memory_and_log(receiver):
    url, log = receiver
    requests.post(url + names.ONCALL_ALERTS_PATH, json=webhook("firing", alert(names.ALERT_LISTING, "D4")),
                  timeout=5)
    deleted = requests.delete(url + names.ONCALL_NOTIFICATIONS_PATH, timeout=5)
    assert deleted.json() == {"deleted": 1}
    assert requests.get(url + names.ONCALL_NOTIFICATIONS_PATH, timeout=5).json() == []
    assert log.read_text() == ""


@pytest.mark.parametrize("body,reason", [
    (b"not json", "body is not JSON"),
    (b'{"status": "firing"}', "'alerts' list"),
    (b"[]", "'alerts' list"),
])
def test_bad_bodies_are_refused_with_a_reason(receiver, body, reason):
    url, log = receiver
    response = requests.post(url + names.ONCALL_ALERTS_PATH, data=body, timeout=5)
    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert not log.exists() or log.read_text() == ""


def test_unknown_paths_answer_404_in_json(receiver):
    url, _ = receiver
    assert requests.get(url + "/other", timeout=5).status_code == 404
    response = requests.post(url + "/other", json=webhook("firing"), timeout=5)
    assert response.status_code == 404
    assert names.ONCALL_ALERTS_PATH in response.json()["error"]


def test_log_survives_a_restart(tmp_path):
    log = tmp_path / "notifications.jsonl"
    first = oncall.NotificationLog(log)
    first.append(webhook("firing", alert(names.ALERT_FORECAST_BREACH, "E5")))
    second = oncall.NotificationLog(log)
    assert [n["alerts"][0]["labels"]["seller_id"] for n in second.select({})] == ["E5"]


def test_corrupt_log_stops_start_up_with_the_line(tmp_path):
    log = tmp_path / "notifications.jsonl"
    log.write_text('{"alerts": []}\nnot json\n')
    with pytest.raises(SystemExit, match=r"notifications.jsonl:2 is not JSON"):
        oncall.NotificationLog(log)


def test_command_serves_and_refuses_a_busy_port(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "cancelwatch.cli", "oncall", "--port", str(port),
               "--log", str(tmp_path / "log.jsonl")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert f"listening on http://127.0.0.1:{port}/alerts" in process.stdout.readline()
        requests.post(f"http://127.0.0.1:{port}/alerts",
                      json=webhook("firing", alert(names.ALERT_BREACHED, "F6")), timeout=5)
        assert process.stdout.readline().startswith("FIRING SellerCancelRateBreached seller=F6")

        busy = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert busy.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}" in busy.stderr
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.stack
def test_alertmanager_delivers_to_the_running_receiver(alertmanager_url, oncall_url):
    seller = f"oncall-test-{uuid.uuid4().hex[:8]}"
    labels = {"alertname": names.ALERT_BREACHED, "seller_id": seller, "marketplace": "US",
              "severity": "critical", "window_days": "7"}
    body = {"labels": labels, "annotations": {"rate": "0.03", "headroom": "0"}}
    posted = requests.post(alertmanager_url + "/api/v2/alerts", json=[body], timeout=5)
    assert posted.status_code == 200
    try:
        deadline = time.monotonic() + 60
        received = []
        while not received and time.monotonic() < deadline:
            received = requests.get(oncall_url + names.ONCALL_NOTIFICATIONS_PATH,
                                    params={"seller_id": seller}, timeout=5).json()
            time.sleep(0.5)
    finally:
        ended = {**body, "endsAt": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        requests.post(alertmanager_url + "/api/v2/alerts", json=[ended], timeout=5)
    assert received, f"Alertmanager did not deliver {seller}'s alert to {oncall_url} within 60s"
    assert received[0]["alerts"][0]["labels"] == labels
    stack_dir = Path(os.environ.get("STACK_DIR", Path(__file__).resolve().parents[2] / ".stack"))
    assert seller in (stack_dir / "oncall" / "notifications.jsonl").read_text()
