"""Realistic order and cancellation traffic, as a pure generator of contract events.

Sellers have Pareto-distributed volumes across marketplaces, a mix of FBA
(AFN) and seller-fulfilled (MFN) orders, and each order lives a lifecycle:
pending orders are paid or expire, buyers self-cancel within 30 minutes or
ask the seller to cancel, sellers cancel for the reasons of contract section
3 at a low base rate, orders ship, and a few are auto-cancelled by Amazon
for an unconfirmed shipment. A scenario adds one incident at one "focus"
seller, starting at the pivot time.

No I/O and no wall clock: `generate(...)` yields events in occurred_at order
from a seeded random generator, so tests and benchmarks get the same events
for the same arguments. `disorder(...)` then duplicates and reorders them.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import random
import uuid
from collections import deque
from datetime import datetime, timedelta
from typing import Iterable, Iterator

from cancelwatch.core import events

STEP = timedelta(minutes=1)
HOUR = 3600
WINDOW_BUCKETS = 7 * 24  # the default 7-day window in 1-hour buckets (contract section 5)

# Where sellers sell, weighted; and the first digits of an order id there.
MARKETPLACE_WEIGHTS = {"US": 40, "UK": 14, "DE": 14, "IN": 10, "JP": 5, "CA": 5,
                       "FR": 5, "IT": 3, "ES": 3, "MX": 1}
ORDER_ID_PREFIX = {"US": "113", "CA": "702", "MX": "701", "UK": "202", "DE": "302",
                   "FR": "403", "IT": "404", "ES": "405", "IN": "406", "JP": "503"}

# Reasons of the base rate of seller cancellations, weighted.
SELLER_REASON_WEIGHTS = {
    "NoInventory": 45, "ShippingAddressUndeliverable": 14, "GeneralAdjustment": 8,
    "RiskAssessmentInformationNotValid": 7, "BuyerCanceled": 8, "CustomerExchange": 4,
    "CarrierCoverageFailure": 4, "CarrierCreditDecision": 2, "CustomerReturn": 2,
    "MerchandiseNotReceived": 1, "Other": 5,
}

# Per-order probabilities of the lifecycle, seller-fulfilled orders.
PENDING_SHARE = 0.06          # placed before payment completes
PENDING_EXPIRE = 0.15         # of pending orders: never paid, cancelled by Amazon
BUYER_SELF_CANCEL = 0.012     # buyer cancels within 30 minutes
BUYER_REQUEST = 0.01          # buyer asks; the seller cancels with BuyerCanceled
SHIPMENT_NOT_CONFIRMED = 0.001
POLICY_VIOLATION = 0.0005
PARTIAL_CANCEL = 0.3          # of seller cancels of multi-item orders
AFN_SELF_CANCEL = 0.01


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    # Incident at the focus seller: the controller cancels open orders with
    # these reasons until the tracked share of the 7-day window reaches `peak`.
    reasons: dict[str, float] = dataclasses.field(default_factory=dict)
    peak: float = 0.0
    buyer_requested: bool = False
    focus_fault_rate: float = 0.011
    incident_pending_share: float = PENDING_SHARE
    incident_self_cancel: float = BUYER_SELF_CANCEL
    ageing: bool = False


SCENARIOS: dict[str, Scenario] = {scenario.name: scenario for scenario in (
    Scenario("steady", "Steady traffic: every seller at its base rate, well under 2%."),
    Scenario("inventory-outage",
             "The focus seller runs out of stock: its NoInventory cancels climb from ~1% "
             "through 2% to 3% over the ramp.",
             reasons={"NoInventory": 1.0}, peak=0.03),
    Scenario("address-errors",
             "The focus seller's address checks break: ShippingAddressUndeliverable and other "
             "order-error cancels climb from ~1% to 3% over the ramp.",
             reasons={"ShippingAddressUndeliverable": 0.8, "CarrierCoverageFailure": 0.1,
                      "GeneralAdjustment": 0.1}, peak=0.03),
    Scenario("payment-fraud",
             "A fraud wave at the focus seller: many pending orders expire unpaid (not counted) "
             "and RiskAssessmentInformationNotValid cancels climb from ~1% to 3%.",
             reasons={"RiskAssessmentInformationNotValid": 1.0}, peak=0.03,
             incident_pending_share=0.3),
    Scenario("buyer-requests",
             "Buyers of the focus seller cancel a lot, through Amazon's request flow and by "
             "themselves: 12% of its orders, none of which may raise its rate.",
             reasons={"BuyerCanceled": 1.0}, peak=0.12, buyer_requested=True,
             focus_fault_rate=0.008, incident_self_cancel=0.05),
    Scenario("ageing",
             "The focus seller had a clean, busy day 7 days ago and a higher cancel share since: "
             "its rate (~1.6%) will rise past 2.5% as that day ages out of the window.",
             focus_fault_rate=0.04, ageing=True),
)}


class Timeline:
    """Maps simulated time to event timestamps.

    Up to `pivot` a timestamp is the simulated time itself; after it, simulated
    time runs `speed` times faster than the timestamps, so a live phase can be
    accelerated without any timestamp running ahead of the wall clock.
    """

    def __init__(self, pivot: datetime | None = None, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, not {speed}")
        self.pivot = pivot
        self.speed = speed

    def stamp(self, moment: datetime) -> datetime:
        if self.pivot is None or moment <= self.pivot or self.speed == 1.0:
            return moment
        return self.pivot + (moment - self.pivot) / self.speed


@dataclasses.dataclass
class Seller:
    seller_id: str
    marketplaces: tuple[str, ...]
    marketplace_weights: tuple[float, ...]
    orders_per_day: float
    afn_share: float
    fault_rate: float
    catalog: int
    focus: bool = False


class _Order:
    __slots__ = ("order_id", "seller", "marketplace", "channel", "purchased", "items",
                 "pending", "closed", "cancel_planned", "ship_at", "fault_counted")

    def __init__(self, order_id, seller, marketplace, channel, purchased, items):
        self.order_id = order_id
        self.seller = seller
        self.marketplace = marketplace
        self.channel = channel
        self.purchased = purchased
        self.items = items
        self.pending = False
        self.closed = False
        self.cancel_planned = False
        self.ship_at: datetime | None = None
        self.fault_counted = False


class _Window:
    """The focus seller's 7-day window, by purchase-date hour, as the worker buckets it."""

    def __init__(self) -> None:
        self.orders: dict[int, int] = {}
        self.tracked: dict[int, int] = {}

    @staticmethod
    def _hour(moment: datetime) -> int:
        return math.floor(moment.timestamp() / HOUR)

    def add(self, table: dict[int, int], purchased: datetime, amount: int = 1) -> None:
        hour = self._hour(purchased)
        table[hour] = table.get(hour, 0) + amount

    def share(self, now: datetime) -> tuple[int, int]:
        """(orders, tracked cancels) in the window at `now`."""
        oldest = self._hour(now) - WINDOW_BUCKETS
        for table in (self.orders, self.tracked):
            for hour in [hour for hour in table if hour <= oldest]:
                del table[hour]
        return sum(self.orders.values()), sum(self.tracked.values())


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def _weighted(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


class Simulation:
    """One seeded run: the sellers, and the events they produce between start and end.

    `end=None` runs forever (a live simulation). `pivot` is when the scenario's
    incident starts (default: so that it has ramped up and held before `end`;
    for `ageing`, `end`). `ramp` is how long the incident takes to reach its peak.
    """

    def __init__(self, scenario: str = "steady", seed: int = 1, *, start: datetime,
                 end: datetime | None, sellers: int = 30, pivot: datetime | None = None,
                 ramp: timedelta = timedelta(hours=4), timeline: Timeline | None = None) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
        if start.tzinfo is None:
            raise ValueError("start needs a time zone")
        if sellers < 1:
            raise ValueError("at least one seller is needed")
        self.scenario = SCENARIOS[scenario]
        self.seed = seed
        self.start = start
        self.end = end
        self.ramp = ramp
        if pivot is None:
            if end is None:
                pivot = start
            elif self.scenario.ageing:
                pivot = end
            else:
                pivot = max(start, end - ramp * 3 / 2)
        self.pivot = pivot
        self.timeline = timeline or Timeline()
        self._rng = random.Random(seed)
        self.sellers = [self._seller(index) for index in range(sellers)]
        self.focus = self.sellers[0] if self.scenario.name != "steady" else None

    # --- sellers -------------------------------------------------------------

    def _seller_id(self) -> str:
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        return "A" + "".join(self._rng.choice(alphabet) for _ in range(13))

    def _seller(self, index: int) -> Seller:
        rng = self._rng
        seller_id = self._seller_id()
        if index == 0 and self.scenario.name != "steady":
            volume = 220.0 if self.scenario.ageing else 450.0
            return Seller(seller_id, ("US",), (1.0,), volume, 0.1,
                          self.scenario.focus_fault_rate, 40, focus=True)
        count = 1 if rng.random() < 0.7 else 2
        places = tuple(dict.fromkeys(rng.choices(list(MARKETPLACE_WEIGHTS),
                                                 weights=list(MARKETPLACE_WEIGHTS.values()),
                                                 k=count)))
        shares = (1.0,) if len(places) == 1 else (0.7, 0.3)
        volume = min(3000.0, 60.0 * rng.paretovariate(1.3))
        return Seller(seller_id, places, shares, volume, rng.uniform(0.0, 0.7),
                      rng.uniform(0.002, 0.007), rng.randint(10, 200))

    # --- events --------------------------------------------------------------

    def events(self) -> Iterator[events.Event]:
        """Every event of the span, in occurred_at order."""
        rng = self._rng
        self._queue: list = []
        self._sequence = itertools.count()
        self._order_ids: set[str] = set()
        self._window = _Window()
        self._open: deque[_Order] = deque()
        self._baseline: float | None = None
        moment = self.start
        while self.end is None or moment < self.end:
            step_end = moment + STEP if self.end is None else min(moment + STEP, self.end)
            for seller in self.sellers:
                mean = seller.orders_per_day * self._volume_factor(seller, moment) \
                    * (step_end - moment).total_seconds() / 86400
                for _ in range(_poisson(rng, mean)):
                    purchased = moment + (step_end - moment) * rng.random()
                    self._new_order(seller, purchased)
            while self._queue and self._queue[0][0] < step_end:
                when, _, kind, order, detail = heapq.heappop(self._queue)
                event = self._event(when, kind, order, detail)
                if event is not None:
                    yield event
            while self._open and self._open[0].ship_at <= step_end:
                self._open.popleft()
            if self.focus is not None and self.scenario.reasons and step_end >= self.pivot:
                self._control(step_end)
            moment = step_end

    def _volume_factor(self, seller: Seller, moment: datetime) -> float:
        if seller.focus and self.scenario.ageing:
            age = self.pivot - moment
            if timedelta(days=6) < age <= timedelta(days=7):
                return 8.0
        return 1.0

    def _fault_rate(self, seller: Seller, purchased: datetime) -> float:
        if seller.focus and self.scenario.ageing and self.pivot - purchased > timedelta(days=6):
            return 0.0
        return seller.fault_rate

    def _incident(self, seller: Seller, moment: datetime) -> bool:
        return seller.focus and moment >= self.pivot

    def _schedule(self, when: datetime, kind: str, order: _Order, detail=None) -> None:
        heapq.heappush(self._queue, (when, next(self._sequence), kind, order, detail))

    def _order_id(self, marketplace: str) -> str:
        while True:
            order_id = (f"{ORDER_ID_PREFIX.get(marketplace, '999')}-"
                        f"{self._rng.randrange(10**7):07d}-{self._rng.randrange(10**7):07d}")
            if order_id not in self._order_ids:
                self._order_ids.add(order_id)
                return order_id

    def _new_order(self, seller: Seller, purchased: datetime) -> None:
        rng = self._rng
        marketplace = rng.choices(seller.marketplaces, weights=seller.marketplace_weights)[0]
        channel = "AFN" if rng.random() < seller.afn_share else "MFN"
        lines = 1 if rng.random() < 0.75 else (2 if rng.random() < 0.8 else 3)
        skus = {f"{seller.seller_id[-5:]}-SKU{int(seller.catalog * rng.random() ** 2.5):04d}"
                for _ in range(lines)}
        items = [events.Item(sku, 1 if rng.random() < 0.85 else rng.randint(2, 3))
                 for sku in sorted(skus)]
        order = _Order(self._order_id(marketplace), seller, marketplace, channel, purchased, items)
        minutes = timedelta(minutes=1)
        hours = timedelta(hours=1)
        if channel == "AFN":
            self._schedule(purchased, "placed", order, "Unshipped")
            if rng.random() < AFN_SELF_CANCEL:
                self._schedule(purchased + minutes * rng.uniform(1, 30), "buyer_cancel", order)
            else:
                self._schedule(purchased + hours * rng.uniform(1, 10), "ship", order)
            return
        incident = self._incident(seller, purchased)
        pending_share = self.scenario.incident_pending_share if incident else PENDING_SHARE
        self_cancel = self.scenario.incident_self_cancel if incident else BUYER_SELF_CANCEL
        paid = purchased
        if rng.random() < pending_share:
            order.pending = True
            self._schedule(purchased, "placed", order, "Pending")
            if rng.random() < PENDING_EXPIRE:
                self._schedule(purchased + hours * rng.uniform(48, 72), "expire", order)
                return
            paid = purchased + minutes * rng.uniform(5, 360)
            self._schedule(paid, "paid", order)
        else:
            self._schedule(purchased, "placed", order, "Unshipped")
        draw = rng.random()
        fault = self._fault_rate(seller, purchased)
        thresholds = itertools.accumulate(
            (self_cancel, BUYER_REQUEST, fault, SHIPMENT_NOT_CONFIRMED, POLICY_VIOLATION))
        self_cancel_p, request_p, fault_p, snc_p, policy_p = thresholds
        if draw < self_cancel_p:
            order.cancel_planned = True
            self._schedule(purchased + minutes * rng.uniform(1, 30), "buyer_cancel", order)
            return
        ship_at = paid + hours * rng.uniform(3, 40)
        if draw < request_p:
            order.cancel_planned = True
            self._schedule(paid + hours * rng.uniform(0.5, 12), "seller_cancel", order,
                           ("BuyerCanceled", True, None))
            return
        if draw < fault_p:
            reason = _weighted(rng, SELLER_REASON_WEIGHTS)
            partial = len(items) > 1 and rng.random() < PARTIAL_CANCEL
            when = paid + hours * rng.uniform(1, 30)
            self._schedule(when, "seller_cancel", order, (reason, False, items[:1] if partial else None))
            if not partial:
                order.cancel_planned = True
                return
            ship_at = max(ship_at, when + hours)
        elif draw < snc_p:
            order.cancel_planned = True
            self._schedule(paid + hours * rng.uniform(96, 120), "amazon_cancel", order,
                           "ShipmentNotConfirmed")
            return
        elif draw < policy_p:
            order.cancel_planned = True
            self._schedule(paid + hours * rng.uniform(1, 24), "amazon_cancel", order, "PolicyViolation")
            return
        order.ship_at = ship_at
        if len(items) > 1 and rng.random() < 0.2:
            self._schedule(paid + (ship_at - paid) / 2, "partial_ship", order)
        self._schedule(ship_at, "ship", order)
        if seller.focus:
            self._open.append(order)

    # --- the focus seller's incident -----------------------------------------

    def _control(self, now: datetime) -> None:
        """Cancel open orders of the focus seller until the tracked share meets the ramp, the
        newest first: the orders a seller out of stock cannot fill are the ones just placed (and
        buyers ask to cancel what they just bought). So the incident's cancels land in the most
        recent purchase hours, where the forecast's pace sees them."""
        stamp = self.timeline.stamp(now)
        orders, tracked = self._window.share(stamp)
        if orders == 0:
            return
        if self._baseline is None:
            self._baseline = 0.0 if self.scenario.buyer_requested else min(tracked / orders, self.scenario.peak)
        progress = min(1.0, (now - self.pivot) / self.ramp) if self.ramp else 1.0
        target = self._baseline + (self.scenario.peak - self._baseline) * progress
        needed = math.floor(target * orders) - tracked
        while needed > 0 and self._open:
            order = self._open.pop()
            if order.closed or order.cancel_planned or order.pending or \
                    order.ship_at is None or order.ship_at <= now:
                continue
            order.cancel_planned = True
            reason = _weighted(self._rng, self.scenario.reasons)
            self._schedule(now + STEP * self._rng.random(), "seller_cancel", order,
                           (reason, self.scenario.buyer_requested, None))
            needed -= 1

    def _track(self, order: _Order, table: str, amount: int = 1) -> None:
        if order.seller.focus and order.channel == "MFN":
            self._window.add(getattr(self._window, table), self.timeline.stamp(order.purchased), amount)

    # --- building the events -------------------------------------------------

    def _event(self, when: datetime, kind: str, order: _Order, detail) -> events.Event | None:
        if order.closed:
            return None
        stamp = self.timeline.stamp
        common = dict(
            schema_version=1,
            event_id=str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
            order_id=order.order_id,
            seller_id=order.seller.seller_id,
            marketplace=order.marketplace,
            fulfillment_channel=order.channel,
            purchase_date=stamp(order.purchased),
            occurred_at=stamp(when),
        )
        if kind == "placed":
            self._track(order, "orders")
            return events.OrderPlaced(order_status=detail, items=order.items, **common)
        if kind == "paid":
            order.pending = False
            return events.OrderStatusChanged(order_status="Unshipped", **common)
        if kind in ("ship", "partial_ship"):
            if kind == "ship":
                order.closed = True
            status = "Shipped" if kind == "ship" else "PartiallyShipped"
            return events.OrderStatusChanged(order_status=status, **common)
        status = "Pending" if order.pending else "Unshipped"
        if kind == "expire":
            order.closed = True
            self._track(order, "orders", -1)
            return events.OrderCancelled(initiator="amazon", reason="PaymentNotCompleted",
                                         buyer_requested=False, order_status_at_cancel="Pending",
                                         **common)
        if kind == "buyer_cancel":
            order.closed = True
            if order.pending:
                self._track(order, "orders", -1)
            return events.OrderCancelled(initiator="buyer", reason="BuyerCanceled",
                                         buyer_requested=False, order_status_at_cancel=status,
                                         **common)
        if kind == "amazon_cancel":
            order.closed = True
            if detail == "ShipmentNotConfirmed":
                self._count_fault(order, buyer_requested=False)
            return events.OrderCancelled(initiator="amazon", reason=detail, buyer_requested=False,
                                         order_status_at_cancel=status, **common)
        reason, buyer_requested, items = detail
        if items is None:
            order.closed = True
        self._count_fault(order, buyer_requested and reason == "BuyerCanceled")
        return events.OrderCancelled(initiator="seller", reason=reason,
                                     buyer_requested=buyer_requested,
                                     order_status_at_cancel=status, items=items, **common)

    def _count_fault(self, order: _Order, buyer_requested: bool) -> None:
        """Count a cancel toward the focus seller's tracked share (seller-fault, or requests)."""
        if order.fault_counted or buyer_requested != self.scenario.buyer_requested:
            return
        order.fault_counted = True
        self._track(order, "tracked")


def generate(scenario: str = "steady", seed: int = 1, *, start: datetime, end: datetime | None,
             sellers: int = 30, pivot: datetime | None = None,
             ramp: timedelta = timedelta(hours=4),
             timeline: Timeline | None = None) -> Iterator[events.Event]:
    """The events of one simulation, in occurred_at order (see `Simulation`)."""
    return Simulation(scenario, seed, start=start, end=end, sellers=sellers, pivot=pivot,
                      ramp=ramp, timeline=timeline).events()


def disorder(stream: Iterable[events.Event], duplicates: float = 0.0, reorder: float = 0.0,
             seed: int = 1) -> Iterator[events.Event]:
    """Resend some events (same event_id) and deliver some late, as real producers do.

    With probability `reorder` an event is held back until up to 500 later
    events have passed (so an order's placement can arrive after its
    cancellation); with probability `duplicates` it is sent again after up to
    50 later events. Anything in the stream that is not an event (an
    account-health report) passes through in place.
    """
    for rate, name in ((duplicates, "duplicates"), (reorder, "reorder")):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, not {rate}")
    rng = random.Random(seed)
    held: list[tuple[int, int, events.Event]] = []
    sequence = itertools.count()
    position = -1
    for event in stream:
        if not isinstance(event, events.Event):
            yield event
            continue
        position += 1
        while held and held[0][0] <= position:
            yield heapq.heappop(held)[2]
        if reorder and rng.random() < reorder:
            heapq.heappush(held, (position + rng.randint(1, 500), next(sequence), event))
        else:
            yield event
        if duplicates and rng.random() < duplicates:
            heapq.heappush(held, (position + rng.randint(0, 50), next(sequence), event))
    while held:
        yield heapq.heappop(held)[2]
