"""Terminal views of what the monitor made of the events: one seller, the sellers at risk, and
one seller's counts against Amazon's account-health report.

`cancelwatch seller`, `cancelwatch top` and `cancelwatch reconcile` read the worker's HTTP
API (contract sections 8 and 11) and, for `top`, the active alerts in Alertmanager.
Rendering is plain functions from the API's JSON to text, so it is tested
without a terminal.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from typing import Iterable

from cancelwatch import names, settings

DEFAULT_MARKETPLACES = ("US", "UK", "DE", "IN")
BAR_WIDTH = 24
STATUS_ORDER = {names.STATUS_BREACH: 0, names.STATUS_WARNING: 1, names.STATUS_OK: 2}
CLEAR = "\x1b[H\x1b[2J"
UNLIMITED = 10_000


class ApiError(RuntimeError):
    """The worker or Alertmanager could not answer; the message says why and what to do."""


def default_api() -> str:
    return f"http://127.0.0.1:{settings.load().web_port}"


def default_alertmanager() -> str:
    urls = settings.load().alertmanager_urls
    return urls[0] if urls else ""


def get_json(url: str, what: str, hint: str, timeout: float = 5.0):
    """GET a JSON document; raise ApiError naming `what` and `hint` on failure."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        try:
            detail = json.load(error).get("error", "")
        except (ValueError, AttributeError):
            detail = ""
        raise ApiError(f"{what} answered {error.code} for {url}" + (f": {detail}" if detail else ""),
                       ) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ApiError(f"cannot reach {what} at {url} ({reason}); {hint}") from None
    except ValueError:
        raise ApiError(f"{what} at {url} did not answer JSON") from None


_WORKER_HINT = "start it with `cancelwatch worker`, or pass --api with its address"


def _fetch_one(api: str, seller_id: str, marketplace: str, route: str, missing: str) -> dict:
    """GET /sellers/{seller_id}{route}?marketplace=...; a 404 becomes the ApiError `missing`."""
    url = (f"{api.rstrip('/')}/sellers/{urllib.parse.quote(seller_id, safe='')}{route}"
           f"?{urllib.parse.urlencode({'marketplace': marketplace})}")
    try:
        return get_json(url, "the worker", _WORKER_HINT)
    except ApiError as error:
        if " answered 404 " in str(error):
            raise ApiError(missing) from None
        raise


def fetch_seller(api: str, seller_id: str, marketplace: str) -> dict:
    return _fetch_one(api, seller_id, marketplace, "",
                      f"seller {seller_id} has no events in {marketplace} (the worker has never seen "
                      "it); check the seller id and --marketplace")


def fetch_reconciliation(api: str, seller_id: str, marketplace: str) -> dict:
    return _fetch_one(api, seller_id, marketplace, "/reconciliation",
                      f"no account-health report of seller {seller_id} in {marketplace} has reached the "
                      "worker; publish one with `cancelwatch publish-report`, or check the seller id "
                      "and --marketplace")


def fetch_at_risk(api: str, marketplace: str, limit: int) -> list[dict]:
    query = urllib.parse.urlencode({"marketplace": marketplace, "limit": limit})
    document = get_json(f"{api.rstrip('/')}/sellers/at-risk?{query}", "the worker", _WORKER_HINT)
    if isinstance(document, dict):
        document = document.get("sellers", [])
    return list(document)


def fetch_alerts(alertmanager: str) -> dict[tuple[str, str], dict[str, dict]]:
    """Active alerts by (seller_id, marketplace) -> alert name (listing alerts with their sku) ->
    the alert's annotations."""
    query = urllib.parse.urlencode({"active": "true", "silenced": "false", "inhibited": "false"})
    alerts = get_json(f"{alertmanager.rstrip('/')}/api/v2/alerts?{query}", "Alertmanager",
                      "start it (`make stack-up`) or pass --alertmanager with its address")
    grouped: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
    for alert in alerts:
        labels = alert.get("labels", {})
        seller_id = labels.get(names.LABEL_SELLER)
        if not seller_id:
            continue
        name = labels.get(names.LABEL_ALERTNAME, "?")
        if labels.get(names.LABEL_SKU):
            name = f"{name}({labels[names.LABEL_SKU]})"
        grouped[(seller_id, labels.get(names.LABEL_MARKETPLACE, ""))][name] = alert.get("annotations", {})
    return dict(grouped)


