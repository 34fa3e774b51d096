"""Amazon Orders API v2026-01-01 documents as contract events (contract section 12).

A library with no Kafka and no files inside, for `cancelwatch import-orders`
and for a seller's own SP-API poller alike:

    for found in amazon_orders.orders_in(response_json):
        for mapped in amazon_orders.map_order(found.order, "A1", path=found.path):
            send(topic_for[mapped.topic_role], key=mapped.value["seller_id"], value=mapped.raw)

`orders_in` finds the orders of a getOrder response (`{"order": ...}`), a
searchOrders page (`{"orders": [...]}`) or a bare order. `map_order` turns one
order into its `order_placed` and `order_cancelled` events, each checked with
the worker's strict decoder, or raises `Rejected` naming the field at fault;
a rejected order yields no event at all. The mapping table and the choices
behind it are in docs/amazon-orders.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import datetime, timezone
from typing import Any, Iterator

import orjson

from cancelwatch import names

from cancelwatch.core import events

# salesChannel.marketplaceId -> the contract's country code (amazon-documents.md, section 4).
MARKETPLACE_IDS = {
    "ATVPDKIKX0DER": "US", "A2EUQ1WTGCTBG2": "CA", "A1AM78C64UM0Y8": "MX", "A2Q3Y263D00KWC": "BR",
    "A1F83G8C2ARO7P": "UK", "A1PA6795UKMFR9": "DE", "A13V1IB3VIYZZH": "FR", "APJ6JRA9NG5V4": "IT",
    "A1RKKUPIHCS9HS": "ES", "A1805IZSGTT6HS": "NL", "A2NODRKZP88ZB9": "SE", "A1C3SOZRARQ6R3": "PL",
    "AMEN7PMS3EDWL": "BE", "A33AVAJ2PDY3EV": "TR", "A2VIGQ35RCS4UG": "AE", "A17E79C6D8DWNP": "SA",
    "ARBP9OOSHTCHU": "EG", "A21TJRUUN4KGV": "IN", "A1VC38T7YXB528": "JP", "A39IBJ37TRP1C6": "AU",
    "A19VAU5U5O7RUS": "SG",
}
FULFILLED_BY = {"MERCHANT": "MFN", "AMAZON": "AFN"}
CANCELLED_BY = {"MERCHANT": "seller", "BUYER": "buyer", "AMAZON": "amazon"}
PENDING_STATUSES = ("PENDING", "PENDING_AVAILABILITY")

# Phrasings of Amazon's seller tools and feeds that do not spell a code of contract section 3.
# Matched after normalize(); the codes themselves, in any case or spacing, match before this table.
REASON_PHRASES: dict[str, str] = {
    "Out of stock": "NoInventory",
    "Item out of stock": "NoInventory",
    "ProductOutofStock": "NoInventory",
    "Buyer requested cancellation": "BuyerCanceled",
    "Customer requested cancellation": "BuyerCanceled",
    "Customer canceled": "BuyerCanceled",
    "CustomerCancel": "BuyerCanceled",
    "Pricing error": "GeneralAdjustment",
    "PriceError": "GeneralAdjustment",
    "Undeliverable address": "ShippingAddressUndeliverable",
    "Address undeliverable": "ShippingAddressUndeliverable",
    "CustomerAddressIncorrect": "ShippingAddressUndeliverable",
    "Exchange": "CustomerExchange",
}


class Rejected(ValueError):
    """An order (or document) that cannot be mapped: the field at fault, and what is wrong with it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


@dataclasses.dataclass(frozen=True)
class MappedEvent:
    """One event of an order: the JSON object (extra field `reason_text` included), its encoding as
    sent on the topic, and the event as the worker decodes it."""

    value: dict[str, Any]
    raw: bytes
    event: events.Event

    @property
    def topic_role(self) -> str:
        """names.ORDERS_TOPIC or names.CANCELLATIONS_TOPIC."""
        return events.TOPIC_OF_TYPE[type(self.event)]


