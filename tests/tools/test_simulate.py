"""The traffic generator (streams/cancelwatch/tools/scenarios.py) and `cancelwatch simulate` (streams/cancelwatch/tools/simulate.py).

Scenario properties are checked with the brute-force oracle of the counting
rules (tests/oracle.py), not with the generator's own bookkeeping.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone

import pytest

from cancelwatch import settings

from cancelwatch.core import events, policy

from cancelwatch.tools import scenarios, simulate
from tests import oracle
from tests.tools.test_producer import read_all, stack_env  # noqa: F401 (fixture)

END = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
START = END - timedelta(days=8)
POLICY = policy.load(settings.load({}).policy_path)


def run(scenario: str, seed: int = 7, sellers: int = 6, **options) -> tuple[scenarios.Simulation, list]:
    simulation = scenarios.Simulation(scenario, seed, start=options.pop("start", START),
                                      end=options.pop("end", END), sellers=sellers, **options)
    return simulation, list(simulation.events())


@functools.cache
def shared(scenario: str) -> tuple[scenarios.Simulation, tuple]:
    """`run(scenario)` once for every test that only reads it (the stream is a tuple)."""
    simulation, stream = run(scenario)
    return simulation, tuple(stream)


def seven_day(stream, seller: scenarios.Seller, now: datetime) -> dict:
    """The oracle's 7-day window of one seller at `now`, from the events that occurred by then."""
    mine = [event for event in stream if event.seller_id == seller.seller_id and event.occurred_at <= now]
    result = oracle.compute(mine, now.timestamp(), POLICY)[(seller.seller_id, "US")]
    window = next(window for window in result["windows"] if window["days"] == 7)
    return {**window, "rate": window["cancelled"] / window["orders"], "reasons": result["reasons"],
            "excluded": result["excluded"]}


def test_same_seed_same_events_and_other_seed_other_events():
    first = [events.encode(event) for event in run("inventory-outage", seed=3)[1]]
    again = [events.encode(event) for event in run("inventory-outage", seed=3)[1]]
    other = [events.encode(event) for event in run("inventory-outage", seed=4)[1]]
    assert first == again
    assert first != other


def test_every_event_round_trips_through_the_worker_decoder_in_time_order():
    _, stream = shared("payment-fraud")
    for event in stream:
        assert events.decode(events.encode(event), END) == event
        assert event.purchase_date <= event.occurred_at <= END
    times = [event.occurred_at for event in stream]
    assert times == sorted(times)


def test_each_order_is_placed_before_anything_else_happens_to_it():
    _, stream = run("steady")
    first_type = {}
    for event in stream:
        first_type.setdefault(event.order_id, type(event))
    assert set(first_type.values()) == {events.OrderPlaced}


def test_steady_traffic_has_the_whole_lifecycle_and_a_low_fleet_rate():
    simulation, stream = run("steady", sellers=30)
    cancels = [event for event in stream if isinstance(event, events.OrderCancelled)]
    kinds = Counter((event.initiator, event.reason, event.order_status_at_cancel) for event in cancels)
    assert kinds[("amazon", "PaymentNotCompleted", "Pending")] > 0
    assert kinds[("amazon", "ShipmentNotConfirmed", "Unshipped")] > 0
    assert any(event.initiator == "buyer" for event in cancels)
    assert any(event.buyer_requested and event.reason == "BuyerCanceled" for event in cancels)
    assert any(event.items for event in cancels), "no item-level cancel"
    statuses = Counter(event.order_status for event in stream if isinstance(event, events.OrderStatusChanged))
    assert statuses["Shipped"] > 0 and statuses["Unshipped"] > 0 and statuses["PartiallyShipped"] > 0
    channels = Counter(event.fulfillment_channel for event in stream if isinstance(event, events.OrderPlaced))
    assert channels["AFN"] > 0 and channels["MFN"] > channels["AFN"]
    assert simulation.focus is None
    result = oracle.compute(stream, END.timestamp(), POLICY)
    orders = sum(value["windows"][0]["orders"] for value in result.values())
    cancelled = sum(value["windows"][0]["cancelled"] for value in result.values())
    assert cancelled / orders < 0.01
    marketplaces = Counter(event.marketplace for event in stream)
    assert "US" in marketplaces and len(marketplaces) >= 3


