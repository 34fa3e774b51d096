"""What reading Kafka costs under the interpreter lock, per record: three Kafka readers.

    python bench/readers.py READER BOOTSTRAP TARGET SECONDS TOPIC...

READER is one of:
- `aiokafka`: `AIOKafkaConsumer.getmany`, as the raw consumer (a) reads;
- `worker`: the same with the worker's record reader (`cancelwatch.worker.records`),
  as the worker's consumer thread reads;
- `librdkafka`: confluent-kafka's `Consumer.consume`, as Quix Streams reads.

Each reads the topics' partitions from their start until it has TARGET records or SECONDS
have passed since its first, touching each record's value and offset and decoding nothing.
Prints one JSON line: the records, the rate, and per record the CPU time of the process's
Python threads (one interpreter lock runs them: what the reader takes from a worker's
Python work) and of librdkafka's native threads (named "rdk:...", outside the lock).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid

from raw_consume import PARTITIONS, from_start

READERS = ("aiokafka", "worker", "librdkafka")
FETCH_RECORDS = 10_000      # records asked for per call, as (a)
# librdkafka pauses fetching for fetch.queue.backoff.ms (1 s by default) whenever its queue
# holds queued.min.messages: with the defaults it fetches in bursts a second apart, which
# caps its rate here, not its cost per record.
LIBRDKAFKA = {"enable.auto.commit": False, "auto.offset.reset": "earliest", "fetch.queue.backoff.ms": 10}


def thread_seconds() -> tuple[float, float]:
    """CPU seconds so far of this process's (Python, librdkafka's native) threads."""
    ticks = os.sysconf("SC_CLK_TCK")
    python = native = 0.0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as file:
                stat = file.read()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        seconds = (int(fields[11]) + int(fields[12])) / ticks
        if name.startswith("rdk:"):
            native += seconds
        else:
            python += seconds
    return python, native


class Meter:
    """Records and CPU from the first records on."""

    def __init__(self, target: int, cap: float) -> None:
        self.target, self.cap = target, cap
        self.records = 0
        self.first: float | None = None
        self.cpu: tuple[float, float] = (0.0, 0.0)
        self.end: tuple[float, tuple[float, float]] | None = None

    def add(self, count: int) -> None:
        if self.first is None and count:
            self.first, self.cpu = time.monotonic(), thread_seconds()
        self.records += count

    def done(self) -> bool:
        """Whether the reading is over; its end is measured then, while the reader's threads still run."""
        if self.end is None and (self.records >= self.target
                                 or (self.first is not None and time.monotonic() - self.first > self.cap)):
            self.end = (time.monotonic(), thread_seconds())
        return self.end is not None

    def result(self, reader: str) -> dict:
        seconds = self.end[0] - self.first
        python, native = (now - then for now, then in zip(self.end[1], self.cpu))
        return {"reader": reader, "events": self.records, "seconds": seconds,
                "events_per_s": self.records / seconds,
                "python_us_per_record": python / self.records * 1e6,
                "native_us_per_record": native / self.records * 1e6}


async def read_aiokafka(bootstrap: str, topics: list[str], meter: Meter) -> None:
    async with from_start(bootstrap, topics) as consumer:
        while not meter.done():
            batches = await consumer.getmany(timeout_ms=500, max_records=FETCH_RECORDS)
            for records in batches.values():
                meter.add(len(records))
                for record in records:
                    record.value, record.offset


def read_librdkafka(bootstrap: str, topics: list[str], meter: Meter) -> None:
    import confluent_kafka
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-readers-{uuid.uuid4().hex}",
                                         **LIBRDKAFKA})
    try:
        consumer.assign([confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                         for topic in topics for p in range(PARTITIONS)])
        while not meter.done():
            messages = consumer.consume(FETCH_RECORDS, 0.5)
            meter.add(len(messages))
            for message in messages:
                if message.error() is None:
                    message.value(), message.offset()
    finally:
        consumer.close()


def main(argv: list[str]) -> int:
    reader, bootstrap, target, cap, *topics = argv
    if reader not in READERS:
        raise SystemExit(f"readers.py: READER must be one of {', '.join(READERS)}, not {reader!r}")
    meter = Meter(int(target), float(cap))
    if reader == "librdkafka":
        read_librdkafka(bootstrap, topics, meter)
    else:
        if reader == "worker":
            from cancelwatch.worker import records
            if not records.install():
                raise SystemExit("readers.py: the worker's record reader does not fit this aiokafka")
        asyncio.run(read_aiokafka(bootstrap, topics, meter))
    print(json.dumps(meter.result(reader)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
