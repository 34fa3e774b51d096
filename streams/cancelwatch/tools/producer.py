"""The producer client: validated events to the right topic, keyed by seller.

Every event goes through the same msgspec definitions the worker decodes
with (streams/cancelwatch/core/events.py), so what this client sends is what the worker
accepts. `EventProducer` sends one event at a time and collects delivery
failures per event; `ensure_topics` creates the source topics with the
configured partition count when they are missing; `deliver` is what the
commands that publish (publish, simulate, import-orders) share: connect,
send, flush, close, and say what went wrong.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import sys
from datetime import datetime, timezone
from typing import Callable, Iterable

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError, NoBrokersAvailable

from cancelwatch import settings as settings_module, topics

from cancelwatch.core import account_health, events
from cancelwatch.settings import Settings

log = logging.getLogger(__name__)


class ProducerError(RuntimeError):
    """The broker cannot be reached or refuses the producer's requests."""


@dataclasses.dataclass
class DeliveryReport:
    """What happened to the events handed to an EventProducer."""

    sent: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def sent_total(self) -> int:
        return sum(self.sent.values())


def _unreachable(settings: Settings, error: Exception) -> ProducerError:
    if settings.kafka_security.uses_sasl and not isinstance(error, NoBrokersAvailable):
        return ProducerError(
            f"the Kafka broker at {', '.join(settings.bootstrap_servers)} refused the connection "
            f"({error.__class__.__name__}): check CANCELWATCH_KAFKA_USERNAME, "
            "CANCELWATCH_KAFKA_PASSWORD or CANCELWATCH_KAFKA_PASSWORD_FILE, CANCELWATCH_KAFKA_SASL_MECHANISM "
            "and CANCELWATCH_KAFKA_CA_FILE")
    return ProducerError(
        f"cannot reach a Kafka broker at {', '.join(settings.bootstrap_servers)} ({error}); "
        "start the broker (`make stack-up`) or point CANCELWATCH_BROKER at a running one"
    )


class EventProducer:
    """Send contract events to Kafka: validated, keyed by seller_id, acks from all replicas.

    `send` never blocks on the broker; delivery results are collected and
    returned by `flush()`. Use as a context manager, or call `close()`.
    """

    def __init__(self, settings: Settings, clock: Callable[[], datetime] | None = None,
                 on_failure: Callable[[str, str], None] | None = None) -> None:
        self.settings = settings
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.report = DeliveryReport()
        self._on_failure = on_failure
        self._topics = settings.source_topics
        self._handed_over = False
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=settings.bootstrap_servers,
                client_id=f"{settings.app_id}-producer",
                acks="all",
                enable_idempotence=True,
                retries=2**31 - 1,
                max_in_flight_requests_per_connection=1,  # kafka-python: required by idempotence
                delivery_timeout_ms=120_000,
                linger_ms=20,
                batch_size=256 * 1024,
                key_serializer=lambda key: key.encode("utf-8"),
                **settings.kafka_security.kafka_python_options(),
            )
        except KafkaError as error:
            raise _unreachable(settings, error) from None

    def __enter__(self) -> "EventProducer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def validate(self, event: events.Event) -> bytes:
        """Encode an event and check it the way the worker will; raise events.BadEvent if not valid."""
        raw = events.encode(event)
        events.decode(raw, self.clock())
        return raw

    def send(self, event: events.Event) -> None:
        """Validate and send one event; raises events.BadEvent (nothing sent) when it is invalid."""
        self.send_encoded(event, self.validate(event))

    def send_encoded(self, event: events.Event, raw: bytes) -> None:
        """Send an event already checked by `validate` (raw is its encoding)."""
        topic = self._topics[events.TOPIC_OF_TYPE[type(event)]]
        event_id = event.event_id
        self._handed_over = True
        try:
            future = self._producer.send(topic, key=event.seller_id, value=raw)
        except KafkaError as error:
            self._failed(event_id, f"{topic}: {error}")
            return
        future.add_callback(self._delivered, topic)
        future.add_errback(lambda error: self._failed(event_id, f"{topic}: {error}"))

    def send_account_health(self, seller_id: str, value: bytes) -> None:
        """Send one account-health envelope (contract section 11) to the account-health topic,
        keyed by seller; raises account_health.BadReport (nothing sent) when the worker would
        refuse it."""
        account_health.decode_envelope(value, self.clock())
        topic = self.settings.account_health_topic
        self._handed_over = True
        try:
            future = self._producer.send(topic, key=seller_id, value=value)
        except KafkaError as error:
            self._failed(f"account-health report of {seller_id}", f"{topic}: {error}")
            return
        future.add_callback(self._delivered, topic)
        future.add_errback(lambda error: self._failed(f"account-health report of {seller_id}", f"{topic}: {error}"))

    def send_all(self, stream: Iterable[events.Event]) -> DeliveryReport:
        for event in stream:
            self.send(event)
        return self.flush()

    def _delivered(self, topic: str, _metadata) -> None:
        self.report.sent[topic] += 1

    def _failed(self, event_id: str, reason: str) -> None:
        self.report.failed.append((event_id, reason))
        if self._on_failure is not None:
            self._on_failure(event_id, reason)

    def flush(self, timeout: float | None = None) -> DeliveryReport:
        """Wait until every event sent so far is acknowledged or has failed."""
        try:
            self._producer.flush(timeout)
        except KafkaError as error:
            raise ProducerError(f"flush did not complete: {error}") from None
        return self.report

    def close(self, timeout: float = 30) -> None:
        # kafka-python's close waits out its timeout when no message was ever sent
        # (the sender is still starting up); with nothing to deliver, close at once.
        self._producer.close(timeout if self._handed_over else 0)


