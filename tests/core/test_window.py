"""Window arithmetic, headroom, what-if and forecast against brute force."""

from __future__ import annotations

from hypothesis import given, strategies as st

from cancelwatch.core import policy as policy_module, window
from cancelwatch.core.policy import Window

POLICY = policy_module.load("streams/cancelwatch/core/policy.yaml")
US = POLICY.windows("US")[0]


class Totals:
    def __init__(self, orders: int, cancelled: int) -> None:
        self.orders, self.cancelled, self.reasons, self.causes = orders, cancelled, None, None


def brute_headroom(orders: int, cancelled: int, limit_bps: int):
    if orders == 0:
        return None
    k = 0
    while (cancelled + k + 1) * 10000 < limit_bps * orders:
        k += 1
    return k if cancelled * 10000 < limit_bps * orders else 0


@given(st.integers(0, 5000), st.integers(0, 200), st.sampled_from([200, 250, 1, 10000]))
def test_headroom_matches_brute_force(orders, cancelled, limit):
    cancelled = min(cancelled, orders)
    assert window.headroom(orders, cancelled, limit) == brute_headroom(orders, cancelled, limit)


def test_exactly_two_and_a_half_percent_is_a_breach():
    assert window.breached(40, 1, 250)
    assert not window.breached(41, 1, 250)
    assert window.headroom(40, 0, 250) == 0
    assert window.headroom(80, 1, 250) == 0
    assert window.headroom(81, 1, 250) == 1


