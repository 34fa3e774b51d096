"""The runtime's evaluation without Kafka (`tests/dict_runtime.py`): a full pass that skips
sellers whose evaluation cannot have moved leaves every seller as evaluating all of them does."""

from __future__ import annotations

import asyncio
import os
import time
import types
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest

from cancelwatch import names, settings as settings_module
from cancelwatch.core import events, policy as policy_module, window
from cancelwatch.delivery import alertmanager as alertmanager_module
from cancelwatch.tools import scenarios
from cancelwatch.worker import feeds, mailbox
from cancelwatch.worker.metrics import rate_band
from cancelwatch.worker.ownership import owner_partition
from cancelwatch.worker.runtime import Runtime
from tests import dict_runtime
from tests.delivery.test_alertmanager import alertmanager  # noqa: F401 - the fixture: an Alertmanager of the test's own

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
        def counted(state, now_bucket, runtime=runtime, original=runtime._limits_and_sums):
            evaluations[id(runtime)] += 1
            return original(state, now_bucket)
        runtime._limits_and_sums = counted
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


def test_every_sellers_summary_equals_its_windows_walked():
    """The summaries evaluation leaves (built from running window sums, without window totals
    for a seller with no seller-fault cancel) equal those computed from the seller's buckets
    walked: status, rate band, and each window's counts, limits and forecast."""
    settings = settings_module.load({**os.environ, "CANCELWATCH_CLOCK": "event"})
    policy = policy_module.load(settings.policy_path)
    stream = scenarios.disorder(scenarios.generate("inventory-outage", 5, start=START,
                                                   end=START + timedelta(days=9), sellers=60),
                                duplicates=0.02, reorder=0.01, seed=5)
    records = dict_runtime.messages([events.encode(event) for event in stream], settings)
    runtime = dict_runtime.runtime(settings, policy)
    evaluated_at: dict = {}

    def recorded(state, now_bucket, original=runtime._limits_and_sums):
        evaluated_at[state] = now_bucket
        return original(state, now_bucket)
    runtime._limits_and_sums = recorded
    checked = quiet = 0
    for start in range(0, len(records), 2_000):
        runtime.process(records[start:start + 2_000])
        runtime.commit()
        evaluated_at.clear()
        runtime.evaluate()
        for state, now_bucket in evaluated_at.items():
            walked = [window.totals(state.buckets, limit, policy, now_bucket)
                      for limit in policy.windows(state.marketplace)]
            first = walked[0]
            expected = (
                max((w.status for w in walked), key=names.STATUSES.index),
                rate_band(first.orders, first.cancelled, first.window.limit_bps, first.window.warning_bps),
                tuple((w.window.days, w.orders, w.cancelled, w.window.limit_bps, w.window.warning_bps,
                       0 if w.breached else None if p is None else p.hours_ahead)
                      for w, p in ((w, window.forecast_breach(state.buckets, w.window, policy, now_bucket))
                                   for w in walked)))
            assert (state.summary.status, state.summary.band, state.summary.windows) == expected
            checked += 1
            quiet += not any(w.cancelled for w in walked)
    assert checked > 500 and quiet > 50, (checked, quiet)


