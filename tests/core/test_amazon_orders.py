"""Amazon order documents as events (streams/cancelwatch/core/amazon_orders.py) and the reading of files of them
(streams/cancelwatch/tools/import_orders.py with --dry-run): no services."""

from __future__ import annotations

import copy
import io
import json
from datetime import datetime, timedelta, timezone

import pytest

from cancelwatch import names

from cancelwatch.core import amazon_orders, events, ledger, policy as policy_module

from cancelwatch.tools import import_orders
from cancelwatch.core.amazon_orders import Rejected
from tests import oracle

POLICY = policy_module.load("streams/cancelwatch/core/policy.yaml")
NOW = datetime(2026, 11, 20, 12, tzinfo=timezone.utc)

# The getOrder response of amazon-documents.md, section 2.5 (MFN, IN, item 2 cancelled by the merchant).
EXAMPLE = {
    "order": {
        "orderId": "404-3962817-5529146",
        "createdTime": "2026-08-06T09:41:27Z",
        "lastUpdatedTime": "2026-08-07T13:05:52Z",
        "programs": [],
        "salesChannel": {"channelName": "AMAZON", "marketplaceId": "A21TJRUUN4KGV", "marketplaceName": "Amazon.in"},
        "proceeds": {
            "grandTotal": {"amount": "1299.00", "currencyCode": "INR"},
            "breakdowns": [{"type": "ITEM", "subtotal": {"amount": "1299.00", "currencyCode": "INR"}}],
        },
        "fulfillment": {
            "fulfillmentStatus": "SHIPPED",
            "fulfilledBy": "MERCHANT",
            "fulfillmentServiceLevel": "STANDARD",
            "shipByWindow": {"earliestDateTime": "2026-08-06T18:30:00Z", "latestDateTime": "2026-08-07T18:29:59Z"},
            "deliverByWindow": {"earliestDateTime": "2026-08-09T18:30:00Z", "latestDateTime": "2026-08-12T18:29:59Z"},
        },
        "orderItems": [
            {
                "orderItemId": "38271645509318",
                "quantityOrdered": 1,
                "product": {
                    "asin": "B0C7KQ2M4T",
                    "title": "Insulated Stainless Steel Water Bottle 1L, Black",
                    "sellerSku": "WB-SS-1L-BLK",
                    "condition": {"conditionType": "NEW", "conditionSubtype": "NEW"},
                    "price": {"unitPrice": {"amount": "1299.00", "currencyCode": "INR"}},
                },
                "proceeds": {
                    "proceedsTotal": {"amount": "1299.00", "currencyCode": "INR"},
                    "breakdowns": [{"type": "ITEM", "subtotal": {"amount": "1299.00", "currencyCode": "INR"}}],
                },
                "fulfillment": {"quantityFulfilled": 1, "quantityUnfulfilled": 0},
            },
            {
                "orderItemId": "38271645509342",
                "quantityOrdered": 2,
                "product": {
                    "asin": "B0B9XZ7R2L",
                    "title": "Silicone Bottle Sleeve, Grey",
                    "sellerSku": "SLV-SIL-GRY",
                    "condition": {"conditionType": "NEW", "conditionSubtype": "NEW"},
                    "price": {"unitPrice": {"amount": "449.00", "currencyCode": "INR"}},
                },
                "cancellation": {
                    "cancellationExecution": {"cancelledBy": "MERCHANT", "cancelReason": "NoInventory"},
                },
                "fulfillment": {"quantityFulfilled": 0, "quantityUnfulfilled": 0},
            },
        ],
        "packages": [
            {
                "packageReferenceId": "1",
                "createdTime": "2026-08-07T06:12:40Z",
                "packageStatus": {"status": "IN_TRANSIT", "detailedStatus": "PICKED_UP"},
                "carrier": "Delhivery",
                "shipTime": "2026-08-07T11:48:03Z",
                "shippingService": "Delhivery Surface",
                "trackingNumber": "1490817263541",
                "packageItems": [{"orderItemId": "38271645509318", "quantity": 1}],
            },
        ],
    },
}

