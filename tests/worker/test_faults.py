"""Faults on the real stack: nothing lost, nothing double-counted, every alert delivered.

Each test injects one kind of fault into a real `cancelwatch worker` fed by a
simulated replay (event clock), then compares the whole HTTP answer for every
seller with `tests/oracle.py` computed from the events sent, and records its
measurements in docs/faults.json, from which docs/faults.md is rendered.

- SIGKILL of the worker at random points, at least 5 times, during a replay
  of 200,000 events (shared broker).
- The broker stopped and started again mid-stream: a Kafka of this test's own
  (stack/stack.sh with its own STACK_DIR and ports), so the shared one is
  never touched. Before that, with the worker caught up and idle: stopped
  until the worker's partitions catch up again (no fetch response for
  STALE_FETCH_SECONDS), which they do not while it is connected.
- Alertmanager down while alerts should fire: an Alertmanager of this test's
  own, started only after the worker has tried and failed to deliver.
- Two workers in one consumer group, one SIGKILLed: the survivor takes over
  the partitions and answers exactly for every seller (503 while it cannot
  yet, never a wrong 404).
- Hostile HTTP parameters: JSON answers with 200, 400 or 404, never a 500.
"""

from __future__ import annotations

import collections
import os
import random
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import requests

from cancelwatch import names
from cancelwatch.worker import runtime as runtime_module
from cancelwatch.worker.ownership import owner_partition
from tests import faults_table
from tests.worker.test_worker import expected_answers, publish, simulated_stream, strip_listing, wait_for_answers
from tests.workers import ROOT, Topics, WorkerProcess, free_port

pytestmark = pytest.mark.stack

STACK_SCRIPT = ROOT / "stack" / "stack.sh"
KAFKA_LIB = Path(os.environ.get("KAFKA_LIB", ROOT / ".stack" / "kafka" / "lib"))
REPLAY_EVENTS = 200_000
KILLS = 6
WINDOW_COUNTS = ("orders", "cancelled")
# A killed worker stays a member of its consumer group until its session times out, and
# the restarted one waits for that before it gets partitions: 15 s instead of the default
# minute keeps the tests short.
SHORT_SESSION = {"CANCELWATCH_SESSION_TIMEOUT_SECONDS": "15"}


def discrepancies(answers: dict, expected: dict) -> tuple[int, int]:
    """(lost, double counted) over every seller and window: counts below and above the oracle's."""
    lost = double = 0
    for key, want in expected.items():
        got = answers.get(key) if answers else None
        if got is None:
            lost += sum(w["orders"] + w["cancelled"] for w in want["windows"]) or 1
            continue
        for want_window, got_window in zip(want["windows"], got["windows"]):
            for field in WINDOW_COUNTS:
                difference = got_window[field] - want_window[field]
                lost += max(0, -difference)
                double += max(0, difference)
        for field in ("reasons", "excluded"):
            for name in set(want[field]) | set(got[field]):
                difference = got[field].get(name, 0) - want[field].get(name, 0)
                lost += max(0, -difference)
                double += max(0, difference)
    return lost, double


