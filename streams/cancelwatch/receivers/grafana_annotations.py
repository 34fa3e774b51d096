"""`cancelwatch grafana-annotations`: Alertmanager webhook -> Grafana annotations.

Alertmanager posts alert groups to this receiver (webhook_configs with
`send_resolved: true`). A firing alert seen for the first time becomes an
annotation on the Seller dashboard that starts at `startsAt`; when the alert
is resolved, that annotation gets `timeEnd = endsAt`. Grafana is written
through grafana-client.

Alert fingerprint -> annotation id is kept in memory; every annotation also
carries the tag `fingerprint:<fingerprint>`, so after a restart a resolve
finds its annotation through Grafana's annotation search.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import threading
from datetime import datetime
from http import HTTPStatus
from http.server import HTTPServer
from pathlib import Path
from typing import Any, Protocol

from cancelwatch import names
from cancelwatch.receivers.webhook import JSONHandler

log = logging.getLogger(__name__)

ANNOTATION_TAG = "cancelwatch"
FINGERPRINT_TAG = "fingerprint"
DEFAULT_PORT = 5002
# Labels copied into tags, in this order, when the alert has them.
TAGGED_LABELS = (names.LABEL_ALERTNAME, names.LABEL_SELLER, names.LABEL_MARKETPLACE,
                 names.LABEL_SEVERITY, names.LABEL_WINDOW_DAYS, names.LABEL_SKU)
TEXT_ANNOTATIONS = ("rate", "headroom", "dominant_reason", "action")


class WebhookError(ValueError):
    """An Alertmanager webhook payload this receiver cannot use."""


class Annotations(Protocol):
    """The part of grafana_client's `GrafanaApi.annotations` used here."""

    def find_annotations(self, **query: Any) -> list[dict]: ...
    def add_annotation(self, **fields: Any) -> dict: ...
    def partial_update_annotation(self, annotations_id: int, **fields: Any) -> dict: ...


