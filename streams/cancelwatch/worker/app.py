"""`cancelwatch worker`: the faust app that wires the agent, table, timers and HTTP API together.

- One agent consumes the orders, cancellations and internal reroute topics, a
  whole fetch at a time (`BatchingConsumer`), and applies fetches in groups
  (`Runtime.process`). Bad messages go to the dead-letter topic with the
  original bytes, source and reason; a valid event on a partition that is not
  its seller's is forwarded to the reroute topic, so one seller's state always
  lives on one partition.
- A group is committed as one transaction (`TableStore.commit`): changelog
  acknowledged, then RocksDB written, then the Kafka offsets acknowledged.
- Alerts: sellers touched by a group are re-evaluated within
  `ALERT_TICK_SECONDS`, every seller whenever the clock enters a new bucket;
  the firing sets are committed before anything is sent. When partitions
  move, this worker stops sending the alerts of sellers it no longer owns
  and the new owner takes them over (`Runtime.revoked`, `Runtime.rebuild`).
- The HTTP API (`web.Api`) answers for any seller, forwarding to its owner.
- Every topic it creates, faust's internal ones too, has min(3, brokers) replicas and,
  once replicated, `min.insync.replicas` one below (`topics.Replication`); its producer
  writes with `acks=all` and idempotence (`IdempotentProducer`), so a broker lost
  loses no acknowledged changelog record and a retried send adds no duplicate.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
import time

import aiohttp
import aiohttp.web
import faust
from faust.transport.drivers import aiokafka as aiokafka_driver
from kafka import KafkaAdminClient
from kafka.errors import KafkaError, NoBrokersAvailable

from cancelwatch import compiled, settings as settings_module, topics

from cancelwatch.core import policy as policy_module
from cancelwatch.worker.consumer import BatchingConsumer
from cancelwatch.worker.mailbox import Mailbox
from cancelwatch.settings import Settings
from cancelwatch.worker import records, web
from cancelwatch.worker.ownership import Ownership, faust_assignment, faust_recovering
from cancelwatch.worker.runtime import HEALTH_ROLE, KIND_HEADER, Runtime, limit_arenas, pin_mmap_threshold
from cancelwatch.worker.table_store import Failpoints, StallWatch, TableStore
from cancelwatch.worker import feeds
from cancelwatch.tools import target_cli
from cancelwatch.tools.producer import ProducerError

log = logging.getLogger("cancelwatch.worker")

TABLE_NAME = "order-buckets"
ALERT_TICK_SECONDS = 0.05
EXPIRY_SECONDS = 300.0
FETCH_MAX_RECORDS = 1_000                      # records per fetch handed to the agent
GROUP_WAIT_SECONDS = 0.5                       # longest wait for the next fetch of a group
FETCH_MAX_PARTITION_BYTES = 1024 * 1024        # bytes per partition per fetch request (docs/design.md, "Throughput")
# The state table's RocksDB options per partition. Faust's defaults (64 MiB x 3 write buffers and
# a 2 GiB block cache per partition) would dwarf the state itself; the values are small and hot.
ROCKSDB_OPTIONS = {"write_buffer_size": 512 * 1024, "max_write_buffer_number": 2,
                   "block_cache_size": 64 * 1024 * 1024, "block_cache_compressed_size": 16 * 1024 * 1024}
HEADER_PREFIX = "cancelwatch."
CHANGELOG_BATCH_BYTES = 512 * 1024             # changelog records per produce batch (bytes)
TRIM_QUIET_SECONDS = 1.0                       # trim the heap once fetches paused this long
TRIM_IDLE_SECONDS = 10.0                       # and again this often while they stay paused
GC_THRESHOLD = 200_000                         # allocations between young collections (default 700)


class IdempotentProducer(aiokafka_driver.Producer):
    """faust's producer with idempotence on: faust turns it on only inside its transactions
    (`processing_guarantee='exactly_once'`), which the worker does not use. With `acks=all`
    (`producer_acks=-1`), a send retried after a broker failed is written once."""

    def _settings_extra(self):
        return {**super()._settings_extra(), "enable_idempotence": True}


CLOCK_TOPIC_CONFIGS = {"cleanup.policy": "compact", "segment.bytes": str(1024 * 1024),
                       "segment.ms": str(10 * 60 * 1000), "min.cleanable.dirty.ratio": "0.1"}


def ensure_topics(settings: Settings) -> topics.Replication:
    """Create the source, reroute and dead-letter topics (with `CANCELWATCH_CLOCK=event` the
    shared clock's too) if missing; check partition counts.
    Returns how this cluster's topics are replicated, for the topics faust creates."""
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
                  settings.account_health_topic, settings.dead_letter_topic]
        topics.create_missing(admin, wanted, settings.partitions)
        if settings.clock == "event":
            # A record per partition and commit, read whole at every start: short segments let
            # the cleaner keep it near one record per partition.
            topics.create_missing(admin, [settings.clock_topic], 1, CLOCK_TOPIC_CONFIGS)
        replication = topics.replication(admin)
        for description in _described(admin, wanted[:4]):
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
    return replication