def test_inventory_outage_climbs_from_about_one_percent_through_warning_past_the_limit():
    simulation, stream = run("inventory-outage")
    focus = simulation.focus
    assert focus is not None and focus.marketplaces == ("US",)
    before = seven_day(stream, focus, simulation.pivot)
    midway = seven_day(stream, focus, simulation.pivot + simulation.ramp / 2)
    after = seven_day(stream, focus, END)
    assert 0.005 <= before["rate"] < 0.016
    assert 0.016 <= midway["rate"] < 0.025
    assert after["rate"] >= 0.027 and after["status"] == "breach"
    rates = [seven_day(stream, focus, simulation.pivot + simulation.ramp * step / 8)["rate"]
             for step in range(9)]
    assert rates == sorted(rates), f"the climb is not steady: {rates}"
    assert after["reasons"]["NoInventory"] > 2 * before["reasons"].get("NoInventory", 0)
    assert after["reasons"]["NoInventory"] / after["cancelled"] > 0.6


@pytest.mark.parametrize("scenario, reason", [
    ("address-errors", "ShippingAddressUndeliverable"),
    ("payment-fraud", "RiskAssessmentInformationNotValid"),
])
def test_incident_scenarios_breach_with_their_reason(scenario, reason):
    simulation, stream = shared(scenario)
    after = seven_day(stream, simulation.focus, END)
    assert after["status"] == "breach"
    assert max(after["reasons"], key=after["reasons"].get) == reason


def test_payment_fraud_expires_many_pending_orders_that_do_not_count():
    simulation, stream = shared("payment-fraud")
    focus = simulation.focus.seller_id
    expired = [event for event in stream if isinstance(event, events.OrderCancelled)
               and event.seller_id == focus and event.reason == "PaymentNotCompleted"]
    pending = [event for event in stream if isinstance(event, events.OrderPlaced)
               and event.seller_id == focus and event.order_status == "Pending"
               and event.purchase_date >= simulation.pivot]
    placed = [event for event in stream if isinstance(event, events.OrderPlaced)
              and event.seller_id == focus and event.purchase_date >= simulation.pivot]
    assert expired and all(event.order_status_at_cancel == "Pending" for event in expired)
    assert len(pending) / len(placed) > 0.2


def test_buyer_requests_are_many_but_do_not_raise_the_rate():
    simulation, stream = shared("buyer-requests")
    before = seven_day(stream, simulation.focus, simulation.pivot)
    after = seven_day(stream, simulation.focus, END)
    assert after["excluded"]["buyer_requested"] >= 0.08 * after["orders"]
    assert after["excluded"]["buyer_requested"] > 5 * before["excluded"].get("buyer_requested", 1)
    assert after["excluded"]["buyer_initiated"] > before["excluded"].get("buyer_initiated", 0)
    assert after["rate"] < 0.016 and after["status"] == "ok"


def test_ageing_seller_is_under_the_warning_level_now_and_breached_when_the_busy_day_ages_out():
    simulation, stream = run("ageing")
    assert simulation.pivot == END
    now = seven_day(stream, simulation.focus, END)
    tomorrow = seven_day(stream, simulation.focus, END + timedelta(days=1))
    assert now["status"] == "ok" and now["rate"] < 0.02
    assert tomorrow["rate"] >= 0.025
    assert now["orders"] > 2 * tomorrow["orders"]


