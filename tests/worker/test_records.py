"""The worker's reader of fetched records (streams/cancelwatch/worker/records.py) against
aiokafka's own: the same records, field by field, and the same fetch positions.

The unit tests build record batches with aiokafka's own builder and read them through
aiokafka's `FetchResult` and this module's, side by side. The stack test reads a real
topic with transactional (committed and aborted), plain and headed records through a real
consumer, once with aiokafka's classes and once with the worker's: control batches and
record batches as the broker writes them.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka.errors import CorruptRecordException
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from cancelwatch import compiled, settings, topics
from cancelwatch.core import policy
from cancelwatch.worker import app as worker_app, records

TP = TopicPartition("orders", 3)
FIELDS = ("topic", "partition", "offset", "timestamp", "timestamp_type", "key", "value", "checksum",
          "serialized_key_size", "serialized_value_size", "headers")


def batch(first: int, count: int, *, headers=(), keys=True) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 24)
    for index in range(count):
        key = f"S{index % 7}".encode() if keys and index % 5 else None
        value = None if index % 11 == 10 else f'{{"n":{first + index}}}'.encode()
        builder.append(index, timestamp=1_700_000_000_000 + index, key=key, value=value, headers=list(headers))
    data = bytearray(builder.build())
    data[0:8] = first.to_bytes(8, "big")     # the batch's base offset, outside its checksum
    return bytes(data)


class Assignment:
    """What a FetchResult reads of aiokafka's subscription state: one active, unpaused
    partition whose position moves as records are consumed."""

    active = True
    paused = False

    def __init__(self, position: int) -> None:
        self.position = position

    def state_value(self, tp):
        return self

    def consumed_to(self, position: int) -> None:
        self.position = position


def read(data: bytes, fetch_offset: int, max_records: int | None, ours: bool, *, calls: int = 10_000):
    """Every getall of one fetch response: [(records as tuples, position after), ...]."""
    make = records.partition_records if ours else records._AiokafkaPartitionRecords
    result_class = records.FetchResult if ours else records._AiokafkaFetchResult
    assignment = Assignment(fetch_offset)
    result = result_class(TP, assignment=assignment, backoff=0,
                          partition_records=make(TP, MemoryRecords(data), [], fetch_offset, None, None, True, 0))
    steps = []
    while result.has_more() and len(steps) < calls:
        got = result.getall(max_records)
        steps.append(([tuple(getattr(record, field) for field in FIELDS) for record in got], assignment.position))
    return steps


HEADED = batch(54, 29, headers=[("kind", b"order"), ("trace", None)])
RESPONSES = {40: batch(40, 13) + batch(53, 1) + HEADED + batch(83, 6), 54: HEADED + batch(83, 6)}


@pytest.mark.parametrize("max_records", [None, 1, 5, 13, 14, 29, 1000])
@pytest.mark.parametrize("first, fetch_offset", [(40, 40), (40, 47), (40, 52), (54, 54), (54, 60), (54, 82)])
def test_the_same_records_and_positions_as_aiokafka(max_records, first, fetch_offset):
    """A fetch response starts with the batch holding the fetch offset: its records before
    the offset are passed over."""
    ours = read(RESPONSES[first], fetch_offset, max_records, ours=True)
    theirs = read(RESPONSES[first], fetch_offset, max_records, ours=False)
    assert ours == theirs
    offsets = [record[2] for got, _ in ours for record in got]
    assert offsets == list(range(fetch_offset, 89))
    assert ours[-1][1] == 89                              # the position ends past the last batch


def test_records_are_the_worker_s_own_with_consumer_record_s_fields():
    got, ended = records.PartitionRecords(TP, MemoryRecords(batch(0, 3, headers=[("kind", b"order")])),
                                          [], 0, None, None, True, 0).take(None)
    assert ended and [type(record) for record in got] == [records.Record] * 3
    assert got[1].headers == (("kind", b"order"),)
    assert (got[0].key, got[0].serialized_key_size) == (None, -1)
    assert (got[1].key, got[1].serialized_key_size) == (b"S1", 2)
    assert repr(got[0]) == "Record(topic='orders', partition=3, offset=0)"


def test_getone_s_path_reads_the_same_records():
    data = batch(10, 4) + batch(14, 3)
    ours = records.partition_records(TP, MemoryRecords(data), [], 12, None, None, True, 0)
    assert [record.offset for record in ours] == [12, 13, 14, 15, 16]
    assert ours.next_fetch_offset == 17


def test_a_corrupt_batch_raises_as_aiokafka_s_does():
    data = bytearray(batch(0, 4))
    data[-3] ^= 0xFF                                   # a byte of the last record's value
    for ours in (True, False):
        with pytest.raises(CorruptRecordException, match="Invalid CRC"):
            read(bytes(data), 0, None, ours=ours)


def test_other_reads_keep_aiokafka_s_path():
    memory = MemoryRecords(batch(0, 2))
    committed = records.partition_records(TP, memory, [], 0, None, None, True, aiokafka_fetcher.READ_COMMITTED)
    decoded = records.partition_records(TP, memory, [], 0, None, bytes.decode, True, 0)
    plain = records.partition_records(TP, memory, [], 0, None, None, True, 0)
    assert type(committed) is type(decoded) is records._AiokafkaPartitionRecords
    assert type(plain) is records.PartitionRecords


@pytest.fixture
def aiokafka_s_own():
    """aiokafka's classes in its fetcher for the test; whatever was there before, after it."""
    before = aiokafka_fetcher.PartitionRecords, aiokafka_fetcher.FetchResult
    records.uninstall()
    yield
    aiokafka_fetcher.PartitionRecords, aiokafka_fetcher.FetchResult = before


