"""bench/README.md from bench/results.json: the machine, the tables, the profile."""

from __future__ import annotations

import re
import statistics

# Event-loop plumbing and entry points, whatever the layout of the measured commit.
GENERIC_FRAMES = ("asyncio/", "(cancelwatch)", "mode/", "/cli.py)", "<module>", "threading.py",
                  "runpy", "main (streams/")


def _rate(stat: dict) -> str:
    return f"{stat['median']:,.0f} | {stat['min']:,.0f} – {stat['max']:,.0f}"


def _spread(load: dict) -> str:
    runs = load.get("runs_rss_bytes_per_seller") or []
    return f" ({min(runs):,.0f} – {max(runs):,.0f})" if len(runs) > 1 else ""


def _yes(flag: bool) -> str:
    return "met" if flag else "**missed**"


def _s(value) -> str:
    return "not within the cap" if value is None else f"{value:.1f} s"


def _machine(m: dict) -> str:
    return f"{m['nproc']} cores ({m['cpu_model']}), {m['ram_gib']} GiB RAM, Linux {m['kernel']}, Python {m['python']}"


def _when(result: dict) -> list[str]:
    if "measured_at" not in result:
        return []
    where = f" on {result['cpu_model']}" if result.get("cpu_model") else ""
    return [f"Measured {result['measured_at']}, commit `{result['commit']}`{where}, in {result['seconds']:.0f} s.",
            ""]


def _targets(done: dict) -> list[str]:
    """One table of every target against what was measured."""
    rows = []
    if "throughput" in done:
        median = done["throughput"]["events_per_s"]["cancelwatch_worker"]["median"]
        rows.append(("worker throughput", "≥ 25,000 events/s", f"{median:,.0f} events/s",
                     done["throughput"]["meets_target"]))
    if "latency" in done:
        rows.append(("alert latency p99", "≤ 1 s", f"{done['latency']['p99_s'] * 1000:.0f} ms",
                     done["latency"]["meets_target"]))
    if "memory" in done:
        for load in done["memory"]["loads"]:
            rows.append((f"RSS per active seller ({load['sellers']:,})", "≤ 1 KiB",
                         f"{load['rss_bytes_per_seller']:,.0f} B{_spread(load)}",
                         load["rss_bytes_per_seller"] <= 1024))
    if "state" in done:
        st = done["state"]
        rows.append((f"disk per in-window order ({st['orders']:,})", "≤ 200 B",
                     f"{st['data_dir_bytes_per_order']:.0f} B", st["data_dir_bytes_per_order"] <= 200))
        for label, key in (("recovery after SIGKILL", "restart_after_sigkill_s"),
                           ("recovery, data dir wiped", "restore_wiped_s")):
            value = st[key]
            rows.append((f"{label} ({st['orders']:,} orders)", "≤ 60 s", _s(value),
                         value is not None and value <= 60))
    if not rows:
        return []
    lines = ["## Targets", "", "| what | target | measured | |", "|---|---|---|---|"]
    lines += [f"| {what} | {target} | {measured} | {_yes(ok)} |" for what, target, measured, ok in rows]
    return lines + [""]


def _profile(p: dict, title: str, where: str, compiled_core: bool = False) -> list[str]:
    lines = [
        title,
        "",
        f"`py-spy record --nonblocking -f raw` {where},",
        f"{p['samples']:,} samples of busy threads; frames are named as in the measured commit's tree.",
        *(["The compiled core's functions are no Python frames to py-spy: their time shows in the",
           "worker's frame that calls them (`Runtime.process` applies events, `Runtime.commit` writes a group)."]
          if compiled_core else []),
        "Share of samples with the frame running itself:",
        "",
        "| frame (self) | share |",
        "|---|---|",
    ]
    lines += [f"| `{frame}` | {share:.1%} |" for frame, share in p["self"]]
    lines += ["", "Share of samples with the frame anywhere on the stack (event-loop plumbing left out):",
              "", "| frame (inclusive) | share |", "|---|---|"]
    lines += [f"| `{frame}` | {share:.1%} |" for frame, share in p["inclusive"]
              if not any(generic in frame for generic in GENERIC_FRAMES)]
    return lines + [""]


