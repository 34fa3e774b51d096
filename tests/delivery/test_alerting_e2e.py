"""The alert path end to end: events on Kafka -> `cancelwatch worker` -> Alertmanager -> on-call.

Each rig is real: the shared Kafka broker with topics of the test's own, a
`cancelwatch worker` in event-clock mode, an Alertmanager of the test's own
(alerts/alertmanager.yml with its routing, grouping and inhibition, the
webhook URL pointed at the rig's receiver) and a `cancelwatch oncall`
receiver of the test's own. The shared Alertmanager and receiver are never
touched, so a test can stop and restart its Alertmanager.

Events are hand-made with timestamps relative to an anchor a day or more in
the past, so the event clock can be moved forward without any event running
ahead of the wall clock. Every module-scoped test takes its own anchor
(`Rig.next_anchor`), its own sellers and filters by them.
"""

from __future__ import annotations

import itertools
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
import yaml
from kafka import KafkaProducer

from cancelwatch import names

from cancelwatch.core import events
from tests.delivery.test_alertmanager import LocalAlertmanager
from tests.workers import CANCELWATCH, ROOT, Topics, WorkerProcess, free_port

pytestmark = pytest.mark.stack

ALERTMANAGER_CONFIG = ROOT / "alerts" / "alertmanager.yml"
PROJECT_WEBHOOK = "127.0.0.1:5001"
RESEND_SECONDS = "2"
WAIT_SECONDS = 60.0
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def _warning_group_wait() -> float:
    """The warning route's group_wait in seconds, read from alerts/alertmanager.yml."""
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    [sellers] = [route for route in config["route"]["routes"]
                 if route.get("matchers") == ['seller_id=~".+"']]
    [warning] = [route for route in sellers["routes"] if route["matchers"] == ['severity="warning"']]
    value = warning["group_wait"]
    return float(value[:-2]) / 1000 if value.endswith("ms") else float(value[:-1])


def wait_for(condition, what: str, seconds: float = WAIT_SECONDS):
    """Poll `condition` until it returns something truthy; fail saying what did not happen."""
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(0.1)
    pytest.fail(f"{what}: not reached within {seconds:.0f}s (last: {last!r})")


# --- the rig: receiver, Alertmanager, worker -------------------------------------------