@given(st.integers(0, 10**6), st.integers(1, 200), st.integers(-400, 400))
def test_window_membership_is_the_contract_formula(now, window_buckets, offset):
    bucket = now // 3600 + offset
    assert window.in_window(bucket, now // 3600, window_buckets) == (
        now // 3600 - window_buckets < bucket <= now // 3600)


def test_what_if_adds_cancels_of_orders_already_in_the_window():
    totals = window.totals({10: Totals(100, 1)}, US, POLICY, 10)
    assert totals.headroom == 1
    after = totals.with_more_cancels(2)
    assert (after.orders, after.cancelled, after.status) == (100, 3, "breach")
    assert totals.with_more_cancels(1000).cancelled == 100


def test_forecast_sees_clean_orders_ageing_out():
    now = 1000
    old_clean = now - 7 * 24 + 2          # leaves the window in 2 hours
    buckets = {old_clean: Totals(60, 0), now - 5: Totals(40, 2)}  # 2 / 100 = 2.0% now
    assert not window.totals(buckets, US, POLICY, now).breached
    projection = window.forecast_breach(buckets, US, POLICY, now)
    assert projection is not None and projection.hours_ahead <= 24


def test_no_forecast_for_a_steady_seller():
    now = 1000
    buckets = {now - h: Totals(10, 0) for h in range(0, 168)}
    buckets[now - 3] = Totals(10, 1)
    assert window.forecast_breach(buckets, US, POLICY, now) is None


def test_india_has_two_windows_at_two_percent():
    assert POLICY.windows("IN") == (Window(7, 200, 160), Window(30, 200, 160))
    assert POLICY.windows("DE") == (Window(7, 250, 200),)


class FullTotals:
    def __init__(self, orders: int, cancelled: int, reasons: dict | None, causes: dict | None) -> None:
        self.orders, self.cancelled, self.reasons, self.causes = orders, cancelled, reasons, causes


bucket_entries = st.one_of(
    st.integers(1, 50),      # a bucket of orders and nothing else
    st.builds(FullTotals, st.integers(0, 50), st.integers(0, 5),
              st.one_of(st.none(), st.dictionaries(st.sampled_from(["NoInventory", "Other"]), st.integers(1, 5),
                                                   min_size=1)),
              st.one_of(st.none(), st.dictionaries(st.sampled_from(["pending", "buyer_initiated"]),
                                                   st.integers(1, 5), min_size=1))),
)


@given(st.dictionaries(st.integers(1, 40), bucket_entries, max_size=30), st.integers(-5, 45), st.integers(-5, 45))
def test_the_entries_between_two_buckets_are_found_whichever_way_they_are_read(buckets, first, last):
    # read by bucket number when the range is shorter than the dict, else off the dict: the same entries
    expected = [buckets[bucket] for bucket in range(first, last + 1) if bucket in buckets]
    assert sorted(map(id, window.entries_between(buckets, first, last))) == sorted(map(id, expected))


@given(st.dictionaries(st.integers(800, 1300), bucket_entries, max_size=400), st.integers(900, 1200),
       st.sampled_from([US, POLICY.windows("IN")[1]]))
def test_totals_is_the_sum_over_the_windows_buckets(buckets, now_bucket, chosen):
    # Brute force: walk the window's buckets one by one, oldest to newest.
    size = chosen.days * 24
    orders = cancelled = 0
    reasons: dict = {}
    excluded: dict = {}
    for bucket in range(now_bucket - size + 1, now_bucket + 1):
        entry = buckets.get(bucket)
        if entry is None:
            continue
        if isinstance(entry, int):
            orders += entry
            continue
        orders += entry.orders
        cancelled += entry.cancelled
        for into, counts in ((reasons, entry.reasons), (excluded, entry.causes)):
            for key, count in (counts or {}).items():
                into[key] = into.get(key, 0) + count
    totals = window.totals(buckets, chosen, POLICY, now_bucket)
    assert (totals.orders, totals.cancelled, totals.reasons, totals.excluded) == (orders, cancelled, reasons, excluded)


@given(st.dictionaries(st.integers(700, 1230), bucket_entries, max_size=300), st.integers(1000, 1200),
       st.sampled_from([US, POLICY.windows("IN")[1]]), st.booleans())
def test_the_forecast_is_the_docstrings_projection_whatever_the_seller_keeps(buckets, now_bucket, chosen, given_totals):
    # Brute force from the docstring: at s buckets ahead, what is still in the window then,
    # plus s/P of the window's last P buckets; the first s of the horizon that breaches.
    size, pace = POLICY.window_buckets(chosen), POLICY.forecast_pace_hours
    counts = {b: (e, 0) if isinstance(e, int) else (e.orders, e.cancelled) for b, e in buckets.items()
              if now_bucket - size < b <= now_bucket}
    orders_now, cancelled_now = sum(o for o, _ in counts.values()), sum(c for _, c in counts.values())
    pace_orders = sum(o for b, (o, _) in counts.items() if b > now_bucket - pace)
    pace_cancelled = sum(c for b, (_, c) in counts.items() if b > now_bucket - pace)
    expected = None
    if orders_now and not window.breached(orders_now, cancelled_now, chosen.limit_bps):
        for step in range(1, POLICY.forecast_horizon_hours + 1):
            kept = [oc for b, oc in counts.items() if b > now_bucket + step - size]
            orders = sum(o for o, _ in kept) * pace + pace_orders * step
            cancelled = sum(c for _, c in kept) * pace + pace_cancelled * step
            if orders > 0 and cancelled * 10000 >= chosen.limit_bps * orders:
                expected = (step, orders / pace, cancelled / pace)
                break
    current = window.totals(buckets, chosen, POLICY, now_bucket) if given_totals else None
    projection = window.forecast_breach(buckets, chosen, POLICY, now_bucket, current)
    assert (None if projection is None else
            (projection.hours_ahead, projection.orders, projection.cancelled)) == expected


def test_totals_of_a_hand_made_window():
    # 7 days = 168 buckets: 832 .. 999 are in at bucket 999; 831 has just left, 1000 is ahead
    buckets = {831: 100, 832: 5, 900: FullTotals(10, 2, {"NoInventory": 2}, {"pending": 1}), 999: 3, 1000: 7}
    totals = window.totals(buckets, US, POLICY, 999)
    assert (totals.orders, totals.cancelled, totals.reasons, totals.excluded) == (
        18, 2, {"NoInventory": 2}, {"pending": 1})


def seller(orders: int, cancelled: int, limit_bps: int = 250, warning_bps: int = 200, days: int = 7) -> dict:
    return {"orders": orders, "cancelled": cancelled, "limit": limit_bps / 10000,
            "warning_level": warning_bps / 10000, "days": days}


def test_at_risk_ranks_breach_then_warning_then_share_of_the_limit_then_headroom():
    views = {
        "breach-low-share": [seller(40, 1)],                    # 2.5%: breached at 1.0 of the limit
        "breach-high-share": [seller(10, 5)],                   # 50%: breached, 20 times the limit
        "warning-target": [seller(1000, 6, 100, 50)],           # 0.6% against a 1% target: warning
        "ok-high-share": [seller(1000, 19)],                    # 1.9% of 2.5%: 0.76 of the limit
        "ok-same-share-more-room": [seller(2000, 38)],          # 0.76 too, more headroom
        "ok-low-share": [seller(1000, 1)],
        "india-30-days": [seller(1000, 1, 200, 160), seller(1000, 15, 200, 160, 30)],   # 0.75 over 30 days
        "no-cancel": [seller(10, 0)],
    }
    ranked = sorted(({"seller_id": name, "windows": windows} for name, windows in views.items()),
                    key=window.risk_key_of_json)
    assert [view["seller_id"] for view in ranked] == [
        "breach-high-share", "breach-low-share", "warning-target", "ok-high-share",
        "ok-same-share-more-room", "india-30-days", "ok-low-share", "no-cancel"]


def test_equal_shares_of_different_limits_tie_and_headroom_decides():
    # 3 of 1000 against a 0.5% target and 15 of 1000 against 2.5%: both at 0.6 of their limit
    target = window.risk_key([(1000, 3, 50, 40)])
    marketplace = window.risk_key([(1000, 15, 250, 200)])
    assert target[:2] == marketplace[:2]
    assert (target[2], marketplace[2]) == (1, 9)
    assert target < marketplace


def test_the_key_of_totals_and_of_json_agree():
    totals = [window.totals({10: Totals(100, 2)}, US, POLICY, 10)]
    view = window.seller_json("S1", "US", totals, 0.0)
    assert window.risk_key_of_json(view) == window.risk_key_of_totals(totals) + ("S1",)


def test_a_seller_without_seller_fault_cancels_is_not_at_risk():
    quiet = window.seller_windows({10: Totals(3, 0)}, "IN", POLICY, 10)
    assert not window.at_risk(quiet)
    assert window.at_risk(window.seller_windows({10: Totals(3, 0), 10 - 24 * 20: Totals(1, 1)}, "IN", POLICY, 10))
