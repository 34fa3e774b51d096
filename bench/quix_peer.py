"""The fair peer: the worker's counting job as a Quix Streams application, written as a Quix user would.

    python bench/quix_peer.py BOOTSTRAP GROUP STATE_DIR TARGET SECONDS SAMPLE ANSWERS ORDERS CANCELLATIONS

What a Quix user with the project's shared library writes: one `Application`,
a dataframe per source topic (each decoded by the contract's strict decoder,
`cancelwatch.core.events`), concatenated, and one stateful step keyed by the
message key (the seller: the bench's producers key by `seller_id`). Quix's
default State holds, per seller, in RocksDB with its changelog topic:

- `order/{marketplace}/{order_id}`: the order's record (`ledger.Record`, the
  shared library's fold of an order's events into facts, so a duplicate event
  or a second item-level cancel of one order changes nothing);
- `bucket/{marketplace}/{hour}`: the totals of one purchase hour: orders,
  seller-fault cancelled orders, their reasons and the excluded causes. An
  order sits in the hour of its earliest purchase date; when a record changes
  (or moves to an earlier hour) the totals move from its old contribution to
  its new one.

The counting rules are the shared policy's (`ledger.cancel_cause` over the
packaged `policy.yaml`): only seller-fault cancels of MFN orders count;
buyer-requested, buyer-initiated, other Amazon and Pending cancels do not; AFN
events and events whose purchase hour is older than the policy keeps change
nothing. The clock is the event clock (the largest `occurred_at` seen), as the
worker's in the bench.

At the end it writes ANSWERS (JSON): per sampled `seller/marketplace` of the
SAMPLE file (a JSON list of [seller, marketplace]), each window of the
marketplace (orders, cancelled), the first window's reasons and excluded
causes, all summed from the hour totals as last written to Quix's state. It
prints one JSON line: events and the rate from the first on, as quix_count.py.

Not done here, unlike the worker: alerts, the listing rule, HTTP answers,
metrics, a dead-letter topic (a message the decoder refuses is counted and
dropped; the bench's topics hold none) and rerouting of mis-keyed events
(counted; the bench's topics hold none). Order records are not expired (a
run spans two days of orders, well inside every window).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import msgspec
from common import default_policy

from cancelwatch import names
from cancelwatch.core import events, ledger
from cancelwatch.core.policy import Policy


class Rejected:
    """A message the contract's decoder refused, and why."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class Peer:
    """The stateful step and what the run counted. `record(event, state)` takes any object with
    Quix State's get/set/get_bytes/set_bytes, scoped to the event's seller."""

    def __init__(self, policy: Policy, sample: set[tuple[str, str]] = frozenset()) -> None:
        self.policy = policy
        self.bucket_seconds = policy.bucket_seconds
        self.keep_buckets = policy.retention_seconds // policy.bucket_seconds
        self.clock = 0.0
        self.outcomes: dict[str, int] = {}
        self.sample = sample
        # sampled (seller, marketplace) -> hour -> totals as last written to the state
        self.written: dict[tuple[str, str], dict[int, list]] = {pair: {} for pair in sample}
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(ledger.Record).decode

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def record(self, event, state) -> None:
        if isinstance(event, Rejected):
            self._count("rejected")
            return
        occurred = event.occurred_at.timestamp()
        if occurred > self.clock:
            self.clock = occurred
        if event.fulfillment_channel == "AFN":
            self._count("afn")
            return
        bucket = int(event.purchase_date.timestamp() // self.bucket_seconds)
        if bucket <= int(self.clock // self.bucket_seconds) - self.keep_buckets:
            self._count("late")
            return
        marketplace = event.marketplace
        order_key = f"order/{marketplace}/{event.order_id}"
        stored = state.get_bytes(order_key)
        old = self._decode(stored) if stored is not None else None
        new = ledger.apply(self.policy, old, event)
        if new == old:
            self._count("unchanged")
            return
        state.set_bytes(order_key, self._encode(new))
        before, after = ledger.Contribution.of(old), ledger.Contribution.of(new)
        new_bucket = new.purchase // self.bucket_seconds
        old_bucket = new_bucket if old is None else old.purchase // self.bucket_seconds
        if old_bucket != new_bucket:
            self._move(state, event.seller_id, marketplace, old_bucket, before, -1)
            self._move(state, event.seller_id, marketplace, new_bucket, after, +1)
        elif before != after:
            self._move(state, event.seller_id, marketplace, new_bucket, before, -1, after)
        self._count("applied")

    def _move(self, state, seller_id: str, marketplace: str, bucket: int, part: ledger.Contribution,
              sign: int, then: ledger.Contribution | None = None) -> None:
        """Add `part` (sign -1: take it away) to an hour's totals, then `then` if given."""
        key = f"bucket/{marketplace}/{bucket}"
        totals = state.get(key) or [0, 0, {}, {}]
        for contribution, weight in ((part, sign), (then, +1)):
            if contribution is None:
                continue
            totals[0] += weight * contribution.orders
            totals[1] += weight * contribution.cancelled
            if contribution.reason is not None:
                _bump(totals[2], contribution.reason, weight)
            for cause in contribution.causes:
                _bump(totals[3], cause, weight)
        state.set(key, totals)
        if (seller_id, marketplace) in self.sample:
            self.written[(seller_id, marketplace)][bucket] = totals

    def answers(self) -> dict[str, dict]:
        """Per sampled seller, at the final clock: each window's orders and cancelled, the first
        window's reasons and excluded causes."""
        now_bucket = int(self.clock // self.bucket_seconds)
        result = {}
        for (seller_id, marketplace), hours in self.written.items():
            windows, reasons, excluded = [], None, None
            for window in self.policy.windows(marketplace):
                width = self.policy.window_buckets(window)
                inside = [totals for hour, totals in hours.items() if now_bucket - width < hour <= now_bucket]
                windows.append({"days": window.days, "orders": sum(t[0] for t in inside),
                                "cancelled": sum(t[1] for t in inside)})
                if reasons is None:
                    reasons, excluded = _sum_counts(t[2] for t in inside), _sum_counts(t[3] for t in inside)
            result[f"{seller_id}/{marketplace}"] = {"windows": windows, "reasons": reasons,
                                                     "excluded": excluded}
        return result


def _bump(counts: dict, key: str, weight: int) -> None:
    value = counts.get(key, 0) + weight
    if value:
        counts[key] = value
    else:
        counts.pop(key, None)


def _sum_counts(parts) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in parts:
        for key, value in part.items():
            total[key] = total.get(key, 0) + value
    return {key: value for key, value in sorted(total.items()) if value}


def main(argv: list[str]) -> int:
    from quixstreams import Application
    from quixstreams.models.serializers import Deserializer

    class ContractEvents(Deserializer):
        """A source topic's messages through the contract's strict decoder (the shared library)."""

        def __init__(self, role: str) -> None:
            super().__init__()
            self.role = role

        def __call__(self, value: bytes, ctx):
            try:
                return events.decode_on(self.role, value)
            except events.BadEvent as error:
                return Rejected(error.reason)

    bootstrap, group, state_dir, target, cap, sample_file, answers_file, orders, cancellations = argv
    target, cap = int(target), float(cap)
    sample = {(seller, marketplace) for seller, marketplace in json.loads(Path(sample_file).read_text())}
    peer = Peer(default_policy(), sample)
    app = Application(broker_address=bootstrap, consumer_group=group, auto_offset_reset="earliest",
                      state_dir=state_dir, loglevel="WARNING")
    progress = {"count": 0, "first": None, "last": None, "miskeyed": 0}

    def measure(_value, key, _timestamp, _headers) -> None:
        now = time.monotonic()
        if progress["first"] is None:
            progress["first"] = now
        progress["count"] += 1
        progress["last"] = now
        if not isinstance(_value, Rejected) and key != _value.seller_id.encode():
            progress["miskeyed"] += 1
        if progress["count"] >= target or now - progress["first"] > cap:
            app.stop()

    sdf = app.dataframe(app.topic(orders, value_deserializer=ContractEvents(names.ORDERS_TOPIC))).concat(
        app.dataframe(app.topic(cancellations, value_deserializer=ContractEvents(names.CANCELLATIONS_TOPIC))))
    sdf.update(peer.record, stateful=True)
    sdf.update(measure, metadata=True)
    app.run()
    seconds = progress["last"] - progress["first"]
    Path(answers_file).write_text(json.dumps({"clock": peer.clock, "answers": peer.answers()}))
    print(json.dumps({"events": progress["count"], "seconds": seconds,
                      "events_per_s": progress["count"] / seconds, "outcomes": peer.outcomes,
                      "miskeyed": progress["miskeyed"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