def _described(admin: KafkaAdminClient, wanted: list[str], timeout: float = 30.0) -> list[dict]:
    """Topic descriptions, waiting for new topics' partitions to appear in metadata."""
    deadline = time.monotonic() + timeout
    while True:
        described = admin.describe_topics(wanted)
        if all(d["partitions"] for d in described) or time.monotonic() > deadline:
            return described
        time.sleep(0.2)


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


def _dead_letter_headers(record, bad) -> list[tuple[str, bytes]]:
    """The dead-letter topic's headers: why, and where the original message was."""
    return [
        (HEADER_PREFIX + "error.kind", bad.kind.encode()),
        (HEADER_PREFIX + "error.reason", bad.reason.encode()),
        (HEADER_PREFIX + "source.topic", record.topic.encode()),
        (HEADER_PREFIX + "source.partition", str(record.partition).encode()),
        (HEADER_PREFIX + "source.offset", str(record.offset).encode()),
    ]


def _web_request(request, params: dict) -> web.Request:
    return web.Request(request.rel_url.raw_path, dict(request.query), params,
                       forwarded=web.FORWARDED_HEADER in request.headers)


def build_app(settings: Settings, policy: policy_module.Policy,
              replication: topics.Replication = topics.Replication(1)) -> tuple[faust.App, Runtime]:
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
        topic_replication_factor=replication.replicas,
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
        # The table's changelog goes out in one batch per partition and commit (TableStore).
        producer_max_batch_size=CHANGELOG_BATCH_BYTES,
        producer_max_request_size=CHANGELOG_BATCH_BYTES + 64 * 1024,
        logging_config=None,
        broker_session_timeout=settings.session_timeout_seconds,
        # faust refuses a session longer than a request may take (90 s by default).
        broker_request_timeout=max(90.0, settings.session_timeout_seconds + 30.0),
        # faust lets generic variables (WEB_BIND, WEB_PORT, BROKER_URL, ...) override the
        # arguments above; the worker is configured by CANCELWATCH_* settings only.
        env={},
    )
    source = app.topic(settings.orders_topic, settings.cancellations_topic, settings.reroute_topic,
                       settings.account_health_topic,
                       key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                       partitions=settings.partitions)
    reroute_topic = app.topic(settings.reroute_topic, key_serializer="raw", value_serializer="raw",
                              partitions=settings.partitions)
    dead_letter_topic = app.topic(settings.dead_letter_topic, key_serializer="raw", value_serializer="raw")
    clock_topic = app.topic(settings.clock_topic, key_serializer="raw", value_serializer="raw")
    # Small changelog segments and an eager cleaner keep the compacted changelog close to
    # one record per bucket, so a restore from scratch reads little more than the state.
    table = app.Table(TABLE_NAME, key_type=bytes, value_type=bytes, partitions=settings.partitions,
                      extra_topic_configs={**replication.configs,
                                           "segment.bytes": str(16 * 1024 * 1024),
                                           "segment.ms": str(10 * 60 * 1000),
                                           "min.cleanable.dirty.ratio": "0.2"},
                      options=ROCKSDB_OPTIONS)
    failpoints = Failpoints(settings.failpoint, settings.failpoint_at)
    # The session expires when no heartbeat came for its length; the last one came at most a
    # heartbeat interval before a stall began.
    stall = StallWatch(max(1.0, settings.session_timeout_seconds - app.conf.broker_heartbeat_interval)).start()

    def fence() -> str | None:
        """Why this worker's writes must not go out: it stood still long enough, since its
        partitions were last assigned, for its session to expire and other workers to own them."""
        stalled = stall.stalled_since(runtime.assignment_started)
        if stalled is None:
            return None
        return (f"the process stood still for {stalled:.1f}s (CANCELWATCH_SESSION_TIMEOUT_SECONDS is "
                f"{settings.session_timeout_seconds:g}): its partitions may be another worker's now")

    def fenced(reason: str) -> None:
        """Void the assignment (its writes dropped, its events read again) and rejoin the group:
        the next assignment says what this worker owns."""
        runtime.revoked(app.consumer_generation_id)
        app.add_future(rejoin())

    async def rejoin() -> None:
        consumer = app.consumer._thread._ensure_consumer()
        await app.consumer._thread.call_thread(consumer._coordinator.request_rejoin)
        log.warning("rejoining the consumer group after a stall: partitions are assigned again")

    runtime.store = store = TableStore(table, runtime.partition_of, failpoints, fence=fence, on_fenced=fenced)
    runtime.metrics.attach(lambda: runtime.scrape_state(app.consumer))

    def changelog_topic() -> str:
        return table.changelog_topic.get_topic_name()

    ownership = Ownership(runtime.owners, faust_assignment(app, changelog_topic),
                          loaded=lambda: runtime.book is not None,
                          recovering=faust_recovering(app, changelog_topic))
    api = web.Api(runtime, ownership)
    mailbox = Mailbox()

    async def committed(outbox) -> None:
        """Commit what is staged (the firing sets of `outbox` among it), then send `outbox`."""
        await store.commit()
        runtime.deliver(outbox)

    @app.on_partitions_revoked.connect
    async def _revoked(sender, revoked, **kwargs) -> None:
        # Wait for a commit in flight (its changelog records must not land after the next
        # owner restored), then drop what is staged and stop sending this worker's alerts.
        async with store.lock:
            runtime.revoked(app.consumer_generation_id)

    @table.on_recover
    async def _recovered() -> None:
        # A group applied meanwhile (records can come before this callback) is committed first:
        # rebuilding drops the open group, and its records have been read already.
        await commit_group()
        await committed(runtime.rebuild())
        app.add_future(runtime.keep_adopted_alive())

    app.transport.Producer = IdempotentProducer
    consumed = [settings.orders_topic, settings.cancellations_topic, settings.reroute_topic,
                settings.account_health_topic]
    for topic in consumed:      # exported at 0 from the start: the first read-again is an increase
        runtime.metrics.reads_again.labels(topic)
    records.install()    # fetched records read in one loop per partition, not one generator step each
    app.transport.Consumer = BatchingConsumer.for_topics(
        consumed, mailbox, on_read_again=lambda topic: runtime.metrics.reads_again.labels(topic).inc())

    @app.agent(source)
    async def apply_events(stream):
        """Applies the fetches of the source topics (handed over by BatchingConsumer) in groups
        of up to GROUP_RECORDS records: each group stages each touched bucket once, commits
        (changelog, then RocksDB) and only then acknowledges its events."""
        taking = None
        try:
            while not app.should_stop:
                if taking is None:
                    taking = asyncio.ensure_future(mailbox.get())
                if runtime.group is not None and not taking.done():
                    # The last fetch was full, so the next one is on its way; a group is not
                    # held open longer than GROUP_WAIT_SECONDS for it.
                    await asyncio.wait({taking}, timeout=GROUP_WAIT_SECONDS)
                    if not taking.done():
                        await commit_group()
                        continue
                fetch = await taking
                taking = None
                if failpoints.drops_fetch(app.consumer, fetch):
                    continue
                if failpoints.holds_fetch():
                    epoch = runtime.epoch
                    while runtime.epoch == epoch and not app.should_stop:
                        await asyncio.sleep(0.005)
                generation = app.consumer_generation_id
                runtime.drop_stale_group(generation)
                if runtime.stale_fetch(fetch.generation, generation):
                    # fetched before a rebalance: read again from the committed offsets
                    log.info("a fetch of generation %d given up (the consumer's generation: %d, revoked up to %d): "
                             "%d records read again", fetch.generation, generation, runtime.revoked_generation,
                             len(fetch.records))
                    continue
                if runtime.book is None:
                    # Records of the new assignment can come before faust's recovery callback:
                    # they are applied to state rebuilt now, never skipped (their offsets are read).
                    await committed(runtime.rebuild())
                    app.add_future(runtime.keep_adopted_alive())
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
        """Stage the open group, send its dead letters and reroutes, commit, then acknowledge it."""
        runtime.drop_stale_group(app.consumer_generation_id)
        if runtime.group is None:
            return
        epoch = runtime.epoch
        group = runtime.commit()
        sends, rerouted = [], []
        for message, bad in group.dead:
            sends.append(await dead_letter_topic.send(key=message.key, value=message.value or b"",
                                                      headers=_dead_letter_headers(message, bad)))
        for message, seller_id, owner in group.reroute:
            headers = [
                (KIND_HEADER, HEALTH_ROLE.encode() if message.topic == settings.account_health_topic else b"event"),
                (HEADER_PREFIX + "source.topic", message.topic.encode()),
                (HEADER_PREFIX + "source.partition", str(message.partition).encode()),
                (HEADER_PREFIX + "source.offset", str(message.offset).encode()),
                *runtime.reroute_headers(message.partition),
            ]
            rerouted.append(await reroute_topic.send(key=seller_id.encode(), value=message.value,
                                                     partition=owner, headers=headers))
        sending = runtime.acknowledged(group)     # its reroutes are in flight until `sent`
        try:
            outbox = None
            if runtime.settings.clock == "event":
                runtime.refresh_catch_up(app.consumer)
                outbox = runtime.evaluate()
            await store.commit()
            if sends or rerouted:
                await asyncio.gather(*sends)
                runtime.rerouted(await asyncio.gather(*rerouted))
        finally:
            runtime.sent(sending)
        if epoch != runtime.epoch:
            return     # revoked meanwhile: its writes were dropped, its events are read again
        for applied in group.fetches:
            app.consumer.ack_fetch(applied)
        for partition, clock in group.clock_writes.items():
            key, value = feeds.clock_record(partition, clock)
            await clock_topic.send(key=key, value=value, partition=0)   # delivery not awaited: a later clock supersedes it
        failpoints.reach("before-commit")
        group = sends = rerouted = None
        if outbox is not None:
            runtime.deliver(outbox)
        runtime.last_fetch_applied = time.monotonic()

    def dead_letter(record, bad) -> None:
        runtime.metrics.dead_letters.labels(record.topic, bad.kind).inc()
        app.add_future(dead_letter_topic.send(key=record.key, value=record.value or b"",
                                              headers=_dead_letter_headers(record, bad)))

    @app.task
    async def read_feeds() -> None:
        loop = asyncio.get_running_loop()
        running = [feeds.targets_feed(settings, loop, runtime.target_updated, dead_letter, runtime.targets_read)]
        if settings.clock == "event":
            running.append(feeds.clock_feed(settings, loop, runtime.peer_clock))
        for feed in running:
            feed.start()
        try:
            await app.wait_until_stopped()
        finally:
            for feed in running:
                feed.stop()

    @app.task
    async def alert_loop() -> None:
        _quiet_libraries(settings.log_level)
        if runtime.sender is not None:
            app.add_future(runtime.sender.run())
        trimmed = 0.0
        swept, sweeping = time.monotonic(), None
        while not app.should_stop:
            await asyncio.sleep(ALERT_TICK_SECONDS)
            runtime.refresh_catch_up(app.consumer)
            outbox = runtime.evaluate()
            if outbox or store.staged:
                await committed(outbox)
            if ((runtime.sweep_due or time.monotonic() - swept >= settings.alert_resend_seconds)
                    and (sweeping is None or sweeping.done())):
                swept, sweeping = time.monotonic(), app.add_future(runtime.resolve_strays())
            quiet_since = time.monotonic() - TRIM_QUIET_SECONDS
            burst = trimmed < runtime.last_fetch_applied
            if runtime.last_fetch_applied < quiet_since and (burst or trimmed < quiet_since - TRIM_IDLE_SECONDS):
                runtime.rest(collect=burst)
                trimmed = time.monotonic()

    @app.timer(interval=EXPIRY_SECONDS)
    async def expire() -> None:
        runtime.expire()
        await store.commit()

    def page(path: str, method_name: str):
        async def view(self_view, request, **params):
            reply = await getattr(api, method_name)(_web_request(request, params))
            return self_view.json(reply.body, status=reply.status, headers=dict(reply.headers) or None)
        view.__name__ = f"view_{method_name}"
        app.page(path)(view)

    for path, method_name in web.ROUTES.items():
        page(path, method_name)

    app.web.web_app.middlewares.append(_json_errors)

    @app.page("/metrics")
    async def metrics(self_view, request):
        return self_view.bytes(runtime.metrics.exposition(request.query.getall("name[]", [])),
                               content_type="text/plain; version=0.0.4")

    return app, runtime