def test_the_workers_clock_check_dead_letters_exactly_what_the_decoder_does(monkeypatch):
    # The worker checks a well-formed event's times against the wall clock on their epoch
    # seconds and leaves those near the limit to events.decode_on: around the 5-minute limit,
    # to the microsecond, it must dead-letter exactly the events the decoder rejects.
    from cancelwatch.worker import runtime as runtime_module

    settings = settings_module.load({**os.environ, "CANCELWATCH_CLOCK": "event"})
    policy = policy_module.load(settings.policy_path)
    wall = datetime(2026, 11, 20, 12, 0, 0, 123456, tzinfo=timezone.utc)
    monkeypatch.setattr(runtime_module.time, "time", lambda: wall.timestamp())
    offsets = [timedelta(seconds=-60), timedelta(seconds=299), timedelta(seconds=300) - timedelta(microseconds=1),
               timedelta(seconds=300), timedelta(seconds=300, microseconds=1), timedelta(seconds=300, microseconds=999),
               timedelta(seconds=301), timedelta(hours=2)]
    raws = []
    for number, offset in enumerate(offsets):
        for field in ("occurred_at", "purchase_date"):
            base = wall - timedelta(hours=1)
            times = {"purchase_date": base, "occurred_at": base, field: wall + offset}
            if times["purchase_date"] > times["occurred_at"] and field == "purchase_date":
                times["occurred_at"] = wall - timedelta(hours=1)
            raws.append(events.encode(events.OrderPlaced(
                schema_version=1, event_id=f"e-{number}-{field}", order_id=f"O-{number}-{field}",
                seller_id="S1", marketplace="US", fulfillment_channel="MFN", order_status="Unshipped", **times)))
    rejected = set()
    for raw in raws:
        try:
            events.decode(raw, wall)
        except events.BadEvent as bad:
            assert bad.kind == "future"
            rejected.add(raw)
    assert 0 < len(rejected) < len(raws)
    runtime = dict_runtime.runtime(settings, policy)
    runtime.process(dict_runtime.messages(raws, settings))
    assert {message.value for message, _ in runtime.group.dead} == rejected
    assert all(bad.kind == "future" for _, bad in runtime.group.dead)
    result = runtime.commit()
    assert runtime.book.seller("S1", "US") is not None
    assert sum(count for (topic, outcome), count in result.outcomes.items() if outcome == "applied") \
        == len(raws) - len(rejected)


def test_rest_survives_a_store_that_cannot_write_its_buffers_out(caplog):
    # Rest runs in the alert loop: a failed flush of RocksDB's write buffers (a full disk, say)
    # is logged and costs memory only; the loop, and the alerts, go on.
    settings = settings_module.load({**os.environ, "CANCELWATCH_CLOCK": "event"})
    runtime = dict_runtime.runtime(settings, policy_module.load(settings.policy_path))

    def failing_flush():
        raise OSError("No space left on device")
    runtime.store.flush = failing_flush
    with caplog.at_level("WARNING", logger="cancelwatch.worker"):
        runtime.rest()
    assert any("No space left on device" in record.getMessage() for record in caplog.records)


class Consumer:
    """As much of faust's consumer as `Runtime.refresh_catch_up` reads: the assignment, each
    partition's high watermark, when a fetch response last brought it, and committed offsets."""

    def __init__(self, highwaters: dict) -> None:
        self.highwaters = highwaters
        self.polled: int | None = None         # epoch ms of the last fetch response (aiokafka's: whole ms)
        self.polled_at: dict = {}              # a partition's own, where it differs
        self._committed_offset: dict = {}

    def assignment(self):
        return set(self.highwaters)

    def highwater(self, tp):
        return self.highwaters[tp]

    def last_poll_timestamp(self, tp):
        return self.polled_at.get(tp, self.polled)


def ms_after(instant: float) -> int:
    """The first whole epoch ms after `instant` (epoch s), as aiokafka stamps a fetch response.
    Not `instant * 1000`: divided back by 1000, that can fall an ulp short of `instant`."""
    return int(instant * 1000) + 1


def refresh_confirmed(runtime, consumer: Consumer) -> None:
    """`refresh_catch_up`, and again once a fetch response read CONFIRM_SECONDS later confirms
    the high watermarks, if partitions read caught up."""
    from cancelwatch.worker import runtime as runtime_module

    runtime.refresh_catch_up(consumer)
    if runtime.confirming is not None:
        consumer.polled = ms_after(runtime.confirming + runtime_module.CONFIRM_SECONDS)
        runtime.refresh_catch_up(consumer)


def fetch_of(messages) -> mailbox.Fetch:
    """The fetch that brought `messages`, as the agent appends it to the open group (offsets only)."""
    from aiokafka import TopicPartition

    offsets: dict = {}
    for message in messages:
        offsets.setdefault(TopicPartition(message.topic, message.partition), []).append(message.offset)
    return mailbox.Fetch(generation=1, offsets=offsets)


