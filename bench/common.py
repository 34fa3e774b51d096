"""What every benchmark shares: the broker, pre-filled topics, worker processes, measurements."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
RAW = ROOT / "bench" / "raw"
VENV_BIN = Path(sys.executable).parent
CANCELWATCH = str(VENV_BIN / "cancelwatch")
KAFKA_PORT = os.environ.get("KAFKA_PORT", "9092")
BOOTSTRAP = f"127.0.0.1:{KAFKA_PORT}"
KAFKA_DATA = Path(os.environ.get("STACK_DIR", ROOT / ".stack")) / "kafka" / "data"

sys.path.insert(0, str(ROOT / "streams"))
sys.path.insert(0, str(ROOT))
from cancelwatch import names  # noqa: E402
from tests.workers import Topics, WorkerProcess  # noqa: E402  - the one worker harness

PARTITIONS = names.DEFAULT_PARTITIONS

# Where the workers' code comes from: a directory holding `streams/` exported from a commit
# (`use_worker_source`), or None for the working tree (the editable install).
WORKER_SOURCE: Path | None = None


class BenchError(RuntimeError):
    """A benchmark could not run; the message says why and what to do."""


def log(message: str) -> None:
    print(f"bench {time.strftime('%H:%M:%S')} {message}", flush=True)


def default_policy():
    """The packaged counting policy (`policy.yaml`), as the worker loads it by default."""
    from cancelwatch.core import policy
    return policy.load(Path(policy.__file__).with_name("policy.yaml"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tag(prefix: str) -> str:
    return f"bench-{prefix}-{uuid.uuid4().hex[:8]}"


def spread(values: list[float]) -> dict:
    """Median, min and max of repeated runs (and the runs themselves)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


class ThreadClock:
    """CPU seconds of a process's threads and of the whole machine between `start()` and
    `stop()` (Linux /proc), per wall second: what limits a process, the cores or the
    interpreter lock. Python threads share one lock, so together they run on at most one
    core; native threads (RocksDB's, named "rocksdb:...") run without it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._start: tuple | None = None

    def _threads(self) -> dict[int, tuple[str, float]]:
        ticks = os.sysconf("SC_CLK_TCK")
        found = {}
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{tid}/stat") as file:
                    stat = file.read()
            except OSError:
                continue        # ended meanwhile
            name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
            found[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / ticks)     # utime + stime
        return found

    @staticmethod
    def _machine() -> tuple[float, float]:
        """(busy, all) jiffies of every core: busy leaves out idle and iowait."""
        with open("/proc/stat") as file:
            values = [int(value) for value in file.readline().split()[1:]]
        return sum(values) - values[3] - values[4], sum(values)

    def start(self) -> None:
        self._start = (time.monotonic(), self._threads(), self._machine())

    def stop(self) -> dict:
        """Per wall second: the main thread, the process's other threads (RocksDB's left out),
        its RocksDB threads, and the machine's busy cores."""
        began, threads, machine = self._start
        wall = time.monotonic() - began
        now, machine_now = self._threads(), self._machine()
        shares = {"main": 0.0, "other_threads": 0.0, "rocksdb": 0.0}
        for tid, (name, seconds) in now.items():
            used = seconds - threads.get(tid, (name, 0.0))[1]
            role = "main" if tid == self.pid else "rocksdb" if name.startswith("rocksdb") else "other_threads"
            shares[role] += used / wall
        busy, total = machine_now[0] - machine[0], machine_now[1] - machine[1]
        return {"wall_seconds": round(wall, 3), **{role: round(share, 3) for role, share in shares.items()},
                "machine_busy_cores": round(busy / total * (os.cpu_count() or 1), 3) if total else None}


