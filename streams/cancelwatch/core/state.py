"""The worker's state: durable per-order buckets and the seller totals derived from them.

Durable (`store`, changelogged): one key per (seller, marketplace, purchase
bucket) whose value is the encoded `ledger.Bucket` of that bucket's orders. A
batch of events reads and writes each touched bucket once, so writes (and
changelog records) grow with touched buckets, not events, and a seller's
state never fans out. An order has one record, in the bucket of the earliest
purchase date among its events (contract section 4): an event with an
earlier purchase date moves the record there.

Local (`index`, not changelogged): per order, the bucket holding its record,
so an event whose purchase date falls in another bucket finds the order. It
is derived from the durable buckets (`Book.load` rewrites it) and consulted
only when the event's own bucket does not hold the order, and the order may be
in it: a Bloom filter in memory (`OrderFilter`) holds every order key the
index was given since the book was built, so a new order (nearly every event
that misses its bucket) costs no read of the index.

A bucket holds records if and only if its seller's state has totals for it
(every record adds an order or an excluded cause), so a bucket the state has
no totals for is opened empty, without reading the store.

Derived, in memory: per seller and marketplace, the totals of each bucket
(orders, seller-fault cancels, reasons, excluded causes) and, per sku that
has a seller-fault order, the latest orders for the listing rule (a sku
without one cannot fire it, so its orders cost nothing there until its first
seller-fault cancel, when its list is read off the buckets). They are
rebuilt from the durable buckets on start (`Book.load`), so they are exact
after any crash: the durable records are idempotent, and the totals are a
function of them.

Keys: one ASCII kind character, the UTF-8 length of the seller id in three
digits, the seller id, "/" and the marketplace, then "/" and the bucket
number (bucket keys) or "/" and the order id (order index keys). The length
prefix makes keys unambiguous whatever characters a seller id holds.
Internal keys start with "~" (`clock_key`), which no kind character is.

Pure: the store and the index are any MutableMapping[bytes, bytes] (the
worker's table and its local database, dicts in tests).
"""

from __future__ import annotations

import dataclasses
from collections import Counter, OrderedDict
from typing import Iterable, Iterator, MutableMapping, NamedTuple

from cancelwatch import names

from cancelwatch.core import events, ledger, order_filter, window
from cancelwatch.core.ledger import Record
from cancelwatch.core.policy import Policy, Window

KIND_BUCKET = "b"      # a purchase bucket's order records
KIND_SEEN = "s"        # a seller known from events that left no bucket (AFN, late) or whose buckets expired
KIND_ALERTS = "a"      # a seller's firing alerts (written by the worker)
KIND_ORDER = "o"       # the order index: the bucket holding an order's record (local only)
INTERNAL = "~"         # first character of internal keys (`clock_key`)
KIND_HEALTH = "h"      # a seller's latest account-health report of a marketplace (written by the worker)
_KINDS = frozenset((KIND_BUCKET, KIND_SEEN, KIND_ALERTS, KIND_ORDER, KIND_HEALTH))
_INTERNAL_BYTE = ord(INTERNAL)
_CLOCK_PREFIX = b"~clock/"
_MAX_SELLER_BYTES = 999    # three digits of length; the contract's 64 characters take at most 256 bytes

# Bucket numbers shared by every seller's dict of buckets (one int object per hour, not per seller).
_BUCKET_NUMBERS: dict[int, int] = {}
_MARKETPLACES = {marketplace: marketplace for marketplace in names.MARKETPLACES}
# Buckets of fewer orders are cached (Book._remember) only once opened again: a burst of new
# orders (most sellers' buckets hold a few) caches none of them, since a small cached object
# left among long-lived ones keeps its heap page resident after the cache is dropped; a bucket
# opened again (its orders shipped or cancelled later) is likely to be opened once more.
CACHE_MIN_ORDERS = 8
# Sellers with at least this many buckets keep running window totals (`WindowSums`) between
# evaluations; walking fewer costs about as much as sliding them.
SUMS_MIN_BUCKETS = 16


class KeyLayoutError(ValueError):
    """A store key that is not in this version's layout."""


class ParsedKey(NamedTuple):
    kind: str                   # KIND_BUCKET, KIND_SEEN, KIND_ALERTS or KIND_ORDER
    seller_id: str
    marketplace: str
    bucket: int | None = None   # bucket keys only
    order_id: str | None = None  # order index keys only