def scenario_events(base: datetime):
    """Seller S1: 60 orders with 2 seller-fault cancels (3.3%, alerts warranted), then 140 more
    orders that bring it to 1% (none warranted)."""
    def order(number: int) -> events.OrderPlaced:
        return events.OrderPlaced(schema_version=1, event_id=f"p-{number}", order_id=f"O-{number}",
                                  seller_id="S1", marketplace="US", fulfillment_channel="MFN",
                                  order_status="Unshipped", purchase_date=base + timedelta(minutes=number),
                                  occurred_at=base + timedelta(minutes=number))

    def cancel(number: int) -> events.OrderCancelled:
        placed = order(number)
        return events.OrderCancelled(schema_version=1, event_id=f"c-{number}", order_id=placed.order_id,
                                     seller_id="S1", marketplace="US", fulfillment_channel="MFN",
                                     purchase_date=placed.purchase_date,
                                     occurred_at=placed.occurred_at + timedelta(minutes=1),
                                     initiator="seller", reason="NoInventory", buyer_requested=False,
                                     order_status_at_cancel="Unshipped")
    return [*map(order, range(60)), cancel(0), cancel(1)], [order(n) for n in range(60, 200)]


def test_a_partition_is_caught_up_only_once_the_events_rerouted_to_it_are_delivered_and_applied():
    # A backlog's last group reroutes events that came in on another partition. From its
    # acknowledgement on, every source partition reads lag 0 and the reroute partition's high
    # watermark does not show the events yet: the partition must stay catching up (its alerts
    # held) until they are delivered and applied, or it pages from partial counts.
    from aiokafka import TopicPartition
    from aiokafka.structs import RecordMetadata

    settings = settings_module.load({**os.environ, "CANCELWATCH_CLOCK": "event", "CANCELWATCH_CATCHUP_LAG": "100"})
    policy = policy_module.load(settings.policy_path)
    base = datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc)

    first, rest = scenario_events(base)
    own = dict_runtime.messages([events.encode(e) for e in first], settings)
    elsewhere = dict_runtime.messages([events.encode(e) for e in rest], settings)
    home = own[0].partition
    other = (home + 1) % settings.partitions
    for offset, message in enumerate(elsewhere):
        message.partition, message.offset = other, offset
    reroute = settings.reroute_topic

    def source(message):
        return TopicPartition(message.topic, message.partition)

    partial = dict_runtime.runtime(settings, policy)
    dict_runtime.feed(partial, own, fetch=len(own))
    assert partial.alerts.get(("S1", "US")), "the partial counts must warrant alerts, or the test proves nothing"

    runtime = dict_runtime.runtime(settings, policy)
    runtime.lag_known = False
    runtime.targets_ready = True       # the targets topic read: only the lag holds alerts
    fetched = own + elsewhere
    highwaters = {source(m): m.offset + 1 for m in fetched} | {TopicPartition(reroute, p): 0 for p in (home, other)}
    consumer = Consumer(highwaters)
    runtime.refresh_catch_up(consumer)
    assert runtime.catching_up == {home, other}, "a backlog at start"
    runtime.process(fetched)
    runtime.group.fetches.append(fetch_of(fetched))
    group = runtime.commit()
    assert len(group.reroute) == len(elsewhere) and {owner for _, _, owner in group.reroute} == {home}

    sending = runtime.acknowledged(group)          # as the agent does, sends still in flight
    runtime.refresh_catch_up(consumer)
    assert runtime.is_catching_up(home)
    runtime.evaluate()
    assert not runtime.alerts.get(("S1", "US")), "alerts decided from counts missing the rerouted events"

    runtime.rerouted([RecordMetadata(reroute, home, None, offset, -1, -1, -1)
                      for offset in range(len(elsewhere))])
    runtime.sent(sending)
    runtime.refresh_catch_up(consumer)
    assert runtime.is_catching_up(home), "delivered but not applied yet"

    arrived = [dict_runtime.Message(reroute, home, offset, m.value) for offset, m in enumerate(elsewhere)]
    runtime.process(arrived)
    runtime.group.fetches.append(fetch_of(arrived))
    group = runtime.commit()
    runtime.sent(runtime.acknowledged(group))
    consumer.highwaters[TopicPartition(reroute, home)] = len(arrived)
    refresh_confirmed(runtime, consumer)
    assert not runtime.is_catching_up(home)
    runtime.evaluate()
    assert runtime.book.seller("S1", "US").summary.status == names.STATUS_OK
    assert not runtime.alerts.get(("S1", "US"))
    assert not runtime.in_flight


