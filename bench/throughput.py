"""Throughput: one pre-filled topic pair, consumed side by side by five designs.

(a) raw aiokafka `getmany` + `json.loads` (the floor), (b) a naive faust
agent (Record + one table update per event), (c) the cancelwatch worker
(event clock, exact counting, durable state), (d) Quix Streams' minimal
per-seller stateful count, (e) the fair peer: the worker's counting job in
Quix Streams (quix_peer.py). Each consumes from the start of the topics
until it has processed every message or its time cap is over; the rate is
taken from its first processed event (start-up excluded).

Once the worker and the fair peer have each processed every message (in
the first repetition, the worker going on past its cap, unmeasured, if
need be), their answers for a sample of sellers are compared with the
oracle's (answers.py).

In each repetition, beside the worker, `hotpath.py` measures the worker's own
work per event without Kafka (decode, apply, write to a dict, evaluate; CPU
time) on the same events and code, so the worker's cost per event splits into
its own work and the rest (reading Kafka, RocksDB, the changelog, the event
loop): what a faster core could win, and what it could not. And `readers.py`
reads the topics with three Kafka readers (aiokafka as (a), the worker's reader,
librdkafka as Quix), decoding nothing: what each costs a record under the
interpreter lock, so what a worker reading with librdkafka could win.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import answers
import pyspy
from common import (BOOTSTRAP, ThreadClock, ThreadWindow, Worker, delete_topics, delete_topics_tagged, hotpath, log,
                    prefilled, run_json, simulator_cache, spread, tag, wait_processed, worker_source_env)
from readers import READERS

VARIANTS = ("raw_aiokafka", "naive_faust", "cancelwatch_worker", "quix_streams", "quix_peer")
# The fair peer is sampled from this many seconds after its start (its start-up is not measured either).
PEER_PROFILE_DELAY = 3.0
# The Quix runs' threads are timed (ThreadWindow) over this many seconds from that delay on.
PEER_THREADS_SECONDS = 5.0
# How often the worker's count of processed events is read (its end is known to within this).
WORKER_POLL_SECONDS = 0.25
# How long the worker may go on past its time cap, unmeasured, to process every event for the answers.
ANSWERS_WAIT_SECONDS = 300


def run(sizes: dict, workdir: Path) -> dict:
    orders, cancellations, total = prefilled(sizes["sellers"], sizes["duration"], sizes["events"])
    lines = _lines(sizes, total)
    pairs = answers.sample_pairs(lines, sizes["answer_sample"])
    runs = {name: [] for name in VARIANTS}
    hot: list[float] = []
    readers: dict[str, list] = {reader: [] for reader in READERS}
    found = {"quix_peer": None, "cancelwatch_worker": None}
    profiled = peer_profiled = None
    for repetition in range(sizes["repetitions"]):
        log(f"throughput repetition {repetition + 1}/{sizes['repetitions']} on {total} messages")
        runs["raw_aiokafka"].append(_loaded(_raw(orders, cancellations, total, sizes["cap_seconds"])))
        runs["naive_faust"].append(_loaded(_faust(orders, cancellations, total, sizes["faust_cap_seconds"],
                                                  workdir)))
        result, profile_result, worker_found = _worker(
            orders, cancellations, total, sizes["worker_cap_seconds"], workdir,
            profile_seconds=sizes["profile_seconds"] if repetition == 0 else 0,
            pairs=None if found["cancelwatch_worker"] else pairs)
        runs["cancelwatch_worker"].append(_loaded(result))
        hot += _hotpath(sizes, total)
        found["cancelwatch_worker"] = found["cancelwatch_worker"] or worker_found
        profiled = profiled or profile_result
        runs["quix_streams"].append(_loaded(_quix(orders, cancellations, total, sizes["cap_seconds"], workdir)))
        result, peer_found, peer_profile = _peer(
            orders, cancellations, total, sizes["peer_cap_seconds"], workdir, pairs,
            profile_seconds=sizes["profile_seconds"] if repetition == 0 else 0)
        runs["quix_peer"].append(_loaded(result))
        for reader, read in _readers(orders, cancellations, total, sizes["cap_seconds"]).items():
            readers[reader].append(read)
        found["quix_peer"] = found["quix_peer"] or peer_found
        peer_profiled = peer_profiled or peer_profile
        for name in VARIANTS:
            latest = runs[name][-1]
            log(f"  {name}: {latest['events_per_s']:,.0f} events/s ({latest['events']} events "
                f"in {latest['seconds']:.1f}s)")
        for reader in READERS:
            log(f"  reading with {reader}: {readers[reader][-1]['python_us_per_record']:.2f} us a record "
                "under the interpreter lock")
        if hot:
            log(f"  worker's own work without Kafka: {hot[-1]:.1f} us/event (CPU)")
    rates = {name: spread([r["events_per_s"] for r in results]) for name, results in runs.items()}
    worker = rates["cancelwatch_worker"]["median"]
    log(f"comparing answers of {len(pairs)} sampled sellers with the oracle's")
    expected = answers.oracle_answers(lines, pairs, answers.event_clock(lines))
    checked = answers.check(expected, found["quix_peer"], found["cancelwatch_worker"])
    log(f"  answers: {checked}")
    return {
        "messages": total, "topics": [orders, cancellations], "worker_poll_seconds": WORKER_POLL_SECONDS,
        "events_per_s": rates,
        "ratios": {"c/a": worker / rates["raw_aiokafka"]["median"],
                   "c/b": worker / rates["naive_faust"]["median"],
                   "c/d": worker / rates["quix_streams"]["median"],
                   "c/e": worker / rates["quix_peer"]["median"]},
        "answers": checked,
        "hotpath_us_per_event": spread(hot) if hot else None,
        "readers": {reader: {"python_us_per_record": spread([r["python_us_per_record"] for r in results]),
                             "native_us_per_record": spread([r["native_us_per_record"] for r in results]),
                             "events_per_s": spread([r["events_per_s"] for r in results]),
                             "runs": results}
                    for reader, results in readers.items()},
        "runs": {name: [{key: value for key, value in r.items() if key != "samples"} for r in results]
                 for name, results in runs.items()},
        "profile": profiled,
        "peer_profile": peer_profiled,
        "target_events_per_s": 25000,
        "meets_target": worker >= 25000,
    }


def _loaded(result: dict) -> dict:
    """The run's result with the machine's 1-minute load average at its end (the machine is shared)."""
    return {**result, "load_1m": round(os.getloadavg()[0], 2)}


def _lines(sizes: dict, total: int) -> list[bytes]:
    """The simulator events the topics were pre-filled with."""
    with open(simulator_cache(sizes["sellers"], sizes["duration"]), "rb") as file:
        return [line.rstrip(b"\n") for line in file][:total]


def _hotpath(sizes: dict, total: int) -> list[float]:
    """[us per event] of bench/hotpath.py on the topics' events with the code the workers run;
    [] for a commit of the older layout, which it cannot drive."""
    result = hotpath(simulator_cache(sizes["sellers"], sizes["duration"]), total, timeout=900)
    return [result["us_per_event"]] if result else []


def _raw(orders: str, cancellations: str, total: int, cap: float) -> dict:
    return run_json([sys.executable, "bench/raw_consume.py", BOOTSTRAP, str(total), str(cap), orders,
                     cancellations], timeout=cap + 120)


def _readers(orders: str, cancellations: str, total: int, cap: float) -> dict:
    """{reader: result} of bench/readers.py: each Kafka reader's cost per record, side by side."""
    return {reader: run_json([sys.executable, "bench/readers.py", reader, BOOTSTRAP, str(total), str(cap), orders,
                              cancellations], timeout=cap + 120,
                             env=worker_source_env() if reader == "worker" else None)
            for reader in READERS}


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
    window = ThreadWindow(PEER_PROFILE_DELAY, PEER_THREADS_SECONDS)
    try:
        result = run_json([sys.executable, "bench/quix_count.py", BOOTSTRAP, group, str(workdir / group),
                           str(total), str(cap), orders, cancellations], timeout=cap + 180, started=window)
    finally:
        delete_topics_tagged(group)
    return _with_threads(result, window)