def _seller_bytes(seller_id: str) -> bytes:
    raw = seller_id.encode()
    if len(raw) > _MAX_SELLER_BYTES:
        raise KeyLayoutError(f"seller id {seller_id[:40]!r}... takes {len(raw)} bytes in UTF-8; "
                             f"a key holds at most {_MAX_SELLER_BYTES} (the contract allows 64 characters)")
    return raw


def bucket_key(seller_id: str, marketplace: str, bucket: int) -> bytes:
    raw = _seller_bytes(seller_id)
    return b"b%03d%s/%s/%d" % (len(raw), raw, marketplace.encode(), bucket)


def seen_key(seller_id: str, marketplace: str) -> bytes:
    raw = _seller_bytes(seller_id)
    return b"s%03d%s/%s" % (len(raw), raw, marketplace.encode())


def health_key(seller_id: str, marketplace: str) -> bytes:
    raw = _seller_bytes(seller_id)
    return b"h%03d%s/%s" % (len(raw), raw, marketplace.encode())


def alerts_key(seller_id: str, marketplace: str) -> bytes:
    raw = _seller_bytes(seller_id)
    return b"a%03d%s/%s" % (len(raw), raw, marketplace.encode())


def order_key(seller_id: str, marketplace: str, order_id: str) -> bytes:
    raw = _seller_bytes(seller_id)
    return b"o%03d%s/%s/%s" % (len(raw), raw, marketplace.encode(), order_id.encode())


def clock_key(partition: int) -> bytes:
    """The key of a partition's event clock."""
    return b"%s%d" % (_CLOCK_PREFIX, partition)


def clock_partition(key: bytes) -> int | None:
    """The partition a clock key names; None for any other key."""
    return int(key[len(_CLOCK_PREFIX):]) if key.startswith(_CLOCK_PREFIX) else None


def encode_clock(seconds: float) -> bytes:
    """An event clock as stored under its clock key and published on the clock topic
    (worker/feeds.py): whole microseconds since the epoch, in decimal digits (the nearest: an
    `occurred_at` has microseconds, and its float seconds are within a hair of them)."""
    return str(round(seconds * 1_000_000)).encode()


def decode_clock(value: bytes) -> float:
    """An event clock back in seconds; ValueError or TypeError if `value` is not one."""
    return int(value) / 1_000_000


def seller_of_key(key: bytes) -> str | None:
    """The seller id of a seller's key (any kind), without parsing the rest; None for internal keys."""
    if key[0] == _INTERNAL_BYTE:
        return None
    return key[4:4 + int(key[1:4])].decode()


def _layout_error(key: bytes, what: str) -> KeyLayoutError:
    return KeyLayoutError(
        f"store key {key[:120]!r}: {what}. Keys are kind, 3-digit seller length, seller, "
        f"/marketplace[/bucket or /order]; a key in another layout was written by an older "
        f"cancelwatch: delete the state table's changelog topic and the local state directory, "
        f"then replay the source topics")


def parse_key(key: bytes) -> ParsedKey | None:
    """The parts of a seller's key; None for internal keys ("~...").
    Raises KeyLayoutError, naming the key, for a key in no known layout."""
    if not key:
        raise _layout_error(key, "empty")
    if key[0] == _INTERNAL_BYTE:
        return None
    kind = chr(key[0])
    length = key[1:4]
    if kind not in _KINDS or len(length) != 3 or not length.isdigit():
        raise _layout_error(key, "no kind and seller length at its start")
    end = 4 + int(length)
    marketplace = key[end + 1:end + 3]
    if len(key) < end + 3 or key[end:end + 1] != b"/" or not (marketplace.isascii() and marketplace.isalpha()):
        raise _layout_error(key, "no /marketplace after the seller id")
    try:
        seller_id = key[4:end].decode()
        rest = key[end + 3:]
        if kind in (KIND_SEEN, KIND_ALERTS, KIND_HEALTH):
            if rest:
                raise _layout_error(key, "text after the marketplace")
            return ParsedKey(kind, seller_id, marketplace.decode())
        if rest[:1] != b"/" or len(rest) < 2:
            raise _layout_error(key, "no /bucket or /order after the marketplace")
        if kind == KIND_BUCKET:
            if not rest[1:].isdigit():
                raise _layout_error(key, "a bucket number that is not a whole number")
            return ParsedKey(kind, seller_id, marketplace.decode(), int(rest[1:]))
        return ParsedKey(kind, seller_id, marketplace.decode(), None, rest[1:].decode())
    except UnicodeDecodeError:
        raise _layout_error(key, "not UTF-8") from None


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


