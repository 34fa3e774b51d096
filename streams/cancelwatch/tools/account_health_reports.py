"""Amazon's account-health reports for simulated traffic (`cancelwatch simulate --reports`).

Amazon sees every order of a seller; cancelwatch sees the orders that are
published. `AmazonView` follows every event a simulation makes, counts each
seller's orders and seller-fault cancelled orders per marketplace as Amazon
does (contract section 4, with the packaged policy's rules and limits), and
writes the seller's `GET_V2_SELLER_PERFORMANCE_REPORT` in the envelope of
contract section 11. Its range is the report's: the 7 whole UTC days before
the day it is fetched, `00:00:00` to `23:59:59`; its counts are what Amazon
knows when it is fetched.

A gap makes one seller drift: a share of its orders (chosen by order id, so
the same orders for the same share) is never published, as when one of the
seller's order sources does not publish, but Amazon counts them, so its
report counts more than cancelwatch. `with_reports` threads a report of
every seller into an event stream at each due moment, and drops the events of
withheld orders. Pure: no Kafka, no clock.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Iterable, Iterator

from cancelwatch.core import events, ledger
from cancelwatch.core.amazon_orders import MARKETPLACE_IDS
from cancelwatch.core.policy import Policy

RANGE_DAYS = 7
MARKETPLACE_ID = {country: marketplace_id for marketplace_id, country in MARKETPLACE_IDS.items()}
# Orders older than this before a report's day can no longer be in its range; they are forgotten.
KEPT = timedelta(days=RANGE_DAYS + 1)


@dataclasses.dataclass(frozen=True)
class Report:
    """One account-health message: the envelope's JSON (`value`), keyed by `seller_id`.
    `occurred_at` is its `fetched_at`, the moment it is due."""

    seller_id: str
    occurred_at: datetime
    value: bytes


def report_range(fetched_at: datetime) -> tuple[datetime, datetime]:
    """The report's range: the 7 whole UTC days before the day of `fetched_at`."""
    day = fetched_at.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=RANGE_DAYS), day - timedelta(seconds=1)


def withheld(order_id: str, share: float) -> bool:
    """Whether an order of the gap seller is never published: `share` of the order ids, the
    same ones for the same share."""
    return zlib.crc32(order_id.encode("utf-8")) % 10000 < round(share * 10000)


