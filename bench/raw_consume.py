"""Floor of throughput: raw aiokafka `getmany` + `json.loads`, no group, no state.

    python bench/raw_consume.py BOOTSTRAP TARGET SECONDS TOPIC...

Prints one JSON line: events consumed and the rate from the first message on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import AsyncIterator

from aiokafka import AIOKafkaConsumer, TopicPartition

PARTITIONS = 4  # the suite's topics are created with 4 partitions (cancelwatch.names.DEFAULT_PARTITIONS)


@contextlib.asynccontextmanager
async def from_start(bootstrap: str, topics: list[str]) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer, without a group, at the start of every partition of `topics`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for topic in topics for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        yield consumer
    finally:
        await consumer.stop()


async def consume(bootstrap: str, target: int, cap: float, topics: list[str]) -> dict:
    async with from_start(bootstrap, topics) as consumer:
        count = 0
        first = None
        while count < target:
            batches = await consumer.getmany(timeout_ms=500, max_records=10000)
            for records in batches.values():
                if first is None:
                    first = time.monotonic()
                for record in records:
                    json.loads(record.value)
                count += len(records)
            if first is not None and time.monotonic() - first > cap:
                break
        seconds = time.monotonic() - first
        return {"events": count, "seconds": seconds, "events_per_s": count / seconds}


def main(argv: list[str]) -> int:
    bootstrap, target, cap, *topics = argv
    print(json.dumps(asyncio.run(consume(bootstrap, int(target), float(cap), topics))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