class WindowSums(BucketTotals):
    """A seller's running totals of one window (`length` buckets) ending at bucket `anchor`,
    so an evaluation costs the buckets the window gained and lost since the last one, not
    the window's 168 hours (or India's 720). `SellerState.change` keeps it up to date for a
    bucket inside it; `move` slides it to a later bucket. `next`: the sums of the seller's
    next window (India's 30 days after its 7), or None. Equal, at any `anchor`, to
    `window.totals` over the same buckets (tests/core/test_state.py checks it by property)."""

    __slots__ = ("length", "anchor", "next")

    def __init__(self, buckets: dict, length: int, anchor: int) -> None:
        super().__init__()
        self.length = length
        self.next: WindowSums | None = None
        self._walk(buckets, anchor)

    def _walk(self, buckets: dict, anchor: int) -> None:
        self.orders = self.cancelled = 0
        self.reasons = self.causes = None
        self.anchor = anchor
        for entry in window.entries_between(buckets, anchor - self.length + 1, anchor):
            self.add_entry(entry, +1)

    def covers(self, bucket: int) -> bool:
        return self.anchor - self.length < bucket <= self.anchor

    def add_entry(self, entry: BucketTotals | int, sign: int) -> None:
        """Add (sign +1) or take out (-1) a bucket's totals."""
        if type(entry) is int:
            self.orders += sign * entry
            return
        self.orders += sign * entry.orders
        self.cancelled += sign * entry.cancelled
        for counts, attribute in ((entry.reasons, "reasons"), (entry.causes, "causes")):
            if counts:
                mine = getattr(self, attribute)
                for key, count in counts.items():
                    mine = _bump(mine, key, sign * count)
                setattr(self, attribute, mine)

    def move(self, buckets: dict, anchor: int) -> None:
        """Slide the window to end at `anchor`: take out the buckets that left it, add those
        that entered. Walked again when the clock went back or moved a window or more."""
        if anchor == self.anchor:
            return
        if anchor < self.anchor or anchor - self.anchor >= self.length:
            self._walk(buckets, anchor)
            return
        for entry in window.entries_between(buckets, self.anchor - self.length + 1, anchor - self.length):
            self.add_entry(entry, -1)
        for entry in window.entries_between(buckets, self.anchor + 1, anchor):
            self.add_entry(entry, +1)
        self.anchor = anchor

    def totals(self, limits: Window) -> window.WindowTotals:
        """The window's totals under `limits` (a window of this length)."""
        return window.WindowTotals(limits, self.orders, self.cancelled,
                                   dict(self.reasons) if self.reasons else {},
                                   dict(self.causes) if self.causes else {})


