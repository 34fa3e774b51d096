"""The benchmark suite's own logic: profile summing, log timing, size overrides, the report,
the scaling page (docs/scaling.md) drawn from the results, and the fair peer's counting with the check of its answers against the oracle.

The benchmarks themselves run on the real stack through `make bench`; these
tests cover the parts that turn measurements into numbers and tables, and run
the fair peer once on the broker on a small stream (marked stack).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import answers  # noqa: E402
import capacity  # noqa: E402
import common  # noqa: E402
import pyspy  # noqa: E402
import quix_peer  # noqa: E402
import readers  # noqa: E402
import report  # noqa: E402
import run  # noqa: E402
import scaling  # noqa: E402


class _Finished:
    """py-spy has already exited: communicate returns at once."""

    def communicate(self, timeout=None):
        return b"", b""


def test_profile_sums_self_and_inclusive_shares(tmp_path):
    raw = tmp_path / "samples.txt"
    raw.write_text(
        "<module> (cancelwatch:6);main (streams/cancelwatch/worker/app.py:616);decode (streams/cancelwatch/core/events.py:95) 6\n"
        "<module> (cancelwatch:6);main (streams/cancelwatch/worker/app.py:616);Book.apply (streams/cancelwatch/core/state.py:40) 3\n"
        "<module> (cancelwatch:6);main (streams/cancelwatch/worker/app.py:616) 1\n"
        "garbage line without count\n")
    summary = pyspy.finish(_Finished(), raw)
    assert summary["samples"] == 10
    assert summary["self"][0] == ("decode (streams/cancelwatch/core/events.py)", 0.6)
    assert ("Book.apply (streams/cancelwatch/core/state.py)", 0.3) in summary["self"]
    assert dict(summary["inclusive"])["main (streams/cancelwatch/worker/app.py)"] == 1.0


def test_profile_counts_a_frame_once_per_sample_even_when_recursive(tmp_path):
    raw = tmp_path / "samples.txt"
    raw.write_text("f (a.py:1);f (a.py:2);g (b.py:3) 4\n")
    summary = pyspy.finish(_Finished(), raw)
    assert dict(summary["inclusive"])["f (a.py)"] == 1.0


def test_profile_without_output_is_none(tmp_path):
    assert pyspy.finish(_Finished(), tmp_path / "missing.txt") is None
    assert pyspy.finish(None, tmp_path / "missing.txt") is None


def test_group_wait_is_read_after_the_offset(tmp_path):
    log = tmp_path / "worker.log"
    first = ("[2026-11-27 01:30:00,000] [1] [INFO] Revoking previously assigned partitions set() for group g\n"
             "[2026-11-27 01:30:00,500] [1] [INFO] Setting newly assigned partitions\n")
    second = ("[2026-11-27 01:34:17,353] [2] [INFO] Revoking previously assigned partitions set() for group g\n"
              "[2026-11-27 01:35:14,168] [2] [INFO] Setting newly assigned partitions\n")
    log.write_text(first + second)
    assert capacity._group_wait(log, 0) == pytest.approx(0.5)
    assert capacity._group_wait(log, len(first)) == pytest.approx(56.815)


def test_group_wait_without_assignment_is_none(tmp_path):
    log = tmp_path / "worker.log"
    log.write_text("[2026-11-27 01:34:17,353] [2] [INFO] Revoking previously assigned partitions\n")
    assert capacity._group_wait(log, 0) is None


def test_size_overrides_keep_the_type_and_refuse_unknown_names():
    sizes = dict(run.FULL)
    run._override(sizes, "state_orders=2000")
    run._override(sizes, "memory_sellers=10,20")
    run._override(sizes, "cap_seconds=1.5")
    assert sizes["state_orders"] == 2000
    assert sizes["memory_sellers"] == [10, 20]
    assert sizes["cap_seconds"] == 1.5
    with pytest.raises(SystemExit, match="unknown size"):
        run._override(sizes, "nonsense=1")
    with pytest.raises(SystemExit, match="not a int"):
        run._override(sizes, "state_orders=many")


def test_full_sizes_meet_the_suite_minimums():
    assert run.FULL["events"] >= 1_000_000
    assert run.FULL["repetitions"] == 3
    assert run.FULL["crossings"] >= 100
    assert run.FULL["state_orders"] >= 1_000_000
    assert {10_000, 100_000} <= set(run.FULL["memory_sellers"])
    assert run.FULL["series_sellers"] == [1_000, 100_000]


def _stat(value):
    return {"median": value, "min": value * 0.9, "max": value * 1.1, "runs": [value]}


def test_report_shows_measurements_and_missed_targets():
    results = {
        "machine": {"nproc": 2, "cpu_model": "AMD EPYC", "ram_gib": 23.5, "kernel": "6.1", "python": "3.11.7",
                    "date": "2026-11-27T01:00:00Z", "commit": "abc1234"},
        "mode": "full", "duration_s": 1200,
        "sizes": {"repetitions": 3, "cap_seconds": 45, "faust_cap_seconds": 30, "worker_cap_seconds": 60,
                  "peer_cap_seconds": 150},
        "benchmarks_available": ["throughput", "latency"],
        "errors": {"scaleout": "BenchError: worker exited"},
        "results": {
            "throughput": {
                "messages": 1_100_000,
                "events_per_s": {"raw_aiokafka": _stat(200_000), "naive_faust": _stat(2000),
                                 "cancelwatch_worker": _stat(8000), "quix_streams": _stat(30_000),
                                 "quix_peer": _stat(4000)},
                "ratios": {"c/a": 0.04, "c/b": 4.0, "c/d": 0.27, "c/e": 2.0},
                "runs": {name: [{"events": 1000}] for name in
                         ("raw_aiokafka", "naive_faust", "cancelwatch_worker", "quix_streams", "quix_peer")},
                "answers": {"pairs": 50, "sellers_with_cancels": 20,
                            "quix_peer": {"checked": True, "differing": 1, "examples": ["A1/US: expected x, got y"]},
                            "cancelwatch_worker": {"checked": True, "differing": 0, "examples": []}},
                "profile": {"samples": 100, "self": [("decode (streams/cancelwatch/core/events.py)", 0.25)],
                            "inclusive": [("BaseEventLoop._run_once (asyncio/base_events.py)", 0.9),
                                          ("Book.apply (streams/cancelwatch/core/state.py)", 0.3)]},
                "meets_target": False,
            },
            "latency": {"crossings": 200, "observed": 200, "missed": 0, "background_events_per_s": 500,
                        "p50_s": 0.05, "p99_s": 0.2, "min_s": 0.03, "max_s": 0.3, "meets_target": True},
        },
    }
    text = report.render(results)
    assert "2 cores (AMD EPYC), 23.5 GiB RAM" in text
    assert "commit `abc1234`" in text
    assert "| (c) cancelwatch worker (exact counts, durable state) | 8,000 | 7,200 – 8,800 |" in text
    assert "c/a = 0.040, c/b = 4.00, c/d = 0.27, c/e = 2.00." in text
    assert "| (e) Quix Streams, the same job: order records, 7-day buckets, counting rules (RocksDB) | 4,000 |" in text
    assert "- (c) cancelwatch worker: all 50 equal the oracle's" in text
    assert "- (e) Quix Streams, the same job: **1 of 50 differ** from the oracle's, e.g. A1/US: expected x" in text
    assert "**missed** (median 8,000)" in text
    assert "| `decode (streams/cancelwatch/core/events.py)` | 25.0% |" in text
    assert "Book.apply" in text and "_run_once" not in text
    assert "| 200 | 200 | 50 ms | 200 ms | 30 ms | 300 ms | met |" in text
    assert "- scaleout: BenchError: worker exited" in text


def _threads(main, other, rocksdb=0.1, machine=1.2):
    return {"wall_seconds": 17.0, "main": main, "other_threads": other, "rocksdb": rocksdb,
            "machine_busy_cores": machine}


def test_the_report_says_the_lock_bounds_the_worker_only_when_its_threads_fill_it():
    bound = {"runs": {"cancelwatch_worker": [{"threads": _threads(0.78, 0.19)}, {"threads": _threads(0.81, 0.18)},
                                             {"events": 1000}],
                      "quix_streams": [{"threads": _threads(1.0, 0.03, rocksdb=0.02, machine=1.07)}]}}
    text = "\n".join(report._threads(bound))
    assert "| thread | (c) worker | (d) Quix, minimal |" in text and "(e) Quix" not in text
    assert "| the other threads, RocksDB's left out | 0.18 | 0.03 |" in text
    assert "| main and other together | 0.98 | 1.03 |" in text
    assert "| RocksDB's threads (flushes, compactions) | 0.10 | 0.02 |" in text
    assert "| the whole machine, broker included (cores busy) | 1.20 | 1.07 |" in text
    assert "The worker's main and other threads together, by run: 0.97, 0.99." in text
    assert "the Quix runs' over 17 s of their run, start-up left out." in text
    assert "bound by\nits Python work per event" in text
    waiting = {"runs": {"cancelwatch_worker": [{"threads": _threads(0.5, 0.1)}]}}
    text = "\n".join(report._threads(waiting))
    assert "| main and other together | 0.60 |" in text and "Python work per event" not in text
    assert report._threads({"runs": {"cancelwatch_worker": [{"events": 1000}]}}) == []


def test_a_thread_window_times_a_helper_process_and_reads_none_once_it_ended():
    import subprocess
    import time

    busy = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"])
    window = common.ThreadWindow(0.2, 0.5)
    window(busy.pid)
    shares = window.result()
    assert shares is not None and shares["main"] > 0.0 and shares["wall_seconds"] >= 0.5
    assert shares["after_seconds"] == 0.2
    assert "from 0 s after their start" in report._window([shares])
    busy.wait()
    short = subprocess.Popen([sys.executable, "-c", "pass"])
    late = common.ThreadWindow(0.5, 0.2)
    late(short.pid)
    short.wait()
    time.sleep(0.1)
    assert late.result() is None


def test_the_thread_clock_tells_the_main_thread_from_the_others():
    """A real process (this one): a Python thread that spins shows as another thread's CPU."""
    import threading
    import time

    stop = threading.Event()

    def spin():
        while not stop.is_set():
            sum(range(1000))

    clock = common.ThreadClock(__import__("os").getpid())
    clock.start()
    spinner = threading.Thread(target=spin)
    spinner.start()
    time.sleep(0.5)
    shares = clock.stop()
    stop.set()
    spinner.join()
    assert shares["wall_seconds"] >= 0.5
    assert shares["other_threads"] > 0.0
    assert shares["rocksdb"] == 0.0
    assert shares["machine_busy_cores"] >= shares["main"] + shares["other_threads"] - 0.2


