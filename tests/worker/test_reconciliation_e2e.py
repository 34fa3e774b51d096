"""Reconciliation with Amazon's account-health report end to end (contract section 11):
reports and events on Kafka -> the worker -> GET /sellers/{id}/reconciliation and the drift
and account alerts in a real Alertmanager.

One worker (event clock) with an Alertmanager and an on-call receiver of its own serves the
module's cases, each with sellers of its own: drift and its convergence as late events land
in the report's range, the account status over newer and older reports, the range's edges
(168 buckets, India's own range, a range beyond retention), bad reports in the dead-letter
topic and a second worker taking partitions over. A restart is checked with a worker of its
own."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from kafka import KafkaConsumer, KafkaProducer

from cancelwatch import names
from cancelwatch.core.amazon_orders import MARKETPLACE_IDS
from cancelwatch.worker.ownership import owner_partition
from tests.delivery.test_alerting_e2e import Seller, wait_for
from tests.worker.test_catchup import Receiver
from tests.worker.test_targets_e2e import send
from tests.workers import CANCELWATCH, ROOT, Topics

pytestmark = pytest.mark.stack

ID_OF = {marketplace: marketplace_id for marketplace_id, marketplace in MARKETPLACE_IDS.items()}
IRELAND = "A28R8C7NBKEWEA"       # an Amazon marketplace outside the contract's list
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def today() -> datetime:
    """00:00 UTC today: the report ranges are whole UTC days before it."""
    return datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


def moments_ago(minutes: int = 1) -> datetime:
    """A recent occurred_at: events that arrive now, late or not."""
    return datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=minutes)


def cancellation_rate(start: datetime, end: datetime, orders: int, cancelled: int, *,
                      seconds: bool = False) -> dict:
    """Amazon's preFulfillmentCancellationRate; dates in its minute form unless `seconds`."""
    stamp = (lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%SZ")) if seconds \
        else (lambda moment: moment.strftime("%Y-%m-%dT%H:%MZ"))
    return {"reportingDateRange": {"reportingDateFrom": stamp(start), "reportingDateTo": stamp(end)},
            "orderCount": orders, "cancellationCount": cancelled, "status": "GOOD",
            "rate": round(cancelled / orders, 6) if orders else 0, "targetValue": 0.025,
            "targetCondition": "LESS_THAN"}


def envelope(seller_id: str, fetched: datetime, metrics: dict[str, dict], statuses: dict[str, str]) -> bytes:
    """An account-health message: `metrics` and `statuses` by marketplaceId."""
    return json.dumps({
        "schema_version": 1, "seller_id": seller_id, "fetched_at": fetched.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "report": {
            "accountStatuses": [{"marketplaceId": key, "status": status} for key, status in statuses.items()],
            "performanceMetrics": [{"marketplaceId": key, "preFulfillmentCancellationRate": metric}
                                   for key, metric in metrics.items()],
        },
    }).encode()


def report(seller_id: str, fetched: datetime, start: datetime, end: datetime, orders: int, cancelled: int,
           status: str = "NORMAL", marketplace: str = "US") -> bytes:
    """A report of one marketplace."""
    key = ID_OF[marketplace]
    return envelope(seller_id, fetched, {key: cancellation_rate(start, end, orders, cancelled)}, {key: status})


def same_seller(seller: Seller, marketplace: str, seller_id: str | None = None) -> Seller:
    """The seller (or `seller_id`) in another marketplace."""
    other = Seller("ANY", marketplace)
    other.seller_id = seller_id or seller.seller_id
    return other


class Rig:
    """A worker, its Alertmanager and on-call receiver, and a producer, on topics of their own."""

    def __init__(self, directory, bootstrap: str) -> None:
        self.directory = directory
        self.receiver = Receiver(directory)
        self.topics = Topics("recon")
        self.worker = self.receiver.worker(self.topics, directory / "state").start()
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        self.bootstrap = bootstrap

    def publish(self, stream) -> None:
        send(self.producer, self.topics, stream)

    def publish_report(self, seller_id: str, value: bytes) -> None:
        self.producer.send(self.topics.account_health, key=seller_id.encode(), value=value)
        self.producer.flush()

    def reconciliation(self, seller: Seller, worker=None) -> tuple[int, dict]:
        response = (worker or self.worker).get(f"/sellers/{seller.seller_id}/reconciliation",
                                               marketplace=seller.marketplace)
        return response.status_code, response.json()

    def answer(self, seller: Seller, worker=None, **expected) -> dict | None:
        """The reconciliation answer once its fields have the expected values, else None."""
        status, body = self.reconciliation(seller, worker)
        if status != 200:
            return None
        return body if all(body.get(key) == value for key, value in expected.items()) else None

    def wait_answer(self, seller: Seller, what: str, worker=None, **expected) -> dict:
        return wait_for(lambda: self.answer(seller, worker, **expected), what)

    def alerts(self, seller: Seller) -> dict[str, dict]:
        """The seller's reconciliation alerts active in Alertmanager, by alertname."""
        return {alert["labels"][names.LABEL_ALERTNAME]: alert
                for alert in self.receiver.alertmanager.active(seller.seller_id)
                if alert["labels"][names.LABEL_ALERTNAME] in names.RECONCILIATION_ALERTS
                and alert["labels"][names.LABEL_MARKETPLACE] == seller.marketplace}

    def wait_alerts(self, seller: Seller, expected: set[str], what: str) -> dict[str, dict]:
        """Until the seller's active reconciliation alerts are exactly `expected`; returns them."""
        active: dict[str, dict] = {}

        def matched() -> bool:
            active.clear()
            active.update(self.alerts(seller))
            return set(active) == expected
        wait_for(matched, what)
        return active

    def wait_counted(self, seller: Seller, orders: int, days: int = 7) -> None:
        """Until the worker's window of `days` holds this many orders of the seller."""
        def counted():
            response = self.worker.get(f"/sellers/{seller.seller_id}", marketplace=seller.marketplace)
            if response.status_code != 200:
                return None
            return any(w["days"] == days and w["orders"] == orders for w in response.json()["windows"])
        wait_for(counted, f"{orders} orders of {seller.seller_id} counted over {days} days")

    def close(self) -> None:
        self.producer.close()
        self.worker.stop()
        self.receiver.close()


@pytest.fixture(scope="module")
def rig(tmp_path_factory, kafka_bootstrap):
    rig = Rig(tmp_path_factory.mktemp("reconciliation-e2e"), kafka_bootstrap)
    try:
        rig.worker.wait_ready(timeout=180)
        yield rig
    finally:
        rig.close()


# --- drift, and its convergence as late events arrive --------------------------------------


def test_missing_events_drift_and_the_drift_resolves_when_they_arrive_late(rig):
    day = today()
    start, end = day - 3 * DAY, day - timedelta(minutes=1)        # 3 whole UTC days
    seller = Seller("DRIFT")
    published = seller.orders(60, day - 2 * DAY + 10 * HOUR)
    missing = seller.orders(6, day - 2 * DAY + 12 * HOUR)          # an order source that did not publish
    rig.publish(published + [seller.cancel(published[0], day - 2 * DAY + 11 * HOUR),
                             seller.cancel(published[1], day - 2 * DAY + 11 * HOUR)])
    rig.wait_counted(seller, 60)
    rig.publish_report(seller.seller_id, report(seller.seller_id, moments_ago(), start, end, 66, 4))

    drifting = rig.wait_answer(seller, "the comparison drifting", drifting=True)
    assert drifting["range"] == {"from": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                 "to": end.strftime("%Y-%m-%dT%H:%M:%SZ")}
    assert drifting["amazon"] == {"orders": 66, "cancelled": 4, "rate": 0.060606, "status": "GOOD"}
    assert drifting["cancelwatch"] == {"orders": 60, "cancelled": 2, "rate": 0.03333}
    assert drifting["drift"] == {"orders": -6, "cancelled": -2}
    assert drifting["complete"] is True

    alert = rig.wait_alerts(seller, {names.ALERT_DRIFT}, "SellerCancelRateDrift in Alertmanager")[names.ALERT_DRIFT]
    assert alert["labels"] == {
        names.LABEL_ALERTNAME: names.ALERT_DRIFT, names.LABEL_SELLER: seller.seller_id,
        names.LABEL_MARKETPLACE: "US", names.LABEL_SEVERITY: "warning", names.LABEL_WINDOW_DAYS: "3"}
    annotations = alert["annotations"]
    assert {key: annotations[key] for key in names.DRIFT_ANNOTATION_KEYS} == {
        "amazon_rate": "6.06%", "cancelwatch_rate": "3.33%", "amazon_cancelled": "4",
        "cancelwatch_cancelled": "2", "amazon_orders": "66", "cancelwatch_orders": "60"}
    assert "does not publish" in annotations["action"], annotations["action"]
    assert (annotations[names.ANNOTATION_LIMIT], annotations[names.ANNOTATION_LIMIT_SOURCE]) == ("2.50%", "marketplace")
    shown = subprocess.run([CANCELWATCH, "reconcile", seller.seller_id, "-m", "US", "--api", rig.worker.url],
                           env=rig.worker.env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "DRIFTING (SellerCancelRateDrift): cancelwatch counts fewer than Amazon" in shown.stdout

    # The missing orders and cancels arrive late: one cancel of an order already counted, one of
    # an order that arrives after its cancel. The comparison converges and the alert resolves.
    late = moments_ago()
    rig.publish([seller.cancel(published[2], late), seller.cancel(missing[0], late)] + missing)
    converged = rig.wait_answer(seller, "the comparison converging on late events", drifting=False,
                                drift={"orders": 0, "cancelled": 0})
    assert converged["cancelwatch"] == {"orders": 66, "cancelled": 4, "rate": 0.06061}
    rig.wait_alerts(seller, set(), "SellerCancelRateDrift resolved by the late events")


# --- the account status: newer and older reports -------------------------------------------


def test_at_risk_fires_a_newer_normal_report_resolves_it_and_an_older_one_changes_nothing(rig):
    day = today()
    start, end = day - 7 * DAY, day - timedelta(minutes=1)
    seller = Seller("ACCOUNT")
    rig.publish(seller.orders(20, day - DAY))
    rig.wait_counted(seller, 20)
    fetched = moments_ago(30)
    rig.publish_report(seller.seller_id, report(seller.seller_id, fetched, start, end, 20, 0, "AT_RISK"))
    alert = rig.wait_alerts(seller, {names.ALERT_ACCOUNT_AT_RISK},
                            "SellerAccountAtRisk in Alertmanager")[names.ALERT_ACCOUNT_AT_RISK]
    assert alert["labels"] == {
        names.LABEL_ALERTNAME: names.ALERT_ACCOUNT_AT_RISK, names.LABEL_SELLER: seller.seller_id,
        names.LABEL_MARKETPLACE: "US", names.LABEL_SEVERITY: "critical"}
    assert alert["annotations"][names.ANNOTATION_ACCOUNT_STATUS] == "AT_RISK"
    assert rig.answer(seller, account_status="AT_RISK", drifting=False)

    newer = fetched + timedelta(minutes=10)
    rig.publish_report(seller.seller_id, report(seller.seller_id, newer, start, end, 20, 0, "NORMAL"))
    rig.wait_answer(seller, "the newer report in force", account_status="NORMAL")
    rig.wait_alerts(seller, set(), "SellerAccountAtRisk resolved by a newer NORMAL report")

    # An older report says AT_RISK again. A report of another marketplace sent after it, on the
    # same key and so the same partition, shows when the worker has read it.
    rig.publish_report(seller.seller_id, report(seller.seller_id, fetched - HOUR, start, end, 20, 0, "AT_RISK"))
    rig.publish_report(seller.seller_id, report(seller.seller_id, newer, start, end, 5, 0, "NORMAL", "DE"))
    rig.wait_answer(same_seller(seller, "DE"), "the report read after the older one")
    kept = rig.answer(seller)
    assert kept["account_status"] == "NORMAL"
    assert kept["fetched_at"] == newer.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert not rig.alerts(seller)


# --- the range's edges -------------------------------------------------------------------


def test_a_seven_day_utc_range_counts_exactly_its_168_buckets(rig):
    day = today()
    start, end = day - 7 * DAY, day - timedelta(minutes=1)        # 00:00 to 23:59: 168 hours
    seller = Seller("EDGES")
    just_before = seller.orders(1, start - timedelta(seconds=1))   # 23:59:59 the day before
    first = seller.orders(1, start)                                 # 00:00:00 of the first day
    middle = seller.orders(30, start + 3 * DAY)
    last = seller.orders(1, end + timedelta(seconds=59))            # 23:59:59 of the last day
    just_after = seller.orders(1, day)                              # 00:00:00 the day after
    edges = just_before + first + last + just_after
    cancelled = moments_ago()
    rig.publish(edges + middle + [seller.cancel(order, cancelled) for order in edges + middle[:1]])
    rig.publish_report(seller.seller_id, report(seller.seller_id, moments_ago(), start, end, 32, 3))
    answer = rig.wait_answer(seller, "the comparison over the range's 168 buckets",
                             cancelwatch={"orders": 32, "cancelled": 3, "rate": 0.09375})
    assert answer["drift"] == {"orders": 0, "cancelled": 0}
    assert answer["complete"] is True and answer["drifting"] is False


def test_india_compares_on_the_reports_own_range_not_the_policys_windows(rig):
    day = today()
    start, end = day - 12 * DAY, day - 2 * DAY - timedelta(seconds=1)   # 10 days, with seconds
    seller = Seller("INDIA", marketplace="IN")
    before = seller.orders(5, day - 20 * DAY)          # in the 30-day window, before the range
    inside = seller.orders(25, start) + seller.orders(15, day - 5 * DAY)
    after = seller.orders(7, day - DAY)               # in both windows, after the range
    cancelled = moments_ago()
    rig.publish(before + inside + after + [seller.cancel(before[0], cancelled), seller.cancel(inside[0], cancelled),
                                           seller.cancel(inside[30], cancelled), seller.cancel(after[0], cancelled)])
    rig.wait_counted(seller, 52, days=30)
    skipped = rig.worker.metric("cancelwatch_events_total", topic=rig.topics.account_health,
                                outcome="skipped_marketplace")
    # Published as a seller would: Amazon's document, through `cancelwatch publish-report`.
    india, ireland = ID_OF["IN"], IRELAND
    document = json.loads(envelope(
        seller.seller_id, moments_ago(),
        {ireland: cancellation_rate(start, end, 900, 9, seconds=True),
         india: cancellation_rate(start, end, 40, 2, seconds=True)},
        {ireland: "NORMAL", india: "NORMAL"}))["report"]
    path = rig.directory / f"{seller.seller_id}.json"
    path.write_text(json.dumps(document))
    published = subprocess.run([CANCELWATCH, "publish-report", "--seller-id", seller.seller_id, str(path)],
                               env=rig.worker.env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert published.returncode == 0, published.stderr
    assert "IN (2 of 40 orders" in published.stderr
    assert "1 entries of marketplaces outside the contract skipped" in published.stderr
    answer = rig.wait_answer(seller, "the Indian comparison", drifting=False)
    assert answer["range"] == {"from": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                               "to": end.strftime("%Y-%m-%dT%H:%M:%SZ")}
    assert answer["cancelwatch"] == {"orders": 40, "cancelled": 2, "rate": 0.05}
    assert answer["drift"] == {"orders": 0, "cancelled": 0}
    windows = {w["days"]: (w["orders"], w["cancelled"])
               for w in rig.worker.get(f"/sellers/{seller.seller_id}", marketplace="IN").json()["windows"]}
    assert windows == {7: (22, 2), 30: (52, 4)}
    wait_for(lambda: rig.worker.metric("cancelwatch_events_total", topic=rig.topics.account_health,
                                       outcome="skipped_marketplace") == skipped + 1,
             "the Irish entry skipped and counted")
    assert rig.reconciliation(same_seller(seller, "US"))[0] == 404     # the report is India's alone


def test_a_range_reaching_beyond_retention_is_incomplete_and_never_drifts(rig):
    day = today()
    start, end = day - 40 * DAY, day - 33 * DAY - timedelta(minutes=1)
    seller = Seller("OLD")
    rig.publish(seller.orders(1, moments_ago()))       # moves the event clock to now
    rig.wait_counted(seller, 1)
    rig.publish_report(seller.seller_id, report(seller.seller_id, moments_ago(), start, end, 500, 20, "AT_RISK"))
    answer = rig.wait_answer(seller, "the comparison beyond retention", complete=False)
    assert answer["cancelwatch"] == {"orders": 0, "cancelled": 0, "rate": None}
    assert answer["drift"] == {"orders": -500, "cancelled": -20} and answer["drifting"] is False
    # The account alert comes from the same evaluation as a drift alert would: none is there.
    rig.wait_alerts(seller, {names.ALERT_ACCOUNT_AT_RISK}, "SellerAccountAtRisk alone")


# --- bad reports -------------------------------------------------------------------------


def test_bad_reports_go_to_the_dead_letter_topic_with_a_reason(rig):
    day = today()
    start, end = day - 7 * DAY, day - timedelta(minutes=1)
    seller_id = f"BAD-{uuid.uuid4().hex[:8]}"
    us = ID_OF["US"]
    good = json.loads(report(seller_id, moments_ago(), start, end, 10, 1))
    without_seller = {key: value for key, value in good.items() if key != "seller_id"}
    too_many = {**cancellation_rate(start, end, 10, 11), "rate": 0.5}
    future = datetime.now(timezone.utc) + HOUR
    bad = {
        b"not json " + seller_id.encode(): ("invalid_json", "not valid JSON"),
        json.dumps(without_seller).encode(): ("invalid_event", "seller_id: missing"),
        envelope(seller_id, moments_ago(), {IRELAND: cancellation_rate(start, end, 10, 1)}, {}):
            ("invalid_event", "no entry of a contract marketplace (1 skipped"),
        envelope(seller_id, moments_ago(), {us: too_many}, {us: "NORMAL"}):
            ("invalid_event", "cancellationCount: 11 is more than orderCount 10"),
        envelope(seller_id, future, {us: cancellation_rate(start, end, 10, 1)}, {us: "NORMAL"}):
            ("future", "more than 5 minutes ahead"),
    }
    dead_before = rig.worker.metric("cancelwatch_dead_letters_total", topic=rig.topics.account_health)
    for value in bad:
        rig.publish_report(seller_id, value)
    consumer = KafkaConsumer(rig.topics.dead_letters, bootstrap_servers=rig.bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=60_000,
                             group_id=f"dlq-{uuid.uuid4().hex[:6]}")
    letters = {}
    try:
        for record in consumer:
            if record.value in bad:
                letters[record.value] = {key: value.decode() for key, value in record.headers}
            if len(letters) == len(bad):
                break
    finally:
        consumer.close()
    assert set(letters) == set(bad)
    for value, (kind, reason) in bad.items():
        headers = letters[value]
        assert headers["cancelwatch.error.kind"] == kind, headers
        assert reason in headers["cancelwatch.error.reason"], headers
        assert headers["cancelwatch.source.topic"] == rig.topics.account_health
        assert int(headers["cancelwatch.source.offset"]) >= 0
    wait_for(lambda: rig.worker.metric("cancelwatch_dead_letters_total", topic=rig.topics.account_health)
             == dead_before + len(bad), "the dead letters counted")
    assert rig.reconciliation(same_seller(Seller("BAD"), "US", seller_id))[0] == 404   # none was kept


# --- a second worker takes partitions over -----------------------------------------------


def sellers_on_every_partition(name: str) -> list[Seller]:
    """One seller per partition, so a worker joining takes some of them over whatever it is given."""
    found: dict[int, Seller] = {}
    while len(found) < names.DEFAULT_PARTITIONS:
        seller = Seller(name)
        found.setdefault(owner_partition(seller.seller_id, names.DEFAULT_PARTITIONS), seller)
    return [found[partition] for partition in sorted(found)]


def test_a_joining_worker_takes_over_the_reports_comparisons_and_alerts(rig):
    day = today()
    start, end = day - 7 * DAY, day - timedelta(minutes=1)
    sellers = sellers_on_every_partition("TAKEOVER")
    for seller in sellers:
        rig.publish(seller.orders(30, day - 2 * DAY))
    for seller in sellers:
        rig.wait_counted(seller, 30)
        rig.publish_report(seller.seller_id, report(seller.seller_id, moments_ago(), start, end, 30, 3))
    for seller in sellers:
        rig.wait_alerts(seller, {names.ALERT_DRIFT}, f"SellerCancelRateDrift for {seller.seller_id}")

    second = rig.receiver.worker(rig.topics, rig.directory / "second").start()
    try:
        second.wait_ready(timeout=180)
        wait_for(lambda: second.metric("cancelwatch_partition_catching_up") == 0
                 and "cancelwatch_partition_catching_up{" in second.get("/metrics").text,
                 "the second worker owning partitions, caught up", seconds=180)
        taken = time.monotonic()
        for seller in sellers:
            for worker in (rig.worker, second):
                answer = rig.wait_answer(seller, f"{seller.seller_id} answered after the takeover", worker,
                                         drifting=True)
                assert answer["drift"] == {"orders": 0, "cancelled": -3}
        # A firing alert is valid for 4 re-send periods (40 s) after its last send; the old owner
        # stopped sending when its partitions moved. Still active later than that, each was sent
        # again by the worker owning its seller now.
        time.sleep(max(0.0, taken + 45 - time.monotonic()))
        for seller in sellers:
            assert set(rig.alerts(seller)) == {names.ALERT_DRIFT}, seller.seller_id

        # Newer reports that agree: every owner, old or new, resolves its sellers' alerts.
        for seller in sellers:
            rig.publish_report(seller.seller_id, report(seller.seller_id, moments_ago(0), start, end, 30, 0))
        for seller in sellers:
            rig.wait_alerts(seller, set(), f"SellerCancelRateDrift resolved for {seller.seller_id}")
            assert rig.answer(seller, second, drifting=False)
    finally:
        second.stop()


# --- a restart ---------------------------------------------------------------------------


def test_the_latest_report_and_its_alerts_survive_a_restart(tmp_path, kafka_bootstrap):
    receiver = Receiver(tmp_path)
    topics = Topics("recon")
    worker = receiver.worker(topics, tmp_path / "state").start()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        worker.wait_ready(timeout=180)
        day = today()
        start, end = day - timedelta(days=3), day - timedelta(minutes=1)       # 72 whole hours
        seller = Seller("RECON")
        placed = seller.orders(100, start + timedelta(hours=5))
        send(producer, topics, placed + [seller.cancel(placed[0], start + timedelta(hours=6)),
                                         seller.cancel(placed[1], start + timedelta(hours=7))])
        fetched = moments_ago(120)
        wait_for(lambda: worker.get(f"/sellers/{seller.seller_id}/reconciliation",
                                    marketplace="US").status_code == 404, "404 before any report")
        producer.send(topics.account_health, key=seller.seller_id.encode(),
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
        producer.send(topics.account_health, key=seller.seller_id.encode(),
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
        producer.send(topics.account_health, key=seller.seller_id.encode(),
                      value=report(seller.seller_id, fetched - timedelta(hours=2), start, end, 100, 2))
        producer.flush()

        worker.stop()
        worker = receiver.worker(topics, tmp_path / "state", port=worker.port).start()
        worker.wait_ready(timeout=180)
        again = wait_for(lambda: answer(drifting=True), "the latest report kept across a restart")
        assert again["amazon"]["cancelled"] == 5

        # A newer, agreeing report clears both alerts.
        producer.send(topics.account_health, key=seller.seller_id.encode(),
                      value=report(seller.seller_id, fetched + timedelta(hours=1), start, end, 100, 2))
        producer.flush()
        wait_for(lambda: not {a["labels"]["alertname"] for a in receiver.alertmanager.active(seller.seller_id)}
                 & set(names.RECONCILIATION_ALERTS), "both alerts resolved by a newer report")
    finally:
        producer.close()
        worker.stop()
        receiver.close()