def _later(oldest: int | None, other: int | None) -> int | None:
    """The later of two refill starts (`SellerState.relist`); None, from the newest bucket, wins."""
    return None if oldest is None or other is None else max(oldest, other)


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

    __slots__ = ("seller_id", "marketplace", "buckets", "listing", "summary", "faulted", "sums")

    def __init__(self, seller_id: str, marketplace: str) -> None:
        self.seller_id = seller_id
        self.marketplace = _MARKETPLACES.get(marketplace, marketplace)   # one str per marketplace
        self.buckets: dict[int, BucketTotals | int] = {}
        self.summary = None     # the worker's last evaluation (metrics.SellerSummary), shared
        # sku -> latest orders containing it, newest first: (purchase, order_id, seller-fault for this sku),
        # for the skus with a seller-fault order (tracked skus; `relist`): a list of orders none of
        # which is seller-fault cannot fire the listing rule, nor can one made of orders older than
        # every seller-fault one. Orders cancelled while Pending never were orders: no place here.
        self.listing: dict[str, tuple[tuple[int, str, bool], ...]] | None = None
        # skus whose latest orders are a full list (the listing rule's depth), all seller-fault:
        # the only ones the listing rule can fire for (None: no such sku)
        self.faulted: set[str] | None = None
        # running totals of its windows, from its first evaluation on (`window_sums`)
        self.sums: WindowSums | None = None

    def window_sums(self, lengths: tuple[int, ...], now_bucket: int) -> list[WindowSums]:
        """The running totals of windows of `lengths` buckets (in this order) ending at
        `now_bucket`: slid from the last evaluation's, or walked once."""
        found = []
        sums = self.sums
        while sums is not None:
            found.append(sums)
            sums = sums.next
        if tuple(running.length for running in found) != lengths:
            found = [WindowSums(self.buckets, length, now_bucket) for length in lengths]
            for earlier, later in zip(found, found[1:]):
                earlier.next = later
            # a seller of a few buckets is walked at each evaluation, which costs it no memory
            self.sums = found[0] if len(self.buckets) >= SUMS_MIN_BUCKETS else None
            return found
        for running in found:
            running.move(self.buckets, now_bucket)
        return found

    def set_latest(self, sku: str, latest: tuple[tuple[int, str, bool], ...], depth: int) -> None:
        """Set a sku's latest orders (empty: forget the sku), keeping `faulted` up to date."""
        listing = self.listing
        if latest:
            if listing is None:
                listing = self.listing = {}
            listing[sku] = latest
        elif listing is not None:
            listing.pop(sku, None)
            if not listing:
                self.listing = None
        if len(latest) >= depth and all(entry[2] for entry in latest):
            if self.faulted is None:
                self.faulted = set()
            self.faulted.add(sku)
        elif self.faulted is not None and sku in self.faulted:
            self.faulted.discard(sku)
            if not self.faulted:
                self.faulted = None

    def change(self, bucket: int, old: Record | None, new: Record | None) -> None:
        """Move the bucket's totals from `old` to `new` (None: not in this bucket)."""
        self.change_by(bucket, ledger.Contribution.of(old), ledger.Contribution.of(new))

    def change_by(self, bucket: int, before: ledger.Contribution, after: ledger.Contribution) -> None:
        """Move the bucket's totals from one record's contribution to another's."""
        if before is after:     # shared per distinct contribution
            return
        bucket = _BUCKET_NUMBERS.setdefault(bucket, bucket)
        sums = self.sums
        while sums is not None:
            if sums.covers(bucket):
                sums.add(before, -1)
                sums.add(after, +1)
            sums = sums.next
        totals = self.buckets.get(bucket, 0)
        plain = not (before.cancelled or before.causes or after.cancelled or after.causes)
        if type(totals) is int and plain:
            # Most buckets hold orders and nothing else: keep just their count.
            count = totals - before.orders + after.orders
            if count:
                self.buckets[bucket] = count
            else:
                self.buckets.pop(bucket, None)
            return
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

    def relist(self, order_id: str, record: Record, depth: int,
               every: bool = False) -> list[tuple[str, int | None]]:
        """Bring the order's place among the latest `depth` orders of each of its tracked skus
        up to date (a sku is tracked from its first seller-fault order on).

        Returns (sku, purchase of the oldest order kept before) for each sku whose latest
        orders may now miss an order left out earlier (this order left a full list, or fell
        to its end), and (sku, None) for a sku this order makes tracked (its first seller-fault
        order): `Book` completes those from the buckets. `every`: every sku is listed, tracked
        or not (`Book.load`, which then forgets the untracked ones)."""
        refill: list[tuple[str, int | None]] = []
        purchase, eligible, listing = record.purchase, record.in_denominator, self.listing
        for sku in record.skus:
            latest = listing.get(sku) if listing is not None else None
            if latest is None:
                if not every:
                    if eligible and record.sku_faulted(sku):
                        refill.append((sku, None))      # tracked from now on: its list is read off the buckets
                    continue
                latest = ()
            if eligible:
                entry = (purchase, order_id, record.sku_faulted(sku))
                newest = latest[0] if latest else None
                if newest is None or purchase > newest[0] or purchase == newest[0] and order_id > newest[1]:
                    # the newest order of the sku (orders mostly come in time order), if not listed before
                    for listed in latest:
                        if listed[1] == order_id:
                            break
                    else:
                        self.set_latest(sku, (entry,) + latest[:depth - 1], depth)
                        listing = self.listing
                        continue
            others = [entry for entry in latest if entry[1] != order_id]
            present = len(others) < len(latest)
            full = len(latest) >= depth
            if eligible:
                if not present and full and entry[:2] < latest[-1][:2]:
                    continue
                others.append(entry)
                others.sort(reverse=True)
                shortened = present and full and others[-1] is entry and entry[:2] < latest[-1][:2]
            elif present:
                shortened = full
            else:
                continue
            self.set_latest(sku, tuple(others[:depth]), depth)
            if shortened:
                refill.append((sku, latest[-1][0]))
        return refill

    def drop_before(self, oldest_bucket: int, oldest_purchase: int) -> list[int]:
        dropped = [b for b in self.buckets if b < oldest_bucket]
        for bucket in dropped:
            del self.buckets[bucket]
        sums = self.sums
        while sums is not None:
            if any(sums.covers(bucket) for bucket in dropped):
                self.sums = None        # a window not evaluated for a retention: walked again
                break
            sums = sums.next
        if self.listing:
            for sku, latest in list(self.listing.items()):
                kept = tuple(e for e in latest if e[0] >= oldest_purchase)
                if len(kept) < len(latest):
                    # shorter than before: below the depth, so no longer a full faulted list
                    self.set_latest(sku, kept, len(latest) + 1)
        return dropped


