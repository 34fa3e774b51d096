"""BatchingConsumer's offset rules: what it commits and what it reads again.

The consumer is built without a broker: its offset bookkeeping (acknowledged offsets,
holes, commit positions) is plain state, and its one call into Kafka, `_seek`, is
recorded instead of sent. The same rules run against the real broker in the fault tests
(tests/test_scaleout.py, the `drop-fetch` fail point).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

import pytest
from faust.types import TP
from intervaltree import IntervalTree
from mode.threads import QueueServiceThread
from mode.utils.logging import CompositeLogger

from cancelwatch.worker import consumer as consumer_module
from cancelwatch.worker.consumer import BatchingConsumer
from cancelwatch.worker.mailbox import Mailbox

SOURCE = TP("orders", 0)


class Record:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class OffsetsOnly(BatchingConsumer.for_topics(["orders"], Mailbox())):
    """The consumer's offset bookkeeping with seeks recorded instead of sent."""

    def __init__(self) -> None:   # noqa: super().__init__ needs an app and a broker
        self._acked = defaultdict(list)
        self._acked_index = defaultdict(set)
        self._gap = defaultdict(IntervalTree)
        self._committed_offset = defaultdict(lambda: None)
        self._read_offset = defaultdict(lambda: None)
        self.sought: list[tuple[TP, int]] = []
        self._init_positions()

    @property
    def log(self):
        return CompositeLogger(logging.getLogger("test-consumer"))

    async def _seek(self, partition, offset: int) -> None:
        self.sought.append((partition, offset))

    def assignment(self):
        return {SOURCE}

    def ack(self, offsets) -> None:
        offsets = list(offsets)
        self._acked[SOURCE].extend(offsets)
        self._acked_index[SOURCE].update(offsets)
        if offsets:
            self._acked_max[SOURCE] = max(self._acked_max.get(SOURCE, -1), max(offsets))

    def fetched(self, offsets) -> list[int]:
        batch = asyncio.run(self._new_source_records(SOURCE, [Record(o) for o in offsets], acks=True))
        return [record.offset for record in batch]


def fresh(start: int = 0) -> OffsetsOnly:
    """A partition without a committed offset, read from its first offset `start`."""
    consumer = OffsetsOnly()
    consumer._next[SOURCE] = consumer._start[SOURCE] = start
    return consumer


def test_faust_commits_past_records_never_applied_on_a_partition_without_a_commit():
    # The reason for the consumer's own rule: records 0-4 were fetched and dropped,
    # 5-9 applied; faust's rule commits 10 and 0-4 are never read again.
    consumer = fresh()
    consumer.ack(range(5, 10))
    assert super(BatchingConsumer, consumer)._new_offset(SOURCE) == 10


def test_a_commit_waits_for_the_first_records_of_a_partition_without_a_commit():
    consumer = fresh()
    consumer.ack(range(5, 10))
    assert consumer._new_offset(SOURCE) is None
    consumer.ack(range(0, 5))
    assert consumer._new_offset(SOURCE) == 10
    assert consumer._acked[SOURCE] == [] and consumer._acked_index[SOURCE] == set()


def test_a_commit_waits_for_the_record_at_the_committed_offset():
    consumer = OffsetsOnly()
    consumer._committed_offset[SOURCE] = 100
    consumer.ack(range(101, 110))            # faust's rule lets 100 go (one past the committed offset)
    assert consumer._new_offset(SOURCE) is None
    consumer.ack([100])
    assert consumer._new_offset(SOURCE) == 110


def test_a_commit_runs_to_the_first_record_not_applied():
    consumer = fresh(start=20)
    consumer.ack([20, 21, 22, 25, 26])
    assert consumer._new_offset(SOURCE) == 23
    consumer._committed_offset[SOURCE] = 23
    assert consumer._new_offset(SOURCE) is None
    assert consumer._acked[SOURCE] == [25, 26]


