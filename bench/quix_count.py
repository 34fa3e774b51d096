"""The floor of a stateful Quix Streams application: an event count per seller, nothing else.

    python bench/quix_count.py BOOTSTRAP GROUP STATE_DIR TARGET SECONDS ORDERS CANCELLATIONS

One `Application`, a dataframe per topic, concatenated, and a stateful
`apply` counting events per message key (the seller) in RocksDB state with
its changelog. Prints one JSON line: events and the rate from the first on.
"""

from __future__ import annotations

import json
import sys
import time

from quixstreams import Application


def main(argv: list[str]) -> int:
    bootstrap, group, state_dir, target, cap, orders, cancellations = argv
    target, cap = int(target), float(cap)
    app = Application(broker_address=bootstrap, consumer_group=group, auto_offset_reset="earliest",
                      state_dir=state_dir, loglevel="WARNING")
    progress = {"count": 0, "first": None, "last": None}

    def count_per_seller(event: dict, state) -> int:
        total = state.get("count", 0) + 1
        state.set("count", total)
        return total

    def measure(_value) -> None:
        now = time.monotonic()
        if progress["first"] is None:
            progress["first"] = now
        progress["count"] += 1
        progress["last"] = now
        if progress["count"] >= target or now - progress["first"] > cap:
            app.stop()

    sdf = app.dataframe(app.topic(orders, value_deserializer="json")).concat(
        app.dataframe(app.topic(cancellations, value_deserializer="json")))
    sdf = sdf.apply(count_per_seller, stateful=True)
    sdf.update(measure)
    app.run()
    seconds = progress["last"] - progress["first"]
    print(json.dumps({"events": progress["count"], "seconds": seconds,
                      "events_per_s": progress["count"] / seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
