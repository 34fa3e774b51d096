"""Tests of cancelwatch.delivery.alertmanager: the Alert value, and delivery to a real Alertmanager.

The delivery tests start their own Alertmanager (Debian's
/usr/bin/prometheus-alertmanager) on a free port with a temporary storage
directory and a minimal configuration, so they can stop, pause and restart
it without touching the shared one on port 9093.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from cancelwatch import names
from cancelwatch.delivery.alertmanager import Alert, AlertSender
from tests.workers import process_stopped

ALERTMANAGER_BINARY = "/usr/bin/prometheus-alertmanager"
MINIMAL_CONFIG = """\
route:
  receiver: nobody
receivers:
  - name: nobody
"""
# Generous bounds for "eventually": the tests wait for a state, never assert a duration.
WAIT_SECONDS = 30.0


def seller_alert(seller: str, alertname: str = names.ALERT_WARNING, **annotations: str) -> Alert:
    return Alert(
        labels={
            names.LABEL_ALERTNAME: alertname,
            names.LABEL_SELLER: seller,
            names.LABEL_MARKETPLACE: "US",
            names.LABEL_SEVERITY: names.ALERT_SEVERITY[alertname],
            names.LABEL_WINDOW_DAYS: "7",
        },
        annotations={"summary": f"{seller} climbs", "rate": "0.021", **annotations},
        starts_at=datetime.now(timezone.utc) - timedelta(seconds=5),
        generator_url="http://127.0.0.1:6066/sellers/" + seller + "?marketplace=US",
    )


# --- the Alert value and the synchronous side (no Alertmanager needed) ------------


def test_alert_without_timezone_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="no timezone"):
        Alert(labels={"alertname": "X"}, annotations={}, starts_at=datetime(2026, 11, 20, 13, 5))


def test_alert_with_non_string_label_is_refused():
    with pytest.raises(ValueError, match="strings to strings"):
        Alert(labels={"alertname": "X", "window_days": 7}, annotations={},
              starts_at=datetime.now(timezone.utc))


def test_alert_without_alertname_or_with_bad_label_name_is_refused():
    with pytest.raises(ValueError, match="alertname"):
        Alert(labels={"seller_id": "A1"}, annotations={}, starts_at=datetime.now(timezone.utc))
    with pytest.raises(ValueError, match="label names"):
        Alert(labels={"alertname": "X", "seller-id": "A1"}, annotations={},
              starts_at=datetime.now(timezone.utc))


def test_payload_is_alertmanager_v2_json_and_never_ends_before_it_starts():
    starts = datetime(2026, 11, 20, 14, 5, tzinfo=timezone(timedelta(hours=1)))
    alert = Alert(labels={"alertname": "X"}, annotations={"summary": "s"}, starts_at=starts)
    assert alert.payload(starts + timedelta(minutes=4)) == {
        "labels": {"alertname": "X"},
        "annotations": {"summary": "s"},
        "startsAt": "2026-11-20T13:05:00.000Z",
        "endsAt": "2026-11-20T13:09:00.000Z",
    }
    assert alert.payload(starts - timedelta(minutes=1))["endsAt"] == "2026-11-20T13:05:00.000Z"


def test_alert_labels_cannot_be_changed_through_the_caller_dict():
    labels = {"alertname": "X"}
    alert = Alert(labels=labels, annotations={}, starts_at=datetime.now(timezone.utc))
    labels["alertname"] = "Y"
    assert alert.labels["alertname"] == "X"
    with pytest.raises(TypeError):
        alert.labels["alertname"] = "Z"  # type: ignore[index]


def test_fire_unchanged_does_not_queue_again_and_resolve_of_unknown_is_ignored():
    sender = AlertSender(["http://127.0.0.1:9", "http://127.0.0.1:10"])
    alert = seller_alert("A1")
    sender.fire(alert)
    sender.fire(dataclasses.replace(alert))  # equal, not the same object
    assert sender.pending() == 1
    assert sender.firing() == {alert.key: alert}
    sender.resolve({"alertname": "Nothing"})
    assert sender.pending() == 1
    sender.resolve(alert.labels)
    assert sender.firing() == {}
    assert sender.pending() == 1  # the resolution replaced the firing update: latest state only


def test_forget_stops_resending_without_resolving_and_keeps_resolutions_queued():
    sender = AlertSender(["http://127.0.0.1:9"])
    handed_over, cleared = seller_alert("A1"), seller_alert("A2")
    sender.fire(handed_over)
    sender.fire(cleared)
    sender.resolve(cleared.labels)
    assert sender.forget([handed_over.key, cleared.key]) == 1
    assert sender.firing() == {}
    assert sender.pending() == 1                  # only the resolution of A2 is still to go out
    sender.forget([handed_over.key])              # forgetting twice changes nothing
    assert sender.pending() == 1


def test_resolve_of_an_alert_fired_by_another_owner_is_sent_when_the_alert_is_given():
    sender = AlertSender(["http://127.0.0.1:9"])
    alert = seller_alert("A1")
    sender.resolve(alert.labels)
    assert sender.pending() == 0
    sender.resolve(alert.labels, alert)
    assert sender.pending() == 1 and sender.firing() == {}


def test_a_single_url_string_is_refused():
    with pytest.raises(TypeError, match="wrap a single URL"):
        AlertSender("http://127.0.0.1:9093")


# --- a real Alertmanager -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalAlertmanager:
    """An Alertmanager process of the test's own, on a free port (tests/test_alert_rules.py too)."""

    def __init__(self, directory: Path, config: str = MINIMAL_CONFIG) -> None:
        if not Path(ALERTMANAGER_BINARY).exists():
            pytest.fail(f"{ALERTMANAGER_BINARY} is missing: apt-get install -y prometheus-alertmanager")
        self.directory = directory
        self.config = directory / "alertmanager.yml"
        self.config.write_text(config)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.directory / "alertmanager.log", "ab")
        self.process = subprocess.Popen(
            [ALERTMANAGER_BINARY, f"--config.file={self.config}",
             f"--storage.path={self.directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"Alertmanager exited with {self.process.returncode}: "
                            f"{(self.directory / 'alertmanager.log').read_text()[-2000:]}")
            try:
                if requests.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        pytest.fail(f"Alertmanager on {self.url} not ready after {WAIT_SECONDS}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def pause(self) -> None:
        """SIGSTOP, then wait until every thread has stopped: the signal only asks, and on a
        busy machine Alertmanager can still answer a request sent right after kill()."""
        os.kill(self.process.pid, signal.SIGSTOP)
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            if process_stopped(self.process.pid):
                return
            time.sleep(0.01)
        pytest.fail(f"Alertmanager (pid {self.process.pid}) did not stop within {WAIT_SECONDS}s of SIGSTOP")

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def active(self, seller: str | None = None) -> list[dict]:
        """Active alerts (resolved ones are not returned by the API)."""
        params = {"filter": f'{names.LABEL_SELLER}="{seller}"'} if seller else {}
        response = requests.get(self.url + "/api/v2/alerts", params=params, timeout=5)
        response.raise_for_status()
        return [alert for alert in response.json() if alert["status"]["state"] == "active"]


@pytest.fixture
def alertmanager(tmp_path):
    server = LocalAlertmanager(tmp_path)
    server.start()
    yield server
    server.stop()


async def eventually(condition, what: str):
    """Poll `condition` (a blocking call, run in a thread) until it holds; fail saying what."""
    deadline = time.monotonic() + WAIT_SECONDS
    last = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(condition)
        if last:
            return last
        await asyncio.sleep(0.05)
    pytest.fail(f"{what}: not reached within {WAIT_SECONDS}s (last: {last!r})")


class Deliveries:
    """The on_delivery callback: every post's outcome and size."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, int]] = []
        self.counts = {"sent": 0, "failed": 0}

    def __call__(self, outcome: str, count: int) -> None:
        self.posts.append((outcome, count))
        self.counts[outcome] += count


async def with_sender(sender: AlertSender, scenario):
    task = asyncio.create_task(sender.run())
    try:
        return await scenario()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.stack
def test_fired_alert_is_visible_with_labels_and_annotations(alertmanager):
    deliveries = Deliveries()
    sender = AlertSender([alertmanager.url], resend_seconds=60, on_delivery=deliveries)
    alert = seller_alert("A1", action="Replenish stock.")

    async def scenario():
        sender.fire(alert)
        seen = await eventually(lambda: alertmanager.active("A1"), "A1 visible in Alertmanager")
        assert await sender.flush(WAIT_SECONDS)
        return seen

    seen = asyncio.run(with_sender(sender, scenario))
    assert len(seen) == 1
    assert seen[0]["labels"] == dict(alert.labels)
    assert seen[0]["annotations"] == dict(alert.annotations)
    assert seen[0]["generatorURL"] == alert.generator_url
    ends_at = datetime.fromisoformat(seen[0]["endsAt"].replace("Z", "+00:00"))
    assert ends_at > datetime.now(timezone.utc) + timedelta(seconds=60)  # 4 x resend ahead
    assert deliveries.counts == {"sent": 1, "failed": 0}
    assert sender.pending() == 0


@pytest.mark.stack
def test_a_burst_of_fires_goes_out_in_one_post(alertmanager):
    deliveries = Deliveries()
    sender = AlertSender([alertmanager.url], on_delivery=deliveries)

    async def scenario():
        await asyncio.sleep(0)  # run() has started and waits
        for number in range(50):
            sender.fire(seller_alert(f"B{number}"))
        assert await sender.flush(WAIT_SECONDS)

    asyncio.run(with_sender(sender, scenario))
    assert deliveries.posts == [("sent", 50)]
    assert len(alertmanager.active()) == 50


@pytest.mark.stack
def test_resolved_alert_leaves_the_active_alerts(alertmanager):
    sender = AlertSender([alertmanager.url])
    alert = seller_alert("A2")
    other = seller_alert("A3")

    async def scenario():
        sender.fire(alert)
        sender.fire(other)
        await eventually(lambda: len(alertmanager.active()) == 2, "A2 and A3 active")
        sender.resolve(alert.labels)
        await eventually(lambda: not alertmanager.active("A2"), "A2 resolved")
        assert await sender.flush(WAIT_SECONDS)

    asyncio.run(with_sender(sender, scenario))
    assert alertmanager.active("A2") == []
    assert [a["labels"][names.LABEL_SELLER] for a in alertmanager.active()] == ["A3"]
    assert sender.firing() == {other.key: other}


@pytest.mark.stack
def test_still_active_names_the_alerts_alertmanager_holds_valid_beyond_the_margin(alertmanager):
    """What a new owner keeps alive after a takeover: alerts still active, not those resolved,
    about to expire, never sent, or held by an Alertmanager that cannot be reached."""
    sender = AlertSender([alertmanager.url], resend_seconds=60)          # endsAt 240 s ahead
    short = AlertSender([alertmanager.url], resend_seconds=0.5)          # endsAt 2 s ahead
    held, resolved, expiring, unsent = (seller_alert(seller) for seller in ("K1", "K2", "K3", "K4"))

    async def scenario():
        sender.fire(held)
        sender.fire(resolved)
        short.fire(expiring)
        short_task = asyncio.create_task(short.run())
        await eventually(lambda: len(alertmanager.active()) == 3, "K1, K2 and K3 active")
        short_task.cancel()
        sender.resolve(resolved.labels)
        await eventually(lambda: not alertmanager.active("K2"), "K2 resolved")
        keys = {alert.key for alert in (held, resolved, expiring, unsent)}
        unreachable = AlertSender([f"http://127.0.0.1:{free_port()}"], timeout_seconds=1)
        return await sender.still_active(keys, margin_seconds=10), await unreachable.still_active(keys)

    active, from_nowhere = asyncio.run(with_sender(sender, scenario))
    assert active == {held.key}
    assert from_nowhere == set()


@pytest.mark.stack
def test_active_lists_the_alerts_held_of_the_names_asked_with_generator_url_and_ends_at(alertmanager):
    sender = AlertSender([alertmanager.url], resend_seconds=60)          # endsAt 240 s ahead
    warning, breach, other = seller_alert("L1"), seller_alert("L2", names.ALERT_BREACHED), seller_alert("L3")
    pipeline = Alert({names.LABEL_ALERTNAME: "CancelwatchWorkerDown"}, {}, datetime.now(timezone.utc))

    async def scenario():
        for alert in (warning, breach, other, pipeline):
            sender.fire(alert)
        await eventually(lambda: len(alertmanager.active()) == 4, "four alerts active")
        sender.resolve(other.labels)
        await eventually(lambda: not alertmanager.active("L3"), "L3 resolved")
        unreachable = AlertSender([f"http://127.0.0.1:{free_port()}"], timeout_seconds=1)
        return (await sender.active("ignored", alertnames=[names.ALERT_WARNING, names.ALERT_BREACHED]),
                await sender.active("ignored", alertnames=[names.ALERT_BREACHED]),
                await unreachable.active("ignored"))

    seller_names, breaches, from_nowhere = asyncio.run(with_sender(sender, scenario))
    assert {alert.key for alert, _ in seller_names} == {warning.key, breach.key}
    assert [alert.key for alert, _ in breaches] == [breach.key]
    listed = {alert.key: (alert, ends_at) for alert, ends_at in seller_names}
    assert listed[warning.key][0].generator_url == warning.generator_url
    assert listed[warning.key][0].annotations == warning.annotations
    assert timedelta(seconds=200) < listed[warning.key][1] - datetime.now(timezone.utc) <= timedelta(seconds=240)
    assert from_nowhere == []


@pytest.mark.stack
def test_resend_keeps_the_alert_active_past_its_first_ends_at(alertmanager):
    sender = AlertSender([alertmanager.url], resend_seconds=0.5)  # endsAt 2 s ahead
    alert = seller_alert("A4")

    async def scenario():
        sender.fire(alert)
        first = await eventually(lambda: alertmanager.active("A4"), "A4 active")
        first_ends_at = datetime.fromisoformat(first[0]["endsAt"].replace("Z", "+00:00"))
        await eventually(lambda: datetime.now(timezone.utc) > first_ends_at + timedelta(seconds=1)
                         or None, "past the first endsAt")
        return first_ends_at, await asyncio.to_thread(alertmanager.active, "A4")

    first_ends_at, later = asyncio.run(with_sender(sender, scenario))
    assert len(later) == 1, "the alert expired although the sender kept re-sending it"
    later_ends_at = datetime.fromisoformat(later[0]["endsAt"].replace("Z", "+00:00"))
    assert later_ends_at > first_ends_at


@pytest.mark.stack
def test_alerts_changed_while_alertmanager_is_down_arrive_in_their_final_state(alertmanager):
    deliveries = Deliveries()
    sender = AlertSender([alertmanager.url], on_delivery=deliveries, timeout_seconds=1,
                         max_backoff_seconds=0.5)
    kept = seller_alert("C1")
    changed_first = seller_alert("C2", rate="0.021")
    changed_final = seller_alert("C2", rate="0.024")
    gone = seller_alert("C3")

    async def scenario():
        await asyncio.to_thread(alertmanager.stop)
        sender.fire(kept)
        sender.fire(changed_first)
        sender.fire(gone)
        await eventually(lambda: deliveries.counts["failed"] >= 3 or None, "failures reported")
        sender.fire(changed_final)
        sender.resolve(gone.labels)
        assert sender.pending() == 3
        await asyncio.to_thread(alertmanager.start)
        assert await sender.flush(WAIT_SECONDS), "updates still pending after Alertmanager came back"

    asyncio.run(with_sender(sender, scenario))
    active = {a["labels"][names.LABEL_SELLER]: a for a in alertmanager.active()}
    assert sorted(active) == ["C1", "C2"]
    assert active["C2"]["annotations"]["rate"] == "0.024"
    assert active["C1"]["annotations"] == dict(kept.annotations)
    assert deliveries.counts["failed"] >= 3
    assert deliveries.counts["sent"] == 3  # one post with the final state of all three
    assert sender.pending() == 0


@pytest.mark.stack
def test_resolution_during_an_outage_replaces_the_active_alert_when_back(alertmanager):
    """Alertmanager is frozen (SIGSTOP), so it keeps its in-memory alerts across the outage."""
    deliveries = Deliveries()
    sender = AlertSender([alertmanager.url], on_delivery=deliveries, timeout_seconds=0.5,
                         max_backoff_seconds=0.5)
    resolved = seller_alert("D1")
    still = seller_alert("D2")

    async def scenario():
        sender.fire(resolved)
        sender.fire(still)
        await eventually(lambda: len(alertmanager.active()) == 2, "D1 and D2 active")
        alertmanager.pause()
        try:
            sender.resolve(resolved.labels)
            await eventually(lambda: deliveries.counts["failed"] >= 1 or None, "failure reported")
        finally:
            alertmanager.resume()
        assert await sender.flush(WAIT_SECONDS)
        return await eventually(lambda: [a["labels"][names.LABEL_SELLER]
                                         for a in alertmanager.active()] == ["D2"] or None,
                                "D1 resolved after the outage")

    asyncio.run(with_sender(sender, scenario))
    assert alertmanager.active("D1") == []
    assert deliveries.counts["failed"] >= 1


@pytest.mark.stack
def test_one_alertmanager_down_does_not_hold_back_the_other(alertmanager, tmp_path_factory):
    down = LocalAlertmanager(tmp_path_factory.mktemp("down"))  # never started: connection refused
    deliveries = Deliveries()
    sender = AlertSender([down.url, alertmanager.url], on_delivery=deliveries,
                         max_backoff_seconds=0.5)

    async def scenario():
        sender.fire(seller_alert("E1"))
        await eventually(lambda: alertmanager.active("E1"), "E1 at the live Alertmanager")
        await eventually(lambda: deliveries.counts["failed"] >= 2 or None, "retries to the dead one")
        sender.fire(seller_alert("E2"))
        await eventually(lambda: alertmanager.active("E2"), "E2 at the live Alertmanager")
        assert not await sender.flush(1.0), "the dead Alertmanager cannot have accepted anything"

    asyncio.run(with_sender(sender, scenario))
    assert sender.pending() == 2
    assert deliveries.counts["sent"] == 2


@pytest.mark.stack
def test_alerts_queued_before_run_are_sent_when_it_starts(alertmanager):
    sender = AlertSender([alertmanager.url])
    sender.fire(seller_alert("F1", names.ALERT_BREACHED))

    async def scenario():
        assert await sender.flush(WAIT_SECONDS)

    asyncio.run(with_sender(sender, scenario))
    [seen] = alertmanager.active("F1")
    assert seen["labels"][names.LABEL_SEVERITY] == "critical"