def _checked(check: dict, name: str) -> str:
    found = check.get(name, {})
    if not found.get("checked"):
        return "not checked (no complete run)"
    if not found["differing"]:
        return f"all {check['pairs']} equal the oracle's"
    return f"**{found['differing']} of {check['pairs']} differ** from the oracle's, e.g. {found['examples'][0]}"


def _peer(t: dict) -> list[str]:
    """What (d) and (e) do, and whether (e) and (c) answered as the oracle on the sample."""
    if "quix_peer" not in t["events_per_s"]:
        return []
    lines = [
        "(d) counts events per message key in Quix's State and nothing else: the floor of a stateful",
        "Quix application. (e) (`bench/quix_peer.py`) does the worker's counting job as a Quix user",
        "with the project's library would write it: the contract's strict decoder as each topic's",
        "deserializer, one stateful step keyed by seller with Quix's default State (RocksDB, changelog",
        "topic), a record per order (the library's `ledger.Record`, so duplicates and item-level cancels",
        "count once), per-hour purchase-bucket totals (orders, seller-fault cancels, reasons, exclusions),",
        "the packaged policy's counting rules and the event clock. It does not alert, serve HTTP or",
        "keep the listing rule's state; the worker does all three in the rate (c) shows.",
        "",
    ]
    check = t.get("answers")
    if check:
        lines += [
            f"Answers at the end of a complete run for {check['pairs']} sampled sellers and marketplaces,",
            f"{check['sellers_with_cancels']} of them with seller-fault cancels, against `tests/oracle.py` on the "
            "same events at",
            "the same event clock (each window's orders and cancelled, the first window's reasons and",
            "exclusions):",
            "",
            f"- (c) cancelwatch worker: {_checked(check, 'cancelwatch_worker')}",
            f"- (e) Quix Streams, the same job: {_checked(check, 'quix_peer')}",
            "",
        ]
    return lines


# The lead over the peers that the throughput targets ask for: (variant, share of its median rate).
LEAD_TARGETS = (("quix_streams", 1.0, "at or above (d), the minimal Quix count"),
                ("quix_peer", 2.0, "at least 2x (e), the fair peer"),
                ("raw_aiokafka", 0.35, "at least 35% of (a), raw consume + decode"))


def _lead(t: dict) -> list[str]:
    """How the worker's cost per event splits, and what its own code would need for each lead."""
    hot = t.get("hotpath_us_per_event")
    rates = t["events_per_s"]
    if not hot or any(name not in rates for name, _, _ in LEAD_TARGETS):
        return []
    worker = rates["cancelwatch_worker"]["median"]
    total_us, own_us = 1e6 / worker, hot["median"]
    rest_us = total_us - own_us
    lines = [
        "### The lead: what the worker's own code would need",
        "",
        f"Per event the worker spends {total_us:.1f} µs in all (one over its median rate). Its own work",
        f"without Kafka (`bench/hotpath.py` on the same events and code beside it in each repetition:",
        f"decode, apply, write to a dict, evaluate; median {own_us:.1f} µs of CPU, runs "
        + ", ".join(f"{run:.1f}" for run in hot["runs"]) + ") is part of it; the rest,",
        f"{rest_us:.1f} µs, goes to reading Kafka through faust and aiokafka, RocksDB, the changelog and the",
        "event loop, which a faster core leaves as it is. The split is an estimate: wall time of a",
        "worker sharing the cores with the broker, against the CPU time of its code alone.",
        "",
        "| target | rate needed | µs per event in all | left for the worker's own code | its speed-up needed | |",
        "|---|---|---|---|---|---|",
    ]
    for name, share, label in LEAD_TARGETS:
        needed = rates[name]["median"] * share
        budget_us = 1e6 / needed
        left_us = budget_us - rest_us
        speedup = f"{own_us / left_us:.2f}x" if left_us > 0 else "out of reach (the rest alone is slower)"
        lines.append(f"| {label} | {needed:,.0f} events/s | {budget_us:.1f} | "
                     f"{max(left_us, 0):.1f} µs | {speedup} | {_yes(worker >= needed)} |")
    return lines + [""] + _threads(t) + _readers(t)


