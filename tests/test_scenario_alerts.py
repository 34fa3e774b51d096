"""Each simulator scenario raises the alert it is named for, through the real worker.

A scenario's events (streams/cancelwatch/tools/scenarios.py) are published to topics of the
test's own and consumed by `cancelwatch worker` in event-clock mode, which
delivers to an Alertmanager of the test's own. The test reads the
alerts back from Alertmanager's API once the worker has caught up: its clock
has reached the last event and its alert queue is empty, so every alert it
decided on has been accepted.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from kafka import KafkaProducer

from cancelwatch import names

from cancelwatch.core import events
from cancelwatch.tools.scenarios import Simulation
from tests.delivery.test_alertmanager import LocalAlertmanager
from tests.delivery.test_alerting_e2e import wait_for
from tests.workers import Topics, WorkerProcess

pytestmark = pytest.mark.stack

# The incident ramps up over the last hours of the span; its events go out in
# How long a worker's metrics must show it settled (clock, caught up, nothing queued).
SETTLED_SECONDS = 0.5
# slices of this much event time, each one settled before the next.
SLICE = timedelta(minutes=15)


class Run:
    """One scenario through one worker and one Alertmanager."""

    def __init__(self, directory, bootstrap: str, scenario: str, seed: int, sellers: int,
                 history: timedelta) -> None:
        end = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=1)
        self.simulation = Simulation(scenario, seed, start=end - history, end=end, sellers=sellers)
        self.stream = list(self.simulation.events())
        self.focus = self.simulation.focus.seller_id if self.simulation.focus else None
        self.alertmanager = LocalAlertmanager(directory)
        self.alertmanager.start()
        self.topics = Topics(f"scenario-{scenario}")
        self.worker = WorkerProcess(self.topics, directory / "state", clock="event",
                                    alertmanager_url=self.alertmanager.url,
                                    extra_env={"CANCELWATCH_ALERT_RESEND_SECONDS": "2"})
        self.worker.start()
        self.worker.wait_ready()
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)

    def publish(self, stream: list[events.Event]) -> None:
        """Send `stream` keyed by seller and wait until the worker has settled on it."""
        for event in stream:
            topic = (self.topics.orders if events.TOPIC_OF_TYPE[type(event)] == names.ORDERS_TOPIC
                     else self.topics.cancellations)
            self.producer.send(topic, key=event.seller_id.encode(), value=events.encode(event))
        self.producer.flush()
        until = max(event.occurred_at for event in stream).timestamp()
        self._settled_at = None
        wait_for(lambda: self._caught_up(until),
                 f"the worker's clock reaching {until}, caught up, with its alert queue empty", 180)

    def _caught_up(self, until: float) -> bool:
        if self.worker.process.poll() is not None:
            pytest.fail(f"the worker exited with {self.worker.process.returncode}; "
                        f"log {self.worker.log_path}:\n{self.worker.tail()}")
        # A slice is a backlog (more than CANCELWATCH_CATCHUP_LAG deep): its alerts are decided
        # once the worker has confirmed it caught up, in the evaluation that follows at once
        # (and is committed before it is queued): settled when all this holds for a while.
        settled = (self.worker.metric("cancelwatch_clock_seconds") >= until - 0.001
                   and self.worker.metric("cancelwatch_partition_catching_up") == 0
                   and self.worker.metric("cancelwatch_alert_queue_alerts") == 0)
        if not settled:
            self._settled_at = None
            return False
        if self._settled_at is None:
            self._settled_at = time.monotonic()
        return time.monotonic() - self._settled_at >= SETTLED_SECONDS

    def alerts(self, seller: str | None = None) -> list[dict]:
        return self.alertmanager.active(seller)

    def alertnames(self, seller: str | None = None) -> set[str]:
        return {alert["labels"][names.LABEL_ALERTNAME] for alert in self.alerts(seller)}

    def close(self) -> None:
        self.producer.close()
        self.worker.stop()
        self.alertmanager.stop()


@pytest.fixture
def scenario_run(tmp_path, kafka_bootstrap):
    runs = []

    def start(scenario: str, seed: int, sellers: int = 3, history: timedelta = timedelta(days=2)) -> Run:
        runs.append(Run(tmp_path, kafka_bootstrap, scenario, seed, sellers, history))
        return runs[-1]

    yield start
    for run in runs:
        run.close()


def breach_of(run: Run) -> dict:
    breaches = [alert for alert in run.alerts(run.focus)
                if alert["labels"][names.LABEL_ALERTNAME] == names.ALERT_BREACHED]
    assert len(breaches) == 1, (f"focus seller {run.focus}: expected one {names.ALERT_BREACHED}, "
                                f"Alertmanager has {sorted(run.alertnames(run.focus))}")
    return breaches[0]


def test_inventory_outage_warns_then_breaches_with_no_inventory(scenario_run):
    run = scenario_run("inventory-outage", seed=21)
    pivot = run.simulation.pivot
    before = [event for event in run.stream if event.occurred_at < pivot]
    run.publish(before)
    seen = [run.alertnames(run.focus)]
    ramp = [event for event in run.stream if event.occurred_at >= pivot]
    while ramp:
        limit = ramp[0].occurred_at + SLICE
        piece = [event for event in ramp if event.occurred_at < limit]
        ramp = ramp[len(piece):]
        run.publish(piece)
        seen.append(run.alertnames(run.focus))
    first_breach = next(index for index, present in enumerate(seen) if names.ALERT_BREACHED in present)
    assert any(set(names.WARNING_FAMILY) & present for present in seen[:first_breach]), (
        f"no warning-family alert before the breach; Alertmanager held, slice by slice: {seen}")
    breach = breach_of(run)
    assert breach["annotations"]["dominant_reason"] == "NoInventory"
    assert breach["annotations"]["action"] == names.GROUP_ACTIONS["inventory"]


def test_address_errors_breach_with_an_order_error_reason(scenario_run):
    run = scenario_run("address-errors", seed=22)
    run.publish(run.stream)
    breach = breach_of(run)
    assert breach["annotations"]["dominant_reason"] in names.REASON_GROUPS["order_error"]
    assert breach["annotations"]["action"] == names.GROUP_ACTIONS["order_error"]


def test_payment_fraud_breaches_with_risk_assessment(scenario_run):
    run = scenario_run("payment-fraud", seed=23)
    run.publish(run.stream)
    breach = breach_of(run)
    assert breach["annotations"]["dominant_reason"] == "RiskAssessmentInformationNotValid"
    assert breach["annotations"]["action"] == names.GROUP_ACTIONS["payment"]


def test_buyer_requests_raise_no_rate_alert_for_the_focus_seller(scenario_run):
    run = scenario_run("buyer-requests", seed=24)
    run.publish(run.stream)
    view = run.worker.get(f"/sellers/{run.focus}", marketplace="US").json()
    assert view["excluded"]["buyer_requested"] >= 0.08 * view["windows"][0]["orders"], view
    assert not run.alertnames(run.focus) & set(names.SELLER_ALERTS), run.alerts(run.focus)


def test_ageing_raises_the_forecast_for_the_focus_seller(scenario_run):
    run = scenario_run("ageing", seed=25, sellers=2, history=timedelta(days=8))
    run.publish(run.stream)
    forecast = [alert for alert in run.alerts(run.focus)
                if alert["labels"][names.LABEL_ALERTNAME] == names.ALERT_FORECAST_BREACH]
    assert len(forecast) == 1, (f"focus seller {run.focus}: Alertmanager has "
                                f"{sorted(run.alertnames(run.focus))}")
    assert names.ALERT_BREACHED not in run.alertnames(run.focus)
    assert forecast[0]["labels"][names.LABEL_WINDOW_DAYS] == "7"


def test_steady_traffic_breaches_no_seller(scenario_run):
    run = scenario_run("steady", seed=26, sellers=4, history=timedelta(days=8))
    run.publish(run.stream)
    for seller, marketplace in sorted({(event.seller_id, event.marketplace) for event in run.stream}):
        view = run.worker.get(f"/sellers/{seller}", marketplace=marketplace).json()
        assert [w["status"] for w in view["windows"] if w["status"] == names.STATUS_BREACH] == [], view
    assert run.worker.metric("cancelwatch_alerts_active", alertname=names.ALERT_BREACHED) == 0
    assert names.ALERT_BREACHED not in run.alertnames()