EXAMPLE_EVENTS = [
    {
        "schema_version": 1, "type": "order_placed",
        "event_id": "sp-api:404-3962817-5529146:order_placed:29018f33ad0c118e71bb",
        "order_id": "404-3962817-5529146", "seller_id": "A1", "marketplace": "IN", "fulfillment_channel": "MFN",
        "purchase_date": "2026-08-06T09:41:27Z", "occurred_at": "2026-08-06T09:41:27Z",
        "order_status": "Unshipped",
        "items": [{"sku": "WB-SS-1L-BLK", "quantity": 1}, {"sku": "SLV-SIL-GRY", "quantity": 2}],
    },
    {
        "schema_version": 1, "type": "order_cancelled",
        "event_id": "sp-api:404-3962817-5529146:order_cancelled:e09947c1d12779685c96",
        "order_id": "404-3962817-5529146", "seller_id": "A1", "marketplace": "IN", "fulfillment_channel": "MFN",
        "purchase_date": "2026-08-06T09:41:27Z", "occurred_at": "2026-08-07T13:05:52Z",
        "initiator": "seller", "reason": "NoInventory", "buyer_requested": False,
        "order_status_at_cancel": "PartiallyShipped",
        "items": [{"sku": "SLV-SIL-GRY", "quantity": 2}],
        "reason_text": "NoInventory",
    },
]


def item(item_id: str = "1001", sku: str = "SKU-A", ordered: int = 1, fulfilled: int = 0,
         cancelled_by: str | None = None, reason: str | None = None, requester: str | None = None) -> dict:
    line = {"orderItemId": item_id, "quantityOrdered": ordered, "product": {"sellerSku": sku},
            "fulfillment": {"quantityFulfilled": fulfilled, "quantityUnfulfilled": ordered - fulfilled}}
    cancellation = {}
    if cancelled_by:
        cancellation["cancellationExecution"] = {"cancelledBy": cancelled_by}
        if reason is not None:
            cancellation["cancellationExecution"]["cancelReason"] = reason
    if requester:
        cancellation["cancellationRequest"] = {"requester": requester, "cancelReason": "Changed mind about purchase"}
    if cancellation:
        line["cancellation"] = cancellation
    return line


def order(order_id: str = "113-0000001-0000001", items: list[dict] | None = None, status: str = "UNSHIPPED",
          fulfilled_by: str = "MERCHANT", marketplace_id: str = "ATVPDKIKX0DER",
          created: str = "2026-11-19T10:00:00Z", updated: str = "2026-11-19T15:30:00Z") -> dict:
    return {"orderId": order_id, "createdTime": created, "lastUpdatedTime": updated,
            "salesChannel": {"channelName": "AMAZON", "marketplaceId": marketplace_id},
            "fulfillment": {"fulfillmentStatus": status, "fulfilledBy": fulfilled_by},
            "orderItems": items if items is not None else [item()]}


def mapped_values(document: dict, seller_id: str = "A1", now: datetime = NOW) -> list[dict]:
    return [mapped.value for found in amazon_orders.orders_in(document)
            for mapped in amazon_orders.map_order(found.order, seller_id, now=now, path=found.path)]


def decoded(values: list[dict]) -> list[events.Event]:
    return [events.decode(json.dumps(value).encode()) for value in values]


