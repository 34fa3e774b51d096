"""Which alerts fire, with the contract's labels and annotations (pure, no services)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from cancelwatch import names

from cancelwatch.core import alerting, events, policy as policy_module
from cancelwatch.core.state import Book

POLICY = policy_module.load("streams/cancelwatch/core/policy.yaml")
NOW = datetime(2026, 11, 20, 13, 5, tzinfo=timezone.utc)


def order(seller, index, marketplace="US", age=timedelta(hours=2), items=None):
    moment = NOW - age
    return events.OrderPlaced(schema_version=1, event_id=f"p-{seller}-{index}", order_id=f"O{index}",
                              seller_id=seller, marketplace=marketplace, fulfillment_channel="MFN",
                              purchase_date=moment, occurred_at=moment, order_status="Unshipped", items=items)


def cancel(placed, reason="NoInventory", items=None):
    return events.OrderCancelled(
        schema_version=1, event_id=f"c-{placed.event_id}", order_id=placed.order_id, seller_id=placed.seller_id,
        marketplace=placed.marketplace, fulfillment_channel="MFN", purchase_date=placed.purchase_date,
        occurred_at=placed.occurred_at + timedelta(minutes=10), initiator="seller", reason=reason,
        buyer_requested=False, order_status_at_cancel="Unshipped", items=items)


def alerts_for(stream, seller="S1", marketplace="US"):
    book = Book(POLICY, {})
    book.apply([(events.TOPIC_OF_TYPE[type(e)], e) for e in stream], NOW.timestamp())
    wanted = alerting.desired(book.seller(seller, marketplace), POLICY, NOW.timestamp(), "http://g/d/x")
    return {(dict(k)["alertname"], dict(k)["window_days"]): w for k, w in wanted.items()}


def test_climbing_seller_gets_headroom_warning_then_breach():
    placed = [order("S1", i) for i in range(100)]
    one = alerts_for(placed + [cancel(placed[0])])
    assert set(one) == {(names.ALERT_HEADROOM_LOW, "7")}         # 1%: two more cancels breach
    two = alerts_for(placed + [cancel(p) for p in placed[:2]])   # 2%: warning level, headroom 0
    assert set(two) == {(names.ALERT_WARNING, "7"), (names.ALERT_HEADROOM_LOW, "7")}
    three = alerts_for(placed + [cancel(p) for p in placed[:3]])
    assert set(three) == {(names.ALERT_BREACHED, "7")}
    alert = three[(names.ALERT_BREACHED, "7")]
    assert alert.labels == {"alertname": names.ALERT_BREACHED, "seller_id": "S1", "marketplace": "US",
                            "severity": "critical", "window_days": "7"}
    assert alert.annotations["rate"] == "3.00%"
    assert alert.annotations["headroom"] == "0"
    assert alert.annotations["dominant_reason"] == "NoInventory"
    assert alert.annotations["action"] == names.GROUP_ACTIONS["inventory"]
    assert {"summary", "description", "dashboard"} <= set(alert.annotations)


def test_headroom_low_without_warning_level():
    placed = [order("S1", i) for i in range(79)]
    fired = alerts_for(placed + [cancel(placed[0])])      # 1/79 = 1.27%, headroom 0
    assert set(fired) == {(names.ALERT_HEADROOM_LOW, "7")}


def test_india_alerts_per_window():
    placed = [order("S2", i, "IN") for i in range(50)]
    fired = alerts_for(placed + [cancel(placed[0], "ShippingAddressUndeliverable")], "S2", "IN")
    assert (names.ALERT_BREACHED, "7") in fired and (names.ALERT_BREACHED, "30") in fired
    assert fired[(names.ALERT_BREACHED, "30")].annotations["action"] == names.GROUP_ACTIONS["order_error"]


def test_listing_rule_two_consecutive_seller_cancels_of_one_sku():
    item = [events.Item(sku="SKU-1", quantity=1)]
    first = order("S3", 1, "DE", age=timedelta(hours=5), items=item)
    second = order("S3", 2, "DE", age=timedelta(hours=4), items=item)
    third = order("S3", 3, "DE", age=timedelta(hours=3), items=item)
    filler = [order("S3", 10 + i, "DE") for i in range(400)]
    fired = alerts_for(filler + [first, second, third, cancel(second), cancel(third)], "S3", "DE")
    listing = [w for (name, _), w in fired.items() if name == names.ALERT_LISTING]
    assert len(listing) == 1 and listing[0].labels["sku"] == "SKU-1"
    assert listing[0].labels["window_days"] == "30"
    calm = alerts_for(filler + [first, second, third, cancel(first), cancel(third)], "S3", "DE")
    assert not [name for name, _ in calm if name == names.ALERT_LISTING]
