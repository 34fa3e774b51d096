"""Which alerts a seller should have firing now, with their labels and annotations.

Contract section 9. `desired(state, policy, now, dashboard_url)` returns the
alerts that should be firing for one seller in one marketplace, keyed by
their label set; the worker diffs that against what it has sent and fires or
resolves the difference. Pure: no clock, no HTTP.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from cancelwatch import names

from cancelwatch.core import targets, window
from cancelwatch.core.policy import Policy
from cancelwatch.core.state import SellerState

AlertKey = frozenset  # frozenset of (label, value) pairs


@dataclasses.dataclass(frozen=True)
class Wanted:
    labels: Mapping[str, str]
    annotations: Mapping[str, str]

    @property
    def key(self) -> AlertKey:
        return frozenset(self.labels.items())


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


def _labels(alertname: str, state: SellerState, days: int, **extra: str) -> dict[str, str]:
    labels = {
        names.LABEL_ALERTNAME: alertname,
        names.LABEL_SELLER: state.seller_id,
        names.LABEL_MARKETPLACE: state.marketplace,
        names.LABEL_SEVERITY: names.ALERT_SEVERITY[alertname],
        names.LABEL_WINDOW_DAYS: str(days),
    }
    labels.update(extra)
    return labels


def action_for(reason: str | None) -> str:
    group = names.REASON_GROUP_OF.get(reason or "Other", "other")
    return names.GROUP_ACTIONS[group]


def _annotations(summary: str, description: str, totals: window.WindowTotals,
                 reason: str | None, dashboard_url: str) -> dict[str, str]:
    headroom = totals.headroom
    return {
        "summary": summary,
        "description": description,
        "rate": _percent(totals.rate),
        "headroom": "n/a" if headroom is None else str(headroom),
        "dominant_reason": reason or "none",
        "action": action_for(reason),
        "dashboard": dashboard_url,
    }


def desired(state: SellerState, policy: Policy, now: float, dashboard_url: str,
            target: targets.Target | None = None, windows: list[window.WindowTotals] | None = None,
            projections: list[window.Forecast | None] | None = None) -> dict[AlertKey, Wanted]:
    """The seller's alerts under the limits in force: the marketplace's, or the seller's own
    `target` (contract section 10), whose limit, source and note every alert carries.
    `windows` and their `projections` (`window.forecast_breach` of each), when the caller has
    them already for this `now` and target, are used instead of being computed again."""
    now_bucket = window.bucket_of(now, policy.bucket_seconds)
    if windows is None:
        windows = [window.totals(state.buckets, limits, policy, now_bucket)
                   for limits in targets.apply_target(policy.windows(state.marketplace), target)]
    any_breached = any(w.breached for w in windows)
    who = f"seller {state.seller_id} in {state.marketplace}"
    wanted: list[Wanted] = []
    for index, totals in enumerate(windows):
        days = totals.window.days
        limit = _percent(totals.window.limit_bps / 10000)
        reason = totals.dominant_reason()
        counts = f"{totals.cancelled} of {totals.orders} orders"
        because = f" Most seller-fault cancels are {reason}." if reason else ""

        def add(alertname: str, summary: str, description: str) -> None:
            wanted.append(Wanted(_labels(alertname, state, days),
                                 {**_annotations(summary, description + because, totals, reason, dashboard_url),
                                  **targets.annotations(target, totals.window)}))

        if totals.breached:
            add(names.ALERT_BREACHED,
                f"{who} is at {_percent(totals.rate)} over {days} days, at or above the {limit} limit",
                f"{counts} in the {days}-day window were seller-fault cancelled; Amazon may "
                f"deactivate the seller's self-fulfilled offers.")
            continue
        if any_breached:
            continue
        if totals.warning:
            add(names.ALERT_WARNING,
                f"{who} is at {_percent(totals.rate)} over {days} days, past the "
                f"{_percent(totals.window.warning_bps / 10000)} warning level",
                f"{counts} in the {days}-day window were seller-fault cancelled; the limit is {limit}.")
        if totals.cancelled >= 1 and totals.headroom is not None and totals.headroom <= policy.headroom_low:
            more = "one more seller-fault cancel breaches" if totals.headroom == 0 else \
                f"{totals.headroom + 1} more seller-fault cancels breach"
            add(names.ALERT_HEADROOM_LOW,
                f"{who}: {more} the {limit} limit over {days} days",
                f"{counts} in the {days}-day window were seller-fault cancelled; headroom is "
                f"{totals.headroom}.")
        projection = (window.forecast_breach(state.buckets, totals.window, policy, now_bucket, totals)
                      if projections is None else projections[index])
        if projection is not None:
            add(names.ALERT_FORECAST_BREACH,
                f"{who} is projected to reach the {limit} limit over {days} days within "
                f"{projection.hours_ahead} h",
                f"Now {counts}. As older orders leave the window and at the pace of the last "
                f"{policy.forecast_pace_hours} h, about {projection.cancelled:.1f} of "
                f"{projection.orders:.1f} orders would be seller-fault cancelled in "
                f"{projection.hours_ahead} h.")
    wanted.extend(_listing(state, policy, now, dashboard_url, windows[0], target))
    return {alert.key: alert for alert in wanted}


def _listing(state: SellerState, policy: Policy, now: float, dashboard_url: str,
             first: window.WindowTotals, target: targets.Target | None) -> list[Wanted]:
    if not state.faulted or state.marketplace not in policy.listing_marketplaces:
        return []
    depth = policy.listing_consecutive
    days = policy.listing_order_window_days
    now_bucket = window.bucket_of(now, policy.bucket_seconds)
    window_buckets = days * 86400 // policy.bucket_seconds
    found = []
    for sku in sorted(state.faulted):      # full lists of seller-fault orders only
        latest = state.listing[sku]
        if len(latest) < depth:
            continue
        if all(entry[2] and window.in_window(window.bucket_of(entry[0], policy.bucket_seconds),
                                             now_bucket, window_buckets) for entry in latest):
            orders = ", ".join(entry[1] for entry in latest)
            reason = first.dominant_reason()
            found.append(Wanted(
                _labels(names.ALERT_LISTING, state, days, **{names.LABEL_SKU: sku}),
                {**_annotations(
                    f"seller {state.seller_id} in {state.marketplace}: the last {depth} orders of "
                    f"sku {sku} were seller-fault cancelled",
                    f"Orders {orders} (placed in the last {days} days) were all cancelled by the "
                    f"seller; Amazon may remove the offer after consecutive seller cancellations.",
                    first, reason, dashboard_url),
                 **targets.annotations(target, first.window)}))
    return found


# --- what to send: a pure function of (previous alerts, wanted alerts) ------------------


@dataclasses.dataclass(frozen=True)
class Firing:
    """An alert this worker has fired and not resolved: enough to resolve it, or fire it again."""

    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: float           # epoch seconds

    @property
    def key(self) -> AlertKey:
        return frozenset(self.labels.items())


@dataclasses.dataclass(frozen=True)
class Decision:
    firing: dict           # AlertKey -> Firing: what is firing after the decision
    fire: list             # Firing: new or changed, to send now
    resolve: list          # Firing: to resolve now
    changed: bool          # the set of firing alerts changed (persist it before sending)


def decide(previous: Mapping[AlertKey, Firing], wanted: Mapping[AlertKey, Wanted], now: float,
           hold: bool = False) -> Decision:
    """What to fire, resolve or keep, from the alerts firing before and those wanted now.

    A wanted alert keeps the start of its previous firing; one not wanted any more is
    resolved. `hold` (the seller's partition is catching up on a backlog, so `wanted`
    comes from partial counts): nothing is sent at all; what fired before stays as it was
    (the sender keeps re-sending what it sent), and the caught-up state decides later."""
    if hold:
        return Decision(dict(previous), [], [], False)
    firing: dict[AlertKey, Firing] = {}
    fire: list[Firing] = []
    resolve: list[Firing] = []
    for key, want in wanted.items():
        before = previous.get(key)
        alert = Firing(want.labels, want.annotations, before.starts_at if before is not None else now)
        firing[key] = alert
        if alert != before:
            fire.append(alert)
    for key, before in previous.items():
        if key not in wanted:
            resolve.append(before)
    return Decision(firing, fire, resolve, firing.keys() != previous.keys())


def firing_identity(firing: Mapping[AlertKey, Firing]) -> list[list]:
    """The durable form of a seller's firing set: [alertname, window_days, sku, starts_at,
    annotations] each, so a new owner can keep the alerts alive exactly as they were sent."""
    return sorted([alert.labels[names.LABEL_ALERTNAME], alert.labels.get(names.LABEL_WINDOW_DAYS, ""),
                   alert.labels.get(names.LABEL_SKU, ""), alert.starts_at, dict(alert.annotations)]
                  for alert in firing.values())


def firing_from_identity(seller_id: str, marketplace: str, identity: list) -> dict[AlertKey, Firing]:
    """The firing set back from its durable form."""
    firing = {}
    for alertname, days, sku, starts_at, annotations in identity:
        labels = {
            names.LABEL_ALERTNAME: alertname,
            names.LABEL_SELLER: seller_id,
            names.LABEL_MARKETPLACE: marketplace,
            names.LABEL_SEVERITY: names.ALERT_SEVERITY[alertname],
        }
        if days:
            labels[names.LABEL_WINDOW_DAYS] = days      # absent on SellerAccountAtRisk
        if sku:
            labels[names.LABEL_SKU] = sku
        alert = Firing(labels, dict(annotations), float(starts_at))
        firing[alert.key] = alert
    return firing
