"""Amazon's account-health report against cancelwatch's own counts (contract section 11).

For one seller and marketplace, Amazon's preFulfillmentCancellationRate
(cancelwatch.core.account_health.CancellationRate) is compared with the orders and
seller-fault cancelled orders cancelwatch holds in the purchase buckets of the
report's range: `floor(from/B) <= b <= floor(to/B)`. The worker computes the
counts (`bucket_range`, `range_counts`) and whether it still holds every
bucket of the range (`is_complete`); `compare` decides whether the comparison
is drifting under the policy's `reconciliation` settings, `Comparison.as_json`
is the reconciliation endpoint's answer, and `wanted_alerts` the alerts the
report warrants (`SellerCancelRateDrift`, `SellerAccountAtRisk`), as
alerting.Wanted for alerting.decide(). Pure: no Kafka, no clock, no HTTP.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Mapping

from cancelwatch import names

from cancelwatch.core import account_health, window
from cancelwatch.core.account_health import CancellationRate
from cancelwatch.core.alerting import AlertKey, Wanted, _percent
from cancelwatch.core.policy import Policy, Reconciliation

# Where to look, by the direction of the drift: cancelwatch counts fewer than Amazon, or more.
DRIFT_ACTIONS = {
    "fewer": "cancelwatch counts fewer than Amazon: look for an order source that does not publish "
             "(an integration or poller that stopped, a marketplace or sales channel never connected, "
             "events in the dead-letter topic, MFN orders sent as AFN). Until it is fixed the seller's "
             "rate and alerts understate the risk.",
    "more": "cancelwatch counts more than Amazon: look for an order source that publishes twice (two "
            "integrations for one account, one order published under two order ids) or cancellations "
            "Amazon does not count (a buyer's request sent with buyer_requested false). Until it is "
            "fixed the seller's rate and alerts overstate the risk.",
}
ACCOUNT_ACTION = ("Open Account Health in Seller Central for this marketplace: find the metric or policy "
                  "violation behind the status, fix its cause and send Amazon a plan of action (an appeal "
                  "when the account is deactivated or suspended).")
ACCOUNT_MEANING = {
    "AT_RISK": "Amazon flags the account as at risk of deactivation in this marketplace.",
    "DEACTIVATED": "Amazon has deactivated the account in this marketplace: the seller cannot sell there.",
    "SUSPENDED": "Amazon has suspended the account in this marketplace: the seller cannot sell there.",
}


@dataclasses.dataclass(frozen=True)
class RangeCounts:
    """cancelwatch's orders and seller-fault cancelled orders over a report's range."""

    orders: int
    cancelled: int


def bucket_range(from_ts: float, to_ts: float, bucket_seconds: int) -> tuple[int, int]:
    """The first and last purchase bucket of a report's range: floor(from/B) <= b <= floor(to/B)."""
    if from_ts > to_ts:
        raise ValueError(f"a range from {from_ts} to {to_ts} ends before it starts")
    return window.bucket_of(from_ts, bucket_seconds), window.bucket_of(to_ts, bucket_seconds)


def range_counts(buckets: Mapping[int, window.BucketTotalsLike], first_bucket: int,
                 last_bucket: int) -> RangeCounts:
    """Orders and seller-fault cancelled orders of the buckets first_bucket..last_bucket (inclusive)."""
    orders = cancelled = 0
    for entry in window.entries_between(buckets, first_bucket, last_bucket):
        bucket_orders, bucket_cancelled = window.order_counts(entry)
        orders += bucket_orders
        cancelled += bucket_cancelled
    return RangeCounts(orders, cancelled)


def is_complete(first_bucket: int, now: float, retention_seconds: int, bucket_seconds: int) -> bool:
    """No bucket of a range starting at `first_bucket` has been expired yet: the worker keeps the
    buckets from floor((now - retention_seconds) / B) on (state.expire)."""
    return first_bucket >= window.bucket_of(int(now) - retention_seconds, bucket_seconds)


def _orders_beyond(drift: int, amazon_orders: int, settings: Reconciliation) -> bool:
    """|drift| > max(max_orders_drift, max_orders_drift_bps of amazon_orders), in integers."""
    return abs(drift) > settings.max_orders_drift \
        and abs(drift) * 10000 > settings.max_orders_drift_bps * amazon_orders


def _directions(amazon: CancellationRate, counts: RangeCounts, settings: Reconciliation) -> tuple[str, ...]:
    """Which way the drifts beyond tolerance go: "fewer" and/or "more" (the cancels' first)."""
    found = []
    cancelled_drift = counts.cancelled - amazon.cancellation_count
    if abs(cancelled_drift) > settings.max_cancelled_drift:
        found.append("fewer" if cancelled_drift < 0 else "more")
    orders_drift = counts.orders - amazon.order_count
    if _orders_beyond(orders_drift, amazon.order_count, settings):
        found.append("fewer" if orders_drift < 0 else "more")
    return tuple(dict.fromkeys(found))


