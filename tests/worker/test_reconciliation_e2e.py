"""Reconciliation with Amazon's account-health report end to end (contract section 11):
reports and events on Kafka -> the worker -> GET /sellers/{id}/reconciliation and the drift
and account alerts in a real Alertmanager; the report survives a restart."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from kafka import KafkaProducer

from cancelwatch import names
from tests.delivery.test_alerting_e2e import Seller, wait_for
from tests.worker.test_catchup import Receiver
from tests.worker.test_targets_e2e import send
from tests.workers import Topics

pytestmark = pytest.mark.stack

US = "ATVPDKIKX0DER"


def report(seller_id: str, fetched: datetime, start: datetime, end: datetime, orders: int, cancelled: int,
           status: str = "NORMAL") -> bytes:
    stamp = lambda moment: moment.strftime("%Y-%m-%dT%H:%MZ")  # noqa: E731 - Amazon's minute form
    return json.dumps({
        "schema_version": 1, "seller_id": seller_id, "fetched_at": fetched.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "report": {
            "accountStatuses": [{"marketplaceId": US, "status": status}],
            "performanceMetrics": [{
                "marketplaceId": US,
                "preFulfillmentCancellationRate": {
                    "reportingDateRange": {"reportingDateFrom": stamp(start), "reportingDateTo": stamp(end)},
                    "orderCount": orders, "cancellationCount": cancelled, "status": "GOOD",
                    "rate": round(cancelled / orders, 6), "targetValue": 0.025, "targetCondition": "LESS_THAN"},
            }],
        },
    }).encode()


def test_the_comparison_the_drift_and_account_alerts_and_a_restart(tmp_path, kafka_bootstrap):
    receiver = Receiver(tmp_path)
    topics = Topics("recon")
    health_topic = f"{topics.app_id}-account-health"
    env = {"CANCELWATCH_ACCOUNT_HEALTH_TOPIC": health_topic}
    worker = receiver.worker(topics, tmp_path / "state", **env).start()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        worker.wait_ready(timeout=180)
        day = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
        start, end = day - timedelta(days=3), day - timedelta(minutes=1)       # 72 whole hours
        seller = Seller("RECON")
        placed = seller.orders(100, start + timedelta(hours=5))
        send(producer, topics, placed + [seller.cancel(placed[0], start + timedelta(hours=6)),
                                         seller.cancel(placed[1], start + timedelta(hours=7))])
        fetched = day + timedelta(minutes=1)
        wait_for(lambda: worker.get(f"/sellers/{seller.seller_id}/reconciliation",
                                    marketplace="US").status_code == 404, "404 before any report")
        producer.send(health_topic, key=seller.seller_id.encode(),
                      value=report(seller.seller_id, fetched - timedelta(hours=1), start, end, 100, 2))
        producer.flush()
        path = f"/sellers/{seller.seller_id}/reconciliation"

        def answer(**expected):
            response = worker.get(path, marketplace="US")
            body = response.json() if response.status_code == 200 else {}
            return body if all(body.get(k) == v for k, v in expected.items()) else None

        agreed = wait_for(lambda: answer(drifting=False, cancelwatch={"orders": 100, "cancelled": 2, "rate": 0.02}),
                          "the comparison agreeing with Amazon")
        assert agreed["amazon"] == {"orders": 100, "cancelled": 2, "rate": 0.02, "status": "GOOD"}
        assert agreed["drift"] == {"orders": 0, "cancelled": 0} and agreed["complete"] is True
        assert agreed["account_status"] == "NORMAL"

        # Amazon counts 5 seller-fault cancels where cancelwatch has 2: an order source is missing.
        producer.send(health_topic, key=seller.seller_id.encode(),
                      value=report(seller.seller_id, fetched, start, end, 100, 5, status="AT_RISK"))
        producer.flush()
        drifting = wait_for(lambda: answer(drifting=True), "the comparison drifting")
        assert drifting["drift"] == {"orders": 0, "cancelled": -3}
        active = wait_for(lambda: {a["labels"]["alertname"]: a for a in receiver.alertmanager.active(seller.seller_id)
                                   if a["labels"]["alertname"] in names.RECONCILIATION_ALERTS}
                          if len({a["labels"]["alertname"] for a in receiver.alertmanager.active(seller.seller_id)}
                                 & set(names.RECONCILIATION_ALERTS)) == 2 else None,
                          "SellerCancelRateDrift and SellerAccountAtRisk in Alertmanager")
        drift = active[names.ALERT_DRIFT]
        assert drift["labels"][names.LABEL_WINDOW_DAYS] == "3"
        assert drift["annotations"]["amazon_cancelled"] == "5" and drift["annotations"]["cancelwatch_cancelled"] == "2"
        assert names.LABEL_WINDOW_DAYS not in active[names.ALERT_ACCOUNT_AT_RISK]["labels"]

        # An older report changes nothing.
        producer.send(health_topic, key=seller.seller_id.encode(),
                      value=report(seller.seller_id, fetched - timedelta(hours=2), start, end, 100, 2))
        producer.flush()

        worker.stop()
        worker = receiver.worker(topics, tmp_path / "state", port=worker.port, **env).start()
        worker.wait_ready(timeout=180)
        again = wait_for(lambda: answer(drifting=True), "the latest report kept across a restart")
        assert again["amazon"]["cancelled"] == 5

        # A newer, agreeing report clears both alerts.
        producer.send(health_topic, key=seller.seller_id.encode(),
                      value=report(seller.seller_id, fetched + timedelta(hours=1), start, end, 100, 2))
        producer.flush()
        wait_for(lambda: not {a["labels"]["alertname"] for a in receiver.alertmanager.active(seller.seller_id)}
                 & set(names.RECONCILIATION_ALERTS), "both alerts resolved by a newer report")
    finally:
        producer.close()
        worker.stop()
        receiver.close()