def test_the_readers_tell_python_threads_from_librdkafkas():
    """This process's threads: one renamed as librdkafka names its own ("rdk:...", through
    /proc) counts as native; the main thread counts as Python."""
    import os
    import threading
    import time

    stop, named = threading.Event(), threading.Event()

    def spin():
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as comm:
            comm.write("rdk:bench-test")
        named.set()
        while not stop.is_set():
            sum(range(1000))

    python_before, native_before = readers.thread_seconds()
    spinner = threading.Thread(target=spin)
    spinner.start()
    named.wait(5)
    # /proc counts CPU in clock ticks: spin until both kinds have one (a busy machine may
    # give either thread little CPU for a while), for at most 20 s
    deadline = time.monotonic() + 20
    while True:
        end = time.monotonic() + 0.2
        while time.monotonic() < end:
            sum(range(1000))
        python_after, native_after = readers.thread_seconds()
        if (native_after > native_before and python_after > python_before) or time.monotonic() > deadline:
            break
    stop.set()
    spinner.join()
    assert native_after - native_before > 0.0
    assert python_after - python_before > 0.0
    assert os.getpid() in {int(tid) for tid in os.listdir("/proc/self/task")}


def test_a_reader_is_measured_from_its_first_records_to_its_end():
    meter = readers.Meter(target=100, cap=60.0)
    meter.add(0)
    assert meter.first is None and not meter.done()
    meter.add(60)
    assert meter.first is not None and not meter.done()
    meter.add(40)
    assert meter.done()
    end = meter.end
    assert meter.done() and meter.end is end        # measured once, when it ended
    result = meter.result("worker")
    assert result["events"] == 100 and result["reader"] == "worker"
    assert result["python_us_per_record"] >= 0.0 and result["native_us_per_record"] >= 0.0
    capped = readers.Meter(target=10**9, cap=0.0)
    capped.add(1)
    __import__("time").sleep(0.01)
    assert capped.done() and capped.result("aiokafka")["events"] == 1