@dataclasses.dataclass(frozen=True)
class Comparison:
    amazon: CancellationRate
    counts: RangeCounts
    complete: bool                # the worker holds every bucket of the range
    drifting: bool                # complete, and a drift beyond the policy's tolerance
    directions: tuple[str, ...]   # "fewer" and/or "more": the drifts beyond tolerance (even if incomplete)

    @property
    def orders_drift(self) -> int:
        """cancelwatch - Amazon."""
        return self.counts.orders - self.amazon.order_count

    @property
    def cancelled_drift(self) -> int:
        """cancelwatch - Amazon."""
        return self.counts.cancelled - self.amazon.cancellation_count

    @property
    def rate(self) -> float | None:
        """cancelwatch's rate over the range, rounded to 5 decimals; None without orders."""
        return round(self.counts.cancelled / self.counts.orders, 5) if self.counts.orders else None

    @property
    def range_days(self) -> int:
        """The range's length in whole days (00:00 to 23:59 of 7 days is 7)."""
        return max(1, round((self.amazon.reporting_to - self.amazon.reporting_from) / 86400))

    def as_json(self, seller_id: str, marketplace: str, fetched_at: datetime | float,
                account_status: str | None) -> dict:
        """The answer of GET /sellers/{seller_id}/reconciliation (contract section 11)."""
        fetched = fetched_at.timestamp() if isinstance(fetched_at, datetime) else fetched_at
        amazon = self.amazon
        return {
            "seller_id": seller_id,
            "marketplace": marketplace,
            "fetched_at": window.format_time(fetched),
            "account_status": account_status,
            "range": {"from": window.format_time(amazon.reporting_from),
                      "to": window.format_time(amazon.reporting_to)},
            "amazon": {"orders": amazon.order_count, "cancelled": amazon.cancellation_count,
                       "rate": amazon.rate, "status": amazon.status},
            "cancelwatch": {"orders": self.counts.orders, "cancelled": self.counts.cancelled,
                            "rate": self.rate},
            "drift": {"orders": self.orders_drift, "cancelled": self.cancelled_drift},
            "complete": self.complete,
            "drifting": self.drifting,
        }


def compare(report_entry: CancellationRate, counts: RangeCounts, complete: bool, policy: Policy) -> Comparison:
    """Amazon's entry against cancelwatch's counts over the same range. Drifting when complete and
    |drift.cancelled| > max_cancelled_drift, or |drift.orders| > max(max_orders_drift,
    max_orders_drift_bps of Amazon's orderCount); an incomplete comparison never drifts."""
    directions = _directions(report_entry, counts, policy.reconciliation)
    return Comparison(report_entry, counts, complete, complete and bool(directions), directions)


def wanted_alerts(seller_id: str, marketplace: str, comparison: Comparison, account_status: str | None,
                  dashboard_url: str, *, limit: Mapping[str, str],
                  health_rating: str | None = None) -> dict[AlertKey, Wanted]:
    """The alerts the seller's latest report for the marketplace warrants: SellerCancelRateDrift
    while the comparison is drifting, SellerAccountAtRisk while the account status is AT_RISK,
    DEACTIVATED (or SUSPENDED). Keyed by label set, like alerting.desired(). `limit`: the
    annotations of the limit in force (`targets.annotations`), which every alert carries
    (contract section 10). `health_rating` (MarketplaceHealth.health_rating) is quoted in the
    account alert's description."""
    wanted = []
    amazon = comparison.amazon
    who = f"seller {seller_id} in {marketplace}"
    span = f"{window.format_time(amazon.reporting_from)} to {window.format_time(amazon.reporting_to)}"
    amazon_counts = (f"{amazon.cancellation_count} seller-fault cancels of {amazon.order_count} orders "
                     f"({_percent(amazon.rate)}, status {amazon.status})")
    if comparison.drifting:
        days = comparison.range_days
        drift = f"{comparison.cancelled_drift:+d} seller-fault cancels, {comparison.orders_drift:+d} orders"
        wanted.append(Wanted(
            _labels(names.ALERT_DRIFT, seller_id, marketplace, **{names.LABEL_WINDOW_DAYS: str(days)}),
            {
                "summary": f"{who}: cancelwatch's counts drift from Amazon's account-health report "
                           f"({drift} over {days} days)",
                "description": f"Amazon's report for {span} counts {amazon_counts}; cancelwatch counts "
                               f"{comparison.counts.cancelled} of {comparison.counts.orders} orders "
                               f"({_percent(comparison.rate)}) purchased in the same range: {drift}.",
                "rate": _percent(comparison.rate),
                "headroom": "n/a",
                "dominant_reason": "none",
                "action": " ".join(DRIFT_ACTIONS[direction] for direction in comparison.directions),
                "dashboard": dashboard_url,
                "amazon_rate": _percent(amazon.rate),
                "cancelwatch_rate": _percent(comparison.rate),
                "amazon_cancelled": str(amazon.cancellation_count),
                "cancelwatch_cancelled": str(comparison.counts.cancelled),
                "amazon_orders": str(amazon.order_count),
                "cancelwatch_orders": str(comparison.counts.orders),
                **limit,
            }))
    if account_health.at_risk(account_status):
        rating = f" Account Health Rating: {health_rating}." if health_rating else ""
        wanted.append(Wanted(
            _labels(names.ALERT_ACCOUNT_AT_RISK, seller_id, marketplace),
            {
                "summary": f"{who}: the account is {account_status} in Amazon's account-health report",
                "description": f"{ACCOUNT_MEANING[account_status]} Amazon's cancellation rate for {span}: "
                               f"{amazon_counts}.{rating}",
                "rate": _percent(amazon.rate),
                "headroom": "n/a",
                "dominant_reason": "none",
                "action": ACCOUNT_ACTION,
                "dashboard": dashboard_url,
                names.ANNOTATION_ACCOUNT_STATUS: account_status,
                **limit,
            }))
    return {alert.key: alert for alert in wanted}


def _labels(alertname: str, seller_id: str, marketplace: str, **extra: str) -> dict[str, str]:
    return {
        names.LABEL_ALERTNAME: alertname,
        names.LABEL_SELLER: seller_id,
        names.LABEL_MARKETPLACE: marketplace,
        names.LABEL_SEVERITY: names.ALERT_SEVERITY[alertname],
        **extra,
    }