def _burst_bounds(bounds: dict) -> str:
    """The measured code's bounds on a burst's working set, as a clause ending in "; "."""
    group = []
    if bounds.get("group_buckets") is not None:
        group.append(f"holds at most {bounds['group_buckets']:,} decoded buckets")
    if bounds.get("group_new_sellers") is not None:
        group.append(f"adds at most {bounds['group_new_sellers']:,} sellers")
    parts = ["a group " + " and ".join(group)] if group else []
    if bounds.get("fetch_records") is not None:
        parts.append(f"two fetches of {bounds['fetch_records']:,} records are alive")
    return ", and ".join(parts) + "; " if parts else ""


def _window(runs: list[dict]) -> str:
    """When the Quix runs were timed, from what their results recorded."""
    seconds = f"over {statistics.median(run['wall_seconds'] for run in runs):.0f} s"
    after = [run["after_seconds"] for run in runs if "after_seconds" in run]
    return f"{seconds} from {statistics.median(after):.0f} s after their start" if after else \
        f"{seconds} of their run, start-up left out"


# The consumers whose threads the throughput benchmark times, as the thread table names them.
THREAD_COLUMNS = (("cancelwatch_worker", "(c) worker"), ("quix_streams", "(d) Quix, minimal"),
                  ("quix_peer", "(e) Quix, same job"))


def _threads(t: dict) -> list[str]:
    """What bounds the worker: its threads' CPU per wall second over each measured run, beside
    the Quix runs' over a window of theirs."""
    timed = {name: [run["threads"] for run in t["runs"].get(name, []) if run.get("threads")]
             for name, _ in THREAD_COLUMNS}
    runs = timed["cancelwatch_worker"]
    if not runs:
        return []
    columns = [(name, label) for name, label in THREAD_COLUMNS if timed[name]]

    def row(label: str, share) -> str:
        return f"| {label} | " + " | ".join(
            f"{statistics.median(share(run) for run in timed[name]):.2f}" for name, _ in columns) + " |"

    python = [run["main"] + run["other_threads"] for run in runs]
    windows = [run for name, _ in columns if name != "cancelwatch_worker" for run in timed[name]]
    lines = [
        "### What bounds the worker: its threads",
        "",
        "CPU seconds per wall second of each process's threads (Linux `/proc`), medians of its runs: the",
        "worker's over each measured run (from its first processed events to its last, as its rate)"
        + (f",\nthe Quix runs' {_window(windows)}" if windows else "") + ". The worker's other threads are",
        "Python (faust's consumer thread reading Kafka through aiokafka, the targets reader); Quix's are",
        "librdkafka's, native.",
        "",
        "| thread | " + " | ".join(label for _, label in columns) + " |",
        "|---|" + "---|" * len(columns),
        row("the main thread (the event loop, or Quix's poll loop)", lambda run: run["main"]),
        row("the other threads, RocksDB's left out", lambda run: run["other_threads"]),
        row("main and other together", lambda run: run["main"] + run["other_threads"]),
        row("RocksDB's threads (flushes, compactions)", lambda run: run["rocksdb"]),
        row("the whole machine, broker included (cores busy)", lambda run: run["machine_busy_cores"]),
        "",
        "The worker's main and other threads together, by run: " + ", ".join(f"{share:.2f}" for share in python)
        + ".",
        "",
    ]
    if statistics.median(python) >= 0.9:
        lines += [
            "One interpreter lock runs the worker's Python threads on one core at a time, and they keep",
            "it busy nearly all the time while the machine has a core to spare: the worker is bound by",
            "its Python work per event (its own code, faust's and aiokafka's), not by the broker, the",
            "cores or waiting. A deeper pipeline (more fetches in flight, commits overlapping the next",
            "group) would only reorder that work; the lead needs less of it per event.",
            "",
        ]
    return lines


# The Kafka readers of bench/readers.py, as the readers' table names them.
READER_LABELS = (("aiokafka", "aiokafka `getmany`, as (a) reads"),
                 ("worker", "the worker's reader (aiokafka through `cancelwatch.worker.records`)"),
                 ("librdkafka", "librdkafka (confluent-kafka `consume`), as Quix Streams reads"))


