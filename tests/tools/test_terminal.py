"""`cancelwatch seller`, `cancelwatch top` and `cancelwatch reconcile` (streams/cancelwatch/tools/terminal.py).

The HTTP server here is a stand-in for the worker's API (contract section 8)
and for Alertmanager's `/api/v2/alerts`: the worker itself runs in other
tests, and these tests pin what the terminal views make of given answers.
"""

from __future__ import annotations

import json
import socket
import urllib.parse
from http.server import ThreadingHTTPServer

import pytest

from cancelwatch.tools import terminal
from cancelwatch.receivers.webhook import JSONHandler
from tests import http_servers


def window(days, orders, cancelled, limit, warning, headroom, status):
    return {"days": days, "orders": orders, "cancelled": cancelled,
            "rate": round(cancelled / orders, 5), "limit": limit, "warning_level": warning,
            "headroom": headroom, "status": status}


WARNED = {
    "seller_id": "A1WARNED", "marketplace": "US", "as_of": "2026-11-20T13:05:00Z",
    "windows": [window(7, 1000, 21, 0.025, 0.02, 3, "warning")],
    "reasons": {"NoInventory": 15, "ShippingAddressUndeliverable": 6},
    "excluded": {"buyer_requested": 3, "buyer_initiated": 2, "pending": 1, "amazon_other": 0},
}
BREACHED = {
    "seller_id": "A2BREACHED", "marketplace": "US", "as_of": "2026-11-20T13:05:00Z",
    "windows": [window(7, 400, 12, 0.025, 0.02, 0, "breach")],
    "reasons": {"RiskAssessmentInformationNotValid": 9, "NoInventory": 3},
    "excluded": {},
}
INDIA = {
    "seller_id": "A3INDIA", "marketplace": "IN", "as_of": "2026-11-20T13:05:00Z",
    "windows": [window(7, 300, 3, 0.02, 0.016, 2, "ok"), window(30, 1200, 21, 0.02, 0.016, 2, "warning")],
    "reasons": {"ShippingAddressUndeliverable": 21},
    "excluded": {"buyer_requested": 1},
}
# The contract's example of the reconciliation answer (section 11).
RECONCILED = {
    "seller_id": "A1", "marketplace": "US", "fetched_at": "2026-11-20T06:00:00Z", "account_status": "NORMAL",
    "range": {"from": "2026-11-12T00:00:00Z", "to": "2026-11-18T23:59:00Z"},
    "amazon": {"orders": 4760, "cancelled": 33, "rate": 0.006933, "status": "GOOD"},
    "cancelwatch": {"orders": 4757, "cancelled": 31, "rate": 0.00652},
    "drift": {"orders": -3, "cancelled": -2}, "complete": True, "drifting": True,
}
ALERTS = [
    {"labels": {"alertname": "SellerCancelRateWarning", "seller_id": "A1WARNED", "marketplace": "US",
                "severity": "warning", "window_days": "7"}},
    {"labels": {"alertname": "SellerCancelRateBreached", "seller_id": "A2BREACHED", "marketplace": "US",
                "severity": "critical", "window_days": "7"}},
    {"labels": {"alertname": "ListingConsecutiveSellerCancellations", "seller_id": "A2BREACHED",
                "marketplace": "US", "severity": "warning", "window_days": "30", "sku": "SKU-9"}},
    {"labels": {"alertname": "Watchdog", "severity": "none"}},
]


class StandIn(JSONHandler):
    requests: list[tuple[str, dict]] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        parsed = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        StandIn.requests.append((parsed.path, query))
        if parsed.path == "/api/v2/alerts":
            return self._reply(200, ALERTS)
        if parsed.path == "/sellers/at-risk":
            by_marketplace = {"US": [BREACHED, WARNED], "IN": [INDIA]}
            return self._reply(200, by_marketplace.get(query.get("marketplace"), [])[: int(query["limit"])])
        if parsed.path == "/sellers/A1/reconciliation" and query.get("marketplace") == "US":
            return self._reply(200, RECONCILED)
        if parsed.path == "/sellers/A1WARNED" and query.get("marketplace") == "US":
            return self._reply(200, WARNED)
        return self._reply(404, {"error": "seller never seen"})

    def log_message(self, *args):
        pass


