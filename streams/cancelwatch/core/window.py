"""Rolling windows by purchase bucket: totals, headroom, status, what-if, forecast.

Contract section 5: with bucket length B and window W, an order with
purchase time t is in the window at `now` when
floor(now/B) - W/B < floor(t/B) <= floor(now/B). Every comparison against a
limit is done in integers (basis points). Pure: values in, values out.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from datetime import datetime, timezone
from fractions import Fraction
from typing import Iterable, Mapping, Protocol

from cancelwatch import names
from cancelwatch.core.policy import Policy, Window


class BucketTotalsLike(Protocol):
    """A bucket's totals; a plain int stands for a bucket of `int` orders and nothing else."""

    orders: int
    cancelled: int
    reasons: dict[str, int] | None
    causes: dict[str, int] | None


def bucket_of(epoch_seconds: float, bucket_seconds: int) -> int:
    return int(epoch_seconds // bucket_seconds)


def in_window(bucket: int, now_bucket: int, window_buckets: int) -> bool:
    return now_bucket - window_buckets < bucket <= now_bucket


def entries_between(buckets: Mapping[int, BucketTotalsLike], first: int, last: int) -> Iterable[BucketTotalsLike]:
    """The totals of the seller's buckets first..last (inclusive). Looked up by bucket number
    when the range is under two thirds of the seller's dict (a seller keeps the retention's
    33 days of hours; a 7-day window is 168 of them), else read off the dict (a lookup costs
    about 1.4 times a step through the dict)."""
    if 3 * (last - first + 1) < 2 * len(buckets):
        return filter(None, map(buckets.get, range(first, last + 1)))   # totals are never falsy
    return [entry for bucket, entry in buckets.items() if first <= bucket <= last]


def order_counts(entry: BucketTotalsLike) -> tuple[int, int]:
    """(orders, seller-fault cancelled) of a bucket's totals."""
    return (entry, 0) if type(entry) is int else (entry.orders, entry.cancelled)


def headroom(orders: int, cancelled: int, limit_bps: int) -> int | None:
    """Largest k >= 0 with (cancelled + k) * 10000 < limit_bps * orders; None without orders."""
    if orders == 0:
        return None
    return max(0, (limit_bps * orders - 1) // 10000 - cancelled)


def breached(orders: int, cancelled: int, limit_bps: int) -> bool:
    return orders > 0 and cancelled * 10000 >= limit_bps * orders


def at_warning_level(orders: int, cancelled: int, warning_bps: int) -> bool:
    return orders > 0 and cancelled * 10000 >= warning_bps * orders


@dataclasses.dataclass(frozen=True)
class WindowTotals:
    window: Window
    orders: int
    cancelled: int
    reasons: Mapping[str, int]
    excluded: Mapping[str, int]

    @property
    def breached(self) -> bool:
        return breached(self.orders, self.cancelled, self.window.limit_bps)

    @property
    def warning(self) -> bool:
        return at_warning_level(self.orders, self.cancelled, self.window.warning_bps)

    @property
    def headroom(self) -> int | None:
        return headroom(self.orders, self.cancelled, self.window.limit_bps)

    @property
    def status(self) -> str:
        if self.breached:
            return names.STATUS_BREACH
        if self.warning:
            return names.STATUS_WARNING
        return names.STATUS_OK

    @property
    def rate(self) -> float | None:
        return round(self.cancelled / self.orders, 5) if self.orders else None

    def dominant_reason(self) -> str | None:
        """The reason attributed to the most counted orders (ties: alphabetical)."""
        if not self.reasons:
            return None
        return min(self.reasons.items(), key=lambda item: (-item[1], item[0]))[0]

    def with_more_cancels(self, extra: int) -> "WindowTotals":
        """What-if: `extra` more seller-fault cancels of orders already in the window
        (capped at the window's uncancelled orders)."""
        cancelled = min(self.orders, self.cancelled + extra)
        return dataclasses.replace(self, cancelled=cancelled)

    def as_json(self) -> dict:
        return {
            "days": self.window.days,
            "orders": self.orders,
            "cancelled": self.cancelled,
            "rate": self.rate,
            "limit": self.window.limit_bps / 10000,
            "warning_level": self.window.warning_bps / 10000,
            "headroom": self.headroom,
            "status": self.status,
        }


def totals(buckets: Mapping[int, BucketTotalsLike], window: Window, policy: Policy,
           now_bucket: int) -> WindowTotals:
    window_buckets = policy.window_buckets(window)
    orders = cancelled = 0
    reasons: Counter[str] = Counter()
    excluded: Counter[str] = Counter()
    for entry in entries_between(buckets, now_bucket - window_buckets + 1, now_bucket):
        if type(entry) is int:  # a bucket of orders without any cancel: just its count
            orders += entry
            continue
        orders += entry.orders
        cancelled += entry.cancelled
        if entry.reasons:
            reasons.update(entry.reasons)
        if entry.causes:
            excluded.update(entry.causes)
    return WindowTotals(window, orders, cancelled, dict(reasons), dict(excluded))


def seller_windows(buckets: Mapping[int, BucketTotalsLike], marketplace: str, policy: Policy,
                   now_bucket: int) -> list[WindowTotals]:
    return [totals(buckets, window, policy, now_bucket) for window in policy.windows(marketplace)]


def format_time(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def seller_json(seller_id: str, marketplace: str, windows: list[WindowTotals], now: float) -> dict:
    """The contract's seller shape. `reasons` and `excluded` are those of the first
    (shortest) window of the marketplace."""
    first = windows[0]
    return {
        "seller_id": seller_id,
        "marketplace": marketplace,
        "as_of": format_time(now),
        "windows": [window.as_json() for window in windows],
        "reasons": dict(sorted(first.reasons.items())),
        "excluded": dict(sorted(first.excluded.items())),
    }


def at_risk(windows: Iterable[WindowTotals]) -> bool:
    """A seller is at risk only with a seller-fault cancel in some window (contract section 8):
    however few its orders, one without any is not listed."""
    return any(w.cancelled for w in windows)


def risk_key(windows: Iterable[tuple[int, ...]]) -> tuple:
    """Sort key of a seller (lowest first) from its windows' (orders, cancelled, limit_bps,
    warning_bps): breached first, then at the warning level, then by rate as a share of the
    limit (highest first, compared exactly: cancelled * 10000 / (limit_bps * orders) as a
    Fraction), then least headroom. One ranking for the at-risk API, its merge across workers
    and the top-K of /metrics. Without warning_bps (three numbers) the warning level is not
    known and the share of the limit ranks alone after breaches."""
    is_breached = is_warning = False
    share = Fraction(0)
    least: float = math.inf
    for orders, cancelled, limit_bps, *warning_bps in windows:
        if not orders:
            continue
        is_breached = is_breached or breached(orders, cancelled, limit_bps)
        is_warning = is_warning or bool(warning_bps) and at_warning_level(orders, cancelled, warning_bps[0])
        if cancelled:
            share = max(share, Fraction(cancelled * 10000, limit_bps * orders))
        least = min(least, headroom(orders, cancelled, limit_bps))
    status = 0 if is_breached else 1 if is_warning else 2
    return (status, -share, least)


def risk_key_of_totals(windows: Iterable[WindowTotals]) -> tuple:
    return risk_key((w.orders, w.cancelled, w.window.limit_bps, w.window.warning_bps) for w in windows)


def risk_key_of_json(view: dict) -> tuple:
    """`risk_key` of a seller in its JSON shape, then its seller id (to merge rankings from
    several workers)."""
    return risk_key((w["orders"], w["cancelled"], round(w["limit"] * 10000), round(w["warning_level"] * 10000))
                    for w in view["windows"]) + (view["seller_id"],)


@dataclasses.dataclass(frozen=True)
class Forecast:
    hours_ahead: int
    orders: float
    cancelled: float


def forecast_breach(buckets: Mapping[int, BucketTotalsLike], window: Window, policy: Policy,
                    now_bucket: int, current: WindowTotals | None = None) -> Forecast | None:
    """The first bucket step within the horizon at which the window is projected to breach.

    Projection at s buckets ahead: the orders and cancels already in the window that
    are still in it then (older buckets age out), plus s/P of the orders and cancels
    placed in the last P buckets (the recent pace). Exact in integers:
    (C_rem * P + c_pace * s) * 10000 >= limit * (O_rem * P + o_pace * s).
    None when not projected to breach (or when already breached now). `current`: the
    window's totals now, when the caller has them. Reads the buckets of the pace and of
    the horizon's oldest hours by number, whatever else the seller keeps.
    """
    window_buckets = policy.window_buckets(window)
    pace_buckets = policy.forecast_pace_hours * 3600 // policy.bucket_seconds
    horizon_buckets = policy.forecast_horizon_hours * 3600 // policy.bucket_seconds
    if current is None:
        current = totals(buckets, window, policy, now_bucket)
    orders_now, cancelled_now = current.orders, current.cancelled
    limit = window.limit_bps
    if not (orders_now or cancelled_now) or breached(orders_now, cancelled_now, limit):
        return None
    first = now_bucket - window_buckets + 1       # the window's oldest bucket
    pace_orders = pace_cancelled = 0
    for entry in entries_between(buckets, max(first, now_bucket - pace_buckets + 1), now_bucket):
        orders, cancelled = order_counts(entry)
        pace_orders += orders
        pace_cancelled += cancelled
    remaining_orders, remaining_cancelled = orders_now, cancelled_now
    get = buckets.get
    for step in range(1, horizon_buckets + 1):
        leaving = first + step - 1                # ages out of the window at this step
        entry = get(leaving) if leaving <= now_bucket else None
        if entry is not None:
            orders, cancelled = order_counts(entry)
            remaining_orders -= orders
            remaining_cancelled -= cancelled
        projected_orders = remaining_orders * pace_buckets + pace_orders * step
        projected_cancelled = remaining_cancelled * pace_buckets + pace_cancelled * step
        if projected_orders > 0 and projected_cancelled * 10000 >= limit * projected_orders:
            hours = step * policy.bucket_seconds // 3600
            return Forecast(max(hours, 1), projected_orders / pace_buckets,
                            projected_cancelled / pace_buckets)
    return None