def _readers(t: dict) -> list[str]:
    """What reading Kafka costs under the lock per record, by reader, and what a worker reading
    with librdkafka could reach at best."""
    readers = t.get("readers")
    if not readers or any(name not in readers for name, _ in READER_LABELS):
        return []

    def cell(name: str, field: str) -> str:
        got = readers[name][field]
        return f"{got['median']:.2f} ({got['min']:.2f} – {got['max']:.2f})"

    lines = [
        "### Reading Kafka under the lock: three readers",
        "",
        "`bench/readers.py` reads the same topics in each repetition with each reader, touching each",
        "record's value and offset and decoding nothing. CPU time per record of its Python threads (they",
        "share the interpreter lock, so this is what the reader takes from a worker's Python work) and",
        "of librdkafka's native threads (outside the lock); medians and min – max of the repetitions.",
        "",
        "| reader | µs a record under the lock | µs a record in native threads | records/s (median) |",
        "|---|---|---|---|",
        *(f"| {label} | {cell(name, 'python_us_per_record')} | {cell(name, 'native_us_per_record')} | "
          f"{readers[name]['events_per_s']['median']:,.0f} |" for name, label in READER_LABELS),
        "",
    ]
    rates = t["events_per_s"]
    worker = rates["cancelwatch_worker"]["median"]
    total_us = 1e6 / worker
    saving = (readers["worker"]["python_us_per_record"]["median"]
              - readers["librdkafka"]["python_us_per_record"]["median"])
    best = 1e6 / (total_us - max(saving, 0.0))
    lines += [
        "librdkafka fetches and parses outside the lock, but each record still becomes a Python object",
        "under it, in the thread that consumes. A worker whose consumer thread read with librdkafka",
        f"instead of its reader would save {saving:.2f} µs of its {total_us:.1f} µs an event, and reach at",
        f"best {best:,.0f} events/s: "
        + ", ".join(f"c/{re.search(r'[(]([a-e])[)]', label).group(1)} = {best / rates[name]['median']:.2f} "
                    f"(target {share:g})" for name, share, label in LEAD_TARGETS) + ".",
        "",
    ]
    return lines


# What each fleet shape of bench/fleet.py replays, for the reader.
FLEET_SHAPES = {"throughput": "the throughput benchmark's replay",
                "many_sellers": "many sellers, each seldom",
                "long_history": "full 7-day windows"}


