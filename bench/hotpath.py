"""The worker's own work per event, without Kafka: decode, apply, write, evaluate.

Drives `Runtime` exactly as the agent does (`process` per fetch, `commit` and
`evaluate` per group; `tests/dict_runtime.py`) on the simulator events of the
throughput benchmark, with the table replaced by a dict (no RocksDB, no
changelog, no broker). What it measures is the part of the worker's time its
own code decides, in CPU seconds, so a change to the hot path can be judged
in seconds; the fastest of `--repeat` runs is reported.

    .venv/bin/python bench/hotpath.py [--events N] [--repeat N] [--profile out.prof] [--json] [--rocksdb]
    .venv/bin/python bench/hotpath.py --instructions [--events N] [--json] [--rocksdb]

`--rocksdb` keeps the table in RocksDB instead, as the worker does: the worker's own
`TableStore` over one RocksDB database per partition with the worker's options
(`app.ROCKSDB_OPTIONS`), each group written in one write batch per partition; only the
changelog (a broker) is left out. Its reads and writes are then counted too.

The throughput benchmark runs it beside the worker in each repetition (`--json`), so the
worker's cost per event splits into its own work and the rest (Kafka, RocksDB, changelog).

`--instructions` counts the CPU instructions of one run instead (valgrind's callgrind, with a
fixed hash seed): the same count for the same code and events however busy the machine is,
so two versions of the hot path compare in one figure each, measured one after the other
(run it in each version's tree). The events' decoding into fetched records before the run is
counted in a second process that stops there, and taken off.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cancelwatch import settings as settings_module  # noqa: E402
from cancelwatch.core import policy as policy_module  # noqa: E402
from cancelwatch.worker import app as app_module  # noqa: E402
from tests import dict_runtime  # noqa: E402

FETCH = 1_000     # records per fetch, as the worker's consumer hands them over (app.FETCH_MAX_RECORDS)


class _Partitions:
    """What `TableStore` reads of a faust table's data: one RocksDB database per partition,
    opened as faust opens them, with the worker's options."""

    offset_key = b"__faust\0offset__"

    def __init__(self, directory: Path) -> None:
        from faust.stores.rocksdb import RocksDBOptions

        self.directory = directory
        self.options = RocksDBOptions(**app_module.ROCKSDB_OPTIONS)
        self._dbs: dict = {}

    def _db_for_partition(self, partition: int):
        db = self._dbs.get(partition)
        if db is None:
            db = self._dbs[partition] = self.options.open(self.directory / f"partition-{partition}")
        return db

    def close(self) -> None:
        for db in self._dbs.values():
            db.close()
        self._dbs = {}


class _RocksTable:
    """The state table as `TableStore` and `Runtime.rebuild` see it, without its changelog."""

    def __init__(self, directory: Path) -> None:
        self.data = _Partitions(directory)

    def items(self):
        for db in self.data._dbs.values():
            for key, value in db.items():
                if key != _Partitions.offset_key:
                    yield key, value

    def keys(self):
        return (key for key, _ in self.items())


def _rocksdb_runtime(settings, policy, directory: Path):
    """A runtime whose table is the worker's TableStore over RocksDB in `directory`; returns it
    and the function that writes a group's staged writes (the commit less the changelog)."""
    from cancelwatch.worker.runtime import Runtime
    from cancelwatch.worker.table_store import TableStore

    runtime = Runtime(settings, policy)
    table = _RocksTable(directory)
    runtime.store = store = TableStore(table, runtime.partition_of)
    runtime.rebuild()
    runtime.lag_known = True

    def write(_outbox) -> None:
        staged, store._staged = store._staged, {}
        store._write_local(staged, {})
    return runtime, write, table.data.close


