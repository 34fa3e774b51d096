"""The producer client (streams/cancelwatch/tools/producer.py) against the real broker."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Iterator

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from cancelwatch import settings

from cancelwatch.core import events
from cancelwatch.tools.producer import EventProducer, ProducerError, ensure_topics

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def placed(event_id: str, seller_id: str = "A1SELLER", when: datetime = NOW) -> events.OrderPlaced:
    return events.OrderPlaced(schema_version=1, event_id=event_id, order_id=f"113-{event_id[-7:]}",
                              seller_id=seller_id, marketplace="US", fulfillment_channel="MFN",
                              purchase_date=when, occurred_at=when, order_status="Unshipped",
                              items=[events.Item("SKU-1", 1)])


def cancelled(event_id: str, seller_id: str = "A1SELLER") -> events.OrderCancelled:
    return events.OrderCancelled(schema_version=1, event_id=event_id, order_id=f"113-{event_id[-7:]}",
                                 seller_id=seller_id, marketplace="US", fulfillment_channel="MFN",
                                 purchase_date=NOW, occurred_at=NOW, initiator="seller",
                                 reason="NoInventory", buyer_requested=False,
                                 order_status_at_cancel="Unshipped")


@pytest.fixture
def stack_env(kafka_bootstrap: str, monkeypatch) -> Iterator[dict[str, str]]:
    """Settings with unique source topic names (also put in the environment); the topics are
    deleted afterwards."""
    suffix = uuid.uuid4().hex[:10]
    env = {
        "CANCELWATCH_BROKER": f"kafka://{kafka_bootstrap}",
        "CANCELWATCH_ORDERS_TOPIC": f"test-orders-{suffix}",
        "CANCELWATCH_CANCELLATIONS_TOPIC": f"test-cancellations-{suffix}",
        "CANCELWATCH_PARTITIONS": "3",
    }
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    yield env
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="cancelwatch-tests")
    leftover = [name for name in (env["CANCELWATCH_ORDERS_TOPIC"], env["CANCELWATCH_CANCELLATIONS_TOPIC"])
                if name in admin.list_topics()]
    if leftover:
        admin.delete_topics(leftover)
    admin.close()


def read_all(loaded: settings.Settings, topics: list[str] | None = None) -> list[tuple[str, str, bytes]]:
    """Every message now in the source topics (or `topics`): (topic, key, value), read up to the
    end offsets."""
    consumer = KafkaConsumer(bootstrap_servers=loaded.bootstrap_servers, enable_auto_commit=False,
                             group_id=None, consumer_timeout_ms=10_000)
    partitions = [TopicPartition(topic, partition)
                  for topic in (topics or loaded.source_topics.values())
                  for partition in (consumer.partitions_for_topic(topic) or ())]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    ends = consumer.end_offsets(partitions)
    messages = []
    remaining = {partition for partition in partitions if ends[partition] > 0}
    for record in (consumer if remaining else ()):
        partition = TopicPartition(record.topic, record.partition)
        messages.append((record.topic, record.key.decode() if record.key else None, record.value))
        if record.offset + 1 >= ends[partition]:
            remaining.discard(partition)
        if not remaining:
            break
    consumer.close()
    assert not remaining, f"could not read to the end of {sorted(map(str, remaining))}"
    return messages


@pytest.mark.stack
def test_ensure_topics_creates_missing_topics_with_the_configured_partitions(stack_env):
    loaded = settings.load(stack_env)
    created = ensure_topics(loaded)
    assert sorted(created) == sorted(loaded.source_topics.values())
    assert ensure_topics(loaded) == []
    consumer = KafkaConsumer(bootstrap_servers=loaded.bootstrap_servers)
    for topic in created:
        assert len(consumer.partitions_for_topic(topic)) == 3
    consumer.close()


@pytest.mark.stack
def test_events_go_to_the_topic_of_their_type_keyed_by_seller(stack_env):
    loaded = settings.load(stack_env)
    ensure_topics(loaded)
    with EventProducer(loaded) as producer:
        producer.send(placed("ev-0000001", "A1FIRST"))
        producer.send(placed("ev-0000002", "A2SECOND"))
        producer.send(cancelled("ev-0000001", "A1FIRST"))
        report = producer.flush()
    assert report.failed == []
    assert report.sent == {stack_env["CANCELWATCH_ORDERS_TOPIC"]: 2,
                           stack_env["CANCELWATCH_CANCELLATIONS_TOPIC"]: 1}
    messages = read_all(loaded)
    seen = {(topic, key, events.decode(value).event_id, events.event_type(events.decode(value)))
            for topic, key, value in messages}
    assert seen == {
        (stack_env["CANCELWATCH_ORDERS_TOPIC"], "A1FIRST", "ev-0000001", "order_placed"),
        (stack_env["CANCELWATCH_ORDERS_TOPIC"], "A2SECOND", "ev-0000002", "order_placed"),
        (stack_env["CANCELWATCH_CANCELLATIONS_TOPIC"], "A1FIRST", "ev-0000001", "order_cancelled"),
    }
    assert len(messages) == 3


@pytest.mark.stack
def test_an_invalid_event_is_refused_before_anything_is_sent(stack_env):
    loaded = settings.load(stack_env)
    ensure_topics(loaded)
    future = NOW + timedelta(hours=1)
    with EventProducer(loaded) as producer:
        with pytest.raises(events.BadEvent, match="more than 5 minutes ahead"):
            producer.send(placed("ev-future01", when=future))
        report = producer.flush()
    assert report.sent_total == 0 and report.failed == []
    assert read_all(loaded) == []


@pytest.mark.stack
def test_delivery_failures_are_reported_per_event(stack_env, kafka_bootstrap):
    """The broker refuses messages over a topic's max.message.bytes: each such event is reported."""
    loaded = settings.load(stack_env)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="cancelwatch-tests")
    admin.create_topics([NewTopic(stack_env["CANCELWATCH_ORDERS_TOPIC"], 1, 1,
                                  topic_configs={"max.message.bytes": "200"})])
    admin.close()
    failures = []
    with EventProducer(loaded, on_failure=lambda event_id, reason: failures.append(event_id)) as producer:
        producer.send(placed("ev-toolarge1"))
        report = producer.flush()
    assert [event_id for event_id, _ in report.failed] == ["ev-toolarge1"] == failures
    assert stack_env["CANCELWATCH_ORDERS_TOPIC"] in report.failed[0][1]
    assert report.sent_total == 0


def test_unreachable_broker_says_what_to_do():
    loaded = settings.load({"CANCELWATCH_BROKER": "kafka://127.0.0.1:1"})
    with pytest.raises(ProducerError, match="CANCELWATCH_BROKER"):
        ensure_topics(loaded)