def send_one(settings: Settings, client: str, topic: str, key: bytes, value: bytes | None,
             what: str = "the message", timeout: float = 30.0) -> str:
    """Send one message (acks=all, idempotent) and wait for the broker's acknowledgement; return
    where it was written as `topic/partition@offset` (raises ProducerError)."""
    try:
        producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers,
                                 client_id=f"{settings.app_id}-{client}", acks="all",
                                 enable_idempotence=True, max_in_flight_requests_per_connection=1,
                                 **settings.kafka_security.kafka_python_options())
    except KafkaError as error:
        raise _unreachable(settings, error) from None
    try:
        metadata = producer.send(topic, key=key, value=value).get(timeout=timeout)
    except KafkaError as error:
        raise ProducerError(f"{what} was not delivered to {topic}: {error}") from None
    finally:
        producer.close(timeout=10)
    return f"{metadata.topic}/{metadata.partition}@{metadata.offset}"


def connect(settings: Settings, account_health: bool = False) -> EventProducer:
    """The source topics created if missing (the account-health topic too, when asked), and a
    producer for them (raises ProducerError)."""
    wanted = list(settings.source_topics.values())
    if account_health:
        wanted.append(settings.account_health_topic)
    ensure_topics(settings, names=wanted)
    return EventProducer(settings)


def deliver(command: str, send: Callable[[EventProducer], None],
            account_health: bool = False) -> DeliveryReport | None:
    """Connect with the environment's settings, let `send` hand events to the producer, wait
    until each is delivered or has failed, and close. An unreachable broker or a flush that
    does not complete is printed as `cancelwatch COMMAND: ...` and gives None."""
    try:
        producer = connect(settings_module.load(), account_health=account_health)
    except ProducerError as error:
        print(f"cancelwatch {command}: {error}", file=sys.stderr)
        return None
    try:
        send(producer)
        return producer.flush()
    except ProducerError as error:
        print(f"cancelwatch {command}: {error}", file=sys.stderr)
        return None
    finally:
        producer.close()


def ensure_topics(settings: Settings, partitions: int | None = None,
                  names: Iterable[str] | None = None) -> list[str]:
    """Create the orders and cancellations topics (or `names`) if missing; return the names created.

    New topics get `partitions` (default settings.partitions) partitions and a
    replication factor of min(3, brokers in the cluster).
    """
    partitions = partitions or settings.partitions
    try:
        admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                                 client_id=f"{settings.app_id}-producer-admin",
                                 **settings.kafka_security.kafka_python_options())
    except KafkaError as error:
        raise _unreachable(settings, error) from None
    try:
        created = topics.create_missing(admin, settings.source_topics.values() if names is None else names,
                                       partitions)
        if created:
            log.info("created topics %s with %d partitions", ", ".join(created), partitions)
        return created
    except KafkaError as error:
        raise ProducerError(f"cannot create topics on {', '.join(settings.bootstrap_servers)}: "
                            f"{error}") from None
    finally:
        admin.close()
