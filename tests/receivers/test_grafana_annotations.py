"""The Alertmanager-webhook -> Grafana-annotation receiver.

Grafana cannot run on this machine (no package or image of it is reachable),
so these tests talk to a stand-in: a small HTTP server that implements the
part of Grafana's annotation HTTP API the receiver uses (POST /api/annotations,
GET /api/annotations?tags=..., PATCH /api/annotations/:id) and rejects
requests that do not match that API's documented fields and types. The
receiver itself runs for real: a real HTTP server, the real grafana-client
package, real webhook payloads in Alertmanager's format.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from http.server import HTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import requests
from grafana_client import GrafanaApi

from dashboards import generate
from cancelwatch import names
from cancelwatch.receivers import grafana_annotations
from cancelwatch.receivers.grafana_annotations import AnnotationWriter, WebhookError
from cancelwatch.receivers.webhook import JSONHandler
from tests import http_servers

TOKEN = "glsa_test_token"
CREATE_FIELDS = {"dashboardUID": str, "dashboardId": int, "panelId": int, "time": int,
                 "timeEnd": int, "tags": list, "text": str}
PATCH_FIELDS = {"time": int, "timeEnd": int, "tags": list, "text": str}


class StandInGrafana:
    """Grafana's annotation API, in memory, strict about what it accepts."""

    def __init__(self) -> None:
        self.annotations: dict[int, dict] = {}
        self.requests: list[tuple[str, str, dict | None]] = []
        self.errors: list[str] = []
        self.fail_next = 0
        stand_in = self

        class Handler(JSONHandler):
            def _body(self) -> dict:
                return json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

            def _refuse(self, reason: str) -> None:
                stand_in.errors.append(reason)
                self._reply(400, {"message": reason})

            def _authorised(self) -> bool:
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self._reply(401, {"message": "invalid API key"})
                    return False
                if stand_in.fail_next:
                    stand_in.fail_next -= 1
                    self._reply(500, {"message": "database is locked"})
                    return False
                return True

            def do_GET(self) -> None:  # noqa: N802
                url = urlparse(self.path)
                stand_in.requests.append(("GET", url.path, parse_qs(url.query)))
                if not self._authorised():
                    return
                if url.path != "/api/annotations":
                    return self._reply(404, {"message": "not found"})
                query = parse_qs(url.query)
                wanted = set(query.get("tags", []))
                found = [annotation for annotation in stand_in.annotations.values()
                         if wanted <= set(annotation["tags"])
                         and ("dashboardUID" not in query
                              or annotation.get("dashboardUID") == query["dashboardUID"][0])]
                self._reply(200, found[: int(query.get("limit", ["100"])[0])])

            def do_POST(self) -> None:  # noqa: N802
                body = self._body()
                stand_in.requests.append(("POST", self.path, body))
                if not self._authorised():
                    return
                if self.path != "/api/annotations":
                    return self._reply(404, {"message": "not found"})
                for field, value in body.items():
                    if field not in CREATE_FIELDS:
                        return self._refuse(f"unknown field {field}")
                    if value is not None and not isinstance(value, CREATE_FIELDS[field]):
                        return self._refuse(f"{field} must be {CREATE_FIELDS[field].__name__}")
                if not body.get("text"):
                    return self._refuse("text is required")
                annotation_id = len(stand_in.annotations) + 1
                stand_in.annotations[annotation_id] = {
                    "id": annotation_id, "dashboardUID": body.get("dashboardUID"),
                    "time": body.get("time") or 0, "timeEnd": body.get("timeEnd") or body.get("time") or 0,
                    "tags": body.get("tags") or [], "text": body["text"]}
                self._reply(200, {"message": "Annotation added", "id": annotation_id})

            def do_PATCH(self) -> None:  # noqa: N802
                body = self._body()
                stand_in.requests.append(("PATCH", self.path, body))
                if not self._authorised():
                    return
                annotation_id = int(self.path.rsplit("/", 1)[-1])
                if annotation_id not in stand_in.annotations:
                    return self._reply(404, {"message": "Could not find annotation to update"})
                for field, value in body.items():
                    if field not in PATCH_FIELDS:
                        return self._refuse(f"unknown field {field}")
                    if value is not None and not isinstance(value, PATCH_FIELDS[field]):
                        return self._refuse(f"{field} must be {PATCH_FIELDS[field].__name__}")
                existing = stand_in.annotations[annotation_id]
                # Grafana's patch keeps a field unless a new value is given.
                if body.get("time"):
                    existing["time"] = body["time"]
                if body.get("timeEnd"):
                    existing["timeEnd"] = body["timeEnd"]
                if body.get("tags") is not None:
                    existing["tags"] = body["tags"]
                if body.get("text"):
                    existing["text"] = body["text"]
                self._reply(200, {"message": "Annotation patched"})

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def by_method(self, method: str) -> list[dict | None]:
        return [body for verb, _, body in self.requests if verb == method]