@dataclasses.dataclass(frozen=True)
class Found:
    """An order inside a document, with the JSON path to it (`order.`, `orders[3].`, or empty), or
    the reason the document holds no order that can be read."""

    path: str
    order: Any = None
    rejected: Rejected | None = None


def normalize(text: str) -> str:
    """Reason text for matching: letters and digits only, case folded, `cancelled` spelt `canceled`."""
    return "".join(character for character in text.casefold() if character.isalnum()) \
        .replace("cancelled", "canceled")


_CODES = {normalize(code): code for code in names.REASONS}
_PHRASES = {normalize(phrase): code for phrase, code in REASON_PHRASES.items()}


def match_reason(text: str | None) -> str:
    """The section 3 code of a free-text cancelReason: the code itself ignoring case, spaces and
    punctuation, else a known phrasing (REASON_PHRASES), else `Other`."""
    if not text:
        return "Other"
    key = normalize(text)
    return _CODES.get(key) or _PHRASES.get(key) or "Other"


def orders_in(document: Any) -> Iterator[Found]:
    """The orders of one parsed document: getOrder response, searchOrders page or bare order."""
    if not isinstance(document, dict):
        yield Found("", rejected=Rejected("", f"expected a JSON object, not {_json_type(document)}"))
    elif "order" in document:
        yield Found("order.", document["order"])
    elif "orders" in document:
        page = document["orders"]
        if not isinstance(page, list):
            yield Found("", rejected=Rejected("orders", f"expected a list of orders, not {_json_type(page)}"))
            return
        for index, order in enumerate(page):
            yield Found(f"orders[{index}].", order)
    elif "orderId" in document:
        yield Found("", document)
    elif "payload" in document:
        yield Found("", rejected=Rejected("payload", "this is an Orders API v0 document; import-orders reads "
                                                     "v2026-01-01 getOrder responses and searchOrders pages"))
    else:
        yield Found("", rejected=Rejected("", "not an order, getOrder response or searchOrders page "
                                              "(no orderId, order or orders)"))


def map_order(order: Any, seller_id: str, *, now: datetime | None = None, path: str = "") -> list[MappedEvent]:
    """The events of one order object: its order_placed, then one order_cancelled per cancellation.

    `path` prefixes the field named by `Rejected` (Found.path). `now` is the wall clock that no
    timestamp may be more than 5 minutes ahead of (default: the current time).
    """
    if not 1 <= len(seller_id) <= 64:
        raise ValueError(f"seller id must be 1 to 64 characters, not {len(seller_id)}")
    now = now or datetime.now(timezone.utc)
    return _Order(order, seller_id, now, path).events()


@dataclasses.dataclass
class _Line:
    index: int
    item_id: str
    sku: str
    ordered: int
    fulfilled: int
    cancellation: tuple[str, str | None, bool] | None    # (cancelledBy, cancelReason, requested by buyer)


