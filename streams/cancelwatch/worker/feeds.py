"""Small compacted topics every worker reads whole: seller targets and the event clock.

- **Seller targets** (contract section 10). Each worker needs every target
  (a target applies to whichever worker owns the seller, and the web
  answers of any worker). Each message is decoded strictly
  (`targets.decode_target`); a bad one goes to the dead-letter topic with
  its reason, like a bad event. Until the worker has read to the end
  offsets it saw at start, it holds its alerts (`Runtime.targets_ready`): a
  seller must not be paged at the marketplace's limit before its own target
  is known.
- **The event clock** (`CANCELWATCH_CLOCK=event`, `Settings.clock_topic`).
  `now` is the largest `occurred_at` the cluster has processed, not the
  largest of one worker's partitions: each worker publishes its partitions'
  clocks after each commit (key: the partition, value: microseconds), and
  every worker moves its clock to the largest it reads. Without it, a worker
  whose partitions' latest event is an hour older than another's would
  answer with windows an hour behind (`Runtime.peer_clock`).

Both are read without a consumer group, from the beginning at every start (a
tombstone is compacted away after a day, so a stored offset could keep a
removed target), in a thread of their own with kafka-python, and each record
is handed to the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Callable

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from cancelwatch.core import state, targets as targets_module
from cancelwatch.settings import Settings

log = logging.getLogger("cancelwatch.worker")

POLL_MS = 500
RETRY_SECONDS = 2.0


class TopicFeed:
    """Reads a whole topic in a thread and hands each record to `on_record` on the event loop;
    `on_ready` once it has read to the end offsets it saw at start."""

    def __init__(self, settings: Settings, topic: str, loop: asyncio.AbstractEventLoop,
                 on_record: Callable[[object], None], on_ready: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.topic = topic
        self.loop = loop
        self.on_record = on_record
        self.on_ready = on_ready
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=topic, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._read()
            except KafkaError as error:
                log.warning("reading %s failed (%s); retrying in %.0fs", self.topic, error, RETRY_SECONDS)
                time.sleep(RETRY_SECONDS)

    def _read(self) -> None:
        settings = self.settings
        consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                 enable_auto_commit=False, client_id=f"{settings.app_id}-{self.topic}",
                                 **settings.kafka_security.kafka_python_options())
        try:
            partitions = [TopicPartition(self.topic, partition)
                          for partition in sorted(consumer.partitions_for_topic(self.topic) or ())]
            consumer.assign(partitions)
            consumer.seek_to_beginning(*partitions)
            ends = consumer.end_offsets(partitions) if partitions else {}
            ready = self.on_ready is None
            while not self.stopping.is_set():
                if not ready and all(consumer.position(tp) >= end for tp, end in ends.items()):
                    ready = True
                    self.loop.call_soon_threadsafe(self.on_ready)
                for records in consumer.poll(timeout_ms=POLL_MS).values():
                    for record in records:
                        self.loop.call_soon_threadsafe(self.on_record, record)
        finally:
            consumer.close()


def targets_feed(settings: Settings, loop: asyncio.AbstractEventLoop,
                 on_update: Callable[[targets_module.TargetUpdate], None],
                 on_bad: Callable[[object, targets_module.BadTarget], None],
                 on_ready: Callable[[], None]) -> TopicFeed:
    """The seller-targets topic: each record decoded strictly, a bad one handed to `on_bad`."""
    def on_record(record) -> None:
        try:
            update = targets_module.decode_target(record.key, record.value)
        except targets_module.BadTarget as bad:
            on_bad(record, bad)
            return
        on_update(update)
    return TopicFeed(settings, settings.targets_topic, loop, on_record, on_ready)


def clock_record(partition: int, seconds: float) -> tuple[bytes, bytes]:
    """The key and value of a partition's event clock on the clock topic."""
    return str(partition).encode(), state.encode_clock(seconds)


def clock_feed(settings: Settings, loop: asyncio.AbstractEventLoop,
               on_clock: Callable[[float], None]) -> TopicFeed:
    """The cluster's event clock topic: each partition's clock handed to `on_clock` in seconds."""
    def on_record(record) -> None:
        try:
            seconds = state.decode_clock(record.value)
        except (TypeError, ValueError):
            log.warning("ignored a record of %s that is not a clock: key %r, value %r",
                        settings.clock_topic, record.key, record.value)
            return
        on_clock(seconds)
    return TopicFeed(settings, settings.clock_topic, loop, on_record)