@pytest.fixture
def grafana():
    stand_in = StandInGrafana()
    with http_servers.serving(stand_in.server):
        yield stand_in


def client(grafana: StandInGrafana) -> GrafanaApi:
    return GrafanaApi.from_url(grafana.url, credential=TOKEN)


@pytest.fixture
def receiver(grafana):
    """The receiver's real HTTP server on a free port, writing to the stand-in."""
    writer = AnnotationWriter(client(grafana).annotations)
    server = grafana_annotations.make_server(writer, "127.0.0.1", 0)
    with http_servers.serving(server):
        yield f"http://127.0.0.1:{server.server_address[1]}", writer


STARTS = "2026-11-20T13:05:00.123456789Z"
ENDS = "2026-11-20T15:35:30Z"


def millis(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp).replace(tzinfo=timezone.utc).timestamp() * 1000)


def alert(status: str = "firing", seller: str = "A1", fingerprint: str = "6f2c0a1b9d3e4f50",
          ends: str = "0001-01-01T00:00:00Z") -> dict:
    return {
        "status": status,
        "labels": {"alertname": names.ALERT_BREACHED, "seller_id": seller, "marketplace": "US",
                   "severity": "critical", "window_days": "7"},
        "annotations": {"summary": f"Seller {seller} is over the 2.5% limit in US",
                        "description": "7-day rate 2.61%", "rate": "0.0261", "headroom": "0",
                        "dominant_reason": "NoInventory", "action": names.GROUP_ACTIONS["inventory"]},
        "startsAt": STARTS,
        "endsAt": ends,
        "generatorURL": "",
        "fingerprint": fingerprint,
    }


def webhook(*alerts: dict) -> dict:
    """A payload in Alertmanager's webhook format (version 4)."""
    return {"version": "4", "groupKey": "{}:{alertname=\"SellerCancelRateBreached\"}",
            "truncatedAlerts": 0, "status": alerts[0]["status"], "receiver": "grafana-annotations",
            "groupLabels": {"alertname": names.ALERT_BREACHED}, "commonLabels": {},
            "commonAnnotations": {}, "externalURL": "http://alertmanager:9093", "alerts": list(alerts)}


def test_firing_then_resolved_makes_one_annotation_with_start_and_end(grafana, receiver):
    url, _ = receiver
    first = requests.post(f"{url}/alerts", json=webhook(alert()), timeout=10)
    assert first.status_code == 200 and first.json() == {"annotations_written": 1}
    repeat = requests.post(f"{url}/alerts", json=webhook(alert()), timeout=10)
    assert repeat.json() == {"annotations_written": 0}  # Alertmanager re-sends firing alerts
    resolved = requests.post(f"{url}/alerts", json=webhook(alert("resolved", ends=ENDS)), timeout=10)
    assert resolved.status_code == 200 and resolved.json() == {"annotations_written": 1}

    assert grafana.errors == []
    [created] = grafana.by_method("POST")
    assert created["dashboardUID"] == names.DASHBOARD_UIDS["seller"]
    assert created["time"] == millis("2026-11-20T13:05:00.123456")
    assert created["timeEnd"] is None
    assert [verb for verb, _, _ in grafana.requests] == ["GET", "POST", "PATCH"]
    [patched] = grafana.by_method("PATCH")
    assert patched["timeEnd"] == millis("2026-11-20T15:35:30")
    [annotation] = grafana.annotations.values()
    assert annotation["time"] == created["time"] and annotation["timeEnd"] == patched["timeEnd"]
    assert set(annotation["tags"]) == {
        "cancelwatch", f"alertname:{names.ALERT_BREACHED}", "seller_id:A1", "marketplace:US",
        "severity:critical", "window_days:7", "fingerprint:6f2c0a1b9d3e4f50"}
    assert annotation["text"].startswith("Seller A1 is over the 2.5% limit in US")
    assert "dominant_reason: NoInventory" in annotation["text"]


