"""The state core against the brute-force oracle: random streams with duplicates,
reordering, pending, AFN, buyer requests, item-level cancels, late events, IN's two
windows and exact limit boundaries. No services: the durable store is a dict."""

from __future__ import annotations

import itertools
import random
from datetime import datetime, timedelta, timezone

from hypothesis import given, settings as hyp_settings, strategies as st

from cancelwatch import names

from cancelwatch.core import alerting, events, ledger, policy as policy_module, state, window
from cancelwatch.core.order_filter import OrderFilter
from cancelwatch.core.state import Book, with_purchase
from tests import oracle

POLICY = policy_module.load("streams/cancelwatch/core/policy.yaml")
NOW = datetime(2026, 11, 20, 13, 5, tzinfo=timezone.utc)
SKUS = ("SKU-A", "SKU-B", "SKU-C")


SELLERS = ("S1", "~clock/3", "a/b\x1fUS")     # seller ids that would break a separator-based key
BOUNDARY_AGE = 5 * 3600 + 5 * 60                 # NOW - this is 08:00:00, a bucket boundary
# Purchase dates one order's events carry around the order's own: producers that round or
# truncate differently (a bucket boundary apart), and ones days apart.
PURCHASE_SHIFTS = (0, 0, 0, 0.8, -0.8, 1, -1, 3600, -3600, 2 * 86400, -3 * 86400)


# The strategies a stream is drawn from, built once: hypothesis validates a strategy the
# first time it draws from it, which cost more than the test itself when they were built
# anew for every draw.
FOCUSED_SELLERS = st.lists(st.sampled_from(SELLERS), min_size=1, max_size=1, unique=True)
ANY_SELLERS = st.lists(st.sampled_from(SELLERS), min_size=1, max_size=3, unique=True)
SELLERS_FROM = {choice: st.sampled_from(choice)
                for size in (1, 2, 3) for choice in itertools.permutations(SELLERS, size)}
FOCUSED_MARKETPLACES = st.sampled_from(("DE",))
ANY_MARKETPLACES = st.sampled_from(("US", "IN", "DE"))
PURCHASE_SHIFT = st.sampled_from(PURCHASE_SHIFTS)
ORDER_COUNT = st.integers(1, 25)
CHANNEL = st.sampled_from(["MFN", "MFN", "MFN", "AFN"])
# purchase times from 35 days ago up to now, often near bucket, window and retention edges
EDGE_AGES = st.sampled_from([0, 3599, 3600, 7 * 86400 - 1, 7 * 86400, 7 * 86400 + 3600, 30 * 86400 - 1,
                             30 * 86400, 6 * 86400 + 82800, BOUNDARY_AGE - 0.4, BOUNDARY_AGE + 0.4,
                             POLICY.retention_seconds - 3600, POLICY.retention_seconds])
FOCUSED_AGE = st.one_of(st.integers(0, 3 * 86400), EDGE_AGES)
ANY_AGE = st.one_of(st.integers(0, 35 * 86400), EDGE_AGES)


def order_items(skus: tuple[str, ...], most: int) -> st.SearchStrategy:
    return st.one_of(st.none(), st.lists(st.builds(events.Item, sku=st.sampled_from(skus),
                                                   quantity=st.integers(1, most)), min_size=1, max_size=2))


FOCUSED_ITEMS, ANY_ITEMS = order_items(SKUS[:2], 3), order_items(SKUS, 3)
FOCUSED_CANCEL_ITEMS, ANY_CANCEL_ITEMS = order_items(SKUS[:2], 2), order_items(SKUS, 2)
PLACED_STATUS = st.sampled_from(["Pending", "Unshipped"])
CHANGED_STATUS = st.sampled_from(["Unshipped", "PartiallyShipped", "Shipped"])
CANCEL_COUNT = st.integers(0, 2)
CANCEL_DELAY_MINUTES = st.integers(1, 600)
INITIATOR = st.sampled_from(names.INITIATORS)
REASON = st.sampled_from(["NoInventory", "BuyerCanceled", "ShipmentNotConfirmed",
                          "PaymentNotCompleted", "ShippingAddressUndeliverable", "Other"])