class Oncall:
    """`cancelwatch oncall` on a free port with a log file of its own."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output = open(directory / "oncall.out", "ab")
        self.process = subprocess.Popen(
            [CANCELWATCH, "oncall", "--port", str(self.port), "--log", str(directory / "oncall.jsonl")],
            cwd=ROOT, stdout=self.output, stderr=subprocess.STDOUT)
        wait_for(self._ready, f"cancelwatch oncall on {self.url}", 30)

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"cancelwatch oncall exited with {self.process.returncode}")
        try:
            return requests.get(self.url + names.ONCALL_NOTIFICATIONS_PATH, timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    def notifications(self, **filters: str) -> list[dict]:
        response = requests.get(self.url + names.ONCALL_NOTIFICATIONS_PATH, params=filters, timeout=5)
        response.raise_for_status()
        return response.json()

    def received(self, seller: str, status: str = "firing") -> list[tuple[datetime, dict]]:
        """(received_at, alert) of every alert of `seller` with `status`, in receipt order."""
        found = []
        for notification in self.notifications(seller_id=seller, status=status):
            at = datetime.fromisoformat(notification["received_at"])
            found.extend((at, alert) for alert in notification["alerts"])
        return sorted(found, key=lambda pair: pair[0])

    def first(self, seller: str, alertnames, status: str = "firing") -> tuple[datetime, dict] | None:
        return next(((at, alert) for at, alert in self.received(seller, status)
                     if alert["labels"][names.LABEL_ALERTNAME] in alertnames), None)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.output.close()


class Rig:
    """Worker + Alertmanager (project routing) + on-call receiver, all of the test's own."""

    def __init__(self, directory: Path, prefix: str) -> None:
        self.oncall = Oncall(directory)
        config = ALERTMANAGER_CONFIG.read_text()
        assert PROJECT_WEBHOOK in config, f"{ALERTMANAGER_CONFIG} no longer posts to {PROJECT_WEBHOOK}"
        self.alertmanager = LocalAlertmanager(
            directory, config.replace(PROJECT_WEBHOOK, f"127.0.0.1:{self.oncall.port}"))
        self.alertmanager.start()
        self.topics = Topics(prefix)
        self.worker = WorkerProcess(self.topics, directory / "state", clock="event",
                                    alertmanager_url=self.alertmanager.url,
                                    extra_env={"CANCELWATCH_ALERT_RESEND_SECONDS": RESEND_SECONDS})
        self.worker.start()
        self.worker.wait_ready()
        self.producer: KafkaProducer | None = None
        # Anchors start two days back and move forward six hours per test.
        start = datetime.now(timezone.utc).replace(minute=30, second=0, microsecond=0) - 2 * DAY
        self._anchors = (start + index * 6 * HOUR for index in itertools.count())

    def next_anchor(self) -> datetime:
        return next(self._anchors)

    def publish(self, bootstrap: str, stream: list[events.Event]) -> None:
        if self.producer is None:
            self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        for event in stream:
            topic = (self.topics.orders if events.TOPIC_OF_TYPE[type(event)] == names.ORDERS_TOPIC
                     else self.topics.cancellations)
            self.producer.send(topic, key=event.seller_id.encode(), value=events.encode(event))
        self.producer.flush()

    def window(self, seller: "Seller", days: int | None = None) -> dict | None:
        try:
            response = self.worker.get(f"/sellers/{seller.seller_id}", marketplace=seller.marketplace)
        except requests.ConnectionError:
            if self.worker.process.poll() is not None:
                pytest.fail(f"the worker exited with {self.worker.process.returncode}; "
                            f"log {self.worker.log_path}:\n{self.worker.tail()}")
            return None
        if response.status_code != 200:
            return None
        windows = response.json()["windows"]
        return windows[0] if days is None else next(w for w in windows if w["days"] == days)

    def wait_counted(self, seller: "Seller", orders: int, cancelled: int, days: int | None = None) -> dict:
        """Wait until the worker's window of `seller` holds exactly these counts."""
        return wait_for(
            lambda: (lambda w: w if w and (w["orders"], w["cancelled"]) == (orders, cancelled) else None)(
                self.window(seller, days)),
            f"worker counting {orders} orders and {cancelled} cancelled for {seller.seller_id}"
            f"{'' if days is None else f' over {days} days'} (last: {self.window(seller, days)})")

    def active(self, seller: "Seller") -> set[tuple[str, str]]:
        """(alertname, window_days) of the seller's alerts active in the rig's Alertmanager."""
        return {(alert["labels"][names.LABEL_ALERTNAME], alert["labels"][names.LABEL_WINDOW_DAYS])
                for alert in self.alertmanager.active(seller.seller_id)}

    def wait_active(self, seller: "Seller", expected: set[tuple[str, str]]) -> None:
        wait_for(lambda: self.active(seller) == expected,
                 f"Alertmanager holding exactly {sorted(expected)} for {seller.seller_id} "
                 f"(has {sorted(self.active(seller))})")

    def close(self) -> None:
        if self.producer is not None:
            self.producer.close()
        self.worker.stop()
        self.alertmanager.stop()
        self.oncall.stop()


class Seller:
    """Builds one seller's events: MFN orders and their cancellations."""

    def __init__(self, name: str, marketplace: str = "US") -> None:
        self.seller_id = f"{name}-{uuid.uuid4().hex[:8]}"
        self.marketplace = marketplace
        self._numbers = itertools.count(1)

    def _common(self, order_id: str, purchased: datetime, occurred: datetime) -> dict:
        return dict(schema_version=1, event_id=uuid.uuid4().hex, order_id=order_id,
                    seller_id=self.seller_id, marketplace=self.marketplace,
                    fulfillment_channel="MFN", purchase_date=purchased, occurred_at=occurred)

    def orders(self, count: int, purchased: datetime, sku: str | None = None) -> list[events.OrderPlaced]:
        """`count` orders placed a second apart from `purchased`."""
        placed = []
        for _ in range(count):
            order_id = f"{self.seller_id}-{next(self._numbers)}"
            moment = purchased + timedelta(seconds=len(placed))
            items = [events.Item(sku, 1)] if sku else None
            placed.append(events.OrderPlaced(order_status="Unshipped", items=items,
                                             **self._common(order_id, moment, moment)))
        return placed

    def cancel(self, order: events.OrderPlaced, occurred: datetime,
               reason: str = "NoInventory") -> events.OrderCancelled:
        """A whole-order seller-fault cancellation of `order`."""
        return events.OrderCancelled(initiator="seller", reason=reason, buyer_requested=False,
                                     order_status_at_cancel="Unshipped",
                                     **self._common(order.order_id, order.purchase_date, occurred))