def test_events_another_worker_rerouted_while_catching_up_hold_this_workers_alerts_until_they_stop():
    # Two workers: the other one catches up on a backlog that holds events of this worker's
    # seller under other keys, and reroutes them here as it reads them. This worker is caught
    # up on its own partitions, but its counts are partial until that backlog is read: the
    # marked events hold its alerts until none has come for REPLAY_QUIET_SECONDS.
    from aiokafka import TopicPartition
    from cancelwatch.worker import runtime as runtime_module

    settings = settings_module.load({**os.environ, "CANCELWATCH_CLOCK": "event"})
    policy = policy_module.load(settings.policy_path)
    first, rest = scenario_events(datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc))
    runtime = dict_runtime.runtime(settings, policy)
    runtime.targets_ready = True
    own = dict_runtime.messages([events.encode(e) for e in first], settings)
    home = own[0].partition
    reroute = settings.reroute_topic
    assignment = {TopicPartition(topic, home) for topic in (*settings.source_topics.values(), reroute)}
    consumer = Consumer({tp: 0 for tp in assignment})

    def apply(messages):
        runtime.process(messages)
        runtime.group.fetches.append(fetch_of(messages))
        runtime.sent(runtime.acknowledged(runtime.commit()))
        for m in messages:
            tp = TopicPartition(m.topic, m.partition)
            consumer.highwaters[tp] = max(consumer.highwaters[tp], m.offset + 1)
        refresh_confirmed(runtime, consumer)
        runtime.evaluate()

    runtime.refresh_catch_up(consumer)
    apply(own)
    assert not runtime.is_catching_up(home)
    assert runtime.alerts.get(("S1", "US")), "the partial counts must warrant alerts, or the test proves nothing"
    fired = set(runtime.alerts[("S1", "US")])

    def rerouted(events_, offset, token):
        out = []
        for number, event in enumerate(events_):
            message = dict_runtime.Message(reroute, home, offset + number, events.encode(event))
            message.headers = [("cancelwatch.source.topic", b"orders"), (runtime_module.REPLAY_HEADER, token)]
            out.append(message)
        return out

    # This worker's own marked reroutes: its own lag already accounts for them.
    apply(rerouted(rest[:1], 0, runtime.token))
    assert not runtime.is_catching_up(home) and not runtime.peer_replay
    # Another worker's: held, though every partition here reads lag 0.
    apply(rerouted(rest[1:70], 1, b"another-worker"))
    assert runtime.is_catching_up(home) and not any(runtime.lag.values())
    assert set(runtime.alerts[("S1", "US")]) == fired, "nothing resolves while the other backlog is read"
    apply(rerouted(rest[70:], 70, b"another-worker"))
    assert runtime.is_catching_up(home)
    assert set(runtime.alerts[("S1", "US")]) == fired
    # Quiet for REPLAY_QUIET_SECONDS: caught up, and the whole counts decide.
    runtime.peer_replay = {p: when - runtime_module.REPLAY_QUIET_SECONDS - 0.1
                           for p, when in runtime.peer_replay.items()}
    refresh_confirmed(runtime, consumer)
    assert not runtime.is_catching_up(home)
    runtime.evaluate()
    assert runtime.book.seller("S1", "US").summary.status == names.STATUS_OK
    assert not runtime.alerts.get(("S1", "US"))


def test_an_event_is_marked_rerouted_during_a_catch_up_only_while_its_partition_catches_up():
    settings = settings_module.load({**os.environ, "CANCELWATCH_CLOCK": "event"})
    runtime = dict_runtime.runtime(settings, policy_module.load(settings.policy_path))
    runtime.catching_up = {1}
    assert runtime.reroute_headers(1) == [("cancelwatch.replay", runtime.token)]
    assert runtime.reroute_headers(0) == []
    runtime.lag_known = False              # nothing known yet: every partition may be behind
    assert runtime.reroute_headers(0) == [("cancelwatch.replay", runtime.token)]


