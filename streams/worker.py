"""`cancelwatch worker`: the faust app, its agent and table, the HTTP API and alerting.

The thin shell around the pure core (`state`, `window`, `alerting`):

- One agent consumes the orders, cancellations and internal reroute topics in
  batches (`take_events`). Each message is decoded strictly; bad ones go to
  the dead-letter topic with the original bytes, source and reason. A valid
  event whose partition is not its seller's (producer keyed it by something
  else) is forwarded to the reroute topic keyed by seller_id, so one seller's
  state always lives on one partition.
- State: one faust table on RocksDB with a changelog topic, holding one
  value per (seller, marketplace, purchase bucket). Writes go to the
  partition of the key's seller (`TableStore`).
- Derived totals (`state.Book`) are rebuilt from the table after every
  recovery, so a restarted worker answers exactly as before.
- Alerts: sellers touched by a batch are re-evaluated within
  `ALERT_TICK_SECONDS`; every seller is re-evaluated whenever the clock enters
  a new bucket (orders age out with no event at all).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import gc
import logging
import sys
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import Iterator, MutableMapping

import aiohttp
import aiohttp.web
import faust
from faust.web import exceptions as web_exceptions
from aiokafka.partitioner import murmur2
from faust.types import TP
from faust.exceptions import SameNode
from faust.web.exceptions import ServiceUnavailable
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, NoBrokersAvailable, TopicAlreadyExistsError

from streams import alerting, events, names, policy as policy_module, settings as settings_module, window
from streams.alertmanager import Alert, AlertSender
from streams.consumer import BatchingConsumer, Mailbox
from streams.metrics import Metrics, ScrapeState, SellerSummary, rate_band
from streams.settings import Settings
from streams.state import Book, SEPARATOR

log = logging.getLogger("cancelwatch.worker")

VERSION = "0.1.0"
TABLE_NAME = "order-buckets"
CLOCK_PREFIX = "~clock"
ALERT_TICK_SECONDS = 0.05
EXPIRY_SECONDS = 300.0
FETCH_MAX_RECORDS = 1_000                      # records per fetch handed to the agent
GROUP_RECORDS = 20_000                         # records applied, written and acknowledged together
GROUP_BUCKETS = 4_000                          # buckets a group holds open (decoded), at most
GROUP_WAIT_SECONDS = 0.5                       # longest wait for the next fetch of a group
FETCH_MAX_PARTITION_BYTES = 8 * 1024 * 1024    # bytes per partition per fetch request
HEADER_PREFIX = "cancelwatch."
CHANGELOG_BATCH_BYTES = 512 * 1024             # changelog records per produce batch (bytes)
TRIM_QUIET_SECONDS = 1.0                       # trim the heap once fetches paused this long
TRIM_IDLE_SECONDS = 10.0                       # and again this often while they stay paused
SUMMARY_POOL_SIZE = 100_000                    # distinct seller summaries kept for sharing
GC_THRESHOLD = 50_000                          # allocations between young collections (default 700)


def owner_partition(seller_id: str, partitions: int) -> int:
    """The partition a seller's state lives on: Kafka's default partitioner on seller_id."""
    return (murmur2(seller_id.encode()) & 0x7FFFFFFF) % partitions


_libc_trim = None


def release_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim).

    A fetch of 20,000 events allocates tens of MiB of short-lived objects; once
    freed they stay in the process unless trimmed."""
    global _libc_trim
    if _libc_trim is None:
        try:
            _libc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _libc_trim = False          # not glibc: nothing to do
    if _libc_trim:
        _libc_trim(0)


class Owners(dict):
    """seller_id -> owner partition, computed once per seller (murmur2 is pure Python)."""

    def __init__(self, partitions: int) -> None:
        super().__init__()
        self.partitions = partitions

    def __missing__(self, seller_id: str) -> int:
        partition = self[seller_id] = owner_partition(seller_id, self.partitions)
        return partition


_SEPARATOR = SEPARATOR.encode()


