"""The table of faults injected and survived (docs/faults.md), written by the tests themselves.

Each fault test measures its run (faults injected, events published, events
lost, double counts, duration) and calls `record_fault`; the decoder tests
call `record_bad_inputs`. Rows are kept in docs/faults.json, one per test, the
newest run replacing the last, and docs/faults.md is re-rendered from that
file after every write. `python -m tests.faults_table` re-renders it by hand.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "docs" / "faults.json"
TABLE = ROOT / "docs" / "faults.md"

GUARANTEE = """\
## Processing guarantee

**At-least-once delivery with idempotent state.** The worker commits Kafka
offsets after it has applied a batch (faust's at-least-once, not
`exactly_once`, whose duplicate and fencing problems on rebalance and kill are
open upstream). A crash therefore replays some events. Replays change nothing:

- The durable state is one record per order (`streams/cancelwatch/core/ledger.py`), in a faust
  table on RocksDB with a changelog topic. Applying an event to an order record
  only adds facts (a cancellation seen, a sku seen, that it was placed) or
  lowers a minimum (the earliest purchase date); applying the same event twice,
  or any events again in any order, gives the same record.
- Derived totals (orders, seller-fault cancels, reasons and exclusions per
  seller, window and bucket) are never stored as counters: `state.Book.load`
  rebuilds them from the order records after every recovery or rebalance, so a
  crash between two table writes cannot leave a count off by one.
- Duplicate deliveries by producers (the same `event_id` again) are the same
  case: the order record already holds the fact.
- In event-clock mode the clock (largest `occurred_at`) is stored per
  partition in the same table, so `as_of` survives a restart too. Each worker
  also publishes its partitions' clocks to `<app id>-event-clock` after each
  commit and reads everyone's, so all workers answer at the cluster's clock,
  however the partitions are spread (`tests/worker/test_worker.py`, two workers).

An offset is committed only when every record before it, from the last
commit on, was applied: a record fetched and then given up (a rebalance, a
discarded group) holds the commit until it is read again and applied, so no
commit skips it (`dropped-fetch`).

When a worker dies, its partitions move to the surviving workers (or to
its own restart) once its consumer-group session has expired:
`CANCELWATCH_SESSION_TIMEOUT_SECONDS` (10 by default; the tests use 15). Until
then the other workers answer `503` for the sellers it owned (they cannot
reach it).

On a cluster of three brokers every topic has three replicas and
`min.insync.replicas=2`, and every producer writes with `acks=all` and
idempotence: a changelog record the broker acknowledged is on two brokers
before any offset is committed, so a broker lost loses none, and its
partitions get new leaders while the worker goes on (`broker-failover`).

Alerts are delivered at least once as well: the worker re-sends every firing
alert to Alertmanager every `CANCELWATCH_ALERT_RESEND_SECONDS` and retries a
failed POST with backoff until it is accepted, so an Alertmanager outage
delays alerts, it does not lose them.
"""


def _load() -> dict:
    if RECORDS.exists():
        return json.loads(RECORDS.read_text())
    return {"faults": {}, "bad_inputs": {}}


def recording() -> bool:
    """Whether this run records its measurements (CANCELWATCH_RECORD_FAULTS=1): a plain test run
    leaves the committed table as it is, so `git status` stays clean after `make test`."""
    return os.environ.get("CANCELWATCH_RECORD_FAULTS") == "1"


def _save(records: dict) -> None:
    if not recording():
        return
    text = json.dumps(records, indent=2, sort_keys=True) + "\n"
    RECORDS.write_text(text)
    TABLE.write_text(render(json.loads(text)))


def _measured() -> str:
    return f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node() or 'host'}, {os.cpu_count()} cores"


def record_fault(test: str, *, fault: str, injected: int, events: int, lost: int, double_counted: int,
                 sellers: int, seconds: float, checked: str) -> None:
    records = _load()
    records["faults"][test] = {
        "fault": fault, "injected": injected, "events": events, "lost": lost,
        "double_counted": double_counted, "sellers": sellers, "seconds": round(seconds, 1),
        "checked": checked, "measured": _measured(),
    }
    _save(records)


def record_bad_inputs(counts: dict[str, int]) -> None:
    records = _load()
    records["bad_inputs"] = {"counts": counts, "measured": _measured()}
    _save(records)


def record_bad_inputs_http(requests_sent: int, seconds: float) -> None:
    records = _load()
    records["bad_http"] = {"requests": requests_sent, "seconds": round(seconds, 1), "measured": _measured()}
    _save(records)


def render(records: dict) -> str:
    lines = [
        "# Faults injected and survived",
        "",
        "Generated by the tests (`tests/worker/test_faults.py`, `tests/test_scaleout.py`,",
        "`tests/test_brokers.py`, `tests/test_decoder_fuzz.py`) from their own measurements in",
        "`docs/faults.json`; do not edit by hand. Re-record with `CANCELWATCH_RECORD_FAULTS=1",
        ".venv/bin/pytest tests/worker/test_faults.py tests/test_scaleout.py tests/test_brokers.py",
        "tests/test_decoder_fuzz.py` (the fault tests need the local stack: `make stack-up`;",
        "`tests/test_brokers.py` starts a three-broker cluster of its own); a plain test run",
        "checks, and writes nothing.",
        "",
        "After each fault the whole answer of `GET /sellers/{id}` for every seller (orders,",
        "cancelled, headroom and status of every window, reasons, exclusions) is compared with",
        "`tests/oracle.py` computed from the events sent. **Lost** = orders, seller-fault",
        "cancels, reasons and exclusions the worker shows fewer of than the oracle (a seller",
        "it does not know counts all of its own); **double counts** = the same, more of.",
        "A test asserts both are 0 and writes its row only when it passes, so a row here is a",
        "run that ended exact.",
        "",
        "| test | fault injected | times | events | sellers | lost | double counts | duration | checked | measured |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for test, row in sorted(records.get("faults", {}).items()):
        lines.append(
            f"| `{test}` | {row['fault']} | {row['injected']} | {row['events']:,} | {row['sellers']} "
            f"| {row['lost']} | {row['double_counted']} | {row['seconds']:.0f} s | {row['checked']} "
            f"| {row['measured']} |")
    lines += ["", "## Bad inputs tried", ""]
    bad = records.get("bad_inputs", {})
    if bad:
        lines += ["| input | cases |", "|---|---|"]
        lines += [f"| {name} | {count:,} |" for name, count in bad["counts"].items()]
        lines += ["", "Every one ended as a decoded event, a dead letter with a kind and a reason, or a",
                  f"start-up error naming the setting or the policy line (measured {bad['measured']}).", ""]
    http = records.get("bad_http")
    if http:
        lines += [f"HTTP API: {http['requests']} requests with hostile seller ids, marketplaces, limits and",
                  "what-if counts (empty, 1500 characters, NUL, path traversal, emoji, `1e400`, `2**70`,",
                  "header injection) were all answered with JSON and 200, 400 or 404; none with a",
                  f"500 (measured {http['measured']}).", ""]
    lines += ["", GUARANTEE]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    TABLE.write_text(render(_load()))
