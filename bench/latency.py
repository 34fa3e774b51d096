"""Alert latency: from producing the event that crosses a level to the alert in Alertmanager's API.

A worker in wall-clock mode delivers to a dedicated Alertmanager on a free
port (so the stack's own one is not flooded) while a background thread
feeds it a steady stream of simulator events re-stamped to now. Each
crossing: a fresh seller with 40 MFN orders in the window gets its first
seller-fault cancel (1/40 = 2.5%, a breach); the time from just before the
produce to `SellerCancelRateBreached` for that seller appearing in
`GET /api/v2/alerts` is one sample.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path

import orjson
import requests

from common import (BenchError, Worker, cancel_line, create_topics, delete_topics, free_port, iso, log,
                    order_line, produce, producer, simulator_cache, tag)
from cancelwatch import names

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
ORDERS_PER_SELLER = 40
ALERTNAME = names.ALERT_BREACHED
MINIMAL_CONFIG = """route:
  receiver: discard
  group_wait: 1h
receivers:
  - name: discard
"""


class Alertmanager:
    """A private Alertmanager with a route to nowhere: only its API is read."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir / f"alertmanager-{self.port}"
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> "Alertmanager":
        if not Path(ALERTMANAGER).exists():
            raise BenchError(f"{ALERTMANAGER} is missing: apt-get install -y prometheus-alertmanager "
                             "(or make install)")
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        (self.dir / "alertmanager.yml").write_text(MINIMAL_CONFIG)
        with open(self.dir / "alertmanager.log", "ab") as log_file:
            self.process = subprocess.Popen(
                [ALERTMANAGER, f"--config.file={self.dir / 'alertmanager.yml'}",
                 f"--storage.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                 "--cluster.listen-address="], stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                time.sleep(0.2)
        raise BenchError(f"Alertmanager on port {self.port} not ready in 30 s; see {self.dir}/alertmanager.log")

    def visible(self, seller_id: str, alertname: str, session: requests.Session) -> bool:
        response = session.get(f"{self.url}/api/v2/alerts",
                               params=[("filter", f'seller_id="{seller_id}"'),
                                       ("filter", f'alertname="{alertname}"')], timeout=5)
        return bool(response.json())

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        shutil.rmtree(self.dir, ignore_errors=True)


class Background(threading.Thread):
    """Steady traffic: simulator events re-stamped to now, at `rate` events per second."""

    def __init__(self, orders: str, cancellations: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.topics = {"order_cancelled": cancellations}
        self.orders = orders
        self.rate = rate
        self.sent = 0
        self.stopping = threading.Event()
        with open(simulator_cache(200, "2d"), "rb") as file:
            self.lines = [orjson.loads(line) for _, line in zip(range(200_000), file)]

    def run(self) -> None:
        out = producer(**{"linger.ms": 5})
        started = time.monotonic()
        index = 0
        while not self.stopping.is_set():
            due = int((time.monotonic() - started) * self.rate)
            stamp = iso(time.time())
            while self.sent < due:
                event = self.lines[index % len(self.lines)]
                event = {**event, "purchase_date": stamp, "occurred_at": stamp,
                         "event_id": f"{event['event_id']}-{index // len(self.lines)}"}
                out.produce(self.topics.get(event["type"], self.orders), key=event["seller_id"].encode(),
                            value=orjson.dumps(event))
                self.sent += 1
                index += 1
            out.poll(0)
            time.sleep(0.01)
        out.flush(30)


def run(sizes: dict, workdir: Path) -> dict:
    base = tag("latency")
    orders, cancellations = f"{base}-orders", f"{base}-cancellations"
    create_topics([orders, cancellations])
    alertmanager = Alertmanager(workdir).start()
    worker = Worker(workdir, orders=orders, cancellations=cancellations, clock="wall",
                    alertmanager_url=alertmanager.url, name="latency")
    background = Background(orders, cancellations, sizes["background_rate"])
    try:
        worker.start()
        worker.wait_ready()
        background.start()
        crossings = sizes["crossings"]
        sellers = [f"L{base[-8:].upper()}{index:05d}" for index in range(crossings)]
        now = time.time()
        purchased = iso(now - 60)
        setup = [(orders, seller.encode(), order_line(seller, f"{seller}-{k:03d}", purchased))
                 for seller in sellers for k in range(ORDERS_PER_SELLER)]
        produce(setup)
        _wait_orders(worker, sellers)
        log(f"latency: {crossings} sellers with {ORDERS_PER_SELLER} orders each are in; "
            f"background at {sizes['background_rate']:.0f} events/s")
        out = producer(**{"linger.ms": 0})
        session = requests.Session()
        samples, missed = [], []
        for seller in sellers:
            value = cancel_line(seller, f"{seller}-000", purchased, iso(time.time()))
            started = time.monotonic()
            out.produce(cancellations, key=seller.encode(), value=value)
            out.flush(10)
            while not alertmanager.visible(seller, ALERTNAME, session):
                if time.monotonic() - started > sizes["crossing_timeout"]:
                    missed.append(seller)
                    break
                time.sleep(0.005)
            else:
                samples.append(time.monotonic() - started)
            time.sleep(sizes["crossing_gap"])
        background.stopping.set()
        background.join(30)
        if not samples:
            raise BenchError(f"no alert became visible within {sizes['crossing_timeout']}s; "
                             f"worker log {worker.log_path}")
        ordered = sorted(samples)
        return {
            "crossings": crossings, "observed": len(samples), "missed": len(missed),
            "background_events": background.sent,
            "background_events_per_s": sizes["background_rate"],
            "p50_s": statistics.median(ordered),
            "p99_s": ordered[min(len(ordered) - 1, int(round(0.99 * len(ordered))) - 1)],
            "max_s": ordered[-1], "min_s": ordered[0],
            "target_p99_s": 1.0,
            "meets_target": not missed and ordered[min(len(ordered) - 1,
                                                       int(round(0.99 * len(ordered))) - 1)] <= 1.0,
        }
    finally:
        background.stopping.set()
        worker.stop()
        alertmanager.stop()
        delete_topics([orders, cancellations, *worker.internal_topics()])


def _wait_orders(worker: Worker, sellers: list[str], timeout: float = 120) -> None:
    """Wait until the worker counts every seller's orders (so the cancel alone crosses)."""
    deadline = time.monotonic() + timeout
    pending = list(sellers)
    while pending and time.monotonic() < deadline:
        worker.alive()
        seller = pending[-1]
        response = requests.get(f"{worker.url}/sellers/{seller}", params={"marketplace": "US"}, timeout=10)
        if response.status_code == 200 and response.json()["windows"][0]["orders"] == ORDERS_PER_SELLER:
            pending.pop()
        else:
            time.sleep(0.2)
    if pending:
        raise BenchError(f"the worker did not count the orders of {len(pending)} sellers in {timeout}s; "
                         f"log {worker.log_path}")
