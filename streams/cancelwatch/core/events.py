"""The contract's events (sections 2 and 3): one definition, strict decoding.

The worker, the producer client and the JSON Schema all use these Structs.
`decode(raw, topic, now)` returns an event or raises `BadEvent` with a
readable reason and a `kind` for the dead-letter metric.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated, Callable, Literal, Optional, Union

import msgspec

from cancelwatch import names

Marketplace = Literal[names.MARKETPLACES]  # type: ignore[valid-type]
Channel = Literal["MFN", "AFN"]
Initiator = Literal["seller", "buyer", "amazon"]
Reason = Literal[names.REASONS]  # type: ignore[valid-type]
Timestamp = Annotated[datetime, msgspec.Meta(tz=True, description="RFC 3339 with an offset")]
EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
ShortId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]

FUTURE_TOLERANCE = timedelta(minutes=5)
FUTURE_TOLERANCE_SECONDS = FUTURE_TOLERANCE.total_seconds()
MAX_MESSAGE_BYTES = 1_000_000


class Item(msgspec.Struct, frozen=True, forbid_unknown_fields=False, gc=False):
    sku: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    quantity: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]


class _Common(msgspec.Struct, frozen=True, tag_field="type", kw_only=True, gc=False):
    schema_version: Literal[1]
    event_id: EventId
    order_id: ShortId
    seller_id: ShortId
    marketplace: Marketplace
    fulfillment_channel: Channel
    purchase_date: Timestamp
    occurred_at: Timestamp


class OrderPlaced(_Common, frozen=True, tag="order_placed"):
    order_status: Literal["Pending", "Unshipped"]
    items: Optional[list[Item]] = None


class OrderStatusChanged(_Common, frozen=True, tag="order_status_changed"):
    order_status: Literal["Unshipped", "PartiallyShipped", "Shipped"]


class OrderCancelled(_Common, frozen=True, tag="order_cancelled"):
    initiator: Initiator
    reason: Reason
    buyer_requested: bool
    order_status_at_cancel: Literal["Pending", "Unshipped", "PartiallyShipped"]
    items: Optional[list[Item]] = None


OrderEvent = Union[OrderPlaced, OrderStatusChanged]
Event = Union[OrderPlaced, OrderStatusChanged, OrderCancelled]
ORDER_TYPES = (OrderPlaced, OrderStatusChanged)
TOPIC_OF_TYPE = {
    OrderPlaced: names.ORDERS_TOPIC,
    OrderStatusChanged: names.ORDERS_TOPIC,
    OrderCancelled: names.CANCELLATIONS_TOPIC,
}

_decoder = msgspec.json.Decoder(Event)
# Per topic role: a decoder, and the event types that belong there. (A decoder of one tagged
# struct alone would accept a message without its "type", so cancellations use the union.)
_role_decoders = {names.ORDERS_TOPIC: (msgspec.json.Decoder(OrderEvent), ORDER_TYPES),
                  names.CANCELLATIONS_TOPIC: (_decoder, (OrderCancelled,))}
_encoder = msgspec.json.Encoder()


class BadEvent(ValueError):
    """A message that breaks the contract; `kind` is one of names.DEAD_LETTER_KINDS."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def decode(raw: bytes, now: datetime | None = None) -> Event:
    """Decode and validate one message value.

    `now` is the wall clock used to reject events from the future; None skips
    that check (the producer client passes its own clock).
    """
    event = decode_message(_decoder, raw, _explain)
    if now is None or _not_ahead(event, now):
        return event
    field = "occurred_at" if event.occurred_at > now + FUTURE_TOLERANCE else "purchase_date"
    raise BadEvent(
        "future",
        f"{field} {getattr(event, field).isoformat()} is more than 5 minutes ahead of the wall clock "
        f"({now.astimezone(timezone.utc).isoformat()})",
    )


def decode_message(decoder: msgspec.json.Decoder, raw: bytes | None, explain: Callable[[str], str],
                   error: Callable[[str, str], Exception] = BadEvent):
    """The checks every JSON message of the contract passes before its own: a value (not a
    tombstone), at most MAX_MESSAGE_BYTES, JSON of the decoder's type. A failure raises
    `error(kind, reason)`; `explain` words msgspec's validation message."""
    if raw is None:
        raise error("invalid_json", "message has no value (tombstone)")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise error("invalid_json", f"message is {len(raw)} bytes, over the {MAX_MESSAGE_BYTES} limit")
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as problem:
        raise error("invalid_event", explain(str(problem))) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as problem:
        raise error("invalid_json", f"not valid JSON: {problem}") from None


def _explain(message: str) -> str:
    if message.startswith("Object missing required field"):
        field = message.split("`")[1] if "`" in message else "?"
        return f"required field {field} is missing"
    if "missing required field `type`" in message:
        return "required field type is missing"
    return message


def _not_ahead(event: Event, now: datetime) -> bool:
    """Neither of the event's times is more than FUTURE_TOLERANCE ahead of `now`."""
    limit = now + FUTURE_TOLERANCE
    return event.occurred_at <= limit and event.purchase_date <= limit


def decode_on(topic_role: str, raw: bytes, now: datetime | None = None) -> Event:
    """decode() and check_topic() in one step, for a message of a source topic."""
    event = decode_quick(topic_role, raw)
    if event is not None and (now is None or _not_ahead(event, now)):
        return event
    event = decode(raw, now)     # decoded again, for the reason that explains it
    check_topic(event, topic_role)
    return event


def decode_quick(topic_role: str, raw: bytes):
    """The event of a message that decodes as an event of its topic role, not checked against
    the wall clock; None for any other message, which `decode_on` then explains. (The worker
    checks the clock on the timestamps it needs anyway.)"""
    if raw is not None and len(raw) <= MAX_MESSAGE_BYTES:
        decoder, types = _role_decoders[topic_role]
        try:
            event = decoder.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return None
        if type(event) in types:
            return event
    return None


def check_topic(event: Event, topic_role: str) -> None:
    """Raise BadEvent when an event type arrives on the wrong topic role."""
    expected = TOPIC_OF_TYPE[type(event)]
    if expected != topic_role:
        raise BadEvent(
            "wrong_topic",
            f"{event_type(event)} belongs on the {expected} topic, not {topic_role}",
        )


def event_type(event: Event) -> str:
    return type(event).__struct_config__.tag  # type: ignore[attr-defined]


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def json_schema() -> dict:
    """JSON Schema (2020-12) of the contract's events, for producers in other languages."""
    schema = msgspec.json.schema(Event)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "cancelwatch events, contract v1"
    return schema


def epoch_seconds(moment: datetime) -> int:
    return int(moment.timestamp())
