"""The worker's metrics: names from names.METRICS, and a series count that does not
grow with the number of sellers (top-K only)."""

from __future__ import annotations

import random
import tomllib
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dashboards import metrics_reference
from cancelwatch import compiled, names, settings
from cancelwatch.core import policy as policy_module, targets
from cancelwatch.worker import metrics as metrics_module, runtime
from cancelwatch.worker.metrics import Metrics, ScrapeState, SellerSummary, rate_band

POLICY = policy_module.load(settings.load({}).policy_path)


def scrape(sellers: int, top_k: int = 50) -> dict[str, int]:
    rng = random.Random(sellers)
    metrics = Metrics("test", "wall", top_k)
    summaries = {}
    for index in range(sellers):
        orders = rng.randint(1, 400)
        cancelled = rng.randint(0, orders // 20)
        marketplace = rng.choice(["US", "UK", "DE", "IN"])
        summaries[(f"S{index}", marketplace)] = SellerSummary(
            "ok", rate_band(orders, cancelled, 250, 200), ((7, orders, cancelled, 250, 200, None),))
    metrics.attach(lambda: ScrapeState(summaries, {("orders", 0): 3}, {"order-buckets": 10},
                                       [("SellerCancelRateBreached", "critical")], 0, 1.0))
    metrics.events.labels("orders", "applied").inc(5)
    metrics.observe_latencies("orders", [0.1, 2.0])
    series: dict[str, int] = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        series[family.name] = len(family.samples)
    return series


def test_series_count_is_flat_from_1000_to_100000_sellers():
    small, large = scrape(1_000), scrape(100_000)
    assert sum(small.values()) == sum(large.values())
    assert large["cancelwatch_seller_rate"] == 50


def test_every_exported_family_is_named_in_names():
    exported = set(scrape(100))
    known = {name.removesuffix("_total") for name in names.METRICS}
    assert exported <= known, exported - known


def test_rate_bands_compare_in_integers():
    assert rate_band(100, 0, 250, 200) == "low"
    assert rate_band(100, 1, 250, 200) == "moderate"          # exactly half the warning level
    assert rate_band(100, 2, 250, 200) == "warning"
    assert rate_band(40, 1, 250, 200) == "breach"
    assert rate_band(0, 0, 250, 200) == "low"


@pytest.mark.parametrize("marketplace", ["US", "IN"])
def test_rate_bands_follow_the_policy_of_the_marketplace(marketplace):
    # The bands' edges are the window's own: half its warning level, the warning level, the limit.
    first = POLICY.windows(marketplace)[0]
    orders = 10000
    edges = (first.warning_bps // 2, first.warning_bps, first.limit_bps)
    for band, edge in zip(names.RATE_BANDS[1:], edges):
        assert rate_band(orders, edge, first.limit_bps, first.warning_bps) == band
        below = names.RATE_BANDS[names.RATE_BANDS.index(band) - 1]
        assert rate_band(orders, edge - 1, first.limit_bps, first.warning_bps) == below


def test_india_at_its_limit_and_a_seller_target_are_breaches():
    assert rate_band(100, 2, 200, 160) == "breach"           # 2.0% in IN
    target = targets.apply_target(POLICY.windows("US"), targets.Target("A1", "US", 50, 40, None))[0]
    assert rate_band(1000, 5, target.limit_bps, target.warning_bps) == "breach"      # 0.5% against 0.5%
    assert rate_band(1000, 4, target.limit_bps, target.warning_bps) == "warning"


def test_top_k_are_the_sellers_most_at_risk():
    breached = SellerSummary("breach", "breach", ((7, 40, 1, 250, 200, 0),))
    tight = SellerSummary("ok", "low", ((7, 10, 0, 250, 200, None),))
    easy = SellerSummary("ok", "low", ((7, 1000, 1, 250, 200, None),))
    ranked = sorted([("E", easy), ("T", tight), ("B", breached)], key=lambda item: item[1].risk(item[0]))
    # contract section 8: rate as a share of the limit before headroom; no seller-fault cancel ranks last
    assert [seller for seller, _ in ranked] == ["B", "E", "T"]


def test_hours_to_breach_is_the_forecast_the_alert_uses_and_limits_are_those_in_force():
    from pathlib import Path

    from cancelwatch.core import alerting, window as window_module
    from cancelwatch.core.state import BucketTotals, SellerState

    policy = policy_module.load(Path(__file__).resolve().parents[2] / "streams" / "cancelwatch" / "core" / "policy.yaml")
    [seven] = policy.windows("US")
    now_bucket = 500_000
    state = SellerState("CLIMB", "US")
    recent = [(age, 5, 1 if age < 4 else 0) for age in range(24)]          # 3.3% lately
    old = [(age, 100, 0) for age in range(150, 168)]                         # ageing out within 18 h
    for age, orders, cancelled in recent + old:
        totals = BucketTotals()
        totals.orders, totals.cancelled, totals.reasons = orders, cancelled, ({"NoInventory": cancelled}
                                                                             if cancelled else None)
        state.buckets[now_bucket - age] = totals
    # the oldest buckets (no cancels) age out first: the rate climbs
    totals = window_module.totals(state.buckets, seven, policy, now_bucket)
    projection = window_module.forecast_breach(state.buckets, seven, policy, now_bucket)
    assert projection is not None and not totals.breached
    wanted = alerting.desired(state, policy, now_bucket * policy.bucket_seconds, "")
    assert any(key for key in wanted if dict(key)["alertname"] == "SellerCancelRateForecastBreach")

    metrics = Metrics("test", "wall", 5)
    summary = SellerSummary("ok", rate_band(totals.orders, totals.cancelled, 50, 40), ((7, totals.orders, totals.cancelled, 50, 40, projection.hours_ahead),))
    metrics.attach(lambda: ScrapeState({("CLIMB", "US"): summary}, {}, {}, [], 0, 1.0))
    text = metrics.exposition().decode()
    assert (f'cancelwatch_seller_hours_to_breach{{marketplace="US",seller_id="CLIMB",window_days="7"}} '
            f'{float(projection.hours_ahead)}') in text
    assert 'cancelwatch_seller_limit{marketplace="US",seller_id="CLIMB",window_days="7"} 0.005' in text


def test_one_label_set_gives_the_lines_docs_metrics_md_counts():
    series = scrape(10)          # one label set of the latency histogram and of the events counter
    parameters = metrics_reference.Parameters()
    assert series["cancelwatch_processing_latency_seconds"] == \
        metrics_reference.samples_per_label_set("histogram", parameters)
    assert series["cancelwatch_events"] == metrics_reference.samples_per_label_set("counter", parameters)


def test_build_info_says_how_the_core_runs():
    metrics = Metrics("test", "event", 50)
    metrics.attach(lambda: ScrapeState({}, {}, {}, [], 0, 1.0))
    exposition = metrics.exposition().decode()
    assert f'cancelwatch_build_info{{clock="event",core="{compiled.running()}",version="test"}} 1.0' in exposition


def test_the_version_in_build_info_is_the_one_of_pyproject():
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert runtime.VERSION == pyproject["project"]["version"]


def test_an_exposition_asked_for_some_names_serves_those_and_builds_no_other_family():
    metrics = Metrics("test", "wall", 50)
    built = []

    def state():
        built.append(1)
        return ScrapeState({("S1", "US"): SellerSummary("ok", "low", ((7, 10, 0, 250, 200, None),))},
                           {("orders", 0): 3}, {"order-buckets": 10}, [], 0, 1.0)
    metrics.attach(state)
    metrics.events.labels("orders", "applied").inc(5)
    text = metrics.exposition(["cancelwatch_events_total"]).decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert list(families) == ["cancelwatch_events"]
    assert [sample.value for sample in families["cancelwatch_events"].samples] == [5.0]
    assert built == []                              # the scrape-time families were not built
    lag = metrics.exposition(["cancelwatch_consumer_lag_messages"]).decode()
    assert built == [1] and 'cancelwatch_consumer_lag_messages{partition="0",topic="orders"} 3.0' in lag
    assert "cancelwatch_events_total" not in lag


def test_the_state_collector_names_every_family_it_builds():
    # what it names is what a request by name can reach (prometheus_client asks describe())
    metrics = Metrics("test", "wall", 50)
    metrics.attach(lambda: ScrapeState({("S1", "US"): SellerSummary("ok", "low", ((7, 10, 1, 250, 200, 5),))},
                                       {("orders", 0): 3}, {"order-buckets": 10}, [], 0, 1.0))
    collector = metrics_module._StateCollector(metrics)
    built = [family.name for family in collector.collect()]
    assert sorted(built) == sorted(metrics_module.STATE_GAUGES)
    assert [family.name for family in collector.describe()] == list(metrics_module.STATE_GAUGES)
