"""The per-order ledger (contract section 4): what one order's events make of it.

Every initiator, reason, buyer request and status at cancel against the
oracle written from the contract; duplicates and reordering of an order's
events (hypothesis); the earliest purchase date; which seller-fault cancel
names the reason; item-level cancels; the stored form of a bucket.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from pathlib import Path

from hypothesis import given, settings as hypothesis_settings, strategies as st

from cancelwatch import names

from cancelwatch.core import events, ledger, policy as policy_module
from cancelwatch.core.ledger import Contribution
from tests import oracle

POLICY_FILE = Path(policy_module.__file__).with_name("policy.yaml")
POLICY = policy_module.load(POLICY_FILE)
PLACED_AT = datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)
AN_HOUR = timedelta(hours=1)
SKUS = ("SKU-A", "SKU-B", "SKU-C")
STATUSES_AT_CANCEL = ("Pending", "Unshipped", "PartiallyShipped")
PROPERTIES = hypothesis_settings(max_examples=100, deadline=None)


def common(**changes) -> dict:
    fields = dict(schema_version=1, event_id="e-1", order_id="113-1234567-1234567", seller_id="A1",
                  marketplace="US", fulfillment_channel="MFN", purchase_date=PLACED_AT,
                  occurred_at=PLACED_AT + AN_HOUR)
    return fields | changes


def placed(status: str = "Unshipped", items=None, **changes) -> events.OrderPlaced:
    return events.OrderPlaced(**common(**changes), order_status=status, items=items)


def cancel(initiator: str = "seller", reason: str = "NoInventory", buyer_requested: bool = False,
           status: str = "Unshipped", items=None, **changes) -> events.OrderCancelled:
    return events.OrderCancelled(**common(**changes), initiator=initiator, reason=reason,
                                 buyer_requested=buyer_requested, order_status_at_cancel=status, items=items)


def lines(*skus: str) -> list[events.Item]:
    return [events.Item(sku=sku, quantity=1) for sku in skus]


def record_of(*order_events) -> ledger.Record:
    record = None
    for event in order_events:
        record = ledger.apply(POLICY, record, event)
    return record


def expected(order_events) -> Contribution:
    """Section 4 for one order, from the oracle's reading of the contract."""
    cancels = [event for event in order_events if isinstance(event, events.OrderCancelled)]
    causes = {oracle.cause(event) for event in cancels} - {None}
    if any(event.order_status_at_cancel == "Pending" for event in cancels):
        return Contribution(orders=0, cancelled=0, reason=None, causes=ordered(causes))
    faults = [event for event in cancels if oracle.counts_against_seller(event)]
    if not faults:
        return Contribution(orders=1, cancelled=0, reason=None, causes=ordered(causes))
    first = min(faults, key=lambda event: (event.occurred_at, names.REASONS.index(event.reason)))
    return Contribution(orders=1, cancelled=1, reason=first.reason, causes=ordered(causes))


def ordered(causes: set[str]) -> tuple[str, ...]:
    return tuple(cause for cause in ledger.CAUSE_BITS if cause in causes)


# -- one cancellation: every combination --------------------------------------------------

NAMED_CANCELS = {
    "seller, out of stock": (
        cancel("seller", "NoInventory"), Contribution(1, 1, "NoInventory", ())),
    "seller, BuyerCanceled at the buyer's request": (
        cancel("seller", "BuyerCanceled", buyer_requested=True), Contribution(1, 0, None, ("buyer_requested",))),
    "seller, BuyerCanceled without a buyer request": (
        cancel("seller", "BuyerCanceled", buyer_requested=False), Contribution(1, 1, "BuyerCanceled", ())),
    "seller, another reason at the buyer's request": (
        cancel("seller", "NoInventory", buyer_requested=True), Contribution(1, 1, "NoInventory", ())),
    "buyer": (
        cancel("buyer", "BuyerCanceled", buyer_requested=True), Contribution(1, 0, None, ("buyer_initiated",))),
    "amazon, shipment never confirmed": (
        cancel("amazon", "ShipmentNotConfirmed"), Contribution(1, 1, "ShipmentNotConfirmed", ())),
    "amazon, shipment never confirmed, partly shipped": (
        cancel("amazon", "ShipmentNotConfirmed", status="PartiallyShipped"),
        Contribution(1, 1, "ShipmentNotConfirmed", ())),
    "amazon, unpaid": (
        cancel("amazon", "PaymentNotCompleted"), Contribution(1, 0, None, ("amazon_other",))),
    "amazon, policy violation": (
        cancel("amazon", "PolicyViolation"), Contribution(1, 0, None, ("amazon_other",))),
    "seller, while Pending": (
        cancel("seller", "NoInventory", status="Pending"), Contribution(0, 0, None, ("pending",))),
    "amazon, shipment never confirmed, while Pending": (
        cancel("amazon", "ShipmentNotConfirmed", status="Pending"), Contribution(0, 0, None, ("pending",))),
}