class ThreadWindow:
    """A `ThreadClock` over a window of a helper process's run, from `delay` seconds after
    it starts for `seconds` (its start-up left out); usable as run_json's `started`. `result()`
    is None when the process ended before the window did."""

    def __init__(self, delay: float, seconds: float) -> None:
        self.delay, self.seconds = delay, seconds
        self._result: dict | None = None
        self._thread: threading.Thread | None = None

    def __call__(self, pid: int) -> None:
        self._thread = threading.Thread(target=self._measure, args=(pid,), daemon=True)
        self._thread.start()

    def _measure(self, pid: int) -> None:
        time.sleep(self.delay)
        clock = ThreadClock(pid)
        try:
            clock.start()
            time.sleep(self.seconds)
            self._result = {**clock.stop(), "after_seconds": self.delay}
        except (OSError, ValueError):      # the process ended (its /proc is gone)
            self._result = None

    def result(self) -> dict | None:
        if self._thread is not None:
            self._thread.join()
        return self._result


def use_worker_source(ref: str, into: Path) -> str:
    """Run workers from `streams/` as committed at `ref` (exported into `into`, its compiled core
    built there as `make install` builds it: `worker_core`); return the commit."""
    global WORKER_SOURCE
    import io
    import tarfile
    commit = subprocess.run(["git", "rev-parse", "--short", f"{ref}^{{commit}}"], cwd=ROOT, capture_output=True,
                            text=True)
    if commit.returncode != 0:
        raise BenchError(f"--worker-ref {ref}: not a commit of this repository ({commit.stderr.strip()})")
    # a commit with a compiled core: its build's files too
    compiles = subprocess.run(["git", "cat-file", "-e", f"{ref}:setup.py"], cwd=ROOT,
                              stderr=subprocess.DEVNULL).returncode == 0
    paths = ["streams", *(("setup.py", "pyproject.toml", "README.md") if compiles else ())]
    archive = subprocess.run(["git", "archive", ref, *paths], cwd=ROOT, capture_output=True, check=True)
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    if compiles:
        log(f"compiling the core of {ref} for the workers")
        build = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace", "--parallel", "2"],
                               cwd=into, capture_output=True, text=True)
        if build.returncode != 0:
            raise BenchError(f"could not compile the core of {ref}: {build.stderr.strip()[-2000:]}")
    WORKER_SOURCE = into
    return commit.stdout.strip()


def worker_core() -> str:
    """How the workers' core runs, as their `cancelwatch_build_info{core}` says it
    (`compiled.running()` once its modules are imported); `python` for a commit before the
    compiled core."""
    streams = (WORKER_SOURCE or ROOT) / "streams"
    if not (streams / "cancelwatch" / "compiled.py").is_file():
        return "python"
    code = ("import importlib; from cancelwatch import compiled; "
            "[importlib.import_module(module) for module in compiled.MODULES]; print(compiled.running())")
    found = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(streams)},
                           capture_output=True, text=True, check=True)
    return found.stdout.strip()


def machine() -> dict:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "ram_gib": round(mem_kib / 1024 / 1024, 1), "cpu_model": model,
            "python": platform.python_version(), "kernel": platform.release(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit}


# --- Kafka -----------------------------------------------------------------------------------

def admin():
    from confluent_kafka.admin import AdminClient
    client = AdminClient({"bootstrap.servers": BOOTSTRAP})
    try:
        client.list_topics(timeout=10)
    except Exception as error:  # noqa: BLE001 - any failure here means no broker
        raise BenchError(f"no Kafka broker at {BOOTSTRAP} ({error}); start it with `make stack-up` "
                         "or set KAFKA_PORT") from None
    return client


def create_topics(topics: list[str], partitions: int = PARTITIONS) -> None:
    """Create the missing topics, replicated as the worker replicates its own: min(3, brokers)."""
    from confluent_kafka.admin import NewTopic

    from cancelwatch.topics import MAX_REPLICAS, Replication
    client = admin()
    metadata = client.list_topics(timeout=10)
    replication = Replication(min(MAX_REPLICAS, len(metadata.brokers) or 1))
    wanted = [NewTopic(name, partitions, replication.replicas, config=replication.configs)
              for name in topics if name not in metadata.topics]
    if wanted:
        for name, future in client.create_topics(wanted).items():
            future.result()


def delete_topics(topics: list[str]) -> None:
    """Delete topics this suite created (never anything else)."""
    client = admin()
    existing = set(client.list_topics(timeout=10).topics)
    doomed = [name for name in topics if name in existing]
    if doomed:
        for future in client.delete_topics(doomed).values():
            try:
                future.result()
            except Exception:  # noqa: BLE001 - best effort: a leftover topic only costs disk
                pass