class _Order:
    """One order being mapped; every check raises Rejected with the path of its field."""

    def __init__(self, order: Any, seller_id: str, now: datetime, path: str) -> None:
        self.path = path
        self.seller_id = seller_id
        self.now = now
        self.order = self._object(order, "")

    def events(self) -> list[MappedEvent]:
        order_id = self._string(self.order, "orderId", limit=64)
        created = self._time(self.order, "createdTime")
        sales_channel = self._object(self.order.get("salesChannel"), "salesChannel")
        marketplace_id = self._string(sales_channel, "marketplaceId", "salesChannel.")
        if marketplace_id not in MARKETPLACE_IDS:
            raise self._fault("salesChannel.marketplaceId", f"{marketplace_id!r} is not the id of a marketplace the "
                                                             "monitor knows (contract section 2)")
        fulfillment = self._object(self.order.get("fulfillment"), "fulfillment",
                                   "missing: request the order with includedData=FULFILLMENT")
        fulfilled_by = self._string(fulfillment, "fulfilledBy", "fulfillment.")
        if fulfilled_by not in FULFILLED_BY:
            raise self._fault("fulfillment.fulfilledBy", f"{fulfilled_by!r} is neither MERCHANT nor AMAZON")
        lines = self._lines()
        self._check_cancellation_data(fulfillment, lines)
        common = {
            "schema_version": 1,
            "order_id": order_id,
            "seller_id": self.seller_id,
            "marketplace": MARKETPLACE_IDS[marketplace_id],
            "fulfillment_channel": FULFILLED_BY[fulfilled_by],
            "purchase_date": _rfc3339(created),
        }
        cancelled = [line for line in lines if line.cancellation]
        unpaid = any(line.cancellation[0] == "AMAZON" and match_reason(line.cancellation[1]) == "PaymentNotCompleted"
                     for line in cancelled)
        pending = fulfillment.get("fulfillmentStatus") in PENDING_STATUSES or unpaid
        placed = {"type": "order_placed", **common, "occurred_at": _rfc3339(created),
                  "order_status": "Pending" if pending else "Unshipped"}
        placed_items = _items([(line.sku, line.ordered) for line in lines if line.ordered > 0])
        if placed_items:
            placed["items"] = placed_items
        mapped = [self._checked(placed, [line.item_id for line in lines])]
        if cancelled:
            occurred = _rfc3339(self._time(self.order, "lastUpdatedTime"))
            shipped = any(line.fulfilled > 0 for line in lines)
            for (cancelled_by, reason_text, requested), group in _groups(cancelled).items():
                reason = match_reason(reason_text)
                if shipped:
                    status = "PartiallyShipped"
                elif cancelled_by == "AMAZON" and reason == "PaymentNotCompleted":
                    status = "Pending"
                else:
                    status = "Unshipped"
                cancel = {"type": "order_cancelled", **common, "occurred_at": occurred,
                          "initiator": CANCELLED_BY[cancelled_by], "reason": reason,
                          "buyer_requested": requested, "order_status_at_cancel": status,
                          "items": _items([(line.sku, max(1, line.ordered - line.fulfilled)) for line in group])}
                if reason_text:
                    cancel["reason_text"] = reason_text
                mapped.append(self._checked(cancel, [line.item_id for line in group]))
        return mapped

    def _lines(self) -> list[_Line]:
        items = self.order.get("orderItems")
        if not isinstance(items, list):
            raise self._fault("orderItems", "missing" if items is None else f"expected a list, not {_json_type(items)}")
        return [self._line(index, item) for index, item in enumerate(items)]

    def _line(self, index: int, item: Any) -> _Line:
        where = f"orderItems[{index}]."
        item = self._object(item, where[:-1])
        product = self._object(item.get("product"), where + "product")
        fulfillment = item.get("fulfillment")
        fulfillment = {} if fulfillment is None else self._object(fulfillment, where + "fulfillment")
        line = _Line(
            index=index,
            item_id=self._string(item, "orderItemId", where),
            sku=self._string(product, "sellerSku", where + "product.", limit=128),
            ordered=self._count(item, "quantityOrdered", where),
            fulfilled=self._count(fulfillment, "quantityFulfilled", where + "fulfillment.", default=0),
            cancellation=None,
        )
        cancellation = item.get("cancellation")
        if cancellation is None:
            return line
        cancellation = self._object(cancellation, where + "cancellation")
        execution = cancellation.get("cancellationExecution")
        if execution is None:
            return line            # a request nobody has carried out: not a cancellation
        where += "cancellation."
        execution = self._object(execution, where + "cancellationExecution")
        cancelled_by = self._string(execution, "cancelledBy", where + "cancellationExecution.")
        if cancelled_by not in CANCELLED_BY:
            raise self._fault(where + "cancellationExecution.cancelledBy",
                              f"{cancelled_by!r} is none of MERCHANT, BUYER, AMAZON")
        reason_text = self._optional_string(execution, "cancelReason", where + "cancellationExecution.")
        request = cancellation.get("cancellationRequest")
        request = {} if request is None else self._object(request, where + "cancellationRequest")
        requester = self._optional_string(request, "requester", where + "cancellationRequest.")
        line.cancellation = (cancelled_by, reason_text, requester == "BUYER")
        return line

    def _check_cancellation_data(self, fulfillment: dict, lines: list[_Line]) -> None:
        if fulfillment.get("fulfillmentStatus") != "CANCELLED" or any(line.cancellation for line in lines):
            return
        if any("cancellation" in item for item in self.order["orderItems"]):
            problem = "the order is CANCELLED but no item says who cancelled it (cancellationExecution)"
        else:
            problem = "the order is CANCELLED but has no cancellation data: request it with includedData=CANCELLATION"
        raise self._fault("orderItems", problem)

    def _checked(self, value: dict[str, Any], item_ids: list[str]) -> MappedEvent:
        """The event with its content-derived event_id, validated as the worker will."""
        digest = hashlib.sha256(orjson.dumps([value, item_ids], option=orjson.OPT_SORT_KEYS)).hexdigest()[:20]
        value = {"schema_version": 1, "type": value["type"],
                 "event_id": f"sp-api:{value['order_id']}:{value['type']}:{digest}",
                 **{key: field for key, field in value.items() if key not in ("schema_version", "type")}}
        raw = orjson.dumps(value)
        try:
            event = events.decode(raw, self.now)
        except events.BadEvent as error:
            field = "createdTime" if "purchase_date" in error.reason or value["type"] == "order_placed" \
                else "lastUpdatedTime"
            raise self._fault(field, error.reason) from None
        return MappedEvent(value, raw, event)

    def _fault(self, field: str, problem: str) -> Rejected:
        return Rejected((self.path + field).rstrip("."), problem)

    def _object(self, value: Any, field: str, missing: str = "missing") -> dict:
        if value is None:
            raise self._fault(field, missing)
        if not isinstance(value, dict):
            raise self._fault(field, f"expected an object, not {_json_type(value)}")
        return value

    def _string(self, parent: dict, key: str, prefix: str = "", limit: int = 0) -> str:
        value = self._optional_string(parent, key, prefix)
        if not value:
            raise self._fault(prefix + key, "missing" if value is None else "empty")
        if limit and len(value) > limit:
            raise self._fault(prefix + key, f"{len(value)} characters, over the {limit} the events allow")
        return value

    def _optional_string(self, parent: dict, key: str, prefix: str) -> str | None:
        value = parent.get(key)
        if value is not None and not isinstance(value, str):
            raise self._fault(prefix + key, f"expected a string, not {_json_type(value)}")
        return value

    def _count(self, parent: dict, key: str, prefix: str, default: int | None = None) -> int:
        value = parent.get(key, default)
        if value is None:
            raise self._fault(prefix + key, "missing")
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1_000_000:
            raise self._fault(prefix + key, f"expected a whole number from 0 to 1000000, not {value!r}")
        return value

    def _time(self, parent: dict, key: str) -> datetime:
        text = self._string(parent, key)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise self._fault(key, f"{text!r} is not an RFC 3339 timestamp") from None
        if moment.tzinfo is None:
            raise self._fault(key, f"{text!r} has no UTC offset")
        return moment


def _groups(cancelled: list[_Line]) -> dict[tuple[str, str | None, bool], list[_Line]]:
    """Cancelled lines grouped by their execution (who, why, at whose request): one event each."""
    groups: dict[tuple[str, str | None, bool], list[_Line]] = {}
    for line in cancelled:
        groups.setdefault(line.cancellation, []).append(line)
    return groups


def _items(lines: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """{sku, quantity} lines, quantities of a sku listed twice added up, in order of first appearance."""
    quantities: dict[str, int] = {}
    for sku, quantity in lines:
        quantities[sku] = quantities.get(sku, 0) + quantity
    return [{"sku": sku, "quantity": quantity} for sku, quantity in quantities.items()]


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"
