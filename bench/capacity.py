"""Memory per seller, metric series per seller count, state on disk per order, and recovery.

`loaded(n)` starts a fresh worker (event clock), measures its idle RSS,
feeds it n sellers with a few orders each and measures RSS and the series
on /metrics again; memory and series share these loads. `state` feeds one
worker a million distinct in-window orders, kills it with SIGKILL, restarts
it on the same data dir and times until its HTTP answers for a sample of
sellers equal the ones before the kill; stops it cleanly and measures the
data dir and the changelog topic; then wipes the data dir and times the full
restore from the changelog.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import requests

from common import (BenchError, Worker, create_topics, delete_topics, dir_bytes, iso, log, order_line,
                    produce, rss_bytes, tag, topic_disk_bytes, wait_processed, worker_bounds)

ORDERS_PER_SELLER = 3
SETTLE_SECONDS = 3.0

_loads: dict[int, dict] = {}


def loaded(sellers: int, workdir: Path, attempt: int = 0) -> dict:
    """RSS and series of a fresh worker before and after `sellers` active sellers (cached per
    size and attempt)."""
    if (sellers, attempt) in _loads:
        return _loads[(sellers, attempt)]
    base = tag(f"load{sellers}")
    orders, cancellations = f"{base}-orders", f"{base}-cancellations"
    create_topics([orders, cancellations])
    worker = Worker(workdir, orders=orders, cancellations=cancellations, clock="event", name=f"load{sellers}")
    try:
        worker.start()
        worker.wait_ready()
        time.sleep(SETTLE_SECONDS)
        idle_rss, idle_series = rss_bytes(worker.pid), worker.series()
        now = time.time()
        messages = ((orders, seller.encode(), order_line(seller, f"{seller}-{k}", iso(now - 3600 * (k + 1))))
                    for seller in (f"S{index:08d}" for index in range(sellers))
                    for k in range(ORDERS_PER_SELLER))
        total = produce(messages)
        processed = wait_processed([worker], total, timeout=max(120.0, total / 1000), poll=1.0)
        time.sleep(SETTLE_SECONDS)
        result = {
            "sellers": sellers, "orders": total,
            "idle_rss_bytes": idle_rss, "loaded_rss_bytes": rss_bytes(worker.pid),
            "idle_series": idle_series, "loaded_series": worker.series(),
            "ingest_events_per_s": processed["events_per_s"],
        }
        result["rss_bytes_per_seller"] = (result["loaded_rss_bytes"] - idle_rss) / sellers
        log(f"load {sellers} sellers: {result['rss_bytes_per_seller']:.0f} B RSS per seller, "
            f"{result['loaded_series']} series")
        _loads[(sellers, attempt)] = result
        return result
    finally:
        worker.stop()
        delete_topics([orders, cancellations, *worker.internal_topics()])


def memory(sizes: dict, workdir: Path) -> dict:
    """Per size, `memory_runs` fresh workers; the run with the median RSS per seller stands for
    the size, with the spread of all runs beside it (RSS after a burst varies from run to run
    with where the heap's long-lived objects landed)."""
    loads = []
    for sellers in sizes["memory_sellers"]:
        runs = sorted((loaded(sellers, workdir, attempt) for attempt in range(sizes["memory_runs"])),
                      key=lambda load: load["rss_bytes_per_seller"])
        per_seller = [load["rss_bytes_per_seller"] for load in runs]
        loads.append({**runs[(len(runs) - 1) // 2], "runs_rss_bytes_per_seller": per_seller})
    worst = max(load["rss_bytes_per_seller"] for load in loads)
    # What one more seller costs, the worker's fixed costs (the heap a burst leaves behind)
    # taken out: the slope between the smallest and the largest load.
    small, large = min(loads, key=lambda l: l["sellers"]), max(loads, key=lambda l: l["sellers"])
    marginal = None
    if large["sellers"] > small["sellers"]:
        marginal = ((large["loaded_rss_bytes"] - small["loaded_rss_bytes"])
                    / (large["sellers"] - small["sellers"]))
    return {"loads": loads, "target_bytes_per_seller": 1024, "meets_target": worst <= 1024,
            "marginal_bytes_per_seller": marginal,
            "marginal_between": [small["sellers"], large["sellers"]],
            "bounds": worker_bounds()}


def series(sizes: dict, workdir: Path) -> dict:
    loads = [loaded(n, workdir) for n in sizes["series_sellers"]]
    return {"series": {str(load["sellers"]): load["loaded_series"] for load in loads},
            "idle_series": loads[0]["idle_series"]}


def state(sizes: dict, workdir: Path) -> dict:
    count = sizes["state_orders"]
    sellers = max(1, count // 100)
    base = tag("state")
    orders, cancellations = f"{base}-orders", f"{base}-cancellations"
    create_topics([orders, cancellations])
    # info level: the log's group join and assignment lines time the wait for the consumer group
    worker = Worker(workdir, orders=orders, cancellations=cancellations, clock="event", name="state",
                    extra_env={"CANCELWATCH_LOG_LEVEL": "info"})
    rng = random.Random(5)
    now = time.time()
    seller_ids = [f"R{index:07d}" for index in range(sellers)]
    # purchase times spread over the last 6 days: every order is in the 7-day window
    messages = ((orders, seller_ids[i % sellers].encode(),
                 order_line(seller_ids[i % sellers], f"{i:019d}", iso(now - rng.uniform(60, 6 * 86400))))
                for i in range(count))
    try:
        produced = produce(messages)
        worker.start()
        worker.wait_ready()
        ingest = wait_processed([worker], produced, timeout=sizes["state_ingest_cap_seconds"], poll=1.0)
        if not ingest["reached"]:
            raise BenchError(f"the worker processed {ingest['events']} of {produced} orders in "
                             f"{sizes['state_ingest_cap_seconds']}s; raise state_ingest_cap_seconds")
        time.sleep(SETTLE_SECONDS)
        sample = rng.sample(seller_ids, min(50, sellers))
        before = _answers(worker, sample)
        held_rss = rss_bytes(worker.pid)
        log(f"state: {produced} orders in ({ingest['events_per_s']:,.0f} events/s); SIGKILL and restart")
        worker.kill()
        mark = worker.log_path.stat().st_size
        restart = _recover(worker, sample, before, sizes["recovery_cap_seconds"])
        restart_group_wait = _group_wait(worker.log_path, mark)
        worker.stop()
        data_dir = dir_bytes(worker.data_dir)
        changelog = topic_disk_bytes(f"{worker.app_id}-order-buckets-changelog")
        log(f"state: restart {_seconds(restart)}; data dir {data_dir / produced:.0f} B/order; wiping data dir")
        worker.wipe()
        mark = worker.log_path.stat().st_size
        restore = _recover(worker, sample, before, sizes["recovery_cap_seconds"])
        restore_group_wait = _group_wait(worker.log_path, mark)
        return {
            "orders": produced, "sellers": sellers, "ingest_events_per_s": ingest["events_per_s"],
            "rss_bytes_holding": held_rss,
            "data_dir_bytes": data_dir, "data_dir_bytes_per_order": data_dir / produced,
            "changelog_bytes": changelog,
            "changelog_bytes_per_order": changelog / produced if changelog is not None else None,
            "restart_after_sigkill_s": restart, "restore_wiped_s": restore,
            "restart_group_wait_s": restart_group_wait, "restore_group_wait_s": restore_group_wait,
            "recovery_cap_s": sizes["recovery_cap_seconds"], "sampled_sellers": len(sample),
            "target_bytes_per_order": 200, "target_recovery_s": 60,
            "meets_target": data_dir / produced <= 200 and restart is not None and restore is not None
                            and max(restart, restore) <= 60,
        }
    finally:
        worker.stop()
        delete_topics([orders, cancellations, *worker.internal_topics()])


def _group_wait(log_path: Path, offset: int) -> float | None:
    """Seconds from joining the consumer group to getting partitions, read from the worker's log
    after `offset` (the first join of that start); None when the lines are not there."""
    joined = assigned = None
    with open(log_path, "rb") as file:
        file.seek(offset)
        for raw in file:
            line = raw.decode(errors="replace")
            if joined is None and "Revoking previously assigned partitions" in line:
                joined = _stamp(line)
            elif joined is not None and "Setting newly assigned partitions" in line:
                assigned = _stamp(line)
                break
    if joined is None or assigned is None:
        return None
    return assigned - joined


def _stamp(line: str) -> float:
    """The time of a faust log line `[2026-11-27 01:35:14,165] ...` in seconds."""
    stamp = line[line.index("[") + 1:line.index("]")]
    moment = time.strptime(stamp.split(",")[0], "%Y-%m-%d %H:%M:%S")
    return time.mktime(moment) + int(stamp.split(",")[1]) / 1000


def _seconds(value: float | None) -> str:
    return "not within the cap" if value is None else f"{value:.1f}s"


def _answers(worker: Worker, sellers: list[str]) -> dict:
    answers = {}
    for seller in sellers:
        worker.alive()
        response = requests.get(f"{worker.url}/sellers/{seller}", params={"marketplace": "US"}, timeout=10)
        if response.status_code != 200:
            raise BenchError(f"worker answered {response.status_code} for seller {seller}: {response.text}")
        answers[seller] = response.json()
    return answers


def _recover(worker: Worker, sample: list[str], before: dict, cap: float) -> float | None:
    """Start the worker and return the seconds until every sampled answer equals `before`,
    None when that did not happen within `cap` seconds."""
    started = time.monotonic()
    worker.start()
    pending = list(sample)
    while pending:
        worker.alive()
        if time.monotonic() - started > cap:
            log(f"state: worker did not answer as before within {cap}s ({len(pending)} of "
                f"{len(sample)} sampled sellers differ); log {worker.log_path}")
            return None
        seller = pending[-1]
        try:
            response = requests.get(f"{worker.url}/sellers/{seller}", params={"marketplace": "US"}, timeout=5)
            if response.status_code == 200 and response.json() == before[seller]:
                pending.pop()
                continue
        except requests.RequestException:
            pass
        time.sleep(0.1)
    return time.monotonic() - started