def epoch_millis(timestamp: str) -> int:
    """Milliseconds since the epoch of an Alertmanager RFC 3339 time (nanoseconds allowed)."""
    trimmed = re.sub(r"(\.\d{6})\d+", r"\1", timestamp.strip()).replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(trimmed)
    except ValueError:
        raise WebhookError(f"{timestamp!r} is not an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise WebhookError(f"{timestamp!r} has no UTC offset")
    return int(parsed.timestamp() * 1000)


def tags(alert: dict) -> list[str]:
    """Tags of an alert's annotation: `cancelwatch`, `key:value` of its labels, its fingerprint."""
    labels = alert.get("labels", {})
    found = [f"{label}:{labels[label]}" for label in TAGGED_LABELS if labels.get(label)]
    return [ANNOTATION_TAG, *found, f"{FINGERPRINT_TAG}:{fingerprint(alert)}"]


def text(alert: dict) -> str:
    annotations = alert.get("annotations", {})
    labels = alert.get("labels", {})
    title = annotations.get("summary") or labels.get(names.LABEL_ALERTNAME, "alert")
    details = [f"{key}: {annotations[key]}" for key in TEXT_ANNOTATIONS if annotations.get(key)]
    return "\n".join([title, *details])


def fingerprint(alert: dict) -> str:
    """Alertmanager's fingerprint, or the sorted labels when an old sender left it out."""
    if alert.get("fingerprint"):
        return str(alert["fingerprint"])
    labels = alert.get("labels") or {}
    if not labels:
        raise WebhookError("alert has neither a fingerprint nor labels")
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


class AnnotationWriter:
    """Turns webhook payloads into annotation writes; remembers which alert has which annotation."""

    def __init__(self, annotations: Annotations,
                 dashboard_uid: str = names.DASHBOARD_UIDS["seller"]) -> None:
        self.annotations = annotations
        self.dashboard_uid = dashboard_uid
        self.annotation_ids: dict[str, int] = {}
        self._lock = threading.Lock()

    def handle(self, payload: Any) -> int:
        """Apply one webhook payload; returns how many annotations were written."""
        if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
            raise WebhookError("payload is not an Alertmanager webhook: it needs a list `alerts`")
        written = 0
        with self._lock:
            for alert in payload["alerts"]:
                if not isinstance(alert, dict):
                    raise WebhookError(f"alert {alert!r} is not an object")
                status = alert.get("status", payload.get("status"))
                if status == "firing":
                    written += self._firing(alert)
                elif status == "resolved":
                    written += self._resolved(alert)
                else:
                    raise WebhookError(f"alert status {status!r} is neither firing nor resolved")
        return written

    def _find(self, alert: dict) -> int | None:
        key = fingerprint(alert)
        if key in self.annotation_ids:
            return self.annotation_ids[key]
        found = self.annotations.find_annotations(
            dashboard_uid=self.dashboard_uid, tags=[f"{FINGERPRINT_TAG}:{key}"], limit=1)
        if found:
            self.annotation_ids[key] = int(found[0]["id"])
            return self.annotation_ids[key]
        return None

    def _firing(self, alert: dict) -> int:
        if self._find(alert) is not None:
            return 0  # Alertmanager repeats firing alerts; the annotation already exists
        created = self.annotations.add_annotation(
            dashboard_uid=self.dashboard_uid, time_from=self._starts(alert),
            tags=tags(alert), text=text(alert))
        self.annotation_ids[fingerprint(alert)] = int(created["id"])
        log.info("annotation %s: %s started", created["id"], fingerprint(alert))
        return 1

    def _resolved(self, alert: dict) -> int:
        if not alert.get("endsAt"):
            raise WebhookError(f"resolved alert {fingerprint(alert)} has no endsAt")
        ends = epoch_millis(alert["endsAt"])
        annotation_id = self._find(alert)
        if annotation_id is None:
            # Started while this receiver was away: record the whole alert as a region.
            self.annotations.add_annotation(
                dashboard_uid=self.dashboard_uid, time_from=self._starts(alert), time_to=ends,
                tags=tags(alert), text=text(alert))
        else:
            self.annotations.partial_update_annotation(
                annotation_id, time_to=ends, tags=tags(alert), text=text(alert))
        self.annotation_ids.pop(fingerprint(alert), None)
        log.info("annotation of %s ended", fingerprint(alert))
        return 1

    @staticmethod
    def _starts(alert: dict) -> int:
        if not alert.get("startsAt"):
            raise WebhookError(f"alert {fingerprint(alert)} has no startsAt")
        return epoch_millis(alert["startsAt"])


def make_server(writer: AnnotationWriter, host: str, port: int) -> HTTPServer:
    """The webhook endpoint: POST /alerts (or /) takes a payload; GET /-/healthy answers 200."""

    class Handler(JSONHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/-/healthy":
                self._reply(HTTPStatus.OK, {"status": "ok"})
            else:
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"no resource {self.path}; "
                                                   "Alertmanager posts to /alerts"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path not in ("/", "/alerts"):
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"no resource {self.path}; "
                                                   "Alertmanager posts to /alerts"})
                return
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                written = writer.handle(json.loads(raw))
            except (json.JSONDecodeError, UnicodeDecodeError):
                self._reply(HTTPStatus.BAD_REQUEST, {"error": "body is not JSON"})
            except WebhookError as error:
                self._reply(HTTPStatus.BAD_REQUEST, {"error": str(error)})
            except Exception as error:  # Grafana refused or is unreachable: Alertmanager retries
                log.warning("writing annotations failed: %s", error)
                self._reply(HTTPStatus.BAD_GATEWAY,
                            {"error": f"Grafana did not take the annotation: {error}"})
            else:
                self._reply(HTTPStatus.OK, {"annotations_written": written})

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug(format, *args)

    return HTTPServer((host, port), Handler)


def read_token(path: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as error:
        raise SystemExit(f"cancelwatch grafana-annotations: cannot read the token file "
                         f"{path!r}: {error.strerror}; pass --token-file with a Grafana "
                         "service account token") from None
    if not token:
        raise SystemExit(f"cancelwatch grafana-annotations: token file {path!r} is empty")
    return token


def main(argv: list[str]) -> int:
    from grafana_client import GrafanaApi

    from cancelwatch import settings

    parser = argparse.ArgumentParser(prog="cancelwatch grafana-annotations",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--grafana-url", help="Grafana base URL [CANCELWATCH_GRAFANA_URL]")
    parser.add_argument("--token-file", required=True,
                        help="file holding a Grafana service account token (annotations:write)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on [127.0.0.1]")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port to listen on [{DEFAULT_PORT}]")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    grafana_url = args.grafana_url or settings.load().grafana_url
    grafana = GrafanaApi.from_url(grafana_url, credential=read_token(args.token_file))
    server = make_server(AnnotationWriter(grafana.annotations), args.host, args.port)
    log.info("taking Alertmanager webhooks on http://%s:%d/alerts, writing to %s",
             args.host, args.port, grafana_url)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