def with_purchase(batch: Iterable[tuple[str, events.Event]]) -> list[tuple[str, events.Event, float]]:
    """(topic_role, event) pairs as `Book.feed` takes them, each with its purchase_date in epoch seconds."""
    return [(role, event, event.purchase_date.timestamp()) for role, event in batch]


# An open bucket of a batch: (key, seller state, bucket, its records with the batch applied,
# {order_id: record before the batch, None when the order was not in this bucket}, the prefix
# of its orders' index keys).
OpenBucket = tuple


@dataclasses.dataclass
class Pending:
    """A batch being applied: its result so far, its open buckets by (seller, marketplace,
    bucket), the order index entries it will write (order key -> bucket), the records it
    moved to an earlier bucket ((seller, marketplace, order_id) -> record before the batch)
    and the clock's bucket at its last slice."""

    result: "BatchResult"
    buckets: dict
    index: dict = dataclasses.field(default_factory=dict)
    moved: dict = dataclasses.field(default_factory=dict)
    now_bucket: int | None = None


@dataclasses.dataclass
class BatchResult:
    outcomes: Counter  # (topic_role, outcome) -> events
    touched: set       # SellerStates whose totals may have changed
    new_orders: Counter      # marketplace -> orders that entered a denominator
    new_faults: Counter      # (marketplace, reason) -> orders that became seller-fault
    new_excluded: Counter    # (marketplace, cause) -> orders newly excluded for a cause
    writes: int = 0