def alertnames(received: list[tuple[datetime, dict]]) -> list[str]:
    return [alert["labels"][names.LABEL_ALERTNAME] for _, alert in received]


@pytest.fixture(scope="module")
def rig(tmp_path_factory, kafka_bootstrap):
    rig = Rig(tmp_path_factory.mktemp("alerting-e2e"), "e2e")
    yield rig
    rig.close()


# --- (a) warned before the breach ------------------------------------------------------


def test_a_climbing_seller_is_warned_at_the_webhook_before_the_breach(rig, kafka_bootstrap):
    anchor = rig.next_anchor()
    seller = Seller("CLIMB")
    placed = seller.orders(100, anchor)
    rig.publish(kafka_bootstrap, placed)
    rig.wait_counted(seller, 100, 0)
    # 100 orders, US limit 2.5%: one cancel leaves headroom 1, two reach the 2% warning
    # level, three breach. Each step waits until Alertmanager holds the step's alerts,
    # then a moment longer than the warning route's group_wait, as any real climb does.
    steps = [
        {(names.ALERT_HEADROOM_LOW, "7")},
        {(names.ALERT_HEADROOM_LOW, "7"), (names.ALERT_WARNING, "7")},
        {(names.ALERT_BREACHED, "7")},
    ]
    for number, expected in enumerate(steps, start=1):
        rig.publish(kafka_bootstrap, [seller.cancel(placed[number], anchor + number * 10 * timedelta(minutes=1))])
        rig.wait_counted(seller, 100, number)
        rig.wait_active(seller, expected)
        if number < len(steps):
            time.sleep(_warning_group_wait() + 1.0)

    breach_at, breach = wait_for(lambda: rig.oncall.first(seller.seller_id, [names.ALERT_BREACHED]),
                                 f"the breach of {seller.seller_id} at the webhook")
    warned_at, warned = rig.oncall.first(seller.seller_id, names.WARNING_FAMILY) or (None, None)
    assert warned is not None, (f"no warning-family alert reached the webhook before the breach; "
                                f"received {alertnames(rig.oncall.received(seller.seller_id))}")
    assert warned_at < breach_at
    assert alertnames(rig.oncall.received(seller.seller_id))[0] in names.WARNING_FAMILY
    assert breach["labels"] == {
        names.LABEL_ALERTNAME: names.ALERT_BREACHED, names.LABEL_SELLER: seller.seller_id,
        names.LABEL_MARKETPLACE: "US", names.LABEL_SEVERITY: "critical", names.LABEL_WINDOW_DAYS: "7"}
    assert breach["annotations"]["rate"] == "3.00%"
    assert breach["annotations"]["headroom"] == "0"
    assert breach["annotations"]["dominant_reason"] == "NoInventory"
    assert breach["annotations"]["action"] == names.GROUP_ACTIONS["inventory"]
    [notification] = [n for n in rig.oncall.notifications(seller_id=seller.seller_id, status="firing")
                      if n["alerts"][0]["labels"][names.LABEL_ALERTNAME] == names.ALERT_BREACHED]
    assert notification["receiver"] == "oncall-critical"


# --- (b) forecast before the breach ----------------------------------------------------