def delete_topics_tagged(token: str) -> None:
    """Delete every topic whose name holds `token`, a unique tag this suite made up."""
    if not token.startswith("bench-"):
        raise ValueError(f"refusing to delete topics by {token!r}: only the suite's own bench-* tags")
    delete_topics([name for name in admin().list_topics(timeout=10).topics if token in name])


def message_count(topics: list[str]) -> int:
    """Messages in the topics (end offsets minus start offsets)."""
    from confluent_kafka import Consumer, TopicPartition
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": tag("count")})
    try:
        metadata = consumer.list_topics(timeout=10)
        total = 0
        for name in topics:
            if name not in metadata.topics:
                return -1
            for partition in metadata.topics[name].partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(name, partition), timeout=10)
                total += high - low
        return total
    finally:
        consumer.close()


def producer(**extra):
    """A fast producer that partitions like Kafka's Java client (murmur2 of the key), as the worker expects."""
    from confluent_kafka import Producer
    config = {"bootstrap.servers": BOOTSTRAP, "partitioner": "murmur2_random", "linger.ms": 20,
              "batch.size": 1_000_000, "acks": 1, "compression.type": "none",
              "queue.buffering.max.messages": 1_000_000}
    config.update(extra)
    return Producer(config)


def produce_lines(lines, orders_topic: str, cancellations_topic: str) -> int:
    """Send JSON Lines (bytes) keyed by seller_id to the topic of their type; return how many."""
    import orjson

    def keyed():
        for line in lines:
            event = orjson.loads(line)
            topic = cancellations_topic if event["type"] == "order_cancelled" else orders_topic
            yield topic, event["seller_id"].encode(), line
    return produce(keyed())


def produce(messages, out=None) -> int:
    """Send (topic, key, value) triples and wait until the broker has them all; return how many."""
    out = out or producer()
    sent = 0
    for topic, key, value in messages:
        while True:
            try:
                out.produce(topic, value=value, key=key)
                break
            except BufferError:
                out.poll(0.05)
        sent += 1
        if sent % 10000 == 0:
            out.poll(0)
    if out.flush(120) > 0:
        raise BenchError(f"the broker at {BOOTSTRAP} did not take every message within 120 s")
    return sent


def simulator_cache(sellers: int, duration: str, seed: int = 1) -> Path:
    """JSON Lines of a simulator run with 2% duplicates, generated once into bench/raw/."""
    RAW.mkdir(parents=True, exist_ok=True)
    path = RAW / f"sim-{sellers}s-{duration}-seed{seed}.jsonl"
    if not path.exists():
        log(f"generating simulator events into {path.relative_to(ROOT)} (once)")
        partial = path.with_suffix(".partial")
        subprocess.run([CANCELWATCH, "simulate", "--scenario", "inventory-outage", "--seed", str(seed),
                        "--sellers", str(sellers), "--start", "2026-11-18T00:00:00Z",
                        "--duration", duration, "--duplicates", "0.02", "--reorder", "0.01",
                        "--output", str(partial)], check=True, stdout=subprocess.DEVNULL)
        partial.rename(path)
    return path


def prefilled(sellers: int, duration: str, limit: int | None = None) -> tuple[str, str, int]:
    """A topic pair holding the simulator events (reused across runs when complete)."""
    path = simulator_cache(sellers, duration)
    with open(path, "rb") as file:
        lines = [line.rstrip(b"\n") for line in file]
    if limit:
        lines = lines[:limit]
    base = f"bench-sim-{sellers}s-{duration}-{len(lines)}"
    orders, cancellations = f"{base}-orders", f"{base}-cancellations"
    if message_count([orders, cancellations]) == len(lines):
        log(f"reusing pre-filled topics {base}-* ({len(lines)} messages)")
        return orders, cancellations, len(lines)
    delete_topics([orders, cancellations])
    time.sleep(1)
    create_topics([orders, cancellations])
    started = time.monotonic()
    produce_lines(lines, orders, cancellations)
    log(f"pre-filled {base}-* with {len(lines)} messages in {time.monotonic() - started:.1f}s")
    return orders, cancellations, len(lines)


