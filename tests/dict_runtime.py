"""A worker's `Runtime` driven without Kafka: the table as a dict, fetched records as plain objects.

The runtime is driven exactly as the agent drives it (`process` per fetch, `commit` then
`evaluate` per group); only the state table's storage (RocksDB, the changelog) and the
consumer are replaced. Used by the runtime's tests and by `bench/hotpath.py`.
"""

from __future__ import annotations

from typing import Iterable

from cancelwatch import names
from cancelwatch.core import events
from cancelwatch.worker.ownership import owner_partition
from cancelwatch.worker.runtime import Runtime


class Message:
    """A fetched record, as much of aiokafka's ConsumerRecord as the runtime reads."""

    __slots__ = ("topic", "partition", "offset", "value", "key", "headers")

    def __init__(self, topic: str, partition: int, offset: int, value: bytes) -> None:
        self.topic, self.partition, self.offset, self.value = topic, partition, offset, value
        self.key = self.headers = None


class DictStore(dict):
    """The table as a dict: what `TableStore` offers the runtime, without RocksDB or Kafka."""

    def __init__(self) -> None:
        super().__init__()
        self.local: dict = {}
        self.table = self

    def write_local_now(self, items_by_partition) -> None:
        for items in items_by_partition.values():
            self.local.update(items)

    def flush(self) -> None:
        """No write buffers to write out."""

    def abandon(self) -> None:
        """Nothing is staged: writes go to the dict at once."""


def runtime(settings, policy) -> Runtime:
    """A runtime with its state rebuilt (empty), every partition assigned and its lag known: ready to process."""
    built = Runtime(settings, policy)
    built.store = DictStore()
    built.rebuild()
    built.lag_known = True
    built.owned = set(range(settings.partitions))   # every partition assigned to it
    return built


def messages(lines: Iterable[bytes], settings) -> list[Message]:
    """Event JSON lines as fetched records, each on its seller's partition of its topic."""
    topics = {events.OrderCancelled: settings.source_topics[names.CANCELLATIONS_TOPIC]}
    orders = settings.source_topics[names.ORDERS_TOPIC]
    owners: dict[str, int] = {}
    out = []
    for offset, line in enumerate(lines):
        event = events.decode(line)
        partition = owners.get(event.seller_id)
        if partition is None:
            partition = owners[event.seller_id] = owner_partition(event.seller_id, settings.partitions)
        out.append(Message(topics.get(type(event), orders), partition, offset, line))
    return out


def feed(runtime_: Runtime, records: list[Message], fetch: int, on_group=None) -> None:
    """Process `records` a fetch at a time, committing and evaluating each complete group (and
    the last) as the agent does; `on_group(outbox)` after each evaluation."""
    for start in range(0, len(records), fetch):
        runtime_.process(records[start:start + fetch])
        if runtime_.group.complete() or start + fetch >= len(records):
            runtime_.commit()
            outbox = runtime_.evaluate()
            if on_group is not None:
                on_group(outbox)