def test_records_applied_again_below_the_commit_position_hold_nothing():
    consumer = OffsetsOnly()
    consumer._committed_offset[SOURCE] = 50
    consumer.ack(range(40, 50))
    assert consumer._new_offset(SOURCE) is None
    assert consumer._acked[SOURCE] == [] and SOURCE not in consumer._held


def test_a_partition_not_sought_yet_commits_nothing():
    consumer = OffsetsOnly()
    consumer.ack(range(0, 5))
    assert consumer._new_offset(SOURCE) is None


def test_a_fetch_past_the_next_record_is_read_again_before_its_hole_counts():
    consumer = fresh(start=10)
    assert consumer.fetched([12, 13]) == []              # crossed a seek, or 10-11 were skipped
    assert consumer.sought == [(SOURCE, 10)]
    assert consumer.fetched([12, 13]) == [12, 13]        # the same again from 10: 10-11 hold no records
    consumer.ack([12, 13])
    assert consumer._new_offset(SOURCE) == 14


def test_a_skip_between_the_read_again_and_its_fetch_reads_again_once_more():
    consumer = fresh(start=10)
    assert consumer.fetched([12, 13]) == []
    consumer._verify.pop(SOURCE, None)                   # what the drain loop does for a skipped partition
    assert consumer.fetched([14]) == []
    assert consumer.sought == [(SOURCE, 10), (SOURCE, 10)]
    assert consumer.fetched([10, 11, 12]) == [10, 11, 12]


def test_records_already_read_are_not_handed_over_twice_and_holes_inside_a_fetch_count():
    consumer = fresh(start=0)
    assert consumer.fetched([0, 1, 2]) == [0, 1, 2]
    assert consumer.fetched([1, 2, 3, 5]) == [3, 5]       # 4: a transaction marker
    consumer.ack([0, 1, 2, 3, 5])
    assert consumer._new_offset(SOURCE) == 6


@pytest.mark.parametrize("applied", [range(5, 10), range(0)], ids=["later-records-applied", "nothing-after"])
def test_records_read_and_not_applied_for_too_long_are_read_again(monkeypatch, applied):
    clock = [1000.0]
    monkeypatch.setattr(consumer_module.time, "monotonic", lambda: clock[0])
    consumer = fresh()
    assert consumer.fetched(range(0, 10)) == list(range(10))    # 0-4 then given up, say
    consumer.ack(applied)
    assert consumer._new_offset(SOURCE) is None
    consumer._check_held()
    clock[0] += consumer_module.HELD_REREAD_SECONDS - 1
    consumer._check_held()
    assert not consumer._reread
    clock[0] += 1
    consumer._check_held()
    assert consumer._reread == {SOURCE}
    read_again = []
    consumer.on_read_again = read_again.append
    asyncio.run(consumer._read_again())
    assert consumer.sought == [(SOURCE, 0)] and consumer._next[SOURCE] == 0
    assert read_again == ["orders"]        # counted in cancelwatch_reads_again_total
    assert consumer.fetched(range(0, 10)) == list(range(10))
    consumer.ack(range(0, 10))
    assert consumer._new_offset(SOURCE) == 10