def _fleet(fl: dict) -> list[str]:
    shapes = fl["shapes"]
    lines = [
        "## Fleet shape: the worker's own work per event",
        "",
        *_when(fl),
        "`bench/hotpath.py` (decode, apply, write to a dict, evaluate; CPU, no Kafka) with the workers'",
        "code on three simulator replays, run alternately. A group of up to 20,000 events writes each",
        "bucket it opened once and evaluates each seller it touched once, so the cost per event follows",
        "how many of each the events share, which the fleet's shape decides:",
        "",
        "| shape | sellers | simulated | events | µs per event (median; runs) | buckets opened per event "
        "| sellers touched per event | × the throughput replay |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, shape in shapes.items():
        cost = shape["us_per_event"]
        lines.append(
            f"| {FLEET_SHAPES.get(name, name)} | {shape['sellers']:,} | {shape['duration']} | {shape['events']:,} "
            f"| {cost['median']:.1f} ({', '.join(f'{run:.1f}' for run in cost['runs'])}) "
            f"| {shape['buckets_opened_per_event']:.2f} | {shape['sellers_touched_per_event']:.2f} "
            f"| {fl['ratios'][name]:.2f}× |")
    return lines + [
        "",
        "docs/scaling.md applies the many-sellers ratio to the worker's measured rate for fleets of",
        "that shape.",
        "",
    ]


def render(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Measured by `make bench` (`bench/run.py`) on the real local stack: one Kafka broker, the",
        "workers and the load generators all on the same machine. Every comparison below was",
        "measured side by side in the same run. Raw numbers: `bench/results.json`; what they mean for",
        "a fleet of sellers: [docs/scaling.md](../docs/scaling.md).",
        "",
        f"- machine: {_machine(m)}",
        f"- last run: {m['date']}, commit `{m['commit']}`, mode: {results['mode']}, ran "
        f"{', '.join(results.get('ran', results['results']))} in {results['duration_s'] / 60:.1f} min",
        f"- workers run from: {m.get('worker_source', 'the working tree')}; their core: "
        f"{m.get('worker_core', 'python')} (`cancelwatch_build_info{{core}}`)",
        "",
        "Re-run: `make bench` (full), `.venv/bin/python bench/run.py --quick` (smoke),",
        "`--only NAME` for one benchmark (names: " + ", ".join(results["benchmarks_available"]) + ").",
        "The worker's own work per event without Kafka (decode, apply, write, evaluate; CPU seconds),",
        "which the throughput benchmark also measures: `.venv/bin/python bench/hotpath.py --events 1100000",
        "--repeat 2` (after a throughput run, which generates its events). The same work counted in CPU",
        "instructions (valgrind; the same count however busy the machine, so two versions compare one",
        "after the other, each run in its own tree): `.venv/bin/python bench/hotpath.py --instructions",
        "--events 40000`. Either with `--rocksdb`: the table in RocksDB through the worker's `TableStore`",
        "(its reads and writes counted too; no changelog) instead of a dict.",
        "",
    ]
    done = results["results"]
    lines += _targets(done)
    if "throughput" in done:
        t = done["throughput"]
        r = t["events_per_s"]
        lines += [
            "## Throughput",
            "",
            *_when(t),
            f"One pair of 4-partition topics pre-filled with {t['messages']:,} simulator events (realistic",
            "mix, ~2% re-sent duplicates, ~1% late). Each consumer starts from the beginning and runs until",
            "it has processed every message or its time cap is over; the rate is counted from its first",
            "processed event (start-up excluded)"
            + (f": the others time themselves; the worker's count is read every {t['worker_poll_seconds']} s "
               "from `/metrics?name[]=cancelwatch_events_total` (one counter, so the poll costs the worker "
               "next to nothing)" if "worker_poll_seconds" in t else "") + ". Time caps per run: "
            f"{results['sizes']['cap_seconds']:.0f} s for (a) and (d), {results['sizes']['faust_cap_seconds']:.0f} s "
            f"for (b), {results['sizes']['worker_cap_seconds']:.0f} s for (c)"
            + (f", {results['sizes']['peer_cap_seconds']:.0f} s for (e)" if "quix_peer" in r else "") + ". "
            f"{results['sizes']['repetitions']} repetition(s); median and min – max.",
            "",
            "| consumer | events/s (median) | min – max | events per run |",
            "|---|---|---|---|",
        ]
        labels = {"raw_aiokafka": "(a) raw aiokafka `getmany` + `json.loads`",
                  "naive_faust": "(b) naive faust agent: Record + one table update per event",
                  "cancelwatch_worker": "(c) cancelwatch worker (exact counts, durable state)",
                  "quix_streams": "(d) Quix Streams, minimal: an event count per seller (RocksDB)",
                  "quix_peer": "(e) Quix Streams, the same job: order records, 7-day buckets, counting rules "
                               "(RocksDB)"}
        for name, label in labels.items():
            if name not in r:
                continue
            counts = ", ".join(f"{run['events']:,}" for run in t["runs"][name])
            lines.append(f"| {label} | {_rate(r[name])} | {counts} |")
        ratios = t["ratios"]
        lines += [
            "",
            f"Ratios of medians: c/a = {ratios['c/a']:.3f}, c/b = {ratios['c/b']:.2f}, c/d = {ratios['c/d']:.2f}"
            + (f", c/e = {ratios['c/e']:.2f}" if "c/e" in ratios else "") + ".",
            f"Target: at least 25,000 events/s for (c): {_yes(t['meets_target'])} "
            f"(median {r['cancelwatch_worker']['median']:,.0f}).",
            "",
        ]
        if "quix_peer" in r and len(r["quix_peer"]["runs"]) > 1:
            paired = zip(r["cancelwatch_worker"]["runs"], r["quix_streams"]["runs"], r["quix_peer"]["runs"])
            lines += ["Within each repetition (c/d, c/e): " + "; ".join(
                f"{worker / minimal:.2f}, {worker / peer:.2f}" for worker, minimal, peer in paired) + ".", ""]
        loads = {name: [run["load_1m"] for run in t["runs"][name] if "load_1m" in run] for name in labels}
        if any(loads.values()):
            lines += [
                f"The machine's 1-minute load average at the end of each run ({results['machine']['nproc']} "
                "cores, shared with other work): " + ", ".join(
                    f"{labels[name][:3]} {min(values):.1f} – {max(values):.1f}" for name, values in loads.items()
                    if values) + ".",
                "",
            ]
        lines += _peer(t)
        lines += _lead(t)
        if t.get("profile"):
            lines += _profile(t["profile"], "### Where the worker's time goes (py-spy)",
                              "on the worker during the first repetition, from ready on",
                              results["machine"].get("worker_core") == "compiled")
        if t.get("peer_profile"):
            lines += _profile(t["peer_profile"], "### Where the fair peer's time goes (py-spy)",
                              "on (e) during the first repetition, from 3 s after its start")
    if "latency" in done:
        a = done["latency"]
        lines += [
            "## Alert latency",
            "",
            *_when(a),
            "From producing the cancel that takes a fresh seller (40 MFN orders in the window) to 2.5%",
            "(`SellerCancelRateBreached`) until that alert is returned by `GET /api/v2/alerts` of a dedicated",
            f"Alertmanager; worker in wall-clock mode, under a steady background of "
            f"{a['background_events_per_s']:,.0f} simulator events/s.",
            "",
            "| crossings | seen | p50 | p99 | min | max | target p99 ≤ 1 s |",
            "|---|---|---|---|---|---|---|",
            f"| {a['crossings']} | {a['observed']} | {a['p50_s'] * 1000:.0f} ms | {a['p99_s'] * 1000:.0f} ms | "
            f"{a['min_s'] * 1000:.0f} ms | {a['max_s'] * 1000:.0f} ms | {_yes(a['meets_target'])} |",
            "",
        ]
    if "memory" in done:
        mem = done["memory"]
        lines += [
            "## Memory per active seller",
            "",
            *_when(mem),
            "RSS (`VmRSS`) of a worker after N sellers with 3 orders each, minus its RSS idle (started,",
            "ready, no events), divided by N; each size on fresh workers, the median run shown with the",
            "range of all runs. Target ≤ 1 KiB per seller: " + _yes(mem["meets_target"]) + ".",
            "",
            "| sellers | idle RSS | loaded RSS | per seller (median) | all runs | ingest events/s |",
            "|---|---|---|---|---|---|",
        ]
        for load in mem["loads"]:
            runs = ", ".join(f"{value:,.0f}" for value in load.get("runs_rss_bytes_per_seller",
                                                                 [load["rss_bytes_per_seller"]]))
            lines.append(f"| {load['sellers']:,} | {load['idle_rss_bytes'] / 2**20:.1f} MiB | "
                         f"{load['loaded_rss_bytes'] / 2**20:.1f} MiB | {load['rss_bytes_per_seller']:,.0f} B | "
                         f"{runs} B | {load['ingest_events_per_s']:,.0f} |")
        lines.append("")
        if mem.get("marginal_bytes_per_seller") is not None:
            low, high = mem["marginal_between"]
            lines += [
                f"What one more seller costs, from the slope between {low:,} and {high:,} sellers "
                f"(loaded RSS difference over seller difference): "
                f"**{mem['marginal_bytes_per_seller']:,.0f} B**. The rest of the figures above is the "
                "worker's fixed cost once it has seen traffic, mostly the heap a burst leaves resident "
                f"({_burst_bounds(mem.get('bounds') or {})}Python keeps an arena while any object in it "
                "lives); RocksDB's write buffers are written out once fetches pause. Divided by few "
                "sellers it weighs most.",
                "",
            ]
    if "state" in done:
        st = done["state"]
        changelog = ("not readable here" if st["changelog_bytes"] is None
                     else f"{st['changelog_bytes'] / 2**20:.1f} MiB ({st['changelog_bytes_per_order']:.0f} B/order)")
        lines += [
            "## State on disk and recovery",
            "",
            *_when(st),
            f"One worker (event clock) fed {st['orders']:,} distinct in-window orders of {st['sellers']:,} sellers",
            f"(ingested at {st['ingest_events_per_s']:,.0f} events/s). Killed with SIGKILL, restarted on the same",
            "data dir: time until its HTTP answers for "
            f"{st['sampled_sellers']} sampled sellers equal those before the kill. Then stopped cleanly",
            "(data dir measured), the data dir wiped, and the full restore from the changelog timed.",
            f"Each recovery is capped at {st['recovery_cap_s']:.0f} s.",
            "",
            "| measure | value | target |",
            "|---|---|---|",
            f"| data dir after clean stop | {st['data_dir_bytes'] / 2**20:.1f} MiB, "
            f"{st['data_dir_bytes_per_order']:.0f} B per order | ≤ 200 B per order |",
            f"| changelog topic: log segments in the broker's log dir | {changelog} | |",
            f"| RSS holding them | {st['rss_bytes_holding'] / 2**20:.0f} MiB | |",
            f"| restart after SIGKILL (same data dir) | {_s(st['restart_after_sigkill_s'])} | ≤ 60 s |",
            f"| restore with the data dir wiped | {_s(st['restore_wiped_s'])} | ≤ 60 s |",
            "",
            "Targets: " + _yes(st["meets_target"]) + ".",
            "",
        ]
        if st.get("restart_group_wait_s") is not None:
            lines += [
                f"Of the restart after SIGKILL, {st['restart_group_wait_s']:.1f} s passed between the worker",
                "joining its consumer group and getting its partitions (from the worker's log): the broker",
                "waits for the killed member's session to expire (`CANCELWATCH_SESSION_TIMEOUT_SECONDS`,",
                "10 s by default) before it reassigns. The wiped restore followed a clean stop, which leaves the",
                "group at once" + (f" (its wait: {st['restore_group_wait_s']:.1f} s)."
                                   if st.get("restore_group_wait_s") is not None else "."),
                "",
            ]
    if "scaleout" in done:
        so = done["scaleout"]
        lines += [
            "## Scale-out",
            "",
            *_when(so),
            f"{so['messages']:,} pre-filled messages on {so['partitions']} partitions, consumed by one worker and",
            "then by two workers of one app id (own ports and data dirs). The broker shares the same cores.",
            "",
            "| workers | events/s (median) | min – max |",
            "|---|---|---|",
            f"| 1 | {_rate(so['one_worker_events_per_s'])} |",
            f"| 2 | {_rate(so['two_workers_events_per_s'])} |",
            "",
            f"Speed-up of two over one: {so['speedup']:.2f}×.",
            "",
        ]
    if "brokers" in done:
        br = done["brokers"]
        lines += [
            "## One broker or three",
            "",
            *_when(br),
            f"The same {br['messages']:,} pre-filled messages ({br['partitions']} partitions) consumed by one worker",
            "on the stack's single broker (replication 1) and on a three-broker KRaft cluster started for the",
            "benchmark (replication 3, `min.insync.replicas=2`: the worker's changelog, reroute and dead-letter",
            "writes wait for two brokers, `acks=all` with idempotence), one after the other in each repetition.",
            "All brokers share the same cores as the worker.",
            "",
            "| Kafka | events/s (median) | min – max |",
            "|---|---|---|",
            f"| 1 broker | {_rate(br['events_per_s']['one_broker'])} |",
            f"| 3 brokers | {_rate(br['events_per_s']['three_brokers'])} |",
            "",
            f"Three brokers over one: {br['ratio']:.2f}× (medians). Each repetition, one broker then three: "
            + "; ".join(f"{one['events_per_s']:,.0f} / {three['events_per_s']:,.0f}"
                        for one, three in zip(br["runs"]["one_broker"], br["runs"]["three_brokers"]))
            + " events/s; a repetition's two runs are a minute apart, and load from other processes on the "
              "machine (shared during this run) moves each run on its own.",
            "",
        ]
    if "fleet" in done:
        lines += _fleet(done["fleet"])
    if "series" in done:
        se = done["series"]
        lines += [
            "## Metric series",
            "",
            *_when(se),
            "Samples on the worker's `/metrics` (lines that are not comments) by active sellers. Per-seller",
            "series exist only for the top-K sellers at risk, so the count stays bounded.",
            "",
            "| sellers | series |",
            "|---|---|",
            f"| 0 (idle) | {se['idle_series']} |",
        ]
        lines += [f"| {int(n):,} | {count} |" for n, count in se["series"].items()]
        lines.append("")
    if results.get("errors"):
        lines += ["## Benchmarks that failed in this run", ""]
        lines += [f"- {name}: {error}" for name, error in results["errors"].items()]
        lines.append("")
    return "\n".join(lines)
