"""Amazon's account-health reports of a simulation (streams/cancelwatch/tools/account_health_reports.py)
and `cancelwatch simulate --reports`.

A report's counts are checked with the brute-force oracle of the counting rules
(tests/oracle.py) over the events published before it, plus those of the orders
the gap withholds: nothing else.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from cancelwatch import names, settings

from cancelwatch.core import account_health, events, policy, reconciliation

from cancelwatch.tools import account_health_reports as reports, scenarios, simulate
from tests import oracle
from tests.tools.test_producer import read_all, stack_env  # noqa: F401 (fixture)

END = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
START = END - timedelta(days=9)
POLICY = policy.load(settings.load({}).policy_path)


def simulation(sellers: int = 5, seed: int = 3) -> scenarios.Simulation:
    return scenarios.Simulation("inventory-outage", seed, start=START, end=END, sellers=sellers)


def view_of(run: scenarios.Simulation, gap: float = 0.0) -> reports.AmazonView:
    return reports.AmazonView(POLICY, {seller.seller_id: seller.marketplaces for seller in run.sellers},
                              reports.gap_seller(run.sellers), gap)


def oracle_counts(stream, seller_id: str, marketplace: str, fetched_at: datetime) -> tuple[int, int]:
    """The oracle's orders and seller-fault cancelled orders purchased in the report's range: its
    7-day window at the range's last second is exactly the range's 168 hourly buckets."""
    _, end = reports.report_range(fetched_at)
    mine = [event for event in stream if event.seller_id == seller_id and event.marketplace == marketplace]
    if not mine:
        return 0, 0
    result = oracle.compute(mine, end.timestamp(), POLICY)[(seller_id, marketplace)]
    window = next(window for window in result["windows"] if window["days"] == 7)
    return window["orders"], window["cancelled"]


def amazon_counts(report: reports.Report) -> dict[str, tuple[int, int, dict]]:
    envelope = account_health.decode_envelope(report.value, report.occurred_at)
    return {marketplace: (health.cancellation.order_count, health.cancellation.cancellation_count, health)
            for marketplace, health in envelope.marketplaces.items()}


def test_each_report_counts_what_was_published_before_it_plus_the_withheld_orders():
    run = simulation()
    view = view_of(run, gap=0.1)
    every = timedelta(hours=7)
    generated, published, seen = [], [], []
    checked = 0

    def generate():
        for event in run.events():
            generated.append(event)
            yield event

    for item in reports.with_reports(generate(), view, reports.due_moments(END - timedelta(days=1), every, END)):
        if not isinstance(item, reports.Report):
            published.append(item)
            continue
        seen.append(item.occurred_at)
        withheld = [event for event in generated if view.withheld(event) and event.occurred_at <= item.occurred_at]
        for marketplace, (orders, cancelled, _) in amazon_counts(item).items():
            want_orders, want_cancelled = oracle_counts(published, item.seller_id, marketplace, item.occurred_at)
            if item.seller_id == view.gap_seller:
                gap_orders, gap_cancelled = oracle_counts(withheld, item.seller_id, marketplace, item.occurred_at)
                assert gap_orders > 0
                want_orders += gap_orders
                want_cancelled += gap_cancelled
            assert (orders, cancelled) == (want_orders, want_cancelled), (item.seller_id, item.occurred_at)
            checked += 1
        assert all(event.occurred_at <= item.occurred_at for event in published)
    assert seen == sorted(seen) and seen[0] == END - timedelta(days=1) and seen[-1] <= END
    # Due at 0, 7, 14 and 21 hours of the last day: every seller's first, then the new ones only.
    assert len(run.sellers) < len(seen) <= 4 * len(run.sellers)
    assert checked >= len(seen)
    # The withheld orders are the gap seller's, about the share asked for, and never published.
    assert {event.seller_id for event in generated if view.withheld(event)} == {view.gap_seller}
    assert not any(view.withheld(event) for event in published)
    gap_orders = {event.order_id for event in generated if event.seller_id == view.gap_seller}
    withheld_orders = {event.order_id for event in generated if view.withheld(event)}
    assert 0.05 < len(withheld_orders) / len(gap_orders) < 0.15


def test_the_gap_seller_drifts_and_no_other_seller_does():
    run = simulation()
    view = view_of(run, gap=0.05)
    stream = list(reports.with_reports(run.events(), view, [END]))
    published = [item for item in stream if not isinstance(item, reports.Report)]
    latest = [item for item in stream if isinstance(item, reports.Report)]
    assert [item.seller_id for item in latest] == [seller.seller_id for seller in run.sellers]
    assert view.gap_seller != run.focus.seller_id
    assert "US" in view.sellers[view.gap_seller]
    for report in latest:
        for marketplace, (orders, cancelled, health) in amazon_counts(report).items():
            mine = oracle_counts(published, report.seller_id, marketplace, END)
            start, end = reconciliation.bucket_range(health.cancellation.reporting_from,
                                                     health.cancellation.reporting_to, POLICY.bucket_seconds)
            comparison = reconciliation.compare(health.cancellation, reconciliation.RangeCounts(*mine), True, POLICY)
            assert end - start + 1 == 7 * 24
            assert comparison.drifting == (report.seller_id == view.gap_seller), report.seller_id
            if report.seller_id == view.gap_seller:
                assert comparison.directions[0] == "fewer" and comparison.orders_drift < -5


def test_a_report_is_the_envelope_of_contract_section_11():
    run = simulation(sellers=3)
    view = view_of(run)
    list(reports.with_reports(run.events(), view, []))
    fetched = datetime(2026, 11, 20, 6, 0, 30, tzinfo=timezone.utc)
    report = view.report(run.focus.seller_id, fetched)
    document = json.loads(report.value)
    assert document["schema_version"] == 1 and document["seller_id"] == run.focus.seller_id
    assert document["fetched_at"] == "2026-11-20T06:00:30Z"
    assert document["report"]["accountStatuses"] == [{"marketplaceId": "ATVPDKIKX0DER", "status": "NORMAL"}]
    metric = document["report"]["performanceMetrics"][0]["preFulfillmentCancellationRate"]
    assert metric["reportingDateRange"] == {"reportingDateFrom": "2026-11-13T00:00:00Z",
                                            "reportingDateTo": "2026-11-19T23:59:59Z"}
    assert metric["rate"] == round(metric["cancellationCount"] / metric["orderCount"], 6)
    assert metric["status"] == ("GOOD" if metric["rate"] < 0.025 else "BAD")
    assert (metric["targetValue"], metric["targetCondition"]) == (0.025, "LESS_THAN")
    assert account_health.decode_envelope(report.value, fetched).seller_id == run.focus.seller_id


def test_a_report_that_says_nothing_new_is_not_published_again():
    run = simulation(sellers=3)
    view = view_of(run)
    first = list(reports.with_reports(run.events(), view, [END]))
    again = view.reports(END + timedelta(minutes=1))
    assert len([item for item in first if isinstance(item, reports.Report)]) == 3 and again == []
    tomorrow = view.reports(END + timedelta(days=1))      # the range moves on: all new
    assert len(tomorrow) == 3


def test_a_seller_without_orders_in_the_range_has_a_report_with_none():
    view = reports.AmazonView(POLICY, {"A1": ("US", "IN")})
    envelope = json.loads(view.report("A1", END).value)
    metrics = envelope["report"]["performanceMetrics"]
    assert [entry["marketplaceId"] for entry in metrics] == ["ATVPDKIKX0DER", "A21TJRUUN4KGV"]
    assert [entry["preFulfillmentCancellationRate"]["status"] for entry in metrics] == ["NONE", "NONE"]
    assert metrics[1]["preFulfillmentCancellationRate"]["targetValue"] == 0.02


def test_reports_pass_through_disorder_in_place():
    run = simulation(sellers=2)
    view = view_of(run)
    stream = reports.with_reports(run.events(), view, [END - timedelta(hours=12)])
    out = list(scenarios.disorder(stream, duplicates=0.2, reorder=0.2, seed=5))
    positions = [index for index, item in enumerate(out) if isinstance(item, reports.Report)]
    assert len(positions) == 2 and positions[1] == positions[0] + 1


def test_bad_gaps_and_marketplaces_are_refused():
    with pytest.raises(ValueError, match="between 0 and 1"):
        reports.AmazonView(POLICY, {"A1": ("US",)}, "A1", 1.5)
    with pytest.raises(ValueError, match="no Amazon marketplace id for XX"):
        reports.AmazonView(POLICY, {"A1": ("XX",)})
    with pytest.raises(ValueError):
        list(reports.due_moments(END, timedelta(0), END))


def test_command_writes_the_reports_beside_the_events(tmp_path, capsys):
    output, health = tmp_path / "events.jsonl", tmp_path / "reports.jsonl"
    code = simulate.main(["--scenario", "inventory-outage", "--history", "8d", "--sellers", "4",
                          "--output", str(output), "--reports", "--reports-output", str(health),
                          "--report-gap", "0.2"])
    assert code == 0
    now = datetime.now(timezone.utc)
    published = [events.decode(line, now) for line in output.read_bytes().splitlines()]
    envelopes = [account_health.decode_envelope(line, now) for line in health.read_bytes().splitlines()]
    assert len(envelopes) == 4
    error = capsys.readouterr().err
    assert "and 4 account-health reports" in error and "20% of its orders are never published" in error
    gap_seller = error.split("gap seller ")[1].split()[0]
    for envelope in envelopes:
        for marketplace, health_entry in envelope.marketplaces.items():
            mine = oracle_counts(published, envelope.seller_id, marketplace, envelope.fetched_at)
            amazon = (health_entry.cancellation.order_count, health_entry.cancellation.cancellation_count)
            if envelope.seller_id == gap_seller:
                assert amazon[0] > mine[0] and amazon[1] >= mine[1]
            else:
                assert amazon == mine


@pytest.mark.parametrize("options, message", [
    (["--reports", "--output", "-"], "give --reports-output"),
    (["--reports-output", "r.jsonl"], "give both"),
    (["--reports", "--report-every", "0s"], "at least 1s"),
])
def test_report_options_that_do_not_fit_are_explained(options, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        simulate.main(["--history", "1h"] + options)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_account_health_topic_is_named_once():
    assert settings.load({}).account_health_topic == names.ACCOUNT_HEALTH_TOPIC


@pytest.mark.stack
def test_reports_reach_the_account_health_topic_keyed_by_seller(stack_env, monkeypatch, capsys):  # noqa: F811
    from kafka.admin import KafkaAdminClient

    topic = f"test-account-health-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("CANCELWATCH_ACCOUNT_HEALTH_TOPIC", topic)
    loaded = settings.load({**stack_env, "CANCELWATCH_ACCOUNT_HEALTH_TOPIC": topic})
    try:
        assert simulate.main(["--scenario", "inventory-outage", "--history", "8d", "--sellers", "3",
                              "--reports", "--report-gap", "0.1"]) == 0
        now = datetime.now(timezone.utc)
        published = [events.decode(value, now) for _, _, value in read_all(loaded)]
        messages = read_all(loaded, [topic])
    finally:
        admin = KafkaAdminClient(bootstrap_servers=loaded.bootstrap_servers, client_id="cancelwatch-tests")
        if topic in admin.list_topics():
            admin.delete_topics([topic])
        admin.close()
    assert "and 3 account-health reports" in capsys.readouterr().err
    assert len(messages) == 3
    drifting = set()
    for _, key, value in messages:
        envelope = account_health.decode_envelope(value, now)
        assert key == envelope.seller_id
        for marketplace, entry in envelope.marketplaces.items():
            mine = oracle_counts(published, envelope.seller_id, marketplace, envelope.fetched_at)
            if (entry.cancellation.order_count, entry.cancellation.cancellation_count) != mine:
                drifting.add(envelope.seller_id)
                assert entry.cancellation.order_count > mine[0]
    assert len(drifting) == 1