def _log_core(settings: Settings) -> None:
    """Say how the core runs (cancelwatch_build_info{core} says it too), and warn when the
    compiled core was asked for and is not (fully) built."""
    core = compiled.running()
    if settings.core == "compiled" and core != "compiled":
        log.warning("the core runs as Python (%s not compiled): `make install` compiles it, with a C "
                    "compiler and Cython; the answers are the same, about 10%% more CPU per event",
                    ", ".join(compiled.stale()) or "some modules")
    else:
        log.info("the core runs %s", "compiled" if core == "compiled" else "as Python (CANCELWATCH_CORE=python)")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cancelwatch worker", description=__doc__.split("\n")[0])
    parser.parse_args(argv)
    limit_arenas()          # before any thread starts (the topic checks' clients start some)
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
    _log_core(settings)
    replication = ensure_topics(settings)
    try:
        target_cli.ensure_topic(settings)
    except ProducerError as error:
        raise SystemExit(f"cancelwatch worker: {error}") from None
    app, _ = build_app(settings, policy, replication)
    # The worker's long-lived state (sellers, buckets, metrics) is hundreds of thousands of
    # objects; with the default thresholds the collector walks them every few batches.
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)
    pin_mmap_threshold()    # a burst's large buffers go back to the system when freed
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True)
    worker.execute_from_commandline()
    return 0