def test_a_partition_whose_commit_moves_is_not_read_again(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(consumer_module.time, "monotonic", lambda: clock[0])
    consumer = fresh()
    for first in range(0, 100, 10):
        consumer.fetched(range(first, first + 10))
        consumer._check_held()
        clock[0] += consumer_module.HELD_REREAD_SECONDS / 2
        consumer.ack(range(first, first + 10))
        consumer._committed_offset[SOURCE] = consumer._new_offset(SOURCE)
    consumer._check_held()
    clock[0] += consumer_module.HELD_REREAD_SECONDS * 2
    consumer._check_held()                 # read up to its commit: nothing held
    assert not consumer._reread and consumer.sought == []


@pytest.mark.parametrize("offsets", [[0, 1, 2], [3, 4]])
def test_revoking_a_partition_forgets_its_positions(offsets):
    consumer = fresh()
    consumer.fetched(offsets)
    consumer._forget([SOURCE])
    assert SOURCE not in consumer._next and SOURCE not in consumer._start


def test_only_a_fetch_whose_records_were_never_applied_and_no_seek_followed_is_the_only_copy():
    from cancelwatch.worker.mailbox import Fetch
    consumer = fresh()
    first = Fetch(0, offsets={SOURCE: [0, 1, 2]}, seeks=consumer.seeks)
    assert consumer.only_copy(first)
    consumer.ack_fetch(first)
    again = Fetch(0, offsets={SOURCE: [0, 1, 2]}, seeks=consumer.seeks)   # read twice around a seek
    assert not consumer.only_copy(again)
    assert consumer.only_copy(Fetch(0, offsets={SOURCE: [3, 4]}, seeks=consumer.seeks))
    consumer.seeks += 1
    assert not consumer.only_copy(Fetch(0, offsets={SOURCE: [3, 4]}, seeks=consumer.seeks - 1))


class SeekingThread:
    """The consumer's thread for `seek_to_committed`: the committed offsets, and a fail point
    inside the seek, where the worker's thread handles fetches meanwhile."""

    def __init__(self, committed: dict, during) -> None:
        self.committed, self.during = committed, during

    async def seek_to_committed(self) -> dict:
        if self.during is not None:
            await self.during()
        return dict(self.committed)


@pytest.mark.parametrize("previous", [None, 420], ids=["new-worker", "position-of-a-previous-assignment"])
def test_fetches_handled_while_the_committed_offsets_are_sought_are_read_again_from_them(previous):
    # The sequence of a takeover that lost records 500-999 of a partition. The previous owner
    # committed 500. This worker's fetch of 500-999 was dropped while the partition was paused
    # for recovery. faust resumes the partitions, then seeks them to the committed offsets on
    # the consumer's thread, one after the other, while this thread handles fetches: one of
    # 1000-1015 (the end of the partition), then, the seek of this partition done, one of
    # 500-1015. Taking the first as applied (500 is expected only once the seek returns)
    # and the second as read already, the partition ends at 1016 with 500-999 never applied,
    # its commit at 500 and no fetch left to show it.
    consumer = OffsetsOnly()
    if previous is not None:
        consumer._next[SOURCE] = previous
    handled = []

    async def fetches_meanwhile() -> None:
        for offsets in (range(1000, 1016), range(500, 1016)):
            batch = await consumer._new_source_records(SOURCE, [Record(o) for o in offsets], acks=True)
            handled.append([record.offset for record in batch])
    consumer._thread = SeekingThread({SOURCE: 500}, fetches_meanwhile)
    asyncio.run(consumer.seek_to_committed())
    assert handled == [[], []]                          # not applied: the position was not known
    assert consumer.sought == [(SOURCE, 500)]           # sought again once the committed offset is known
    assert consumer._next[SOURCE] == 500
    assert consumer.fetched(range(500, 1016)) == list(range(500, 1016))
    consumer._committed_offset[SOURCE] = 500
    consumer.ack(range(500, 1016))
    assert consumer._new_offset(SOURCE) == 1016


def test_a_seek_to_committed_offsets_with_no_fetch_meanwhile_seeks_nothing_more():
    consumer = OffsetsOnly()
    consumer._thread = SeekingThread({SOURCE: 500}, None)
    asyncio.run(consumer.seek_to_committed())
    assert consumer.sought == [] and consumer._next[SOURCE] == 500
    assert consumer.fetched(range(500, 510)) == list(range(500, 510))


@pytest.mark.parametrize("skipped, sought", [([10, 11, 12], [(SOURCE, 10)]), ([7, 8, 9], [])],
                         ids=["past-the-next-offset", "all-read-already"])
def test_a_fetch_given_up_unapplied_is_read_again_at_once(skipped, sought):
    # A paused partition's fetch is dropped by the drain loop. Its fetch position moved past
    # the records: waiting for a later fetch to show the skip waits forever at the end of the
    # partition. Records all below the next offset expected were applied already.
    consumer = fresh(start=0)
    assert consumer.fetched(range(0, 10)) == list(range(10))
    asyncio.run(consumer._skipped(SOURCE, [Record(o) for o in skipped]))
    assert consumer.sought == sought
    assert consumer._next[SOURCE] == 10


def test_a_fetch_given_up_while_the_position_is_sought_is_sought_again():
    consumer = fresh(start=0)
    consumer._thread = SeekingThread({SOURCE: 500},
                                     lambda: consumer._skipped(SOURCE, [Record(o) for o in range(1000, 1016)]))
    asyncio.run(consumer.seek_to_committed())
    assert consumer.sought == [(SOURCE, 500)]


def test_records_applied_past_a_commit_that_does_not_move_are_read_again(monkeypatch):
    # Records past the commit position were applied and the fetch position was later set back
    # to the commit position (a seek) with no fetch since: the held commit still shows.
    clock = [1000.0]
    monkeypatch.setattr(consumer_module.time, "monotonic", lambda: clock[0])
    consumer = fresh()
    consumer._committed_offset[SOURCE] = 500
    consumer.ack(range(1000, 1016))
    consumer._next[SOURCE] = 500
    assert consumer._new_offset(SOURCE) is None
    consumer._check_held()
    clock[0] += consumer_module.HELD_REREAD_SECONDS
    consumer._check_held()
    assert consumer._reread == {SOURCE}
    asyncio.run(consumer._read_again())
    assert consumer.sought == [(SOURCE, 500)]


def test_a_fetch_given_up_for_a_partition_no_longer_assigned_seeks_nothing():
    # aiokafka refuses to seek a partition it does not hold (a rebalance took it meanwhile).
    consumer = fresh(start=0)
    gone = TP("orders", 1)
    consumer._next[gone] = 0
    asyncio.run(consumer._skipped(gone, [Record(o) for o in range(0, 10)]))
    assert consumer.sought == []


class SeekRecorder:
    """aiokafka's consumer as far as a seek goes: it records the loop each seek ran on."""

    def __init__(self) -> None:
        self.seeks: list[tuple[asyncio.AbstractEventLoop, TP, int]] = []

    def seek(self, partition, offset: int) -> None:
        self.seeks.append((asyncio.get_running_loop(), partition, offset))


class ConsumerLoop(QueueServiceThread):
    """A real mode service thread, as faust's consumer thread is, around the recorder."""

    def __init__(self, consumer: SeekRecorder) -> None:
        super().__init__()
        self.recorder = consumer

    def _ensure_consumer(self) -> SeekRecorder:
        return self.recorder

    def seek(self, partition, offset: int) -> None:   # faust's: run on the caller's thread
        self.recorder.seek(partition, offset)


def test_a_seek_runs_on_the_consumer_s_thread_where_it_cannot_cut_into_fetched_records():
    # aiokafka's fetched_records reads a partition's entry and then deletes it; a seek
    # deletes the same entry. Run from the worker's thread it can land in between (a
    # KeyError stopped a worker in the three-worker rebalance test); on the consumer's
    # loop it cannot.
    recorder = SeekRecorder()

    async def seek_through_the_thread():
        thread = ConsumerLoop(recorder)
        await thread.start()
        try:
            consumer = OffsetsOnly()
            consumer._thread = thread
            await BatchingConsumer._seek(consumer, SOURCE, 7)
            return asyncio.get_running_loop(), thread.thread_loop
        finally:
            await thread.stop()

    callers, consumers = asyncio.run(seek_through_the_thread())
    assert [(partition, offset) for _, partition, offset in recorder.seeks] == [(SOURCE, 7)]
    assert recorder.seeks[0][0] is consumers
    assert consumers is not callers