def test_live_timeline_compresses_after_the_pivot_and_never_runs_ahead():
    pivot = END - timedelta(hours=1)
    timeline = scenarios.Timeline(pivot, speed=60)
    assert timeline.stamp(pivot - timedelta(days=1)) == pivot - timedelta(days=1)
    assert timeline.stamp(pivot + timedelta(hours=1)) == pivot + timedelta(minutes=1)
    simulation, stream = run("inventory-outage", start=pivot - timedelta(days=7),
                             end=pivot + timedelta(hours=6), pivot=pivot, timeline=timeline)
    assert max(event.occurred_at for event in stream) <= pivot + timedelta(minutes=6)
    live = seven_day(stream, simulation.focus, pivot + timedelta(minutes=6))
    assert live["status"] == "breach"


def test_an_endless_simulation_keeps_producing():
    stream = scenarios.generate("steady", 1, start=START, end=None, sellers=3)
    first = [next(stream) for _ in range(2000)]
    assert first[-1].occurred_at > first[0].occurred_at


def test_duplicates_resend_the_same_event_and_reorder_delivers_cancels_before_their_order():
    _, stream = shared("buyer-requests")
    delivered = list(scenarios.disorder(stream, duplicates=0.05, reorder=0.2, seed=2))
    sent = Counter(event.event_id for event in delivered)
    assert set(sent) == {event.event_id for event in stream}
    assert max(sent.values()) >= 2
    duplicated = len(delivered) - len(stream)
    assert 0.03 * len(stream) < duplicated < 0.07 * len(stream)
    seen_orders: set[str] = set()
    early_cancels = 0
    for event in delivered:
        if isinstance(event, events.OrderPlaced):
            seen_orders.add(event.order_id)
        elif isinstance(event, events.OrderCancelled) and event.order_id not in seen_orders:
            early_cancels += 1
    assert early_cancels > 0
    assert list(scenarios.disorder(stream)) == list(stream)


def test_disorder_rejects_rates_outside_zero_to_one():
    with pytest.raises(ValueError, match="duplicates"):
        list(scenarios.disorder([], duplicates=1.5))


@pytest.mark.parametrize("text, expected", [
    ("8d", timedelta(days=8)), ("7d6h", timedelta(days=7, hours=6)), ("90m", timedelta(minutes=90)),
    ("30s", timedelta(seconds=30)), ("1w", timedelta(days=7)),
])
def test_spans(text, expected):
    assert simulate.parse_span(text) == expected


@pytest.mark.parametrize("text", ["", "8", "d", "8x", "8d-1h"])
def test_bad_spans_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="time span"):
        simulate.parse_span(text)


def test_speed_values():
    assert simulate.parse_speed("max") is None
    assert simulate.parse_speed("realtime") == 1.0
    assert simulate.parse_speed("60") == 60.0
    with pytest.raises(argparse.ArgumentTypeError):
        simulate.parse_speed("0")


def test_command_writes_json_lines_ending_now(tmp_path, capsys):
    output = tmp_path / "events.jsonl"
    before = datetime.now(timezone.utc)
    code = simulate.main(["--scenario", "inventory-outage", "--history", "1d", "--sellers", "4",
                          "--duplicates", "0.01", "--output", str(output)])
    assert code == 0
    lines = output.read_bytes().splitlines()
    decoded = [events.decode(line, datetime.now(timezone.utc)) for line in lines]
    assert len(decoded) > 500
    assert min(event.purchase_date for event in decoded) >= before - timedelta(days=1, minutes=1)
    assert max(event.occurred_at for event in decoded) <= datetime.now(timezone.utc)
    ids = Counter(event.event_id for event in decoded)
    assert max(ids.values()) == 2
    error = capsys.readouterr().err
    assert "focus seller" in error and f"wrote {len(lines)} events" in error


def test_command_with_an_explicit_span_is_reproducible(tmp_path):
    paths = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    for path in paths:
        assert simulate.main(["--start", "2026-11-01T00:00:00Z", "--duration", "6h", "--sellers", "3",
                              "--seed", "9", "--speed", "max", "--output", str(path)]) == 0
    assert paths[0].read_bytes() == paths[1].read_bytes()
    first = json.loads(paths[0].read_bytes().splitlines()[0])
    assert first["occurred_at"].startswith("2026-11-01T00:")