def dry_run(text: bytes, capsys) -> tuple[int, list[dict], str]:
    """import_orders.main(--dry-run) on `text` as stdin: exit status, events printed, stderr."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(text)))
        status = import_orders.main(["--seller-id", "A1", "--dry-run", "-"])
    out, err = capsys.readouterr()
    return status, [json.loads(line) for line in out.splitlines()], err


# --- the example ------------------------------------------------------------------------------

def test_the_example_order_maps_to_exactly_its_two_events():
    assert mapped_values(EXAMPLE, now=NOW) == EXAMPLE_EVENTS


def test_the_example_events_pass_the_strict_decoder_with_reason_text_ignored():
    mapped = [one for found in amazon_orders.orders_in(EXAMPLE)
              for one in amazon_orders.map_order(found.order, "A1", now=NOW, path=found.path)]
    assert [type(one.event) for one in mapped] == [events.OrderPlaced, events.OrderCancelled]
    assert [one.topic_role for one in mapped] == [names.ORDERS_TOPIC, names.CANCELLATIONS_TOPIC]
    for one in mapped:
        assert json.loads(one.raw) == one.value
        assert events.decode(one.raw, NOW) == one.event
        assert events.decode_on(one.topic_role, one.raw, NOW) == one.event
    assert mapped[1].event.items == [events.Item("SLV-SIL-GRY", 2)]


def test_the_example_counts_as_one_seller_fault_cancelled_order():
    stream = decoded(EXAMPLE_EVENTS)
    now = max(event.occurred_at.timestamp() for event in stream)
    answer = oracle.compute(stream, now, POLICY)[("A1", "IN")]
    assert [(w["days"], w["orders"], w["cancelled"], w["status"]) for w in answer["windows"]] == [
        (7, 1, 1, "breach"), (30, 1, 1, "breach")]
    assert answer["reasons"] == {"NoInventory": 1}


def test_the_same_document_maps_to_the_same_events_and_the_seller_id_is_part_of_the_ids():
    assert mapped_values(EXAMPLE) == mapped_values(copy.deepcopy(EXAMPLE))
    other = mapped_values(EXAMPLE, seller_id="A2")
    assert {value["event_id"] for value in other}.isdisjoint(value["event_id"] for value in EXAMPLE_EVENTS)


# --- who cancelled, at whose request, and what counts (contract sections 4 and 12) ---------------

COMBINATIONS = [
    # cancelledBy, requester, cancelReason -> initiator, buyer_requested, status at cancel, counted, cause
    ("MERCHANT", None, "NoInventory", "seller", False, "Unshipped", True, None),
    ("MERCHANT", "BUYER", "NoInventory", "seller", True, "Unshipped", True, None),
    ("MERCHANT", None, "BuyerCanceled", "seller", False, "Unshipped", True, None),
    ("MERCHANT", "BUYER", "BuyerCanceled", "seller", True, "Unshipped", False, "buyer_requested"),
    ("MERCHANT", "BUYER", "Buyer requested cancellation", "seller", True, "Unshipped", False, "buyer_requested"),
    ("BUYER", None, "Changed mind", "buyer", False, "Unshipped", False, "buyer_initiated"),
    ("BUYER", "BUYER", "BuyerCanceled", "buyer", True, "Unshipped", False, "buyer_initiated"),
    ("AMAZON", None, "ShipmentNotConfirmed", "amazon", False, "Unshipped", True, None),
    ("AMAZON", "BUYER", "ShipmentNotConfirmed", "amazon", True, "Unshipped", True, None),
    ("AMAZON", None, "PaymentNotCompleted", "amazon", False, "Pending", False, "pending"),
    ("AMAZON", "BUYER", "PaymentNotCompleted", "amazon", True, "Pending", False, "pending"),
    ("AMAZON", None, "PolicyViolation", "amazon", False, "Unshipped", False, "amazon_other"),
    ("AMAZON", "BUYER", "Something else", "amazon", True, "Unshipped", False, "amazon_other"),
]


@pytest.mark.parametrize("cancelled_by, requester, text, initiator, requested, status, counted, cause",
                         COMBINATIONS)
def test_every_cancelled_by_and_requester_maps_and_counts_as_the_contract_says(
        cancelled_by, requester, text, initiator, requested, status, counted, cause):
    document = order(items=[item(cancelled_by=cancelled_by, reason=text, requester=requester)], status="CANCELLED")
    placed, cancel = decoded(mapped_values(document))
    assert (cancel.initiator, cancel.buyer_requested, cancel.order_status_at_cancel) == (initiator, requested, status)
    assert placed.order_status == ("Pending" if cause == "pending" else "Unshipped")
    assert ledger.cancel_cause(POLICY, cancel) == cause
    record = ledger.apply(POLICY, ledger.apply(POLICY, None, placed), cancel)
    contribution = ledger.Contribution.of(record)
    assert (contribution.orders, contribution.cancelled) == (0 if cause == "pending" else 1, int(counted))
    window = oracle.compute([placed, cancel], cancel.occurred_at.timestamp(), POLICY)[("A1", "US")]["windows"][0]
    assert (window["orders"], window["cancelled"]) == (contribution.orders, contribution.cancelled)


def test_a_request_nobody_carried_out_is_no_cancellation():
    document = order(items=[item(requester="BUYER")])
    assert [value["type"] for value in mapped_values(document)] == ["order_placed"]


def test_a_shipped_line_makes_any_cancel_of_the_order_partially_shipped():
    document = order(items=[item("1", "SKU-A", ordered=3, fulfilled=1, cancelled_by="MERCHANT", reason="No inventory"),
                            item("2", "SKU-B", ordered=1, fulfilled=0)], status="PARTIALLY_SHIPPED")
    cancel = mapped_values(document)[1]
    assert cancel["order_status_at_cancel"] == "PartiallyShipped"
    assert cancel["items"] == [{"sku": "SKU-A", "quantity": 2}]


def test_items_cancelled_by_one_execution_share_an_event_and_other_executions_have_their_own():
    document = order(items=[
        item("1", "SKU-A", ordered=2, cancelled_by="MERCHANT", reason="NoInventory"),
        item("2", "SKU-B", ordered=1, cancelled_by="BUYER", reason="Changed mind"),
        item("3", "SKU-C", ordered=1, cancelled_by="MERCHANT", reason="NoInventory"),
        item("4", "SKU-A", ordered=1, cancelled_by="MERCHANT", reason="NoInventory"),
        item("5", "SKU-D", ordered=1),
    ])
    placed, *cancels = mapped_values(document)
    assert placed["items"] == [{"sku": "SKU-A", "quantity": 3}, {"sku": "SKU-B", "quantity": 1},
                               {"sku": "SKU-C", "quantity": 1}, {"sku": "SKU-D", "quantity": 1}]
    assert [(c["initiator"], c["items"]) for c in cancels] == [
        ("seller", [{"sku": "SKU-A", "quantity": 3}, {"sku": "SKU-C", "quantity": 1}]),
        ("buyer", [{"sku": "SKU-B", "quantity": 1}]),
    ]
    assert len({value["event_id"] for value in [placed, *cancels]}) == 3


def test_pending_orders_are_placed_pending_and_amazon_orders_are_afn():
    assert mapped_values(order(status="PENDING"))[0]["order_status"] == "Pending"
    assert mapped_values(order(status="PENDING_AVAILABILITY"))[0]["order_status"] == "Pending"
    assert mapped_values(order(fulfilled_by="AMAZON"))[0]["fulfillment_channel"] == "AFN"


def test_every_marketplace_id_of_the_table_maps_to_a_contract_marketplace():
    assert sorted(amazon_orders.MARKETPLACE_IDS.values()) == sorted(names.MARKETPLACES)
    for marketplace_id, code in amazon_orders.MARKETPLACE_IDS.items():
        assert mapped_values(order(marketplace_id=marketplace_id))[0]["marketplace"] == code


def test_timestamps_are_written_in_utc_and_occurred_at_of_a_cancel_is_last_updated_time():
    document = order(created="2026-11-19T15:00:00+05:30", updated="2026-11-19T17:45:10.250+05:30",
                     items=[item(cancelled_by="MERCHANT", reason="NoInventory")])
    placed, cancel = mapped_values(document)
    assert (placed["purchase_date"], placed["occurred_at"]) == ("2026-11-19T09:30:00Z", "2026-11-19T09:30:00Z")
    assert (cancel["purchase_date"], cancel["occurred_at"]) == ("2026-11-19T09:30:00Z", "2026-11-19T12:15:10.250000Z")


def test_a_later_snapshot_of_the_same_order_still_counts_it_once():
    """The order fetched again after an unrelated update: the cancel's occurred_at (lastUpdatedTime)
    moves, so its event_id differs, and the order still counts once."""
    first = order(items=[item("1", cancelled_by="MERCHANT", reason="NoInventory"), item("2", "SKU-B")])
    later = copy.deepcopy(first)
    later["lastUpdatedTime"] = "2026-11-20T08:00:00Z"
    later["orderItems"][1]["fulfillment"] = {"quantityFulfilled": 1, "quantityUnfulfilled": 0}
    one, two = mapped_values(first), mapped_values(later)
    assert one[0] == two[0]
    assert one[1]["event_id"] != two[1]["event_id"]
    stream = decoded(one + two + one)
    window = oracle.compute(stream, max(e.occurred_at.timestamp() for e in stream), POLICY)[("A1", "US")]["windows"][0]
    assert (window["orders"], window["cancelled"]) == (1, 1)


# --- reasons ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, code", [
    ("NoInventory", "NoInventory"),
    ("No inventory", "NoInventory"),
    ("NO_INVENTORY", "NoInventory"),
    ("no-inventory.", "NoInventory"),
    ("Out of stock", "NoInventory"),
    ("Item out of stock", "NoInventory"),
    ("ProductOutofStock", "NoInventory"),
    ("Shipping address undeliverable", "ShippingAddressUndeliverable"),
    ("Undeliverable address", "ShippingAddressUndeliverable"),
    ("CustomerAddressIncorrect", "ShippingAddressUndeliverable"),
    ("Buyer canceled", "BuyerCanceled"),
    ("Buyer Cancelled", "BuyerCanceled"),
    ("Buyer requested cancellation", "BuyerCanceled"),
    ("Customer cancelled", "BuyerCanceled"),
    ("CustomerCancel", "BuyerCanceled"),
    ("Customer exchange", "CustomerExchange"),
    ("Exchange", "CustomerExchange"),
    ("General adjustment", "GeneralAdjustment"),
    ("Pricing error", "GeneralAdjustment"),
    ("Carrier credit decision", "CarrierCreditDecision"),
    ("Risk assessment information not valid", "RiskAssessmentInformationNotValid"),
    ("Carrier coverage failure", "CarrierCoverageFailure"),
    ("Customer return", "CustomerReturn"),
    ("Merchandise not received", "MerchandiseNotReceived"),
    ("Shipment not confirmed", "ShipmentNotConfirmed"),
    ("payment not completed", "PaymentNotCompleted"),
    ("Policy Violation", "PolicyViolation"),
    ("other", "Other"),
    ("Found cheaper somewhere else.", "Other"),
    ("No inventory left in the warehouse", "Other"),
    ("", "Other"),
    (None, "Other"),
])
def test_reason_text_is_matched_to_a_code(text, code):
    assert amazon_orders.match_reason(text) == code


def test_every_phrase_of_the_table_names_a_contract_reason_and_none_shadows_a_code():
    for phrase, code in amazon_orders.REASON_PHRASES.items():
        assert code in names.REASONS
        assert amazon_orders.normalize(phrase) not in {amazon_orders.normalize(r) for r in names.REASONS}


def test_unknown_reason_text_becomes_other_and_keeps_the_text():
    document = order(items=[item(cancelled_by="MERCHANT", reason="Damaged in warehouse, see ticket #4411")])
    cancel = mapped_values(document)[1]
    assert (cancel["reason"], cancel["reason_text"]) == ("Other", "Damaged in warehouse, see ticket #4411")
    assert decoded([cancel])[0].reason == "Other"


def test_a_cancel_without_reason_text_is_other_without_reason_text():
    cancel = mapped_values(order(items=[item(cancelled_by="BUYER")]))[1]
    assert cancel["reason"] == "Other" and "reason_text" not in cancel


# --- documents that cannot be mapped -----------------------------------------------------------

def _without(path: str):
    def change(document: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            document = document[int(key)] if isinstance(document, list) else document[key]
        del document[last]
    return change


def _set(path: str, value):
    def change(document: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            document = document[int(key)] if isinstance(document, list) else document[key]
        document[int(last) if isinstance(document, list) else last] = value
    return change


BAD = [
    (_without("orderId"), "orderId", "missing"),
    (_set("orderId", ""), "orderId", "empty"),
    (_set("orderId", 404), "orderId", "expected a string"),
    (_set("orderId", "4" * 65), "orderId", "over the 64"),
    (_without("createdTime"), "createdTime", "missing"),
    (_set("createdTime", "06/08/2026 09:41"), "createdTime", "not an RFC 3339 timestamp"),
    (_set("createdTime", "2026-08-06T09:41:27"), "createdTime", "no UTC offset"),
    (_set("createdTime", "2099-01-01T00:00:00Z"), "createdTime", "more than 5 minutes ahead"),
    (_set("lastUpdatedTime", "yesterday"), "lastUpdatedTime", "not an RFC 3339 timestamp"),
    (_set("lastUpdatedTime", "2099-01-01T00:00:00Z"), "lastUpdatedTime", "more than 5 minutes ahead"),
    (_without("salesChannel"), "salesChannel", "missing"),
    (_without("salesChannel.marketplaceId"), "salesChannel.marketplaceId", "missing"),
    (_set("salesChannel.marketplaceId", "A28R8C7NBKEWEA"), "salesChannel.marketplaceId", "not the id of a marketplace"),
    (_without("fulfillment"), "fulfillment", "includedData=FULFILLMENT"),
    (_without("fulfillment.fulfilledBy"), "fulfillment.fulfilledBy", "missing"),
    (_set("fulfillment.fulfilledBy", "SELLER"), "fulfillment.fulfilledBy", "neither MERCHANT nor AMAZON"),
    (_without("orderItems"), "orderItems", "missing"),
    (_set("orderItems", {}), "orderItems", "expected a list"),
    (_set("orderItems.0", "item"), "orderItems[0]", "expected an object"),
    (_without("orderItems.0.orderItemId"), "orderItems[0].orderItemId", "missing"),
    (_without("orderItems.1.product.sellerSku"), "orderItems[1].product.sellerSku", "missing"),
    (_set("orderItems.0.quantityOrdered", -1), "orderItems[0].quantityOrdered", "whole number"),
    (_set("orderItems.0.quantityOrdered", "1"), "orderItems[0].quantityOrdered", "whole number"),
    (_set("orderItems.0.fulfillment.quantityFulfilled", True), "orderItems[0].fulfillment.quantityFulfilled",
     "whole number"),
    (_without("orderItems.1.cancellation.cancellationExecution.cancelledBy"),
     "orderItems[1].cancellation.cancellationExecution.cancelledBy", "missing"),
    (_set("orderItems.1.cancellation.cancellationExecution.cancelledBy", "SELLER"),
     "orderItems[1].cancellation.cancellationExecution.cancelledBy", "none of MERCHANT, BUYER, AMAZON"),
    (_set("orderItems.1.cancellation.cancellationExecution.cancelReason", 7),
     "orderItems[1].cancellation.cancellationExecution.cancelReason", "expected a string"),
    (_set("orderItems.1.cancellation.cancellationRequest", "BUYER"),
     "orderItems[1].cancellation.cancellationRequest", "expected an object"),
]


@pytest.mark.parametrize("change, field, problem", BAD)
def test_an_order_that_cannot_be_mapped_names_the_field_and_yields_nothing(change, field, problem):
    document = copy.deepcopy(EXAMPLE)
    change(document["order"])
    with pytest.raises(Rejected) as rejected:
        mapped_values(document)
    assert rejected.value.field == "order." + field
    assert problem in rejected.value.problem


def test_a_cancelled_order_without_cancellation_data_is_refused_rather_than_counted_as_placed():
    document = order(status="CANCELLED", items=[item()])
    with pytest.raises(Rejected, match="includedData=CANCELLATION") as rejected:
        mapped_values(document)
    assert rejected.value.field == "orderItems"
    document["orderItems"][0]["cancellation"] = {"cancellationRequest": {"requester": "BUYER"}}
    with pytest.raises(Rejected, match="no item says who cancelled"):
        mapped_values(document)


def test_last_updated_time_is_needed_only_for_a_cancel():
    document = order()
    del document["lastUpdatedTime"]
    assert len(mapped_values(document)) == 1


@pytest.mark.parametrize("document, field, problem", [
    ([EXAMPLE], "", "expected a JSON object, not a list"),
    ({"orders": {"orderId": "x"}}, "orders", "expected a list of orders"),
    ({"payload": {"AmazonOrderId": "x"}}, "payload", "Orders API v0"),
    ({"pagination": {}}, "", "not an order, getOrder response or searchOrders page"),
])
def test_documents_that_hold_no_order_are_refused(document, field, problem):
    [found] = amazon_orders.orders_in(document)
    assert found.rejected.field == field and problem in found.rejected.problem


# --- reading files: JSON Lines, one document, pages, getOrder responses, bare orders -------------

def _line(document) -> bytes:
    return json.dumps(document).encode() + b"\n"


def test_json_lines_of_every_kind_of_document_are_read(capsys):
    bare = order("113-0000001-0000002", items=[item(cancelled_by="BUYER", reason="Changed mind")])
    page = {"orders": [order("113-0000001-0000003"), order("113-0000001-0000004", fulfilled_by="AMAZON")],
            "pagination": {"nextToken": "abc"}, "createdBefore": "2026-11-20T00:00:00Z"}
    text = _line(EXAMPLE) + b"\n" + _line(bare) + _line(page) + _line({"orders": []})
    status, printed, err = dry_run(text, capsys)
    assert status == 0, err
    assert printed[:2] == EXAMPLE_EVENTS
    assert [(value["order_id"], value["type"]) for value in printed[2:]] == [
        ("113-0000001-0000002", "order_placed"), ("113-0000001-0000002", "order_cancelled"),
        ("113-0000001-0000003", "order_placed"), ("113-0000001-0000004", "order_placed")]
    assert "import-orders: 4 orders, 6 events printed (--dry-run, nothing published); 0 documents rejected" in err


def test_one_pretty_printed_document_and_a_list_of_documents_are_read(capsys):
    status, printed, _ = dry_run(json.dumps(EXAMPLE, indent=2).encode(), capsys)
    assert (status, printed) == (0, EXAMPLE_EVENTS)
    page = {"orders": [EXAMPLE["order"], order()]}
    status, printed, _ = dry_run(json.dumps([page, EXAMPLE], indent=1).encode(), capsys)
    assert status == 0
    assert printed[:2] == EXAMPLE_EVENTS and printed[3:] == EXAMPLE_EVENTS
    assert printed[2]["order_id"] == "113-0000001-0000001"


def test_bad_documents_are_reported_by_position_and_field_and_nothing_of_them_is_printed(capsys):
    unknown_marketplace = order("113-0000001-0000005", marketplace_id="A28R8C7NBKEWEA",
                                items=[item(cancelled_by="MERCHANT", reason="NoInventory")])
    bad_cancel = order("113-0000001-0000006", items=[item(cancelled_by="NOBODY")])
    page = {"orders": [order("113-0000001-0000007"), bad_cancel]}
    text = (_line(EXAMPLE) + _line(unknown_marketplace) + b"{not json\n" + _line(page)
            + _line({"order": {"createdTime": "2026-11-19T10:00:00Z"}}))
    status, printed, err = dry_run(text, capsys)
    assert status == 1
    assert {value["order_id"] for value in printed} == {"404-3962817-5529146", "113-0000001-0000007"}
    assert len(printed) == 3
    lines = err.splitlines()
    assert lines[0].startswith("line 2: salesChannel.marketplaceId: 'A28R8C7NBKEWEA' is not the id")
    assert lines[1].startswith("line 3: not valid JSON")
    assert lines[2] == "line 4: orders[1].orderItems[0].cancellation.cancellationExecution.cancelledBy: " \
                       "'NOBODY' is none of MERCHANT, BUYER, AMAZON"
    assert lines[3] == "line 5: order.orderId: missing"
    assert lines[4] == "import-orders: 2 orders, 3 events printed (--dry-run, nothing published); " \
                       "4 documents rejected"


def test_a_document_that_is_not_json_is_reported_with_where_it_breaks(capsys):
    text = json.dumps(EXAMPLE, indent=2).encode().replace(b'"orderItems"', b'orderItems')
    status, printed, err = dry_run(text, capsys)
    assert (status, printed) == (1, [])
    assert err.startswith("document: not valid JSON at line ")


def test_an_empty_input_imports_nothing(capsys):
    assert dry_run(b"\n\n", capsys)[:2] == (0, [])


def test_a_seller_id_is_required_and_bounded(capsys):
    with pytest.raises(SystemExit) as exit_info:
        import_orders.main(["--dry-run", "-"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        import_orders.main(["--seller-id", "S" * 65, "--dry-run", "-"])
    assert "1 to 64 characters" in capsys.readouterr().err


def test_an_unreadable_file_exits_2(tmp_path, capsys):
    assert import_orders.main(["--seller-id", "A1", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_now_defaults_to_the_wall_clock():
    future = order(created=(datetime.now(timezone.utc) + timedelta(hours=1)).isoformat())
    with pytest.raises(Rejected, match="ahead of the wall clock"):
        amazon_orders.map_order(future, "A1")
