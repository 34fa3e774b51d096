"""No false pages: alerts only from a caught-up view (contract section 9), on the real stack.

A worker that starts on a backlog (a multi-day history, duplicates and
reordering on), restarts after a SIGKILL with a backlog built up while it was
down, or takes over another worker's partitions, evaluates partial and uneven
counts until it has caught up. Each test runs the worker against an
Alertmanager with the project's routing and an on-call receiver of its own,
and checks:

- the on-call receiver never gets an alert that both fired and resolved
  (a page that resolves itself is a false page);
- once caught up, the seller alerts active in Alertmanager are exactly those
  the oracle's final counts warrant (breach, warning, headroom; the forecast
  and listing alerts are not in the oracle and are left out of the comparison);
- a live climb after catch-up is still warned before it breaches;
- with two workers, one catching up on a backlog that holds the other's
  sellers' events under other keys: the other worker, caught up on its own
  partitions, sends no alert that fires and resolves while that backlog is read.
"""

from __future__ import annotations

import collections
import signal
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import requests

from cancelwatch import names
from cancelwatch.core import events
from kafka import KafkaProducer
from kafka.partitioner import DefaultPartitioner

from tests.delivery.test_alerting_e2e import (ALERTMANAGER_CONFIG, PROJECT_WEBHOOK, Oncall, Seller, _warning_group_wait,
                                     wait_for)
from tests.delivery.test_alertmanager import LocalAlertmanager
from tests.worker.test_faults import assert_exact
from tests.worker.test_worker import expected_answers, publish, simulated_stream, strip_listing
from tests.test_scaleout import sellers_on_each_partition, spread_over
from tests.workers import Topics, WorkerProcess

pytestmark = pytest.mark.stack

# Alerts stay valid in Alertmanager for 4 re-send periods (2 minutes here): longer than a
# worker stays down or hung in these tests, as with the default of 60 s (4 minutes). That is
# the backlog's publishing (up to about 40 s on this machine), then the session timeout and
# the replacement's recovery. With 10 s (40 s valid) a takeover once started after the first
# worker's alerts had expired: Alertmanager resolved them and the replacement fired them again.
RESEND = "30"
COMPARED = (names.ALERT_BREACHED, names.ALERT_WARNING, names.ALERT_HEADROOM_LOW)
# Alertmanager sends a resolution at the next group_interval (30 s on the seller routes):
# wait that long after catch-up before concluding that nothing fired and resolved.
RESOLUTION_WAIT = 35.0
SESSION = {"CANCELWATCH_SESSION_TIMEOUT_SECONDS": "10"}


class Receiver:
    """An Alertmanager with the project's routing and an on-call receiver, both of the test's own."""

    def __init__(self, directory) -> None:
        self.oncall = Oncall(directory)
        config = ALERTMANAGER_CONFIG.read_text().replace(PROJECT_WEBHOOK, f"127.0.0.1:{self.oncall.port}")
        self.alertmanager = LocalAlertmanager(directory, config)
        self.alertmanager.start()

    def worker(self, topics: Topics, state, port: int | None = None, **env) -> WorkerProcess:
        extra = {"CANCELWATCH_ALERT_RESEND_SECONDS": RESEND, **SESSION, **env}
        return WorkerProcess(topics, state, clock="event", alertmanager_url=self.alertmanager.url,
                             extra_env=extra, port=port)

    def flapped(self, since: datetime | None = None) -> list[tuple]:
        """Alerts the receiver got firing (after `since`) and then resolved: (alertname, seller,
        window, sku). An alert that fired before a catch-up may resolve at its end: its condition
        cleared with the events caught up on; one that fires during a catch-up must not."""
        seen = collections.defaultdict(set)
        for notification in self.oncall.notifications():
            received = datetime.fromisoformat(notification["received_at"])
            for alert in notification["alerts"]:
                if since is not None and received < since and alert["status"] == "firing":
                    continue
                labels = alert["labels"]
                if labels.get(names.LABEL_SELLER):
                    key = (labels[names.LABEL_ALERTNAME], labels[names.LABEL_SELLER],
                           labels.get(names.LABEL_WINDOW_DAYS), labels.get(names.LABEL_SKU))
                    seen[key].add(alert["status"])
        return sorted(key for key, statuses in seen.items() if statuses >= {"firing", "resolved"})

    def seller_alerts(self) -> set[tuple]:
        """Every seller alert active in Alertmanager: (alertname, seller, window, sku)."""
        return {(a["labels"][names.LABEL_ALERTNAME], a["labels"][names.LABEL_SELLER],
                 a["labels"].get(names.LABEL_WINDOW_DAYS), a["labels"].get(names.LABEL_SKU))
                for a in self.alertmanager.active() if a["labels"].get(names.LABEL_SELLER)}

    def active(self) -> set[tuple[str, str, str]]:
        return {(a["labels"][names.LABEL_ALERTNAME], a["labels"][names.LABEL_SELLER],
                 a["labels"][names.LABEL_WINDOW_DAYS])
                for a in self.alertmanager.active() if a["labels"].get(names.LABEL_ALERTNAME) in COMPARED}

    def close(self) -> None:
        self.alertmanager.stop()
        self.oncall.stop()