def test_max_speed_into_the_future_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        simulate.main(["--history", "1h", "--duration", "2h", "--speed", "max", "--output", "-"])
    assert exit_info.value.code == 2
    assert "ahead of the wall clock" in capsys.readouterr().err


def test_paced_waits_only_for_live_events():
    now = END
    stream = [run("steady", sellers=1, start=END - timedelta(hours=2),
                  end=END - timedelta(hours=1))[1][0]]
    live_event = events.OrderStatusChanged(
        schema_version=1, event_id="e-live", order_id="113-1", seller_id="A1", marketplace="US",
        fulfillment_channel="MFN", purchase_date=now, occurred_at=now + timedelta(seconds=30),
        order_status="Shipped")
    sleeps: list[float] = []
    out = list(simulate.paced(stream + [live_event], now, lambda: now, sleeps.append))
    assert out == stream + [live_event]
    assert sleeps == [30.0]


def test_default_sellers_have_pareto_like_volumes():
    simulation = scenarios.Simulation("steady", 5, start=START, end=END, sellers=200)
    volumes = sorted((seller.orders_per_day for seller in simulation.sellers), reverse=True)
    top_share = sum(volumes[:20]) / sum(volumes)
    assert top_share > 0.3, "the top 10% of sellers should carry a large share of the orders"
    places = defaultdict(int)
    for seller in simulation.sellers:
        for marketplace in seller.marketplaces:
            places[marketplace] += 1
    assert max(places, key=places.get) == "US"


@pytest.mark.stack
def test_simulated_history_reaches_kafka_with_its_duplicates(stack_env, capsys):  # noqa: F811
    assert simulate.main(["--scenario", "steady", "--history", "6h", "--sellers", "3",
                          "--duplicates", "0.05"]) == 0
    messages = read_all(settings.load(stack_env))
    decoded = [(topic, key, events.decode(value, datetime.now(timezone.utc))) for topic, key, value in messages]
    assert all(key == event.seller_id for _, key, event in decoded)
    assert all((topic == stack_env["CANCELWATCH_CANCELLATIONS_TOPIC"])
               == isinstance(event, events.OrderCancelled) for topic, _, event in decoded)
    copies = Counter(event.event_id for _, _, event in decoded)
    assert max(copies.values()) == 2 and len(copies) < len(decoded)
    assert f"sent {len(decoded)} events" in capsys.readouterr().err


def test_ageing_without_a_week_of_history_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        simulate.main(["--scenario", "ageing", "--history", "2d", "--output", "-"])
    assert exit_info.value.code == 2
    assert "at least 7 days of history" in capsys.readouterr().err


@pytest.mark.parametrize("options, expected_start, expected_end", [
    ([], END - timedelta(days=8), END),
    (["--history", "7d", "--speed", "60"], END - timedelta(days=7), None),
    (["--history", "7d", "--duration", "7d6h", "--speed", "60"], END - timedelta(days=7), END + timedelta(hours=6)),
    (["--start", "2026-11-01T00:00:00Z", "--duration", "1d"], datetime(2026, 11, 1, tzinfo=timezone.utc),
     datetime(2026, 11, 2, tzinfo=timezone.utc)),
    (["--duration", "forever", "--speed", "realtime"], END - timedelta(days=8), None),
])
def test_span_from_the_options(options, expected_start, expected_end):
    args = simulate.build_parser().parse_args(options)
    assert simulate.resolve_span(args, END) == (expected_start, expected_end)


@pytest.mark.parametrize("options, message", [
    (["--duration", "forever"], "ahead of the wall clock"),
    (["--start", "2026-12-01T00:00:00Z"], "not in the past"),
])
def test_impossible_spans_are_explained(options, message):
    args = simulate.build_parser().parse_args(options)
    with pytest.raises(ValueError, match=message):
        simulate.resolve_span(args, END)