def test_named_cancellations_give_their_contribution():
    got = {name: Contribution.of(record_of(event)) for name, (event, _) in NAMED_CANCELS.items()}
    assert got == {name: want for name, (_, want) in NAMED_CANCELS.items()}


def test_every_initiator_reason_request_and_status_gives_the_contract_contribution():
    wrong = {}
    combinations = list(itertools.product(names.INITIATORS, names.REASONS, (False, True), STATUSES_AT_CANCEL))
    for initiator, reason, requested, status in combinations:
        event = cancel(initiator, reason, requested, status)
        got = Contribution.of(record_of(event))
        if got != expected([event]):
            wrong[(initiator, reason, requested, status)] = got
    assert wrong == {}
    assert len(combinations) == 3 * 14 * 2 * 3


def test_orders_that_were_never_cancelled_count_in_the_denominator_only():
    assert Contribution.of(record_of(placed("Unshipped"))) == Contribution(1, 0, None, ())
    # Pending that never got cancelled still counts: only a cancel while Pending takes it out.
    assert Contribution.of(record_of(placed("Pending"))) == Contribution(1, 0, None, ())
    changed = events.OrderStatusChanged(**common(), order_status="Shipped")
    assert Contribution.of(record_of(changed)) == Contribution(1, 0, None, ())
    assert Contribution.of(None) == Contribution(0, 0, None, ())


def test_an_order_known_only_from_its_cancellation_counts():
    assert Contribution.of(record_of(cancel())) == Contribution(1, 1, "NoInventory", ())


def test_a_cancel_while_pending_takes_the_order_out_whatever_else_happened():
    pending = cancel("seller", "PaymentNotCompleted", status="Pending", items=lines("SKU-A"))
    fault = cancel("seller", "NoInventory", occurred_at=PLACED_AT + 3 * AN_HOUR)
    for order_events in itertools.permutations([placed("Pending"), pending, fault]):
        record = record_of(*order_events)
        assert Contribution.of(record) == Contribution(0, 0, None, ("pending",))
        assert not record.sku_faulted("SKU-A")


def test_an_excluded_cancel_does_not_undo_a_seller_fault_one():
    record = record_of(cancel("buyer", "BuyerCanceled", True), cancel("seller", "NoInventory"))
    contribution = Contribution.of(record)
    assert (contribution.orders, contribution.cancelled, contribution.reason) == (1, 1, "NoInventory")
    assert contribution.causes == ("buyer_initiated",)


def test_the_policy_file_decides_what_counts():
    text = POLICY_FILE.read_text()
    assert "    - {initiator: seller}\n" in text
    only_unconfirmed = policy_module.parse(text.replace("    - {initiator: seller}\n", ""))
    seller_cancel = cancel("seller", "NoInventory")
    record = ledger.apply(only_unconfirmed, None, seller_cancel)
    assert Contribution.of(record) == Contribution(1, 0, None, ("other",))
    assert ledger.cancel_cause(only_unconfirmed, seller_cancel) == "other"
    assert ledger.cancel_cause(POLICY, seller_cancel) is None


# -- one order, many events: duplicates and any order ---------------------------------------

# Purchase dates one order's events may carry: the same instant in other offsets, rounded or
# truncated a little, an hour (a bucket) apart.
PURCHASE_DATES = (
    PLACED_AT, PLACED_AT.astimezone(timezone(timedelta(hours=5, minutes=30))),
    PLACED_AT + timedelta(seconds=0.8), PLACED_AT - timedelta(seconds=1), PLACED_AT - AN_HOUR,
    PLACED_AT + AN_HOUR,
)
# Few distinct moments, so two cancels often happen at the same instant.
OCCURRED = tuple(PLACED_AT + AN_HOUR + timedelta(minutes=minutes) for minutes in (0, 0, 5, 90))
item_lines = st.none() | st.lists(st.builds(events.Item, sku=st.sampled_from(SKUS), quantity=st.integers(1, 3)),
                                  min_size=1, max_size=2)