def order_line(seller_id: str, order_id: str, purchased: str) -> bytes:
    """One valid MFN order_placed event (contract section 2) as JSON bytes."""
    return (b'{"schema_version":1,"type":"order_placed","event_id":"' + order_id.encode()
            + b'","order_id":"' + order_id.encode() + b'","seller_id":"' + seller_id.encode()
            + b'","marketplace":"US","fulfillment_channel":"MFN","purchase_date":"' + purchased.encode()
            + b'","occurred_at":"' + purchased.encode() + b'","order_status":"Unshipped"}')


def cancel_line(seller_id: str, order_id: str, purchased: str, occurred: str) -> bytes:
    """A seller-fault cancellation (initiator seller, NoInventory) of an Unshipped MFN order."""
    return (b'{"schema_version":1,"type":"order_cancelled","event_id":"c-' + order_id.encode()
            + b'","order_id":"' + order_id.encode() + b'","seller_id":"' + seller_id.encode()
            + b'","marketplace":"US","fulfillment_channel":"MFN","purchase_date":"' + purchased.encode()
            + b'","occurred_at":"' + occurred.encode() + b'","initiator":"seller","reason":"NoInventory",'
            b'"buyer_requested":false,"order_status_at_cancel":"Unshipped"}')


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1e6):06d}Z"


def topic_disk_bytes(topic: str) -> int | None:
    """Bytes of a topic's log segments (`*.log`, the records; not the preallocated indexes) in the
    local broker's log dir, None when not readable here."""
    if not KAFKA_DATA.is_dir():
        return None
    total = 0
    found = False
    for directory in KAFKA_DATA.glob(f"{topic}-*"):
        suffix = directory.name[len(topic) + 1:]
        if directory.is_dir() and suffix.isdigit():
            found = True
            total += sum(segment.stat().st_size for segment in directory.glob("*.log"))
    return total if found else None


# --- processes -------------------------------------------------------------------------------

def dir_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"process {pid} has no VmRSS (it exited?)")


class Worker(WorkerProcess):
    """`tests/workers.WorkerProcess` for the benchmarks: app-named topics, the workers' code from
    WORKER_SOURCE, BenchError, warn-level logs, and a metric of 0 while the worker cannot answer."""

    error = BenchError
    stop_seconds = 60.0

    def __init__(self, workdir: Path, *, orders: str, cancellations: str, app_id: str | None = None,
                 clock: str = "event", alertmanager_url: str = "", name: str = "worker",
                 data_dir: Path | None = None, extra_env: dict | None = None) -> None:
        self.app_id = app_id or tag("app")
        port = free_port()
        super().__init__(Topics.of_app(self.app_id, orders, cancellations),
                         data_dir or workdir / f"{name}-{port}-state", clock=clock, port=port,
                         alertmanager_url=alertmanager_url, log_path=workdir / f"{name}-{port}.log",
                         extra_env={"CANCELWATCH_BROKER": f"kafka://{BOOTSTRAP}", "CANCELWATCH_LOG_LEVEL": "warn",
                                    **(extra_env or {})})

    def internal_topics(self) -> list[str]:
        return [self.topics.reroute, self.topics.dead_letters, self.topics.account_health, self.topics.targets,
                f"{self.app_id}-order-buckets-changelog", f"{self.app_id}-__assignor-__leader",
                f"{self.app_id}-{names.CLOCK_TOPIC_SUFFIX}"]

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        if WORKER_SOURCE is None:
            return [CANCELWATCH, "worker"], self.env, ROOT
        # The exported commit comes first on the path (and is the cwd, which -m puts first).
        packaged = WORKER_SOURCE / "streams" / "cancelwatch"
        if packaged.is_dir():     # streams/cancelwatch/ (the package's own name)
            command = [sys.executable, "-m", "cancelwatch.cli", "worker"]
            cwd = WORKER_SOURCE / "streams"
        else:                     # an older commit: the package was streams/ itself
            command = [sys.executable, "-m", "streams.cli", "worker"]
            cwd = WORKER_SOURCE
        return command, {**self.env, "PYTHONPATH": str(cwd)}, cwd

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples; 0 when the worker cannot answer yet."""
        try:
            return super().metric(name, **labels)
        except requests.RequestException:
            return 0.0

    def processed(self) -> float:
        return self.metric("cancelwatch_events_total")

    def series(self) -> int:
        return sum(1 for line in self.metrics_text().splitlines() if line and not line.startswith("#"))

    def wipe(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)


def wait_processed(workers: list[Worker], target: int, timeout: float, poll: float = 0.25,
                   clock: ThreadClock | None = None) -> dict:
    """Poll events_total until the workers together reach `target`.

    Returns the rate from the first sample that showed any processed event to
    the sample that reached the target (start-up excluded), the samples, and
    whether the target was reached within `timeout`; with `clock`, also the
    threads' CPU over the same span (`threads`) when the target was reached."""
    started = time.monotonic()
    first = None
    samples = []
    count = 0.0
    while time.monotonic() - started < timeout:
        for worker in workers:
            worker.alive()
        count = sum(worker.processed() for worker in workers)
        now = time.monotonic()
        samples.append((round(now - started, 3), count))
        if count > 0 and first is None:
            first = (now, count)
            if clock is not None:
                clock.start()
        if count >= target:
            break
        time.sleep(poll)
    end = time.monotonic()
    if first is None:
        raise BenchError(f"workers processed nothing in {timeout}s; log {workers[0].log_path}:\n"
                         + workers[0].tail())
    seconds = end - first[0]
    events = count - first[1]
    result = {"events": int(count), "target": target, "reached": count >= target,
              "seconds": round(seconds, 3), "events_per_s": events / seconds if seconds > 0 else 0.0,
              "samples": samples}
    if clock is not None and result["reached"] and seconds > 0:
        result["threads"] = clock.stop()
    return result