def warranted(expected: dict) -> set[tuple[str, str, str]]:
    """The breach, warning and headroom alerts the oracle's counts warrant (contract section 9)."""
    wanted = set()
    for (seller, _), answer in expected.items():
        windows = answer["windows"]
        any_breached = any(w["status"] == "breach" for w in windows)
        for w in windows:
            days = str(w["days"])
            if w["status"] == "breach":
                wanted.add((names.ALERT_BREACHED, seller, days))
                continue
            if any_breached:
                continue
            if w["status"] == "warning":
                wanted.add((names.ALERT_WARNING, seller, days))
            if w["cancelled"] >= 1 and w["headroom"] is not None and w["headroom"] <= 1:
                wanted.add((names.ALERT_HEADROOM_LOW, seller, days))
    return wanted


def settle(receiver: Receiver, worker: WorkerProcess, expected: dict, *others: WorkerProcess) -> set:
    """Wait until the worker answers the oracle's counts and Alertmanager holds exactly what they
    warrant; then long enough for any resolution to reach the receiver. On failure, the logs of
    the worker and `others` end the message."""
    assert_exact(worker, strip_listing(expected), timeout=300)
    want = warranted(expected)
    held: list = []

    def holds() -> bool:
        held[:] = [receiver.active()]
        return held[0] == want
    try:
        wait_for(holds, f"Alertmanager holding the {len(want)} alerts the oracle warrants", seconds=90)
    except pytest.fail.Exception as failed:
        active = held[0] if held else set()
        raise AssertionError(f"{failed}; missing: {sorted(want - active)}; "
                             f"not warranted: {sorted(active - want)}\n"
                             + "\n".join(f"-- {each.log_path} (partitions catching up: {catching_up(each)}):\n"
                                         f"{each.tail(60)}" for each in (worker, *others))) from None
    time.sleep(RESOLUTION_WAIT)
    return want


def catching_up(worker: WorkerProcess) -> str:
    """The worker's count of partitions catching up, or why it cannot be read (for a failure message)."""
    try:
        return f"{worker.metric('cancelwatch_partition_catching_up'):.0f}"
    except requests.RequestException as error:
        return f"unknown: {type(error).__name__}"


@pytest.fixture
def receiver(tmp_path):
    receiver = Receiver(tmp_path)
    yield receiver
    receiver.close()


def test_a_worker_starting_on_a_multi_day_backlog_pages_nobody_falsely(kafka_bootstrap, receiver, tmp_path):
    stream = simulated_stream(seed=21, sellers=1000, days=1.5)
    topics = Topics("catchup")
    publish(kafka_bootstrap, topics, stream, seed=21)          # the whole backlog first
    _, expected = expected_answers(stream)
    worker = receiver.worker(topics, tmp_path / "state").start()
    try:
        worker.wait_ready(timeout=180)
        want = settle(receiver, worker, expected)
        assert want, "the history must warrant some alerts, or the test proves nothing"
        assert receiver.flapped() == [], "alerts fired and resolved during the catch-up"
        assert receiver.active() == want

        # A live climb after catch-up is still warned before the breach.
        seller = Seller("LIVE")
        anchor = max(event.occurred_at for event in stream) - timedelta(hours=2)
        placed = seller.orders(100, anchor)
        sends = [*placed] + [seller.cancel(placed[n], anchor + timedelta(minutes=10 * n)) for n in (1, 2, 3)]
        publish(kafka_bootstrap, topics, placed, seed=1)
        for cancel in sends[100:]:
            publish(kafka_bootstrap, topics, [cancel], seed=2)
            time.sleep(_warning_group_wait() + 1.5)
        first = wait_for(lambda: receiver.oncall.first(seller.seller_id, [names.ALERT_BREACHED]),
                         "the live seller's breach at the receiver")
        warned = receiver.oncall.first(seller.seller_id, names.WARNING_FAMILY)
        assert warned is not None and warned[0] < first[0]
    finally:
        worker.stop()


