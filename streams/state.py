"""The worker's state: durable per-order buckets and the seller totals derived from them.

Durable: one key per (seller, marketplace, purchase bucket) whose value is
the encoded `ledger.Bucket` of that bucket's orders. A batch of events reads
and writes each touched bucket once, so writes (and changelog records) grow
with touched buckets, not events, and a seller's state never fans out.

Derived, in memory: per seller and marketplace, the totals of each bucket
(orders, seller-fault cancels, reasons, excluded causes) and, per sku, the
latest orders for the listing rule. They are rebuilt from the durable
buckets on start (`Book.load`), so they are exact after any crash: the
durable records are idempotent, and the totals are a function of them.

Pure: the durable store is any MutableMapping[bytes, bytes] (a faust table
in the worker, a dict in tests).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Iterable, Iterator, MutableMapping

from streams import events, ledger, names, window
from streams.ledger import Record
from streams.policy import Policy

SEPARATOR = "\x1f"
SEEN = "~"


# Bucket numbers shared by every seller's dict of buckets (one int object per hour, not per seller).
_BUCKET_NUMBERS: dict[int, int] = {}
_MARKETPLACES = {marketplace: marketplace for marketplace in names.MARKETPLACES}


def bucket_key(seller_id: str, marketplace: str, bucket: int) -> bytes:
    return f"{seller_id}{SEPARATOR}{marketplace}{SEPARATOR}{bucket}".encode()


def seen_key(seller_id: str, marketplace: str) -> bytes:
    return f"{seller_id}{SEPARATOR}{marketplace}{SEPARATOR}{SEEN}".encode()


def parse_key(key: bytes) -> tuple[str, str, int | None] | None:
    """(seller_id, marketplace, bucket or None for the seen marker); None for other keys."""
    parts = key.decode().split(SEPARATOR)
    if len(parts) != 3:
        return None
    seller_id, marketplace, bucket = parts
    return seller_id, marketplace, None if bucket == SEEN else int(bucket)


class BucketTotals:
    __slots__ = ("orders", "cancelled", "reasons", "causes")

    def __init__(self) -> None:
        self.orders = 0
        self.cancelled = 0
        self.reasons: dict[str, int] | None = None
        self.causes: dict[str, int] | None = None

    def add(self, part: ledger.Contribution, sign: int) -> None:
        self.orders += sign * part.orders
        self.cancelled += sign * part.cancelled
        if part.reason is not None:
            self.reasons = _bump(self.reasons, part.reason, sign)
        for cause in part.causes:
            self.causes = _bump(self.causes, cause, sign)

    @property
    def empty(self) -> bool:
        return not (self.orders or self.cancelled or self.reasons or self.causes)


def _bump(counts: dict[str, int] | None, key: str, sign: int) -> dict[str, int] | None:
    counts = {} if counts is None else counts
    value = counts.get(key, 0) + sign
    if value:
        counts[key] = value
    else:
        counts.pop(key, None)
    return counts or None


class SellerState:
    """Derived totals of one seller in one marketplace."""

    __slots__ = ("seller_id", "marketplace", "buckets", "listing", "summary")

    def __init__(self, seller_id: str, marketplace: str) -> None:
        self.seller_id = seller_id
        self.marketplace = _MARKETPLACES.get(marketplace, marketplace)   # one str per marketplace
        self.buckets: dict[int, BucketTotals | int] = {}
        self.summary = None     # the worker's last evaluation (metrics.SellerSummary), shared
        # sku -> latest orders containing it, newest first: (purchase, order_id, seller-fault for this sku)
        self.listing: dict[str, tuple[tuple[int, str, bool], ...]] | None = None

    def change(self, bucket: int, order_id: str, old: Record | None, new: Record | None,
               listing_depth: int) -> None:
        before, after = ledger.Contribution.of(old), ledger.Contribution.of(new)
        if before != after:
            bucket = _BUCKET_NUMBERS.setdefault(bucket, bucket)
            totals = self.buckets.get(bucket, 0)
            plain = not (before.cancelled or before.causes or after.cancelled or after.causes)
            if type(totals) is int and plain:
                # Most buckets hold orders and nothing else: keep just their count.
                count = totals - before.orders + after.orders
                if count:
                    self.buckets[bucket] = count
                else:
                    self.buckets.pop(bucket, None)
            else:
                if type(totals) is int:
                    count, totals = totals, BucketTotals()
                    totals.orders = count
                    self.buckets[bucket] = totals
                totals.add(before, -1)
                totals.add(after, +1)
                if totals.empty:
                    del self.buckets[bucket]
                elif not (totals.cancelled or totals.reasons or totals.causes):
                    self.buckets[bucket] = totals.orders
        if listing_depth and new is not None and new.skus:
            self._index_skus(order_id, new, listing_depth)

    def _index_skus(self, order_id: str, record: Record, depth: int) -> None:
        if self.listing is None:
            self.listing = {}
        for sku in record.skus:
            latest = self.listing.get(sku, ())
            entry = (record.purchase, order_id, record.sku_faulted(sku))
            others = [e for e in latest if e[1] != order_id]
            if len(others) == len(latest) and len(latest) >= depth and entry[:2] < latest[-1][:2]:
                continue
            others.append(entry)
            others.sort(reverse=True)
            self.listing[sku] = tuple(others[:depth])

    def drop_before(self, oldest_bucket: int, oldest_purchase: int) -> list[int]:
        dropped = [b for b in self.buckets if b < oldest_bucket]
        for bucket in dropped:
            del self.buckets[bucket]
        if self.listing:
            for sku in list(self.listing):
                kept = tuple(e for e in self.listing[sku] if e[0] >= oldest_purchase)
                if kept:
                    self.listing[sku] = kept
                else:
                    del self.listing[sku]
        return dropped


@dataclasses.dataclass
class Pending:
    """A batch being applied: its result so far and its open buckets, by (seller, marketplace,
    bucket): (key, seller state, bucket, the bucket's records with the batch applied,
    {order_id: record before the batch})."""

    result: "BatchResult"
    buckets: dict


@dataclasses.dataclass
class BatchResult:
    outcomes: Counter  # (topic_role, outcome) -> events
    touched: set       # SellerStates whose totals may have changed
    new_orders: Counter      # marketplace -> orders that entered a denominator
    new_faults: Counter      # (marketplace, reason) -> orders that became seller-fault
    new_excluded: Counter    # (marketplace, cause) -> orders newly excluded for a cause
    writes: int = 0


class Book:
    """All sellers' derived totals, and the rules to change them from events."""

    def __init__(self, policy: Policy, store: MutableMapping[bytes, bytes]) -> None:
        self.policy = policy
        self.store = store
        # marketplace -> seller_id -> state (no key tuple per seller)
        self._markets: dict[str, dict[str, SellerState]] = {}
        self.listing_depth = policy.listing_consecutive
        # marketplace -> buckets of its longest rate window (older events are "late")
        self._rate_buckets = {marketplace: max(policy.window_buckets(w) for w in policy.windows(marketplace))
                              for marketplace in names.MARKETPLACES}

    # -- reading -------------------------------------------------------------
    def seller(self, seller_id: str, marketplace: str) -> SellerState | None:
        by_seller = self._markets.get(marketplace)
        return by_seller.get(seller_id) if by_seller is not None else None

    def in_marketplace(self, marketplace: str) -> Iterator[SellerState]:
        return iter(self._markets.get(marketplace, {}).values())

    def states(self) -> Iterator[SellerState]:
        """Every seller's state, in every marketplace."""
        for by_seller in self._markets.values():
            yield from by_seller.values()

    def __len__(self) -> int:
        return sum(len(by_seller) for by_seller in self._markets.values())

    def _state(self, seller_id: str, marketplace: str, mark: bool = False) -> SellerState:
        """The seller's state, created when new. `mark`: the event leaves no order bucket behind
        (AFN, too old), so a marker key keeps the seller known after a restart; a seller with a
        bucket is known from the bucket's key."""
        state = self.seller(seller_id, marketplace)
        if state is None:
            state = self._new_state(seller_id, marketplace)
            if mark:
                self.store[seen_key(seller_id, marketplace)] = b""
        return state

    def _new_state(self, seller_id: str, marketplace: str) -> SellerState:
        state = SellerState(seller_id, marketplace)
        self._markets.setdefault(state.marketplace, {})[seller_id] = state
        return state

    def _listing_depth(self, marketplace: str) -> int:
        return self.listing_depth if marketplace in self.policy.listing_marketplaces else 0

    # -- rebuilding from durable state ---------------------------------------
    def load(self, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Rebuild derived totals from durable (key, value) pairs; returns orders loaded."""
        orders = 0
        for key, value in items:
            parsed = parse_key(key)
            if parsed is None:
                continue
            seller_id, marketplace, bucket = parsed
            state = self.seller(seller_id, marketplace)
            if state is None:
                state = self._new_state(seller_id, marketplace)
            if bucket is None:
                continue
            depth = self._listing_depth(marketplace)
            for order_id, record in ledger.decode_bucket(value).items():
                state.change(bucket, order_id, None, record, depth)
                orders += 1
        return orders

    # -- applying events -----------------------------------------------------
    def apply(self, batch: Iterable[tuple[str, events.Event]], now: float) -> BatchResult:
        """Apply (topic_role, event) pairs with `now` as the clock; write each touched bucket once."""
        pending = self.begin()
        self.feed(pending, batch, now)
        return self.finish(pending)

    def begin(self) -> "Pending":
        """A batch that `feed` fills over several slices of events and `finish` writes at once."""
        return Pending(BatchResult(Counter(), set(), Counter(), Counter(), Counter()), {})

    def feed(self, pending: "Pending", batch: Iterable[tuple[str, events.Event]], now: float) -> None:
        """Apply events to the batch's private copies of their buckets (nothing is written yet)."""
        policy = self.policy
        bucket_seconds = policy.bucket_seconds
        now_bucket = window.bucket_of(now, bucket_seconds)
        keep_buckets = policy.longest_window_days * 86400 // bucket_seconds
        outcomes = pending.result.outcomes
        open_buckets = pending.buckets
        rate_buckets = self._rate_buckets
        for role, event in batch:
            if event.fulfillment_channel == "AFN":
                self._state(event.seller_id, event.marketplace, mark=True)
                outcomes[(role, "afn")] += 1
                continue
            bucket = window.bucket_of(event.purchase_date.timestamp(), bucket_seconds)
            late = bucket <= now_bucket - rate_buckets[event.marketplace]
            if bucket <= now_bucket - keep_buckets:
                self._state(event.seller_id, event.marketplace, mark=True)
                outcomes[(role, "late")] += 1
                continue
            opened = open_buckets.get((event.seller_id, event.marketplace, bucket))
            if opened is None:
                key = bucket_key(event.seller_id, event.marketplace, bucket)
                state = self._state(event.seller_id, event.marketplace)
                opened = open_buckets[(event.seller_id, event.marketplace, bucket)] = (
                    key, state, bucket, self._open(key), {})
            _, state, bucket, orders, originals = opened
            old = orders.get(event.order_id)
            new = ledger.apply(policy, old, event)
            if new == old:
                outcomes[(role, "late" if late else "unchanged")] += 1
                continue
            if event.order_id not in originals:
                originals[event.order_id] = old
            orders[event.order_id] = new
            outcomes[(role, "late" if late else "applied")] += 1

    def finish(self, pending: "Pending") -> BatchResult:
        """Write each changed bucket once and move the derived totals."""
        result = pending.result
        for key, state, bucket, orders, originals in pending.buckets.values():
            if not originals:
                continue
            self.store[key] = ledger.encode_bucket(orders)
            result.writes += 1
            depth = self._listing_depth(state.marketplace)
            for order_id, old in originals.items():
                new = orders[order_id]
                state.change(bucket, order_id, old, new, depth)
                self._count_news(state.marketplace, old, new, result)
            result.touched.add(state)
        pending.buckets.clear()
        return result

    def _open(self, key: bytes) -> ledger.Bucket:
        """The bucket's records, decoded from the store (a private copy for the batch)."""
        raw = self.store.get(key)
        return ledger.decode_bucket(raw) if raw else {}

    @staticmethod
    def _count_news(marketplace: str, old: Record | None, new: Record, result: BatchResult) -> None:
        before, after = ledger.Contribution.of(old), ledger.Contribution.of(new)
        if after.orders and not before.orders:
            result.new_orders[marketplace] += 1
        if after.cancelled and not before.cancelled:
            result.new_faults[(marketplace, after.reason)] += 1
        for cause in set(after.causes) - set(before.causes):
            result.new_excluded[(marketplace, cause)] += 1

    # -- expiry ----------------------------------------------------------------
    def expire(self, now: float) -> int:
        """Delete order buckets older than the longest window plus grace; returns buckets deleted."""
        policy = self.policy
        oldest_purchase = int(now) - policy.retention_seconds
        oldest_bucket = window.bucket_of(oldest_purchase, policy.bucket_seconds)
        deleted = 0
        for state in self.states():
            dropped = state.drop_before(oldest_bucket, oldest_purchase)
            for bucket in dropped:
                key = bucket_key(state.seller_id, state.marketplace, bucket)
                if key in self.store:
                    del self.store[key]
                deleted += 1
            if dropped and not state.buckets:   # its last bucket gone: a marker keeps it known
                self.store[seen_key(state.seller_id, state.marketplace)] = b""
        return deleted
