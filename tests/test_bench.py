"""The benchmark suite's own logic: profile summing, log timing, size overrides, the report.

The benchmarks themselves run on the real stack through `make bench`; these
tests cover the parts that turn measurements into numbers and tables.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import capacity  # noqa: E402
import pyspy  # noqa: E402
import report  # noqa: E402
import run  # noqa: E402


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
        "sizes": {"repetitions": 3, "cap_seconds": 45, "faust_cap_seconds": 30, "worker_cap_seconds": 60},
        "benchmarks_available": ["throughput", "latency"],
        "errors": {"scaleout": "BenchError: worker exited"},
        "results": {
            "throughput": {
                "messages": 1_100_000,
                "events_per_s": {"raw_aiokafka": _stat(200_000), "naive_faust": _stat(2000),
                                 "cancelwatch_worker": _stat(8000), "quix_streams": _stat(30_000)},
                "ratios": {"c/a": 0.04, "c/b": 4.0, "c/d": 0.27},
                "runs": {name: [{"events": 1000}] for name in
                         ("raw_aiokafka", "naive_faust", "cancelwatch_worker", "quix_streams")},
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
    assert "c/a = 0.040, c/b = 4.00, c/d = 0.27" in text
    assert "**missed** (median 8,000)" in text
    assert "| `decode (streams/cancelwatch/core/events.py)` | 25.0% |" in text
    assert "Book.apply" in text and "_run_once" not in text
    assert "| 200 | 200 | 50 ms | 200 ms | 30 ms | 300 ms | met |" in text
    assert "- scaleout: BenchError: worker exited" in text


def test_targets_table_states_each_target_plainly():
    done = {"latency": {"p99_s": 1.2, "meets_target": False},
            "state": {"orders": 1_000_000, "data_dir_bytes_per_order": 20.0,
                      "restart_after_sigkill_s": 73.2, "restore_wiped_s": None}}
    text = "\n".join(report._targets(done))
    assert "| alert latency p99 | ≤ 1 s | 1200 ms | **missed** |" in text
    assert "| disk per in-window order (1,000,000) | ≤ 200 B | 20 B | met |" in text
    assert "| recovery after SIGKILL (1,000,000 orders) | ≤ 60 s | 73.2 s | **missed** |" in text
    assert "| recovery, data dir wiped (1,000,000 orders) | ≤ 60 s | not within the cap | **missed** |" in text