def _with_threads(result: dict, window: ThreadWindow) -> dict:
    threads = window.result()
    return {**result, "threads": threads} if threads else result


def _peer(orders: str, cancellations: str, total: int, cap: float, workdir: Path, pairs: list,
          profile_seconds: float = 0) -> tuple[dict, dict | None, dict | None]:
    """A run of the fair peer, its answers for the pairs when it processed every message, and
    its profile (py-spy from PEER_PROFILE_DELAY seconds after its start) when asked for."""
    group = tag("quixpeer")
    sample_file, answers_file = workdir / f"{group}-sample.json", workdir / f"{group}-answers.json"
    sample_file.write_text(json.dumps(pairs))
    output = workdir / f"{group}.pyspy.txt"
    sampler = []

    window = ThreadWindow(PEER_PROFILE_DELAY, PEER_THREADS_SECONDS)

    def started(pid: int) -> None:
        window(pid)
        if profile_seconds:
            time.sleep(PEER_PROFILE_DELAY)
            sampler.append(pyspy.start(pid, profile_seconds, output))

    try:
        result = run_json([sys.executable, "bench/quix_peer.py", BOOTSTRAP, group, str(workdir / group),
                           str(total), str(cap), str(sample_file), str(answers_file), orders, cancellations],
                          timeout=cap + 180, started=started)
    finally:
        delete_topics_tagged(group)
    result = _with_threads(result, window)
    profiled = pyspy.finish(sampler[0], output) if sampler else None
    if result["miskeyed"]:
        raise RuntimeError(f"the fair peer saw {result['miskeyed']} events not keyed by their seller")
    if result["events"] < total:
        return result, None, profiled
    written = json.loads(answers_file.read_text())["answers"]
    return result, {pair: answers.normalize(answer) for pair, answer in written.items()}, profiled


def _worker(orders: str, cancellations: str, total: int, cap: float, workdir: Path,
            profile_seconds: float = 0, pairs: list | None = None) -> tuple[dict, dict | None, dict | None]:
    worker = Worker(workdir, orders=orders, cancellations=cancellations, clock="event", name="throughput")
    sampler = None
    output = workdir / f"{worker.app_id}.pyspy.txt"
    try:
        worker.start()
        worker.wait_ready()
        if profile_seconds:
            sampler = pyspy.start(worker.pid, profile_seconds, output)
        result = wait_processed([worker], total, cap, poll=WORKER_POLL_SECONDS, clock=ThreadClock(worker.pid))
        profile = pyspy.finish(sampler, output)
        complete = result["reached"]
        if pairs and not complete:      # the answers need every event: wait past the cap, not measured
            complete = wait_processed([worker], total, ANSWERS_WAIT_SECONDS, poll=1)["reached"]
        return result, profile, answers.worker_answers(worker.url, pairs) if pairs and complete else None
    finally:
        worker.stop()
        delete_topics(worker.internal_topics())
