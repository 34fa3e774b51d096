"""The order filter: never "not there" for a key added and not forgotten; few false maybes,
however many keys; the layers of expired orders dropped, so a long run stays bounded."""

from __future__ import annotations

from hypothesis import given, strategies as st

from cancelwatch.core import order_filter
from cancelwatch.core.order_filter import OrderFilter


@given(st.lists(st.tuples(st.binary(max_size=40), st.integers(0, 100)), max_size=300), st.integers(1, 64),
       st.integers(0, 100))
def test_every_key_added_may_be_there_until_its_bucket_is_forgotten(items, capacity, oldest):
    # a capacity this small fills several layers within one example
    added = OrderFilter(capacity)
    for key, bucket in items:
        added.add(key, bucket)
        assert key in added
    assert len(added) == len(items)
    added.forget_before(oldest)
    assert all(key in added for key, bucket in items if bucket >= oldest)


def test_false_maybes_stay_near_the_design_rate_as_the_filter_grows():
    added = OrderFilter(1_000)
    keys = [(b"o007S-%d/US/order-%d" % (n % 300, n), n // 100) for n in range(60_000)]
    added.update(keys)
    assert all(key in added for key, _ in keys)
    assert added.layers == 2          # 1,000, then FIRST_CAPACITY (at least as large as the keys held)
    strangers = [b"o007S-%d/US/other-%d" % (n % 300, n) for n in range(100_000)]
    false_maybes = sum(1 for key in strangers if key in added) / len(strangers)
    # at most FALSE_MAYBE per layer at capacity, give or take the spread of the sample and the hashes
    assert false_maybes < 1.5 * added.layers * order_filter.FALSE_MAYBE


def test_a_layer_is_dropped_once_all_its_orders_expired_and_the_newest_is_kept():
    added = OrderFilter(100)
    added.update((b"old-%d" % n, 10 + n % 5) for n in range(100))        # buckets 10..14: one full layer
    added.update((b"new-%d" % n, 20) for n in range(10))                  # the next layer
    assert added.layers == 2
    assert added.forget_before(14) == 0 and added.layers == 2            # bucket 14 is not expired yet
    assert added.forget_before(15) == 100 and added.layers == 1
    assert all(b"new-%d" % n in added for n in range(10))
    assert added.forget_before(1_000) == 0 and added.layers == 1          # the newest layer stays
    assert len(added) == 10


def test_a_long_run_with_expiry_holds_about_one_retention_of_orders():
    # a year of hourly buckets, 50 new orders an hour, a retention of 33 days, expiry every 5 hours
    retention, hourly = 33 * 24, 50
    added = OrderFilter(order_filter.FIRST_CAPACITY)
    largest = 0
    for hour in range(365 * 24):
        added.update((b"o%d-%d" % (hour, n), hour) for n in range(hourly))
        if hour % 5 == 0:
            added.forget_before(hour - retention)
        largest = max(largest, added.bytes)
    live = retention * hourly
    assert len(added) <= 4 * max(live, order_filter.FIRST_CAPACITY)
    assert largest <= 4 * 2 * order_filter.BYTES_PER_KEY * max(live, order_filter.FIRST_CAPACITY)


def test_an_empty_filter_holds_nothing_and_has_bits_for_its_capacity():
    empty = OrderFilter(10_000)
    assert b"anything" not in empty and len(empty) == 0
    assert 10_000 * order_filter.BYTES_PER_KEY <= empty.bytes < 2 * 10_000 * order_filter.BYTES_PER_KEY
