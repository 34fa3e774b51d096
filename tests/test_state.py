"""The state core against the brute-force oracle: random streams with duplicates,
reordering, pending, AFN, buyer requests, item-level cancels, late events, IN's two
windows and exact limit boundaries. No services: the durable store is a dict."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

from hypothesis import given, settings as hyp_settings, strategies as st

from streams import alerting, events, names, policy as policy_module, window
from streams.state import Book
from tests import oracle

POLICY = policy_module.load("streams/policy.yaml")
NOW = datetime(2026, 11, 20, 13, 5, tzinfo=timezone.utc)
SKUS = ("SKU-A", "SKU-B", "SKU-C")


@st.composite
def order_streams(draw):
    sellers = draw(st.lists(st.sampled_from(["S1", "S2", "S3"]), min_size=1, max_size=3, unique=True))
    marketplaces = ("US", "IN", "DE")
    stream = []
    counter = 0

    def common(seller, marketplace, order_id, channel, purchase, occurred):
        nonlocal counter
        counter += 1
        return dict(schema_version=1, event_id=f"e{counter}", order_id=order_id, seller_id=seller,
                    marketplace=marketplace, fulfillment_channel=channel,
                    purchase_date=purchase, occurred_at=occurred)

    for index in range(draw(st.integers(1, 25))):
        seller = draw(st.sampled_from(sellers))
        marketplace = draw(st.sampled_from(marketplaces))
        channel = draw(st.sampled_from(["MFN", "MFN", "MFN", "AFN"]))
        # purchase times from 35 days ago up to now, often near bucket and window edges
        age = draw(st.one_of(
            st.integers(0, 35 * 86400),
            st.sampled_from([0, 3599, 3600, 7 * 86400 - 1, 7 * 86400, 7 * 86400 + 3600, 30 * 86400 - 1,
                             30 * 86400, 6 * 86400 + 82800]),
        ))
        purchase = NOW - timedelta(seconds=age)
        order_id = f"O{index}"
        items = draw(st.one_of(st.none(), st.lists(
            st.builds(events.Item, sku=st.sampled_from(SKUS), quantity=st.integers(1, 3)),
            min_size=1, max_size=2)))
        if draw(st.booleans()):
            status = draw(st.sampled_from(["Pending", "Unshipped"]))
            stream.append(events.OrderPlaced(**common(seller, marketplace, order_id, channel, purchase, purchase),
                                             order_status=status, items=items))
        if draw(st.booleans()):
            stream.append(events.OrderStatusChanged(
                **common(seller, marketplace, order_id, channel, purchase, purchase + timedelta(minutes=5)),
                order_status=draw(st.sampled_from(["Unshipped", "PartiallyShipped", "Shipped"]))))
        for _ in range(draw(st.integers(0, 2))):
            cancel_items = draw(st.one_of(st.none(), st.lists(
                st.builds(events.Item, sku=st.sampled_from(SKUS), quantity=st.integers(1, 2)),
                min_size=1, max_size=2)))
            stream.append(events.OrderCancelled(
                **common(seller, marketplace, order_id, channel, purchase,
                         purchase + timedelta(minutes=draw(st.integers(1, 600)))),
                initiator=draw(st.sampled_from(names.INITIATORS)),
                reason=draw(st.sampled_from(["NoInventory", "BuyerCanceled", "ShipmentNotConfirmed",
                                             "PaymentNotCompleted", "ShippingAddressUndeliverable", "Other"])),
                buyer_requested=draw(st.booleans()),
                order_status_at_cancel=draw(st.sampled_from(["Pending", "Unshipped", "Unshipped",
                                                             "PartiallyShipped"])),
                items=cancel_items))
    seed = draw(st.integers(0, 2**32))
    return stream, seed


def deliver(stream, seed):
    """At-least-once delivery: duplicates and any order, in random batches."""
    rng = random.Random(seed)
    delivered = stream + [rng.choice(stream) for _ in range(len(stream) // 3)] if stream else []
    rng.shuffle(delivered)
    batches, index = [], 0
    while index < len(delivered):
        size = rng.randint(1, 8)
        batches.append(delivered[index:index + size])
        index += size
    return batches


def book_answers(book: Book, now: float) -> dict:
    answers = {}
    now_bucket = window.bucket_of(now, POLICY.bucket_seconds)
    for state in book.states():
        seller, marketplace = state.seller_id, state.marketplace
        windows = window.seller_windows(state.buckets, marketplace, POLICY, now_bucket)
        view = window.seller_json(seller, marketplace, windows, now)
        wanted = alerting.desired(state, POLICY, now, "http://grafana")
        answers[(seller, marketplace)] = {
            "windows": [{k: w[k] for k in ("days", "orders", "cancelled", "headroom", "status")}
                        for w in view["windows"]],
            "reasons": view["reasons"], "excluded": view["excluded"],
            "listing": {dict(key)[names.LABEL_SKU] for key in wanted
                        if dict(key)[names.LABEL_ALERTNAME] == names.ALERT_LISTING},
        }
    return answers


@hyp_settings(max_examples=300, deadline=None)
@given(order_streams())
def test_book_matches_oracle_under_duplicates_and_reordering(case):
    stream, seed = case
    now = NOW.timestamp()
    book = Book(POLICY, {})
    for batch in deliver(stream, seed):
        book.apply([(events.TOPIC_OF_TYPE[type(e)], e) for e in batch], now)
    expected = oracle.compute(stream, now, POLICY)
    assert book_answers(book, now) == expected


@hyp_settings(max_examples=100, deadline=None)
@given(order_streams())
def test_rebuilt_book_answers_exactly_as_before(case):
    stream, seed = case
    now = NOW.timestamp()
    store: dict = {}
    book = Book(POLICY, store)
    for batch in deliver(stream, seed):
        book.apply([(events.TOPIC_OF_TYPE[type(e)], e) for e in batch], now)
    rebuilt = Book(POLICY, dict(store))
    rebuilt.load(store.items())
    assert book_answers(rebuilt, now) == book_answers(book, now)


def test_duplicate_changes_nothing_and_is_reported_unchanged():
    cancel = events.OrderCancelled(
        schema_version=1, event_id="c1", order_id="O1", seller_id="S1", marketplace="US",
        fulfillment_channel="MFN", purchase_date=NOW - timedelta(hours=2), occurred_at=NOW,
        initiator="seller", reason="NoInventory", buyer_requested=False, order_status_at_cancel="Unshipped")
    book = Book(POLICY, {})
    first = book.apply([("cancellations", cancel)], NOW.timestamp())
    second = book.apply([("cancellations", cancel)], NOW.timestamp())
    assert first.outcomes[("cancellations", "applied")] == 1
    assert second.outcomes[("cancellations", "unchanged")] == 1
    assert second.writes == 0
    totals = window.seller_windows(book.seller("S1", "US").buckets, "US", POLICY,
                                   window.bucket_of(NOW.timestamp(), 3600))
    assert (totals[0].orders, totals[0].cancelled) == (1, 1)


def test_expiry_deletes_old_buckets_from_store_and_totals():
    store: dict = {}
    book = Book(POLICY, store)
    placed = events.OrderPlaced(
        schema_version=1, event_id="p1", order_id="O1", seller_id="S1", marketplace="US",
        fulfillment_channel="MFN", purchase_date=NOW - timedelta(days=29), occurred_at=NOW - timedelta(days=29),
        order_status="Unshipped")
    book.apply([("orders", placed)], NOW.timestamp())
    assert list(store) == [b"S1\x1fUS\x1f" + str(window.bucket_of(placed.purchase_date.timestamp(), 3600)).encode()]
    assert book.expire(NOW.timestamp() + 3 * 86400) == 1
    # its last bucket gone, a marker keeps the seller known after a restart
    assert list(store) == [b"S1\x1fUS\x1f~"]
    assert book.seller("S1", "US").buckets == {}
    rebuilt = Book(POLICY, dict(store))
    rebuilt.load(store.items())
    assert rebuilt.seller("S1", "US") is not None


@hyp_settings(max_examples=100, deadline=None)
@given(order_streams())
def test_a_group_fed_in_slices_writes_each_bucket_once_and_matches_the_oracle(case):
    # The worker feeds a group's fetches one by one (Book.feed) and writes at the end
    # (Book.finish): each touched bucket is written once per group, whatever the slices.
    stream, seed = case
    now = NOW.timestamp()
    writes: dict = {}

    class CountingStore(dict):
        def __setitem__(self, key, value):
            writes[key] = writes.get(key, 0) + 1
            super().__setitem__(key, value)

    store = CountingStore()
    book = Book(POLICY, store)
    slices = deliver(stream, seed)
    for start in range(0, len(slices), 3):
        pending = book.begin()
        for batch in slices[start:start + 3]:
            book.feed(pending, [(events.TOPIC_OF_TYPE[type(e)], e) for e in batch], now)
        before = dict(writes)
        book.finish(pending)
        assert all(count - before.get(key, 0) <= 1 for key, count in writes.items()), \
            "a bucket written twice by one group"
    assert book_answers(book, now) == oracle.compute(stream, now, POLICY)