def settled_answers(worker: WorkerProcess, expected: dict, timeout: float) -> dict:
    """wait_for_answers, through the 503s a worker gives while a rebalance or recovery is under way."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return wait_for_answers(worker, expected, timeout=max(1.0, deadline - time.monotonic()))
        except AssertionError as unavailable:       # a seller answered 503: not settled yet
            if time.monotonic() > deadline or worker.process.poll() is not None:
                raise AssertionError(f"no answer for every seller within {timeout}s: {unavailable}\n"
                                     + worker.tail()) from None
            time.sleep(1)


def assert_exact(worker: WorkerProcess, expected: dict, timeout: float) -> tuple[int, int]:
    answers = settled_answers(worker, expected, timeout=timeout)
    lost, double = discrepancies(answers, expected)
    wrong = sorted(key for key in expected if answers.get(key) != expected[key])
    # the owner partition of each wrong seller: a fault of one partition shows as one number
    by_partition = collections.Counter(owner_partition(seller, worker.partitions) for seller, _ in wrong)
    assert answers == expected, (f"{len(wrong)} of {len(expected)} sellers differ from the oracle "
                                 f"(lost {lost}, double counted {double}); by owner partition "
                                 f"{dict(sorted(by_partition.items()))}; first: {wrong[:3]}\n"
                                 + worker.tail())
    return lost, double


def stack_env(stack_dir: Path, **ports: int) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "ALERTMANAGER_PORT", "ONCALL_PORT")}
    env.update({"STACK_DIR": str(stack_dir), "KAFKA_LIB": str(KAFKA_LIB), "KAFKA_HEAP": "512M",
                "STACK_TIMEOUT": "120"})
    env.update({name: str(port) for name, port in ports.items()})
    return env


def stack(command: str, service: str, env: dict[str, str]) -> None:
    done = subprocess.run([str(STACK_SCRIPT), command, service], env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, f"stack.sh {command} {service} failed:\n{done.stdout}\n{done.stderr}"


@contextmanager
def own_service(service: str, stack_dir: Path, **ports: int) -> Iterator[dict[str, str]]:
    """A service of this test's own (own directory and ports), stopped afterwards.
    Yields the stack.sh environment so the test can stop and start it again."""
    env = stack_env(stack_dir, **ports)
    try:
        yield env
    finally:
        stack("stop", service, env)


def replay(seed: int, sellers: int, days: float, limit: int | None = None) -> list:
    stream = simulated_stream(seed=seed, sellers=sellers, days=days)
    return stream[:limit] if limit else stream


def test_worker_killed_at_random_points_during_a_replay_of_200000_events(kafka_bootstrap, tmp_path):
    started = time.monotonic()
    rng = random.Random(2026)
    stream = replay(seed=11, sellers=60, days=9, limit=REPLAY_EVENTS)
    assert len(stream) == REPLAY_EVENTS
    topics = Topics("kill")
    sent = publish(kafka_bootstrap, topics, stream, seed=5)
    _, expected = expected_answers(stream)
    expected = strip_listing(expected)
    state = tmp_path / "state"
    port = free_port()
    kills = []
    worker = None
    try:
        for attempt in range(KILLS):
            worker = WorkerProcess(topics, state, port=port, extra_env=SHORT_SESSION).start()
            if attempt % 3 == 2:
                time.sleep(rng.uniform(1.0, 6.0))      # during start-up or state recovery
                processed = None
            else:
                worker.wait_ready(timeout=180)
                time.sleep(rng.uniform(0.5, 5.0))      # mid-batch, at a random point
                processed = worker.metric("cancelwatch_events_total")
            worker.kill()
            kills.append(processed)
        worker = WorkerProcess(topics, state, port=port, extra_env=SHORT_SESSION).start()
        worker.wait_ready(timeout=180)
        lost, double = assert_exact(worker, expected, timeout=300)
        assert worker.metric("cancelwatch_dead_letters_total") == 0
    finally:
        if worker is not None:
            worker.stop()
    assert len(kills) >= 5
    faults_table.record_fault(
        "kill", fault="worker SIGKILLed at random points (during start-up, recovery and batches), restarted",
        injected=len(kills), events=len(stream), lost=lost, double_counted=double, sellers=len(expected),
        seconds=time.monotonic() - started,
        checked=f"{sent:,} messages sent (5% duplicates, 30% keyed by other than seller_id); messages "
                f"handled by each killed run: {', '.join('start-up' if n is None else f'{n:,.0f}' for n in kills)}")


def test_broker_restarted_mid_stream(tmp_path):
    started = time.monotonic()
    kafka_port = free_port()
    bootstrap = f"127.0.0.1:{kafka_port}"
    stream = replay(seed=12, sellers=20, days=9)
    first, second, third = stream[:len(stream) // 2], stream[len(stream) // 2:3 * len(stream) // 4], \
        stream[3 * len(stream) // 4:]
    topics = Topics("broker")
    with own_service("kafka", tmp_path / "stack", KAFKA_PORT=kafka_port,
                     KAFKA_CONTROLLER_PORT=free_port()) as env:
        stack("start", "kafka", env)
        worker = WorkerProcess(topics, tmp_path / "state",
                               extra_env={"CANCELWATCH_BROKER": f"kafka://{bootstrap}"}).start()
        try:
            worker.wait_ready(timeout=180)
            sent = publish(bootstrap, topics, first, seed=1)
            _, expected = expected_answers(first)
            assert_exact(worker, strip_listing(expected), timeout=180)
            stale_after, back_after = outage_is_a_catch_up(worker, env)

            sent += publish(bootstrap, topics, second, seed=2)
            stack("stop", "kafka", env)                 # while the worker is still applying `second`
            time.sleep(10)
            assert worker.process.poll() is None, "worker exited while the broker was down:\n" + worker.tail()
            stack("start", "kafka", env)
            sent += publish(bootstrap, topics, third, seed=3)
            _, expected = expected_answers(stream)
            expected = strip_listing(expected)
            lost, double = assert_exact(worker, expected, timeout=240)
            assert worker.process.poll() is None, "the worker died after the broker came back"
        finally:
            worker.stop()
    faults_table.record_fault(
        "broker", fault="Kafka broker stopped for 10 s mid-stream and started again (same worker process)",
        injected=1, events=len(stream), lost=lost, double_counted=double, sellers=len(expected),
        seconds=time.monotonic() - started,
        checked=f"{sent:,} messages sent; worker never restarted; before that, caught up and idle: no partition "
                f"catching up in {runtime_module.STALE_FETCH_SECONDS + 3:.0f} s connected, all catching up "
                f"{stale_after:.0f} s after the broker stopped (no fetch response), caught up "
                f"{back_after:.0f} s after it started again")


def catching_up(worker: WorkerProcess) -> float:
    return worker.metric("cancelwatch_partition_catching_up")


def outage_is_a_catch_up(worker: WorkerProcess, env: dict) -> tuple[float, float]:
    """A caught-up worker stays caught up while idle and connected (an empty fetch response
    brings the high watermarks too); with the broker down, its partitions catch up again once
    no response came for STALE_FETCH_SECONDS, and are caught up again once it is back.
    Returns the seconds from the stop to the catch-up, and from the start to its end."""
    held = runtime_module.STALE_FETCH_SECONDS
    deadline = time.monotonic() + 60
    while catching_up(worker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert catching_up(worker) == 0, "the worker did not catch up on the first part:\n" + worker.tail()
    quiet_until = time.monotonic() + held + 3
    while time.monotonic() < quiet_until:
        assert catching_up(worker) == 0, "an idle, connected worker read its partitions stale:\n" + worker.tail()
        time.sleep(0.5)
    stopped = time.monotonic()      # the last response may be a fetch wait (1.5 s) older
    stack("stop", "kafka", env)
    while catching_up(worker) < worker.partitions and time.monotonic() < stopped + held + 30:
        time.sleep(0.5)
    assert catching_up(worker) == worker.partitions, \
        "the broker is down and its partitions do not all catch up:\n" + worker.tail()
    stale_after = time.monotonic() - stopped
    assert stale_after >= held - 2, "catching up before the responses were that old"
    assert "no fetch response for partitions" in worker.tail(400)
    stack("start", "kafka", env)
    started = time.monotonic()
    while catching_up(worker) and time.monotonic() < started + 120:
        time.sleep(0.5)
    assert catching_up(worker) == 0, "the broker is back and the partitions still catch up:\n" + worker.tail()
    return stale_after, time.monotonic() - started


def alertmanager_alerts(url: str) -> list[dict]:
    response = requests.get(f"{url}/api/v2/alerts", params={"active": "true", "silenced": "true",
                                                            "inhibited": "true"}, timeout=5)
    response.raise_for_status()
    return [alert for alert in response.json() if alert["labels"].get(names.LABEL_SELLER)]


def worker_active_alerts(worker: WorkerProcess) -> dict[str, int]:
    return {alertname: int(worker.metric("cancelwatch_alerts_active", alertname=alertname))
            for alertname in names.SELLER_ALERTS + (names.ALERT_LISTING,)}


def test_alerts_fired_while_alertmanager_is_down_are_delivered_when_it_returns(kafka_bootstrap, tmp_path):
    started = time.monotonic()
    am_port = free_port()
    am_url = f"http://127.0.0.1:{am_port}"
    stream = replay(seed=13, sellers=15, days=9)
    _, expected = expected_answers(stream)
    breached = {key for key, value in expected.items() if any(w["status"] == "breach" for w in value["windows"])}
    assert breached, "the scenario must breach at least one seller"
    topics = Topics("amdown")
    worker = WorkerProcess(topics, tmp_path / "state", alertmanager_url=am_url,
                           extra_env={"CANCELWATCH_ALERT_RESEND_SECONDS": "2"}).start()
    with own_service("alertmanager", tmp_path / "stack", ALERTMANAGER_PORT=am_port,
                     ONCALL_PORT=free_port()) as env:
        try:
            worker.wait_ready(timeout=180)
            publish(kafka_bootstrap, topics, stream, seed=4)
            lost, double = assert_exact(worker, strip_listing(expected), timeout=180)
            deadline = time.monotonic() + 60
            while worker.metric("cancelwatch_alert_deliveries_total", outcome="failed") < 3:
                assert time.monotonic() < deadline, "the worker never tried to deliver:\n" + worker.tail()
                time.sleep(0.5)
            active = worker_active_alerts(worker)
            assert active[names.ALERT_BREACHED] >= len(breached), active
            time.sleep(10)                           # Alertmanager stays down a while longer
            outage = time.monotonic()
            stack("start", "alertmanager", env)
            deadline = time.monotonic() + 60
            while True:
                delivered = alertmanager_alerts(am_url)
                by_name = {alertname: sum(1 for a in delivered if a["labels"]["alertname"] == alertname)
                           for alertname in active}
                if by_name == worker_active_alerts(worker) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert by_name == worker_active_alerts(worker)
            delivered_breaches = {(a["labels"][names.LABEL_SELLER], a["labels"][names.LABEL_MARKETPLACE])
                                  for a in delivered if a["labels"]["alertname"] == names.ALERT_BREACHED}
            assert delivered_breaches == breached
            assert worker.metric("cancelwatch_alert_deliveries_total", outcome="sent") >= 1
            after = time.monotonic() - outage
        finally:
            worker.stop()
    faults_table.record_fault(
        "alertmanager", fault="Alertmanager down while alerts fired; started after the worker's "
                              "deliveries had failed", injected=1, events=len(stream), lost=lost,
        double_counted=double, sellers=len(expected), seconds=time.monotonic() - started,
        checked=f"all {sum(by_name.values())} firing alerts ({len(breached)} breached sellers) in Alertmanager "
                f"{after:.0f} s after it came back")


def takeover_statuses(worker: WorkerProcess, known: dict, timeout: float) -> collections.Counter:
    """Poll every known seller until all answer 200; count the statuses seen on the way."""
    seen: collections.Counter = collections.Counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        codes = collections.Counter(worker.get(f"/sellers/{seller}", marketplace=marketplace).status_code
                                    for seller, marketplace in known)
        seen.update(codes)
        if codes == {200: len(known)}:
            break
        time.sleep(0.1)
    return seen


def test_two_workers_one_killed_the_survivor_answers_for_every_seller(kafka_bootstrap, tmp_path):
    started = time.monotonic()
    stream = replay(seed=14, sellers=40, days=9)
    first, second = stream[:len(stream) // 2], stream[len(stream) // 2:]
    topics = Topics("rebalance")
    survivor = WorkerProcess(topics, tmp_path / "a", extra_env=SHORT_SESSION).start()
    victim = WorkerProcess(topics, tmp_path / "b", extra_env=SHORT_SESSION).start()
    try:
        survivor.wait_ready(timeout=180)
        victim.wait_ready(timeout=180)
        sent = publish(kafka_bootstrap, topics, first, seed=1)
        _, expected = expected_answers(first)
        expected = strip_listing(expected)
        assert_exact(survivor, expected, timeout=180)
        assert_exact(victim, expected, timeout=60)    # either worker answers for every seller
        assert victim.metric("cancelwatch_table_keys") > 0 and survivor.metric("cancelwatch_table_keys") > 0, \
            "both workers should own part of the state before one is killed"
        sent += publish(kafka_bootstrap, topics, second, seed=2)
        time.sleep(1.0)
        victim.kill()
        statuses = takeover_statuses(survivor, expected, timeout=120)
        assert statuses.get(404, 0) == 0, f"a known seller was answered 404 during the takeover: {statuses}"
        _, expected = expected_answers(stream)
        expected = strip_listing(expected)
        lost, double = assert_exact(survivor, expected, timeout=240)
    finally:
        victim.stop()
        survivor.stop()
    faults_table.record_fault(
        "rebalance", fault="two workers in one group; one SIGKILLed mid-stream, the other takes over",
        injected=1, events=len(stream), lost=lost, double_counted=double, sellers=len(expected),
        seconds=time.monotonic() - started,
        checked=f"{sent:,} messages sent; both answered for all sellers before the kill, the survivor "
                f"after; during the takeover {statuses.get(503, 0)} answers 503 (retry), none 404")


HOSTILE_TEXT = ["", " ", "A1", "a" * 65, "a" * 1500, "../../etc/passwd", "%00", "\u0000", "é", "😀" * 20,
                "'; DROP TABLE sellers; --", "<script>", "US\r\nX-Injected: 1", "at-risk", "NaN", "-1",
                "1e400", str(2**70), "0x10", " 5", "5 ", "1_000", "٣"]


def test_hostile_http_parameters_get_a_json_answer_never_a_server_error(kafka_bootstrap, tmp_path):
    """Bad input on the HTTP side: every combination of hostile seller ids, marketplaces,
    limits and what-if counts is answered with JSON and 200, 400 or 404, never a 500 or a
    dropped connection."""
    started = time.monotonic()
    rng = random.Random(7)
    worker = WorkerProcess(Topics("http"), tmp_path / "state").start()
    tried = 0
    try:
        worker.wait_ready(timeout=180)
        for _ in range(400):
            seller = rng.choice(HOSTILE_TEXT[1:])   # an empty path segment matches no route at all
            params = {"marketplace": rng.choice(HOSTILE_TEXT + ["US", "IN"])}
            path = rng.choice([f"/sellers/{requests.utils.quote(seller, safe='')}",
                               f"/sellers/{requests.utils.quote(seller, safe='')}/what-if",
                               "/sellers/at-risk"])
            if path.endswith("what-if"):
                params["cancel"] = rng.choice(HOSTILE_TEXT + ["3"])
            if path == "/sellers/at-risk":
                params["limit"] = rng.choice(HOSTILE_TEXT + ["10"])
            response = requests.get(worker.url + path, params=params, timeout=10)
            tried += 1
            # 503 (with Retry-After) while a partition is still catching up at start: never a 500
            assert response.status_code in (200, 400, 404) or (
                response.status_code == 503 and response.headers.get("Retry-After")), (
                path, params, response.status_code, response.text[:300])
            try:
                body = response.json()
            except ValueError:
                raise AssertionError(f"not JSON: {path[:80]} {str(params)[:200]} -> {response.status_code} "
                                     f"{response.headers.get('content-type')} {response.text[:200]!r}") from None
            if response.status_code != 200:
                assert body["error"], (path, params)
        assert worker.process.poll() is None
    finally:
        worker.stop()
    faults_table.record_bad_inputs_http(tried, time.monotonic() - started)
