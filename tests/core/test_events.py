"""Decoding the contract's events (sections 2, 3, 5 and 6): what is accepted, and for what is
not, a BadEvent whose kind and reason say what is wrong. Encoding round-trips."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from cancelwatch import names

from cancelwatch.core import events

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
ORDERS, CANCELLATIONS = names.ORDERS_TOPIC, names.CANCELLATIONS_TOPIC

PLACED = {
    "schema_version": 1, "event_id": "e-1", "type": "order_placed", "order_id": "113-1234567-1234567",
    "seller_id": "A1", "marketplace": "US", "fulfillment_channel": "MFN",
    "purchase_date": "2026-11-20T10:00:00Z", "occurred_at": "2026-11-20T11:00:05+01:00",
    "order_status": "Unshipped", "items": [{"sku": "SKU-1", "quantity": 2}],
}
CHANGED = {key: value for key, value in PLACED.items() if key != "items"} | {
    "type": "order_status_changed", "event_id": "e-2", "order_status": "Shipped"}
CANCELLED = PLACED | {
    "type": "order_cancelled", "event_id": "e-3", "initiator": "seller", "reason": "NoInventory",
    "buyer_requested": False, "order_status_at_cancel": "Unshipped"}
del CANCELLED["order_status"]
DOCUMENTS = {"order_placed": PLACED, "order_status_changed": CHANGED, "order_cancelled": CANCELLED}
TOPIC = {"order_placed": ORDERS, "order_status_changed": ORDERS, "order_cancelled": CANCELLATIONS}
OPTIONAL = {"items"}


def raw(document: dict) -> bytes:
    return json.dumps(document).encode()


def refused(document: dict | bytes, now: datetime | None = NOW) -> events.BadEvent:
    """The BadEvent decode() raises; decode_on() on the event's own topic must raise the same."""
    message = document if isinstance(document, bytes) else raw(document)
    with pytest.raises(events.BadEvent) as raised:
        events.decode(message, now)
    bad = raised.value
    assert bad.kind in names.DEAD_LETTER_KINDS
    assert str(bad) == bad.reason
    topic = TOPIC.get(document.get("type")) if isinstance(document, dict) else None
    for role in ([topic] if topic else [ORDERS, CANCELLATIONS]):
        with pytest.raises(events.BadEvent) as on_topic:
            events.decode_on(role, message, now)
        assert (on_topic.value.kind, on_topic.value.reason) == (bad.kind, bad.reason), role
    return bad


def accepted(document: dict, now: datetime | None = NOW) -> events.Event:
    event = events.decode(raw(document), now)
    assert events.decode_on(TOPIC[document["type"]], raw(document), now) == event
    return event


# -- valid events -----------------------------------------------------------------------------

def test_an_order_placed_decodes_with_its_fields():
    event = accepted(PLACED)
    assert isinstance(event, events.OrderPlaced)
    assert (event.schema_version, event.event_id, event.order_id, event.seller_id) == (
        1, "e-1", "113-1234567-1234567", "A1")
    assert (event.marketplace, event.fulfillment_channel, event.order_status) == ("US", "MFN", "Unshipped")
    assert event.items == [events.Item(sku="SKU-1", quantity=2)]
    assert event.purchase_date == datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)
    assert event.occurred_at == datetime(2026, 11, 20, 10, 0, 5, tzinfo=timezone.utc)
    assert events.event_type(event) == "order_placed"


def test_an_order_status_change_decodes_with_its_fields():
    event = accepted(CHANGED)
    assert isinstance(event, events.OrderStatusChanged)
    assert event.order_status == "Shipped"
    assert events.event_type(event) == "order_status_changed"


def test_an_order_cancellation_decodes_with_its_fields():
    event = accepted(CANCELLED | {"initiator": "amazon", "reason": "ShipmentNotConfirmed",
                                  "buyer_requested": True, "order_status_at_cancel": "PartiallyShipped"})
    assert isinstance(event, events.OrderCancelled)
    assert (event.initiator, event.reason, event.buyer_requested, event.order_status_at_cancel) == (
        "amazon", "ShipmentNotConfirmed", True, "PartiallyShipped")
    assert event.items == [events.Item(sku="SKU-1", quantity=2)]
    assert events.event_type(event) == "order_cancelled"