def test_orders_about_to_age_out_raise_the_forecast_before_the_breach(rig, kafka_bootstrap):
    anchor = rig.next_anchor()
    seller = Seller("AGEING")
    # 200 clean orders 6.9 days old, 100 recent orders of which 3 are cancelled for
    # NoInventory: 1% now, 3% once the old day leaves the 7-day window.
    old = seller.orders(200, anchor - timedelta(days=6.9))
    recent = seller.orders(100, anchor - 2 * HOUR)
    cancels = [seller.cancel(order, anchor - HOUR + index * timedelta(minutes=1))
               for index, order in enumerate(recent[:3])]
    rig.publish(kafka_bootstrap, old + recent + cancels)
    view = rig.wait_counted(seller, 300, 3)
    assert view["status"] == "ok" and view["headroom"] == 4
    rig.wait_active(seller, {(names.ALERT_FORECAST_BREACH, "7")})
    forecast_at, forecast = wait_for(
        lambda: rig.oncall.first(seller.seller_id, [names.ALERT_FORECAST_BREACH]),
        f"the forecast of {seller.seller_id} at the webhook")
    assert forecast["labels"] == {
        names.LABEL_ALERTNAME: names.ALERT_FORECAST_BREACH, names.LABEL_SELLER: seller.seller_id,
        names.LABEL_MARKETPLACE: "US", names.LABEL_SEVERITY: "warning", names.LABEL_WINDOW_DAYS: "7"}
    annotations = forecast["annotations"]
    assert set(names.ANNOTATION_KEYS) <= set(annotations)
    assert seller.seller_id in annotations["summary"]
    assert annotations["description"]
    assert annotations["rate"] == "1.00%"
    assert annotations["headroom"] == "4"
    assert annotations["dominant_reason"] == "NoInventory"
    assert annotations["action"] == names.GROUP_ACTIONS[names.REASON_GROUP_OF["NoInventory"]]

    # Move the event clock four hours on with another seller's order: the old day ages out.
    bystander = Seller("CLOCK")
    rig.publish(kafka_bootstrap, bystander.orders(1, anchor + 4 * HOUR))
    rig.wait_counted(seller, 100, 3)
    rig.wait_active(seller, {(names.ALERT_BREACHED, "7")})
    breach_at, _ = wait_for(lambda: rig.oncall.first(seller.seller_id, [names.ALERT_BREACHED]),
                            f"the breach of {seller.seller_id} at the webhook")
    assert forecast_at < breach_at


# --- (c) resolution --------------------------------------------------------------------


def test_alerts_resolve_when_the_rate_falls_back(rig, kafka_bootstrap):
    anchor = rig.next_anchor()
    seller = Seller("RECOVER")
    placed = seller.orders(100, anchor - HOUR)
    rig.publish(kafka_bootstrap, placed + [seller.cancel(order, anchor) for order in placed[:3]])
    rig.wait_counted(seller, 100, 3)
    rig.wait_active(seller, {(names.ALERT_BREACHED, "7")})
    wait_for(lambda: rig.oncall.first(seller.seller_id, [names.ALERT_BREACHED]),
             f"the breach of {seller.seller_id} at the webhook")

    # 200 more clean orders: 3 of 300 is 1% with headroom 4, so nothing fires.
    rig.publish(kafka_bootstrap, seller.orders(200, anchor + timedelta(minutes=10)))
    rig.wait_counted(seller, 300, 3)
    rig.wait_active(seller, set())
    _, resolved = wait_for(
        lambda: rig.oncall.first(seller.seller_id, [names.ALERT_BREACHED], status="resolved"),
        f"the resolution of {seller.seller_id}'s breach at the webhook (group_interval applies)")
    ends_at = datetime.fromisoformat(resolved["endsAt"].replace("Z", "+00:00"))
    assert ends_at <= datetime.now(timezone.utc)
    assert resolved["labels"][names.LABEL_WINDOW_DAYS] == "7"
    everything = requests.get(rig.alertmanager.url + "/api/v2/alerts", timeout=5,
                              params={"filter": f'{names.LABEL_SELLER}="{seller.seller_id}"'}).json()
    assert [a for a in everything if a["status"]["state"] == "active"] == []


# --- (e) IN: both windows ---------------------------------------------------------------


def test_in_marketplace_alerts_each_window_with_its_own_window_days(rig, kafka_bootstrap):
    anchor = rig.next_anchor()
    # Both windows breached: 2 of 100 recent orders is 2%, IN's limit over 7 and 30 days.
    both = Seller("IN-BOTH", "IN")
    placed = both.orders(100, anchor - HOUR)
    # Only the 30-day window: 7 of 100 orders 20 days ago cancelled, 300 recent clean ones:
    # 7 of 400 is 1.75%, past the 1.6% warning level with headroom 0; 0 of 300 over 7 days.
    month = Seller("IN-MONTH", "IN")
    old = month.orders(100, anchor - 20 * DAY)
    stream = (old + [month.cancel(order, anchor - 20 * DAY + HOUR) for order in old[:7]]
              + month.orders(300, anchor - HOUR)
              + placed + [both.cancel(order, anchor) for order in placed[:2]])
    rig.publish(kafka_bootstrap, stream)
    rig.wait_counted(both, 100, 2, days=30)
    rig.wait_counted(month, 400, 7, days=30)
    rig.wait_counted(month, 300, 0, days=7)
    rig.wait_active(both, {(names.ALERT_BREACHED, "7"), (names.ALERT_BREACHED, "30")})
    rig.wait_active(month, {(names.ALERT_WARNING, "30"), (names.ALERT_HEADROOM_LOW, "30")})
    for alert in rig.alertmanager.active(both.seller_id) + rig.alertmanager.active(month.seller_id):
        assert alert["labels"][names.LABEL_MARKETPLACE] == "IN"
        assert f"over {alert['labels'][names.LABEL_WINDOW_DAYS]} days" in alert["annotations"]["summary"]