class TableStore(MutableMapping):
    """The faust table seen as a mapping whose keys live on their seller's partition.

    A write goes straight to the partition's RocksDB database and into a batch of
    changelog records. `flush()` sends those batches (one produce batch per
    partition and flush, where faust's own path sends and tracks one message per
    write), waits until the broker has them and then records the changelog offset
    in the database as faust does, so a restart replays the changelog from there.
    The agent flushes before it acknowledges the events behind the writes."""

    def __init__(self, table, owners: Owners) -> None:
        self.table = table
        self.owners = owners
        self._batches: dict[int, list] = {}     # partition -> changelog batches not sent yet
        self._flushing = asyncio.Lock()

    def partition_of(self, key: bytes) -> int:
        head = key[:key.find(_SEPARATOR)].decode()
        if head == CLOCK_PREFIX:
            return int(key.rsplit(_SEPARATOR, 1)[1])
        return self.owners[head]

    def _db(self, key: bytes):
        return self._partition_db(self.partition_of(key))

    def _partition_db(self, partition: int):
        return self.table.data._db_for_partition(partition)

    def get(self, key: bytes, default=None):
        value = self._db(key).get(key)
        return default if value is None else value

    def __getitem__(self, key: bytes) -> bytes:
        value = self._db(key).get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: bytes, value: bytes) -> None:
        partition = self.partition_of(key)
        self._partition_db(partition).put(key, value)
        self._log(partition, key, value)

    def __delitem__(self, key: bytes) -> None:
        partition = self.partition_of(key)
        db = self._partition_db(partition)
        if db.get(key) is None:
            raise KeyError(key)
        db.delete(key)
        self._log(partition, key, None)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and self._db(key).get(key) is not None

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.table.keys())

    def __len__(self) -> int:
        return sum(1 for _ in self.table.keys())

    def _log(self, partition: int, key: bytes, value: bytes | None) -> None:
        batches = self._batches.get(partition)
        if batches is None or batches[-1].append(timestamp=None, key=key, value=value) is None:
            batch = self.table.app.producer._ensure_producer().create_batch()
            batch.append(timestamp=None, key=key, value=value)   # the first record always fits
            self._batches.setdefault(partition, []).append(batch)

    async def flush(self) -> None:
        """Send the changelog records of every write so far and wait until the broker has them."""
        async with self._flushing:
            batches, self._batches = self._batches, {}
            if not batches:
                return
            producer = self.table.app.producer._ensure_producer()
            topic = self.table.changelog_topic.get_topic_name()
            sent = []
            for partition, builders in batches.items():
                for builder in builders:
                    delivered = await producer.send_batch(builder, topic, partition=partition)
                    sent.append((partition, builder.record_count(), delivered))
            last: dict[int, int] = {}
            for partition, count, delivered in sent:
                metadata = await delivered
                last[partition] = max(last.get(partition, -1), metadata.offset + count - 1)
            for partition, offset in last.items():
                self.table.data.set_persisted_offset(TP(topic, partition), offset)


def ensure_topics(settings: Settings) -> None:
    """Create the source, reroute and dead-letter topics if missing; check partition counts."""
    security = settings.kafka_security.kafka_python_options()
    try:
        admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                                 client_id=f"{settings.app_id}-admin", **security)
    except NoBrokersAvailable:
        raise SystemExit(f"cancelwatch worker: no Kafka broker at {', '.join(settings.bootstrap_servers)} "
                         "(CANCELWATCH_BROKER); start one with `make stack-up`") from None
    except KafkaError as error:
        hint = (" The broker refused the connection or the login: check CANCELWATCH_KAFKA_USERNAME, the "
                "password (CANCELWATCH_KAFKA_PASSWORD_FILE) and CANCELWATCH_KAFKA_SASL_MECHANISM"
                if settings.kafka_security.uses_sasl else "")
        raise SystemExit(f"cancelwatch worker: cannot talk to Kafka at {', '.join(settings.bootstrap_servers)} "
                         f"with {settings.kafka_security.protocol} ({error}).{hint}") from None
    try:
        wanted = [settings.orders_topic, settings.cancellations_topic, settings.reroute_topic,
                  settings.dead_letter_topic]
        existing = set(admin.list_topics())
        brokers = len(admin.describe_cluster()["brokers"]) or 1
        for name in wanted:
            if name in existing:
                continue
            try:
                admin.create_topics([NewTopic(name, settings.partitions, min(3, brokers))], timeout_ms=30_000)
            except TopicAlreadyExistsError:
                pass
        for description in _described(admin, wanted[:3]):
            count = len(description["partitions"])
            if count != settings.partitions:
                raise SystemExit(
                    f"cancelwatch worker: topic {description['topic']} has {count} partitions but "
                    f"CANCELWATCH_PARTITIONS is {settings.partitions}; they must match (set "
                    f"CANCELWATCH_PARTITIONS={count}, or recreate the topic)")
    except KafkaError as error:
        raise SystemExit(f"cancelwatch worker: cannot prepare topics: {error}") from None
    finally:
        admin.close()


