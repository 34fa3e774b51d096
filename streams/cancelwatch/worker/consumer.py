"""A faust consumer that hands whole fetches of the worker's source topics to its agent.

faust delivers every message on its own: an async generator step, a Message
object, sensors, an Event, a queue put, a stream step and an ack per message,
about 100 µs each on a 2-core machine, which caps a worker near 8,000
events/s however little the agent does. `BatchingConsumer` keeps faust's
consumer (group membership, assignment, table recovery, flow suspension,
offset tracking, gaps and commits) and changes one thing: the records of the
source topics named in `batch_topics` are handed over per fetch, as they come
from aiokafka (through a `Mailbox`), and acknowledged per fetch
(`ack_fetch(fetch)`) once the agent has applied them and the broker has the
changelog records of their writes, so offsets are committed only for applied
records, exactly as before.

Offsets of the source topics are committed more strictly than faust does. faust
commits the first run of acknowledged offsets, which may start past records
that were fetched and never applied: always on a partition without a committed
offset (and one committed at 0), and by one record on any other. Here an offset
is committed only when every record from the committed position (or the start
of a partition that has none) up to it was applied, or is a hole the broker
returned twice. A partition read past its commit position whose commit has not
moved for HELD_REREAD_SECONDS had records dropped (a fetch given up, a group
discarded): they are read again.

Table recovery gets the same treatment. faust restores a table one changelog
record at a time through the same per-message path (about 80 µs each, so a
million keys took 90 s). While a partition is being recovered, its records
are written to the table's store in one batch per fetch, and faust's recovery
offsets are moved on, as faust itself does per record; the last record of each
fetch still goes through faust's path, so its recovery loop sees the progress
and ends the recovery itself. Records of every other topic take faust's path.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from typing import Callable, Sequence

from faust.transport.consumer import CONSUMER_FETCHING
from faust.types import TP
from faust.utils.functional import consecutive_numbers
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from cancelwatch.worker.mailbox import Fetch, Mailbox

log = logging.getLogger("cancelwatch.worker")

# A source partition's commit held this long (acknowledged records past others never
# applied) has its records from the commit position read again.
HELD_REREAD_SECONDS = 10.0


class _ChangelogEvent:
    """The parts of a faust changelog Event that a store's apply_changelog_batch reads."""

    __slots__ = ("message", "tp", "offset", "partition", "key", "value")

    def __init__(self, tp, record) -> None:
        self.message = self
        self.tp = tp
        self.offset = record.offset
        self.partition = record.partition
        self.key = record.key
        self.value = record.value