def test_lag_read_0_from_high_watermarks_older_than_the_decision_does_not_end_a_catch_up():
    # A worker stopped for a while (SIGSTOP, a frozen machine) holds the high watermarks of its
    # last fetch: they show lag 0 while a backlog waits. A catch-up ends only once a fetch
    # response read CONFIRM_SECONDS after the lag first read 0 says so too, and a pause starts
    # a catch-up.
    from aiokafka import TopicPartition
    from cancelwatch.worker import runtime as runtime_module

    settings = settings_module.load({**os.environ, "CANCELWATCH_CLOCK": "event"})
    runtime = dict_runtime.runtime(settings, policy_module.load(settings.policy_path))
    runtime.targets_ready = True
    runtime.lag_known = False
    assignment = [TopicPartition(topic, 0) for topic in (*settings.source_topics.values(), settings.reroute_topic)]
    consumer = Consumer({tp: 0 for tp in assignment})
    consumer.polled = int(time.time() * 1000)   # the last response, read before the decision
    runtime.refresh_catch_up(consumer)
    assert runtime.is_catching_up(0) and runtime.confirming is not None
    started = runtime.confirming
    consumer.polled = ms_after(started + runtime_module.CONFIRM_SECONDS) - 2
    runtime.refresh_catch_up(consumer)
    assert runtime.is_catching_up(0), "a response read too soon after may have been requested before"

    def backlog_confirmed(since: float, end: int) -> None:
        """A response read CONFIRM_SECONDS after `since` shows a backlog up to `end`: still
        catching up until it is applied (the high watermarks are fresh by then)."""
        consumer.polled = ms_after(since + runtime_module.CONFIRM_SECONDS)
        consumer.highwaters[assignment[0]] = end
        runtime.refresh_catch_up(consumer)
        assert runtime.is_catching_up(0)
        runtime.applied[assignment[0]] = end - 1
        runtime.refresh_catch_up(consumer)
        assert not runtime.is_catching_up(0)

    backlog_confirmed(started, 5_000)

    # Stopped for a minute while caught up: every partition catches up again, until a fetch
    # response read since the pause confirms the lag (here, a backlog first).
    runtime.last_look -= 60
    consumer.polled = int((time.time() - 60) * 1000)   # the last response, read before the pause
    runtime.refresh_catch_up(consumer)
    assert runtime.is_catching_up(0), "a pause leaves high watermarks as old as the pause"
    backlog_confirmed(runtime.confirming, 9_000)
    # A long evaluation is the worker's own work, not a pause.
    runtime.last_look -= 60
    runtime.evaluate()
    runtime.refresh_catch_up(consumer)
    assert not runtime.is_catching_up(0)


def test_a_partition_with_no_fetch_response_for_a_while_catches_up_until_one_confirms_its_lag():
    # A broker down or unreachable: no fetch response brings the partitions it leads their high
    # watermarks, so their lag is unknown, while with the wall clock orders age out of the
    # windows. They hold their alerts until a response read after the outage was noticed
    # confirms their lag; the other partitions go on.
    from aiokafka import TopicPartition
    from cancelwatch.worker import runtime as runtime_module

    settings = settings_module.load({**os.environ, "CANCELWATCH_CLOCK": "wall"})
    runtime = dict_runtime.runtime(settings, policy_module.load(settings.policy_path))
    runtime.targets_ready = True
    topics = (*settings.source_topics.values(), settings.reroute_topic)
    consumer = Consumer({TopicPartition(topic, partition): 0 for topic in topics for partition in (0, 1)})
    refresh_confirmed(runtime, consumer)
    assert not runtime.is_catching_up(0) and not runtime.is_catching_up(1)

    def fetched(partition: int, seconds_ago: float) -> None:
        for topic in topics:
            consumer.polled_at[TopicPartition(topic, partition)] = int((time.time() - seconds_ago) * 1000)

    fetched(0, 0.5)
    fetched(1, runtime_module.STALE_FETCH_SECONDS - 1)
    runtime.refresh_catch_up(consumer)
    assert not runtime.is_catching_up(0) and not runtime.is_catching_up(1), "a response that recent is no outage"
    fetched(1, runtime_module.STALE_FETCH_SECONDS + 1)
    runtime.refresh_catch_up(consumer)
    assert runtime.is_catching_up(1), "no response for that long: the lag of partition 1 is unknown"
    assert not runtime.is_catching_up(0), "a partition whose leader answers goes on"
    fetched(0, 0.5)
    runtime.refresh_catch_up(consumer)
    assert runtime.is_catching_up(1) and not runtime.is_catching_up(0)
    # The leader is back, and its first response shows lag 0: caught up once one read
    # CONFIRM_SECONDS after the outage was noticed says so.
    fetched(1, 0)
    runtime.refresh_catch_up(consumer)
    assert runtime.is_catching_up(1), "a response may have been requested before the outage was noticed"
    consumer.polled_at = {}
    consumer.polled = ms_after(runtime.confirming + runtime_module.CONFIRM_SECONDS)
    runtime.refresh_catch_up(consumer)
    assert not runtime.is_catching_up(1) and not runtime.is_catching_up(0)