def _described(admin: KafkaAdminClient, topics: list[str], timeout: float = 30.0) -> list[dict]:
    """Topic descriptions, waiting for new topics' partitions to appear in metadata."""
    deadline = time.monotonic() + timeout
    while True:
        described = admin.describe_topics(topics)
        if all(d["partitions"] for d in described) or time.monotonic() > deadline:
            return described
        time.sleep(0.2)


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
    written (each touched bucket once), flushed and acknowledged as one."""

    __slots__ = ("pending", "fetches", "records", "clocks", "outcomes", "dead", "reroute")

    def __init__(self, pending) -> None:
        self.pending = pending
        self.fetches: list = []                 # consumer.Fetch, records dropped once applied
        self.records = 0
        self.clocks: dict[int, float] = {}      # partition -> latest occurred_at
        self.outcomes: Counter = Counter()      # (topic, outcome) -> events
        self.dead: list = []                    # (record, BadEvent)
        self.reroute: list = []                 # (record, seller_id, owner partition)

    def complete(self) -> bool:
        """Large enough to commit without waiting for more fetches."""
        return self.records >= GROUP_RECORDS or len(self.pending.buckets) >= GROUP_BUCKETS


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
        self.dirty: set = set()     # SellerStates to evaluate
        self._summary_pool: dict[tuple, SellerSummary] = {}
        self.alerts: dict[tuple[str, str], dict] = {}   # seller -> {AlertKey: Alert}
        self.evaluated_bucket: int | None = None
        self.last_full_end = 0.0
        self.last_full_seconds = 0.0
        self.ready = asyncio.Event()
        self.last_fetch_applied = 0.0   # monotonic time the agent last applied a fetch
        # Whole fetches of the source topics, from BatchingConsumer to the agent.
        self.fetches = Mailbox()
        self.group: Group | None = None
        self.role = {
            settings.orders_topic: names.ORDERS_TOPIC,
            settings.cancellations_topic: names.CANCELLATIONS_TOPIC,
            settings.reroute_topic: names.REROUTE_TOPIC,
        }
        self.topic_name = {
            names.ORDERS_TOPIC: settings.orders_topic,
            names.CANCELLATIONS_TOPIC: settings.cancellations_topic,
        }

    # -- clock ---------------------------------------------------------------
    def now(self) -> float:
        if self.settings.clock == "event":
            return self.event_clock
        return time.time()

    def _delivered(self, outcome: str, count: int) -> None:
        self.metrics.deliveries.labels(outcome).inc(count)

    # -- state -----------------------------------------------------------------
    def rebuild(self) -> None:
        """Derive totals from the table's active partitions (after every recovery)."""
        started = time.monotonic()
        book = Book(self.policy, self.store)
        clock = 0.0
        items = []
        for key, value in self.store.table.items():
            if key.startswith(CLOCK_PREFIX.encode()):
                clock = max(clock, int(value) / 1_000_000)
            else:
                items.append((key, value))
        orders = book.load(items)
        self.book = book
        self.event_clock = max(self.event_clock, clock)
        owned = {(state.seller_id, state.marketplace) for state in book.states()}
        for seller in [s for s in self.alerts if s not in owned]:
            self.alerts.pop(seller)      # the new owner re-fires them; do not resolve
        self.dirty = set(book.states())
        self.group = None           # applied to the book just replaced; its fetches are read again
        self.evaluated_bucket = None
        log.info("state rebuilt: %d sellers, %d orders in %.2fs", len(book), orders,
                 time.monotonic() - started)
        self.ready.set()

    def process(self, records) -> None:
        """Decode a fetch's records and apply them to the open group (nothing is written yet)."""
        group = self.group
        if group is None:
            group = self.group = Group(self.book.begin())
        wall = time.time()
        wall_dt = datetime.fromtimestamp(wall, timezone.utc)
        applied = []
        clocks = group.clocks
        outcome_counts = group.outcomes
        latencies: dict[str, list[float]] = defaultdict(list)
        owners = self.owners
        for message in records:
            role = self.role[message.topic]
            try:
                if role == names.REROUTE_TOPIC:
                    event = events.decode(message.value, wall_dt)
                else:
                    event = events.decode_on(role, message.value, wall_dt)
            except events.BadEvent as bad:
                group.dead.append((message, bad))
                outcome_counts[(message.topic, "dead_letter")] += 1
                self.metrics.dead_letters.labels(message.topic, bad.kind).inc()
                continue
            owner = owners[event.seller_id]
            if role != names.REROUTE_TOPIC and owner != message.partition:
                group.reroute.append((message, event.seller_id, owner))
                outcome_counts[(message.topic, "rerouted")] += 1
                continue
            occurred = event.occurred_at.timestamp()
            if occurred > clocks.get(owner, 0.0):
                clocks[owner] = occurred
            topic = self.topic_name[events.TOPIC_OF_TYPE[type(event)]]
            applied.append((topic, event))
            latencies[topic].append(wall - occurred)
        group.records += len(records)
        for topic, values in latencies.items():
            self.metrics.observe_latencies(topic, values)
        if clocks:
            self.event_clock = max(self.event_clock, max(clocks.values()))
        self.book.feed(group.pending, applied, self.now())

    def drop_stale_group(self, generation: int) -> None:
        """Forget an open group fetched before a rebalance (`generation` is the consumer's now):
        nothing of it was written or acknowledged, so faust reads it again from the committed
        offsets, on whichever worker owns it now."""
        if self.group is not None and self.group.fetches[0].generation != generation:
            self.group = None

    def commit(self) -> "Group":
        """Write the open group's buckets (each once) and count its outcomes; returns the group."""
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
        if self.settings.clock == "event":
            for partition, clock in group.clocks.items():
                key = f"{CLOCK_PREFIX}{SEPARATOR}{partition}".encode()
                stored = self.store.get(key)
                value = int(clock * 1_000_000)
                if stored is None or int(stored) < value:
                    self.store[key] = str(value).encode()
        for (topic, outcome), count in outcome_counts.items():
            self.metrics.events.labels(topic, outcome).inc(count)
        return group

    # -- alerts ----------------------------------------------------------------
    def dashboard_url(self, seller_id: str, marketplace: str) -> str:
        return (f"{self.settings.grafana_url}/d/{names.DASHBOARD_UIDS['seller']}"
                f"?var-seller_id={seller_id}&var-marketplace={marketplace}")

    def _shared_summary(self, status: str, band: str, windows: tuple) -> SellerSummary:
        """One SellerSummary object per distinct summary: most sellers share theirs with others."""
        signature = (status, band, windows)
        summary = self._summary_pool.get(signature)
        if summary is None:
            if len(self._summary_pool) >= SUMMARY_POOL_SIZE:
                self._summary_pool.clear()
            summary = self._summary_pool[signature] = SellerSummary(status, band, windows)
        return summary

    def evaluate(self) -> None:
        """Re-evaluate dirty sellers, or all of them when the clock entered a new bucket."""
        if self.book is None:
            return
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
                self.evaluated_bucket = now_bucket
                self.dirty = set(self.book.states())
                full = True
        if not self.dirty:
            return
        started = time.monotonic()
        dirty, self.dirty = self.dirty, set()
        starts = datetime.now(timezone.utc)
        for state in dirty:
            key = (state.seller_id, state.marketplace)
            windows = window.seller_windows(state.buckets, state.marketplace, self.policy, now_bucket)
            first = windows[0]
            state.summary = self._shared_summary(
                max((w.status for w in windows), key=names.STATUSES.index),
                rate_band(first.orders, first.cancelled),
                tuple((w.window.days, w.orders, w.cancelled, w.window.limit_bps) for w in windows),
            )
            previous = self.alerts.get(key, {})
            if not previous and not any(w.cancelled for w in windows) and not _listing_faults(state):
                continue  # no seller-fault cancel anywhere: no alert can fire
            wanted = alerting.desired(state, self.policy, now, self.dashboard_url(*key))
            if not wanted and not previous:
                continue
            current = {}
            for alert_key, want in wanted.items():
                before = previous.get(alert_key)
                alert = Alert(want.labels, want.annotations,
                              before.starts_at if before is not None else starts)
                current[alert_key] = alert
                if self.sender is not None:
                    self.sender.fire(alert)
            for alert_key, alert in previous.items():
                if alert_key not in wanted and self.sender is not None:
                    self.sender.resolve(alert.labels)
            if current:
                self.alerts[key] = current
            else:
                self.alerts.pop(key, None)
        if full:
            self.last_full_end = time.monotonic()
            self.last_full_seconds = self.last_full_end - started

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
        windows = window.seller_windows(state.buckets, marketplace, self.policy, now_bucket)
        if extra_cancels:
            windows = [w.with_more_cancels(extra_cancels) for w in windows]
        return window.seller_json(seller_id, marketplace, windows, now)

    def at_risk(self, marketplace: str, limit: int) -> list[dict]:
        if self.book is None:
            return []
        now = self.now()
        now_bucket = window.bucket_of(now, self.policy.bucket_seconds)
        ranked = []
        for state in self.book.in_marketplace(marketplace):
            windows = window.seller_windows(state.buckets, marketplace, self.policy, now_bucket)
            ranked.append((window.risk_key_of_totals(windows) + (state.seller_id,), state.seller_id, windows))
        ranked.sort(key=lambda item: item[0])
        return [window.seller_json(seller_id, marketplace, windows, now)
                for _, seller_id, windows in ranked[:limit]]

    def scrape_state(self, app: faust.App) -> ScrapeState:
        lag = {}
        consumer = app.consumer
        if consumer is not None:
            try:
                for tp in consumer.assignment():
                    if tp.topic not in self.role:
                        continue
                    highwater = consumer.highwater(tp)
                    position = consumer._read_offset.get(tp)
                    if highwater is not None:
                        done = position + 1 if position is not None else 0
                        lag[(tp.topic, tp.partition)] = max(0, highwater - done)
            except Exception as error:  # the consumer may be mid-rebalance; lag is best effort
                log.debug("lag unavailable: %r", error)
        # one key per seller and marketplace, and one per bucket holding orders
        keys = (len(self.book) + sum(len(state.buckets) for state in self.book.states())
                if self.book is not None else 0)
        alerts = [(a.labels[names.LABEL_ALERTNAME], a.labels[names.LABEL_SEVERITY])
                  for per_seller in self.alerts.values() for a in per_seller.values()]
        return ScrapeState(Summaries(self.book), lag, {TABLE_NAME: keys}, alerts,
                           self.sender.pending() if self.sender else 0, self.now())


