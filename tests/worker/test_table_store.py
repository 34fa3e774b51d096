"""The state transaction (`TableStore`) on a real RocksDB, without a broker.

The database is rocksdict, as in the worker; the changelog producer is an
in-memory stand-in that records what it was asked to send (a real broker
runs in tests/test_scaleout.py, where every fail point is hit in a real
worker). Here the order of the steps is checked one gap at a time."""

from __future__ import annotations

import asyncio

import pytest
from rocksdict import Options, Rdict

from cancelwatch.worker import table_store
from cancelwatch.worker.table_store import Failpoints, TableStore

OFFSET_KEY = b"__faust\0offset__"


class Delivered:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class Batch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes | None]] = []

    def append(self, timestamp, key, value):
        if len(self.records) >= 3:          # small batches: several per partition
            return None
        self.records.append((key, value))
        return object()

    def record_count(self) -> int:
        return len(self.records)


class Producer:
    def __init__(self, log: list) -> None:
        self.log = log
        self.next_offset: dict[int, int] = {}

    def create_batch(self) -> Batch:
        return Batch()

    async def send_batch(self, batch: Batch, topic: str, partition: int):
        offset = self.next_offset.get(partition, 0)
        self.next_offset[partition] = offset + batch.record_count()
        self.log.append(("changelog", partition, list(batch.records)))
        future = asyncio.get_running_loop().create_future()
        future.set_result(Delivered(offset))
        return future


class Data:
    offset_key = OFFSET_KEY

    def __init__(self, directory) -> None:
        self.directory = directory
        self._dbs: dict[int, Rdict] = {}      # faust's name: its store's open databases

    def _db_for_partition(self, partition: int) -> Rdict:
        if partition not in self._dbs:
            self._dbs[partition] = Rdict(str(self.directory / f"p{partition}"), Options(raw_mode=True))
        return self._dbs[partition]


class Table:
    def __init__(self, directory, log: list) -> None:
        self.data = Data(directory)
        producer = Producer(log)

        class App:
            class producer:  # noqa: N801 - faust's attribute name
                @staticmethod
                def _ensure_producer():
                    return producer
        self.app = App

        class Changelog:
            @staticmethod
            def get_topic_name():
                return "changelog"
        self.changelog_topic = Changelog


def partition_of(key: bytes) -> int:
    return key[0] % 2


@pytest.fixture
def store(tmp_path):
    log: list = []
    table = Table(tmp_path, log)
    yield TableStore(table, partition_of), table, log
    for db in table.data._dbs.values():
        db.close()


def test_writes_are_staged_visible_at_once_and_written_only_by_commit(store):
    store, table, log = store
    store[b"a1"] = b"one"
    store[b"b2"] = b"two"
    assert store[b"a1"] == b"one" and b"b2" in store
    assert table.data._db_for_partition(partition_of(b"a1")).get(b"a1") is None
    assert log == []
    asyncio.run(store.commit())
    assert table.data._db_for_partition(partition_of(b"a1")).get(b"a1") == b"one"
    assert {entry[1] for entry in log} == {partition_of(b"a1"), partition_of(b"b2")}


def test_the_changelog_offset_is_written_in_the_same_batch_as_the_values(store):
    store, table, log = store
    keys = [bytes([97 + 2 * n]) + b"%d" % n for n in range(7)]      # all on one partition
    partition = partition_of(keys[0])
    assert {partition_of(key) for key in keys} == {partition}
    for key in keys:
        store[key] = key.upper()
    asyncio.run(store.commit())
    db = table.data._db_for_partition(partition)
    assert db.get(OFFSET_KEY) == b"6"                 # 7 records: offsets 0..6, in 3 produce batches
    assert sum(len(records) for _, _, records in log) == 7


