"""The worker's own work per event by the shape of the fleet, side by side in one run.

The throughput benchmark replays 2,000 sellers over two days: a group of 20,000 events
touches a few hundred sellers, so each seller's evaluation and each bucket's write are
shared by many events, and no seller holds a full 7-day window. A fleet's shape moves
both. This benchmark runs `bench/hotpath.py` (decode, apply, write to a dict, evaluate;
CPU seconds, no Kafka) with the workers' code on three simulator replays, alternating them
`fleet_runs` times:

- `throughput`: the throughput benchmark's events (2,000 sellers, 2 days);
- `many_sellers`: 20,000 sellers over 4 hours: most events touch a seller and a bucket no
  other event of their group touches;
- `long_history`: 200 sellers over 8 days: every seller's 7-day window full of buckets.

It records, per shape, the median µs per event and, from the same runs, the buckets a
group opened and the sellers it left to evaluate, per event: what the cost follows.
docs/scaling.md turns the ratio to the throughput shape into a rate per worker for a fleet
of many sellers.
"""

from __future__ import annotations

from common import ROOT, BenchError, hotpath, log, simulator_cache, spread

# name -> (sellers, simulated duration, events replayed: None for all)
SHAPES = {
    "throughput": None,     # the throughput benchmark's sizes
    "many_sellers": (20_000, "4h", None),
    "long_history": (200, "8d", None),
}


ALL_EVENTS = 10**9       # hotpath.py reads this many lines at most: the whole file


def _shapes(sizes: dict) -> dict:
    shapes = dict(SHAPES)
    shapes["throughput"] = (sizes["sellers"], sizes["duration"], sizes["events"])
    cap = sizes.get("fleet_events")
    return {name: (sellers, duration, min(filter(None, (events, cap)), default=None))
            for name, (sellers, duration, events) in shapes.items()}


def run(sizes: dict, workdir) -> dict:
    shapes = _shapes(sizes)
    paths = {name: simulator_cache(sellers, duration) for name, (sellers, duration, _) in shapes.items()}
    runs: dict[str, list[dict]] = {name: [] for name in shapes}
    for repetition in range(sizes["fleet_runs"]):
        log(f"fleet shapes, run {repetition + 1}/{sizes['fleet_runs']}")
        for name, (_, _, events) in shapes.items():
            result = hotpath(paths[name], events or ALL_EVENTS, timeout=1800)
            if result is None:
                raise BenchError("the workers' commit has no streams/cancelwatch/: bench/hotpath.py cannot drive it")
            runs[name].append(result)
            log(f"  {name}: {result['us_per_event']:.1f} us/event, {result['buckets_opened_per_event']:.2f} "
                f"buckets opened and {result['sellers_touched_per_event']:.2f} sellers touched per event")
    out = {}
    for name, (sellers, duration, _) in shapes.items():
        first = runs[name][0]
        out[name] = {
            "sellers": sellers, "duration": duration, "events": first["events"],
            "input": str(paths[name].relative_to(ROOT)),
            "us_per_event": spread([r["us_per_event"] for r in runs[name]]),
            "buckets_opened_per_event": first["buckets_opened_per_event"],
            "sellers_touched_per_event": first["sellers_touched_per_event"],
        }
    base = out["throughput"]["us_per_event"]["median"]
    return {"shapes": out,
            "ratios": {name: shape["us_per_event"]["median"] / base for name, shape in out.items()}}