STATUS_AT_CANCEL = st.sampled_from(["Pending", "Unshipped", "Unshipped", "PartiallyShipped"])
SEED = st.integers(0, 2**32)


@st.composite
def order_streams(draw):
    # Focused streams put every order of one seller and marketplace within days of each
    # other, so a sku's last orders (the listing rule) are often decided by a move or a
    # cancel while Pending.
    focused = draw(st.booleans())
    sellers = SELLERS_FROM[tuple(draw(FOCUSED_SELLERS if focused else ANY_SELLERS))]
    marketplaces = FOCUSED_MARKETPLACES if focused else ANY_MARKETPLACES
    age_strategy = FOCUSED_AGE if focused else ANY_AGE
    items_strategy = FOCUSED_ITEMS if focused else ANY_ITEMS
    cancel_items_strategy = FOCUSED_CANCEL_ITEMS if focused else ANY_CANCEL_ITEMS
    stream = []
    counter = 0

    def common(seller, marketplace, order_id, channel, purchase, occurred):
        nonlocal counter
        counter += 1
        purchase += timedelta(seconds=draw(PURCHASE_SHIFT))
        return dict(schema_version=1, event_id=f"e{counter}", order_id=order_id, seller_id=seller,
                    marketplace=marketplace, fulfillment_channel=channel,
                    purchase_date=min(purchase, NOW), occurred_at=occurred)

    for index in range(draw(ORDER_COUNT)):
        seller = draw(sellers)
        marketplace = draw(marketplaces)
        channel = draw(CHANNEL)
        purchase = NOW - timedelta(seconds=draw(age_strategy))
        order_id = f"O{index}"
        items = draw(items_strategy)
        if draw(st.booleans()):
            stream.append(events.OrderPlaced(**common(seller, marketplace, order_id, channel, purchase, purchase),
                                             order_status=draw(PLACED_STATUS), items=items))
        if draw(st.booleans()):
            stream.append(events.OrderStatusChanged(
                **common(seller, marketplace, order_id, channel, purchase, purchase + timedelta(minutes=5)),
                order_status=draw(CHANGED_STATUS)))
        for _ in range(draw(CANCEL_COUNT)):
            cancel_items = draw(cancel_items_strategy)
            stream.append(events.OrderCancelled(
                **common(seller, marketplace, order_id, channel, purchase,
                         purchase + timedelta(minutes=draw(CANCEL_DELAY_MINUTES))),
                initiator=draw(INITIATOR), reason=draw(REASON), buyer_requested=draw(st.booleans()),
                order_status_at_cancel=draw(STATUS_AT_CANCEL), items=cancel_items))
    return stream, draw(SEED)


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
@given(order_streams(), st.sampled_from([0, 2, 10_000]))
def test_book_matches_oracle_under_duplicates_and_reordering(case, cache_records):
    # cache_records: no cache of decoded buckets, one evicting at almost every write, one keeping all
    stream, seed = case
    now = NOW.timestamp()
    shared: dict = {}          # the store and the index in one mapping: their keys differ in kind
    book = Book(POLICY, shared, shared, cache_records=cache_records, cache_min_orders=1)
    for batch in deliver(stream, seed):
        book.apply([(events.TOPIC_OF_TYPE[type(e)], e) for e in batch], now)
        # what lets Book._open skip the store: a bucket is stored iff its seller has totals for it
        assert stored_buckets(shared) == {(s.seller_id, s.marketplace, b) for s in book.states() for b in s.buckets}
    expected = oracle.compute(stream, now, POLICY)
    assert book_answers(book, now) == expected


def test_expiry_drops_the_order_filter_layers_whose_orders_all_expired():
    book = Book(POLICY, {}, {})
    book.indexed = OrderFilter(10)          # small layers: ten orders fill one
    old, recent = NOW - timedelta(days=29), NOW - timedelta(hours=1)
    book.apply([("orders", placed_at(old, order_id=f"OLD{n}")) for n in range(10)], NOW.timestamp())
    book.apply([("orders", placed_at(recent, order_id=f"NEW{n}")) for n in range(3)], NOW.timestamp())
    assert book.indexed.layers == 2 and len(book.indexed) == 13
    later = old.timestamp() + POLICY.retention_seconds + 3600       # the old orders expired, the recent not
    assert book.expire(later) == 1
    assert book.indexed.layers == 1 and len(book.indexed) == 3
    assert all(state.order_key("S1", "US", f"NEW{n}") in book.indexed for n in range(3))


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


