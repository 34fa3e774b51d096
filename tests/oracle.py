"""Brute-force oracle of contract sections 4 and 5, written straight from the text.

Deliberately naive and independent of the worker's code: it keeps every
event, deduplicates by event_id, and recomputes everything from scratch.
"""

from __future__ import annotations

from collections import defaultdict

from cancelwatch import names
from cancelwatch.core.policy import Policy


def counts_against_seller(cancel) -> bool:
    if cancel.order_status_at_cancel == "Pending":
        return False
    if cancel.initiator == "seller":
        return not (cancel.reason == "BuyerCanceled" and cancel.buyer_requested)
    return cancel.initiator == "amazon" and cancel.reason == "ShipmentNotConfirmed"


def cause(cancel) -> str | None:
    if cancel.order_status_at_cancel == "Pending":
        return "pending"
    if counts_against_seller(cancel):
        return None
    if cancel.initiator == "seller":
        return "buyer_requested"
    if cancel.initiator == "buyer":
        return "buyer_initiated"
    return "amazon_other"


def in_window(t: float, now: float, days: int, bucket: int) -> bool:
    return now // bucket - days * 86400 // bucket < t // bucket <= now // bucket


def older_than_kept(t: float, now: float, kept_seconds: int, bucket: int) -> bool:
    """Section 5: an event whose purchase date is already older than anything the monitor
    keeps (the policy's retention: the longest window, the listing rule's 30 days included,
    plus grace or Amazon's report lag) changes nothing."""
    return t // bucket <= now // bucket - kept_seconds // bucket


def _cancelled_while_pending(order) -> bool:
    return any(x.order_status_at_cancel == "Pending" for x in order["cancels"])


def compute(all_events, now: float, policy: Policy) -> dict:
    """{(seller, marketplace): {"windows": [...], "reasons": {}, "excluded": {}, "listing": set(sku)}}"""
    unique = {}
    for event in all_events:
        unique.setdefault(event.event_id, event)
    orders = defaultdict(lambda: {"purchase": None, "cancels": [], "skus": set()})
    sellers = set()
    bucket = policy.bucket_seconds
    kept_seconds = policy.retention_seconds
    for event in unique.values():
        sellers.add((event.seller_id, event.marketplace))
        if event.fulfillment_channel != "MFN":
            continue
        if older_than_kept(event.purchase_date.timestamp(), now, kept_seconds, bucket):
            continue
        order = orders[(event.seller_id, event.marketplace, event.order_id)]
        purchase = int(event.purchase_date.timestamp())
        order["purchase"] = purchase if order["purchase"] is None else min(order["purchase"], purchase)
        for item in getattr(event, "items", None) or []:
            order["skus"].add(item.sku)
        if type(event).__name__ == "OrderCancelled":
            order["cancels"].append(event)
    by_seller = defaultdict(dict)
    for (seller, marketplace, order_id), order in orders.items():
        by_seller[(seller, marketplace)][order_id] = order
    result = {}
    for seller, marketplace in sellers:
        mine = by_seller[(seller, marketplace)]
        windows = []
        first_reasons, first_excluded = None, None
        for w in policy.windows(marketplace):
            total = cancelled = 0
            reasons = defaultdict(int)
            excluded = defaultdict(int)
            for order in mine.values():
                if not in_window(order["purchase"], now, w.days, bucket):
                    continue
                for c in {cause(x) for x in order["cancels"]} - {None}:
                    excluded[c] += 1
                if _cancelled_while_pending(order):
                    continue
                total += 1
                faults = [x for x in order["cancels"] if counts_against_seller(x)]
                if faults:
                    cancelled += 1
                    first = min(faults, key=lambda x: (x.occurred_at, names.REASONS.index(x.reason)))
                    reasons[first.reason] += 1
            headroom = None
            if total:
                headroom = 0
                while (cancelled + headroom + 1) * 10000 < w.limit_bps * total:
                    headroom += 1
                if not cancelled * 10000 < w.limit_bps * total:
                    headroom = 0
            is_breach = total > 0 and cancelled * 10000 >= w.limit_bps * total
            is_warning = total > 0 and cancelled * 10000 >= w.warning_bps * total
            windows.append({
                "days": w.days, "orders": total, "cancelled": cancelled, "headroom": headroom,
                "status": "breach" if is_breach else "warning" if is_warning else "ok",
            })
            if first_reasons is None:
                first_reasons, first_excluded = dict(reasons), dict(excluded)
        listing = set()
        if marketplace in policy.listing_marketplaces:
            by_sku = defaultdict(list)
            for oid, order in mine.items():
                if _cancelled_while_pending(order):
                    continue    # never became an order: takes no place among a sku's last orders
                if in_window(order["purchase"], now, policy.listing_order_window_days, bucket):
                    for sku in order["skus"]:
                        by_sku[sku].append((order["purchase"], oid))
            for sku, placed in by_sku.items():
                placed.sort(reverse=True)
                last = placed[:policy.listing_consecutive]
                if len(last) == policy.listing_consecutive and all(
                        _sku_faulted(mine[oid], sku) for _, oid in last):
                    listing.add(sku)
        result[(seller, marketplace)] = {
            "windows": windows, "reasons": first_reasons, "excluded": first_excluded, "listing": listing,
        }
    return result


def _sku_faulted(order, sku) -> bool:
    if _cancelled_while_pending(order):
        return False
    for cancel in order["cancels"]:
        if counts_against_seller(cancel):
            if not cancel.items or sku in {item.sku for item in cancel.items}:
                return True
    return False