def test_while_every_partition_catches_up_sellers_are_evaluated_now_and_then_and_all_once_caught_up():
    # A backlog: every decision would be held, so the sellers its groups touch are evaluated
    # (their summaries refreshed) at most every HELD_EVALUATE_SECONDS, not after each group;
    # once caught up, every seller is evaluated and what the full counts warrant goes out.
    from aiokafka import TopicPartition
    from cancelwatch.worker import runtime as runtime_module

    settings = settings_module.load({**os.environ, "CANCELWATCH_CLOCK": "event", "CANCELWATCH_CATCHUP_LAG": "10"})
    policy = policy_module.load(settings.policy_path)
    orders, more = scenario_events(datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc))
    first = dict_runtime.messages([events.encode(e) for e in orders[:30]], settings)
    second = dict_runtime.messages([events.encode(e) for e in orders[30:]], settings)
    for offset, message in enumerate(second, start=len(first)):
        message.offset = offset
    runtime = dict_runtime.runtime(settings, policy)
    runtime.lag_known = False
    runtime.targets_ready = True
    ends: dict = {TopicPartition(settings.reroute_topic, first[0].partition): 0}
    for message in first + second:
        ends[TopicPartition(message.topic, message.partition)] = message.offset + 1
    consumer = Consumer({tp: end + 1_000 for tp, end in ends.items()})     # a backlog behind both
    runtime.refresh_catch_up(consumer)
    assert runtime.catching_up == {first[0].partition} == runtime.owned

    def apply(messages) -> None:
        runtime.process(messages)
        runtime.group.fetches.append(fetch_of(messages))
        runtime.acknowledged(runtime.commit())

    apply(first)
    assert not runtime.evaluate()
    seller = runtime.book.seller("S1", "US")
    assert seller.summary.windows[0][1:3] == (30, 0), "the first held pass evaluates at once"
    apply(second)
    assert not runtime.evaluate()
    assert seller.summary.windows[0][1:3] == (30, 0) and seller in runtime.dirty, "evaluated again too soon"
    runtime.last_held_pass -= runtime_module.HELD_EVALUATE_SECONDS
    assert not runtime.evaluate() and not runtime.alerts, "held: nothing sent"
    assert seller.summary.windows[0][1:3] == (60, 2) and not runtime.dirty

    consumer.highwaters = ends
    refresh_confirmed(runtime, consumer)
    assert not runtime.is_catching_up(first[0].partition)
    outbox = runtime.evaluate()
    assert runtime.alerts.get(("S1", "US")) and outbox.fire, "the caught-up state fires what it warrants"


def test_the_first_rest_after_a_burst_collects_its_reference_cycles():
    # The worker collects cycles rarely (a high threshold, its state frozen): a burst's cycles
    # would keep their memory until then. The first rest after a burst collects them; the
    # periodic rests while idle do not walk the heap again.
    import gc
    import weakref

    settings = settings_module.load({**os.environ, "CANCELWATCH_CLOCK": "event"})
    runtime = dict_runtime.runtime(settings, policy_module.load(settings.policy_path))

    class Node:
        pass

    def cycle():
        node = Node()
        node.me = node
        return weakref.ref(node)

    gc.disable()
    try:
        idle = cycle()
        runtime.rest(collect=False)
        assert idle() is not None
        burst = cycle()
        runtime.rest()
        assert burst() is None and idle() is None
    finally:
        gc.enable()


def test_a_group_is_complete_once_it_adds_its_share_of_new_sellers():
    # New sellers' state lives on: a group that adds many commits early (docs/design.md,
    # "Memory follows the group"), while as many events of known sellers keep it open.
    from cancelwatch.worker import runtime as runtime_module
    from tests.delivery.test_alerting_e2e import Seller

    settings = settings_module.load({**os.environ, "CANCELWATCH_CLOCK": "event"})
    policy = policy_module.load(settings.policy_path)
    limit = runtime_module.GROUP_NEW_SELLERS
    assert limit * 3 < min(runtime_module.GROUP_RECORDS, runtime_module.GROUP_BUCKETS)
    now = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=1)
    sellers = [Seller(f"NEW{n}") for n in range(limit)]
    first = dict_runtime.messages([events.encode(seller.orders(1, now)[0]) for seller in sellers], settings)
    again = dict_runtime.messages([events.encode(order) for seller in sellers
                                   for order in seller.orders(2, now + timedelta(minutes=1))], settings)
    runtime = dict_runtime.runtime(settings, policy)
    runtime.process(first[:-1])
    assert not runtime.group.complete()
    runtime.process(first[-1:])
    assert runtime.group.complete()
    runtime.commit()
    runtime.process(again)        # twice as many events, of the sellers it knows now
    assert not runtime.group.complete()
    assert len(runtime.book) == limit


