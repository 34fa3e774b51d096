"""The worker's state transaction: a group's writes are staged, logged, then written.

`TableStore` is the faust table seen as a mapping whose keys live on their
seller's partition. A write is only staged (visible to reads at once). A
`commit()` moves what is staged through three steps, in the manner of Quix
Streams' `PartitionTransaction`:

1. the changelog records of every staged write are produced, one produce
   batch per partition, and the broker acknowledges them;
2. each partition's writes go to its RocksDB database in ONE write batch,
   together with the changelog offset they reach (faust's persisted offset);
3. the caller acknowledges the Kafka offsets of the events behind the writes.

A crash between any two steps leaves one answer: before (2), a restart on the
same data dir replays the changelog past the persisted offset and so gets the
writes; before (3), the events are read again and change nothing (records
are idempotent). A restart on an empty data dir and a takeover by another
worker restore from the changelog, which had the writes first.

Local keys (`local`, the order index) go into the same write batch but never
to the changelog: they are derived from the changelogged ones and rebuilt
after every recovery.

A worker whose process stood still long enough for its consumer-group session
to expire (SIGSTOP, a paused VM, a machine starved of CPU: every thread stops,
the heartbeat's too) has lost its partitions without knowing it: other workers
own them and have restored their state. Its writes must not reach their
changelog then: a bucket written from its old view would replace the newer one
the owner wrote, and the next restore would read the older. `StallWatch` sees
such a stall, and the store is fenced (`fence`): a commit after a stall in the
current assignment writes nothing, and `on_fenced` voids the assignment (the
worker rejoins its group; the events are read again by whoever owns them).

`Failpoints` lets the tests stop the worker hard at each gap
(`CANCELWATCH_FAILPOINT`), so every crash point is hit deterministically, make
it stand still (SIGSTOP to itself) before a commit's changelog
(`pause-before-changelog`), make the agent give up one fetch unapplied
(`drop-fetch`), or hold one until partitions are revoked (`hold-fetch`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from typing import Callable, Iterator, MutableMapping


log = logging.getLogger("cancelwatch.worker")

FAILPOINT_EXIT_CODE = 70
PAUSE_FAILPOINT = "pause-before-changelog"
HOLD_FAILPOINT = "hold-fetch"
_MISSING = object()


class StallWatch:
    """Notices when the whole process stood still: a thread of its own ticks every `tick`
    seconds and records when a tick came `limit` seconds or more after the one before. A
    busy event loop is no stall (this thread, like the consumer's heartbeat, runs on)."""

    def __init__(self, limit_seconds: float, tick_seconds: float = 0.25,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit_seconds
        self.tick = tick_seconds
        self.clock = clock
        self.last = clock()
        self.stalled_at = float("-inf")     # monotonic time the last stall ended
        self.stalled_for = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> "StallWatch":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cancelwatch-stall-watch", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            time.sleep(self.tick)
            self.observe(self.clock())

    def observe(self, now: float) -> None:
        gap = now - self.last
        if gap >= self.limit:
            self.stalled_at, self.stalled_for = now, gap
        self.last = now

    def stalled_since(self, since: float) -> float | None:
        """How long the process stood still, for a stall that ended after `since` (monotonic) or
        one going on now (this thread has not ticked since it resumed); None when there was none."""
        now = self.clock()
        if now - self.last >= self.limit:
            return now - self.last
        if self.stalled_at >= since:
            return self.stalled_for
        return None


class Failpoints:
    """Exit the process hard (or stop it: `pause-before-changelog`) at a named point of the `at`-th
    commit that writes state; or give up (`drop-fetch`) or hold (`hold-fetch`) the `at`-th fetch."""

    def __init__(self, name: str = "", at: int = 1) -> None:
        self.name = name
        self.at = at
        self.commits = 0
        self.fetches = 0

    def drops_fetch(self, consumer, fetch) -> bool:
        """`drop-fetch`: True for the `at`-th fetch that holds the only copy of its records (none
        applied before, no seek since: nothing reads them again by chance), which the agent then
        gives up unapplied and unacknowledged (as a fetch lost to a rebalance), to prove such
        records are read again."""
        if self.name != "drop-fetch" or not consumer.only_copy(fetch):
            return False
        self.fetches += 1
        if self.fetches != self.at:
            return False
        log.error("failpoint drop-fetch reached at fetch %d: giving it up unapplied", self.fetches)
        return True

    def holds_fetch(self) -> bool:
        """`hold-fetch`: True for the `at`-th fetch the agent takes, which it then holds unapplied
        until partitions are revoked, and only then goes on with: a fetch taken before a
        rebalance and looked at in the gap before the next assignment, made certain."""
        if self.name != HOLD_FAILPOINT:
            return False
        self.fetches += 1
        if self.fetches != self.at:
            return False
        log.error("failpoint %s reached at fetch %d: held until partitions are revoked", self.name, self.fetches)
        return True

    def commit_started(self) -> None:
        self.commits += 1

    def reach(self, name: str) -> None:
        if name == self.name == PAUSE_FAILPOINT and self.commits == self.at:
            log.error("failpoint %s reached at commit %d: the process stops (SIGSTOP) until it is continued",
                      name, self.commits)
            os.kill(os.getpid(), signal.SIGSTOP)
            return
        if name == self.name and self.commits >= self.at:
            log.error("failpoint %s reached at commit %d: exiting hard", name, self.commits)
            logging.shutdown()
            os._exit(FAILPOINT_EXIT_CODE)


class _Staged:
    """One partition's staged writes: changelogged keys and local-only keys (None deletes)."""

    __slots__ = ("logged", "local")

    def __init__(self) -> None:
        self.logged: dict[bytes, bytes | None] = {}
        self.local: dict[bytes, bytes | None] = {}


class TableStore(MutableMapping):
    """Staged, logged, then written: see the module's docstring."""

    def __init__(self, table, partition_of: Callable[[bytes], int],
                 failpoints: Failpoints | None = None,
                 fence: Callable[[], str | None] | None = None,
                 on_fenced: Callable[[str], None] | None = None) -> None:
        self.table = table
        self.partition_of = partition_of
        self.failpoints = failpoints or Failpoints()
        self.fence = fence              # why writes must not go out now (None: they may)
        self.on_fenced = on_fenced      # told why, after a commit was given up
        self._staged: dict[int, _Staged] = {}
        self._writing: dict[int, _Staged] = {}      # being committed: still visible to reads
        self.lock = asyncio.Lock()
        self.local = LocalKeys(self)

    # -- reading: staged, then being written, then the database --------------
    def _partition_db(self, partition: int):
        return self.table.data._db_for_partition(partition)

    def _lookup(self, partition: int, key: bytes, local: bool):
        for layer in (self._staged, self._writing):
            staged = layer.get(partition)
            if staged is not None:
                value = (staged.local if local else staged.logged).get(key, _MISSING)
                if value is not _MISSING:
                    return value
        return self._partition_db(partition).get(key)

    def get(self, key: bytes, default=None):
        value = self._lookup(self.partition_of(key), key, False)
        return default if value is None else value

    def __getitem__(self, key: bytes) -> bytes:
        value = self._lookup(self.partition_of(key), key, False)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and self._lookup(self.partition_of(key), key, False) is not None

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.table.keys())

    def __len__(self) -> int:
        return sum(1 for _ in self.table.keys())

    # -- staging -----------------------------------------------------------------
    def _stage(self, partition: int) -> _Staged:
        staged = self._staged.get(partition)
        if staged is None:
            staged = self._staged[partition] = _Staged()
        return staged

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._stage(self.partition_of(key)).logged[key] = value

    def __delitem__(self, key: bytes) -> None:
        partition = self.partition_of(key)
        if self._lookup(partition, key, False) is None:
            raise KeyError(key)
        self._stage(partition).logged[key] = None

    @property
    def staged(self) -> bool:
        return bool(self._staged)

    def abandon(self) -> None:
        """Forget what is staged and not being committed (partitions are being revoked: the
        new owner recomputes it from the events, whose offsets were never committed)."""
        self._staged = {}

    # -- committing ----------------------------------------------------------------
    async def commit(self) -> None:
        """Log, then write, everything staged so far (see the module's docstring)."""
        async with self.lock:
            if not self._staged:
                return
            self._writing, self._staged = self._staged, {}
            try:
                self.failpoints.commit_started()
                self.failpoints.reach(PAUSE_FAILPOINT)
                fenced = self.fence() if self.fence is not None else None
                if fenced is not None:
                    log.warning("a commit of %d partitions' writes given up, none written: %s",
                                len(self._writing), fenced)
                    if self.on_fenced is not None:
                        self.on_fenced(fenced)
                    return
                offsets = await self._send_changelog(self._writing)
                self.failpoints.reach("after-changelog")
                self._write_local(self._writing, offsets)
                self.failpoints.reach("after-local-write")
            finally:
                self._writing = {}

    async def _send_changelog(self, writing: dict[int, _Staged]) -> dict[int, int]:
        """Produce the changelog records of `writing`; the last offset per partition, acknowledged."""
        producer = self.table.app.producer._ensure_producer()
        topic = self.table.changelog_topic.get_topic_name()
        sent = []
        for partition, staged in writing.items():
            batch = None
            for key, value in staged.logged.items():
                if batch is None or batch.append(timestamp=None, key=key, value=value) is None:
                    if batch is not None:
                        sent.append((partition, batch.record_count(),
                                     await producer.send_batch(batch, topic, partition=partition)))
                    batch = producer.create_batch()
                    batch.append(timestamp=None, key=key, value=value)   # the first record always fits
            if batch is not None:
                sent.append((partition, batch.record_count(),
                             await producer.send_batch(batch, topic, partition=partition)))
        last: dict[int, int] = {}
        for partition, count, delivered in sent:
            metadata = await delivered
            last[partition] = max(last.get(partition, -1), metadata.offset + count - 1)
        return last

    def _write_local(self, writing: dict[int, _Staged], offsets: dict[int, int]) -> None:
        """One RocksDB write batch per partition: its writes, local keys and changelog offset."""
        from rocksdict import WriteBatch

        data = self.table.data
        for partition, staged in writing.items():
            batch = WriteBatch(raw_mode=True)
            for layer in (staged.logged, staged.local):
                for key, value in layer.items():
                    if value is None:
                        batch.delete(key)
                    else:
                        batch.put(key, value)
            if partition in offsets:
                batch.put(data.offset_key, str(offsets[partition]).encode())
            self._partition_db(partition).write(batch)

    def write_local_now(self, items_by_partition: dict[int, list[tuple[bytes, bytes]]]) -> None:
        """Write local-only keys at once, outside any transaction (rebuilding the order index
        after a recovery: derived from durable state, so losing them in a crash costs a rebuild)."""
        from rocksdict import WriteBatch

        for partition, items in items_by_partition.items():
            batch = WriteBatch(raw_mode=True)
            for key, value in items:
                batch.put(key, value)
            self._partition_db(partition).write(batch)

    def flush(self) -> None:
        """Write each open partition's RocksDB write buffers (memtables) to its files and free
        them, so memory at rest holds no write buffers (`Runtime.rest`)."""
        for db in list(self.table.data._dbs.values()):
            db.flush(True)

    def changelog_offset(self, partition: int) -> int | None:
        from faust.types import TP

        return self.table.data.persisted_offset(TP(self.table.changelog_topic.get_topic_name(), partition))


class LocalKeys(MutableMapping):
    """Local-only keys of the store (not changelogged), staged and committed with the rest."""

    def __init__(self, store: TableStore) -> None:
        self.store = store

    def get(self, key: bytes, default=None):
        value = self.store._lookup(self.store.partition_of(key), key, True)
        return default if value is None else value

    def __getitem__(self, key: bytes) -> bytes:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.store._stage(self.store.partition_of(key)).local[key] = value

    def __delitem__(self, key: bytes) -> None:
        self.store._stage(self.store.partition_of(key)).local[key] = None

    def pop(self, key: bytes, default=None):
        value = self.get(key)
        self.store._stage(self.store.partition_of(key)).local[key] = None
        return default if value is None else value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and self.get(key) is not None

    def __iter__(self) -> Iterator[bytes]:
        raise TypeError("local keys are looked up, never listed")

    def __len__(self) -> int:
        raise TypeError("local keys are looked up, never listed")