def test_install_replaces_aiokafka_s_classes_and_uninstall_restores_them(aiokafka_s_own):
    assert records.fits()
    assert records.install() and records.install()       # twice: the same
    assert aiokafka_fetcher.FetchResult is records.FetchResult
    assert aiokafka_fetcher.PartitionRecords is records.partition_records
    records.uninstall()
    assert aiokafka_fetcher.FetchResult is records._AiokafkaFetchResult


def test_the_worker_s_app_reads_through_it(tmp_path, aiokafka_s_own):
    loaded = settings.load({"CANCELWATCH_DATA_DIR": str(tmp_path / "state"), "CANCELWATCH_ALERTMANAGER_URL": ""})
    worker_app.build_app(loaded, policy.load(loaded.policy_path), topics.Replication(1))
    assert aiokafka_fetcher.FetchResult is records.FetchResult


def test_it_is_compiled_with_the_core():
    assert "cancelwatch.worker.records" in compiled.MODULES
    assert records.__file__.endswith(".py") == (compiled.wanted() == "python")


@pytest.mark.stack
def test_a_real_topic_reads_the_same_through_both(kafka_bootstrap, kafka_topic, aiokafka_s_own):
    """Committed and aborted transactions (control batches between record batches), plain
    records with and without headers, read in fetches cut at 7 records."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = kafka_topic(partitions=1)

    async def produce() -> None:
        plain = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        transactional = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap,
                                         transactional_id=f"records-test-{uuid.uuid4().hex[:8]}")
        await plain.start()
        await transactional.start()
        try:
            for round_ in range(6):
                async with transactional.transaction():
                    for index in range(5):
                        await transactional.send(topic, f"t{round_}-{index}".encode(), key=b"S1")
                if round_ % 2:
                    await transactional.begin_transaction()
                    await transactional.send(topic, f"aborted-{round_}".encode(), key=b"S2")
                    await transactional.abort_transaction()
                batch_ = plain.create_batch()
                for index in range(4):
                    batch_.append(key=None if index == 2 else b"S3", value=f"p{round_}-{index}".encode(),
                                  timestamp=None, headers=[("kind", b"order")] if index % 2 else [])
                await plain.send_batch(batch_, topic, partition=0)
            await plain.flush()
        finally:
            await transactional.stop()
            await plain.stop()

    async def consume() -> list:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False, group_id=None)
        await consumer.start()
        got = []
        try:
            end = (await consumer.end_offsets([TopicPartition(topic, 0)]))[TopicPartition(topic, 0)]
            while await consumer.position(TopicPartition(topic, 0)) < end:
                fetched = await consumer.getmany(timeout_ms=1000, max_records=7)
                got.extend(tuple(getattr(record, field) for field in FIELDS)
                           for batch_ in fetched.values() for record in batch_)
            return got
        finally:
            await consumer.stop()

    asyncio.run(produce())
    theirs = asyncio.run(consume())
    assert records.install()
    ours = asyncio.run(consume())
    assert ours == theirs
    values = [record[FIELDS.index("value")] for record in ours]
    assert len(values) == 6 * 5 + 3 + 6 * 4          # aborted records too: read uncommitted
    assert b"aborted-1" in values and b"p5-3" in values


def test_a_read_fetch_is_freed_without_the_cycle_collector():
    """The worker collects cycles rarely (gc.freeze, a high threshold): a fetch response's
    buffer must go as soon as its records are read, by reference counts alone."""
    import gc
    import weakref

    gc.disable()
    try:
        result = records.FetchResult(TP, assignment=Assignment(40), backoff=0, partition_records=records.partition_records(
            TP, MemoryRecords(RESPONSES[40]), [], 40, None, None, True, 0))
        held = weakref.ref(result._partition_records)
        assert len(result.getall(None)) == 49 and not result.has_more()
        del result
        assert held() is None
    finally:
        gc.enable()
