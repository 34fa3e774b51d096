"""Store keys: no two distinct (kind, seller, marketplace, bucket or order) give the same
key, whatever characters a seller id holds, and every key parses back to what made it."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from cancelwatch import names

from cancelwatch.core import state
from cancelwatch.core.state import ParsedKey

# Any Unicode but lone surrogates (the event decoder never yields them), biased towards the
# characters a separator-based layout would trip on.
characters = st.one_of(st.sampled_from(["\x1f", "/", "~", "b", "0", "9", "é", "\U0001f600"]),
                       st.characters(blacklist_categories=("Cs",)))
seller_ids = st.one_of(st.text(characters, min_size=1, max_size=64),
                       st.sampled_from(["~clock", "~clock/1", "S1\x1fUS\x1f5", "b002S1/US/5", "a/b"]))
order_ids = st.text(characters, min_size=1, max_size=64)
marketplaces = st.sampled_from(names.MARKETPLACES)
buckets = st.integers(0, 10**7)


def parsed_keys():
    return st.one_of(
        st.builds(lambda s, m, b: ParsedKey(state.KIND_BUCKET, s, m, b), seller_ids, marketplaces, buckets),
        st.builds(lambda s, m: ParsedKey(state.KIND_SEEN, s, m), seller_ids, marketplaces),
        st.builds(lambda s, m: ParsedKey(state.KIND_ALERTS, s, m), seller_ids, marketplaces),
        st.builds(lambda s, m: ParsedKey(state.KIND_HEALTH, s, m), seller_ids, marketplaces),
        st.builds(lambda s, m, o: ParsedKey(state.KIND_ORDER, s, m, None, o), seller_ids, marketplaces, order_ids),
    )


def key_of(parsed: ParsedKey) -> bytes:
    if parsed.kind == state.KIND_BUCKET:
        return state.bucket_key(parsed.seller_id, parsed.marketplace, parsed.bucket)
    if parsed.kind == state.KIND_SEEN:
        return state.seen_key(parsed.seller_id, parsed.marketplace)
    if parsed.kind == state.KIND_ALERTS:
        return state.alerts_key(parsed.seller_id, parsed.marketplace)
    if parsed.kind == state.KIND_HEALTH:
        return state.health_key(parsed.seller_id, parsed.marketplace)
    return state.order_key(parsed.seller_id, parsed.marketplace, parsed.order_id)


@given(parsed_keys())
def test_every_key_parses_back_to_what_made_it(parsed):
    key = key_of(parsed)
    assert state.parse_key(key) == parsed
    assert state.seller_of_key(key) == parsed.seller_id
    assert state.clock_partition(key) is None


@given(parsed_keys(), parsed_keys())
def test_distinct_parts_never_share_a_key(first, second):
    assert (key_of(first) == key_of(second)) == (first == second)


@given(parsed_keys(), st.integers(0, 10**4))
def test_clock_keys_are_internal_and_collide_with_no_seller_key(parsed, partition):
    clock = state.clock_key(partition)
    assert clock == b"~clock/%d" % partition
    assert state.parse_key(clock) is None
    assert state.seller_of_key(clock) is None
    assert state.clock_partition(clock) == partition
    assert key_of(parsed) != clock


@given(st.integers(0, 4 * 10**15))
def test_a_clock_value_is_whole_microseconds_and_reads_back_as_written(micros):
    # The same bytes under a table's clock key and on the clock topic: a worker of one version
    # reads what another wrote.
    value = state.encode_clock(micros / 1_000_000)
    assert value == str(micros).encode()
    assert state.decode_clock(value) == micros / 1_000_000
    assert state.encode_clock(state.decode_clock(value)) == value


@pytest.mark.parametrize("value", [b"", b"soon", b"1.5e9", None])
def test_a_value_that_is_not_a_clock_is_refused(value):
    with pytest.raises((ValueError, TypeError)):
        state.decode_clock(value)


def test_the_layout_is_kind_length_seller_marketplace_then_bucket_or_order():
    assert state.bucket_key("A1", "US", 493000) == b"b002A1/US/493000"
    assert state.seen_key("é/", "DE") == b"s003\xc3\xa9//DE"
    assert state.alerts_key("A1", "IN") == b"a002A1/IN"
    assert state.health_key("A1", "IN") == b"h002A1/IN"
    assert state.order_key("~clock/1", "US", "113-1/2") == b"o008~clock/1/US/113-1/2"


@pytest.mark.parametrize("key", [b"S1\x1fUS\x1f493000", b"b002S1", b"b002S1/US/x", b"s002S1/US/1",
                                 b"x002S1/US", b"b9", b"b002S1/U1/4"])
def test_a_key_of_another_layout_is_refused_with_what_to_do(key):
    with pytest.raises(state.KeyLayoutError, match="replay the source topics"):
        state.parse_key(key)