@pytest.fixture
def stand_in():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    StandIn.requests = []
    with http_servers.serving(server):
        yield f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def closed_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_seller_prints_rate_against_limit_headroom_reasons_and_exclusions(stand_in, capsys):
    assert terminal.seller_main(["A1WARNED", "--marketplace", "us", "--api", stand_in]) == 0
    output = capsys.readouterr().out
    assert "seller A1WARNED in US" in output
    assert "status: WARNING" in output
    assert "2.10% of 2.50% limit (warning 2.00%)" in output
    assert "21 of 1000 orders cancelled" in output and "headroom 3" in output
    assert "reasons (seller-fault): NoInventory 15, ShippingAddressUndeliverable 6" in output
    assert "excluded: buyer_requested 3, buyer_initiated 2, pending 1" in output
    assert "amazon_other" not in output
    assert StandIn.requests == [("/sellers/A1WARNED", {"marketplace": "US"})]


def test_seller_json_prints_the_answer_unchanged(stand_in, capsys):
    assert terminal.seller_main(["A1WARNED", "-m", "US", "--api", stand_in, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == WARNED


def test_unknown_seller_says_so(stand_in, capsys):
    assert terminal.seller_main(["A9NOBODY", "-m", "US", "--api", stand_in]) == 1
    error = capsys.readouterr().err
    assert "seller A9NOBODY has no events in US" in error and "--marketplace" in error


def test_worker_down_says_where_and_what_to_do(closed_port, capsys):
    assert terminal.seller_main(["A1", "-m", "US", "--api", closed_port]) == 1
    error = capsys.readouterr().err
    assert f"cannot reach the worker at {closed_port}/sellers/A1?marketplace=US" in error
    assert "cancelwatch worker" in error


def test_unknown_marketplace_is_refused(capsys):
    with pytest.raises(SystemExit):
        terminal.seller_main(["A1", "-m", "XX", "--api", "http://127.0.0.1:1"])
    assert "'XX' is not a marketplace" in capsys.readouterr().err


def test_top_once_lists_sellers_at_risk_with_alerts(stand_in, capsys):
    code = terminal.top_main(["--once", "-m", "US,IN", "--marketplace", "UK", "--limit", "5",
                              "--api", stand_in, "--alertmanager", stand_in])
    assert code == 0
    output = capsys.readouterr().out
    assert "\x1b[" not in output
    lines = output.splitlines()
    rows = [line for line in lines if line.startswith("A")]
    assert [row.split()[0] for row in rows] == ["A2BREACHED", "A3INDIA", "A1WARNED"]
    breached, india, warned = rows
    assert "3.00%" in breached and "breach" in breached
    assert "RiskAssessmentInformationNotValid" in breached
    assert "Breached" in breached and "ConsecutiveSellerCancellations(SKU-9)" in breached
    assert " 30 " in india and "1.75%" in india and "2.00%" in india and "-" == india.split()[-1]
    assert "NoInventory" in warned and warned.endswith("Warning")
    at_risk = [query for path, query in StandIn.requests if path == "/sellers/at-risk"]
    assert [query["marketplace"] for query in at_risk] == ["US", "IN", "UK"]
    assert all(query["limit"] == "5" for query in at_risk)


def test_top_once_without_alertmanager_shows_the_problem_and_the_rows(stand_in, closed_port, capsys):
    assert terminal.top_main(["--once", "-m", "US", "--api", stand_in, "--alertmanager", closed_port]) == 0
    output = capsys.readouterr().out
    assert "! alerts unavailable: cannot reach Alertmanager" in output
    assert "A2BREACHED" in output


def test_top_once_with_the_worker_down_fails_with_the_reason(closed_port, capsys):
    assert terminal.top_main(["--once", "--api", closed_port, "--alertmanager", ""]) == 1
    output = capsys.readouterr().out
    assert "cannot reach the worker" in output and "(no sellers)" in output


def test_rate_bar_marks_warning_and_limit():
    bar = terminal.rate_bar(0.01, 0.025, 0.02, width=20)
    assert bar.startswith("[") and bar.endswith("]") and len(bar) == 22
    assert bar.count("#") == 6  # 1% of a bar whose limit (2.5%) is at 80%
    assert bar.index(":") < bar.index("|")
    over = terminal.rate_bar(0.05, 0.025, 0.02, width=20)
    assert over.endswith(">]") and "!" in over
    assert terminal.rate_bar(None, 0.025, 0.02, width=20).count("#") == 0


def test_worst_window_prefers_breach_then_the_rate_nearest_the_limit():
    assert terminal.worst_window(INDIA)["days"] == 30
    ok_windows = {"windows": [window(7, 100, 1, 0.02, 0.016, 0, "ok"), window(30, 100, 1, 0.025, 0.02, 1, "ok")]}
    assert terminal.worst_window(ok_windows)["days"] == 7
    assert terminal.dominant_reason({"A": 2, "B": 5}) == "B"
    assert terminal.dominant_reason({}) == "-"


def test_top_marks_a_seller_on_its_own_target_and_seller_names_it():
    from cancelwatch.tools import terminal

    document = {"seller_id": "SFP1", "marketplace": "US", "as_of": "2026-11-20T13:05:00Z",
                "windows": [{"days": 7, "orders": 200, "cancelled": 2, "rate": 0.01, "limit": 0.005,
                             "warning_level": 0.004, "headroom": 0, "status": "breach"}],
                "reasons": {"NoInventory": 2}, "excluded": {},
                "target": {"source": "seller", "note": "Seller Fulfilled Prime"}}
    assert "0.50%*" in terminal.render_top([document], {}, [])
    assert "own target (Seller Fulfilled Prime)" in terminal.render_seller(document)
    document["target"] = {"source": "marketplace"}
    assert "0.50%*" not in terminal.render_top([document], {}, [])


def test_reconcile_prints_amazon_cancelwatch_the_drift_and_where_to_look(stand_in, capsys):
    assert terminal.reconcile_main(["A1", "-m", "us", "--api", stand_in]) == 0
    output = capsys.readouterr().out
    assert "seller A1 in US: Amazon's report fetched 2026-11-20T06:00:00Z, account NORMAL" in output
    assert "range (purchase dates): 2026-11-12T00:00:00Z to 2026-11-18T23:59:00Z" in output
    rows = {line.split()[0]: line.split()[1:] for line in output.splitlines()[4:7]}
    assert rows == {"amazon": ["4760", "33", "0.69%", "status", "GOOD"], "cancelwatch": ["4757", "31", "0.65%"],
                    "drift": ["-3", "-2"]}
    assert "DRIFTING (SellerCancelRateDrift): cancelwatch counts fewer than Amazon" in output
    assert StandIn.requests == [("/sellers/A1/reconciliation", {"marketplace": "US"})]


def test_reconcile_says_when_the_counts_agree_or_the_range_is_incomplete():
    agreed = dict(RECONCILED, drifting=False)
    assert "agrees with Amazon within the policy's tolerance" in terminal.render_reconciliation(agreed)
    partial = dict(RECONCILED, complete=False, drifting=False)
    assert "INCOMPLETE: the range reaches back beyond" in terminal.render_reconciliation(partial)
    more = dict(RECONCILED, drift={"orders": 0, "cancelled": 4})
    assert "counts more than Amazon" in terminal.render_reconciliation(more)


def test_reconcile_json_prints_the_answer_unchanged(stand_in, capsys):
    assert terminal.reconcile_main(["A1", "-m", "US", "--api", stand_in, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == RECONCILED


def test_reconcile_without_a_report_says_how_to_publish_one(stand_in, capsys):
    assert terminal.reconcile_main(["A9NOBODY", "-m", "US", "--api", stand_in]) == 1
    error = capsys.readouterr().err
    assert "no account-health report of seller A9NOBODY in US" in error and "publish-report" in error


def test_top_shows_the_drift_from_amazons_report_beside_the_rate_and_ranks_as_the_api():
    from cancelwatch.tools import terminal

    def seller(seller_id, rate, headroom, status="ok"):
        return {"seller_id": seller_id, "marketplace": "US", "as_of": "2026-11-20T13:05:00Z",
                "windows": [{"days": 7, "orders": 1000, "cancelled": round(rate * 1000), "rate": rate,
                             "limit": 0.025, "warning_level": 0.02, "headroom": headroom, "status": status}],
                "reasons": {"NoInventory": 1}, "excluded": {}}

    drift = {"amazon_orders": "562", "cancelwatch_orders": "532", "amazon_cancelled": "4",
             "cancelwatch_cancelled": "4", "amazon_rate": "0.71%", "cancelwatch_rate": "0.75%"}
    alerts = {("GAP", "US"): {"SellerCancelRateDrift": drift}}
    frame = terminal.render_top([seller("GAP", 0.0075, 8)], alerts, [], width=200)
    row = frame.splitlines()[-1]
    assert "drift" in frame.splitlines()[0]
    assert row.index("0.75%") < row.index("-30 orders") < row.index("2.50%")
    assert "cancels" not in row and row.rstrip().endswith("Drift")
    assert terminal.drift({**drift, "amazon_cancelled": "7"}) == "-30 orders -3 cancels"
    assert terminal.drift(None) == "-"
    # Several marketplaces merge in the API's order: status, then the share of the limit, then headroom.
    rows = [seller("LOW", 0.005, 2), seller("HIGH", 0.018, 9), seller("WARN", 0.021, 3, "warning")]
    assert [row["seller_id"] for row in sorted(rows, key=terminal.risk)] == ["WARN", "HIGH", "LOW"]