def test_expiry_deletes_old_buckets_from_store_index_and_totals():
    store: dict = {}
    index: dict = {}
    book = Book(POLICY, store, index)
    placed = events.OrderPlaced(
        schema_version=1, event_id="p1", order_id="O1", seller_id="S1", marketplace="US",
        fulfillment_channel="MFN", purchase_date=NOW - timedelta(days=29), occurred_at=NOW - timedelta(days=29),
        order_status="Unshipped")
    book.apply([("orders", placed)], NOW.timestamp())
    bucket = window.bucket_of(placed.purchase_date.timestamp(), 3600)
    assert list(store) == [state.bucket_key("S1", "US", bucket)]
    assert index == {state.order_key("S1", "US", "O1"): str(bucket).encode()}
    assert book.expire(placed.purchase_date.timestamp() + POLICY.retention_seconds + 3600) == 1
    # its last bucket gone, a marker keeps the seller known after a restart
    assert list(store) == [state.seen_key("S1", "US")]
    assert index == {}
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
            book.feed(pending, with_purchase((events.TOPIC_OF_TYPE[type(e)], e) for e in batch), now)
        before = dict(writes)
        book.finish(pending)
        assert all(count - before.get(key, 0) <= 1 for key, count in writes.items()), \
            "a bucket written twice by one group"
    assert book_answers(book, now) == oracle.compute(stream, now, POLICY)


@hyp_settings(max_examples=100, deadline=None)
@given(order_streams(), st.sampled_from([2, 10_000]))
def test_a_group_dropped_before_it_is_written_leaves_the_cache_as_the_store(case, cache_records):
    # The worker drops a group fed before a rebalance (Runtime.drop_stale_group) and reads its
    # events again: the cached buckets must still be the stored ones, not the dropped group's.
    stream, seed = case
    now = NOW.timestamp()
    store: dict = {}
    book = Book(POLICY, store, cache_records=cache_records, cache_min_orders=1)
    batches = [[(events.TOPIC_OF_TYPE[type(e)], e) for e in batch] for batch in deliver(stream, seed)]
    half = len(batches) // 2
    for batch in batches[:half]:
        book.apply(batch, now)
    dropped = book.begin()
    for batch in batches[half:]:
        book.feed(dropped, with_purchase(batch), now)     # never finished
    for batch in batches[half:]:
        book.apply(batch, now)
    assert book_answers(book, now) == oracle.compute(stream, now, POLICY)
    rebuilt = Book(POLICY, dict(store))
    rebuilt.load(store.items())
    assert book_answers(rebuilt, now) == book_answers(book, now)


def placed_at(purchase, order_id="O1", seller="S1", marketplace="US", event_id=None, items=None,
              status="Unshipped"):
    return events.OrderPlaced(
        schema_version=1, event_id=event_id or f"p-{order_id}-{purchase.timestamp()}", order_id=order_id,
        seller_id=seller, marketplace=marketplace, fulfillment_channel="MFN", purchase_date=purchase,
        occurred_at=purchase, order_status=status, items=items)


def cancelled_at(purchase, order_id="O1", seller="S1", marketplace="US", event_id=None, items=None,
                 status_at_cancel="Unshipped", initiator="seller", reason="NoInventory"):
    return events.OrderCancelled(
        schema_version=1, event_id=event_id or f"c-{order_id}-{purchase.timestamp()}", order_id=order_id,
        seller_id=seller, marketplace=marketplace, fulfillment_channel="MFN", purchase_date=purchase,
        occurred_at=purchase + timedelta(minutes=30), initiator=initiator, reason=reason,
        buyer_requested=False, order_status_at_cancel=status_at_cancel, items=items)


def first_window(book: Book, seller="S1", marketplace="US") -> window.WindowTotals:
    now_bucket = window.bucket_of(NOW.timestamp(), POLICY.bucket_seconds)
    return window.seller_windows(book.seller(seller, marketplace).buckets, marketplace, POLICY, now_bucket)[0]


