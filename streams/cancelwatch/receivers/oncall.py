"""The on-call end of the alert path: a webhook receiver for Alertmanager.

Alertmanager posts its notifications to `POST /alerts`; each one is appended
as one JSON line to the log file and printed as one line per alert, the way
an on-call person would see it. `GET /notifications` returns what arrived
(filtered by `?alertname=`, `?seller_id=`, any other label, or `?status=`),
`DELETE /notifications` forgets it. The demo and the tests read it there.

    cancelwatch oncall [--host 127.0.0.1] [--port 5001] [--log FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import threading
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cancelwatch import names
from cancelwatch.receivers.webhook import JSONHandler

DEFAULT_LOG = Path(".stack/oncall/notifications.jsonl")
MAX_BODY_BYTES = 10 * 1024 * 1024


class NotificationLog:
    """Notifications received so far, kept in memory and in a JSON-lines file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._notifications: list[dict] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    self._notifications.append(json.loads(line))
                except ValueError:
                    raise SystemExit(f"cancelwatch oncall: {path}:{number} is not JSON; "
                                     "fix or delete the file and start again") from None

    def append(self, notification: dict) -> None:
        line = json.dumps(notification, sort_keys=True)
        with self._lock:
            with self.path.open("a") as file:
                file.write(line + "\n")
            self._notifications.append(notification)

    def select(self, filters: dict[str, str]) -> list[dict]:
        """Notifications holding alerts that match every filter, with only those alerts."""
        with self._lock:
            notifications = list(self._notifications)
        if not filters:
            return notifications
        selected = []
        for notification in notifications:
            alerts = [alert for alert in notification.get("alerts", []) if _matches(alert, filters)]
            if alerts:
                selected.append({**notification, "alerts": alerts})
        return selected

    def clear(self) -> int:
        with self._lock:
            count = len(self._notifications)
            self._notifications.clear()
            self.path.write_text("")
        return count


def _matches(alert: dict, filters: dict[str, str]) -> bool:
    labels = alert.get("labels", {})
    for key, value in filters.items():
        actual = alert.get("status") if key == "status" else labels.get(key)
        if actual != value:
            return False
    return True


def summary_line(notification_status: str, alert: dict) -> str:
    """One line per alert: what fired, for whom, how bad, what to do."""
    labels = alert.get("labels", {})
    annotations = alert.get("annotations", {})
    status = alert.get("status", notification_status).upper()
    parts = [
        status,
        labels.get(names.LABEL_ALERTNAME, "?"),
        f"seller={labels.get(names.LABEL_SELLER, '-')}",
        f"marketplace={labels.get(names.LABEL_MARKETPLACE, '-')}",
    ]
    if names.LABEL_WINDOW_DAYS in labels:
        parts.append(f"window={labels[names.LABEL_WINDOW_DAYS]}d")
    if names.LABEL_SKU in labels:
        parts.append(f"sku={labels[names.LABEL_SKU]}")
    parts.append(f"rate={annotations.get('rate', '-')}")
    parts.append(f"headroom={annotations.get('headroom', '-')}")
    parts.append(f"action={annotations.get('action', '-')}")
    return " ".join(parts)


class Handler(JSONHandler):
    server: "OncallServer"

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        if urlsplit(self.path).path != names.ONCALL_ALERTS_PATH:
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"POST goes to {names.ONCALL_ALERTS_PATH}"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_BODY_BYTES:
            self._reply(HTTPStatus.BAD_REQUEST,
                        {"error": f"body of {length} bytes: expected an Alertmanager "
                                  f"webhook JSON object of 1..{MAX_BODY_BYTES} bytes"})
            return
        try:
            notification = json.loads(self.rfile.read(length))
        except ValueError as error:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": f"body is not JSON: {error}"})
            return
        if not isinstance(notification, dict) or not isinstance(notification.get("alerts"), list):
            self._reply(HTTPStatus.BAD_REQUEST,
                        {"error": "expected an Alertmanager webhook object with an 'alerts' list"})
            return
        notification["received_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
        self.server.notifications.append(notification)
        for alert in notification["alerts"]:
            print(summary_line(str(notification.get("status", "")), alert), flush=True)
        self._reply(HTTPStatus.OK, {"received": len(notification["alerts"])})

    def do_GET(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        if url.path != names.ONCALL_NOTIFICATIONS_PATH:
            self._reply(HTTPStatus.NOT_FOUND,
                        {"error": f"GET {names.ONCALL_NOTIFICATIONS_PATH} lists what arrived"})
            return
        filters = {key: values[-1] for key, values in parse_qs(url.query).items()}
        self._reply(HTTPStatus.OK, self.server.notifications.select(filters))

    def do_DELETE(self) -> None:  # noqa: N802
        if urlsplit(self.path).path != names.ONCALL_NOTIFICATIONS_PATH:
            self._reply(HTTPStatus.NOT_FOUND,
                        {"error": f"DELETE {names.ONCALL_NOTIFICATIONS_PATH} clears the list"})
            return
        self._reply(HTTPStatus.OK, {"deleted": self.server.notifications.clear()})

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Requests are not logged: the summary lines are the receiver's output."""


class OncallServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], notifications: NotificationLog) -> None:
        super().__init__(address, Handler)
        self.notifications = notifications


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="cancelwatch oncall",
        description="Receive Alertmanager webhook notifications, log them and print one line per alert.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5001, help="port to listen on (default 5001)")
    parser.add_argument("--log", type=Path, default=DEFAULT_LOG,
                        help=f"JSON-lines file of notifications (default {DEFAULT_LOG})")
    options = parser.parse_args(argv)
    notifications = NotificationLog(options.log)
    try:
        server = OncallServer((options.host, options.port), notifications)
    except OSError as error:
        print(f"cancelwatch oncall: cannot listen on {options.host}:{options.port}: "
              f"{error.strerror}; choose another --port", file=sys.stderr)
        return 1
    print(f"cancelwatch oncall: listening on http://{options.host}:{options.port}"
          f"{names.ONCALL_ALERTS_PATH}, logging to {options.log}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
