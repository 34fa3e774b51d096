"""Run the benchmark suite on the real local stack; write bench/results.json, bench/README.md
and docs/scaling.md.

    .venv/bin/python bench/run.py                  # full sizes, 3 repetitions (make bench)
    .venv/bin/python bench/run.py --quick          # smoke run: small sizes, 1 repetition
    .venv/bin/python bench/run.py --only latency   # one benchmark, merged into the results
    .venv/bin/python bench/run.py --set state_orders=200000

Needs the stack (`make stack-up`: Kafka on KAFKA_PORT, default 9092; the
brokers benchmark starts a three-broker cluster of its own beside it) and the
bench extra (`pip install -e '.[bench]'`: Quix Streams, confluent-kafka, py-spy).
A quick run writes to bench/raw/ (not committed) unless --output is given.
The pre-filled simulator topics (bench-sim-*) stay on the broker for the next
run; `--drop-topics` deletes them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (RAW, ROOT, BenchError, admin, delete_topics_tagged, log, machine,  # noqa: E402
                    use_worker_source, worker_core)

FULL = {
    # throughput and scale-out: the simulator's topics
    "sellers": 2000, "duration": "2d", "events": 1_100_000, "repetitions": 3,
    "cap_seconds": 45.0, "faust_cap_seconds": 30.0, "worker_cap_seconds": 60.0, "profile_seconds": 30.0,
    "peer_cap_seconds": 150.0, "answer_sample": 50,
    "scaleout_events": 1_100_000, "scaleout_repetitions": 1,
    # one broker or three: the throughput topics on a three-broker cluster of the benchmark's own
    "brokers_repetitions": 3,
    # the worker's own work per event by fleet shape (bench/fleet.py): runs of each shape, events cap
    "fleet_runs": 2, "fleet_events": 0,
    # alert latency
    "crossings": 200, "background_rate": 500.0, "crossing_timeout": 10.0, "crossing_gap": 0.05,
    # memory, series, state and recovery
    "memory_sellers": [10_000, 100_000], "memory_runs": 3, "series_sellers": [1_000, 100_000],
    "state_orders": 1_000_000, "state_ingest_cap_seconds": 600.0, "recovery_cap_seconds": 240.0,
}
QUICK = {
    **FULL,
    "sellers": 200, "events": 100_000, "repetitions": 1, "cap_seconds": 20.0, "faust_cap_seconds": 10.0,
    "worker_cap_seconds": 40.0, "profile_seconds": 10.0, "peer_cap_seconds": 60.0, "scaleout_events": 50_000,
    "brokers_repetitions": 1, "fleet_runs": 1, "fleet_events": 100_000,
    "crossings": 30, "background_rate": 200.0,
    "memory_sellers": [10_000], "memory_runs": 1, "series_sellers": [1_000, 10_000],
    "state_orders": 50_000, "state_ingest_cap_seconds": 180.0, "recovery_cap_seconds": 60.0,
}


def _benchmarks() -> dict:
    import brokers
    import capacity
    import fleet
    import latency
    import scaleout
    import throughput
    return {"throughput": throughput.run, "latency": latency.run, "memory": capacity.memory,
            "state": capacity.state, "scaleout": scaleout.run, "series": capacity.series,
            "brokers": brokers.run, "fleet": fleet.run}


def _override(sizes: dict, assignment: str) -> None:
    key, _, raw = assignment.partition("=")
    if key not in sizes:
        raise SystemExit(f"bench: --set {assignment}: unknown size {key!r}; known: {', '.join(sizes)}")
    current = sizes[key]
    try:
        if isinstance(current, list):
            sizes[key] = [int(part) for part in raw.split(",")]
        else:
            sizes[key] = type(current)(raw)
    except ValueError:
        raise SystemExit(f"bench: --set {assignment}: {raw!r} is not a {type(current).__name__}") from None


def main(argv: list[str]) -> int:
    benchmarks = _benchmarks()
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition (smoke run)")
    parser.add_argument("--only", choices=list(benchmarks), action="append",
                        help="run this benchmark only (repeatable); results are merged into the output")
    parser.add_argument("--set", action="append", default=[], metavar="SIZE=VALUE",
                        help=f"override a size, e.g. state_orders=200000 (sizes: {', '.join(FULL)})")
    parser.add_argument("--worker-ref", default="HEAD",
                        help="run the workers from streams/ as committed at this git ref (default HEAD: "
                             "uncommitted changes are not measured); `working-tree` for the tree as it is")
    parser.add_argument("--drop-topics", action="store_true",
                        help="delete the pre-filled bench-sim-* topics kept on the broker for reuse, then exit")
    parser.add_argument("--output", type=Path, help="results JSON (default bench/results.json; "
                                                    "bench/raw/results-quick.json with --quick)")
    args = parser.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    for assignment in args.set:
        _override(sizes, assignment)
    output = args.output or (RAW / "results-quick.json" if args.quick else ROOT / "bench" / "results.json")
    readme = output.with_name("README.md") if output.parent == ROOT / "bench" else output.with_suffix(".md")
    scaling_page = (ROOT / "docs" / "scaling.md" if output.parent == ROOT / "bench"
                    else output.with_name(f"{output.stem}-scaling.md"))
    try:
        admin()
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="cancelwatch-bench-"))
    if args.worker_ref == "working-tree":
        worker_source = "working tree (including uncommitted changes)"
    else:
        try:
            worker_source = f"commit {use_worker_source(args.worker_ref, workdir / 'source')}"
        except BenchError as error:
            print(f"bench: {error}", file=sys.stderr)
            return 2
    if args.drop_topics:
        delete_topics_tagged("bench-sim-")
        log("deleted the pre-filled bench-sim-* topics")
        return 0
    chosen = args.only or list(benchmarks)
    previous = json.loads(output.read_text()) if args.only and output.exists() else {}
    results = {
        "machine": {**machine(), "worker_source": worker_source, "worker_core": worker_core()},
        "mode": "quick" if args.quick else "full", "sizes": sizes,
        "benchmarks_available": list(benchmarks),
        "results": previous.get("results", {}), "errors": {}, "ran": chosen,
    }
    started = time.monotonic()
    try:
        for name in chosen:
            log(f"== {name}")
            began = time.monotonic()
            try:
                result = benchmarks[name](sizes, workdir)
            except Exception as error:  # noqa: BLE001 - one failed benchmark must not lose the others
                traceback.print_exc()
                results["errors"][name] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
                results["results"].pop(name, None)
                continue
            result["measured_at"] = results["machine"]["date"]
            result["commit"] = results["machine"]["commit"]
            result["cpu_model"] = results["machine"]["cpu_model"]   # runs merged from several sessions differ
            result["seconds"] = round(time.monotonic() - began, 1)
            results["results"][name] = result
            log(f"== {name} done in {result['seconds']:.0f}s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["duration_s"] = round(time.monotonic() - started, 1)
    from report import render
    from scaling import render_scaling
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    readme.write_text(render(results))
    scaling_page.write_text(render_scaling(results))
    log(f"wrote {output}, {readme} and {scaling_page} ({results['duration_s'] / 60:.1f} min)")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
