"""What a first version would be: a faust agent over a Record, one table update per event.

    python bench/naive_faust.py BOOTSTRAP APP_ID DATA_DIR TARGET SECONDS RESULT_FILE ORDERS CANCELLATIONS

Counts events per seller in a RocksDB table with its changelog (durable
state, like the worker). Writes one JSON object to RESULT_FILE when TARGET
events are counted or SECONDS have passed since the first, then exits.
"""

from __future__ import annotations

import json
import os
import sys
import time

import socket

import faust


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Event(faust.Record, serializer="json"):
    schema_version: int
    event_id: str
    type: str
    order_id: str
    seller_id: str
    marketplace: str
    fulfillment_channel: str
    purchase_date: str
    occurred_at: str
    order_status: str = None
    items: list = None
    initiator: str = None
    reason: str = None
    buyer_requested: bool = None
    order_status_at_cancel: str = None


def main(argv: list[str]) -> int:
    bootstrap, app_id, data_dir, target, cap, result_file, orders, cancellations = argv
    target, cap = int(target), float(cap)
    app = faust.App(app_id, broker=f"kafka://{bootstrap}", store="rocksdb://", datadir=data_dir,
                    topic_partitions=4, topic_replication_factor=1, consumer_auto_offset_reset="earliest",
                    web_enabled=False, web_port=free_port(), web_bind="127.0.0.1", web_host="127.0.0.1",
                    autodiscover=False)
    source = app.topic(orders, cancellations, value_type=Event, partitions=4)
    counts = app.Table("per-seller", default=int, partitions=4)
    progress = {"count": 0, "first": None}

    @app.agent(source)
    async def count(stream):
        async for event in stream:
            counts[event.seller_id] += 1
            now = time.monotonic()
            if progress["first"] is None:
                progress["first"] = now
            progress["count"] += 1
            if progress["count"] >= target or now - progress["first"] > cap:
                seconds = now - progress["first"]
                with open(result_file, "w") as out:
                    json.dump({"events": progress["count"], "seconds": seconds,
                               "events_per_s": progress["count"] / seconds}, out)
                os._exit(0)

    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
