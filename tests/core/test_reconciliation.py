"""Amazon's account-health report against cancelwatch's counts (streams/cancelwatch/core/reconciliation.py):
the range's buckets, the drift rule at its boundaries, the endpoint's JSON, the two alerts, and
the policy's reconciliation settings. No services."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cancelwatch import names

from cancelwatch.core import alerting, policy as policy_module, reconciliation, targets, window
from cancelwatch.core.account_health import CancellationRate
from cancelwatch.core.reconciliation import RangeCounts

ROOT = Path(__file__).resolve().parents[2]
POLICY = policy_module.load(ROOT / "streams" / "cancelwatch" / "core" / "policy.yaml")
# the annotations of the US marketplace limit, which every alert carries (contract section 10)
LIMIT = targets.annotations(None, POLICY.windows("US")[0])
HOUR = 3600


def epoch(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp())


# The contract's example (section 11): Amazon 33 of 4760 over 2026-11-12 00:00 to 2026-11-18 23:59.
NOV_12 = epoch("2026-11-12T00:00:00+00:00")
NOV_18_END = epoch("2026-11-18T23:59:00+00:00")
FETCHED = datetime(2026, 11, 20, 6, tzinfo=timezone.utc)
AMAZON = CancellationRate(order_count=4760, cancellation_count=33, rate=0.006933, status="GOOD",
                          reporting_from=NOV_12, reporting_to=NOV_18_END)
CONTRACT_EXAMPLE = {
    "seller_id": "A1", "marketplace": "US", "fetched_at": "2026-11-20T06:00:00Z",
    "account_status": "NORMAL",
    "range": {"from": "2026-11-12T00:00:00Z", "to": "2026-11-18T23:59:00Z"},
    "amazon": {"orders": 4760, "cancelled": 33, "rate": 0.006933, "status": "GOOD"},
    "cancelwatch": {"orders": 4757, "cancelled": 31, "rate": 0.00652},
    "drift": {"orders": -3, "cancelled": -2},
    "complete": True, "drifting": True,
}


def amazon(orders: int, cancelled: int) -> CancellationRate:
    return CancellationRate(orders, cancelled, round(cancelled / orders, 6) if orders else 0.0, "GOOD",
                            NOV_12, NOV_18_END)


def drifting(amazon_orders: int, amazon_cancelled: int, orders: int, cancelled: int,
             complete: bool = True, policy: policy_module.Policy = POLICY) -> bool:
    return reconciliation.compare(amazon(amazon_orders, amazon_cancelled), RangeCounts(orders, cancelled),
                                  complete, policy).drifting


# --- the range's buckets ---------------------------------------------------------------------


@pytest.mark.parametrize("end", ["2026-11-18T23:59:00+00:00", "2026-11-18T23:59:59+00:00"])
def test_a_utc_seven_day_range_is_exactly_168_one_hour_buckets(end):
    first, last = reconciliation.bucket_range(NOV_12, epoch(end), HOUR)
    assert last - first + 1 == 168
    assert first == NOV_12 // HOUR
    assert window.format_time(last * HOUR) == "2026-11-18T23:00:00Z"


def test_the_range_is_floor_from_to_floor_to_whatever_the_bucket():
    assert reconciliation.bucket_range(NOV_12, NOV_18_END, 1800) == (NOV_12 // 1800, NOV_18_END // 1800)
    last_minus_first = reconciliation.bucket_range(NOV_12 + 1799, NOV_12 + 1800, 1800)
    assert last_minus_first == (NOV_12 // 1800, NOV_12 // 1800 + 1)
    assert reconciliation.bucket_range(NOV_12, NOV_12, HOUR) == (NOV_12 // HOUR, NOV_12 // HOUR)
    with pytest.raises(ValueError):
        reconciliation.bucket_range(NOV_12 + 1, NOV_12, HOUR)


class Totals:
    def __init__(self, orders: int, cancelled: int) -> None:
        self.orders, self.cancelled, self.reasons, self.causes = orders, cancelled, {"NoInventory": cancelled}, None


def test_range_counts_add_the_buckets_of_the_range_ends_included():
    first, last = 100, 267
    buckets = {first - 1: Totals(50, 5), first: Totals(10, 1), first + 1: 7, last: Totals(3, 2),
               last + 1: Totals(40, 4), 150: 0}
    assert reconciliation.range_counts(buckets, first, last) == RangeCounts(20, 3)
    assert reconciliation.range_counts({}, first, last) == RangeCounts(0, 0)


def test_range_counts_agree_with_the_window_totals_over_the_same_buckets():
    """A 7-day window ending at the range's last bucket covers exactly the range's 168 buckets."""
    first, last = reconciliation.bucket_range(NOV_12, NOV_18_END, HOUR)
    buckets = {bucket: (Totals(bucket % 7, bucket % 3 // 2) if bucket % 2 else bucket % 5)
               for bucket in range(first - 30, last + 30)}
    totals = window.totals(buckets, POLICY.windows("US")[0], POLICY, last)
    assert reconciliation.range_counts(buckets, first, last) == RangeCounts(totals.orders, totals.cancelled)


def test_a_range_is_complete_while_none_of_its_buckets_has_expired():
    first, _ = reconciliation.bucket_range(NOV_12, NOV_18_END, HOUR)
    retention = 10 * 86400
    last_complete = NOV_12 + retention + HOUR - 1     # expiry keeps bucket_of(now - retention) on
    assert reconciliation.is_complete(first, last_complete, retention, HOUR)
    assert not reconciliation.is_complete(first, last_complete + 1, retention, HOUR)


def test_with_the_reconciliation_retention_a_report_compares_complete_for_the_lag_after_its_range():
    """Retention max(longest window + grace, longest window + report_lag_days): a report fetched
    up to report_lag_days after its range ended still compares complete."""
    text = (ROOT / "streams" / "cancelwatch" / "core" / "policy.yaml").read_text().replace("order_window_days: 30", "order_window_days: 7") \
        .replace("{days: 30, limit_bps: 200, warning_bps: 160}", "{days: 7, limit_bps: 150, warning_bps: 100}") \
        .replace("      - {days: 7, limit_bps: 150, warning_bps: 100}\n", "", 1)
    policy = policy_module.parse(text)
    assert policy.longest_window_days == 7
    assert policy.reconciliation_retention_seconds == (7 + 3) * 86400
    retention = max(policy.retention_seconds, policy.reconciliation_retention_seconds)
    first, _ = reconciliation.bucket_range(NOV_12, NOV_18_END, HOUR)
    range_end = NOV_18_END + 60
    assert reconciliation.is_complete(first, range_end + 3 * 86400, retention, HOUR)
    assert not reconciliation.is_complete(first, range_end + 3 * 86400 + HOUR, retention, HOUR)


# --- the drift rule ----------------------------------------------------------------------------


def test_orders_drift_of_five_is_tolerated_and_six_drifts_when_one_percent_is_less():
    assert not drifting(100, 2, 105, 2)
    assert drifting(100, 2, 106, 2)
    assert not drifting(100, 2, 95, 2)
    assert drifting(100, 2, 94, 2)
    assert not drifting(0, 0, 5, 0)
    assert drifting(0, 0, 6, 0)
    assert not drifting(500, 2, 505, 2)          # 1% of 500 is exactly 5
    assert drifting(500, 2, 506, 2)


def test_orders_drift_above_one_percent_of_a_large_count_drifts():
    assert not drifting(100_000, 2, 101_000, 2)  # exactly 1%
    assert drifting(100_000, 2, 101_001, 2)
    assert not drifting(100_000, 2, 99_000, 2)
    assert drifting(100_000, 2, 98_999, 2)
    assert not drifting(4760, 33, 4760 + 47, 33)  # 1% of 4760 is 47.6: compared in integers
    assert drifting(4760, 33, 4760 + 48, 33)
    assert not drifting(4760, 33, 4760 - 47, 33)
    assert drifting(4760, 33, 4760 - 48, 33)


def test_a_cancelled_drift_of_one_is_tolerated_and_two_drifts():
    assert not drifting(4760, 33, 4760, 34)
    assert not drifting(4760, 33, 4760, 32)
    assert drifting(4760, 33, 4760, 35)
    assert drifting(4760, 33, 4760, 31)
    assert not drifting(4760, 33, 4760, 33)


def test_an_incomplete_comparison_never_drifts():
    assert not drifting(4760, 33, 10, 0, complete=False)
    assert not drifting(4760, 33, 100_000, 4000, complete=False)
    comparison = reconciliation.compare(AMAZON, RangeCounts(10, 0), False, POLICY)
    assert (comparison.complete, comparison.drifting) == (False, False)
    assert reconciliation.wanted_alerts("A1", "US", comparison, "NORMAL", "", limit=LIMIT) == {}


def test_the_tolerances_come_from_the_policy():
    text = (ROOT / "streams" / "cancelwatch" / "core" / "policy.yaml").read_text()
    text = re.sub(r"max_cancelled_drift: \d+", "max_cancelled_drift: 0", text)
    text = re.sub(r"max_orders_drift: \d+", "max_orders_drift: 0", text)
    text = re.sub(r"max_orders_drift_bps: \d+", "max_orders_drift_bps: 50", text)
    strict = policy_module.parse(text)
    assert strict.reconciliation == policy_module.Reconciliation(0, 0, 50, 3)
    assert drifting(4760, 33, 4760, 34, policy=strict)
    assert not drifting(4760, 33, 4760 + 23, 33, policy=strict)     # 0.5% of 4760 is 23.8
    assert drifting(4760, 33, 4760 + 24, 33, policy=strict)


def test_a_policy_without_a_reconciliation_section_has_the_defaults():
    text = (ROOT / "streams" / "cancelwatch" / "core" / "policy.yaml").read_text().split("\nreconciliation:", 1)[0] + "\n"
    assert policy_module.parse(text).reconciliation == policy_module.Reconciliation(1, 5, 100, 3)
    assert POLICY.reconciliation == policy_module.Reconciliation(1, 5, 100, 3)
    assert POLICY.reconciliation_retention_seconds == (POLICY.longest_window_days + 3) * 86400


@pytest.mark.parametrize("old, new, word", [
    ("max_cancelled_drift: 1", "max_cancelled_drift: -1", "max_cancelled_drift"),
    ("max_orders_drift: 5", "max_orders_drift: five", "max_orders_drift"),
    ("max_orders_drift_bps: 100", "max_orders_drift_bps: 10001", "max_orders_drift_bps"),
    ("report_lag_days: 3", "report_lag_days: 1.5", "report_lag_days"),
    ("report_lag_days: 3", "report_lag_dayz: 3", "report_lag_dayz"),
    ("reconciliation:", "reconciliation: 3", "reconciliation must be a mapping"),
])
def test_a_bad_reconciliation_setting_names_its_line(old, new, word):
    lines = (ROOT / "streams" / "cancelwatch" / "core" / "policy.yaml").read_text().splitlines()
    number = next(index for index, line in enumerate(lines) if line.startswith(old) or line.startswith("  " + old))
    lines[number] = lines[number].replace(old, new)
    if new == "reconciliation: 3":
        lines = lines[:number + 1]
    with pytest.raises(policy_module.PolicyError) as raised:
        policy_module.parse("\n".join(lines) + "\n", "policy.yaml")
    assert word in str(raised.value)
    assert f"policy.yaml line {number + 1}:" in str(raised.value)


# --- the endpoint's JSON -----------------------------------------------------------------------


def test_the_json_is_the_contracts_example_for_its_numbers():
    comparison = reconciliation.compare(AMAZON, RangeCounts(4757, 31), True, POLICY)
    assert comparison.as_json("A1", "US", FETCHED, "NORMAL") == CONTRACT_EXAMPLE
    assert comparison.as_json("A1", "US", FETCHED.timestamp(), "NORMAL") == CONTRACT_EXAMPLE
    assert json.dumps(comparison.as_json("A1", "US", FETCHED, "NORMAL"))


def test_the_json_without_orders_or_account_status():
    comparison = reconciliation.compare(AMAZON, RangeCounts(0, 0), False, POLICY)
    answer = comparison.as_json("A1", "US", FETCHED, None)
    assert answer["cancelwatch"] == {"orders": 0, "cancelled": 0, "rate": None}
    assert answer["drift"] == {"orders": -4760, "cancelled": -33}
    assert (answer["account_status"], answer["complete"], answer["drifting"]) == (None, False, False)


def test_the_documented_example_is_the_json_for_its_numbers():
    doc = (ROOT / "docs" / "api.md").read_text()
    section = doc.split("## `GET /sellers/{seller_id}/reconciliation", 1)[1].split("\n## ", 1)[0]
    example = json.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))
    entry = CancellationRate(example["amazon"]["orders"], example["amazon"]["cancelled"], example["amazon"]["rate"],
                             example["amazon"]["status"], epoch(example["range"]["from"].replace("Z", "+00:00")),
                             epoch(example["range"]["to"].replace("Z", "+00:00")))
    counts = RangeCounts(example["cancelwatch"]["orders"], example["cancelwatch"]["cancelled"])
    comparison = reconciliation.compare(entry, counts, example["complete"], POLICY)
    fetched = epoch(example["fetched_at"].replace("Z", "+00:00"))
    assert comparison.as_json(example["seller_id"], example["marketplace"], fetched,
                              example["account_status"]) == example
    for field in ("seller_id", "marketplace", "fetched_at", "account_status", "range", "amazon", "cancelwatch",
                  "drift", "complete", "drifting"):
        assert f"`{field}" in section, f"docs/api.md does not explain `{field}`"


# --- the alerts ----------------------------------------------------------------------------------


def alerts(comparison, account_status="NORMAL", **options):
    return {dict(key)[names.LABEL_ALERTNAME]: wanted for key, wanted in
            reconciliation.wanted_alerts("A1", "US", comparison, account_status, "http://grafana/d/seller",
                                         **{"limit": LIMIT, **options}).items()}


def test_the_drift_alert_carries_the_contracts_labels_and_annotations():
    comparison = reconciliation.compare(AMAZON, RangeCounts(4757, 31), True, POLICY)
    drift = alerts(comparison)[names.ALERT_DRIFT]
    assert drift.labels == {"alertname": "SellerCancelRateDrift", "seller_id": "A1", "marketplace": "US",
                            "severity": "warning", "window_days": "7"}
    assert names.ALERT_SEVERITY[names.ALERT_DRIFT] == "warning"
    assert set(drift.annotations) == set(names.ANNOTATION_KEYS) | set(names.DRIFT_ANNOTATION_KEYS) | set(LIMIT)
    annotations = drift.annotations
    assert {key: annotations[key] for key in names.DRIFT_ANNOTATION_KEYS} == {
        "amazon_rate": "0.69%", "cancelwatch_rate": "0.65%", "amazon_cancelled": "33",
        "cancelwatch_cancelled": "31", "amazon_orders": "4760", "cancelwatch_orders": "4757"}
    assert (annotations["rate"], annotations["headroom"], annotations["dominant_reason"]) == ("0.65%", "n/a", "none")
    assert annotations["dashboard"] == "http://grafana/d/seller"
    assert annotations["action"] == reconciliation.DRIFT_ACTIONS["fewer"]
    assert "does not publish" in annotations["action"]
    assert "-2 seller-fault cancels" in annotations["summary"] and "7 days" in annotations["summary"]
    assert "2026-11-12T00:00:00Z" in annotations["description"]
    assert all(isinstance(value, str) for value in annotations.values())


def test_the_drift_action_follows_the_sign_of_the_drift():
    more = reconciliation.compare(AMAZON, RangeCounts(4760, 36), True, POLICY)
    assert alerts(more)[names.ALERT_DRIFT].annotations["action"] == reconciliation.DRIFT_ACTIONS["more"]
    assert "publishes twice" in reconciliation.DRIFT_ACTIONS["more"]
    more_orders = reconciliation.compare(AMAZON, RangeCounts(4900, 33), True, POLICY)
    assert more_orders.directions == ("more",)
    both = reconciliation.compare(AMAZON, RangeCounts(4900, 30), True, POLICY)
    assert both.directions == ("fewer", "more")
    assert alerts(both)[names.ALERT_DRIFT].annotations["action"] == \
        reconciliation.DRIFT_ACTIONS["fewer"] + " " + reconciliation.DRIFT_ACTIONS["more"]


def test_window_days_is_the_ranges_length():
    entry = CancellationRate(4760, 33, 0.006933, "GOOD", NOV_12, NOV_12 + 30 * 86400 - 1)
    comparison = reconciliation.compare(entry, RangeCounts(4000, 20), True, POLICY)
    assert alerts(comparison)[names.ALERT_DRIFT].labels[names.LABEL_WINDOW_DAYS] == "30"


def test_no_drift_alert_within_tolerance():
    assert alerts(reconciliation.compare(AMAZON, RangeCounts(4760 - 47, 32), True, POLICY)) == {}


@pytest.mark.parametrize("status", ["AT_RISK", "DEACTIVATED", "SUSPENDED"])
def test_the_account_alert_fires_for_an_account_at_risk(status):
    comparison = reconciliation.compare(AMAZON, RangeCounts(4760, 33), True, POLICY)
    fired = alerts(comparison, status, health_rating="WARNED")
    assert list(fired) == [names.ALERT_ACCOUNT_AT_RISK]
    account = fired[names.ALERT_ACCOUNT_AT_RISK]
    assert account.labels == {"alertname": "SellerAccountAtRisk", "seller_id": "A1", "marketplace": "US",
                              "severity": "critical"}
    assert names.LABEL_WINDOW_DAYS not in account.labels
    assert set(account.annotations) == set(names.ANNOTATION_KEYS) | {names.ANNOTATION_ACCOUNT_STATUS} | set(LIMIT)
    assert account.annotations[names.ANNOTATION_ACCOUNT_STATUS] == status
    assert status in account.annotations["summary"]
    assert "WARNED" in account.annotations["description"]
    assert account.annotations["action"] == reconciliation.ACCOUNT_ACTION
    assert account.annotations["rate"] == "0.69%"


def test_both_alerts_carry_the_limit_in_force_a_sellers_target_included():
    comparison = reconciliation.compare(AMAZON, RangeCounts(4757, 31), True, POLICY)
    marketplace = alerts(comparison, "AT_RISK")
    assert {name: (alert.annotations["limit"], alert.annotations["limit_source"])
            for name, alert in marketplace.items()} == {
        names.ALERT_DRIFT: ("2.50%", "marketplace"), names.ALERT_ACCOUNT_AT_RISK: ("2.50%", "marketplace")}
    sfp = targets.Target("A1", "US", 50, 40, "Seller Fulfilled Prime")
    limit = targets.annotations(sfp, targets.apply_target(POLICY.windows("US"), sfp)[0])
    seller = alerts(comparison, "AT_RISK", limit=limit)
    for alert in seller.values():
        assert (alert.annotations["limit"], alert.annotations["limit_source"], alert.annotations["note"]) == \
            ("0.50%", "seller", "Seller Fulfilled Prime")


@pytest.mark.parametrize("status", ["NORMAL", None, "UNDER_REVIEW"])
def test_no_account_alert_for_other_statuses(status):
    assert alerts(reconciliation.compare(AMAZON, RangeCounts(4760, 33), True, POLICY), status) == {}


def test_both_alerts_fire_and_resolve_through_decide():
    drifting_report = reconciliation.compare(AMAZON, RangeCounts(4757, 31), True, POLICY)
    wanted = reconciliation.wanted_alerts("A1", "US", drifting_report, "AT_RISK", "", limit=LIMIT)
    first = alerting.decide({}, wanted, now=1000.0)
    assert sorted(alert.labels[names.LABEL_ALERTNAME] for alert in first.fire) == \
        [names.ALERT_ACCOUNT_AT_RISK, names.ALERT_DRIFT]
    converged = reconciliation.compare(AMAZON, RangeCounts(4759, 32), True, POLICY)   # late events landed
    later = alerting.decide(first.firing, reconciliation.wanted_alerts("A1", "US", converged, "NORMAL", "", limit=LIMIT),
                            now=2000.0)
    assert sorted(alert.labels[names.LABEL_ALERTNAME] for alert in later.resolve) == \
        [names.ALERT_ACCOUNT_AT_RISK, names.ALERT_DRIFT]
    assert later.firing == {}


def test_reconciliation_names_are_spelled_once():
    assert names.ACCOUNT_HEALTH_TOPIC == "account-health"
    assert names.RECONCILIATION_ALERTS == ("SellerCancelRateDrift", "SellerAccountAtRisk")
    assert names.ALERT_SEVERITY[names.ALERT_ACCOUNT_AT_RISK] == "critical"
    assert timedelta(seconds=POLICY.reconciliation_retention_seconds) == timedelta(days=33)


def test_docs_alerts_has_a_section_per_reconciliation_alert_naming_its_annotations():
    doc = (ROOT / "docs" / "alerts.md").read_text()
    for alertname in names.RECONCILIATION_ALERTS:
        assert f"\n### {alertname}\n" in doc, alertname
        assert f"| `{alertname}` | {names.ALERT_SEVERITY[alertname]} |" in doc, alertname
    for key in (*names.DRIFT_ANNOTATION_KEYS, names.ANNOTATION_ACCOUNT_STATUS):
        assert f"`{key}`" in doc, key