# --- rendering ---------------------------------------------------------------

def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def rate_bar(rate: float | None, limit: float, warning: float | None = None,
             width: int = BAR_WIDTH) -> str:
    """`[#######:...|..]`: the rate filled in, `:` at the warning level, `|` at the limit.

    The limit sits at 80% of the width; a rate past the end shows `>` at the end.
    """
    scale = limit / 0.8 if limit > 0 else 1.0
    cells = ["."] * width

    def cell(value: float) -> int:
        return min(width - 1, int(round(value / scale * width)) - 1)

    filled = 0 if not rate else min(width, int(round(rate / scale * width)))
    for index in range(filled):
        cells[index] = "#"
    if warning:
        index = cell(warning)
        if index >= 0 and cells[index] == ".":
            cells[index] = ":"
    limit_index = cell(limit)
    if limit_index >= 0:
        cells[limit_index] = "|" if cells[limit_index] != "#" else "!"
    if rate and rate > scale:
        cells[-1] = ">"
    return "[" + "".join(cells) + "]"


def worst_window(document: dict) -> dict:
    """The window that puts the seller most at risk: worst status, then rate nearest the limit."""
    windows = document.get("windows") or [{}]
    return min(windows, key=lambda window: (
        STATUS_ORDER.get(window.get("status"), 3),
        -((window.get("rate") or 0.0) / (window.get("limit") or 1.0)),
    ))


def dominant_reason(reasons: dict | None) -> str:
    if not reasons:
        return "-"
    return max(sorted(reasons), key=lambda reason: reasons[reason])


def render_seller(document: dict) -> str:
    lines = [f"seller {document.get('seller_id')} in {document.get('marketplace')}"
             f"  (as of {document.get('as_of', '?')})"]
    statuses = [window.get("status") for window in document.get("windows", [])]
    overall = min(statuses, key=lambda status: STATUS_ORDER.get(status, 3)) if statuses else "-"
    lines.append(f"status: {str(overall).upper()}")
    target = document.get("target") or {}
    if target.get("source") == "seller":
        lines.append("limits: the seller's own target" + (f" ({target['note']})" if target.get("note") else ""))
    lines.append("")
    for window in document.get("windows", []):
        headroom = window.get("headroom")
        lines.append(
            f"  {window.get('days'):>2} days  {rate_bar(window.get('rate'), window.get('limit', 0.025), window.get('warning_level'))}"
            f"  {percent(window.get('rate'))} of {percent(window.get('limit'))} limit"
            f" (warning {percent(window.get('warning_level'))})"
            f"  {window.get('cancelled', 0)} of {window.get('orders', 0)} orders cancelled"
            f"  headroom {'-' if headroom is None else headroom}"
            f"  {window.get('status', '-')}")
    lines.append("")
    reasons = document.get("reasons") or {}
    lines.append("reasons (seller-fault): " + (", ".join(
        f"{reason} {count}" for reason, count in sorted(reasons.items(), key=lambda item: (-item[1], item[0])))
        or "none"))
    excluded = document.get("excluded") or {}
    lines.append("excluded: " + (", ".join(f"{cause} {count}" for cause, count in excluded.items() if count)
                                 or "none"))
    return "\n".join(lines) + "\n"