def run(records: list, settings, policy, counts: dict | None = None, rocksdb: bool = False) -> float:
    """CPU seconds to apply `records` to a fresh runtime (its table a dict, or RocksDB in a
    fresh directory). `counts`, when given, receives the groups, the buckets they opened and
    the sellers they left to evaluate (counted once a group, outside the events' work)."""
    directory = Path(tempfile.mkdtemp(prefix="hotpath-rocksdb-")) if rocksdb else None
    on_group = close = None
    if directory is not None:
        runtime, on_group, close = _rocksdb_runtime(settings, policy, directory)
    else:
        runtime = dict_runtime.runtime(settings, policy)
    if counts is not None:
        counts.update(groups=0, buckets=0, sellers=0)
        commit, evaluate = runtime.commit, runtime.evaluate

        def counted_commit():
            counts["groups"] += 1
            counts["buckets"] += len(runtime.group.pending.buckets)
            return commit()

        def counted_evaluate():
            counts["sellers"] += len(runtime.dirty)
            return evaluate()
        runtime.commit, runtime.evaluate = counted_commit, counted_evaluate
    gc.freeze()                                  # as the worker's main does
    gc.set_threshold(app_module.GC_THRESHOLD, 20, 20)
    started = time.process_time()
    dict_runtime.feed(runtime, records, FETCH, on_group)
    elapsed = time.process_time() - started
    gc.unfreeze()
    if directory is not None:
        close()
        shutil.rmtree(directory, ignore_errors=True)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--input", default=str(ROOT / "bench" / "raw" / "sim-2000s-2d-seed1.jsonl"),
                        help="JSON Lines of events (the throughput benchmark's, generated by `make bench`)")
    parser.add_argument("--repeat", type=int, default=1, help="runs; the fastest is reported")
    parser.add_argument("--profile", help="write a cProfile of the runs to this file")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--instructions", action="store_true",
                        help="count the CPU instructions of one run with valgrind instead of timing it")
    parser.add_argument("--rocksdb", action="store_true",
                        help="keep the table in RocksDB through the worker's TableStore (no changelog)")
    parser.add_argument("--no-run", action="store_true", help=argparse.SUPPRESS)   # --instructions' baseline
    args = parser.parse_args()
    if args.instructions:
        return instructions(args)
    settings = settings_module.load({**os.environ, "CANCELWATCH_CLOCK": "event"})
    policy = policy_module.load(settings.policy_path)
    with open(args.input, "rb") as file:
        lines = [line.rstrip(b"\n") for _, line in zip(range(args.events), file)]
    records = dict_runtime.messages(lines, settings)
    if args.no_run:
        return 0
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    counts: dict = {}
    seconds = min(run(records, settings, policy, counts, args.rocksdb) for _ in range(args.repeat))
    touched = (f"; {counts['groups']} groups, {counts['buckets'] / len(records):.2f} buckets opened and "
               f"{counts['sellers'] / len(records):.2f} sellers touched per event")
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    if args.json:
        print(json.dumps({"events": len(records), "cpu_seconds": seconds,
                          "us_per_event": seconds / len(records) * 1e6,
                          "groups": counts["groups"],
                          "buckets_opened_per_event": counts["buckets"] / len(records),
                          "sellers_touched_per_event": counts["sellers"] / len(records)}))
        return 0
    print(f"{len(records)} events in {seconds:.2f} CPU s: {len(records) / seconds:,.0f} events/s, "
          f"{seconds / len(records) * 1e6:.1f} us/event{touched}")
    return 0


def instructions(args) -> int:
    """Count the instructions of one run over `args.events` events: a process that decodes the
    events and runs, less one that only decodes them, both under callgrind at once."""
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
               sys.executable, __file__, "--events", str(args.events), "--input", args.input,
               *(["--rocksdb"] if args.rocksdb else [])]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    try:
        processes = [subprocess.Popen(command + extra, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True, env=env) for extra in ([], ["--no-run"])]
    except FileNotFoundError:
        print("hotpath: --instructions needs valgrind (Debian's package valgrind)", file=sys.stderr)
        return 2
    counts = []
    for process in processes:
        _, stderr = process.communicate()
        found = re.search(r"I\s+refs:\s+([\d,]+)", stderr)
        if process.returncode != 0 or found is None:
            print(f"hotpath: valgrind failed ({process.returncode}):\n{stderr[-2000:]}", file=sys.stderr)
            return 2
        counts.append(int(found.group(1).replace(",", "")))
    with open(args.input, "rb") as file:
        events = sum(1 for _ in zip(range(args.events), file))
    per_event = (counts[0] - counts[1]) / events
    if args.json:
        print(json.dumps({"events": events, "instructions_per_event": round(per_event)}))
    else:
        print(f"{events} events: {per_event:,.0f} instructions per event (callgrind)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
