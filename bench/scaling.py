"""docs/scaling.md from bench/results.json: the measured figures turned into sizes for a fleet.

    .venv/bin/python bench/scaling.py      # rewrite docs/scaling.md from bench/results.json

bench/run.py rewrites the page after every run, as it does bench/README.md.
Every figure names the key of results.json it comes from; a result the file
lacks reads "not measured".
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Callable, NamedTuple

import fleet
from common import ROOT, default_policy
from report import _machine, _s

from cancelwatch import names, settings  # noqa: E402 - importable once common has set the path

PAGE = ROOT / "docs" / "scaling.md"
RESULTS = ROOT / "bench" / "results.json"

# Events per order: the simulator's mix in the throughput benchmark (its 1,100,000 events,
# re-sent duplicates included), all events over the order_placed ones.
SIMULATOR_MIX = {"order_placed": 673_042, "order_status_changed": 414_514, "order_cancelled": 12_444}
EVENTS_PER_ORDER = sum(SIMULATOR_MIX.values()) / SIMULATOR_MIX["order_placed"]
# A worker is planned to run at most at this share of its measured rate, so that a backlog
# (a replay, a restart, an outage upstream) drains at least as fast as it built up.
HEADROOM = 0.5
FLEETS = ((1_000, 50), (1_000, 500), (10_000, 50), (10_000, 500), (100_000, 50), (100_000, 500),
          (1_000_000, 500))
MILLION = 1_000_000
NOT_MEASURED = "not measured"
SESSION_TIMEOUT = "CANCELWATCH_SESSION_TIMEOUT_SECONDS"


class Figure(NamedTuple):
    value: float | None       # None: a result it needs is not in results.json
    source: str               # the keys it comes from, as a formula
    results: tuple[str, ...]  # the benchmarks measured


def _at(done: dict, key: str):
    """The value at `memory.loads[-1].idle_rss_bytes` of results["results"]; None when absent."""
    value = done
    for part in re.findall(r"[^.\[\]]+", key):
        try:
            value = value[int(part)] if isinstance(value, list) else value[part]
        except (KeyError, IndexError, TypeError, ValueError):
            return None
    return value


def _figure(done: dict, *keys: str, formula: str = "{}", compute: Callable | None = None) -> Figure:
    values = [_at(done, key) for key in keys]
    value = None if any(v is None for v in values) else (compute or (lambda v: v))(*values)
    return Figure(value, formula.format(*(f"`{key}`" for key in keys)),
                  tuple(dict.fromkeys(key.split(".")[0] for key in keys)))


def _per_million(done: dict, key: str) -> Figure:
    return _figure(done, key, "state.orders", formula="{} × 1,000,000 / {}",
                   compute=lambda seconds, orders: seconds * MILLION / orders)


def _show(value: float | None, unit: Callable[[float], str]) -> str:
    return NOT_MEASURED if value is None else unit(value)


def _rate(value: float) -> str:
    return f"{value:,.0f} events/s"


def _times(value: float) -> str:
    return f"{value:.2f}×"


def _size(value: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:,.1f} {unit}"
    return f"{value:,.0f} B"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return _s(seconds)
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _number(value: float) -> str:
    return f"{value:,.1f}" if value < 10 else f"{value:,.0f}"


def _measured(results: dict, benchmarks: tuple[str, ...]) -> str:
    """When and at which commit: the result's own stamp, or the run's for a result of this run."""
    stamps = []
    for name in benchmarks:
        result = results["results"].get(name)
        if result is None:
            continue
        if "measured_at" in result:
            stamps.append(f"{result['measured_at'][:10]}, `{result['commit']}`")
        elif name in results.get("ran", ()):
            stamps.append(f"{results['machine']['date'][:10]}, `{results['machine']['commit']}`")
    return "; ".join(dict.fromkeys(stamps)) or "—"


def _table(results: dict, rows: list[tuple[str, Figure, Callable]]) -> list[str]:
    lines = ["| figure | value | from `results` in bench/results.json | measured |", "|---|---|---|---|"]
    lines += [f"| {label} | {_show(figure.value, unit)} | {figure.source} | {_measured(results, figure.results)} |"
              for label, figure, unit in rows]
    return lines + [""]


def _default(variable: str) -> str:
    return next(setting.default for setting in settings.SETTINGS if setting.variable == variable)


def render_scaling(results: dict) -> str:
    done = results["results"]
    rate = _figure(done, "throughput.events_per_s.cancelwatch_worker.median")
    low = _figure(done, "throughput.events_per_s.cancelwatch_worker.min")
    high = _figure(done, "throughput.events_per_s.cancelwatch_worker.max")
    spread = ("" if None in (low.value, high.value)
              else f" (runs {low.value:,.0f} – {high.value:,.0f})")
    one = _figure(done, "scaleout.one_worker_events_per_s.median")
    two = _figure(done, "scaleout.two_workers_events_per_s.median")
    speedup = _figure(done, "scaleout.speedup")
    brokers = _figure(done, "brokers.ratio")
    light_seller = _figure(done, "memory.loads[-1].rss_bytes_per_seller")
    light_orders = _figure(done, "memory.loads[-1].orders", "memory.loads[-1].sellers", formula="{} / {}",
                           compute=lambda orders, sellers: orders / sellers)
    idle = _figure(done, "memory.loads[-1].idle_rss_bytes")
    busy_seller = _figure(done, "state.rss_bytes_holding", "memory.loads[-1].idle_rss_bytes", "state.sellers",
                          formula="({} − {}) / {}", compute=lambda rss, idle, sellers: (rss - idle) / sellers)
    busy_orders = _figure(done, "state.orders", "state.sellers", formula="{} / {}",
                          compute=lambda orders, sellers: orders / sellers)
    disk = _figure(done, "state.data_dir_bytes_per_order")
    changelog = _figure(done, "state.changelog_bytes_per_order")
    restart = _per_million(done, "state.restart_after_sigkill_s")
    restore = _per_million(done, "state.restore_wiped_s")
    group_wait = _figure(done, "state.restart_group_wait_s")
    rebuild = _figure(done, "state.restart_after_sigkill_s", "state.restart_group_wait_s", "state.orders",
                      formula="({} − {}) × 1,000,000 / {}",
                      compute=lambda seconds, wait, orders: (seconds - wait) * MILLION / orders)
    clean_wait = _figure(done, "state.restore_group_wait_s")
    target = _figure(done, "state.target_recovery_s")
    own = _figure(done, "fleet.shapes.throughput.us_per_event.median")
    own_many = _figure(done, "fleet.shapes.many_sellers.us_per_event.median")
    many_ratio = _figure(done, "fleet.ratios.many_sellers")
    rate_many = _figure(
        done, "throughput.events_per_s.cancelwatch_worker.median", "fleet.shapes.throughput.us_per_event.median",
        "fleet.shapes.many_sellers.us_per_event.median", formula="1 / (1 / {} − {} + {})",
        compute=lambda worker, base, many: MILLION / (MILLION / worker - base + many))
    shape_sellers = _at(done, "fleet.shapes.throughput.sellers") or results.get("sizes", {}).get("sellers", 2000)
    many_sellers = _at(done, "fleet.shapes.many_sellers.sellers") or fleet.SHAPES["many_sellers"][0]
    m = results["machine"]
    policy = default_policy()
    kept_days = policy.retention_seconds / 86400
    session = _default(SESSION_TIMEOUT)
    per_light = _show(light_orders.value, lambda v: f"{v:,.0f} orders a seller")
    per_busy = _show(busy_orders.value, lambda v: f"{v:,.0f} orders a seller")

    lines = [
        "# Scaling on paper",
        "",
        "Generated from `bench/results.json` by `bench/scaling.py`; do not edit by hand. Regenerate with",
        "`.venv/bin/python bench/scaling.py`; `bench/run.py` rewrites this page after every run, beside",
        "[bench/README.md](../bench/README.md), which describes each benchmark.",
        "",
        "What the measured figures say about running cancelwatch for a fleet of sellers. Each figure",
        "names the key under `results` in bench/results.json it is computed from, and the date and",
        f'commit it was measured at; a figure whose result the file lacks reads "{NOT_MEASURED}".',
        f"Measured on {_machine(m)}; the broker, the workers and the load generators share these cores.",
        "",
        "## Events per second",
        "",
        *_table(results, [
            ("one worker process (4 partitions), median", rate, lambda v: _rate(v) + spread),
            ("scale-out: one worker, 4 partitions", one, _rate),
            ("scale-out: two workers of one app id, same cores", two, _rate),
            ("scale-out: two workers over one", speedup, _times),
            ("one worker on one broker", _figure(done, "brokers.events_per_s.one_broker.median"), _rate),
            ("one worker on three brokers (replication 3, `min.insync.replicas=2`)",
             _figure(done, "brokers.events_per_s.three_brokers.median"), _rate),
            ("three brokers over one", brokers, _times),
            (f"the worker's own work per event (CPU, no Kafka), the throughput replay: {shape_sellers:,} sellers",
             own, lambda v: f"{v:.1f} µs"),
            (f"the same, {many_sellers:,} sellers, each seldom", own_many, lambda v: f"{v:.1f} µs"),
            ("many sellers over the throughput replay", many_ratio, _times),
            (f"one worker, estimated for more than {shape_sellers:,} sellers a worker", rate_many, _rate),
        ]),
        "The first row is the rate per worker measured on the throughput benchmark's replay. Runs on a",
        "shared machine move with its load, so the benchmarks' one-worker rates differ from one another.",
        "",
        "The worker's cost per event follows how many sellers and buckets the events of a group share",
        "(bench/README.md, \"Fleet shape\"): a seller's evaluation and a bucket's write are done once a",
        "group. With many sellers a group's events rarely share them, and the worker's own work per event",
        "rises by the ratio above. The estimate for that shape keeps the rest of the measured cost per",
        "event (Kafka, RocksDB, the changelog) and swaps the own work of one shape for the other's.",
        "",
        "## State per seller and per order",
        "",
        *_table(results, [
            *((f"RSS per active seller, {load['sellers']:,} sellers with {load['orders'] // load['sellers']} "
               "orders each (median run)", _figure(done, f"memory.loads[{index}].rss_bytes_per_seller"), _size)
              for index, load in enumerate(_at(done, "memory.loads") or [])),
            ("RSS per active seller: one more seller (the slope between the loads)",
             _figure(done, "memory.marginal_bytes_per_seller"), _size),
            ("RSS of a worker idle (started, ready, no events)", idle, _size),
            (f"RSS per seller of the state benchmark ({per_busy}), idle RSS taken out", busy_seller, _size),
            ("disk (data dir) per in-window order", disk, _size),
            ("changelog topic per order (one replica)", changelog, _size),
        ]),
        "A worker keeps in memory the totals of each purchase bucket (an hour) a seller has orders in,",
        "so a seller's RSS grows with the hours it sells in, up to one bucket for each hour kept",
        f"({kept_days:.0f} days: the packaged policy's retention, its longest window and Amazon's report",
        "lag). The memory benchmark's sellers have a few orders each; the state benchmark's sellers",
        "hold more buckets and more memory each. Sellers with orders in most hours of the retention",
        "were not measured: their RSS is above both figures.",
        "",
        "## Recovery per million orders",
        "",
        *_table(results, [
            ("restart after SIGKILL on the same data dir", restart, _s),
            ("restore with the data dir wiped (from the changelog)", restore, _s),
        ]),
        "Scaled linearly from the state benchmark's size (`state.orders` orders of `state.sellers`",
        "sellers); larger states were not measured.",
        "",
        "## Workers and partitions for a fleet",
        "",
        "For *N* sellers at *M* orders a day:",
        "",
        f"- events/s = *N* × *M* × {EVENTS_PER_ORDER:.2f} / 86,400 (the day's average). "
        f"{EVENTS_PER_ORDER:.2f} events per order (`EVENTS_PER_ORDER` in bench/scaling.py) is the simulator's "
        "mix in the throughput benchmark: "
        + ", ".join(f"{count:,} {kind}" for kind, count in SIMULATOR_MIX.items())
        + f" in its {sum(SIMULATOR_MIX.values()):,} events (re-sent duplicates included), all events over "
        "the order_placed ones.",
        f"- workers = ⌈events/s / ({HEADROOM:.0%} × *R*)⌉, *R* the rate per worker above: "
        f"{_show(rate.value, _rate)}, or the estimate for many sellers ({_show(rate_many.value, _rate)}) when a "
        f"worker would hold more than the throughput replay's {shape_sellers:,} sellers. A worker planned at {HEADROOM:.0%} of its rate (`HEADROOM`) drains a "
        "backlog (a replay, a restart, an outage upstream) at least as fast as it built up, live traffic "
        "going on; the day's peak hours count against the same headroom.",
        f"- partitions = max(workers, {names.DEFAULT_PARTITIONS}, the default `CANCELWATCH_PARTITIONS`): a "
        "partition has one owner, so the partitions are the most workers that can share the load. The worker "
        "requires existing source topics to have that count, and changing it moves sellers to other "
        "partitions (a seller's is murmur2(seller id) % partitions): create the topics for the largest "
        "fleet planned.",
        f"- RSS per worker = idle RSS + *N* / workers × RSS per seller: {_show(idle.value, _size)} + "
        f"{_show(light_seller.value, _size)} a seller at the memory benchmark's largest load ({per_light}), "
        f"and beside it {_show(busy_seller.value, _size)} a seller at the state benchmark's ({per_busy}).",
        "",
    ]
    if rate.value is not None:
        slowest = min(filter(None, (rate.value, rate_many.value)))
        lines += [f"By events alone, one worker at {HEADROOM:.0%} of *R* keeps up with "
                  f"{HEADROOM * slowest * 86400 / EVENTS_PER_ORDER / MILLION:,.0f} million orders a day "
                  "(*N* × *M*); the RSS and restore columns below say what the same fleet costs in memory "
                  "and recovery.", ""]
    if rate.value is None:
        lines += [f"Rate per worker {NOT_MEASURED}: no fleet sized.", ""]
    else:
        lines += [
            f"| sellers | orders a day | events/s | *R* | workers | partitions | a day's backlog drains in "
            f"| RSS per worker, {per_light} | RSS per worker, {per_busy} |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for sellers, orders in FLEETS:
            per_day = sellers * orders * EVENTS_PER_ORDER
            events = per_day / 86400
            per_worker = rate.value
            workers = max(1, math.ceil(events / (HEADROOM * per_worker)))
            if rate_many.value is not None and sellers / workers > shape_sellers:
                per_worker = rate_many.value
                workers = max(1, math.ceil(events / (HEADROOM * per_worker)))
            drains = per_day / (workers * per_worker - events)
            light = None if None in (idle.value, light_seller.value) else (
                idle.value + sellers / workers * light_seller.value)
            busy = None if None in (idle.value, busy_seller.value) else (
                idle.value + sellers / workers * busy_seller.value)
            lines.append(f"| {sellers:,} | {orders:,} | {_number(events)} | {_rate(per_worker)} | {workers} | "
                         f"{max(workers, names.DEFAULT_PARTITIONS)} | {_duration(drains)} | "
                         f"{_show(light, _size)} | {_show(busy, _size)} |")
        lines.append("")
    lines += [
        f"The state the same fleets keep, {kept_days:.0f} days of orders (the packaged policy's retention), "
        "for the whole fleet; spread over *W* workers each holds and restores 1/*W* of it:",
        "",
        "| sellers | orders a day | orders kept | disk (data dirs) | changelog (one replica) "
        "| restore from the changelog, one worker |",
        "|---|---|---|---|---|---|",
    ]
    for sellers, orders in FLEETS:
        kept = sellers * orders * kept_days
        lines.append(f"| {sellers:,} | {orders:,} | {kept:,.0f} | {_show(disk.value, lambda v: _size(kept * v))} | "
                     f"{_show(changelog.value, lambda v: _size(kept * v))} | "
                     f"{_show(restore.value, lambda v: _duration(kept / MILLION * v))} |")
    lines += [""]
    if None not in (restore.value, target.value):
        lines += [
            f"To keep a worker's restore within the benchmark's target of {target.value:.0f} s "
            f"(`state.target_recovery_s`), a worker holds at most {target.value / restore.value:,.1f} million "
            "orders at the restore rate above.",
            "",
        ]
    lines += [
        "## What a rebalance costs",
        "",
        *_table(results, [
            ("a killed worker's partitions move once its consumer-group session expires",
             Figure(float(session), f"`{SESSION_TIMEOUT}`, default (docs/settings.md)", ()), _s),
            ("restart after SIGKILL: waiting for the consumer group", group_wait, _s),
            ("restart after SIGKILL: the rest (start, rebuild from local state), per million orders",
             rebuild, _s),
            ("start after a clean stop: waiting for the consumer group", clean_wait, _s),
            ("restore with the data dir wiped, per million orders", restore, _s),
        ]),
        "A worker joining, leaving or dying is a rebalance: faust revokes every partition, and each",
        "worker rebuilds its sellers' totals from its partitions of the table before it counts on",
        "([docs/design.md](design.md)), so every worker pauses about the rebuild time for the orders it",
        "holds. A worker that takes over partitions without their state restores them from the",
        "changelog first. Meanwhile the moved sellers' API answers 503 with `Retry-After`. A worker",
        "killed outright holds its partitions until its session expires; one stopped cleanly leaves",
        "the group at once.",
        "",
        "## Where one machine stops",
        "",
        "A worker's Python work (decoding, counting, the HTTP views) runs on one event loop in one",
        f"thread, so one worker uses at most about one core. On the measured machine ({m['nproc']} cores),",
        f"two workers of one app id ran at {_show(speedup.value, _times)} the rate of one (`scaleout.speedup`):",
        "the second worker shares the cores with the first and with the broker. Three brokers on the",
        f"same cores ran the worker at {_show(brokers.value, _times)} its rate on one (`brokers.ratio`). So on one",
        "machine plan one worker per core the brokers leave free, and run more workers on more machines",
        "(up to one per partition). The rate per worker was measured with the broker on the same cores;",
        "a worker on a core of its own was not measured.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    PAGE.write_text(render_scaling(json.loads(RESULTS.read_text())))
    print(f"wrote {PAGE.relative_to(ROOT)} from {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