@pytest.mark.parametrize("document", DOCUMENTS.values(), ids=DOCUMENTS.keys())
def test_every_value_of_every_enumerated_field_is_accepted(document):
    choices = {
        "marketplace": names.MARKETPLACES,
        "fulfillment_channel": names.FULFILLMENT_CHANNELS,
        "initiator": names.INITIATORS,
        "reason": names.REASONS,
        "order_status_at_cancel": ("Pending", "Unshipped", "PartiallyShipped"),
        "order_status": {"order_placed": ("Pending", "Unshipped"),
                         "order_status_changed": ("Unshipped", "PartiallyShipped", "Shipped")}.get(document["type"]),
    }
    for field, values in choices.items():
        if field in document:
            for value in values:
                assert getattr(accepted(document | {field: value}), field) == value


TIMESTAMPS = {
    "UTC as Z": ("2026-11-20T10:00:00Z", datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)),
    "UTC as +00:00": ("2026-11-20T10:00:00+00:00", datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)),
    "an hour ahead": ("2026-11-20T11:00:00+01:00", datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)),
    "behind UTC": ("2026-11-20T02:00:00-08:00", datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)),
    "half an hour in the offset": ("2026-11-20T15:30:00+05:30", datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)),
    "fractional seconds": ("2026-11-20T10:00:00.250Z",
                           datetime(2026, 11, 20, 10, 0, 0, 250000, tzinfo=timezone.utc)),
    "the day before in UTC": ("2026-11-20T01:00:00+09:00", datetime(2026, 11, 19, 16, 0, tzinfo=timezone.utc)),
}


@pytest.mark.parametrize("name", sorted(TIMESTAMPS))
def test_rfc3339_timestamps_with_z_or_an_offset_name_the_same_instant(name):
    text, instant = TIMESTAMPS[name]
    for document in DOCUMENTS.values():
        event = accepted(document | {"purchase_date": text, "occurred_at": text})
        assert event.purchase_date == instant and event.occurred_at == instant
        assert event.purchase_date.utcoffset() is not None


def test_unknown_extra_fields_are_ignored():
    extra = {"reason_text": "out of stock", "channel_note": {"nested": [1, {"deep": None}]}, "schema_minor": 3}
    for document in DOCUMENTS.values():
        assert accepted(document | extra) == accepted(document)
    item_with_extra = [{"sku": "SKU-1", "quantity": 2, "asin": "B000000001"}]
    assert accepted(PLACED | {"items": item_with_extra}) == accepted(PLACED)


def test_items_are_optional():
    for document in (PLACED, CANCELLED):
        without = {key: value for key, value in document.items() if key != "items"}
        assert accepted(without).items is None
        assert accepted(document | {"items": None}).items is None


# -- missing fields, wrong types, wrong values ----------------------------------------------

REQUIRED = sorted((kind, field) for kind, document in DOCUMENTS.items() for field in document
                  if field not in OPTIONAL)


@pytest.mark.parametrize("kind, field", REQUIRED)
def test_each_missing_required_field_is_named(kind, field):
    document = {key: value for key, value in DOCUMENTS[kind].items() if key != field}
    bad = refused(document)
    assert (bad.kind, bad.reason) == ("invalid_event", f"required field {field} is missing")


def test_a_missing_field_of_an_item_is_named():
    bad = refused(PLACED | {"items": [{"quantity": 1}]})
    assert (bad.kind, bad.reason) == ("invalid_event", "required field sku is missing")


WRONG_TYPES = {
    "schema_version as text": ({"schema_version": "1"}, "$.schema_version", "Expected `int`"),
    "event_id as a number": ({"event_id": 17}, "$.event_id", "Expected `str`"),
    "order_id as null": ({"order_id": None}, "$.order_id", "Expected `str`"),
    "seller_id as a list": ({"seller_id": ["A1"]}, "$.seller_id", "Expected `str`"),
    "purchase_date as epoch seconds": ({"purchase_date": 1795168800}, "$.purchase_date", "Expected `datetime`"),
    "occurred_at without an offset": ({"occurred_at": "2026-11-20T10:00:00"}, "$.occurred_at", "timezone"),
    "occurred_at not a date": ({"occurred_at": "yesterday"}, "$.occurred_at", "RFC3339"),
    "purchase_date on an impossible day": ({"purchase_date": "2026-02-30T10:00:00Z"}, "$.purchase_date", "RFC3339"),
    "buyer_requested as text": ({"buyer_requested": "false"}, "$.buyer_requested", "Expected `bool`"),
    "buyer_requested as a number": ({"buyer_requested": 0}, "$.buyer_requested", "Expected `bool`"),
    "items as text": ({"items": "SKU-1"}, "$.items", "Expected `array | null`"),
    "a quantity as text": ({"items": [{"sku": "S", "quantity": "2"}]}, "$.items[0].quantity", "Expected `int`"),
    "a quantity of zero": ({"items": [{"sku": "S", "quantity": 0}]}, "$.items[0].quantity", ">= 1"),
    "a quantity as a fraction": ({"items": [{"sku": "S", "quantity": 1.5}]}, "$.items[0].quantity", "Expected `int`"),
    "a sku as a number": ({"items": [{"sku": 5, "quantity": 1}]}, "$.items[0].sku", "Expected `str`"),
    "an empty sku": ({"items": [{"sku": "", "quantity": 1}]}, "$.items[0].sku", "length >= 1"),
    "type as a number": ({"type": 3}, "$.type", "Expected `str`"),
}


