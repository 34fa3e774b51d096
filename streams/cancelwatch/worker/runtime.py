"""The worker's runtime: apply fetches in groups, commit them, evaluate alerts, answer views.

Everything the agent, the timers and the web views share lives on one
`Runtime`. It owns the derived state (`state.Book`), the transaction
(`TableStore`), the firing alerts of the sellers this worker owns, and the
order of a write: apply (`process`), commit (`commit`: buckets staged, then
logged and written by `TableStore.commit`), evaluate (`evaluate`: what to
fire or resolve, the firing set staged with the rest), and only after the
commit, send (`deliver`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import gc
import importlib.metadata
import logging
import time
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import Iterator
from urllib.parse import parse_qs, quote, urlsplit

import msgspec

from cancelwatch import names

from cancelwatch.core import account_health, alerting, events, policy as policy_module, reconciliation, state as state_module, targets, window
from cancelwatch.delivery.alertmanager import Alert, AlertSender
from cancelwatch.worker.metrics import Metrics, ScrapeState, SellerSummary, rate_band
from cancelwatch.settings import Settings
from cancelwatch.core.state import Book
from cancelwatch.worker.ownership import Owners
from cancelwatch.worker.table_store import TableStore

log = logging.getLogger("cancelwatch.worker")

VERSION = importlib.metadata.version("cancelwatch")   # pyproject.toml's, as installed
GROUP_RECORDS = 20_000                         # records applied, written and acknowledged together
GROUP_BUCKETS = 4_000                          # buckets a group holds open (decoded), at most
GROUP_NEW_SELLERS = 250                        # sellers a group adds to the book, at most (docs/design.md)
BUCKET_CACHE_RECORDS = 300_000                 # decoded order records kept between groups (Book's cache)
SUMMARY_POOL_SIZE = 100_000                    # distinct seller summaries kept for sharing
MOVE_SCAN_BUCKETS = 48                         # clock steps looked up per seller in a full pass, at most
REPLAY_QUIET_SECONDS = 5.0                     # a backfill is over once its partition is quiet this long
# A fetch response's high watermarks are fresh for a catch-up decision taken this long before it
# was read: longer than the broker holds a fetch (faust: 1.5 s), so the request went out after.
CONFIRM_SECONDS = 2.0
# A partition with no fetch response for this long (its leader unreachable: every response,
# empty ones included, brings its high watermark) has an unknown lag: it catches up again.
STALE_FETCH_SECONDS = 10.0
# While every owned partition catches up, nothing is sent (alerts are held) and a full evaluation
# of the caught-up state follows: the sellers touched meanwhile are evaluated (their summaries,
# hence the status gauges, refreshed) at most this often, not after every group.
HELD_EVALUATE_SECONDS = 2.0

_libc_handle = None
_firing_encoder = msgspec.msgpack.Encoder()
_firing_decoder = msgspec.msgpack.Decoder(list[tuple[str, str, str, float, dict[str, str]]])
_health_encoder = msgspec.msgpack.Encoder()
_health_decoder = msgspec.msgpack.Decoder(tuple[float, account_health.MarketplaceHealth])
HEALTH_ROLE = "account-health"
GENERATOR_APP_PARAM = "app_id"                 # names the deployment in an alert's generatorURL
KIND_HEADER = "cancelwatch.kind"
# On an event rerouted by a worker that was catching up on the partition it read it from: that
# worker's token. The receiving partition's counts are partial until that catch-up is over.
REPLAY_HEADER = "cancelwatch.replay"


M_MMAP_THRESHOLD = -3                          # glibc's mallopt parameters
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 128 * 1024              # blocks this large or larger: mapped on their own
ARENAS = 2                                     # glibc heaps shared by the worker's threads


def _libc():
    """glibc's functions, or None where the C library is not glibc."""
    global _libc_handle
    if _libc_handle is None:
        try:
            handle = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc_handle = handle if hasattr(handle, "malloc_trim") and hasattr(handle, "mallopt") else False
        except OSError:
            _libc_handle = False          # not glibc: nothing to do
    return _libc_handle or None


def release_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim).

    A fetch of 20,000 events allocates tens of MiB of short-lived objects; once
    freed they stay in the process unless trimmed."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def pin_mmap_threshold() -> bool:
    """Keep glibc's mmap threshold at MMAP_THRESHOLD_BYTES. glibc raises it to the size of
    each large block freed (up to 32 MiB), after which the large buffers of a burst (fetch
    responses, grown dicts) come from the heap and keep its pages resident after the burst;
    pinned, each is its own mapping and goes back to the system when freed. Returns True
    when set (glibc)."""
    libc = _libc()
    return libc is not None and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1


def limit_arenas() -> bool:
    """At most ARENAS glibc heaps for all of the worker's threads (glibc's default: 8 per core).
    Each thread that allocates (faust's consumer, RocksDB's, the executor's) otherwise gets a
    heap of its own, whose free pages a burst leaves scattered; fewer heaps leave fewer behind
    (docs/design.md, "Memory follows the group"). Call it before the threads start. Returns True
    when set (glibc)."""
    libc = _libc()
    return libc is not None and libc.mallopt(M_ARENA_MAX, ARENAS) == 1


class Summaries:
    """(seller_id, marketplace) -> SellerSummary of every evaluated seller, read at scrape time
    (the summary is kept on the seller's state, not in a dict of its own)."""

    def __init__(self, book: Book | None) -> None:
        self.book = book

    def items(self) -> Iterator[tuple[tuple[str, str], SellerSummary]]:
        if self.book is None:
            return iter(())
        return (((state.seller_id, state.marketplace), state.summary)
                for state in self.book.states() if state.summary is not None)