def render_reconciliation(document: dict) -> str:
    """The reconciliation answer as a table: Amazon, cancelwatch and the drift, then the verdict."""
    amazon, own, drift = document.get("amazon", {}), document.get("cancelwatch", {}), document.get("drift", {})
    span = document.get("range", {})
    lines = [f"seller {document.get('seller_id')} in {document.get('marketplace')}: Amazon's report fetched "
             f"{document.get('fetched_at', '?')}, account {document.get('account_status') or 'status not given'}",
             f"range (purchase dates): {span.get('from', '?')} to {span.get('to', '?')}",
             "",
             f"  {'':<12} {'orders':>8} {'cancelled':>10} {'rate':>8}",
             f"  {'amazon':<12} {amazon.get('orders', 0):>8} {amazon.get('cancelled', 0):>10} "
             f"{percent(amazon.get('rate')):>8}  status {amazon.get('status', '-')}",
             f"  {'cancelwatch':<12} {own.get('orders', 0):>8} {own.get('cancelled', 0):>10} "
             f"{percent(own.get('rate')):>8}",
             f"  {'drift':<12} {drift.get('orders', 0):>+8} {drift.get('cancelled', 0):>+10}",
             ""]
    if not document.get("complete", True):
        lines.append("INCOMPLETE: the range reaches back beyond the purchase dates the worker still holds; "
                     "its counts are partial and are not compared")
    elif document.get("drifting"):
        fewer = drift.get("cancelled", 0) < 0 or drift.get("orders", 0) < 0
        lines.append("DRIFTING (SellerCancelRateDrift): " + (
            "cancelwatch counts fewer than Amazon: look for an order source that does not publish"
            if fewer else "cancelwatch counts more than Amazon: look for an order source that publishes twice"))
    else:
        lines.append("agrees with Amazon within the policy's tolerance")
    return "\n".join(lines) + "\n"