def test_tags_match_what_the_seller_dashboard_filters_on(grafana):
    dashboard = json.loads(generate.path_of("seller").read_text())
    [query] = [a for a in dashboard["annotations"]["list"] if "target" in a]
    wanted = {tag.replace("$seller_id", "A1").replace("$marketplace", "US")
              for tag in query["target"]["tags"]}
    assert wanted <= set(grafana_annotations.tags(alert()))


def test_resolve_after_a_restart_finds_the_annotation_by_its_fingerprint_tag(grafana):
    AnnotationWriter(client(grafana).annotations).handle(webhook(alert()))
    restarted = AnnotationWriter(client(grafana).annotations)
    assert restarted.handle(webhook(alert("resolved", ends=ENDS))) == 1
    assert len(grafana.annotations) == 1
    [annotation] = grafana.annotations.values()
    assert annotation["timeEnd"] == millis("2026-11-20T15:35:30")
    gets = [query for verb, _, query in grafana.requests if verb == "GET"]
    assert gets[-1]["tags"] == ["fingerprint:6f2c0a1b9d3e4f50"]
    assert gets[-1]["dashboardUID"] == [names.DASHBOARD_UIDS["seller"]]


def test_resolved_alert_never_seen_firing_becomes_a_region(grafana):
    writer = AnnotationWriter(client(grafana).annotations)
    assert writer.handle(webhook(alert("resolved", ends=ENDS))) == 1
    [created] = grafana.by_method("POST")
    assert (created["time"], created["timeEnd"]) == (
        millis("2026-11-20T13:05:00.123456"), millis("2026-11-20T15:35:30"))


def test_each_alert_of_a_group_gets_its_own_annotation(grafana):
    writer = AnnotationWriter(client(grafana).annotations)
    assert writer.handle(webhook(alert(seller="A1", fingerprint="a1"),
                                 alert(seller="B2", fingerprint="b2"))) == 2
    assert {tag for a in grafana.annotations.values() for tag in a["tags"]
            if tag.startswith("seller_id:")} == {"seller_id:A1", "seller_id:B2"}
    assert writer.annotation_ids == {"a1": 1, "b2": 2}


def test_grafana_failure_answers_502_so_alertmanager_retries(grafana, receiver):
    url, writer = receiver
    grafana.fail_next = 1
    failed = requests.post(f"{url}/alerts", json=webhook(alert()), timeout=10)
    assert failed.status_code == 502
    assert "Grafana did not take the annotation" in failed.json()["error"]
    assert grafana.annotations == {} and writer.annotation_ids == {}
    retried = requests.post(f"{url}/alerts", json=webhook(alert()), timeout=10)
    assert retried.json() == {"annotations_written": 1}


def test_bad_payloads_are_refused_with_a_reason(receiver):
    url, _ = receiver
    not_json = requests.post(f"{url}/alerts", data=b"{nope", timeout=10)
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]
    no_alerts = requests.post(f"{url}/alerts", json={"status": "firing"}, timeout=10)
    assert no_alerts.status_code == 400 and "alerts" in no_alerts.json()["error"]
    elsewhere = requests.post(f"{url}/api/v2/alerts", json=webhook(alert()), timeout=10)
    assert elsewhere.status_code == 404 and "/alerts" in elsewhere.json()["error"]
    assert requests.get(f"{url}/-/healthy", timeout=10).status_code == 200


def test_times_and_statuses_are_checked(grafana):
    writer = AnnotationWriter(client(grafana).annotations)
    with pytest.raises(WebhookError, match="not an RFC 3339 time"):
        grafana_annotations.epoch_millis("yesterday")
    with pytest.raises(WebhookError, match="neither firing nor resolved"):
        writer.handle(webhook(alert(status="pending")))
    with pytest.raises(WebhookError, match="no endsAt"):
        writer.handle(webhook(alert("resolved", ends="")))
    assert grafana_annotations.epoch_millis("2026-11-20T14:05:00+01:00") == millis("2026-11-20T13:05:00")


def test_token_file_errors_say_what_to_do(tmp_path):
    with pytest.raises(SystemExit, match="cannot read the token file"):
        grafana_annotations.read_token(str(tmp_path / "missing"))
    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(SystemExit, match="is empty"):
        grafana_annotations.read_token(str(empty))
