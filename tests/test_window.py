"""Window arithmetic, headroom, what-if and forecast against brute force."""

from __future__ import annotations

from hypothesis import given, strategies as st

from streams import policy as policy_module, window
from streams.policy import Window

POLICY = policy_module.load("streams/policy.yaml")
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
