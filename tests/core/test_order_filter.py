"""The order filter: never "not there" for a key added; few false maybes, however many keys."""

from __future__ import annotations

from hypothesis import given, strategies as st

from cancelwatch.core import order_filter
from cancelwatch.core.order_filter import OrderFilter


@given(st.lists(st.binary(max_size=40), max_size=300), st.integers(1, 64))
def test_every_key_added_may_be_there(keys, capacity):
    # a capacity this small grows the filter by several layers within one example
    added = OrderFilter(capacity)
    for key in keys:
        added.add(key)
        assert key in added
    assert all(key in added for key in keys)
    assert len(added) == len(keys)


def test_false_maybes_stay_near_the_design_rate_as_the_filter_grows():
    added = OrderFilter(1_000)
    keys = [b"o007S-%d/US/order-%d" % (n % 300, n) for n in range(60_000)]   # sixty times its first capacity
    added.update(keys)
    assert all(key in added for key in keys)
    strangers = [b"o007S-%d/US/other-%d" % (n % 300, n) for n in range(100_000)]
    false_maybes = sum(1 for key in strangers if key in added) / len(strangers)
    # every layer at most at its capacity: at most FALSE_MAYBE per layer asked
    assert added.layers == 4          # 1,000 + 4,000 + 16,000 + 64,000 >= 60,000
    assert false_maybes < 4 * order_filter.FALSE_MAYBE


def test_an_empty_filter_holds_nothing_and_has_bits_for_its_capacity():
    empty = OrderFilter(10_000)
    assert b"anything" not in empty and len(empty) == 0
    assert 10_000 * order_filter.BYTES_PER_KEY <= empty.bytes < 2 * 10_000 * order_filter.BYTES_PER_KEY
