"""Per-order records: what the monitor knows about each order, and how events change it.

An order's record is a set of facts (cancelled while Pending, has a
seller-fault cancel, excluded causes seen, skus) plus the attributed reason.
Applying an event only ever adds facts or lowers a minimum, so applying the
same event twice, or a set of events in any order, gives the same record:
duplicates and replays after a crash count once. Pure: no Kafka, no clock.

Records of one seller, marketplace and purchase bucket are stored together
as one value (`Bucket`), so a batch writes each touched bucket once.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import msgspec

from cancelwatch import names

from cancelwatch.core import events
from cancelwatch.core.policy import Policy

# Fact bits of a record.
PENDING_CANCELLED = 1
SELLER_FAULT = 2
WHOLE_ORDER_FAULT = 4
CAUSE_BITS = {
    "buyer_requested": 8,
    "buyer_initiated": 16,
    "pending": 32,
    "amazon_other": 64,
    "other": 128,
}
ANY_CAUSE = sum(CAUSE_BITS.values())
REASON_INDEX = {reason: index for index, reason in enumerate(names.REASONS)}
NO_FAULT_TIME = 2**62


class Record(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """One order. `fault_time`/`fault_reason` attribute the seller-fault cancel:
    the earliest by occurred_at (microseconds), ties broken by reason index."""

    purchase: int                     # purchase_date, epoch seconds (the smallest seen)
    flags: int = 0
    fault_time: int = NO_FAULT_TIME
    fault_reason: int = -1
    skus: tuple[str, ...] = ()        # tuples of str: no cycles, so the struct stays out of the GC
    fault_skus: tuple[str, ...] = ()

    @property
    def in_denominator(self) -> bool:
        return not self.flags & PENDING_CANCELLED

    @property
    def counted(self) -> bool:
        return self.flags & (PENDING_CANCELLED | SELLER_FAULT) == SELLER_FAULT

    @property
    def reason(self) -> str | None:
        return names.REASONS[self.fault_reason] if self.counted else None

    def causes(self) -> list[str]:
        if not self.flags & ANY_CAUSE:
            return []
        return [cause for cause, bit in CAUSE_BITS.items() if self.flags & bit]

    def sku_faulted(self, sku: str) -> bool:
        return self.counted and (bool(self.flags & WHOLE_ORDER_FAULT) or sku in self.fault_skus)

    def copy(self) -> "Record":
        return Record(self.purchase, self.flags, self.fault_time, self.fault_reason,
                      self.skus, self.fault_skus)


Bucket = dict[str, Record]
_bucket_encoder = msgspec.msgpack.Encoder()
_bucket_decoder = msgspec.msgpack.Decoder(dict[str, Record])


def encode_bucket(bucket: Bucket) -> bytes:
    return _bucket_encoder.encode(bucket)


def decode_bucket(raw: bytes) -> Bucket:
    return _bucket_decoder.decode(raw)


def cancel_cause(policy: Policy, cancel: events.OrderCancelled) -> str | None:
    """None when the cancellation counts against the seller, else why it does not."""
    if cancel.order_status_at_cancel == "Pending":
        return "pending"
    if policy.is_seller_fault(cancel.initiator, cancel.reason, cancel.buyer_requested):
        return None
    if cancel.initiator == "seller" and cancel.reason == "BuyerCanceled" and cancel.buyer_requested:
        return "buyer_requested"
    if cancel.initiator == "buyer":
        return "buyer_initiated"
    if cancel.initiator == "amazon":
        return "amazon_other"
    return "other"


def _merge_skus(current: tuple[str, ...], items: Iterable[events.Item] | None) -> tuple[str, ...]:
    if not items:
        return current
    if not current and len(items) == 1:
        return (items[0].sku,)
    for item in items:
        if item.sku not in current:
            return tuple(sorted({item.sku for item in items}.union(current)))
    return current


def apply(policy: Policy, record: Record | None, event: events.Event, purchase: int | None = None) -> Record:
    """The record after `event` (a new Record; `record` is not changed). An event that adds
    nothing to a record (a status change, a duplicate) returns `record` itself. `purchase`:
    the event's purchase_date in whole epoch seconds, when the caller has it already."""
    if purchase is None:
        purchase = int(event.purchase_date.timestamp())
    items = getattr(event, "items", None)
    if type(event) is not events.OrderCancelled:
        # an order event adds only skus and an earlier purchase date
        if record is None:
            return Record(purchase, skus=_merge_skus((), items))
        skus = _merge_skus(record.skus, items)
        if record.purchase <= purchase and skus is record.skus:
            return record
        record = record.copy()
        record.purchase = min(record.purchase, purchase)
        record.skus = skus
        return record
    if record is None:
        record = Record(purchase)
    else:
        record = record.copy()
        record.purchase = min(record.purchase, purchase)
    record.skus = _merge_skus(record.skus, items)
    cause = cancel_cause(policy, event)
    if cause == "pending":
        record.flags |= PENDING_CANCELLED | CAUSE_BITS["pending"]
    elif cause is not None:
        record.flags |= CAUSE_BITS[cause]
    else:
        record.flags |= SELLER_FAULT
        if items:
            record.fault_skus = _merge_skus(record.fault_skus, items)
        else:
            record.flags |= WHOLE_ORDER_FAULT
        moment = int(event.occurred_at.timestamp() * 1_000_000)
        attribution = (moment, REASON_INDEX[event.reason])
        if attribution < (record.fault_time, record.fault_reason):
            record.fault_time, record.fault_reason = attribution
    return record


@dataclasses.dataclass(frozen=True)
class Contribution:
    """What one record adds to its bucket's totals. Shared: one per (flags, reason) seen."""

    orders: int = 0
    cancelled: int = 0
    reason: str | None = None
    causes: tuple[str, ...] = ()

    @classmethod
    def of(cls, record: Record | None) -> "Contribution":
        if record is None:
            return NOTHING
        key = (record.flags, record.fault_reason)
        shared = _CONTRIBUTIONS.get(key)
        if shared is None:
            counted = record.counted
            shared = _CONTRIBUTIONS[key] = cls(
                orders=1 if record.in_denominator else 0,
                cancelled=1 if counted else 0,
                reason=record.reason if counted else None,
                causes=tuple(record.causes()),
            )
        return shared


NOTHING = Contribution()
# (flags, fault_reason) -> its Contribution: a record's contribution is a function of the two.
_CONTRIBUTIONS: dict[tuple[int, int], Contribution] = {}