@pytest.mark.parametrize("name", sorted(WRONG_TYPES))
def test_a_wrong_type_is_refused_naming_the_field(name):
    change, path, expected = WRONG_TYPES[name]
    bad = refused(CANCELLED | change)
    assert bad.kind == "invalid_event"
    assert f"at `{path}`" in bad.reason and expected in bad.reason, bad.reason


WRONG_VALUES = {
    "schema_version 2": (CANCELLED, {"schema_version": 2}, "schema_version", "2"),
    "marketplace GB (the contract says UK)": (CANCELLED, {"marketplace": "GB"}, "marketplace", "'GB'"),
    "marketplace in lower case": (PLACED, {"marketplace": "us"}, "marketplace", "'us'"),
    "marketplace empty": (CHANGED, {"marketplace": ""}, "marketplace", "''"),
    "fulfillment_channel FBA": (PLACED, {"fulfillment_channel": "FBA"}, "fulfillment_channel", "'FBA'"),
    "initiator system": (CANCELLED, {"initiator": "system"}, "initiator", "'system'"),
    "a reason that is no contract code": (CANCELLED, {"reason": "LateShipment"}, "reason", "'LateShipment'"),
    "a reason in lower case": (CANCELLED, {"reason": "noinventory"}, "reason", "'noinventory'"),
    "an order placed already shipped": (PLACED, {"order_status": "Shipped"}, "order_status", "'Shipped'"),
    "a status change back to Pending": (CHANGED, {"order_status": "Pending"}, "order_status", "'Pending'"),
    "a cancel after shipping": (CANCELLED, {"order_status_at_cancel": "Shipped"}, "order_status_at_cancel",
                                "'Shipped'"),
    "an unknown event type": (PLACED, {"type": "order_refunded"}, "type", "'order_refunded'"),
}


@pytest.mark.parametrize("name", sorted(WRONG_VALUES))
def test_a_wrong_value_is_refused_naming_the_field_and_value(name):
    document, change, field, value = WRONG_VALUES[name]
    bad = refused(document | change)
    assert bad.kind == "invalid_event"
    assert f"at `$.{field}`" in bad.reason and value in bad.reason, bad.reason


LENGTHS = {"event_id": 128, "order_id": 64, "seller_id": 64}


@pytest.mark.parametrize("field", sorted(LENGTHS))
def test_id_lengths_are_bounded_in_characters(field):
    longest = LENGTHS[field]
    for document in DOCUMENTS.values():
        for value in ("x", "x" * longest, "😀" * longest, "é" * longest):
            assert getattr(accepted(document | {field: value}), field) == value
        too_short = refused(document | {field: ""})
        assert too_short.kind == "invalid_event"
        assert f"at `$.{field}`" in too_short.reason and "length >= 1" in too_short.reason
        too_long = refused(document | {field: "x" * (longest + 1)})
        assert too_long.kind == "invalid_event"
        assert f"at `$.{field}`" in too_long.reason and f"length <= {longest}" in too_long.reason


def test_messages_that_are_no_event_at_all():
    assert refused(b"not json").kind == "invalid_json"
    assert refused(b"").kind == "invalid_json"
    with pytest.raises(events.BadEvent) as tombstone:
        events.decode(None, NOW)
    assert tombstone.value.kind == "invalid_json" and "tombstone" in tombstone.value.reason
    assert refused(b"[]").kind == "invalid_event"


# -- topics ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(DOCUMENTS))
def test_an_event_on_the_wrong_topic_is_refused(kind):
    document = DOCUMENTS[kind]
    wrong = CANCELLATIONS if TOPIC[kind] == ORDERS else ORDERS
    with pytest.raises(events.BadEvent) as raised:
        events.decode_on(wrong, raw(document), NOW)
    assert raised.value.kind == "wrong_topic"
    assert raised.value.reason == f"{kind} belongs on the {TOPIC[kind]} topic, not {wrong}"
    event = events.decode(raw(document), NOW)   # decode alone takes any topic's events
    events.check_topic(event, TOPIC[kind])
    with pytest.raises(events.BadEvent, match="belongs on the"):
        events.check_topic(event, wrong)