@st.composite
def order_events(draw) -> list[events.Event]:
    """Between 1 and 6 distinct events of one order."""
    drawn = []
    for index in range(draw(st.integers(1, 6))):
        fields = common(event_id=f"e-{index}", purchase_date=draw(st.sampled_from(PURCHASE_DATES)),
                        occurred_at=draw(st.sampled_from(OCCURRED)))
        kind = draw(st.sampled_from(("placed", "changed", "cancelled", "cancelled")))
        if kind == "placed":
            drawn.append(events.OrderPlaced(**fields, order_status=draw(st.sampled_from(("Pending", "Unshipped"))),
                                            items=draw(item_lines)))
        elif kind == "changed":
            drawn.append(events.OrderStatusChanged(
                **fields, order_status=draw(st.sampled_from(("Unshipped", "PartiallyShipped", "Shipped")))))
        else:
            drawn.append(events.OrderCancelled(
                **fields, initiator=draw(st.sampled_from(names.INITIATORS)),
                reason=draw(st.sampled_from(("NoInventory", "BuyerCanceled", "ShipmentNotConfirmed",
                                             "PaymentNotCompleted", "CustomerExchange"))),
                buyer_requested=draw(st.booleans()),
                order_status_at_cancel=draw(st.sampled_from(STATUSES_AT_CANCEL)), items=draw(item_lines)))
    return drawn


@PROPERTIES
@given(order_events())
def test_an_orders_record_is_what_the_contract_says(drawn):
    record = record_of(*drawn)
    assert Contribution.of(record) == expected(drawn)
    assert record.purchase == min(int(event.purchase_date.timestamp()) for event in drawn)


@PROPERTIES
@given(order_events(), st.data())
def test_applying_an_event_twice_is_applying_it_once(drawn, data):
    once = record_of(*drawn)
    event = data.draw(st.sampled_from(drawn))
    assert ledger.apply(POLICY, once, event) == once
    doubled = [copy for event in drawn for copy in (event, event)]
    assert record_of(*doubled) == once


@PROPERTIES
@given(order_events(), st.data())
def test_any_order_of_an_orders_events_with_any_repeats_gives_the_same_record(drawn, data):
    repeats = data.draw(st.lists(st.sampled_from(drawn), max_size=4))
    stream = data.draw(st.permutations(drawn + repeats))
    assert record_of(*stream) == record_of(*drawn)


@PROPERTIES
@given(order_events(), st.data())
def test_apply_leaves_the_record_it_is_given_unchanged(drawn, data):
    before = record_of(*drawn)
    kept = before.copy()
    ledger.apply(POLICY, before, data.draw(st.sampled_from(drawn)))
    ledger.apply(POLICY, before, cancel("seller", "NoInventory", items=lines("SKU-NEW")))
    assert before == kept


# -- purchase date and reason attribution ---------------------------------------------------

def test_the_earliest_purchase_date_wins_whatever_the_offset():
    # 10:30+01:00 is 09:30Z: earlier than 10:00Z though its clock reads later.
    plus_one = timezone(timedelta(hours=1))
    early = cancel(purchase_date=datetime(2026, 11, 20, 10, 30, tzinfo=plus_one))
    late = placed(purchase_date=PLACED_AT)
    for order_events in ([early, late], [late, early]):
        assert record_of(*order_events).purchase == int(datetime(2026, 11, 20, 9, 30, tzinfo=timezone.utc).timestamp())


def test_the_purchase_date_is_kept_in_whole_seconds():
    truncated = placed(purchase_date=PLACED_AT)
    rounded_up = placed(purchase_date=PLACED_AT + timedelta(seconds=0.8))
    assert record_of(rounded_up, truncated).purchase == record_of(truncated).purchase == int(PLACED_AT.timestamp())


def test_the_reason_is_the_earliest_seller_fault_cancels():
    first = cancel("seller", "ShippingAddressUndeliverable", occurred_at=PLACED_AT + AN_HOUR)
    second = cancel("seller", "NoInventory", occurred_at=PLACED_AT + 2 * AN_HOUR)
    for order_events in ([first, second], [second, first]):
        assert Contribution.of(record_of(*order_events)).reason == "ShippingAddressUndeliverable"


def test_an_earlier_excluded_cancel_does_not_name_the_reason():
    buyer = cancel("buyer", "BuyerCanceled", True, occurred_at=PLACED_AT + AN_HOUR)
    requested = cancel("seller", "BuyerCanceled", True, occurred_at=PLACED_AT + AN_HOUR)
    unpaid = cancel("amazon", "PaymentNotCompleted", occurred_at=PLACED_AT + AN_HOUR)
    unconfirmed = cancel("amazon", "ShipmentNotConfirmed", occurred_at=PLACED_AT + 5 * AN_HOUR)
    for order_events in itertools.permutations([buyer, requested, unpaid, unconfirmed]):
        assert Contribution.of(record_of(*order_events)).reason == "ShipmentNotConfirmed"