def _listing_faults(state) -> bool:
    return bool(state.listing) and any(entry[2] for latest in state.listing.values() for entry in latest)


LOG_LEVELS = {"crit": "CRITICAL", "error": "ERROR", "warn": "WARNING", "info": "INFO", "debug": "DEBUG"}


def _quiet_libraries(level: str) -> None:
    """faust's worker resets logging on start; keep the Kafka client libraries at warnings."""
    logging.getLogger().setLevel(LOG_LEVELS[level])
    if level == "debug":
        return
    for name in ("aiokafka", "kafka", "faust", "mode"):
        logging.getLogger(name).setLevel(max(logging.getLevelName(LOG_LEVELS[level]),
                                             logging.WARNING if name in ("aiokafka", "kafka") else logging.INFO))


@aiohttp.web.middleware
async def _json_errors(request, handler):
    """Every error the web server itself produces (unknown path, wrong method) as JSON."""
    try:
        return await handler(request)
    except aiohttp.web.HTTPException as error:
        if error.status < 400:
            raise
        return aiohttp.web.json_response({"error": f"{error.reason}: {request.method} {request.path}"},
                                         status=error.status)


def _bad_request(view, message: str):
    return view.json({"error": message}, status=400)


def build_app(settings: Settings, policy: policy_module.Policy) -> tuple[faust.App, Runtime]:
    runtime = Runtime(settings, policy)
    security = settings.kafka_security
    credentials = None
    if security.uses_sasl:
        ssl_context = None
        if security.uses_tls:
            ssl_context = faust.auth.ssl.create_default_context(cafile=security.ca_file or None)
        credentials = faust.SASLCredentials(username=security.username, password=security.password,
                                            mechanism=security.sasl_mechanism, ssl_context=ssl_context)
    elif security.uses_tls:
        credentials = faust.SSLCredentials(faust.auth.ssl.create_default_context(cafile=security.ca_file or None))
    app = faust.App(
        settings.app_id,
        broker=settings.faust_broker,
        broker_credentials=credentials,
        store="rocksdb://",
        datadir=str(settings.data_dir),
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        canonical_url=settings.web_advertised_url,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        autodiscover=False,
        web_enabled=True,
        stream_wait_empty=False,
        table_cleanup_interval=3600.0,
        # Large fetches: the agent applies a whole fetch at once, and with small ones the
        # worker waits on the broker round trip between fetches (bench/README.md).
        broker_max_poll_records=FETCH_MAX_RECORDS,
        consumer_max_fetch_size=FETCH_MAX_PARTITION_BYTES,
        producer_linger=0.005,
        # The table's changelog goes out in one batch per partition and group (TableStore).
        producer_max_batch_size=CHANGELOG_BATCH_BYTES,
        producer_max_request_size=CHANGELOG_BATCH_BYTES + 64 * 1024,
        logging_config=None,
        broker_session_timeout=settings.session_timeout_seconds,
        # faust lets generic variables (WEB_BIND, WEB_PORT, BROKER_URL, ...) override the
        # arguments above; the worker is configured by CANCELWATCH_* settings only.
        env={},
    )
    source = app.topic(settings.orders_topic, settings.cancellations_topic, settings.reroute_topic,
                       key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                       partitions=settings.partitions)
    reroute_topic = app.topic(settings.reroute_topic, key_serializer="raw", value_serializer="raw",
                              partitions=settings.partitions)
    dead_letter_topic = app.topic(settings.dead_letter_topic, key_serializer="raw", value_serializer="raw")
    # Small changelog segments and an eager cleaner keep the compacted changelog close to
    # one record per bucket, so a restore from scratch reads little more than the state.
    table = app.Table(TABLE_NAME, key_type=bytes, value_type=bytes, partitions=settings.partitions,
                      extra_topic_configs={"segment.bytes": str(16 * 1024 * 1024),
                                           "segment.ms": str(10 * 60 * 1000),
                                           "min.cleanable.dirty.ratio": "0.2"},
                      # RocksDB's faust defaults (64 MiB x 3 write buffers and a 2 GiB block cache
                      # per partition) would dwarf the state itself; the values are small and hot.
                      options={"write_buffer_size": 512 * 1024, "max_write_buffer_number": 2,
                               "block_cache_size": 64 * 1024 * 1024,
                               "block_cache_compressed_size": 16 * 1024 * 1024})
    runtime.store = TableStore(table, runtime.owners)
    runtime.metrics.attach(lambda: runtime.scrape_state(app))

    @table.on_recover
    async def _recovered() -> None:
        runtime.rebuild()

    app.transport.Consumer = BatchingConsumer.for_topics(
        [settings.orders_topic, settings.cancellations_topic, settings.reroute_topic], runtime.fetches)

    @app.agent(source)
    async def apply_events(stream):
        """Applies the fetches of the source topics (handed over by BatchingConsumer) in groups
        of up to GROUP_RECORDS records: each group writes each touched bucket once, sends its
        changelog records and dead letters, and only then acknowledges its events."""
        taking = None
        try:
            while not app.should_stop:
                if taking is None:
                    taking = asyncio.ensure_future(runtime.fetches.get())
                if runtime.group is not None and not taking.done():
                    # The last fetch was full, so the next one is on its way; a group is not
                    # held open longer than GROUP_WAIT_SECONDS for it.
                    await asyncio.wait({taking}, timeout=GROUP_WAIT_SECONDS)
                    if not taking.done():
                        await commit_group()
                        continue
                fetch = await taking
                taking = None
                generation = app.consumer_generation_id
                runtime.drop_stale_group(generation)
                if fetch.generation != generation:
                    continue   # fetched before a rebalance: read again from the committed offsets
                if runtime.book is None:
                    runtime.rebuild()
                runtime.process(fetch.records)
                fetch.records = None     # applied: only the offsets are kept, to acknowledge them
                runtime.group.fetches.append(fetch)
                more_waiting, fetch = fetch.full, None
                if more_waiting and not runtime.group.complete():
                    continue
                await commit_group()
        finally:
            if taking is not None and not taking.done():
                taking.cancel()   # a fetch it would take stays unacknowledged: read again after restart

    async def commit_group() -> None:
        """Write the open group, send its changelog, dead letters and reroutes, then acknowledge it."""
        runtime.drop_stale_group(app.consumer_generation_id)
        if runtime.group is None:
            return
        group = runtime.commit()
        sends = []
        for message, bad in group.dead:
            headers = [
                (HEADER_PREFIX + "error.kind", bad.kind.encode()),
                (HEADER_PREFIX + "error.reason", bad.reason.encode()),
                (HEADER_PREFIX + "source.topic", message.topic.encode()),
                (HEADER_PREFIX + "source.partition", str(message.partition).encode()),
                (HEADER_PREFIX + "source.offset", str(message.offset).encode()),
            ]
            sends.append(await dead_letter_topic.send(key=message.key, value=message.value or b"",
                                                      headers=headers))
        for message, seller_id, owner in group.reroute:
            headers = [
                (HEADER_PREFIX + "source.topic", message.topic.encode()),
                (HEADER_PREFIX + "source.partition", str(message.partition).encode()),
                (HEADER_PREFIX + "source.offset", str(message.offset).encode()),
            ]
            sends.append(await reroute_topic.send(key=seller_id.encode(), value=message.value,
                                                  partition=owner, headers=headers))
        await runtime.store.flush()
        if sends:
            await asyncio.gather(*sends)
        for applied in group.fetches:
            app.consumer.ack_fetch(applied)
        group = sends = None
        if runtime.dirty and runtime.settings.clock == "event":
            runtime.evaluate()
        runtime.last_fetch_applied = time.monotonic()

    @app.task
    async def alert_loop() -> None:
        _quiet_libraries(settings.log_level)
        if runtime.sender is not None:
            app.add_future(runtime.sender.run())
        trimmed = 0.0
        while not app.should_stop:
            await asyncio.sleep(ALERT_TICK_SECONDS)
            runtime.evaluate()
            quiet_since = time.monotonic() - TRIM_QUIET_SECONDS
            if runtime.last_fetch_applied < quiet_since and (trimmed < runtime.last_fetch_applied
                                                             or trimmed < quiet_since - TRIM_IDLE_SECONDS):
                release_memory()
                trimmed = time.monotonic()

    @app.timer(interval=EXPIRY_SECONDS)
    async def expire() -> None:
        runtime.expire()
        await runtime.store.flush()

    @app.page("/sellers/{seller_id}")
    async def seller(web, request, seller_id: str):
        marketplace = request.query.get("marketplace", "")
        if seller_id == "at-risk":
            return await _at_risk(web, request, marketplace)
        return await _seller(web, request, seller_id, marketplace, 0)

    @app.page("/sellers/{seller_id}/what-if")
    async def what_if(web, request, seller_id: str):
        marketplace = request.query.get("marketplace", "")
        raw = request.query.get("cancel")
        if raw is None:
            return _bad_request(web, "query parameter cancel (a whole number >= 0) is required")
        try:
            extra = int(raw)
        except ValueError:
            return _bad_request(web, f"cancel must be a whole number >= 0, got {raw!r}")
        if not 0 <= extra <= 1_000_000:
            return _bad_request(web, f"cancel must be within 0..1000000, got {extra}")
        return await _seller(web, request, seller_id, marketplace, extra)

    async def _seller(web, request, seller_id: str, marketplace: str, extra: int):
        if marketplace not in names.MARKETPLACES:
            return _bad_request(web, f"marketplace must be one of {' '.join(names.MARKETPLACES)}, "
                                     f"got {marketplace!r}")
        if not 1 <= len(seller_id) <= 64:
            return _bad_request(web, "seller_id must be 1..64 characters")
        partition = runtime.owners[seller_id]
        if not _owns(partition):
            try:
                return await app.router.route_req(TABLE_NAME, seller_id.encode(), web, request)
            except SameNode:
                pass
            except ServiceUnavailable:
                return web.json({"error": "the worker owning this seller is not known yet (rebalancing); "
                                          "retry shortly"}, status=503)
            except aiohttp.ClientError as error:
                return web.json({"error": f"cannot reach the worker owning this seller: {error}"},
                                status=503)
        if runtime.book is None:
            return web.json({"error": "state is being recovered; retry shortly"}, status=503)
        view = runtime.seller_view(seller_id, marketplace, extra)
        if view is None and app.rebalancing:
            # Partitions just assigned here are recovered but not yet in the book.
            return web.json({"error": "partitions are moving between workers (rebalancing); "
                                      "retry shortly"}, status=503)
        if view is None:
            return web.json({"error": f"seller {seller_id} has never been seen in {marketplace}"}, status=404)
        return web.json(view)

    def _owns(partition: int) -> bool:
        try:
            actives = app.assignor.assigned_actives()
        except Exception:  # noqa: BLE001 - before the first assignment
            return True
        return any(tp.partition == partition and tp.topic in runtime.role for tp in actives) or not actives

    async def _at_risk(web, request, marketplace: str):
        if marketplace not in names.MARKETPLACES:
            return _bad_request(web, f"marketplace must be one of {' '.join(names.MARKETPLACES)}, "
                                     f"got {marketplace!r}")
        raw = request.query.get("limit", "20")
        try:
            limit = int(raw)
        except ValueError:
            return _bad_request(web, f"limit must be a whole number within 1..1000, got {raw!r}")
        if not 1 <= limit <= 1000:
            return _bad_request(web, f"limit must be within 1..1000, got {limit}")
        if runtime.book is None:
            return web.json({"error": "state is being recovered; retry shortly"}, status=503)
        ranked = runtime.at_risk(marketplace, limit)
        if request.query.get("scope") != "local":
            ranked = await _with_other_workers(ranked, marketplace, limit)
        return web.json(ranked)

    async def _with_other_workers(ranked: list[dict], marketplace: str, limit: int) -> list[dict]:
        """Merge the at-risk lists of every other worker of the group (each owns other sellers)."""
        try:
            hosts = set(app.router.tables_metadata())
        except Exception:  # noqa: BLE001 - no assignment yet: this worker is all there is
            return ranked
        own = str(app.conf.canonical_url).rstrip("/")
        others = [str(url).rstrip("/") for url in hosts if str(url).rstrip("/") != own]
        if not others:
            return ranked
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async def fetch(url: str) -> list[dict]:
                async with session.get(f"{url}/sellers/at-risk", params={
                        "marketplace": marketplace, "limit": str(limit), "scope": "local"}) as response:
                    response.raise_for_status()
                    return await response.json()
            results = await asyncio.gather(*(fetch(url) for url in others), return_exceptions=True)
        failed = [url for url, result in zip(others, results) if isinstance(result, BaseException)]
        if failed:
            raise web_exceptions.ServiceUnavailable(f"cannot reach workers {', '.join(failed)}; retry shortly")
        merged = ranked + [view for result in results for view in result]
        merged.sort(key=window.risk_key_of_json)
        return merged[:limit]

    app.web.web_app.middlewares.append(_json_errors)

    @app.page("/metrics")
    async def metrics(web, request):
        return web.bytes(runtime.metrics.exposition(),
                         content_type="text/plain; version=0.0.4")

    return app, runtime


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cancelwatch worker", description=__doc__.split("\n")[0])
    parser.parse_args(argv)
    settings = settings_module.load()
    settings_module.warn_unknown("worker")
    try:
        policy = policy_module.load(settings.policy_path)
    except policy_module.PolicyError as error:
        print(f"cancelwatch worker: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=LOG_LEVELS[settings.log_level],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    ensure_topics(settings)
    app, _ = build_app(settings, policy)
    # The worker's long-lived state (sellers, buckets, metrics) is hundreds of thousands of
    # objects; with the default thresholds the collector walks them every few batches.
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True)
    worker.execute_from_commandline()
    return 0
