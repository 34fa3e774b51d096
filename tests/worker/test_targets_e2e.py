"""Seller targets end to end (contract section 10): `cancelwatch target` -> the compacted topic ->
every worker -> status, headroom, alerts in a real Alertmanager.

Each test has topics of its own (events and targets), a worker in event-clock mode, and an
Alertmanager with the project's routing and an on-call receiver of its own."""

from __future__ import annotations

import subprocess
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from kafka import KafkaConsumer, KafkaProducer

from cancelwatch import names
from tests.delivery.test_alerting_e2e import Seller, wait_for
from tests.worker.test_catchup import Receiver
from tests.workers import CANCELWATCH, ROOT, Topics

pytestmark = pytest.mark.stack


def target(worker, *args: str) -> subprocess.CompletedProcess:
    env = {**worker.env}
    return subprocess.run([CANCELWATCH, "target", *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def rig(tmp_path, kafka_bootstrap):
    receiver = Receiver(tmp_path)
    topics = Topics("targets")
    targets_topic = f"{topics.app_id}-targets"
    worker = receiver.worker(topics, tmp_path / "state", CANCELWATCH_TARGETS_TOPIC=targets_topic).start()
    worker.wait_ready(timeout=180)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    yield receiver, topics, worker, producer, targets_topic
    producer.close()
    worker.stop()
    receiver.close()


def send(producer, topics, stream) -> None:
    from cancelwatch.core import events
    for event in stream:
        topic = topics.orders if events.TOPIC_OF_TYPE[type(event)] == names.ORDERS_TOPIC else topics.cancellations
        producer.send(topic, key=event.seller_id.encode(), value=events.encode(event))
    producer.flush()


def view(worker, seller) -> dict | None:
    response = worker.get(f"/sellers/{seller.seller_id}", marketplace=seller.marketplace)
    return response.json() if response.status_code == 200 else None


def test_a_target_breaches_a_seller_the_marketplace_limit_leaves_ok_and_clearing_resolves(rig):
    receiver, topics, worker, producer, _ = rig
    anchor = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=1)
    seller = Seller("SFP")
    placed = seller.orders(200, anchor)
    send(producer, topics, placed + [seller.cancel(placed[0], anchor + timedelta(minutes=5)),
                                     seller.cancel(placed[1], anchor + timedelta(minutes=6))])
    first = wait_for(lambda: (lambda v: v if v and v["windows"][0]["cancelled"] == 2 else None)(view(worker, seller)),
                     "the seller counted at 1.0%")
    assert first["windows"][0]["status"] == "ok" and first["target"] == {"source": "marketplace"}

    done = target(worker, "set", "--seller-id", seller.seller_id, "--marketplace", "US", "--limit", "0.5%",
                  "--warning", "0.4%", "--note", "Seller Fulfilled Prime")
    assert done.returncode == 0, done.stderr
    breached = wait_for(lambda: (lambda v: v if v and v["windows"][0]["status"] == "breach" else None)(
        view(worker, seller)), "the seller breached under its 0.5% target")
    assert breached["windows"][0]["limit"] == 0.005 and breached["windows"][0]["warning_level"] == 0.004
    assert breached["target"] == {"source": "seller", "note": "Seller Fulfilled Prime"}
    alert = wait_for(lambda: next((a for a in receiver.alertmanager.active(seller.seller_id)
                                   if a["labels"]["alertname"] == names.ALERT_BREACHED), None),
                     "SellerCancelRateBreached under the target in Alertmanager")
    assert alert["annotations"]["limit_source"] == "seller" and alert["annotations"]["limit"] == "0.50%"

    done = target(worker, "clear", "--seller-id", seller.seller_id, "--marketplace", "US")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: not [a for a in receiver.alertmanager.active(seller.seller_id)
                          if a["labels"]["alertname"] == names.ALERT_BREACHED],
             "the breach resolved once the target is cleared")
    assert view(worker, seller)["windows"][0]["status"] == "ok"


def test_india_targets_apply_to_both_windows_survive_a_restart_and_bad_ones_are_dead_lettered(
        rig, kafka_bootstrap):
    receiver, topics, worker, producer, targets_topic = rig
    anchor = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=1)
    seller = Seller("INDIA", marketplace="IN")
    placed = seller.orders(100, anchor)
    send(producer, topics, placed + [seller.cancel(placed[0], anchor + timedelta(minutes=5))])
    wait_for(lambda: view(worker, seller), "the Indian seller counted")
    done = target(worker, "set", "--seller-id", seller.seller_id, "--marketplace", "IN", "--limit", "1%",
                  "--warning", "0.8%")
    assert done.returncode == 0, done.stderr
    limits = lambda v: [(w["days"], w["limit"], w["status"]) for w in v["windows"]]  # noqa: E731
    expected = [(7, 0.01, "breach"), (30, 0.01, "breach")]
    wait_for(lambda: limits(view(worker, seller)) == expected, "both Indian windows under the target")

    bad_key = f"{seller.seller_id}/IN".encode()
    producer.send(targets_topic, key=bad_key, value=b'{"schema_version": 1, "seller_id": "%s", "marketplace": '
                  b'"IN", "limit": 0.00555, "warning_level": 0.004}' % seller.seller_id.encode())
    producer.flush()
    consumer = KafkaConsumer(topics.dead_letters, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=30_000, group_id=f"dlq-{uuid.uuid4().hex[:6]}")
    try:
        letter = next(record for record in consumer if record.key == bad_key)
    finally:
        consumer.close()
    reason = dict(letter.headers)["cancelwatch.error.reason"].decode()
    assert "basis points" in reason, reason
    assert limits(view(worker, seller)) == expected      # the bad message changed nothing

    worker.stop()
    restarted = receiver.worker(topics, worker.data_dir, port=worker.port,
                                CANCELWATCH_TARGETS_TOPIC=targets_topic).start()
    try:
        restarted.wait_ready(timeout=180)
        wait_for(lambda: (lambda v: v and limits(v) == expected)(view(restarted, seller)),
                 "the target in force again after a restart")
    finally:
        restarted.stop()
