"""Throughput: one pre-filled topic pair, consumed side by side by four designs.

(a) raw aiokafka `getmany` + `json.loads` (the floor), (b) a naive faust
agent (Record + one table update per event), (c) the cancelwatch worker
(event clock, exact counting, durable state), (d) the same per-seller
stateful count in Quix Streams. Each consumes from the start of the topics
until it has processed every message or its time cap is over; the rate is
taken from its first processed event (start-up excluded).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pyspy
from common import (BOOTSTRAP, Worker, delete_topics, delete_topics_tagged, log, prefilled, run_json,
                    spread, tag, wait_processed)

VARIANTS = ("raw_aiokafka", "naive_faust", "cancelwatch_worker", "quix_streams")


def run(sizes: dict, workdir: Path) -> dict:
    orders, cancellations, total = prefilled(sizes["sellers"], sizes["duration"], sizes["events"])
    runs = {name: [] for name in VARIANTS}
    profiled = None
    for repetition in range(sizes["repetitions"]):
        log(f"throughput repetition {repetition + 1}/{sizes['repetitions']} on {total} messages")
        runs["raw_aiokafka"].append(_raw(orders, cancellations, total, sizes["cap_seconds"]))
        runs["naive_faust"].append(_faust(orders, cancellations, total, sizes["faust_cap_seconds"], workdir))
        result, profile_result = _worker(orders, cancellations, total, sizes["worker_cap_seconds"], workdir,
                                         profile_seconds=sizes["profile_seconds"] if repetition == 0 else 0)
        runs["cancelwatch_worker"].append(result)
        profiled = profiled or profile_result
        runs["quix_streams"].append(_quix(orders, cancellations, total, sizes["cap_seconds"], workdir))
        for name in VARIANTS:
            latest = runs[name][-1]
            log(f"  {name}: {latest['events_per_s']:,.0f} events/s ({latest['events']} events "
                f"in {latest['seconds']:.1f}s)")
    rates = {name: spread([r["events_per_s"] for r in results]) for name, results in runs.items()}
    worker = rates["cancelwatch_worker"]["median"]
    return {
        "messages": total, "topics": [orders, cancellations],
        "events_per_s": rates,
        "ratios": {"c/a": worker / rates["raw_aiokafka"]["median"],
                   "c/b": worker / rates["naive_faust"]["median"],
                   "c/d": worker / rates["quix_streams"]["median"]},
        "runs": {name: [{key: value for key, value in r.items() if key != "samples"} for r in results]
                 for name, results in runs.items()},
        "profile": profiled,
        "target_events_per_s": 25000,
        "meets_target": worker >= 25000,
    }


def _raw(orders: str, cancellations: str, total: int, cap: float) -> dict:
    return run_json([sys.executable, "bench/raw_consume.py", BOOTSTRAP, str(total), str(cap), orders,
                     cancellations], timeout=cap + 120)


def _faust(orders: str, cancellations: str, total: int, cap: float, workdir: Path) -> dict:
    app_id = tag("faust")
    result_file = workdir / f"{app_id}.json"
    try:
        run_json([sys.executable, "bench/naive_faust.py", BOOTSTRAP, app_id, str(workdir / app_id),
                  str(total), str(cap), str(result_file), orders, cancellations], timeout=cap + 180)
    except json.JSONDecodeError:
        pass  # the agent exits without printing; its result is in the file
    finally:
        delete_topics_tagged(app_id)
    if not result_file.exists():
        raise RuntimeError(f"the naive faust agent wrote no result ({result_file})")
    return json.loads(result_file.read_text())


def _quix(orders: str, cancellations: str, total: int, cap: float, workdir: Path) -> dict:
    group = tag("quix")
    try:
        return run_json([sys.executable, "bench/quix_count.py", BOOTSTRAP, group, str(workdir / group),
                         str(total), str(cap), orders, cancellations], timeout=cap + 180)
    finally:
        delete_topics_tagged(group)


def _worker(orders: str, cancellations: str, total: int, cap: float, workdir: Path,
            profile_seconds: float = 0) -> tuple[dict, dict | None]:
    worker = Worker(workdir, orders=orders, cancellations=cancellations, clock="event", name="throughput")
    sampler = None
    output = workdir / f"{worker.app_id}.pyspy.txt"
    try:
        worker.start()
        worker.wait_ready()
        if profile_seconds:
            sampler = pyspy.start(worker.pid, profile_seconds, output)
        result = wait_processed([worker], total, cap, poll=0.5)
        return result, pyspy.finish(sampler, output)
    finally:
        worker.stop()
        delete_topics(worker.internal_topics())