def run_json(command: list[str], timeout: float, env: dict | None = None, started=None) -> dict:
    """Run a helper that prints one JSON object on its last line of stdout; `started(pid)`, if
    given, is called once the helper runs (to sample it while it works)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                               env={**os.environ, **(env or {})})
    try:
        if started is not None:
            started(process.pid)
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    if process.returncode != 0:
        raise BenchError(f"{' '.join(command[:3])} failed ({process.returncode}):\n" + stderr[-3000:])
    return json.loads(stdout.strip().splitlines()[-1])


def worker_source_env() -> dict | None:
    """The environment that makes a helper process import the code the workers run."""
    return {"PYTHONPATH": str(WORKER_SOURCE / "streams")} if WORKER_SOURCE is not None else None


# The bounds that size the worker's working set during a burst, as the measured code sets them:
# (module, constant) -> result field; a constant missing from an older commit reads None.
WORKER_BOUNDS = {("cancelwatch.worker.runtime", "GROUP_BUCKETS"): "group_buckets",
                 ("cancelwatch.worker.runtime", "GROUP_NEW_SELLERS"): "group_new_sellers",
                 ("cancelwatch.worker.app", "FETCH_MAX_RECORDS"): "fetch_records"}


def worker_bounds() -> dict:
    """WORKER_BOUNDS read from the code the workers run (a process of its own on its path)."""
    env = worker_source_env()
    script = ("import importlib, json, sys; print(json.dumps({field: getattr(importlib.import_module(module), "
              "name, None) for module, name, field in json.loads(sys.argv[1])}))")
    bounds = json.dumps([[module, name, field] for (module, name), field in WORKER_BOUNDS.items()])
    return run_json([sys.executable, "-c", script, bounds], timeout=60, env=env)


def hotpath(path: Path, events: int, timeout: float) -> dict | None:
    """bench/hotpath.py --json on the first `events` events of `path`, with the code the workers
    run; None for a workers' commit of the older layout (no streams/cancelwatch/), which it
    cannot drive."""
    env = {}
    if WORKER_SOURCE is not None:
        if not (WORKER_SOURCE / "streams" / "cancelwatch").is_dir():
            return None
        env["PYTHONPATH"] = str(WORKER_SOURCE / "streams")
    return run_json([sys.executable, "bench/hotpath.py", "--json", "--events", str(events), "--input", str(path)],
                    timeout=timeout, env=env)