def test_the_event_clock_is_the_clusters_largest_and_each_commit_publishes_what_it_moved():
    # A worker's own partitions move its clock and are published (Group.clock_writes, sent to
    # the clock topic after the commit); another worker's clock read from that topic moves it
    # too, never backwards; a record that is not a clock is skipped. The cluster's worker
    # processes and the topic itself are in tests/worker/test_worker.py (two workers).
    settings = settings_module.load({**os.environ, "CANCELWATCH_CLOCK": "event"})
    policy = policy_module.load(settings.policy_path)
    runtime = dict_runtime.runtime(settings, policy)
    stream = list(scenarios.generate("steady", 5, start=START, end=START + timedelta(hours=3), sellers=4))
    runtime.process(dict_runtime.messages([events.encode(event) for event in stream], settings))
    group = runtime.commit()
    latest = max(event.occurred_at.timestamp() for event in stream)
    assert group.clock_writes and max(group.clock_writes.values()) == latest == runtime.now()
    assert set(group.clock_writes) == {owner_partition(event.seller_id, settings.partitions) for event in stream}

    feed = feeds.clock_feed(settings, loop=None, on_clock=runtime.peer_clock)
    for partition, seconds, value in [(7, latest + 3600, None), (2, latest - 86400, None), (7, 0, b"soon")]:
        key, encoded = feeds.clock_record(partition, seconds)
        feed.on_record(types.SimpleNamespace(key=key, value=value or encoded))
    assert runtime.now() == latest + 3600

    runtime.process(dict_runtime.messages([events.encode(stream[0])], settings))
    assert runtime.commit().clock_writes == {}     # an older event moves no partition's clock


def test_a_fetch_of_a_revoked_generation_is_stale_until_the_next_assignment():
    # Between a revocation and the next assignment the consumer's generation still reads the old
    # one: a fetch made then would be applied to state rebuilt from every partition the worker
    # had, and its alerts decided for sellers other workers own already.
    settings = settings_module.load({**os.environ, "CANCELWATCH_CLOCK": "event"})
    runtime = dict_runtime.runtime(settings, policy_module.load(settings.policy_path))
    assert not runtime.stale_fetch(1, 1)
    runtime.revoked(1)
    assert runtime.stale_fetch(1, 1), "the generation whose partitions were revoked"
    assert runtime.stale_fetch(1, 2) and not runtime.stale_fetch(2, 2)
    runtime.revoked()               # a revocation that names no generation forgets none
    assert runtime.stale_fetch(1, 1) and not runtime.stale_fetch(2, 2)


def test_sellers_of_a_partition_not_in_the_assignment_decide_no_alert():
    # State of an assignment that is over (partitions handed to another worker) decides nothing:
    # the new owner does, from its own view.
    settings = settings_module.load({**os.environ, "CANCELWATCH_CLOCK": "event"})
    policy = policy_module.load(settings.policy_path)
    first, _ = scenario_events(datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc))
    own = dict_runtime.messages([events.encode(e) for e in first], settings)
    home = own[0].partition
    decided = []
    for owned in (set(range(settings.partitions)) - {home}, set(range(settings.partitions))):
        runtime = dict_runtime.runtime(settings, policy)
        runtime.owned = owned
        dict_runtime.feed(runtime, own, fetch=len(own), on_group=decided.append)
    gone, mine = decided
    assert not gone.fire and not gone.resolve
    assert mine.fire, "the counts must warrant alerts, or the test proves nothing"


def partition_seller(name: str, partition: int, partitions: int) -> str:
    """A seller id starting with `name` that lives on `partition`."""
    return next(f"{name}{n}" for n in range(10_000) if owner_partition(f"{name}{n}", partitions) == partition)