class Group:
    """Fetches applied together: their events go into one batch of the book, which is
    written (each touched bucket once), committed and acknowledged as one."""

    __slots__ = ("pending", "book", "known", "fetches", "records", "clocks", "clock_writes", "outcomes", "dead",
                 "reroute", "replayed")

    def __init__(self, pending, book) -> None:
        self.pending = pending
        self.book = book
        self.known = len(book)                  # sellers the book knew when the group began
        self.fetches: list = []                 # mailbox.Fetch, records dropped once applied
        self.records = 0
        self.clocks: dict[int, float] = {}      # partition -> latest occurred_at
        self.clock_writes: dict[int, float] = {}  # partition -> its clock, moved by this group (event clock)
        self.outcomes: Counter = Counter()      # (topic, outcome) -> events
        self.dead: list = []                    # (record, BadEvent)
        self.reroute: list = []                 # (record, seller_id, owner partition)
        self.replayed: set[int] = set()         # partitions sent events by another worker catching up

    def complete(self) -> bool:
        """Large enough to commit without waiting for more fetches. A group that adds many
        sellers commits early: their state lives on, and allocated among a large group's
        short-lived objects it would keep that group's heap resident (docs/design.md)."""
        return (self.records >= GROUP_RECORDS or len(self.pending.buckets) >= GROUP_BUCKETS
                or len(self.book) - self.known >= GROUP_NEW_SELLERS)


@dataclasses.dataclass
class Outbox:
    """Alert decisions waiting for their commit; sent only if the epoch did not change."""

    epoch: int
    fire: list = dataclasses.field(default_factory=list)       # alerting.Firing
    resolve: list = dataclasses.field(default_factory=list)    # alerting.Firing

    def __bool__(self) -> bool:
        return bool(self.fire or self.resolve)


class IndexLoader:
    """The order index as `Book.load` rebuilds it: collected per partition, written at once."""

    def __init__(self, store: TableStore) -> None:
        self.store = store
        self.by_partition: dict[int, list] = defaultdict(list)

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.by_partition[self.store.partition_of(key)].append((key, value))

    def write(self) -> int:
        self.store.write_local_now(self.by_partition)
        written = sum(map(len, self.by_partition.values()))
        self.by_partition.clear()
        return written