def test_cancels_at_the_same_moment_are_attributed_by_reason_order():
    moment = PLACED_AT + AN_HOUR
    tied = [cancel("amazon", "ShipmentNotConfirmed", occurred_at=moment),
            cancel("seller", "CarrierCoverageFailure", occurred_at=moment),
            cancel("seller", "ShippingAddressUndeliverable", occurred_at=moment.astimezone(
                timezone(timedelta(hours=-8))))]
    assert names.REASONS.index("ShippingAddressUndeliverable") < names.REASONS.index("CarrierCoverageFailure") \
        < names.REASONS.index("ShipmentNotConfirmed")
    for order_events in itertools.permutations(tied):
        assert Contribution.of(record_of(*order_events)).reason == "ShippingAddressUndeliverable"


def test_attribution_uses_sub_second_occurred_at():
    earlier = cancel("seller", "Other", occurred_at=PLACED_AT + AN_HOUR)
    later = cancel("seller", "NoInventory", occurred_at=PLACED_AT + AN_HOUR + timedelta(microseconds=1))
    for order_events in ([earlier, later], [later, earlier]):
        assert Contribution.of(record_of(*order_events)).reason == "Other"


# -- item-level cancels ------------------------------------------------------------------

def test_item_cancels_count_the_order_once_and_mark_only_their_skus():
    order = placed(items=lines(*SKUS))
    first = cancel("seller", "NoInventory", items=lines("SKU-A"), occurred_at=PLACED_AT + AN_HOUR)
    second = cancel("seller", "NoInventory", items=lines("SKU-B"), occurred_at=PLACED_AT + 2 * AN_HOUR)
    for order_events in itertools.permutations([order, first, second]):
        record = record_of(*order_events)
        assert Contribution.of(record) == Contribution(1, 1, "NoInventory", ())
        assert record.skus == SKUS
        assert [sku for sku in SKUS if record.sku_faulted(sku)] == ["SKU-A", "SKU-B"]


def test_a_whole_order_cancel_marks_every_sku():
    record = record_of(placed(items=lines("SKU-A", "SKU-B")), cancel("seller", "NoInventory", items=lines("SKU-A")),
                       cancel("amazon", "ShipmentNotConfirmed"))
    assert Contribution.of(record).cancelled == 1
    assert record.sku_faulted("SKU-A") and record.sku_faulted("SKU-B")


def test_an_excluded_item_cancel_marks_no_sku():
    order = placed(items=lines("SKU-A", "SKU-B"))
    for excluded in (cancel("buyer", "BuyerCanceled", True, items=lines("SKU-A")),
                     cancel("seller", "BuyerCanceled", True, items=lines("SKU-A")),
                     cancel("amazon", "PaymentNotCompleted", items=lines("SKU-A"))):
        record = record_of(order, excluded)
        assert Contribution.of(record).cancelled == 0
        assert not record.sku_faulted("SKU-A") and not record.sku_faulted("SKU-B")


def test_skus_are_learnt_from_cancels_too():
    record = record_of(cancel("seller", "NoInventory", items=lines("SKU-B")), placed(items=lines("SKU-A")))
    assert record.skus == ("SKU-A", "SKU-B")
    assert record.sku_faulted("SKU-B") and not record.sku_faulted("SKU-A")


# -- the stored bucket ----------------------------------------------------------------------

@PROPERTIES
@given(st.dictionaries(st.text(min_size=1, max_size=20), order_events(), max_size=4))
def test_a_bucket_decodes_to_what_was_encoded(orders):
    bucket = {order_id: record_of(*drawn) for order_id, drawn in orders.items()}
    raw = ledger.encode_bucket(bucket)
    assert isinstance(raw, bytes)
    decoded = ledger.decode_bucket(raw)
    assert decoded == bucket
    assert {order_id: Contribution.of(record) for order_id, record in decoded.items()} == {
        order_id: Contribution.of(record) for order_id, record in bucket.items()}


def test_a_record_with_only_defaults_round_trips():
    bucket = {"O1": ledger.Record(purchase=int(PLACED_AT.timestamp())), "": ledger.Record(purchase=0)}
    assert ledger.decode_bucket(ledger.encode_bucket(bucket)) == bucket
    assert ledger.decode_bucket(ledger.encode_bucket({})) == {}


def test_every_cause_a_record_can_carry_is_a_documented_excluded_cause():
    # the metric's cause label, the API's `excluded` keys and the series bound all come from
    # names.EXCLUDED_CAUSES: a cause the ledger can give must be among them
    assert tuple(ledger.CAUSE_BITS) == names.EXCLUDED_CAUSES
