"""The at-risk ranking (contract section 8), on the pure core: breached, then warning,
then rate as a share of the limit in force, then least headroom; no seller-fault cancel,
not at risk."""

from __future__ import annotations

from pathlib import Path

from cancelwatch.core import policy as policy_module, window

POLICY = policy_module.load(Path(__file__).resolve().parents[2] / "streams" / "cancelwatch" / "core" / "policy.yaml")


def ranked(sellers: dict[str, list[tuple[int, int, int]]]) -> list[str]:
    return sorted(sellers, key=lambda seller: window.risk_key(sellers[seller]) + (seller,))


def test_breached_first_then_warning_then_share_of_the_limit():
    sellers = {
        "ok-small": [(1000, 5, 250)],            # 0.5%: 20% of the limit
        "warning": [(1000, 21, 250)],            # 2.1%: 84%
        "breached": [(100, 3, 250)],             # 3%
        "india": [(1000, 19, 200)],              # 1.9% of a 2.0% limit: 95%, above the US warning seller
    }
    assert ranked(sellers) == ["breached", "india", "warning", "ok-small"]


def test_a_small_seller_at_headroom_0_without_much_rate_does_not_outrank_a_high_rate():
    sellers = {
        "tiny": [(10, 0, 250)],                  # headroom 0, rate 0
        "drifting": [(2874, 80, 250)],           # 2.78%: breached
        "climbing": [(2874, 70, 250)],           # 2.44%
    }
    assert ranked(sellers) == ["drifting", "climbing", "tiny"]


def test_equal_shares_rank_by_least_headroom_then_seller():
    sellers = {"b": [(200, 2, 250)], "a": [(100, 1, 250)]}
    assert ranked(sellers) == ["a", "b"]      # same 1%; a has less headroom (1 vs 2)


def test_any_window_counts_and_a_seller_without_seller_fault_cancels_is_not_at_risk():
    seven, thirty = POLICY.windows("IN")
    quiet = [window.WindowTotals(w, 50, 0, {}, {}) for w in (seven, thirty)]
    faulted = [window.WindowTotals(seven, 50, 0, {}, {}), window.WindowTotals(thirty, 500, 1, {}, {})]
    assert not window.at_risk(quiet)
    assert window.at_risk(faulted)


def test_the_json_key_ranks_as_the_totals_key():
    seven = POLICY.windows("US")[0]
    views = [window.seller_json(seller, "US", [window.WindowTotals(seven, orders, cancelled, {}, {})], 0.0)
             for seller, orders, cancelled in (("x", 100, 3), ("y", 1000, 21), ("z", 1000, 5))]
    assert [v["seller_id"] for v in sorted(views, key=window.risk_key_of_json)] == ["x", "y", "z"]