def test_a_restart_after_sigkill_with_a_backlog_pages_nobody_falsely(kafka_bootstrap, receiver, tmp_path):
    stream = simulated_stream(seed=22, sellers=600, days=1.5)
    half = len(stream) // 2
    topics = Topics("catchup-kill")
    publish(kafka_bootstrap, topics, stream[:half], seed=3)        # a backlog at start too
    worker = receiver.worker(topics, tmp_path / "state").start()
    try:
        worker.wait_ready(timeout=180)
        _, expected = expected_answers(stream[:half])
        assert_exact(worker, strip_listing(expected), timeout=300)
        assert receiver.flapped() == [], "alerts fired and resolved during the first catch-up"
        worker.kill()
        publish(kafka_bootstrap, topics, stream[half:], seed=4)     # the backlog built while it was down
        restarted = datetime.now(timezone.utc)
        worker = receiver.worker(topics, tmp_path / "state", port=worker.port).start()
        worker.wait_ready(timeout=180)
        _, expected = expected_answers(stream)
        settle(receiver, worker, expected)
        assert receiver.flapped(since=restarted) == [], \
            "alerts fired and resolved during the catch-up after the restart"
    finally:
        worker.stop()


def test_a_takeover_with_a_backlog_pages_nobody_falsely(kafka_bootstrap, receiver, tmp_path):
    stream = simulated_stream(seed=23, sellers=600, days=1.5)
    half = len(stream) // 2
    topics = Topics("catchup-takeover")
    publish(kafka_bootstrap, topics, stream[:half], seed=5)
    first = receiver.worker(topics, tmp_path / "a").start()
    second = None
    try:
        first.wait_ready(timeout=180)
        _, expected = expected_answers(stream[:half])
        assert_exact(first, strip_listing(expected), timeout=300)
        # The first worker hangs (SIGSTOP) while the rest arrives, then dies: the second worker
        # joins, waits out the first one's session and takes every partition over with a backlog.
        assert receiver.flapped() == [], "alerts fired and resolved during the first catch-up"
        first.process.send_signal(signal.SIGSTOP)
        publish(kafka_bootstrap, topics, stream[half:], seed=6)
        taken_over = datetime.now(timezone.utc)
        second = receiver.worker(topics, tmp_path / "b").start()
        first.kill()
        second.wait_ready(timeout=180)
        _, expected = expected_answers(stream)
        settle(receiver, second, expected)
        assert receiver.flapped(since=taken_over) == [], "alerts fired and resolved during the takeover's catch-up"
    finally:
        first.stop()
        if second is not None:
            second.stop()


def keyed_onto(partitions: set[int], count: int) -> bytes:
    """A message key Kafka's default partitioner puts on one of `partitions`."""
    partitioner, every = DefaultPartitioner(), list(range(count))
    return next(key for key in (f"elsewhere-{n}".encode() for n in range(10_000))
                if partitioner(key, every, every) in partitions)


