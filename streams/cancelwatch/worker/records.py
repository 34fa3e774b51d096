"""aiokafka's fetched records, read in one loop per partition and fetch.

aiokafka hands each record of a fetch response over through four layers of
Python: `FetchResult.getall` loops record by record, `PartitionRecords.__next__`
resumes a generator, which calls `_consumer_record`, which builds a
`ConsumerRecord` dataclass of 11 fields. About 1 µs a record, some 5% of
the worker's time per event, spent before the worker sees the record.

`install()` puts two subclasses in their place in aiokafka's fetcher: a
`FetchResult` whose `getall` asks the partition's records for a list at once,
and `PartitionRecords` that read them in one loop into `Record`s, slotted
objects with `ConsumerRecord`'s fields and values. Everything else is
aiokafka's: the fetch positions move exactly as its generator moves them
(a record before the fetch offset is passed over, a control batch or a
batch's end moves the position to the batch's next offset, a fetch cut at
`max_records` resumes where it stopped), and a batch whose checksum is wrong
raises as it does. Only the case the worker has takes this path: records
read uncommitted, without deserializers (faust's consumer). Any other
consumer, or an aiokafka whose fetcher has another shape, keeps aiokafka's
path.
"""

from __future__ import annotations

import inspect
import logging

import aiokafka.errors as kafka_errors
from aiokafka.consumer import fetcher as aiokafka_fetcher

log = logging.getLogger("cancelwatch.worker")

# What this module relies on: aiokafka's classes as of 0.13 and 0.14.
_PARAMETERS = ("self", "tp", "records", "aborted_transactions", "fetch_offset", "key_deserializer",
               "value_deserializer", "check_crcs", "isolation_level")
_METHODS = ("check_assignment", "has_more", "_update_position")

_AiokafkaPartitionRecords = aiokafka_fetcher.PartitionRecords
_AiokafkaFetchResult = aiokafka_fetcher.FetchResult


class Record:
    """A fetched record: the fields and values of aiokafka's `ConsumerRecord`."""

    __slots__ = ("topic", "partition", "offset", "timestamp", "timestamp_type", "key", "value",
                 "checksum", "serialized_key_size", "serialized_value_size", "headers")

    def __init__(self, topic, partition, offset, timestamp, timestamp_type, key, value,
                 checksum, serialized_key_size, serialized_value_size, headers) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.timestamp = timestamp
        self.timestamp_type = timestamp_type
        self.key = key
        self.value = value
        self.checksum = checksum
        self.serialized_key_size = serialized_key_size
        self.serialized_value_size = serialized_value_size
        self.headers = headers

    def __repr__(self) -> str:
        return f"Record(topic={self.topic!r}, partition={self.partition}, offset={self.offset})"


class PartitionRecords(_AiokafkaPartitionRecords):
    """One partition's records of one fetch response, read into lists of `Record`s."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        # aiokafka's generator, never started here: it holds this object (a cycle that would
        # keep the fetch response's buffer until a full collection, which the worker makes rare).
        self._records_iterator = None
        self._batch = None          # the batch being read
        self._next_record = None    # its iterator's __next__ (a batch is iterated once: aiokafka asserts it)
        self._ended = False

    def take(self, max_records: int | None) -> tuple[list, bool]:
        """The next records, at most `max_records` (None: all), and whether none are left.
        Moves `next_fetch_offset` as aiokafka's generator does."""
        out: list = []
        if self._ended:
            return out, True
        topic, partition = self._tp.topic, self._tp.partition
        records, batch, next_record, check_crcs = self._records, self._batch, self._next_record, self._check_crcs
        position = self.next_fetch_offset
        append = out.append
        try:
            while True:
                if batch is None:
                    if not records.has_next():
                        self._ended = True
                        return out, True
                    batch = records.next_batch()
                    if check_crcs and not batch.validate_crc():
                        self._ended = True
                        raise kafka_errors.CorruptRecordException(f"Invalid CRC - {self._tp}")
                    if batch.is_control_batch:
                        position = batch.next_offset
                        batch = None
                        continue
                    next_record = iter(batch).__next__
                for record in iter(next_record, None):    # ends at the batch's StopIteration
                    offset = record.offset
                    if offset < position:
                        continue
                    key, value = record.key, record.value
                    append(Record(topic, partition, offset, record.timestamp, record.timestamp_type, key, value,
                                  record.checksum, -1 if key is None else len(key),
                                  -1 if value is None else len(value), tuple(record.headers)))
                    position = offset + 1
                    if max_records is not None and len(out) >= max_records:
                        return out, False
                position = batch.next_offset
                batch = next_record = None
        finally:
            self._batch, self._next_record = batch, next_record
            self.next_fetch_offset = position

    def __next__(self):
        got, _ = self.take(1)
        if not got:
            raise StopIteration
        return got[0]


def partition_records(tp, records, aborted_transactions, fetch_offset, key_deserializer, value_deserializer,
                      check_crcs, isolation_level):
    """aiokafka's `PartitionRecords(...)`: this module's for plain reads, aiokafka's otherwise."""
    plain = (isolation_level == aiokafka_fetcher.READ_UNCOMMITTED
             and key_deserializer is None and value_deserializer is None)
    cls = PartitionRecords if plain else _AiokafkaPartitionRecords
    return cls(tp, records, aborted_transactions, fetch_offset, key_deserializer, value_deserializer,
               check_crcs, isolation_level)


class FetchResult(_AiokafkaFetchResult):
    """aiokafka's `FetchResult`, taking this module's records a list at a time."""

    def getall(self, max_records=None):
        records = self._partition_records
        if type(records) is not PartitionRecords:
            return super().getall(max_records)
        if not self.check_assignment(self._topic_partition) or not self.has_more():
            return []
        got, ended = records.take(max_records)
        self._update_position()
        if ended:
            self._partition_records = None
        return got


def fits() -> bool:
    """Whether aiokafka's fetcher has the shape this module replaces."""
    try:
        parameters = tuple(inspect.signature(_AiokafkaPartitionRecords.__init__).parameters)
    except (TypeError, ValueError):
        return False
    result_init = inspect.signature(_AiokafkaFetchResult.__init__).parameters
    return (parameters == _PARAMETERS and "partition_records" in result_init
            and all(hasattr(_AiokafkaFetchResult, name) for name in _METHODS)
            and hasattr(aiokafka_fetcher, "READ_UNCOMMITTED"))


def install() -> bool:
    """Read fetched records through this module from now on (every aiokafka consumer of the
    process); True when installed, False (aiokafka's own path kept, with a warning) when
    aiokafka's fetcher has another shape."""
    if aiokafka_fetcher.FetchResult is FetchResult:
        return True
    if not fits():
        log.warning("aiokafka's fetcher is not the one the worker's record reader knows: "
                    "records are read through aiokafka's own path")
        return False
    aiokafka_fetcher.PartitionRecords = partition_records
    aiokafka_fetcher.FetchResult = FetchResult
    return True


def uninstall() -> None:
    """aiokafka's own classes back (tests)."""
    aiokafka_fetcher.PartitionRecords = _AiokafkaPartitionRecords
    aiokafka_fetcher.FetchResult = _AiokafkaFetchResult