def _short_alert(name: str) -> str:
    for prefix in ("SellerCancelRate", "Listing"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def drift(annotations: dict | None) -> str:
    """What a SellerCancelRateDrift alert says cancelwatch counts against Amazon's report:
    `-30 orders`, `-3 cancels` (cancelwatch minus Amazon); `-` without the alert."""
    if annotations is None:
        return "-"
    parts = []
    for what, ours, amazon in (("orders", "cancelwatch_orders", "amazon_orders"),
                               ("cancels", "cancelwatch_cancelled", "amazon_cancelled")):
        try:
            difference = int(annotations[ours]) - int(annotations[amazon])
        except (KeyError, ValueError):
            continue
        if difference:
            parts.append(f"{difference:+d} {what}")
    return " ".join(parts) or "drifting"


def _limit(document: dict, window: dict) -> str:
    """The limit in force; a `*` marks a seller's own target (contract section 10)."""
    own = (document.get("target") or {}).get("source") == "seller"
    return percent(window.get("limit")) + ("*" if own else "")


def render_top(rows: Iterable[dict], alerts: dict[tuple[str, str], dict[str, dict]] | None,
               problems: list[str], width: int = 120, header: str = "") -> str:
    """The `drift` column is cancelwatch's counts minus Amazon's account-health report, for a
    seller whose comparison drifts (SellerCancelRateDrift firing)."""
    lines = [header] if header else []
    lines += [f"! {problem}" for problem in problems]
    title = (f"{'seller':<16} {'mkt':<3} {'rate':<{BAR_WIDTH + 2}} {'rate':>7} {'drift':<20} {'limit':>6} "
             f"{'win':>3} {'headroom':>8} {'status':<7} {'dominant reason':<33} alerts")
    lines += [title[:width], "-" * min(width, len(title) + 30)]
    count = 0
    for document in rows:
        count += 1
        window = worst_window(document)
        key = (document.get("seller_id", ""), document.get("marketplace", ""))
        if alerts is None:
            active = drifted = "?"
        else:
            mine = alerts.get(key, {})
            active = ",".join(_short_alert(name) for name in sorted(mine)) or "-"
            drifted = drift(mine.get(names.ALERT_DRIFT))
        headroom = window.get("headroom")
        line = (f"{key[0]:<16} {key[1]:<3} "
                f"{rate_bar(window.get('rate'), window.get('limit', 0.025), window.get('warning_level'))} "
                f"{percent(window.get('rate')):>7} {drifted:<20} {_limit(document, window):>6} "
                f"{window.get('days', '-'):>3} {'-' if headroom is None else headroom:>8} "
                f"{window.get('status', '-'):<7} {dominant_reason(document.get('reasons')):<33} {active}")
        lines.append(line[:width])
    if count == 0:
        lines.append("(no sellers)")
    return "\n".join(lines) + "\n"


def top_frame(api: str, alertmanager: str, marketplaces: list[str], limit: int,
              width: int) -> tuple[str, bool]:
    """One frame of `top`, and whether the worker answered."""
    rows: list[dict] = []
    problems: list[str] = []
    worker_ok = True
    for marketplace in marketplaces:
        try:
            rows.extend(fetch_at_risk(api, marketplace, limit))
        except ApiError as error:
            problems.append(str(error))
            worker_ok = False
            break
    rows.sort(key=risk)
    alerts = None
    if alertmanager:
        try:
            alerts = fetch_alerts(alertmanager)
        except ApiError as error:
            problems.append(f"alerts unavailable: {error}")
    header = (f"cancelwatch top  {time.strftime('%Y-%m-%d %H:%M:%S')}  "
              f"marketplaces {' '.join(marketplaces)}  worker {api}")
    return render_top(rows, alerts, problems, width, header), worker_ok


def risk(document: dict) -> tuple:
    """The at-risk API's order (contract section 8), to merge marketplaces: breached, then
    warning, then the rate as a share of the limit in force (highest first), then least headroom."""
    window = worst_window(document)
    limit = window.get("limit") or 0
    share = (window.get("rate") or 0) / limit if limit else 0
    headroom = window.get("headroom")
    return (STATUS_ORDER.get(window.get("status"), 3), -share,
            float("inf") if headroom is None else headroom)


def _one_seller_view(argv: list[str], command: str, description: str, fetch, render) -> int:
    """A command that shows one seller of one marketplace from the worker's API: `seller` and
    `reconcile` (the same arguments, another route and rendering)."""
    parser = argparse.ArgumentParser(prog=f"cancelwatch {command}", description=description)
    parser.add_argument("seller_id", metavar="SELLER_ID")
    parser.add_argument("--marketplace", "-m", required=True, help="marketplace code, e.g. US")
    parser.add_argument("--api", help="worker HTTP API (default http://127.0.0.1:CANCELWATCH_WEB_PORT)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON as it is")
    args = parser.parse_args(argv)
    marketplace = args.marketplace.upper()
    if marketplace not in names.MARKETPLACES:
        parser.error(f"{args.marketplace!r} is not a marketplace; one of {' '.join(names.MARKETPLACES)}")
    try:
        document = fetch(args.api or default_api(), args.seller_id, marketplace)
    except ApiError as error:
        print(f"cancelwatch {command}: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        sys.stdout.write(render(document))
    return 0


def seller_main(argv: list[str]) -> int:
    return _one_seller_view(argv, "seller", "Show one seller's rate per window against the limit, "
                            "headroom, status, reasons and exclusions.", fetch_seller, render_seller)


def reconcile_main(argv: list[str]) -> int:
    return _one_seller_view(argv, "reconcile", "Show one seller's counts against Amazon's latest "
                            "account-health report, over the report's range.",
                            fetch_reconciliation, render_reconciliation)


def top_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cancelwatch top",
                                     description="Live view of the sellers most at risk, with "
                                                 "their active alerts.")
    parser.add_argument("--marketplace", "-m", action="append",
                        help="marketplace to show (repeat, or comma-separated; "
                             f"default {' '.join(DEFAULT_MARKETPLACES)})")
    parser.add_argument("--limit", type=int, default=20, help="sellers per marketplace (default 20)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    parser.add_argument("--api", help="worker HTTP API (default http://127.0.0.1:CANCELWATCH_WEB_PORT)")
    parser.add_argument("--alertmanager",
                        help="Alertmanager URL (default the first of CANCELWATCH_ALERTMANAGER_URL; "
                             "empty: no alert lookup)")
    args = parser.parse_args(argv)
    marketplaces = [code.strip().upper() for value in (args.marketplace or [",".join(DEFAULT_MARKETPLACES)])
                    for code in value.split(",") if code.strip()]
    unknown = [code for code in marketplaces if code not in names.MARKETPLACES]
    if unknown:
        parser.error(f"not a marketplace: {' '.join(unknown)}; one of {' '.join(names.MARKETPLACES)}")
    if args.interval <= 0 or args.limit < 1:
        parser.error("--interval must be positive and --limit at least 1")
    api = args.api or default_api()
    alertmanager = default_alertmanager() if args.alertmanager is None else args.alertmanager
    interactive = sys.stdout.isatty() and not args.once
    try:
        while True:
            width = shutil.get_terminal_size().columns if interactive else UNLIMITED
            frame, worker_ok = top_frame(api, alertmanager, marketplaces, args.limit, width)
            sys.stdout.write((CLEAR if interactive else "") + frame)
            sys.stdout.flush()
            if args.once:
                return 0 if worker_ok else 1
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