def test_an_invalid_event_on_the_wrong_topic_is_refused_for_what_is_invalid():
    document = CANCELLED | {"marketplace": "XX"}
    with pytest.raises(events.BadEvent) as raised:
        events.decode_on(ORDERS, raw(document), NOW)
    assert raised.value.kind == "invalid_event" and "$.marketplace" in raised.value.reason


# -- the future --------------------------------------------------------------------------

FIVE_MINUTES = timedelta(minutes=5)


@pytest.mark.parametrize("field", ["occurred_at", "purchase_date"])
def test_events_more_than_five_minutes_ahead_of_the_wall_clock_are_refused(field):
    for document in DOCUMENTS.values():
        at_the_limit = (NOW + FIVE_MINUTES).isoformat()
        assert accepted(document | {field: at_the_limit})
        ahead = NOW + FIVE_MINUTES + timedelta(seconds=1)
        for text in (ahead.isoformat().replace("+00:00", "Z"),
                     ahead.astimezone(timezone(timedelta(hours=1))).isoformat()):
            bad = refused(document | {field: text})
            assert bad.kind == "future"
            assert bad.reason.startswith(f"{field} 2026-11-20T")
            assert "more than 5 minutes ahead of the wall clock" in bad.reason


def test_an_offset_is_not_mistaken_for_the_future():
    # 13:04+01:00 is 12:04Z, within five minutes of 12:00Z; 12:30-01:00 is 13:30Z, beyond.
    assert accepted(PLACED | {"occurred_at": "2026-11-20T13:04:00+01:00"})
    assert refused(PLACED | {"occurred_at": "2026-11-20T12:30:00-01:00"}).kind == "future"


def test_the_wall_clock_may_be_given_in_any_offset():
    clock = NOW.astimezone(timezone(timedelta(hours=-5)))
    assert accepted(PLACED | {"occurred_at": "2026-11-20T12:04:59Z"}, now=clock)
    assert refused(PLACED | {"occurred_at": "2026-11-20T12:05:01Z"}, now=clock).kind == "future"


def test_without_a_clock_no_event_is_in_the_future():
    far = PLACED | {"occurred_at": "2036-01-01T00:00:00Z", "purchase_date": "2036-01-01T00:00:00Z"}
    assert accepted(far, now=None).occurred_at.year == 2036


# -- encode and decode ---------------------------------------------------------------------

instants = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1),
                        timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=5, minutes=30)),
                                                   timezone(timedelta(hours=-8))]))
ids = st.text(min_size=1, max_size=64)
item_lines = st.none() | st.lists(st.builds(events.Item, sku=st.text(min_size=1, max_size=20),
                                            quantity=st.integers(1, 1_000_000)), max_size=3)


@st.composite
def any_event(draw) -> events.Event:
    fields = dict(schema_version=1, event_id=draw(st.text(min_size=1, max_size=128)), order_id=draw(ids),
                  seller_id=draw(ids), marketplace=draw(st.sampled_from(names.MARKETPLACES)),
                  fulfillment_channel=draw(st.sampled_from(names.FULFILLMENT_CHANNELS)),
                  purchase_date=draw(instants), occurred_at=draw(instants))
    kind = draw(st.sampled_from(sorted(DOCUMENTS)))
    if kind == "order_placed":
        return events.OrderPlaced(**fields, order_status=draw(st.sampled_from(("Pending", "Unshipped"))),
                                  items=draw(item_lines))
    if kind == "order_status_changed":
        return events.OrderStatusChanged(
            **fields, order_status=draw(st.sampled_from(("Unshipped", "PartiallyShipped", "Shipped"))))
    return events.OrderCancelled(
        **fields, initiator=draw(st.sampled_from(names.INITIATORS)), reason=draw(st.sampled_from(names.REASONS)),
        buyer_requested=draw(st.booleans()),
        order_status_at_cancel=draw(st.sampled_from(("Pending", "Unshipped", "PartiallyShipped"))),
        items=draw(item_lines))


@hypothesis_settings(max_examples=100, deadline=None)
@given(any_event())
def test_an_encoded_event_decodes_to_itself_on_its_topic(event):
    encoded = events.encode(event)
    assert json.loads(encoded)["type"] == events.event_type(event)
    assert events.decode(encoded) == event
    assert events.decode_on(events.TOPIC_OF_TYPE[type(event)], encoded) == event


@pytest.mark.parametrize("kind", sorted(DOCUMENTS))
def test_a_decoded_message_encodes_to_the_same_event(kind):
    event = accepted(DOCUMENTS[kind])
    assert events.decode(events.encode(event), NOW) == event
    # The same fields, values and offsets as the message it came from.
    assert json.loads(events.encode(event)) == DOCUMENTS[kind]