class Book:
    """All sellers' derived totals, and the rules to change them from events.

    `store` holds the durable buckets and seen markers; `index` the local order index
    (a private dict when not given). Both may be one mapping: their keys differ in kind."""

    def __init__(self, policy: Policy, store: MutableMapping[bytes, bytes],
                 index: MutableMapping[bytes, bytes] | None = None, cache_records: int = 0,
                 cache_min_orders: int = CACHE_MIN_ORDERS) -> None:
        self.policy = policy
        self.store = store
        self.index: MutableMapping[bytes, bytes] = {} if index is None else index
        # marketplace -> seller_id -> state (no key tuple per seller)
        self._markets: dict[str, dict[str, SellerState]] = {}
        self.listing_depth = policy.listing_consecutive
        # marketplace -> buckets of its longest rate window (older events are "late")
        self._rate_buckets = {marketplace: max(policy.window_buckets(w) for w in policy.windows(marketplace))
                              for marketplace in names.MARKETPLACES}
        # buckets kept at all (the longest window, the listing rule's included): older events change nothing
        # (retention covers Amazon's report lag, so late events still reach a report's range)
        self._keep_buckets = policy.retention_seconds // policy.bucket_seconds
        self._listing_buckets = policy.listing_order_window_days * 86400 // policy.bucket_seconds
        # The decoded records of recently written buckets, as written (key -> Bucket), oldest
        # first, at most `cache_records` records in all: a bucket opened again (the open hour,
        # an order shipped or cancelled later) is copied from here instead of read and decoded.
        self._cache: OrderedDict[bytes, ledger.Bucket] = OrderedDict()
        self._cached_records = 0
        self.cache_records = cache_records
        self.cache_min_orders = cache_min_orders
        # the order keys written to the index since this book was built (`load` adds the rest),
        # less the layers whose orders all expired
        self.indexed = order_filter.OrderFilter()

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

    def known(self, seller_id: str, marketplace: str) -> SellerState:
        """The seller's state, made known (and kept known across restarts) when new: a seller
        with an account-health report but no event yet."""
        return self._state(seller_id, marketplace, mark=True)

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
    def load(self, items: Iterable[tuple[bytes, bytes]],
             index: bool | MutableMapping[bytes, bytes] = True) -> int:
        """Rebuild derived totals from durable (key, value) pairs, on a fresh book; returns
        orders loaded.

        `index`: where to (re)write each order's index entry: True for the book's own
        index, a mapping to collect them (to write them in bulk), False for nowhere.
        Alert sets and order index keys among `items` are skipped."""
        target = self.index if index is True else None if index is False else index
        orders = 0
        keys = []           # (index key, bucket) of every order, for the filter
        tracked: set[tuple[SellerState, str]] = set()     # skus with a seller-fault order
        for key, value in items:
            parsed = parse_key(key)
            if parsed is None or parsed.kind in (KIND_ALERTS, KIND_ORDER, KIND_HEALTH):
                continue
            kind, seller_id, marketplace, bucket, _ = parsed
            state = self.seller(seller_id, marketplace)
            if state is None:
                state = self._new_state(seller_id, marketplace)
            if kind == KIND_SEEN:
                continue
            depth = self._listing_depth(marketplace)
            where = b"%d" % bucket
            for order_id, record in ledger.decode_bucket(value).items():
                state.change(bucket, None, record)
                if depth and record.skus:
                    state.relist(order_id, record, depth, every=True)
                    if record.counted:
                        tracked.update((state, sku) for sku in record.skus if record.sku_faulted(sku))
                order = order_key(seller_id, marketplace, order_id)
                keys.append((order, bucket))
                if target is not None:
                    target[order] = where
                orders += 1
        if not len(self.indexed):       # sized for the orders loaded, with room to grow
            self.indexed = order_filter.OrderFilter(max(2 * len(keys), order_filter.FIRST_CAPACITY))
        self.indexed.update(keys)
        for state in self.states():         # every sku was listed: the untracked ones are forgotten
            if state.listing:
                for sku in [sku for sku in state.listing if (state, sku) not in tracked]:
                    state.set_latest(sku, (), self.listing_depth)
        return orders

    # -- applying events -----------------------------------------------------
    def apply(self, batch: Iterable[tuple[str, events.Event]], now: float) -> BatchResult:
        """Apply (topic_role, event) pairs with `now` as the clock; write each touched bucket once."""
        pending = self.begin()
        self.feed(pending, with_purchase(batch), now)
        return self.finish(pending)

    def begin(self) -> Pending:
        """A batch that `feed` fills over several slices of events and `finish` writes at once."""
        return Pending(BatchResult(Counter(), set(), Counter(), Counter(), Counter()), {})

    def feed(self, pending: Pending, batch: Iterable[tuple[str, events.Event, float]], now: float) -> None:
        """Apply (topic_role, event, its purchase_date in epoch seconds) triples to the batch's
        private copies of their buckets (nothing is written yet; `with_purchase` makes them).

        The common case costs one lookup in the event's open bucket; only an order that
        bucket does not hold is looked up in the batch's own index entries, then, when the
        filter says it may be there, in the order index."""
        policy = self.policy
        apply = ledger.apply
        bucket_seconds = policy.bucket_seconds
        now_bucket = pending.now_bucket = window.bucket_of(now, bucket_seconds)
        oldest_kept = now_bucket - self._keep_buckets
        outcomes = pending.result.outcomes
        open_buckets = pending.buckets
        pending_index, index, indexed = pending.index, self.index, self.indexed
        # marketplace -> the newest bucket out of its longest rate window: events there are "late"
        late_edges = {marketplace: now_bucket - length for marketplace, length in self._rate_buckets.items()}
        for role, event, purchase in batch:
            seller_id, marketplace = event.seller_id, event.marketplace
            if event.fulfillment_channel == "AFN":
                self._state(seller_id, marketplace, mark=True)
                outcomes[(role, "afn")] += 1
                continue
            bucket = int(purchase // bucket_seconds)
            if bucket <= oldest_kept:
                self._state(seller_id, marketplace, mark=True)
                outcomes[(role, "late")] += 1
                continue
            opened = open_buckets.get((seller_id, marketplace, bucket))
            if opened is None:
                opened = self._open(pending, seller_id, marketplace, bucket)
            order_id = event.order_id
            old = opened[3].get(order_id)
            if old is None:
                order = opened[5] + order_id.encode()
                home = None
                at = pending_index.get(order)
                if at is None and order in indexed:
                    raw = index.get(order)
                    if raw is not None:
                        at = int(raw)
                if at is not None:
                    home = open_buckets.get((seller_id, marketplace, at))
                    if home is None:
                        home = self._open(pending, seller_id, marketplace, at)
                    if order_id not in home[3]:
                        home = None     # an index entry whose bucket does not hold the order: stale
                if home is None:
                    pending_index[order] = bucket
                elif home[2] < bucket:      # stored at an earlier purchase date: updated there
                    opened, old = home, home[3][order_id]
                else:                       # this event's purchase date is earlier: the record moves here
                    old = self._move_out(pending, home, (seller_id, marketplace, order_id))
                    pending_index[order] = bucket
                    if order_id not in opened[4]:
                        opened[4][order_id] = None
            new = apply(policy, old, event, int(purchase))
            late = opened[2] <= late_edges[marketplace]
            if new == old:
                outcomes[(role, "late" if late else "unchanged")] += 1
                continue
            originals = opened[4]
            if order_id not in originals:
                originals[order_id] = old
            opened[3][order_id] = new
            outcomes[(role, "late" if late else "applied")] += 1

    def _open(self, pending: Pending, seller_id: str, marketplace: str, bucket: int) -> OpenBucket:
        """Open a bucket for the batch: a private copy of its records, from the cache or decoded
        from the store; empty, unread, when the seller's state has no totals for it (see the
        module's docstring). (Records are never changed in place: `ledger.apply` makes new ones.)"""
        key = bucket_key(seller_id, marketplace, bucket)
        state = self._state(seller_id, marketplace)
        cached = self._cache.get(key)
        if cached is not None:
            orders = dict(cached)
        elif bucket in state.buckets:
            raw = self.store.get(key)
            orders = ledger.decode_bucket(raw) if raw else {}
        else:
            orders = {}
        opened = pending.buckets[(seller_id, marketplace, bucket)] = (
            key, state, bucket, orders, {}, order_key(seller_id, marketplace, ""))
        return opened

    def _remember(self, key: bytes, orders: ledger.Bucket | None, changed: bool = True,
                  reopened: bool = False) -> None:
        """Keep a bucket's records as written (None: deleted; `changed` False: as read) in the
        cache, the most recent last; the oldest leave once it holds more than `cache_records`.
        A bucket of fewer than `cache_min_orders` orders is kept only when `reopened` (it
        existed before this group)."""
        cache = self._cache
        if not changed and key in cache:
            cache.move_to_end(key)      # the same records: the most recent now
            return
        old = cache.pop(key, None)
        if old is not None:
            self._cached_records -= len(old)
        if not self.cache_records or not orders or (len(orders) < self.cache_min_orders and not reopened):
            return          # deleted, empty, or new and small: not kept
        cache[key] = orders
        self._cached_records += len(orders)
        while self._cached_records > self.cache_records:
            self._cached_records -= len(cache.popitem(last=False)[1])

    def drop_cache(self) -> None:
        """Forget the cached buckets (the store has them): memory at rest holds no cache."""
        self._cache = OrderedDict()
        self._cached_records = 0

    @staticmethod
    def _move_out(pending: Pending, home: OpenBucket, order: tuple[str, str, str]) -> Record:
        """Take an order's record out of its bucket (it moves to an earlier one); returns it."""
        order_id = order[2]
        record = home[3].pop(order_id)
        originals = home[4]
        if order_id not in originals:
            originals[order_id] = record
        if order not in pending.moved:
            pending.moved[order] = originals[order_id]
        return record

    def finish(self, pending: Pending) -> BatchResult:
        """Write each changed bucket once (an emptied one is deleted), the order index entries,
        and move the derived totals. Counters count only orders inside a rate window."""
        result = pending.result
        store = self.store
        changed = []
        for opened in pending.buckets.values():
            key, state, bucket, orders, originals, _ = opened
            # the seller's totals still hold the bucket only if it existed before this batch
            reopened = bucket in state.buckets
            if not originals:
                self._remember(key, orders, changed=False, reopened=reopened)     # read: as stored
                continue
            if orders:
                store[key] = ledger.encode_bucket(orders)
                result.writes += 1
                self._remember(key, orders, reopened=reopened)
            else:
                if key in store:
                    del store[key]
                    result.writes += 1
                self._remember(key, None)
            changed.append(opened)
        index, indexed = self.index, self.indexed
        for order, bucket in pending.index.items():
            index[order] = b"%d" % bucket
        indexed.update(pending.index.items())
        moved = pending.moved
        now_bucket = pending.now_bucket
        refills: dict[tuple[SellerState, str], int | None] = {}
        contribution_of = ledger.Contribution.of
        for _, state, bucket, orders, originals, _ in changed:
            marketplace = state.marketplace
            counted = bucket > now_bucket - self._rate_buckets[marketplace]
            depth = self._listing_depth(marketplace)
            for order_id, old in originals.items():
                new = orders.get(order_id)
                before, after = contribution_of(old), contribution_of(new)
                state.change_by(bucket, before, after)
                if new is None:
                    continue        # moved to an earlier bucket: counted there
                if counted:
                    if old is None and moved:
                        before = contribution_of(moved.get((state.seller_id, marketplace, order_id)))
                    if before is not after:
                        self._count_news(marketplace, before, after, result)
                if depth and new.skus and (state.listing is not None or new.counted):
                    # (an order that is not seller-fault changes nothing for a seller with no listing)
                    for sku, oldest in state.relist(order_id, new, depth):
                        refills[(state, sku)] = _later(oldest, refills.get((state, sku), oldest))
            result.touched.add(state)
        for (state, sku), oldest in refills.items():
            self._refill(state, sku, oldest, now_bucket - self._listing_buckets)
        pending.buckets.clear()
        pending.index.clear()
        moved.clear()
        return result

    def _refill(self, state: SellerState, sku: str, oldest: int | None, outside: int) -> None:
        """Complete the latest orders of a sku from the seller's buckets, newest first, from the
        bucket of `oldest` (the oldest order the list kept; None: from the newest bucket, for a
        sku tracked from now on) down to the listing window's edge (`outside`: the newest
        bucket out of it)."""
        depth = self._listing_depth(state.marketplace)
        bucket_seconds = self.policy.bucket_seconds
        chosen = {entry[1]: entry for entry in (state.listing or {}).get(sku, ())}
        start = max(state.buckets, default=outside) if oldest is None else window.bucket_of(oldest, bucket_seconds)
        for bucket in sorted((b for b in state.buckets if outside < b <= start), reverse=True):
            raw = self.store.get(bucket_key(state.seller_id, state.marketplace, bucket))
            for order_id, record in (ledger.decode_bucket(raw) if raw else {}).items():
                if sku in record.skus and record.in_denominator:
                    chosen[order_id] = (record.purchase, order_id, record.sku_faulted(sku))
            # every order not read yet is older than this bucket
            if sum(1 for entry in chosen.values() if entry[0] // bucket_seconds >= bucket) >= depth:
                break
        if chosen:
            state.set_latest(sku, tuple(sorted(chosen.values(), reverse=True)[:depth]), depth)

    @staticmethod
    def _count_news(marketplace: str, before: ledger.Contribution, after: ledger.Contribution,
                    result: BatchResult) -> None:
        """Count an order that entered a denominator, became seller-fault or was newly excluded
        for a cause, from its contributions before and after."""
        if after.orders and not before.orders:
            result.new_orders[marketplace] += 1
        if after.cancelled and not before.cancelled:
            result.new_faults[(marketplace, after.reason)] += 1
        for cause in after.causes:
            if cause not in before.causes:
                result.new_excluded[(marketplace, cause)] += 1

    # -- expiry ----------------------------------------------------------------
    def expire(self, now: float) -> int:
        """Delete order buckets older than the longest window plus grace, and the index entries
        of their orders; returns buckets deleted."""
        policy = self.policy
        oldest_purchase = int(now) - policy.retention_seconds
        oldest_bucket = window.bucket_of(oldest_purchase, policy.bucket_seconds)
        store, index = self.store, self.index
        deleted = 0
        for state in self.states():
            dropped = state.drop_before(oldest_bucket, oldest_purchase)
            for bucket in dropped:
                key = bucket_key(state.seller_id, state.marketplace, bucket)
                raw = store.get(key)
                if raw is not None:
                    for order_id in ledger.decode_bucket(raw):
                        order = order_key(state.seller_id, state.marketplace, order_id)
                        if order in index:
                            del index[order]
                    del store[key]
                self._remember(key, None)
                deleted += 1
            if dropped and not state.buckets:   # its last bucket gone: a marker keeps it known
                store[seen_key(state.seller_id, state.marketplace)] = b""
        self.indexed.forget_before(oldest_bucket)       # layers of expired orders only
        return deleted