class Runtime:
    """Everything the agent, timers and web views share."""

    def __init__(self, settings: Settings, policy: policy_module.Policy) -> None:
        self.settings = settings
        self.policy = policy
        self.metrics = Metrics(VERSION, settings.clock, settings.top_k)
        self.sender = AlertSender(settings.alertmanager_urls, settings.alert_resend_seconds,
                                  on_delivery=self._delivered) if settings.alertmanager_urls else None
        self.book: Book | None = None
        self.store: TableStore | None = None
        self.owners = Owners(settings.partitions)
        self.event_clock = 0.0
        self.epoch = 0              # +1 at every revocation and rebuild: decisions of an older one are void
        self.dirty: set = set()     # SellerStates to evaluate
        self._summary_pool: dict[tuple, SellerSummary] = {}
        self.alerts: dict[tuple[str, str], dict] = {}   # seller -> {AlertKey: alerting.Firing}
        self.adopted: set[tuple[str, str]] = set()      # sellers whose restored alerts this worker has not sent yet
        self.revoked_generation = -1    # the consumer generation whose partitions were revoked last
        self.assignment_started = time.monotonic()   # when the last rebalance began (monotonic s)
        self.sweep_due = False          # partitions caught up since the last sweep of stray alerts
        self.evaluated_bucket: int | None = None
        self.last_full_end = 0.0
        self.last_full_seconds = 0.0
        self.last_held_pass = 0.0   # monotonic time of the last evaluation while every partition was held
        self.last_fetch_applied = 0.0   # monotonic time the agent last applied a fetch
        self.group: Group | None = None
        self.applied: dict = {}             # TP -> last offset applied and committed here
        self.produced: dict[int, int] = {}  # reroute partition -> end offset of what this worker sent
        self.in_flight: Counter = Counter()  # reroute partition -> events sent there, not yet delivered
        self.replaying: dict[int, float] = {}   # partition -> when it last applied old events (live mode)
        # partition -> when it last applied an event another worker rerouted while catching up
        self.peer_replay: dict[int, float] = {}
        self.token = uuid.uuid4().hex[:16].encode()   # names this worker on the events it reroutes
        self.lag: dict = {}                 # (topic, partition) -> messages not yet applied
        self.catching_up: set[int] = set()  # owned partitions whose new alerts are held
        self.owned: set[int] = set()        # partitions of the assignment, at the last lag refresh
        self.lag_known = False              # False until the lag is looked at after each rebuild
        self.confirming: float | None = None  # when partitions first read caught up (epoch s), unconfirmed
        self.last_look = 0.0                # monotonic time of the last lag refresh or evaluation
        self.targets: dict[tuple[str, str], targets.Target] = {}   # the sellers' own limits
        self.targets_ready = False          # the targets topic was read to its end once
        # (seller, marketplace) -> (fetched_at, the latest account-health report's entry)
        self.health: dict[tuple[str, str], tuple[float, account_health.MarketplaceHealth]] = {}
        self.topic_name = settings.source_topics
        # marketplace -> its windows' lengths in buckets (a target changes limits, not lengths)
        self._window_order = {marketplace: tuple(policy.window_buckets(w) for w in policy.windows(marketplace))
                              for marketplace in names.MARKETPLACES}
        self._window_lengths = {marketplace: set(lengths) for marketplace, lengths in self._window_order.items()}
        self._topic_of_type = {kind: self.topic_name[role] for kind, role in events.TOPIC_OF_TYPE.items()}
        self._source_roles = frozenset((names.ORDERS_TOPIC, names.CANCELLATIONS_TOPIC))
        self.role = {name: role for role, name in self.topic_name.items()} | {
            settings.reroute_topic: names.REROUTE_TOPIC,
            settings.account_health_topic: HEALTH_ROLE,
        }

    # -- clock ---------------------------------------------------------------
    def now(self) -> float:
        if self.settings.clock == "event":
            return self.event_clock
        return time.time()

    def peer_clock(self, seconds: float) -> None:
        """A partition's event clock as published on the clock topic (by any worker, this one
        too): the cluster's clock is the largest, so every worker answers at the same `now`."""
        if seconds > self.event_clock:
            self.event_clock = seconds

    def _delivered(self, outcome: str, count: int) -> None:
        self.metrics.deliveries.labels(outcome).inc(count)

    def partition_of(self, key: bytes) -> int:
        """The partition a store key lives on: its seller's, or the one an internal key names."""
        seller_id = state_module.seller_of_key(key)
        if seller_id is not None:
            return self.owners[seller_id]
        partition = state_module.clock_partition(key)
        if partition is None:
            raise ValueError(f"store key {key!r} names neither a seller nor a partition")
        return partition

    # -- ownership changes -----------------------------------------------------
    def revoked(self, generation: int = -1) -> None:
        """Partitions are moving (a rebalance began): stop sending this worker's alerts without
        resolving them (the new owner takes them over from the durable firing sets), and drop
        what is staged and not committed (its events were never acknowledged). `generation` is
        the consumer's generation whose assignment ends here: its fetches are void from now on
        (`stale_fetch`)."""
        self.epoch += 1
        self.revoked_generation = max(self.revoked_generation, generation)
        self.assignment_started = time.monotonic()
        if self.sender is not None:
            self.sender.forget(alert.key for firing in self.alerts.values() for alert in firing.values())
        self.alerts = {}
        self.adopted = set()
        self.book = None
        self.group = None
        self.dirty = set()
        self.applied = {}
        self.replaying = {}
        self.peer_replay = {}
        self.health = {}
        if self.store is not None:
            self.store.abandon()

    def stale_fetch(self, fetch_generation: int, generation: int) -> bool:
        """Whether a fetch is of an assignment that is over: fetched in another generation than
        the consumer's now, or in one whose partitions were revoked. The second is the window
        between a revocation and the next assignment, when the consumer's generation still
        reads the old one: applied then, the fetch would rebuild state from partitions other
        workers own already, and decide and send their sellers' alerts. Its records are read
        again from the committed offsets, by whichever worker owns them now."""
        return fetch_generation != generation or fetch_generation <= self.revoked_generation

    def rebuild(self) -> Outbox:
        """Derive totals and firing alerts from the table's active partitions (after every
        recovery); returns the resolutions owed for alerts of sellers that are gone."""
        started = time.monotonic()
        self.epoch += 1
        index = IndexLoader(self.store)
        book = Book(self.policy, self.store, self.store.local, cache_records=BUCKET_CACHE_RECORDS)
        clock = 0.0
        items = []
        firing: dict[tuple[str, str], dict] = {}
        health: dict = {}
        order_kind = ord(state_module.KIND_ORDER)
        for key, value in self.store.table.items():
            if key[0] == order_kind:
                continue            # the order index: rewritten from the buckets below
            if state_module.clock_partition(key) is not None:
                clock = max(clock, state_module.decode_clock(value))
                continue
            parsed = state_module.parse_key(key)
            if parsed is not None and parsed.kind == state_module.KIND_HEALTH:
                health[(parsed.seller_id, parsed.marketplace)] = _health_decoder.decode(value)
                continue
            if parsed is not None and parsed.kind == state_module.KIND_ALERTS:
                firing[(parsed.seller_id, parsed.marketplace)] = alerting.firing_from_identity(
                    parsed.seller_id, parsed.marketplace, _firing_decoder.decode(value))
                continue
            items.append((key, value))
        orders = book.load(items, index=index)
        indexed = index.write()
        del items
        if self.sender is not None:   # anything this worker still sends that it does not own now
            owned_now = {alert.key for alerts in firing.values() for alert in alerts.values()}
            self.sender.forget(key for key in self.sender.firing() if key not in owned_now)
        self.book = book
        self.health = health
        self.event_clock = max(self.event_clock, clock)
        self.alerts = {}
        outbox = Outbox(self.epoch)
        for seller, alerts in firing.items():
            if book.seller(*seller) is None:     # no state left for it: nothing can still hold
                outbox.resolve.extend(alerts.values())
                del self.store[state_module.alerts_key(*seller)]
            else:
                # Adopted: those Alertmanager still holds are kept alive through the catch-up
                # (`keep_adopted_alive`); one that expired during a long outage is not paged again
                # from partial counts. The first evaluation on a caught-up view sends every one
                # still wanted, changed or not, and resolves the others.
                self.alerts[seller] = alerts
        self.adopted = set(self.alerts)
        self.dirty = set(book.states())
        # Every partition counts as catching up until the lag is looked at: a seller not read
        # yet is not answered 404, nor are alerts decided, from a view that may be partial.
        self.lag_known = False
        self.confirming = None
        if self.group is not None and self.group.records:
            log.info("a group applied to the state just replaced given up: %d records read again", self.group.records)
        self.group = None           # applied to the book just replaced; its fetches are read again
        self.evaluated_bucket = None
        log.info("state rebuilt: %d sellers, %d orders (%d indexed), %d sellers with alerts, in %.2fs",
                 len(book), orders, indexed, len(self.alerts), time.monotonic() - started)
        return outbox

    async def keep_adopted_alive(self) -> None:
        """After a rebuild: re-send, from now on, the restored alerts that Alertmanager still
        holds active, so alerts already firing stay firing while the partitions catch up
        (contract section 9). The caught-up evaluation then keeps or resolves them."""
        if self.sender is None or not self.adopted:
            return
        epoch = self.epoch
        restored = {alert.key: alert for seller in self.adopted for alert in self.alerts.get(seller, {}).values()}
        active = await self.sender.still_active(restored)
        if epoch != self.epoch:
            return          # ownership moved meanwhile: the next owner decides
        kept = 0
        for seller in self.adopted:
            for alert in self.alerts.get(seller, {}).values():
                if alert.key in active:
                    self.sender.fire(self.alert(alert))
                    kept += 1
        if restored:
            log.info("alerts taken over: %d of %d still active in Alertmanager, kept alive through the catch-up",
                     kept, len(restored))

    def rest(self, collect: bool = True) -> None:
        """Fetches paused: drop the cache of decoded buckets and hand free memory back, so
        memory at rest holds the state and not the working set of the last burst. With
        `collect` (the first rest after a burst), a full collection first: the worker's
        thresholds make one rare, and a burst's reference cycles (futures, exceptions, the
        libraries' buffers) would keep their arenas resident until then."""
        if collect:
            gc.collect()
        if self.book is not None:
            self.book.drop_cache()
        if self.store is not None:
            try:
                self.store.flush()
            except Exception as error:  # noqa: BLE001 - saving memory must not stop the alert loop
                log.warning("writing RocksDB's write buffers out at rest failed: %s", error)
        release_memory()
        if self.last_look:
            self.last_look = time.monotonic()       # its own work, not a pause

    # -- applying --------------------------------------------------------------
    def process(self, records) -> None:
        """Decode a fetch's records and apply them to the open group (nothing is written yet)."""
        group = self.group
        if group is None:
            group = self.group = Group(self.book.begin(), self.book)
        wall = time.time()
        wall_dt = datetime.fromtimestamp(wall, timezone.utc)
        # The clock check on the timestamps a well-formed event needs anyway, a millisecond on the
        # safe side; an event near the limit is decided by `events.decode_on` on its datetimes.
        limit = wall + events.FUTURE_TOLERANCE_SECONDS - 0.001
        applied = []
        clocks = group.clocks
        outcome_counts = group.outcomes
        latencies: dict[str, list[float]] = defaultdict(list)
        owners = self.owners
        replay_age = self.settings.catchup_age_seconds
        roles, topic_of_type = self.role, self._topic_of_type
        quick, source_roles = events.decode_quick, self._source_roles
        for message in records:
            role = roles[message.topic]
            event = quick(role, message.value) if role in source_roles else None
            if event is not None:
                occurred = event.occurred_at.timestamp()
                # an order is mostly placed when it is purchased: the same instant, read once
                purchase = occurred if event.purchase_date == event.occurred_at else event.purchase_date.timestamp()
                if occurred > limit or purchase > limit:
                    event = None
            if event is None:
                if role == HEALTH_ROLE or (role == names.REROUTE_TOPIC and _is_health(message)):
                    self._report(message, role, group, wall_dt)
                    continue
                try:
                    if role == names.REROUTE_TOPIC:
                        event = events.decode(message.value, wall_dt)
                        if message.headers and self._peer_replayed(message):
                            group.replayed.add(owners[event.seller_id])
                    else:
                        event = events.decode_on(role, message.value, wall_dt)
                except events.BadEvent as bad:
                    group.dead.append((message, bad))
                    outcome_counts[(message.topic, "dead_letter")] += 1
                    self.metrics.dead_letters.labels(message.topic, bad.kind).inc()
                    continue
                occurred = event.occurred_at.timestamp()
                purchase = event.purchase_date.timestamp()
            owner = owners[event.seller_id]
            if owner != message.partition and role != names.REROUTE_TOPIC:
                group.reroute.append((message, event.seller_id, owner))
                outcome_counts[(message.topic, "rerouted")] += 1
                continue
            if occurred > clocks.get(owner, 0.0):
                clocks[owner] = occurred
            topic = topic_of_type[type(event)]
            applied.append((topic, event, purchase))
            if wall - occurred <= replay_age:
                latencies[topic].append(wall - occurred)   # replayed history is not processing delay
        group.records += len(records)
        for topic, values in latencies.items():
            self.metrics.observe_latencies(topic, values)
        if clocks:
            self.event_clock = max(self.event_clock, max(clocks.values()))
        self.book.feed(group.pending, applied, self.now())

    def _report(self, message, role: str, group: Group, wall_dt: datetime) -> None:
        """An account-health report: kept per seller and marketplace (the latest by fetched_at)
        on the seller's partition, in the same transaction as the group's events."""
        try:
            envelope = account_health.decode_envelope(message.value, wall_dt)
        except account_health.BadReport as bad:
            group.dead.append((message, bad))
            group.outcomes[(message.topic, "dead_letter")] += 1
            self.metrics.dead_letters.labels(message.topic, bad.kind).inc()
            return
        owner = self.owners[envelope.seller_id]
        if role == HEALTH_ROLE and owner != message.partition:
            group.reroute.append((message, envelope.seller_id, owner))
            group.outcomes[(message.topic, "rerouted")] += 1
            return
        if envelope.skipped:
            group.outcomes[(message.topic, "skipped_marketplace")] += envelope.skipped
        fetched = envelope.fetched_epoch
        for marketplace, entry in envelope.marketplaces.items():
            key = (envelope.seller_id, marketplace)
            latest = self.health.get(key)
            if latest is not None and latest[0] > fetched:
                continue        # older than the report already seen: changes nothing
            self.health[key] = (fetched, entry)
            self.store[state_module.health_key(*key)] = _health_encoder.encode((fetched, entry))
            self.dirty.add(self.book.known(*key))
        group.outcomes[(message.topic, "report")] += 1

    def reconciliation_view(self, seller_id: str, marketplace: str) -> dict | None:
        """Amazon's figures against this worker's counts over the report's own range
        (contract section 11), recomputed on every request; None without a report."""
        latest = self.health.get((seller_id, marketplace))
        if latest is None:
            return None
        comparison = self._comparison(seller_id, marketplace, latest[1])
        return comparison.as_json(seller_id, marketplace, latest[0], latest[1].account_status)

    def _comparison(self, seller_id: str, marketplace: str, entry) -> reconciliation.Comparison:
        bucket_seconds = self.policy.bucket_seconds
        rate = entry.cancellation
        first, last = reconciliation.bucket_range(rate.reporting_from, rate.reporting_to, bucket_seconds)
        state = self.book.seller(seller_id, marketplace) if self.book is not None else None
        counts = reconciliation.range_counts(state.buckets if state is not None else {}, first, last)
        complete = reconciliation.is_complete(first, self.now(), self.policy.retention_seconds, bucket_seconds)
        return reconciliation.compare(rate, counts, complete, self.policy)

    def drop_stale_group(self, generation: int) -> None:
        """Forget an open group fetched before a rebalance (`generation` is the consumer's now):
        nothing of it was written or acknowledged, so faust reads it again from the committed
        offsets, on whichever worker owns it now."""
        if self.group is not None and self.group.fetches and self.group.fetches[0].generation != generation:
            log.info("a group of generation %d given up in generation %d: %d records read again",
                     self.group.fetches[0].generation, generation, self.group.records)
            self.group = None

    def commit(self) -> "Group":
        """Stage the open group's buckets (each once) and count its outcomes; returns the group.
        The caller commits the store before it acknowledges the group's records."""
        group, self.group = self.group, None
        result = self.book.finish(group.pending)
        outcome_counts = group.outcomes
        outcome_counts.update(result.outcomes)
        for marketplace, count in result.new_orders.items():
            self.metrics.orders.labels(marketplace).inc(count)
        for (marketplace, reason), count in result.new_faults.items():
            reason_group = names.REASON_GROUP_OF.get(reason, "other")
            self.metrics.seller_faults.labels(marketplace, reason_group).inc(count)
        for (marketplace, cause), count in result.new_excluded.items():
            self.metrics.excluded.labels(marketplace, cause).inc(count)
        self.dirty.update(result.touched)
        if self.settings.clock == "wall":
            # Events that occurred long ago are history being replayed (a backfill, a producer's
            # outage), even when the worker keeps up with them: the partition is catching up.
            oldest_current = time.time() - self.settings.catchup_age_seconds
            for partition, clock in group.clocks.items():
                if clock < oldest_current:
                    self.replaying[partition] = time.monotonic()
                else:
                    self.replaying.pop(partition, None)
        if group.replayed:
            started = group.replayed - self.peer_replay.keys()
            if started:
                log.info("partitions %s apply events another worker rerouted while catching up: their counts "
                         "are partial, their alerts held until it is over", sorted(started))
            now = time.monotonic()
            for partition in group.replayed:
                self.peer_replay[partition] = now
        if self.settings.clock == "event":
            for partition, clock in group.clocks.items():
                key = state_module.clock_key(partition)
                stored, value = self.store.get(key), state_module.encode_clock(clock)
                if stored is None or state_module.decode_clock(stored) < state_module.decode_clock(value):
                    self.store[key] = value
                    group.clock_writes[partition] = clock
        for (topic, outcome), count in outcome_counts.items():
            self.metrics.events.labels(topic, outcome).inc(count)
        return group

    # -- limits in force ----------------------------------------------------------
    def seller_windows(self, state, now_bucket: int) -> list[window.WindowTotals]:
        """The seller's windows under the limits in force: its own target, or the marketplace's."""
        limits, sums = self._limits_and_sums(state, now_bucket)
        return [running.totals(limit) for running, limit in zip(sums, limits)]

    def _limits_and_sums(self, state, now_bucket: int) -> tuple[list, list]:
        """The seller's windows under the limits in force, and their running totals."""
        limits = targets.apply_target(self.policy.windows(state.marketplace),
                                      self.targets.get((state.seller_id, state.marketplace)))
        return limits, state.window_sums(self._window_order[state.marketplace], now_bucket)

    def target_updated(self, update: targets.TargetUpdate) -> None:
        """A target was set or cleared: the seller is evaluated again at once (its alerts follow)."""
        targets.apply_update(self.targets, update)
        state = self.book.seller(*update.key) if self.book is not None else None
        if state is not None:
            self.dirty.add(state)

    def targets_read(self) -> None:
        if not self.targets_ready:
            log.info("seller targets read: %d in force", len(self.targets))
            self.targets_ready = True

    # -- catch-up ----------------------------------------------------------------
    def acknowledged(self, group: "Group") -> Counter:
        """Record the offsets of a committed group's fetches: what this worker's state includes.

        The events it reroutes to their owners' partitions are counted as in flight from here,
        since their source offsets now count as applied: until they are delivered (`rerouted`)
        and applied, those partitions have events to catch up on that no high watermark shows
        yet. Returns that count, to give `sent` once the sends are over."""
        applied = self.applied
        for fetch in group.fetches:
            for tp, offsets in fetch.offsets.items():
                if offsets and offsets[-1] > applied.get(tp, -1):
                    applied[tp] = offsets[-1]
        sending = Counter(owner for _, _, owner in group.reroute)
        self.in_flight.update(sending)
        return sending

    def rerouted(self, deliveries) -> None:
        """Record where the events this worker rerouted landed: the reroute partitions hold at
        least that much, before any fetch reports their new high watermark."""
        produced = self.produced
        for metadata in deliveries:
            if metadata.offset + 1 > produced.get(metadata.partition, 0):
                produced[metadata.partition] = metadata.offset + 1

    def reroute_headers(self, partition: int) -> list[tuple[str, bytes]]:
        """Headers that mark an event read on `partition` as rerouted during a catch-up there."""
        return [(REPLAY_HEADER, self.token)] if self.is_catching_up(partition) else []

    def _peer_replayed(self, message) -> bool:
        """Rerouted by another worker while it was catching up (by this worker: its own lag says)."""
        replayed_by = _header(message, REPLAY_HEADER)
        return replayed_by is not None and replayed_by != self.token

    def sent(self, sending: Counter) -> None:
        """The reroutes `acknowledged` counted are over (delivered and recorded, or failed)."""
        self.in_flight.subtract(sending)
        self.in_flight = +self.in_flight

    def _all_held(self) -> bool:
        """Whether every partition this worker owns is catching up (its alerts held)."""
        return not self.lag_known or bool(self.owned) and self.catching_up >= self.owned

    def is_catching_up(self, partition: int) -> bool:
        """Whether new alerts of this partition are held and its unseen sellers answered 503."""
        return not self.lag_known or partition in self.catching_up

    def refresh_catch_up(self, consumer) -> None:
        """Which owned partitions are catching up, from the offsets applied and committed here to
        the high watermarks (`self.lag` per source partition, also exported as a metric).

        A seller's events can wait on any partition of the source topics (a producer that keys
        by something else: they are rerouted once read), so while any source partition this
        worker reads is more than CANCELWATCH_CATCHUP_LAG behind, or its high watermark is not
        known yet, every owned partition is catching up; so is a partition whose own reroute
        partition is that far behind. A partition that is catching up stays so until it has
        applied everything known (lag 0 on every source partition and on its reroute
        partition, events this worker is still sending there included): the last messages of
        a backlog can still move a seller across a level; and only once a fetch response read
        CONFIRM_SECONDS after the lag first read 0 confirms it (a high watermark is only as
        fresh as the response that brought it). After a pause (no look at the lag for
        CONFIRM_SECONDS: a stopped or starved process) every owned partition catches up
        again; so does a partition with no fetch response for STALE_FETCH_SECONDS (its
        leader down or unreachable: its lag is unknown). Events another worker reroutes here
        while it catches up (marked `REPLAY_HEADER`) hold every owned partition too, until
        none came for REPLAY_QUIET_SECONDS: the rest of that backlog may hold more of them.
        When one catches up, every seller is evaluated again at once, so what the caught-up
        state warrants (firing or resolving) goes out."""
        if consumer is None:
            return
        now = time.time()
        paused = self.last_look and time.monotonic() - self.last_look > CONFIRM_SECONDS
        lag: dict[tuple[str, int], int] = {}
        polled: list[float] = []    # when each partition's high watermark was fetched (epoch s)
        stale: set[int] = set()     # partitions with no fetch response for STALE_FETCH_SECONDS
        owned: set[int] = set()
        sources = 0                 # the largest lag of a source partition (inf: unknown)
        reroute_lag: dict[int, float] = {}
        reroute = self.settings.reroute_topic
        try:
            for tp in consumer.assignment():
                if tp.topic not in self.role:
                    continue
                owned.add(tp.partition)
                highwater = consumer.highwater(tp)
                fetched = (consumer.last_poll_timestamp(tp) or 0) / 1000
                polled.append(fetched)
                if 0 < fetched < now - STALE_FETCH_SECONDS:
                    stale.add(tp.partition)
                if tp.topic == reroute and tp.partition in self.produced:
                    highwater = max(highwater or 0, self.produced[tp.partition])
                done = self.applied.get(tp)
                if done is None:
                    committed = consumer._committed_offset.get(tp)
                    done = committed - 1 if committed is not None else -1
                if highwater is None:
                    messages = float("inf")
                else:
                    messages = lag[(tp.topic, tp.partition)] = max(0, highwater - (done + 1))
                if tp.topic == reroute:
                    reroute_lag[tp.partition] = messages + self.in_flight[tp.partition]
                else:
                    sources = max(sources, messages)
        except Exception as error:  # the consumer may be mid-rebalance: keep the last view
            log.debug("lag unavailable: %r", error)
            return
        self.lag = lag
        self.owned = owned
        if paused and self.lag_known:
            # Nothing looked at the lag for a while (the process was stopped, or starved): the
            # high watermarks held may be that old. Every partition catches up again until a
            # fetch response read since confirms its lag.
            log.info("the lag was not looked at for %.1fs: partitions %s count as catching up until a fresh "
                     "fetch confirms it", time.monotonic() - self.last_look, sorted(owned))
            self.catching_up = set(owned)
            self.confirming = now
        elif self.lag_known and stale - self.catching_up:
            # No fetch response for a while (the broker leading them is down or unreachable): the
            # lag is unknown, and acting on counts that old (orders ageing out of the windows,
            # nothing new applied) may resolve an alert the backlog behind the outage fires
            # again. They catch up again until a fetch response read since confirms their lag.
            log.warning("no fetch response for partitions %s in %.0fs: they count as catching up until one "
                        "confirms their lag", sorted(stale - self.catching_up), STALE_FETCH_SECONDS)
            self.catching_up |= stale
            self.confirming = now
        quiet_since = time.monotonic() - REPLAY_QUIET_SECONDS
        for replays in (self.replaying, self.peer_replay):
            for partition in [p for p, last in replays.items() if last < quiet_since]:
                del replays[partition]
        threshold = self.settings.catchup_lag
        if sources > threshold or self.replaying or self.peer_replay.keys() & owned or not self.targets_ready:
            behind = set(owned)
        else:
            behind = {p for p in owned if reroute_lag.get(p, float("inf")) > threshold}
            behind |= {p for p in self.catching_up & owned if sources or reroute_lag.get(p, float("inf"))}
            if behind and self.settings.clock == "event":
                behind = set(owned)     # one event clock for all: a partition behind still moves it
        caught_up = (self.catching_up if self.lag_known else owned) - behind
        if caught_up:
            # High watermarks are as old as the fetch response that brought them: after a pause
            # they can show lag 0 with a backlog waiting. Caught up only once every partition's
            # comes from a response read CONFIRM_SECONDS after the lag first read 0 (or after
            # the pause): one requested after it.
            if self.confirming is None:
                self.confirming = now
            if min(polled, default=0.0) < self.confirming + CONFIRM_SECONDS:
                behind |= caught_up
                caught_up = set()
            else:
                self.confirming = None
        self.lag_known = True
        self.last_look = time.monotonic()
        if caught_up and self.book is not None:
            log.info("partitions %s caught up: evaluating their sellers", sorted(caught_up))
            self.dirty = set(self.book.states())
            self.sweep_due = True
        self.catching_up = behind

    # -- alerts ----------------------------------------------------------------
    def dashboard_url(self, seller_id: str, marketplace: str) -> str:
        return (f"{self.settings.grafana_url}/d/{names.DASHBOARD_UIDS['seller']}"
                f"?var-seller_id={seller_id}&var-marketplace={marketplace}")

    def _summary(self, limits: list, counts: list[tuple[int, int]], projections: list | None) -> SellerSummary:
        """The seller's summary from its windows' limits, (orders, cancelled) and forecasts
        (`window.forecast_breach` of each; None: none projected)."""
        status = names.STATUS_OK
        rows = []
        for index, (limit, (orders, cancelled)) in enumerate(zip(limits, counts)):
            breached = window.breached(orders, cancelled, limit.limit_bps)
            projection = projections[index] if projections is not None else None
            if breached:
                status = names.STATUS_BREACH
            elif status == names.STATUS_OK and window.at_warning_level(orders, cancelled, limit.warning_bps):
                status = names.STATUS_WARNING
            rows.append((limit.days, orders, cancelled, limit.limit_bps, limit.warning_bps,
                         0 if breached else None if projection is None else projection.hours_ahead))
        first, (orders, cancelled) = limits[0], counts[0]
        signature = (status, rate_band(orders, cancelled, first.limit_bps, first.warning_bps), tuple(rows))
        # one SellerSummary object per distinct summary: most sellers share theirs with others
        summary = self._summary_pool.get(signature)
        if summary is None:
            if len(self._summary_pool) >= SUMMARY_POOL_SIZE:
                self._summary_pool.clear()
            summary = self._summary_pool[signature] = SellerSummary(*signature)
        return summary

    def _time_moves(self, state, since: int | None, now_bucket: int) -> bool:
        """Whether the seller's evaluation may differ at `now_bucket` from the one made at or
        after `since` (the last full pass) without any event of its own: always with a
        seller-fault cancel, an alert, a report or a faulted listing (forecasts, listing
        windows and reconciliation move with the clock); otherwise only when one of its
        buckets entered or left a window."""
        summary = state.summary
        if (since is None or summary is None or now_bucket < since or _listing_faults(state)
                or any(w[2] for w in summary.windows)):
            return True
        key = (state.seller_id, state.marketplace)
        if key in self.alerts or key in self.health:
            return True
        if now_bucket - since > MOVE_SCAN_BUCKETS:
            return True
        buckets = state.buckets
        for bucket in range(since + 1, now_bucket + 1):             # entered every window
            if bucket in buckets:
                return True
        for length in self._window_lengths[state.marketplace]:     # left this window
            for bucket in range(since + 1 - length, now_bucket + 1 - length):
                if bucket in buckets:
                    return True
        return False

    def evaluate(self) -> Outbox:
        """Re-evaluate dirty sellers, or all of them when the clock entered a new bucket. The
        firing sets that changed are staged in the store; the caller commits the store, then
        hands the outbox to `deliver`. (A long pass is this worker's own work, not a pause.)"""
        try:
            return self._evaluate()
        finally:
            if self.last_look:
                self.last_look = time.monotonic()

    def _evaluate(self) -> Outbox:
        outbox = Outbox(self.epoch)
        if self.book is None:
            return outbox
        if self._all_held():
            # Every decision would be held (nothing sent, nothing stored): the summaries are
            # refreshed now and then; dirty sellers stay dirty, and catching up evaluates all.
            started = time.monotonic()
            if started - self.last_held_pass < HELD_EVALUATE_SECONDS:
                return outbox
            self.last_held_pass = started
        now = self.now()
        now_bucket = window.bucket_of(now, self.policy.bucket_seconds)
        full = False
        if now_bucket != self.evaluated_bucket:
            # A new bucket moves every seller's windows. A full pass is cheap with few
            # sellers and seconds with hundreds of thousands; during a fast replay the
            # clock crosses buckets constantly, so full passes are spaced to take at
            # most a tenth of the time (touched sellers are still evaluated at once).
            waited = time.monotonic() - self.last_full_end
            if waited >= 10 * self.last_full_seconds:
                # Sellers whose evaluation does not depend on the time (no seller-fault cancel,
                # alert, report or faulted listing) change only if a bucket of theirs entered
                # or left a window since the last full pass: the others keep their summary.
                since, self.evaluated_bucket = self.evaluated_bucket, now_bucket
                dirty = self.dirty
                self.dirty = {state for state in self.book.states()
                              if state in dirty or self._time_moves(state, since, now_bucket)}
                full = True
        if not self.dirty:
            return outbox
        started = time.monotonic()
        dirty, self.dirty = self.dirty, set()
        for state in dirty:
            key = (state.seller_id, state.marketplace)
            limits, sums = self._limits_and_sums(state, now_bucket)
            previous = self.alerts.get(key, {})
            report = self.health.get(key)
            quiet = not any(running.cancelled for running in sums)
            if quiet:
                # No seller-fault cancel in any window: nothing to project, and the summary
                # follows from the orders (no window totals are built).
                state.summary = self._summary(limits, [(running.orders, 0) for running in sums], None)
                if not previous and report is None and not _listing_faults(state):
                    continue  # no alert can fire
            windows = [running.totals(limit) for running, limit in zip(sums, limits)]
            projections = [None if w.breached or not w.cancelled else
                           window.forecast_breach(state.buckets, w.window, self.policy, now_bucket, w)
                           for w in windows]
            if not quiet:
                state.summary = self._summary(limits, [(w.orders, w.cancelled) for w in windows], projections)
            first = windows[0]
            wanted = alerting.desired(state, self.policy, now, self.dashboard_url(*key), self.targets.get(key),
                                      windows=windows, projections=projections)
            if report is not None:
                entry = report[1]
                wanted.update(reconciliation.wanted_alerts(
                    state.seller_id, state.marketplace, self._comparison(*key, entry), entry.account_status,
                    self.dashboard_url(*key), limit=targets.annotations(self.targets.get(key), first.window),
                    health_rating=entry.health_rating))
            if not wanted and not previous:
                continue
            partition = self.owners[state.seller_id]
            # A partition not in the assignment (state of an assignment that is over) decides nothing.
            held = self.is_catching_up(partition) or partition not in self.owned
            decision = alerting.decide(previous, wanted, time.time(), hold=held)
            if decision.changed:
                store_key = state_module.alerts_key(*key)
                if decision.firing:
                    self.store[store_key] = _firing_encoder.encode(alerting.firing_identity(decision.firing))
                elif store_key in self.store:
                    del self.store[store_key]
            if key in self.adopted and not held:
                self.adopted.discard(key)
                outbox.fire.extend(decision.firing.values())    # taken over: sent by this worker now
            else:
                outbox.fire.extend(decision.fire)
            outbox.resolve.extend(decision.resolve)
            if decision.firing:
                self.alerts[key] = decision.firing
            else:
                self.alerts.pop(key, None)
        if full:
            self.last_full_end = time.monotonic()
            self.last_full_seconds = self.last_full_end - started
        return outbox

    def deliver(self, outbox: Outbox) -> None:
        """Send the decisions of a committed evaluation (dropped if ownership moved meanwhile)."""
        if self.sender is None or not outbox or outbox.epoch != self.epoch:
            return
        for firing in outbox.fire:
            self.sender.fire(self.alert(firing))
        for firing in outbox.resolve:
            self.sender.resolve(firing.labels, self.alert(firing))

    def alert(self, firing: alerting.Firing) -> Alert:
        """The alert as sent: its generatorURL is the seller's view on this worker, and names
        the deployment (`CANCELWATCH_APP_ID`), whose owners resolve it (`resolve_strays`)."""
        labels = firing.labels
        seller, marketplace = labels[names.LABEL_SELLER], labels[names.LABEL_MARKETPLACE]
        url = (f"{self.settings.web_advertised_url}/sellers/{quote(seller, safe='')}"
               f"?marketplace={quote(marketplace, safe='')}&{GENERATOR_APP_PARAM}={quote(self.settings.app_id, safe='')}")
        return Alert(labels, firing.annotations, datetime.fromtimestamp(firing.starts_at, timezone.utc), url)

    async def resolve_strays(self) -> int:
        """Resolve the alerts of this deployment that Alertmanager holds for sellers this worker
        owns and has caught up on, and that it does not hold firing itself: sent by a previous
        owner after this one had restored the firing sets (a worker that had not noticed the
        rebalance yet, or one stopped past its session and resumed). Nothing else resolves
        them: no worker re-sends them, and they would stay active until their endsAt, up to
        four re-send periods. Run at every re-send period and once partitions catch up, so
        such an alert is resolved within two re-send periods of being sent (contract section
        9). Sellers held (catching up) or due for evaluation are left for a later sweep.
        Returns how many were resolved."""
        if self.sender is None or self.book is None:
            return 0
        epoch = self.epoch
        self.sweep_due = False
        active = await self.sender.active("stray alerts of this worker's sellers are resolved at the next sweep",
                                          alertnames=names.ALERT_SEVERITY)
        if epoch != self.epoch or self.book is None:
            return 0        # ownership moved meanwhile: the next owner sweeps
        firing = self.sender.firing()
        strays = {}
        for alert, _ in active:
            labels = alert.labels
            seller = (labels.get(names.LABEL_SELLER), labels.get(names.LABEL_MARKETPLACE))
            if None in seller or alert.key in firing or alert.key in self.alerts.get(seller, {}):
                continue
            if parse_qs(urlsplit(alert.generator_url).query).get(GENERATOR_APP_PARAM) != [self.settings.app_id]:
                continue    # another deployment's, or not cancelwatch's
            partition = self.owners[seller[0]]
            if partition not in self.owned or self.is_catching_up(partition):
                continue
            state = self.book.seller(*seller)
            if state is not None and state in self.dirty:
                continue    # decided at the next evaluation, then swept
            strays[alert.key] = alert
        for alert in strays.values():
            self.sender.resolve(alert.labels, alert)
        if strays:
            sample = ", ".join(sorted(f"{a.labels[names.LABEL_ALERTNAME]} {a.labels[names.LABEL_SELLER]}"
                                      for a in strays.values())[:5])
            log.warning("stray alerts resolved: %d of this worker's sellers that it does not hold firing (sent by a "
                        "previous owner after the handover), e.g. %s", len(strays), sample)
            self.metrics.stray_alerts.inc(len(strays))
        return len(strays)

    def expire(self) -> None:
        if self.book is not None:
            deleted = self.book.expire(self.now())
            if deleted:
                log.info("expired %d order buckets past retention", deleted)

    # -- views -----------------------------------------------------------------
    def seller_view(self, seller_id: str, marketplace: str, extra_cancels: int = 0) -> dict | None:
        state = self.book.seller(seller_id, marketplace) if self.book else None
        if state is None:
            return None
        now = self.now()
        now_bucket = window.bucket_of(now, self.policy.bucket_seconds)
        windows = self.seller_windows(state, now_bucket)
        if extra_cancels:
            windows = [w.with_more_cancels(extra_cancels) for w in windows]
        view = window.seller_json(seller_id, marketplace, windows, now)
        view["target"] = targets.target_json(self.targets.get((seller_id, marketplace)))
        view["catching_up"] = self.is_catching_up(self.owners[seller_id])
        return view

    def at_risk(self, marketplace: str, limit: int) -> list[dict]:
        if self.book is None:
            return []
        now = self.now()
        now_bucket = window.bucket_of(now, self.policy.bucket_seconds)
        ranked = []
        for state in self.book.in_marketplace(marketplace):
            windows = self.seller_windows(state, now_bucket)
            if not window.at_risk(windows):
                continue
            ranked.append((window.risk_key_of_totals(windows) + (state.seller_id,), state.seller_id, windows))
        ranked.sort(key=lambda item: item[0])
        return [{**window.seller_json(seller_id, marketplace, windows, now),
                 "target": targets.target_json(self.targets.get((seller_id, marketplace)))}
                for _, seller_id, windows in ranked[:limit]]

    def scrape_state(self, consumer) -> ScrapeState:
        self.refresh_catch_up(consumer)
        # one key per seller and marketplace, and one per bucket holding orders
        keys = (len(self.book) + sum(len(state.buckets) for state in self.book.states())
                if self.book is not None else 0)
        alerts = [(a.labels[names.LABEL_ALERTNAME], a.labels[names.LABEL_SEVERITY])
                  for per_seller in self.alerts.values() for a in per_seller.values()]
        owned = {partition for _, partition in self.lag}
        return ScrapeState(Summaries(self.book), dict(self.lag), {"order-buckets": keys}, alerts,
                           self.sender.pending() if self.sender else 0, self.now(),
                           {partition: self.is_catching_up(partition) for partition in owned})


def _header(message, key: str) -> bytes | None:
    """The value of a message's first header named `key` (None: it has none)."""
    for name, value in message.headers or ():
        if name == key:
            return value
    return None


def _is_health(message) -> bool:
    """A rerouted account-health report (the reroute topic also carries events)."""
    return _header(message, KIND_HEADER) == HEALTH_ROLE.encode()


def _listing_faults(state) -> bool:
    """A sku whose latest orders are all seller-fault: the listing rule may fire."""
    return state.faulted is not None