class BatchingConsumer(aiokafka_driver.Consumer):
    batch_topics: frozenset[str] = frozenset()
    mailbox: Mailbox | None = None
    on_read_again: Callable[[str], None] | None = None    # topic: a partition of it read again

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_positions()

    def _init_positions(self) -> None:
        # Source partitions only (`batch_topics`):
        self._next: dict = {}       # TP -> the next offset expected from the fetcher
        self._verify: dict = {}     # TP -> the offset a read-again started at (its next fetch tells a hole from a skip)
        self._start: dict = {}      # TP -> the first offset of a partition without a committed offset
        self._held: dict = {}       # TP -> (commit position, since): commit held by records not applied
        self._reread: set = set()   # TPs to read again from their commit position
        self._unsought: set = set() # TPs whose records came while their position was not known
        self.seeks = 0              # seeks so far: a fetch read after the last one is read only once
        self._acked_max: dict = {}  # TP -> the highest offset acknowledged by this consumer

    def last_poll_timestamp(self, tp) -> int | None:
        """When a fetch response last gave `tp`'s high watermark (epoch ms; None: none yet)."""
        return self._thread._ensure_consumer().last_poll_timestamp(tp)

    @classmethod
    def for_topics(cls, topics: Sequence[str], mailbox: Mailbox,
                   on_read_again: Callable[[str], None] | None = None) -> type["BatchingConsumer"]:
        return type("BatchingConsumer", (cls,), {"batch_topics": frozenset(topics), "mailbox": mailbox,
                                                 "on_read_again": staticmethod(on_read_again) if on_read_again else None})

    def ack_fetch(self, fetch: Fetch) -> None:
        """Acknowledge every record of an applied fetch."""
        acked = 0
        with ack_lock:
            for tp, offsets in fetch.offsets.items():
                committed = self._committed_offset[tp]
                if committed is not None and offsets[0] < committed:
                    offsets = [offset for offset in offsets if offset >= committed]
                index = self._acked_index[tp]
                if not index.isdisjoint(offsets):
                    offsets = [offset for offset in offsets if offset not in index]
                index.update(offsets)
                self._acked[tp].extend(offsets)
                acked += len(offsets)
                if offsets and offsets[-1] > self._acked_max.get(tp, -1):
                    self._acked_max[tp] = offsets[-1]
            self._n_acked += acked
            notify(self._waiting_for_ack)

    def only_copy(self, fetch: Fetch) -> bool:
        """Whether `fetch` holds the only copy of its records so far: none of them acknowledged
        before (read twice around a seek), and no seek since it was read (to read them again).
        Giving such a fetch up loses its records unless the commit rule brings them back."""
        if fetch.seeks != self.seeks:
            return False
        return all(offsets[0] > self._acked_max.get(tp, -1) for tp, offsets in fetch.offsets.items())

    def _forget(self, tps) -> None:
        for tp in tps:
            tp = TP(tp.topic, tp.partition)
            for positions in (self._next, self._verify, self._start, self._held):
                positions.pop(tp, None)
            self._reread.discard(tp)
            self._unsought.discard(tp)

    async def on_partitions_revoked(self, revoked) -> None:
        self._forget(revoked)
        await super().on_partitions_revoked(revoked)

    async def _seek(self, partition, offset: int) -> None:
        """aiokafka's seek, run on the consumer's thread (faust runs it on the caller's).

        aiokafka's seek deletes the partition's fetched records, and `fetched_records`, on
        the consumer's thread, reads that entry and then deletes it: a seek from this
        thread in between stops the worker with a KeyError. On the consumer's loop the
        two cannot interleave."""
        consumer = self._thread._ensure_consumer()
        await self._thread.call_thread(consumer.seek, partition, offset)

    async def seek(self, partition, offset: int) -> None:
        self.seeks += 1
        await super().seek(partition, offset)
        tp = TP(partition.topic, partition.partition)
        if tp.topic in self.batch_topics:
            self._next[tp] = offset

    async def seek_to_committed(self):
        """faust's seek to the committed offsets, made complete for the batch topics.

        aiokafka seeks only the partitions whose committed offset is above 0; any other keeps
        its fetch position, which can be past records fetched and dropped: a fetch of a
        partition paused for recovery, or one given up for a rebalance. faust's commit then
        takes the first run of acknowledged offsets, so those records would be skipped for
        good. Such a partition is read again from its beginning (what a group without a
        committed offset does), and re-applying records changes nothing.

        faust resumes the partitions before it seeks, and the seek runs on the consumer's
        thread while this one goes on handling fetches: a fetch handled meanwhile may come
        from before the seek or after it. So the positions are forgotten first: such a fetch
        is not applied (`_new_source_records`), and its partition is sought again once the
        committed offsets are known, since its fetch position may have moved past records
        that are then never handed over."""
        self.seeks += 1
        self._forget([tp for tp in self.assignment() if tp.topic in self.batch_topics])
        committed = await super().seek_to_committed()
        fresh = [tp for tp, offset in committed.items()
                 if tp.topic in self.batch_topics and not (offset and offset > 0)]
        starts: dict = {}
        if fresh:
            consumer = self._thread._ensure_consumer()
            await self._thread.call_thread(consumer.seek_to_beginning, *fresh)
            try:
                starts = await self._thread.call_thread(consumer.beginning_offsets, fresh)
            except Exception as error:     # noqa: BLE001 - 0 is safe: offsets before the first are holes
                log.info("first offsets of %s not read (%r): counted from 0", fresh, error)
        for tp, offset in committed.items():
            if tp.topic not in self.batch_topics:
                continue
            tp = TP(tp.topic, tp.partition)
            if offset and offset > 0:
                self._next[tp] = offset
            else:
                self._next[tp] = self._start[tp] = starts.get(tp, 0) or 0
        unsought, self._unsought = self._unsought, set()
        for tp in sorted(unsought & self._next.keys() & self.assignment()):
            log.info("%s: records fetched while its position was being sought were not applied: "
                     "reading from %d again", tp, self._next[tp])
            await self.seek(tp, self._next[tp])
        return committed

    # -- committing ------------------------------------------------------------
    def _commit_position(self, tp) -> int | None:
        """The committed offset, or the first offset of a partition without one; None while
        the partition has not been sought since its assignment."""
        committed = self._committed_offset.get(tp)
        return committed if committed is not None else self._start.get(tp)

    def _new_offset(self, tp) -> int | None:
        """The offset to commit for `tp`: the end of the run of applied records (or holes) that
        starts at the commit position; None while the record there is not applied."""
        if tp.topic not in self.batch_topics:
            return super()._new_offset(tp)
        acked = self._acked[tp]
        if not acked:
            return None
        start = self._commit_position(tp)
        if start is None:
            return None     # not sought since the assignment: its commit position is not known yet
        gaps = self._gap[tp]
        if gaps:
            top = max(acked) + 1
            for hole in gaps.overlap(0, top):
                acked.extend(range(hole.begin, hole.end))
            gaps.chop(0, top)
        acked[:] = sorted(set(acked))
        below = bisect.bisect_left(acked, start)
        if below:
            self._acked_index[tp].difference_update(acked[:below])
            del acked[:below]
        if not acked:
            return None         # only records applied again, before the commit position
        if acked[0] != start:
            return None         # the record there is not applied: held (see `_check_held`)
        run = next(consecutive_numbers(acked))
        del acked[:len(run)]
        self._acked_index[tp].difference_update(run)
        return run[-1] + 1

    def _check_held(self) -> None:
        """A source partition read past its commit position whose commit has not moved for
        HELD_REREAD_SECONDS: records read were never applied (applied ones are committed within
        seconds), so it is read again from its commit position."""
        now = time.monotonic()
        for tp, expected in self._next.items():
            start = self._commit_position(tp)
            # Read past the commit position: by the fetch position, or by records applied past
            # it (a seek may have moved the fetch position back to it since).
            if start is None or max(expected, self._acked_max.get(tp, -1) + 1) <= start:
                self._held.pop(tp, None)
                continue
            held = self._held.get(tp)
            if held is None or held[0] != start:
                self._held[tp] = (start, now)
            elif now - held[1] >= HELD_REREAD_SECONDS:
                log.warning("%s: records from offset %d read %.0fs ago and not applied: reading them again",
                            tp, start, now - held[1])
                self._held[tp] = (start, now)
                self._reread.add(tp)

    async def _read_again(self) -> None:
        assigned = self.assignment()
        for tp in list(self._reread):
            self._reread.discard(tp)
            held = self._held.get(tp)
            if held is not None and tp in assigned:
                await self.seek(tp, held[0])
                if self.on_read_again is not None:
                    self.on_read_again(tp.topic)

    async def _drain_messages(self, fetcher) -> None:  # noqa: C901 - mirrors faust's own loop
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        batch_topics = self.batch_topics
        mailbox = self.mailbox
        max_records = self.app.conf.broker_max_poll_records
        to_message = self._to_message
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                await self.sleep(0)
                if self.should_stop:
                    break
                if not mailbox.has_room():
                    await self.wait_first(mailbox.room(), self.suspend_flow.wait())
                self._check_held()
                if self._reread:
                    await self._read_again()
                seeks = self.seeks      # a seek during the wait may make what it returns stale
                records, active = await self._wait_next_records(1.0)
                if not records or self.should_stop:
                    unset_flag(CONSUMER_FETCHING)
                    continue
                if not self.flow_active:
                    await self.perform_seek()   # as faust's getmany: read again from the committed offsets
                    unset_flag(CONSUMER_FETCHING)
                    continue
                fetch = Fetch(self.app.consumer_generation_id,
                              full=max_records is not None and sum(map(len, records.values())) >= max_records,
                              seeks=seeks)
                for tp, batch in records.items():
                    if not batch or not (active is None or tp in active or tp in self._buffered_partitions):
                        self._verify.pop(tp, None)   # skipped: the next fetch past it is not a hole
                        if batch and tp.topic in batch_topics:
                            await self._skipped(tp, batch)
                        continue
                    if tp.topic in batch_topics:
                        batch = await self._new_source_records(tp, batch, acks_enabled_for(tp.topic))
                    else:
                        batch = await self._new_records(tp, batch, get_read_offset(tp), acks_enabled_for(tp.topic))
                    if not batch:
                        continue
                    last = batch[-1].offset
                    if tp.topic in batch_topics:
                        fetch.records.extend(batch)
                        fetch.offsets[tp] = [record.offset for record in batch]
                    else:
                        for record in self._restore(tp, batch):
                            await self.wait_first(callback(to_message(tp, record)), self.suspend_flow.wait())
                            if not self.flow_active:
                                break
                        if not self.flow_active:
                            break    # a rebalance began: faust seeks back to the committed offsets
                    set_read_offset(tp, last)
                if commit_every is not None and self._n_acked >= commit_every:
                    self._n_acked = 0
                    await self.commit()
                if fetch.records:
                    handed = asyncio.ensure_future(mailbox.put(fetch))
                    await self.wait_first(handed, self.suspend_flow.wait())
                    if not handed.done():
                        # Flow suspended for a rebalance: drop the fetch; faust seeks
                        # back to the committed offsets, so it is fetched again.
                        handed.cancel()
                # Not kept while waiting for the next fetch: the agent owns these records now.
                records = batch = fetch = handed = None
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    def _restore(self, tp, batch: list) -> list:
        """Write a recovering partition's changelog records to its store at once; return the
        records still to go through faust's path (the last one, or all when not recovering)."""
        recovery = self.app.tables.recovery
        if not (recovery.in_recovery and tp in recovery.active_tps) or len(batch) < 2:
            return batch
        if not self.app.tables.changelog_queue.empty():
            return batch     # faust's recovery loop has records of its own to apply first
        seen = recovery.active_offsets.get(tp)
        if seen is not None and batch[0].offset <= seen:
            batch = [record for record in batch if record.offset > seen]
            if len(batch) < 2:
                return batch
        table = recovery.tp_to_table[tp]
        buffered = recovery.buffers.get(table)
        if buffered:         # keep the order of writes: faust's buffered records go first
            table.apply_changelog_batch(buffered)
            buffered.clear()
        table.apply_changelog_batch([_ChangelogEvent(tp, record) for record in batch[:-1]])
        recovery.active_offsets[tp] = batch[-2].offset
        return batch[-1:]

    async def _skipped(self, tp, batch: list) -> None:
        """Records of a source partition given up unapplied (paused): read them again from the
        next offset expected, rather than wait for a later fetch to show the skip; there may
        be none (the end of the partition). A partition whose position is being sought is
        sought again when it is known."""
        expected = self._next.get(tp)
        if expected is None:
            self._unsought.add(tp)
        elif batch[-1].offset >= expected and tp in self.assignment():
            await self.seek(tp, expected)

    async def _new_source_records(self, tp, batch: list, acks: bool) -> list:
        """The records of a source partition from the next offset expected on: a fetch that
        starts past it is read again from it (it crossed a seek, or records were skipped);
        offsets missing from a fetch that starts there, or inside a fetch, are holes. A fetch
        of a partition whose position is not known (not sought since its assignment, or being
        sought) is not applied: it is read again once the position is known."""
        expected = self._next.get(tp)
        if expected is None:
            self._unsought.add(tp)
            return []
        if batch[0].offset < expected:
            batch = [record for record in batch if record.offset >= expected]
            if not batch:
                return batch
        if acks and batch[0].offset > expected and self._verify.get(tp) != expected:
            self._verify[tp] = expected
            self.log.info("%s: fetch at %d, past the next record expected (%d): reading from it again",
                          tp, batch[0].offset, expected)
            await self.seek(tp, expected)
            return []
        self._verify.pop(tp, None)
        previous = expected - 1
        if acks and batch[-1].offset - previous != len(batch):    # not every offset from `expected` on
            gaps = self._gap[tp]
            for record in batch:   # holes the broker returned: transaction markers, compaction
                if record.offset - previous > 1:
                    gaps.addi(previous + 1, record.offset)
                previous = record.offset
        self._next[tp] = batch[-1].offset + 1
        return batch

    async def _new_records(self, tp, batch: list, read_offset: int | None, acks: bool) -> list:
        """The records past the read offset; offsets skipped in between become gaps (faust's rule)."""
        if read_offset is not None and batch[0].offset < read_offset:
            batch = [record for record in batch if record.offset >= read_offset]
            if not batch:
                return batch
        if not (acks and read_offset):
            return batch
        previous = read_offset
        for record in batch:   # compacted or transactional topics: register each hole
            if record.offset - previous > 1:
                await self._add_gap(tp, previous + 1, record.offset)
            previous = record.offset
        return batch