def _read(name: str, python: float, native: float = 0.0) -> dict:
    return {"python_us_per_record": {"median": python, "min": python, "max": python},
            "native_us_per_record": {"median": native, "min": native, "max": native},
            "events_per_s": {"median": 400_000.0}}


def test_the_report_shows_what_a_librdkafka_reader_would_win_at_best():
    rates = {"cancelwatch_worker": 50_000.0, "quix_streams": 52_000.0, "quix_peer": 30_000.0,
             "raw_aiokafka": 200_000.0}
    t = {"events_per_s": {name: {"median": rate} for name, rate in rates.items()},
         "readers": {"aiokafka": _read("aiokafka", 4.0), "worker": _read("worker", 2.5),
                     "librdkafka": _read("librdkafka", 1.5, native=0.7)}}
    text = "\n".join(report._readers(t))
    assert "| librdkafka (confluent-kafka `consume`), as Quix Streams reads | 1.50 (1.50 – 1.50) | " \
           "0.70 (0.70 – 0.70) | 400,000 |" in text
    # 20 µs an event, 1 µs of it saved: 19 µs, 52,632 events/s
    assert "would save 1.00 µs of its 20.0 µs an event" in text
    assert "best 52,632 events/s: c/d = 1.01 (target 1), c/e = 1.75 (target 2), c/a = 0.26 (target 0.35)." in text
    assert report._readers({"events_per_s": t["events_per_s"]}) == []