@pytest.mark.stack
def test_the_owner_resolves_the_alerts_of_its_sellers_it_does_not_hold_firing(alertmanager):
    # A previous owner that had not noticed a rebalance yet (or one stopped past its session and
    # resumed) sends alerts after the new owner restored the firing sets: no worker re-sends or
    # resolves them, and Alertmanager would hold them for four re-send periods. The owner's sweep
    # resolves those of its caught-up sellers, of its own deployment, that it does not hold
    # firing; it leaves its own, another deployment's, and those of partitions it holds
    # (catching up) or does not own. Real Alertmanager; the table is a dict (no Kafka).
    from cancelwatch.delivery.alertmanager import AlertSender
    from cancelwatch.core import alerting
    from tests.delivery.test_alertmanager import eventually, with_sender

    settings = settings_module.load({**os.environ, "CANCELWATCH_CLOCK": "event", "CANCELWATCH_APP_ID": "cw-sweep",
                                     "CANCELWATCH_ALERTMANAGER_URL": alertmanager.url})
    other_deployment = settings_module.load({**os.environ, "CANCELWATCH_APP_ID": "cw-elsewhere"})
    policy = policy_module.load(settings.policy_path)
    runtime = dict_runtime.runtime(settings, policy)
    runtime.targets_ready = True
    first, rest = scenario_events(datetime.now(timezone.utc) - timedelta(days=1))
    own = dict_runtime.messages([events.encode(e) for e in first], settings)
    home = own[0].partition
    held, elsewhere = [(home + step) % settings.partitions for step in (1, 2)]
    dict_runtime.feed(runtime, own, fetch=len(own), on_group=runtime.deliver)
    mine = runtime.alerts[("S1", "US")]
    assert mine, "the counts must warrant alerts, or the test proves nothing"
    runtime.catching_up = {held}
    runtime.owned = set(range(settings.partitions)) - {elsewhere}

    def breach(seller: str, deployment=runtime, alertname=names.ALERT_BREACHED) -> alertmanager_module.Alert:
        firing = alerting.Firing({names.LABEL_ALERTNAME: alertname, names.LABEL_SELLER: seller,
                                  names.LABEL_MARKETPLACE: "US", names.LABEL_SEVERITY: names.ALERT_SEVERITY[alertname],
                                  names.LABEL_WINDOW_DAYS: "7"}, {"summary": alertname}, time.time() - 60)
        return deployment.alert(firing)

    gone_seller = partition_seller("GONE", home, settings.partitions)
    other = Runtime(other_deployment, policy)
    assert (names.ALERT_BREACHED, "7") in {(a.labels[names.LABEL_ALERTNAME], a.labels[names.LABEL_WINDOW_DAYS])
                                           for a in mine.values()}
    strays = [breach("S1", alertname=names.ALERT_WARNING), breach(gone_seller)]     # resolved
    left = [breach(partition_seller("FOREIGN", home, settings.partitions), other),
            breach(partition_seller("HELD", held, settings.partitions)),
            breach(partition_seller("THEIRS", elsewhere, settings.partitions))]
    previous = AlertSender([alertmanager.url], resend_seconds=60)

    def active() -> set[str]:
        return {alert["labels"][names.LABEL_SELLER] + "/" + alert["labels"][names.LABEL_ALERTNAME]
                for alert in alertmanager.active()}

    async def scenario():
        for alert in strays + left:
            previous.fire(alert)
        await with_sender(previous, lambda: eventually(lambda: len(active()) == len(mine) + 5, "every alert held"))
        resolved = await runtime.resolve_strays()
        await eventually(lambda: len(active()) == len(mine) + 3, "the strays resolved")
        return resolved
    assert asyncio.run(with_sender(runtime.sender, scenario)) == 2
    expected = {f"S1/{alert.labels[names.LABEL_ALERTNAME]}" for alert in mine.values()}
    assert len(expected) == len(mine), "one alert per name, or the counts above prove nothing"
    expected |= {f"{alert.labels[names.LABEL_SELLER]}/{names.ALERT_BREACHED}" for alert in left}
    assert active() == expected
    assert runtime.metrics.stray_alerts._value.get() == 2
    assert all(parse_qs(urlsplit(alert["generatorURL"]).query)["app_id"] in (["cw-sweep"], ["cw-elsewhere"])
               for alert in alertmanager.active())
