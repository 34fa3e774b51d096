"""The runtime's evaluation without Kafka (`tests/dict_runtime.py`): a full pass that skips
sellers whose evaluation cannot have moved leaves every seller as evaluating all of them does."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest

from cancelwatch import settings as settings_module
from cancelwatch.core import events, policy as policy_module, window
from cancelwatch.tools import scenarios
from tests import dict_runtime

START = datetime(2026, 11, 1, tzinfo=timezone.utc)


def evaluated(runtime) -> dict:
    """Every seller's summary and firing alerts."""
    return {(state.seller_id, state.marketplace): (
        (state.summary.status, state.summary.band, state.summary.windows),
        sorted(map(str, runtime.alerts.get((state.seller_id, state.marketplace), {}))))
        for state in runtime.book.states()}


@pytest.mark.parametrize("scenario", ["inventory-outage", "steady"])
def test_a_full_pass_that_skips_unmoved_sellers_equals_evaluating_every_seller(scenario):
    # Ten days of a simulated fleet, so buckets leave the 7-day windows; the clock crosses
    # hours in almost every group. One runtime skips sellers as the worker does, the other
    # is made to evaluate every seller at every full pass.
    settings = settings_module.load({**os.environ, "CANCELWATCH_CLOCK": "event"})
    policy = policy_module.load(settings.policy_path)
    stream = scenarios.disorder(scenarios.generate(scenario, 3, start=START, end=START + timedelta(days=10),
                                                   sellers=40), duplicates=0.02, reorder=0.01, seed=3)
    records = dict_runtime.messages([events.encode(event) for event in stream], settings)
    skipping, every = dict_runtime.runtime(settings, policy), dict_runtime.runtime(settings, policy)
    every._time_moves = lambda *args: True
    evaluations = {id(skipping): 0, id(every): 0}
    for runtime in (skipping, every):
        def counted(state, now_bucket, runtime=runtime, original=runtime.seller_windows):
            evaluations[id(runtime)] += 1
            return original(state, now_bucket)
        runtime.seller_windows = counted
    skipping.last_full_seconds = every.last_full_seconds = 0.0
    compared = 0
    for start in range(0, len(records), 500):
        fetch = records[start:start + 500]
        outboxes = []
        for runtime in (skipping, every):
            runtime.process(fetch)
            runtime.commit()
            runtime.last_full_end = 0.0      # a full pass at every new bucket: none deferred
            outboxes.append(runtime.evaluate())
        assert [sorted(str(f.labels) for f in box.fire) for box in outboxes][0] == \
            [sorted(str(f.labels) for f in box.fire) for box in outboxes][1]
        assert [sorted(str(f.labels) for f in box.resolve) for box in outboxes][0] == \
            [sorted(str(f.labels) for f in box.resolve) for box in outboxes][1]
        assert evaluated(skipping) == evaluated(every)
        compared += 1
    assert compared > 100
    assert evaluations[id(skipping)] < evaluations[id(every)], "no seller was skipped"
    now_bucket = window.bucket_of(skipping.now(), policy.bucket_seconds)
    assert now_bucket - window.bucket_of(START.timestamp(), policy.bucket_seconds) > 7 * 24
    assert any(summary[2][0][2] for summary, _ in evaluated(skipping).values()), "no seller-fault cancel"