@pytest.mark.stack
def test_each_kafka_reader_reads_every_record(kafka_bootstrap, kafka_topic):
    """bench/readers.py on the broker: each of the three readers reads every record once."""
    from kafka import KafkaProducer

    topic = kafka_topic(prefix="readers")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=20)
    for number in range(2000):
        producer.send(topic, key=b"%d" % (number % 13), value=b'{"n":%d}' % number)
    producer.flush()
    producer.close()
    for reader in readers.READERS:
        run = subprocess.run([sys.executable, str(BENCH / "readers.py"), reader, kafka_bootstrap, "2000", "60",
                              topic], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        result = json.loads(run.stdout.splitlines()[-1])
        assert result["reader"] == reader and result["events"] == 2000
        if reader != "librdkafka":
            assert result["native_us_per_record"] == 0.0      # no native threads: all under the lock
    refused = subprocess.run([sys.executable, str(BENCH / "readers.py"), "kafka-python", kafka_bootstrap, "1", "1",
                              topic], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "READER must be one of aiokafka, worker, librdkafka" in refused.stderr


def test_the_burst_bounds_are_read_from_the_code_the_workers_run():
    from cancelwatch.worker import app, runtime

    bounds = common.worker_bounds()
    assert bounds == {"group_buckets": runtime.GROUP_BUCKETS, "group_new_sellers": runtime.GROUP_NEW_SELLERS,
                      "fetch_records": app.FETCH_MAX_RECORDS}
    clause = report._burst_bounds(bounds)
    assert f"a group holds at most {runtime.GROUP_BUCKETS:,} decoded buckets and adds at most " in clause
    assert clause.endswith(f"two fetches of {app.FETCH_MAX_RECORDS:,} records are alive; ")
    assert report._burst_bounds({"group_buckets": 10, "group_new_sellers": None, "fetch_records": None}) == \
        "a group holds at most 10 decoded buckets; "
    assert report._burst_bounds({}) == ""


class _Counting:
    """A worker as wait_processed polls it: its count of processed events grows by 100 a poll."""

    log_path = "-"

    def __init__(self) -> None:
        self.count = 0

    def alive(self) -> None:
        pass

    def processed(self) -> float:
        self.count += 100
        return self.count - 100


def test_the_threads_are_timed_over_the_span_the_rate_is_taken_from():
    result = common.wait_processed([_Counting()], 500, timeout=5, poll=0.05,
                                   clock=common.ThreadClock(__import__("os").getpid()))
    assert result["reached"] and result["events"] == 500
    assert abs(result["threads"]["wall_seconds"] - result["seconds"]) < 0.05
    assert set(result["threads"]) == {"wall_seconds", "main", "other_threads", "rocksdb", "machine_busy_cores"}
    unreached = common.wait_processed([_Counting()], 10_000, timeout=0.2, poll=0.05,
                                      clock=common.ThreadClock(__import__("os").getpid()))
    assert not unreached["reached"] and "threads" not in unreached


def test_targets_table_states_each_target_plainly():
    done = {"latency": {"p99_s": 1.2, "meets_target": False},
            "state": {"orders": 1_000_000, "data_dir_bytes_per_order": 20.0,
                      "restart_after_sigkill_s": 73.2, "restore_wiped_s": None}}
    text = "\n".join(report._targets(done))
    assert "| alert latency p99 | ≤ 1 s | 1200 ms | **missed** |" in text
    assert "| disk per in-window order (1,000,000) | ≤ 200 B | 20 B | met |" in text
    assert "| recovery after SIGKILL (1,000,000 orders) | ≤ 60 s | 73.2 s | **missed** |" in text
    assert "| recovery, data dir wiped (1,000,000 orders) | ≤ 60 s | not within the cap | **missed** |" in text


# --- the scaling page (bench/scaling.py, docs/scaling.md) -------------------------------------

def _measured_results() -> dict:
    return json.loads(scaling.RESULTS.read_text())


def _cells(page: str, start: str) -> list[str]:
    """The cells of the table row that starts with `start` (its first cells)."""
    row = next(line for line in page.splitlines() if line.startswith(start))
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_the_scaling_page_is_drawn_from_the_committed_results():
    assert scaling.PAGE.read_text() == scaling.render_scaling(_measured_results()), \
        "docs/scaling.md differs from bench/results.json: regenerate it with .venv/bin/python bench/scaling.py"


@pytest.mark.parametrize("missing, row", [
    ("throughput", "| one worker process (4 partitions), median |"),
    ("scaleout", "| scale-out: two workers over one |"),
    ("brokers", "| three brokers over one |"),
    ("memory", "| RSS of a worker idle (started, ready, no events) |"),
    ("state", "| restore with the data dir wiped (from the changelog) |"),
])
def test_a_result_missing_from_the_file_reads_not_measured(missing, row):
    results = _measured_results()
    del results["results"][missing]
    page = scaling.render_scaling(results)
    assert _cells(page, row)[1] == "not measured"
    if missing == "throughput":
        assert "Rate per worker not measured: no fleet sized." in page


def test_nothing_measured_still_renders():
    results = _measured_results()
    results["results"] = {}
    page = scaling.render_scaling(results)
    assert "| 1,000 | 50 | 1,650,000 | not measured | not measured | not measured |" in page


def test_the_fleet_figures_follow_the_measured_rate_and_restore():
    results = _measured_results()
    results["results"].pop("fleet", None)   # sized at the measured rate alone (the estimate: below)
    worker = results["results"]["throughput"]["events_per_s"]["cancelwatch_worker"]
    state = results["results"]["state"]
    worker["median"], state["orders"], state["restore_wiped_s"] = 1_000.0, 1_000_000, 20.0
    slow = scaling.render_scaling(results)
    worker["median"], state["restore_wiped_s"] = 2_000.0, 40.0
    fast = scaling.render_scaling(results)
    assert _cells(slow, "| one worker process")[1].startswith("1,000 events/s")
    assert _cells(fast, "| one worker process")[1].startswith("2,000 events/s")
    # 1,000,000 sellers at 500 orders a day: 9,458 events/s, a worker planned at half its rate
    assert _cells(slow, "| 1,000,000 | 500 | 9,458 |")[3:6] == ["1,000 events/s", "19", "19"]
    assert _cells(fast, "| 1,000,000 | 500 | 9,458 |")[3:6] == ["2,000 events/s", "10", "10"]
    assert _cells(slow, "| restore with the data dir wiped (from the changelog) |")[1] == "20.0 s"
    assert _cells(fast, "| restore with the data dir wiped (from the changelog) |")[1] == "40.0 s"
    # 1,000 sellers at 50 orders a day keep 1,650,000 orders over the 33-day retention
    assert _cells(slow, "| 1,000 | 50 | 1,650,000 |")[5] == "33.0 s"
    assert _cells(fast, "| 1,000 | 50 | 1,650,000 |")[5] == "66.0 s"


def test_events_per_order_is_the_simulator_mix():
    assert scaling.EVENTS_PER_ORDER == pytest.approx(1_100_000 / 673_042)
    assert round(scaling.EVENTS_PER_ORDER, 2) == 1.63


# --- the fair peer (bench/quix_peer.py) and the check of its answers (bench/answers.py) ---------

def _event(kind: str, order_id: str, *, seller: str = "EDGE1", channel: str = "MFN",
           purchase: str = "2026-11-17T05:10:00Z", occurred: str = "2026-11-17T06:00:00Z",
           event_id: str | None = None, **extra) -> bytes:
    import orjson
    return orjson.dumps({"schema_version": 1, "type": kind, "event_id": event_id or f"{kind}-{order_id}",
                         "order_id": order_id, "seller_id": seller, "marketplace": "US",
                         "fulfillment_channel": channel, "purchase_date": purchase, "occurred_at": occurred,
                         **extra})


def _placed(order_id: str, status: str = "Unshipped", **fields) -> bytes:
    return _event("order_placed", order_id, order_status=status, **fields)


def _cancel(order_id: str, initiator: str = "seller", reason: str = "NoInventory", requested: bool = False,
            status: str = "Unshipped", **fields) -> bytes:
    return _event("order_cancelled", order_id, initiator=initiator, reason=reason, buyer_requested=requested,
                  order_status_at_cancel=status, **fields)


# One seller's orders, each hitting a counting rule of contract section 4.
EDGE_CASES = [
    _placed("o1"), _placed("o1"),                                          # a re-sent duplicate counts once
    _placed("o2", items=[{"sku": "A", "quantity": 1}, {"sku": "B", "quantity": 1}]),
    _cancel("o2", items=[{"sku": "A", "quantity": 1}], event_id="c-o2-a"),  # two item-level cancels:
    _cancel("o2", items=[{"sku": "B", "quantity": 1}], event_id="c-o2-b"),  # one cancelled order
    _placed("o3"), _cancel("o3", reason="BuyerCanceled", requested=True),  # the buyer's request: excluded
    _placed("o4", "Pending"),                                              # cancelled while Pending:
    _cancel("o4", "amazon", "PaymentNotCompleted", status="Pending"),      # not an order at all
    _placed("o5", channel="AFN"), _cancel("o5", channel="AFN"),            # FBA: ignored
    _cancel("o6"),                                                         # known only from its cancel
    _placed("o7", purchase="2026-11-17T05:10:00Z"),                        # an earlier purchase date
    _event("order_status_changed", "o7", purchase="2026-11-17T03:59:00Z", order_status="Shipped"),
    _placed("o8"), _cancel("o8", "amazon", "ShipmentNotConfirmed"),        # Amazon's auto-cancel counts
    _placed("o9"), _cancel("o9", "buyer", "BuyerCanceled"),                # buyer-initiated: excluded
    _placed("o10"), _cancel("o10", reason="BuyerCanceled"),                # no request through Amazon: counts
    _placed("o11", purchase="2026-11-09T05:00:00Z"),                       # out of the 7-day window
]


class _DictState:
    """Quix's State over a dict, one seller's scope; values JSON-serialized as Quix's default."""

    def __init__(self, store: dict, seller: str) -> None:
        self.store, self.seller = store, seller

    def get(self, key, default=None):
        value = self.store.get((self.seller, key))
        return default if value is None else json.loads(value)

    def set(self, key, value) -> None:
        self.store[(self.seller, key)] = json.dumps(value)

    def get_bytes(self, key, default=None):
        return self.store.get((self.seller, key), default)

    def set_bytes(self, key, value: bytes) -> None:
        self.store[(self.seller, key)] = value


def _peer_stream(tmp_path) -> list[bytes]:
    """A small simulator run (eight days, so orders age out of the window) and the edge cases."""
    path = tmp_path / "sim.jsonl"
    subprocess.run([str(Path(sys.executable).parent / "cancelwatch"), "simulate", "--scenario", "buyer-requests",
                    "--seed", "4", "--sellers", "12", "--start", "2026-11-10T00:00:00Z", "--duration", "8d",
                    "--duplicates", "0.05", "--reorder", "0.02", "--output", str(path)],
                   check=True, capture_output=True)
    return path.read_bytes().splitlines() + EDGE_CASES


def _run_peer(peer, lines: list[bytes]) -> None:
    from cancelwatch import names
    from cancelwatch.core import events
    store: dict = {}
    for line in lines:
        role = names.CANCELLATIONS_TOPIC if b'"order_cancelled"' in line else names.ORDERS_TOPIC
        event = events.decode_on(role, line)
        peer.record(event, _DictState(store, event.seller_id))


def test_fair_peer_answers_as_the_oracle(tmp_path):
    lines = _peer_stream(tmp_path)
    pairs = answers.sample_pairs(lines, 12) + [("EDGE1", "US")]
    peer = quix_peer.Peer(common.default_policy(), set(pairs))
    _run_peer(peer, lines)
    assert peer.clock == answers.event_clock(lines)
    expected = answers.oracle_answers(lines, pairs, peer.clock)
    found = {pair: answers.normalize(answer) for pair, answer in peer.answers().items()}
    # o1 o2 o3 o6 o7 o8 o9 o10 are orders; o2 o6 o8 o10 seller-fault cancelled
    assert found["EDGE1/US"] == expected["EDGE1/US"] == {
        "windows": [[7, 8, 4]], "reasons": {"BuyerCanceled": 1, "NoInventory": 2, "ShipmentNotConfirmed": 1},
        "excluded": {"buyer_initiated": 1, "buyer_requested": 1, "pending": 1}}
    checked = answers.check(expected, found, None)
    assert checked["quix_peer"] == {"checked": True, "differing": 0, "examples": []}
    assert checked["sellers_with_cancels"] >= 5


def test_answer_check_names_the_seller_a_wrong_peer_miscounts(tmp_path):
    class CountsBuyerRequests(quix_peer.Peer):
        """Counts a cancel on the buyer's request against the seller, as Amazon does not."""

        def record(self, event, state):
            if getattr(event, "buyer_requested", False):
                event = msgspec.structs.replace(event, buyer_requested=False)
            super().record(event, state)

    lines = EDGE_CASES
    pairs = [("EDGE1", "US")]
    peer = CountsBuyerRequests(common.default_policy(), set(pairs))
    _run_peer(peer, lines)
    found = {pair: answers.normalize(answer) for pair, answer in peer.answers().items()}
    checked = answers.check(answers.oracle_answers(lines, pairs, peer.clock), found, found)
    assert checked["quix_peer"]["differing"] == 1
    assert checked["quix_peer"]["examples"][0].startswith("EDGE1/US: expected {'windows': [[7, 8, 4]]")
    assert "[[7, 8, 5]]" in checked["quix_peer"]["examples"][0]


@pytest.mark.stack
def test_fair_peer_in_quix_answers_as_the_oracle(kafka_bootstrap, kafka_topic, tmp_path):
    """bench/quix_peer.py on the broker: a small stream, every message processed, answers exact."""
    from kafka import KafkaProducer

    lines = _peer_stream(tmp_path)
    orders, cancellations = kafka_topic(prefix="peer-orders"), kafka_topic(prefix="peer-cancellations")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=20)
    for line in lines:
        topic = cancellations if b'"order_cancelled"' in line else orders
        producer.send(topic, key=json.loads(line)["seller_id"].encode(), value=line)
    producer.flush()
    producer.close()
    pairs = answers.sample_pairs(lines, 12) + [("EDGE1", "US")]
    sample, written = tmp_path / "sample.json", tmp_path / "answers.json"
    sample.write_text(json.dumps(pairs))
    group = common.tag("test-peer")
    try:
        run = subprocess.run([sys.executable, str(BENCH / "quix_peer.py"), kafka_bootstrap, group,
                              str(tmp_path / "state"), str(len(lines)), "60", str(sample), str(written),
                              orders, cancellations], capture_output=True, text=True, timeout=180)
    finally:
        common.delete_topics_tagged(group)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["events"] == len(lines) and result["miskeyed"] == 0
    peer = json.loads(written.read_text())
    expected = answers.oracle_answers(lines, pairs, answers.event_clock(lines))
    found = {pair: answers.normalize(answer) for pair, answer in peer["answers"].items()}
    assert answers.differences(expected, found) == []


def test_a_worker_of_many_sellers_is_sized_at_the_rate_estimated_for_them():
    # 1,000 us an event in all at the throughput replay, of which 10 us its own work; 30 us of
    # own work with many sellers: 1,020 us an event, 980 events/s, for a worker holding more
    # sellers than the replay's 2,000.
    results = _measured_results()
    results["results"]["throughput"]["events_per_s"]["cancelwatch_worker"]["median"] = 1_000.0
    results["results"]["fleet"] = {
        "shapes": {"throughput": {"sellers": 2_000, "us_per_event": {"median": 10.0}},
                   "many_sellers": {"sellers": 20_000, "us_per_event": {"median": 30.0}}},
        "ratios": {"throughput": 1.0, "many_sellers": 3.0}}
    page = scaling.render_scaling(results)
    assert _cells(page, "| one worker, estimated for more than 2,000 sellers a worker")[1] == "980 events/s"
    assert _cells(page, "| many sellers over the throughput replay")[1] == "3.00×"
    # 1,000 sellers a worker: the measured rate; 1,000,000 sellers: the estimate (9,458 / 490 -> 20 workers)
    assert _cells(page, "| 1,000 | 500 | 9.5 |")[3:5] == ["1,000 events/s", "1"]
    assert _cells(page, "| 1,000,000 | 500 | 9,458 |")[3:5] == ["980 events/s", "20"]


def test_the_report_shows_each_fleet_shape_beside_the_throughput_replay():
    results = _measured_results()
    shape = {"duration": "4h", "events": 718_307, "buckets_opened_per_event": 0.46,
             "sellers_touched_per_event": 0.45, "us_per_event": {"median": 25.0, "runs": [24.0, 26.0]}}
    results["results"]["fleet"] = {
        "shapes": {"throughput": {**shape, "sellers": 2_000, "us_per_event": {"median": 12.5, "runs": [12.5]}},
                   "many_sellers": {**shape, "sellers": 20_000}},
        "ratios": {"throughput": 1.0, "many_sellers": 2.0}}
    page = report.render(results)
    assert "## Fleet shape: the worker's own work per event" in page
    assert "| many sellers, each seldom | 20,000 | 4h | 718,307 | 25.0 (24.0, 26.0) | 0.46 | 0.45 | 2.00× |" in page


@pytest.mark.slow
def test_hotpath_counts_the_instructions_of_the_run_alone(tmp_path):
    # Real valgrind on a small simulator stream: the Python start-up and the decoding into fetched
    # records (billions of instructions) are taken off, so what is left is the run's tens of
    # thousands of instructions per event.
    lines = _peer_stream(tmp_path)[:1000]
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    result = subprocess.run([sys.executable, str(BENCH / "hotpath.py"), "--instructions", "--events", "1000",
                             "--input", str(events), "--json"], check=True, capture_output=True, text=True)
    found = json.loads(result.stdout)
    assert found["events"] == 1000
    assert 5_000 < found["instructions_per_event"] < 500_000