def stored_orders(store: dict) -> dict:
    """order_id -> bucket, for every order record in the store's buckets (each must be in one)."""
    where: dict = {}
    for key, value in store.items():
        parsed = state.parse_key(key)
        if parsed is not None and parsed.kind == state.KIND_BUCKET:
            for order_id in ledger.decode_bucket(value):
                assert order_id not in where, f"order {order_id} stored in two buckets"
                where[order_id] = parsed.bucket
    return where


def stored_buckets(store: dict) -> set:
    """(seller, marketplace, bucket) of every bucket key in the store."""
    return {(parsed.seller_id, parsed.marketplace, parsed.bucket) for parsed in map(state.parse_key, store)
            if parsed is not None and parsed.kind == state.KIND_BUCKET}


class ReadCounting(dict):
    """A dict that counts the keys read from it."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[bytes] = []

    def get(self, key, default=None):
        self.reads.append(key)
        return super().get(key, default)


def test_a_new_order_in_a_new_bucket_reads_neither_the_store_nor_the_index():
    store, index = ReadCounting(), ReadCounting()
    book = Book(POLICY, store, index)
    book.apply([("orders", placed_at(NOW - timedelta(hours=3), order_id="O1"))], NOW.timestamp())
    book.apply([("orders", placed_at(NOW - timedelta(hours=2), order_id=f"O{n}")) for n in range(2, 50)],
               NOW.timestamp())
    assert store.reads == [] and index.reads == []
    assert len(stored_orders(store)) == 49 and len(index) == 49


def test_an_order_stored_before_is_found_through_the_index_and_a_stored_bucket_read():
    store, index = ReadCounting(), ReadCounting()
    book = Book(POLICY, store, index)
    later, earlier = NOW - timedelta(days=2), NOW - timedelta(days=5)
    book.apply([("orders", placed_at(later))], NOW.timestamp())
    book.apply([("cancellations", cancelled_at(earlier))], NOW.timestamp())
    later_key = state.bucket_key("S1", "US", window.bucket_of(later.timestamp(), 3600))
    assert index.reads == [state.order_key("S1", "US", "O1")]
    assert store.reads == [later_key]       # the order's bucket; the new, earlier one is not read
    assert stored_orders(store) == {"O1": window.bucket_of(earlier.timestamp(), 3600)}


def test_a_loaded_book_finds_the_orders_it_loaded_through_the_index():
    store: dict = {}
    first = Book(POLICY, store)
    later, earlier = NOW - timedelta(days=2), NOW - timedelta(days=5)
    first.apply([("orders", placed_at(later, order_id=f"O{n}")) for n in range(100)], NOW.timestamp())
    index = ReadCounting()
    loaded = Book(POLICY, dict(store), index)
    loaded.load(list(store.items()))
    result = loaded.apply([("cancellations", cancelled_at(earlier, order_id="O7"))], NOW.timestamp())
    assert index.reads == [state.order_key("S1", "US", "O7")]
    assert result.new_orders == {} and result.new_faults == {("US", "NoInventory"): 1}
    assert stored_orders(loaded.store)["O7"] == window.bucket_of(earlier.timestamp(), 3600)



def test_a_small_bucket_is_cached_once_opened_again_and_a_new_one_never():
    store = ReadCounting()
    book = Book(POLICY, store, {}, cache_records=1_000)     # buckets under 8 orders: small
    placed = NOW - timedelta(hours=3)
    bucket = state.bucket_key("S1", "US", window.bucket_of(placed.timestamp(), 3600))
    book.apply([("orders", placed_at(placed, order_id=f"O{n}")) for n in range(3)], NOW.timestamp())
    assert bucket not in book._cache        # new: a burst of new orders caches nothing
    book.apply([("cancellations", cancelled_at(placed, order_id="O1"))], NOW.timestamp())
    assert store.reads == [bucket] and bucket in book._cache    # read once, then kept
    book.apply([("cancellations", cancelled_at(placed, order_id="O2"))], NOW.timestamp())
    assert store.reads == [bucket]          # opened from the cache
    cached = book._cache[bucket]
    assert set(cached) == {"O0", "O1", "O2"} and cached["O2"].counted and not cached["O0"].counted
    book.drop_cache()
    book.apply([("cancellations", cancelled_at(placed, order_id="O0"))], NOW.timestamp())
    assert store.reads == [bucket, bucket]  # dropped at rest: read again


BEFORE_EIGHT = datetime(2026, 11, 20, 7, 59, 59, 600000, tzinfo=timezone.utc)
AFTER_EIGHT = datetime(2026, 11, 20, 8, 0, 0, 400000, tzinfo=timezone.utc)


def test_one_order_whose_events_straddle_a_bucket_boundary_counts_once():
    seven = window.bucket_of(BEFORE_EIGHT.timestamp(), 3600)
    for stream in ([placed_at(AFTER_EIGHT), cancelled_at(BEFORE_EIGHT)],
                   [cancelled_at(BEFORE_EIGHT), placed_at(AFTER_EIGHT)]):
        for batches in ([stream], [[event] for event in stream]):
            store: dict = {}
            index: dict = {}
            book = Book(POLICY, store, index)
            for batch in batches:
                book.apply([(events.TOPIC_OF_TYPE[type(e)], e) for e in batch], NOW.timestamp())
            totals = first_window(book)
            assert (totals.orders, totals.cancelled) == (1, 1)
            assert stored_orders(store) == {"O1": seven}
            assert index[state.order_key("S1", "US", "O1")] == str(seven).encode()
            assert book_answers(book, NOW.timestamp()) == oracle.compute(stream, NOW.timestamp(), POLICY)


def test_an_earlier_purchase_date_arriving_last_moves_the_record_and_counts_no_new_order():
    store: dict = {}
    index: dict = {}
    book = Book(POLICY, store, index)
    later, earlier = NOW - timedelta(days=2), NOW - timedelta(days=5)
    first = book.apply([("orders", placed_at(later, items=[events.Item(sku="SKU-A", quantity=1)]))],
                       NOW.timestamp())
    assert first.new_orders == {"US": 1}
    second = book.apply([("cancellations", cancelled_at(earlier))], NOW.timestamp())
    earlier_bucket = window.bucket_of(earlier.timestamp(), 3600)
    assert stored_orders(store) == {"O1": earlier_bucket}
    assert state.bucket_key("S1", "US", window.bucket_of(later.timestamp(), 3600)) not in store
    assert index[state.order_key("S1", "US", "O1")] == str(earlier_bucket).encode()
    assert second.new_orders == {}                          # the same order, moved
    assert second.new_faults == {("US", "NoInventory"): 1}
    assert second.writes == 2                               # the old bucket deleted, the new one written
    record = ledger.decode_bucket(store[state.bucket_key("S1", "US", earlier_bucket)])["O1"]
    assert record.purchase == int(earlier.timestamp()) and record.skus == ("SKU-A",)
    assert list(book.seller("S1", "US").buckets) == [earlier_bucket]
    totals = first_window(book)
    assert (totals.orders, totals.cancelled) == (1, 1)


def test_a_later_purchase_date_updates_the_record_where_it_is():
    store: dict = {}
    book = Book(POLICY, store)
    earlier, later = NOW - timedelta(days=5), NOW - timedelta(days=2)
    book.apply([("orders", placed_at(earlier))], NOW.timestamp())
    result = book.apply([("cancellations", cancelled_at(later))], NOW.timestamp())
    assert stored_orders(store) == {"O1": window.bucket_of(earlier.timestamp(), 3600)}
    assert result.new_orders == {} and result.new_faults == {("US", "NoInventory"): 1}
    assert result.outcomes == {("cancellations", "applied"): 1}
    totals = first_window(book)
    assert (totals.orders, totals.cancelled) == (1, 1)


def test_a_stale_index_entry_is_an_unknown_order():
    index = {state.order_key("S1", "US", "O1"): b"12345"}      # a bucket that is not in the store
    store: dict = {}
    book = Book(POLICY, store, index)
    book.apply([("orders", placed_at(NOW - timedelta(hours=2)))], NOW.timestamp())
    bucket = window.bucket_of((NOW - timedelta(hours=2)).timestamp(), 3600)
    assert stored_orders(store) == {"O1": bucket}
    assert index[state.order_key("S1", "US", "O1")] == str(bucket).encode()


def test_late_events_are_stored_but_move_no_counter():
    # US rates over 7 days; 10 days ago is inside the listing rule's 30 days only
    ten_days = NOW - timedelta(days=10)
    stream = [placed_at(ten_days), cancelled_at(ten_days),
              cancelled_at(ten_days, order_id="O2", status_at_cancel="Pending", initiator="amazon",
                           reason="PaymentNotCompleted"),
              cancelled_at(ten_days, order_id="O3", initiator="buyer", reason="BuyerCanceled")]
    store: dict = {}
    book = Book(POLICY, store)
    result = book.apply([(events.TOPIC_OF_TYPE[type(e)], e) for e in stream], NOW.timestamp())
    assert result.outcomes == {("orders", "late"): 1, ("cancellations", "late"): 3}
    assert result.new_orders == {} and result.new_faults == {} and result.new_excluded == {}
    assert set(stored_orders(store)) == {"O1", "O2", "O3"}
    # an in-window order of the same batch still counts
    fresh = book.apply([("orders", placed_at(NOW - timedelta(hours=1), order_id="O4"))], NOW.timestamp())
    assert fresh.new_orders == {"US": 1}


def test_an_order_moved_out_of_the_window_moves_no_counter():
    store: dict = {}
    book = Book(POLICY, store)
    book.apply([("orders", placed_at(NOW - timedelta(days=2)))], NOW.timestamp())
    result = book.apply([("cancellations", cancelled_at(NOW - timedelta(days=9)))], NOW.timestamp())
    assert result.outcomes == {("cancellations", "late"): 1}
    assert result.new_orders == {} and result.new_faults == {}
    assert first_window(book).orders == 0


SKU = [events.Item(sku="SKU-1", quantity=1)]


def listing_alerts(book: Book, seller="S1", marketplace="DE") -> set:
    wanted = alerting.desired(book.seller(seller, marketplace), POLICY, NOW.timestamp(), "http://grafana")
    return {dict(key)[names.LABEL_SKU] for key in wanted
            if dict(key)[names.LABEL_ALERTNAME] == names.ALERT_LISTING}


def listing_stream():
    """Two seller-fault cancelled orders of SKU-1, then a newer one cancelled while Pending."""
    hours = {"O1": 5, "O2": 4, "O3": 3}
    placed = {oid: placed_at(NOW - timedelta(hours=h), order_id=oid, marketplace="DE", items=SKU,
                             status="Pending" if oid == "O3" else "Unshipped") for oid, h in hours.items()}
    faults = [cancelled_at(NOW - timedelta(hours=hours[oid]), order_id=oid, marketplace="DE") for oid in ("O1", "O2")]
    unpaid = cancelled_at(NOW - timedelta(hours=3), order_id="O3", marketplace="DE", status_at_cancel="Pending",
                          initiator="amazon", reason="PaymentNotCompleted")
    return list(placed.values()), faults, unpaid


def test_an_order_cancelled_while_pending_takes_no_place_in_the_listing_rule():
    placed, faults, unpaid = listing_stream()
    stream = placed + faults + [unpaid]
    # all at once, and with the unpaid order listed first and taken out by a later batch
    for batches in ([stream], [placed + faults, [unpaid]], [[e] for e in stream]):
        book = Book(POLICY, {})
        for batch in batches:
            book.apply([(events.TOPIC_OF_TYPE[type(e)], e) for e in batch], NOW.timestamp())
        assert listing_alerts(book) == {"SKU-1"}
        assert [entry[1] for entry in book.seller("S1", "DE").listing["SKU-1"]] == ["O2", "O1"]
        assert oracle.compute(stream, NOW.timestamp(), POLICY)[("S1", "DE")]["listing"] == {"SKU-1"}


def test_an_order_moving_below_the_kept_ones_lets_a_left_out_order_back():
    # O1 < O2 < O3 by purchase date; the listing keeps O3, O2. O3 then turns out to be the oldest.
    items = SKU
    stream = [placed_at(NOW - timedelta(hours=h), order_id=oid, marketplace="DE", items=items)
              for oid, h in (("O1", 5), ("O2", 4), ("O3", 3))]
    stream += [cancelled_at(NOW - timedelta(hours=h), order_id=oid, marketplace="DE")
               for oid, h in (("O1", 5), ("O2", 4))]
    moved = placed_at(NOW - timedelta(hours=9), order_id="O3", marketplace="DE", items=items, event_id="late-O3")
    book = Book(POLICY, {})
    book.apply([(events.TOPIC_OF_TYPE[type(e)], e) for e in stream], NOW.timestamp())
    assert listing_alerts(book) == set()
    book.apply([("orders", moved)], NOW.timestamp())
    assert [entry[1] for entry in book.seller("S1", "DE").listing["SKU-1"]] == ["O2", "O1"]
    assert listing_alerts(book) == {"SKU-1"}
    assert oracle.compute(stream + [moved], NOW.timestamp(), POLICY)[("S1", "DE")]["listing"] == {"SKU-1"}


def test_a_sku_is_listed_from_its_first_seller_fault_order_on_and_read_off_the_buckets_then():
    # Three orders of SKU-1, none seller-fault: the listing rule cannot fire, and nothing is listed.
    placed = [placed_at(NOW - timedelta(hours=h), order_id=oid, marketplace="DE", items=SKU)
              for oid, h in (("O1", 5), ("O2", 4), ("O3", 3))]
    store: dict = {}
    book = Book(POLICY, store)
    book.apply([("orders", e) for e in placed], NOW.timestamp())
    assert book.seller("S1", "DE").listing is None
    # The first seller-fault cancel (of an order below the newest) lists the sku's latest orders.
    book.apply([("cancellations", cancelled_at(NOW - timedelta(hours=4), order_id="O2", marketplace="DE"))],
               NOW.timestamp())
    assert [entry[1:] for entry in book.seller("S1", "DE").listing["SKU-1"]] == [("O3", False), ("O2", True)]
    assert listing_alerts(book) == set()
    # A restart lists the tracked sku alone.
    book.apply([("orders", placed_at(NOW - timedelta(hours=2), order_id="O4", marketplace="DE",
                                     items=[events.Item(sku="SKU-2", quantity=1)]))], NOW.timestamp())
    restored = Book(POLICY, dict(store))
    restored.load(store.items())
    assert list(restored.seller("S1", "DE").listing) == ["SKU-1"]
    assert restored.seller("S1", "DE").listing == book.seller("S1", "DE").listing


def test_older_seller_fault_orders_fire_the_listing_rule_once_the_newer_ones_are_cancelled_while_pending():
    # O1, O2 seller-fault; O3, O4 newer and Pending. Cancelling O3 and O4 while Pending leaves
    # O2, O1 as the sku's last orders, before and after a restart.
    stream = [placed_at(NOW - timedelta(hours=h), order_id=oid, marketplace="DE", items=SKU,
                        status="Pending" if h < 4 else "Unshipped")
              for oid, h in (("O1", 6), ("O2", 5), ("O3", 3), ("O4", 2))]
    stream += [cancelled_at(NOW - timedelta(hours=h), order_id=oid, marketplace="DE")
               for oid, h in (("O1", 6), ("O2", 5))]
    unpaid = [cancelled_at(NOW - timedelta(hours=h), order_id=oid, marketplace="DE", status_at_cancel="Pending",
                           initiator="amazon", reason="PaymentNotCompleted") for oid, h in (("O3", 3), ("O4", 2))]
    for restart in (False, True):
        store: dict = {}
        book = Book(POLICY, store)
        book.apply([(events.TOPIC_OF_TYPE[type(e)], e) for e in stream], NOW.timestamp())
        assert listing_alerts(book) == set()
        if restart:
            book = Book(POLICY, dict(store))
            book.load(store.items())
        for cancel in unpaid:
            book.apply([("cancellations", cancel)], NOW.timestamp())
        assert listing_alerts(book) == {"SKU-1"}
        assert [entry[1] for entry in book.seller("S1", "DE").listing["SKU-1"]] == ["O2", "O1"]
    assert oracle.compute(stream + unpaid, NOW.timestamp(), POLICY)[("S1", "DE")]["listing"] == {"SKU-1"}


@hyp_settings(max_examples=100, deadline=None)
@given(order_streams(), st.integers(0, 30))
def test_a_book_restored_without_its_index_rebuilds_it_and_goes_on(case, split):
    # The worker restores the durable buckets from the changelog, which holds no index keys;
    # Book.load writes the index again, and later events find their orders through it.
    stream, seed = case
    now = NOW.timestamp()
    batches = deliver(stream, seed)
    store: dict = {}
    book = Book(POLICY, store, {})
    for batch in batches[:split]:
        book.apply([(events.TOPIC_OF_TYPE[type(e)], e) for e in batch], now)
    restored_index: dict = {}
    restored = Book(POLICY, dict(store), restored_index)
    restored.load(list(store.items()))
    assert restored_index == book.index
    for batch in batches[split:]:
        restored.apply([(events.TOPIC_OF_TYPE[type(e)], e) for e in batch], now)
    assert book_answers(restored, now) == oracle.compute(stream, now, POLICY)


def test_load_writes_the_index_where_it_is_told():
    store: dict = {}
    book = Book(POLICY, store)
    book.apply([("orders", placed_at(NOW - timedelta(hours=2)))], NOW.timestamp())
    collected: dict = {}
    Book(POLICY, dict(store)).load(store.items(), index=collected)
    assert collected == book.index
    untouched = Book(POLICY, dict(store))
    untouched.load(store.items(), index=False)
    assert untouched.index == {}


# Records of every kind of contribution: plain orders, pending-cancelled ones, seller-fault
# cancels of each reason, excluded causes with and without a fault.
SUMS_RECORDS = (
    ledger.Record(0),
    ledger.Record(0, flags=ledger.PENDING_CANCELLED | ledger.CAUSE_BITS["pending"]),
    ledger.Record(0, flags=ledger.SELLER_FAULT, fault_time=1, fault_reason=0),
    ledger.Record(0, flags=ledger.SELLER_FAULT, fault_time=1, fault_reason=3),
    ledger.Record(0, flags=ledger.CAUSE_BITS["buyer_requested"]),
    ledger.Record(0, flags=ledger.SELLER_FAULT | ledger.CAUSE_BITS["amazon_other"], fault_time=1, fault_reason=1),
)
SUMS_OPS = st.lists(st.one_of(
    st.tuples(st.just("change"), st.integers(-800, 6), st.integers(0, 3), st.none() | st.sampled_from(SUMS_RECORDS)),
    st.tuples(st.just("evaluate"), st.sampled_from((0, 1, 1, 2, 7, 167, 168, 719, 720, 2000, -1, -200))),
    st.tuples(st.just("expire"), st.integers(-900, -100)),
), max_size=60)


@given(SUMS_OPS, st.sampled_from((0, 3, state.SUMS_MIN_BUCKETS)))
def test_running_window_sums_equal_the_window_walked_at_every_evaluation(ops, min_buckets):
    """`SellerState.window_sums`, slid from evaluation to evaluation and kept up to date by
    `change` (or walked, for a seller of fewer than `SUMS_MIN_BUCKETS` buckets), equals
    `window.totals` over the seller's buckets (IN: the 7- and 30-day windows)."""
    kept = state.SUMS_MIN_BUCKETS
    state.SUMS_MIN_BUCKETS = min_buckets
    try:
        _check_window_sums(ops)
    finally:
        state.SUMS_MIN_BUCKETS = kept


def _check_window_sums(ops) -> None:
    seller = state.SellerState("S1", "IN")
    windows = POLICY.windows("IN")
    lengths = tuple(POLICY.window_buckets(w) for w in windows)
    now_bucket = 500_000
    records: dict[tuple[int, int], ledger.Record] = {}
    for op in ops + [("evaluate", 0)]:
        if op[0] == "change":
            _, offset, slot, new = op
            bucket = now_bucket + offset
            old = records.pop((bucket, slot), None)
            if new is not None:
                records[(bucket, slot)] = new
            seller.change(bucket, old, new)
        elif op[0] == "expire":
            oldest = now_bucket + op[1]
            seller.drop_before(oldest, oldest * POLICY.bucket_seconds)
            records = {key: record for key, record in records.items() if key[0] >= oldest}
        else:
            now_bucket += op[1]
            sums = seller.window_sums(lengths, now_bucket)
            assert [s.totals(w) for s, w in zip(sums, windows)] == \
                [window.totals(seller.buckets, w, POLICY, now_bucket) for w in windows]
