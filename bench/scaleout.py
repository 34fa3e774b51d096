"""Scale-out: one worker versus two (same app id, own ports and data dirs) on 4-partition topics.

Both measured side by side on the same pre-filled topics, each from the
first processed event until every message is processed (or the time cap).
The broker runs on the same 2 cores as the workers.
"""

from __future__ import annotations

from pathlib import Path

from common import Worker, delete_topics, log, prefilled, spread, tag, wait_processed


def run(sizes: dict, workdir: Path) -> dict:
    orders, cancellations, total = prefilled(sizes["sellers"], sizes["duration"], sizes["scaleout_events"])
    results: dict[int, list] = {1: [], 2: []}
    for repetition in range(sizes["scaleout_repetitions"]):
        for count in (1, 2):
            app_id = tag("scale")
            workers = [Worker(workdir, orders=orders, cancellations=cancellations, app_id=app_id,
                              clock="event", name=f"scale{count}-{index}") for index in range(count)]
            try:
                for worker in workers:
                    worker.start()
                for worker in workers:
                    worker.wait_ready()
                result = wait_processed(workers, total, sizes["worker_cap_seconds"], poll=0.5)
                result.pop("samples")
                results[count].append(result)
                log(f"scale-out {count} worker(s): {result['events_per_s']:,.0f} events/s")
            finally:
                for worker in workers:
                    worker.stop()
                delete_topics(workers[0].internal_topics())
    one = spread([r["events_per_s"] for r in results[1]])
    two = spread([r["events_per_s"] for r in results[2]])
    return {"messages": total, "partitions": 4, "one_worker_events_per_s": one,
            "two_workers_events_per_s": two, "speedup": two["median"] / one["median"],
            "runs": {str(count): runs for count, runs in results.items()}}