# --- (f) the listing rule ---------------------------------------------------------------


def test_last_two_orders_of_a_sku_seller_cancelled_raise_the_listing_alert(rig, kafka_bootstrap):
    anchor = rig.next_anchor()
    seller = Seller("LISTING")
    filler = seller.orders(200, anchor - 3 * HOUR, sku="FILLER")
    first, second, third = seller.orders(3, anchor - 2 * HOUR, sku="SKU-X")
    kept, last = seller.orders(2, anchor - HOUR, sku="SKU-Y")
    stream = filler + [first, second, third, kept, last] + [
        seller.cancel(second, anchor), seller.cancel(third, anchor), seller.cancel(kept, anchor)]
    rig.publish(kafka_bootstrap, stream)
    rig.wait_counted(seller, 205, 3)
    wait_for(lambda: (names.ALERT_LISTING, "30") in rig.active(seller),
             f"the listing alert of {seller.seller_id} in Alertmanager")
    listing = [a for a in rig.alertmanager.active(seller.seller_id)
               if a["labels"][names.LABEL_ALERTNAME] == names.ALERT_LISTING]
    assert [a["labels"] for a in listing] == [{
        names.LABEL_ALERTNAME: names.ALERT_LISTING, names.LABEL_SELLER: seller.seller_id,
        names.LABEL_MARKETPLACE: "US", names.LABEL_SEVERITY: "warning",
        names.LABEL_WINDOW_DAYS: "30", names.LABEL_SKU: "SKU-X"}]
    annotations = listing[0]["annotations"]
    assert second.order_id in annotations["description"] and third.order_id in annotations["description"]
    assert annotations["action"] == names.GROUP_ACTIONS["inventory"]
    wait_for(lambda: rig.oncall.first(seller.seller_id, [names.ALERT_LISTING]),
             f"the listing alert of {seller.seller_id} at the webhook")


# --- (d) Alertmanager restarted mid-scenario ------------------------------------------


def test_every_alert_is_delivered_across_an_alertmanager_restart(tmp_path, kafka_bootstrap):
    rig = Rig(tmp_path, "e2e-restart")
    try:
        anchor = rig.next_anchor()
        before = Seller("BEFORE")
        placed = before.orders(100, anchor - HOUR)
        rig.publish(kafka_bootstrap, placed + [before.cancel(order, anchor) for order in placed[:3]])
        rig.wait_active(before, {(names.ALERT_BREACHED, "7")})
        wait_for(lambda: rig.oncall.first(before.seller_id, [names.ALERT_BREACHED]),
                 f"the breach of {before.seller_id} at the webhook")

        rig.alertmanager.stop()
        during_breach, during_warning = Seller("DOWN-BREACH"), Seller("DOWN-WARN")
        breach_orders = during_breach.orders(100, anchor)
        warning_orders = during_warning.orders(100, anchor)
        rig.publish(kafka_bootstrap, breach_orders + warning_orders
                    + [during_breach.cancel(o, anchor + HOUR) for o in breach_orders[:4]]
                    + [during_warning.cancel(o, anchor + HOUR) for o in warning_orders[:2]])
        rig.wait_counted(during_breach, 100, 4)
        rig.wait_counted(during_warning, 100, 2)
        wait_for(lambda: rig.worker.metric("cancelwatch_alert_deliveries_total", outcome="failed") > 0,
                 "the worker failing to deliver while Alertmanager is down")
        rig.alertmanager.start()

        fired = {
            before.seller_id: {names.ALERT_BREACHED},
            during_breach.seller_id: {names.ALERT_BREACHED},
            during_warning.seller_id: {names.ALERT_WARNING, names.ALERT_HEADROOM_LOW},
        }
        for seller_id, expected in fired.items():
            wait_for(lambda: expected <= set(alertnames(rig.oncall.received(seller_id))),
                     f"{sorted(expected)} of {seller_id} at the webhook after the restart "
                     f"(has {alertnames(rig.oncall.received(seller_id))})")
        rig.wait_active(before, {(names.ALERT_BREACHED, "7")})
    finally:
        rig.close()