def test_deletes_and_local_keys_local_keys_never_reach_the_changelog(store):
    store, table, log = store
    store[b"a1"] = b"one"
    store.local[b"a-index"] = b"7"
    asyncio.run(store.commit())
    del store[b"a1"]
    asyncio.run(store.commit())
    db = table.data._db_for_partition(partition_of(b"a1"))
    assert db.get(b"a1") is None and db.get(b"a-index") == b"7"
    logged = [record for _, _, records in log for record in records]
    assert logged == [(b"a1", b"one"), (b"a1", None)]
    with pytest.raises(KeyError):
        del store[b"a1"]


class Stop(Exception):
    pass


@pytest.mark.parametrize("point", ["after-changelog", "after-local-write"])
def test_each_fail_point_stops_between_its_two_steps(store, monkeypatch, point):
    store, table, log = store
    store.failpoints = Failpoints(point, at=2)

    def exit_hard(code):
        raise Stop(code)
    monkeypatch.setattr(table_store.os, "_exit", exit_hard)
    store[b"a1"] = b"first"
    asyncio.run(store.commit())                      # commit 1: not the one named
    store[b"a1"] = b"second"
    with pytest.raises(Stop) as stopped:
        asyncio.run(store.commit())
    assert stopped.value.args == (table_store.FAILPOINT_EXIT_CODE,)
    logged = [value for _, _, records in log for _, value in records]
    assert logged == [b"first", b"second"]           # the changelog has it in both cases
    local = table.data._db_for_partition(partition_of(b"a1")).get(b"a1")
    assert local == (b"first" if point == "after-changelog" else b"second")


def test_abandon_drops_what_is_staged_and_not_being_committed(store):
    store, table, log = store
    store[b"a1"] = b"one"
    store.abandon()
    assert b"a1" not in store and not store.staged
    asyncio.run(store.commit())
    assert log == []


def test_flush_empties_the_write_buffers_and_keeps_every_value(store):
    # At rest the worker writes RocksDB's write buffers (memtables) out to its files, so they
    # hold no memory; every value stays readable.
    store, table, _ = store
    keys = [bytes([97 + n % 4]) + b"%d" % n for n in range(40)]
    for key in keys:
        store[key] = key * 3
    asyncio.run(store.commit())
    in_memtables = sum(db.property_int_value("rocksdb.num-entries-active-mem-table")
                       for db in table.data._dbs.values())
    assert in_memtables >= len(keys)
    store.flush()
    assert [db.property_int_value("rocksdb.num-entries-active-mem-table")
            for db in table.data._dbs.values()] == [0, 0]
    assert all(store[key] == key * 3 for key in keys)


def test_a_fenced_commit_writes_nothing_anywhere_and_says_why(store):
    # After a stall long enough for the session to expire, the partitions may be another
    # worker's: a bucket written from this worker's view would replace the owner's newer one.
    store, table, log = store
    reasons: list[str] = []
    fence: list[str | None] = [None]
    store.fence, store.on_fenced = (lambda: fence[0]), reasons.append
    store[b"a1"] = b"first"
    asyncio.run(store.commit())
    fence[0] = "stood still"
    store[b"a1"] = b"second"
    asyncio.run(store.commit())
    assert reasons == ["stood still"]
    assert [value for _, _, records in log for _, value in records] == [b"first"]
    assert table.data._db_for_partition(partition_of(b"a1")).get(b"a1") == b"first"
    assert store[b"a1"] == b"first" and not store.staged


def test_the_stall_watch_sees_a_stall_of_the_whole_process_not_a_busy_loop():
    now = [100.0]
    watch = table_store.StallWatch(limit_seconds=5.0, clock=lambda: now[0])
    for tick in range(1, 20):                  # ticks every 0.25 s: a busy event loop does not stop them
        now[0] = 100.0 + tick * 0.25
        watch.observe(now[0])
    assert watch.stalled_since(100.0) is None
    now[0] += 6.0                              # nothing ran for 6 s: the whole process stood still
    watch.observe(now[0])
    assert watch.stalled_since(100.0) == pytest.approx(6.0)
    assert watch.stalled_since(now[0] + 0.1) is None, "a stall before the assignment began does not count"
    now[0] += 7.0                              # stopped again, and its thread has not ticked since
    assert watch.stalled_since(now[0]) == pytest.approx(7.0)
