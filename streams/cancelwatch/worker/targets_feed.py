"""Every worker reads the whole `seller-targets` topic (contract section 10).

The topic is small and compacted; each worker needs every target (a target
applies to whichever worker owns the seller, and the web answers of any
worker), so it is read without a consumer group, from the beginning at
every start (a tombstone is compacted away after a day, so a stored offset
could keep a removed target), in a thread of its own with kafka-python.
Each message is decoded strictly (`targets.decode_target`); a bad one goes
to the dead-letter topic with its reason, like a bad event. Until the
worker has read to the end offsets it saw at start, it holds its alerts
(`Runtime.targets_ready`): a seller must not be paged at the marketplace's
limit before its own target is known.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Callable

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from cancelwatch.core import targets as targets_module
from cancelwatch.settings import Settings

log = logging.getLogger("cancelwatch.worker")

POLL_MS = 500
RETRY_SECONDS = 2.0


class TargetsFeed:
    """Reads the targets topic in a thread and hands each update to the event loop."""

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop,
                 on_update: Callable[[targets_module.TargetUpdate], None],
                 on_bad: Callable[[object, targets_module.BadTarget], None],
                 on_ready: Callable[[], None]) -> None:
        self.settings = settings
        self.loop = loop
        self.on_update = on_update
        self.on_bad = on_bad
        self.on_ready = on_ready
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="seller-targets", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._read()
            except KafkaError as error:
                log.warning("reading seller targets from %s failed (%s); retrying in %.0fs",
                            self.settings.targets_topic, error, RETRY_SECONDS)
                time.sleep(RETRY_SECONDS)

    def _read(self) -> None:
        settings = self.settings
        consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                 enable_auto_commit=False, client_id=f"{settings.app_id}-targets",
                                 **settings.kafka_security.kafka_python_options())
        try:
            partitions = [TopicPartition(settings.targets_topic, partition)
                          for partition in sorted(consumer.partitions_for_topic(settings.targets_topic) or ())]
            consumer.assign(partitions)
            consumer.seek_to_beginning(*partitions)
            ends = consumer.end_offsets(partitions) if partitions else {}
            ready = False
            while not self.stopping.is_set():
                if not ready and all(consumer.position(tp) >= end for tp, end in ends.items()):
                    ready = True
                    self.loop.call_soon_threadsafe(self.on_ready)
                for records in consumer.poll(timeout_ms=POLL_MS).values():
                    for record in records:
                        try:
                            update = targets_module.decode_target(record.key, record.value)
                        except targets_module.BadTarget as bad:
                            self.loop.call_soon_threadsafe(self.on_bad, record, bad)
                            continue
                        self.loop.call_soon_threadsafe(self.on_update, update)
        finally:
            consumer.close()