def test_another_workers_backlog_pages_nobody_falsely(kafka_bootstrap, receiver, tmp_path):
    # Two workers. One hangs (SIGSTOP, well within its session) while the second half of the
    # history arrives, then resumes and catches up. A third of its backlog is keyed by something
    # else than the seller, so it holds events of the other worker's sellers, rerouted to them as
    # it reads them. The other worker is caught up on its own partitions all along: it must hold
    # its alerts while those events keep coming, and decide from the whole counts.
    stream = simulated_stream(seed=24, sellers=300, days=1.0)
    half = len(stream) // 2
    topics = Topics("catchup-peer")
    publish(kafka_bootstrap, topics, stream[:half], seed=7)
    # A session longer than the hang (no rebalance) and alerts valid in Alertmanager for 4 re-sends
    # of 30 s: the hung worker's alerts do not expire meanwhile.
    patient = {"CANCELWATCH_SESSION_TIMEOUT_SECONDS": "120", "CANCELWATCH_ALERT_RESEND_SECONDS": "30"}
    hung = receiver.worker(topics, tmp_path / "a", **patient).start()
    other = receiver.worker(topics, tmp_path / "b", **patient).start()
    try:
        hung.wait_ready(timeout=180)
        other.wait_ready(timeout=180)
        partitions = hung.partitions
        hung_owns, _ = spread_over([hung, other], topics, partitions)
        _, expected = expected_answers(stream[:half])
        assert_exact(other, strip_listing(expected), timeout=300)
        assert receiver.flapped() == [], "alerts fired and resolved during the first catch-up"

        hung.process.send_signal(signal.SIGSTOP)
        # Besides the history: sellers of the other worker with 60 orders of their own, whose two
        # seller-fault cancels (first) and 140 more orders (last) wait in the hung worker's
        # backlog. Read in that order, a partial view breaches them, then clears them.
        crafted = [seller for sellers in sellers_on_each_partition(3, partitions, "PEER").values()
                   for seller in sellers if DefaultPartitioner()(seller.seller_id.encode(), list(range(partitions)),
                                                                 list(range(partitions))) not in hung_owns]
        anchor = max(event.occurred_at for event in stream) - timedelta(hours=3)
        placed = {seller.seller_id: seller.orders(200, anchor) for seller in crafted}
        elsewhere = keyed_onto(hung_owns, partitions)
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=20)
        first = [order for seller in crafted for order in placed[seller.seller_id][:60]]
        cancels = [seller.cancel(placed[seller.seller_id][n], anchor + timedelta(minutes=5 + n))
                   for seller in crafted for n in (0, 1)]
        last = [order for seller in crafted for order in placed[seller.seller_id][60:]]
        for event in first:
            producer.send(topics.orders, key=event.seller_id.encode(), value=events.encode(event))
        for event in cancels:
            producer.send(topics.cancellations, key=elsewhere, value=events.encode(event))
        producer.flush()
        publish(kafka_bootstrap, topics, stream[half:], seed=8)
        for event in last:
            producer.send(topics.orders, key=elsewhere, value=events.encode(event))
        producer.flush()
        producer.close()
        wait_for(lambda: other.metric("cancelwatch_consumer_lag_messages") == 0,
                 "the other worker caught up on its own partitions", seconds=60)
        before = receiver.seller_alerts()
        seen: set = set()
        watching = threading.Event()

        def watch() -> None:
            while not watching.is_set():
                seen.update(receiver.seller_alerts())
                time.sleep(0.1)
        watcher = threading.Thread(target=watch, daemon=True)
        resumed = datetime.now(timezone.utc)
        hung.process.send_signal(signal.SIGCONT)
        watcher.start()
        try:
            _, expected = expected_answers(stream + first + cancels + last)
            want = settle(receiver, other, expected, hung)
        finally:
            watching.set()
            watcher.join()
        final = receiver.seller_alerts()
        assert want, "the history must warrant some alerts, or the test proves nothing"
        # An alert that came up in Alertmanager during the catch-up and went again: a page from
        # partial counts, whether or not Alertmanager's grouping let it reach the receiver.
        assert sorted((seen - before) - final) == [], "alerts fired and resolved while the other worker caught up"
        # At the receiver (an alert active before the resume may be notified after it, at the
        # group's next interval, and resolve: its page came from before this catch-up).
        assert [key for key in receiver.flapped(since=resumed) if key not in before] == [], \
            "alerts fired and resolved while the other worker caught up"
        assert other.metric("cancelwatch_partition_catching_up") == 0
    finally:
        hung.process.send_signal(signal.SIGCONT)
        hung.stop()
        other.stop()