class AmazonView:
    """What Amazon counts of the events of a simulation, seller by seller.

    `sellers` maps each seller id to its marketplaces (every one is in its report, with no
    orders too). `gap_seller` and `gap` (a share, 0 to 1): that seller's orders that are
    never published.
    """

    def __init__(self, policy: Policy, sellers: dict[str, tuple[str, ...]],
                 gap_seller: str | None = None, gap: float = 0.0) -> None:
        if not 0.0 <= gap <= 1.0:
            raise ValueError(f"the gap is a share between 0 and 1, not {gap}")
        unknown = {marketplace for places in sellers.values() for marketplace in places} - set(MARKETPLACE_ID)
        if unknown:
            raise ValueError(f"no Amazon marketplace id for {', '.join(sorted(unknown))}")
        self.policy = policy
        self.sellers = sellers
        self.gap_seller = gap_seller if gap > 0 else None
        self.gap = gap
        self.records: dict[tuple[str, str], dict[str, ledger.Record]] = defaultdict(dict)
        self.published: dict[str, bytes] = {}     # seller -> its last report, without fetched_at

    def withheld(self, event: events.Event) -> bool:
        """The event belongs to an order that is never published."""
        return event.seller_id == self.gap_seller and withheld(event.order_id, self.gap)

    def observe(self, event: events.Event) -> None:
        """Amazon learns of the event (FBA orders do not count; an event seen twice counts once)."""
        if event.fulfillment_channel != "MFN":
            return
        orders = self.records[(event.seller_id, event.marketplace)]
        orders[event.order_id] = ledger.apply(self.policy, orders.get(event.order_id), event)

    def counts(self, seller_id: str, marketplace: str, start: datetime, end: datetime) -> tuple[int, int]:
        """(orders, seller-fault cancelled orders) purchased from `start` to `end`, both included."""
        first, last = int(start.timestamp()), int(end.timestamp())
        orders = cancelled = 0
        for record in self.records.get((seller_id, marketplace), {}).values():
            if first <= record.purchase <= last:
                contribution = ledger.Contribution.of(record)
                orders += contribution.orders
                cancelled += contribution.cancelled
        return orders, cancelled

    def report(self, seller_id: str, fetched_at: datetime) -> Report:
        """The seller's account-health report fetched at `fetched_at`, in its envelope."""
        start, end = report_range(fetched_at)
        dates = {"reportingDateFrom": _time(start), "reportingDateTo": _time(end)}
        statuses, metrics = [], []
        for marketplace in self.sellers[seller_id]:
            orders, cancelled = self.counts(seller_id, marketplace, start, end)
            limit_bps = self.policy.windows(marketplace)[0].limit_bps
            rate = round(cancelled / orders, 6) if orders else 0
            status = "NONE" if not orders else ("GOOD" if cancelled * 10000 < limit_bps * orders else "BAD")
            statuses.append({"marketplaceId": MARKETPLACE_ID[marketplace], "status": "NORMAL"})
            metrics.append({
                "marketplaceId": MARKETPLACE_ID[marketplace],
                "preFulfillmentCancellationRate": {
                    "reportingDateRange": dates, "orderCount": orders, "cancellationCount": cancelled,
                    "status": status, "rate": rate, "targetValue": limit_bps / 10000, "targetCondition": "LESS_THAN",
                },
            })
        envelope = {"schema_version": 1, "seller_id": seller_id, "fetched_at": _time(fetched_at),
                    "report": {"accountStatuses": statuses, "performanceMetrics": metrics}}
        return Report(seller_id, fetched_at, json.dumps(envelope, separators=(",", ":")).encode("utf-8"))

    def reports(self, fetched_at: datetime) -> list[Report]:
        """The report of every seller fetched at `fetched_at` that says something new: the first
        one, then those whose counts, statuses or range changed since the seller's last (a poller
        publishes what is new). Orders too old for any later range are forgotten."""
        oldest = int((report_range(fetched_at)[0] - timedelta(days=1)).timestamp())
        for orders in self.records.values():
            for order_id in [order_id for order_id, record in orders.items() if record.purchase < oldest]:
                del orders[order_id]
        new = []
        for seller_id in self.sellers:
            report = self.report(seller_id, fetched_at)
            content = json.dumps(json.loads(report.value)["report"], sort_keys=True).encode("utf-8")
            if self.published.get(seller_id) != content:
                self.published[seller_id] = content
                new.append(report)
        return new


def gap_seller(sellers: list) -> str | None:
    """The seller a gap applies to: the first seller, other than a scenario's focus seller, that
    sells in the US (where `top` and the demo look), else the first other seller."""
    others = [seller for seller in sellers if not seller.focus] or list(sellers)
    if not others:
        return None
    return next((seller for seller in others if "US" in seller.marketplaces), others[0]).seller_id


def due_moments(first: datetime, every: timedelta, end: datetime | None) -> Iterator[datetime]:
    """`first`, then every `every`, up to `end` included (forever when `end` is None)."""
    if every <= timedelta(0):
        raise ValueError("reports must be at least a second apart")
    moment = first
    while end is None or moment <= end:
        yield moment
        moment += every


def with_reports(stream: Iterable[events.Event], view: AmazonView,
                 due: Iterable[datetime]) -> Iterator[events.Event | Report]:
    """The stream without the withheld orders' events, with every seller's report at each due
    moment (in the stream's time: its events' occurred_at), after the events up to then.
    Reports still due when the stream ends follow its last event."""
    moments = iter(due)
    upcoming = next(moments, None)
    for event in stream:
        while upcoming is not None and event.occurred_at > upcoming:
            yield from view.reports(upcoming)
            upcoming = next(moments, None)
        view.observe(event)
        if not view.withheld(event):
            yield event
    while upcoming is not None:
        yield from view.reports(upcoming)
        upcoming = next(moments, None)


def _time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
