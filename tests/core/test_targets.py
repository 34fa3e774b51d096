"""Seller targets (streams/cancelwatch/core/targets.py), policy presets and the command's number parsing: no services."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from cancelwatch import names

from cancelwatch.core import events, policy, targets, window

POLICY_FILE = Path(policy.__file__).with_name("policy.yaml")
POLICY = policy.load(POLICY_FILE)


def value(**fields) -> bytes:
    message = {"schema_version": 1, "seller_id": "A1", "marketplace": "US",
               "limit": 0.005, "warning_level": 0.004, "note": "Seller Fulfilled Prime"}
    message.update(fields)
    return json.dumps({name: given for name, given in message.items() if given is not ...}).encode()


def refused(key: bytes | None, raw: bytes | None) -> targets.BadTarget:
    with pytest.raises(targets.BadTarget) as caught:
        targets.decode_target(key, raw)
    bad = caught.value
    assert isinstance(bad, events.BadEvent)           # the worker's dead-letter path takes it as is
    assert bad.kind in names.DEAD_LETTER_KINDS and bad.reason == str(bad)
    return bad


# --- decoding ------------------------------------------------------------------------------


def test_a_target_is_decoded_in_whole_basis_points():
    update = targets.decode_target(b"A1/US", value())
    assert update == targets.TargetUpdate(
        "A1", "US", targets.Target("A1", "US", 50, 40, "Seller Fulfilled Prime"))
    assert update.key == ("A1", "US")


@pytest.mark.parametrize("seller_id", ["A/1", "agency/A1/", "/A1", "a/b/c/d"])
def test_the_key_is_split_on_its_last_slash(seller_id):
    update = targets.decode_target(f"{seller_id}/IN".encode(), value(seller_id=seller_id, marketplace="IN"))
    assert (update.seller_id, update.marketplace) == (seller_id, "IN")
    assert update.target.seller_id == seller_id


def test_a_tombstone_removes_the_target():
    assert targets.decode_target(b"A/1/US", None) == targets.TargetUpdate("A/1", "US", None)


def test_note_is_optional_unknown_fields_are_ignored_and_whole_numbers_are_fractions():
    update = targets.decode_target(b"A1/US", value(note=..., limit=1, warning_level=0.5, since="2026-11-20"))
    assert update.target == targets.Target("A1", "US", 10000, 5000, None)
    assert targets.decode_target(b"A1/US", value(note="  ")).target.note is None
    assert targets.decode_target(b"A1/US", value(note=" SFP ")).target.note == "SFP"


def test_doubles_a_hair_off_a_whole_basis_point_are_that_basis_point():
    # 0.0029 * 10000 is 28.999999999999996 in floating point.
    assert targets.decode_target(b"A1/US", value(limit=0.0029, warning_level=0.0003)).target.limit_bps == 29
    assert targets.decode_target(b"A1/US", value(limit=0.0055, warning_level=0.0054)).target.limit_bps == 55


@pytest.mark.parametrize("key, raw, kind, words", [
    (None, value(), "invalid_event", "no key"),
    (b"A1", value(), "invalid_event", "no '/'"),
    (b"A1-US", value(), "invalid_event", "no '/'"),
    (b"A1/XX", value(), "invalid_event", "'XX' after the last '/'"),
    (b"A1/us", value(), "invalid_event", "not a marketplace code"),
    (b"/US", value(seller_id=""), "invalid_event", "seller id before the last '/'"),
    (("S" * 65 + "/US").encode(), value(seller_id="S" * 65), "invalid_event", "1..64"),
    (b"\xff/US", value(), "invalid_event", "not UTF-8"),
    (b"A1/US", b"", "invalid_json", "null value"),
    (b"A1/US", b"{\"limit\": ", "invalid_json", "not valid JSON"),
    (b"A1/US", b"[1, 2]", "invalid_event", "Expected `object`"),
    (b"A1/US", value(limit=...), "invalid_event", "limit"),
    (b"A1/US", value(warning_level=...), "invalid_event", "warning_level"),
    (b"A1/US", value(limit="0.5%"), "invalid_event", "$.limit"),
    (b"A1/US", value(limit=True), "invalid_event", "$.limit"),
    (b"A1/US", value(limit=None), "invalid_event", "$.limit"),
    (b"A1/US", value(schema_version=2), "invalid_event", "schema_version"),
    (b"A1/US", value(marketplace="XX"), "invalid_event", "$.marketplace"),
    (b"A1/US", value(note=5), "invalid_event", "$.note"),
    (b"A1/US", value(limit=0.00555), "invalid_event", "limit 0.00555 is 55.5 basis points"),
    (b"A1/US", value(warning_level=0.00401), "invalid_event", "warning_level 0.00401 is 40.1 basis points"),
    (b"A1/US", value(limit=0.005000001), "invalid_event", "whole basis points"),
    (b"A1/US", value(limit=0), "invalid_event", "limit 0.0 must be a fraction above 0"),
    (b"A1/US", value(limit=-0.005), "invalid_event", "limit -0.005 must be"),
    (b"A1/US", value(limit=1.5), "invalid_event", "at most 1"),
    (b"A1/US", value(warning_level=0), "invalid_event", "warning_level 0.0 must be"),
    (b"A1/US", value(warning_level=0.005), "invalid_event", "warning_level 0.005 must be below limit 0.005"),
    (b"A1/US", value(warning_level=0.006), "invalid_event", "must be below limit"),
    (b"A1/US", value(seller_id="A2"), "invalid_event", "key A1/US does not match the value's seller_id 'A2'"),
    (b"A1/US", value(marketplace="UK"), "invalid_event", "marketplace UK"),
    (b"A/1/US", value(seller_id="A"), "invalid_event", "does not match"),
    (b"A1/US", value(note="x" * 201), "invalid_event", "note is 201 characters"),
    (b"A1/US", value(note="line one\nline two"), "invalid_event", "note holds a control character"),
    (b"A1/US", b" " * 10_001, "invalid_json", "10001 bytes"),
])
def test_a_bad_message_is_refused_with_a_reason_naming_the_field(key, raw, kind, words):
    bad = refused(key, raw)
    assert bad.kind == kind
    assert words in bad.reason, bad.reason


def test_a_tombstone_with_a_bad_key_is_refused():
    assert "no '/'" in refused(b"A1", None).reason


# --- encoding: what the command writes, the worker reads back -------------------------------


@given(seller_id=st.text(min_size=1, max_size=64), marketplace=st.sampled_from(names.MARKETPLACES),
       limit_bps=st.integers(2, 10000), data=st.data(),
       note=st.none() | st.text(st.characters(min_codepoint=32, exclude_characters="\x7f",
                                              exclude_categories=["Cs"]),     # no lone surrogates: below
                                min_size=1, max_size=200).map(str.strip).filter(bool))
def test_every_target_survives_encoding_and_decoding(seller_id, marketplace, limit_bps, data, note):
    warning_bps = data.draw(st.integers(1, limit_bps - 1))
    target = targets.Target(seller_id, marketplace, limit_bps, warning_bps, note)
    key = targets.target_key(seller_id, marketplace)
    assert targets.decode_target(key, targets.encode_target(target)).target == target
    assert targets.validated(target) == target


@pytest.mark.parametrize("seller_id, note", [("A1", "caf\udce9"), ("A\udcff", None)])
def test_text_that_is_not_utf8_is_refused_with_a_reason(seller_id, note):
    # what a command line's non-UTF-8 bytes become in Python: lone surrogates
    with pytest.raises(targets.BadTarget) as caught:
        targets.validated(targets.Target(seller_id, "US", 50, 40, note))
    assert caught.value.kind == "invalid_event" and "not UTF-8 text" in caught.value.reason


def test_the_encoded_value_is_the_contract_shape():
    target = targets.Target("A1", "US", 50, 40, "Seller Fulfilled Prime")
    assert json.loads(targets.encode_target(target)) == {
        "schema_version": 1, "seller_id": "A1", "marketplace": "US",
        "limit": 0.005, "warning_level": 0.004, "note": "Seller Fulfilled Prime"}
    assert targets.target_value(targets.Target("A1", "US", 50, 40)) == {
        "schema_version": 1, "seller_id": "A1", "marketplace": "US", "limit": 0.005, "warning_level": 0.004}
    assert targets.target_key("A/1", "US") == b"A/1/US"


def test_validated_refuses_what_the_worker_would():
    with pytest.raises(targets.BadTarget, match="must be below limit"):
        targets.validated(targets.Target("A1", "US", 50, 50))
    with pytest.raises(targets.BadTarget, match="1..64"):
        targets.validated(targets.Target("S" * 65, "US", 50, 40))


# --- the latest message per key wins --------------------------------------------------------


def test_latest_message_per_key_wins_and_a_tombstone_removes():
    first = targets.Target("A1", "US", 50, 40)
    second = targets.Target("A1", "US", 100, 80, "agency")
    other = targets.Target("A1", "UK", 50, 40)
    updates = [targets.TargetUpdate("A1", "US", first), targets.TargetUpdate("A1", "UK", other),
               targets.TargetUpdate("A1", "US", second), targets.TargetUpdate("B2", "US", None)]
    assert targets.latest(updates) == {("A1", "US"): second, ("A1", "UK"): other}
    assert targets.latest(updates + [targets.TargetUpdate("A1", "US", None)]) == {("A1", "UK"): other}


# --- applying a target ---------------------------------------------------------------------

SFP = targets.Target("A1", "US", 50, 40, "Seller Fulfilled Prime")


def test_a_target_replaces_the_limit_and_warning_level_of_the_us_window():
    marketplace = list(POLICY.windows("US"))
    assert targets.apply_target(marketplace, None) == marketplace
    assert targets.apply_target(marketplace, SFP) == [policy.Window(7, 50, 40)]


def test_a_target_replaces_both_indian_windows():
    marketplace = POLICY.windows("IN")
    assert [w.days for w in marketplace] == [7, 30]
    target = targets.Target("A1", "IN", 100, 80)
    assert targets.apply_target(marketplace, target) == [policy.Window(7, 100, 80), policy.Window(30, 100, 80)]
    assert targets.apply_target(marketplace, None) == list(marketplace)


def test_status_and_headroom_follow_the_limit_in_force():
    # 1 seller-fault cancel in 150 orders: 0.67%, fine against 2.5%, a breach against 0.5%.
    (marketplace,) = POLICY.windows("US")
    (held,) = targets.apply_target([marketplace], SFP)
    loose = window.WindowTotals(marketplace, 150, 1, {"NoInventory": 1}, {})
    strict = window.WindowTotals(held, 150, 1, {"NoInventory": 1}, {})
    assert (loose.status, loose.headroom) == ("ok", 2)
    assert (strict.status, strict.headroom) == ("breach", 0)
    assert strict.as_json()["limit"] == 0.005 and strict.as_json()["warning_level"] == 0.004
    # 1 in 240: 0.42%, past the 0.4% warning level, under the 0.5% limit.
    assert window.WindowTotals(held, 240, 1, {}, {}).status == "warning"


def test_the_seller_view_and_alerts_say_where_the_limit_comes_from():
    assert targets.target_json(None) == {"source": "marketplace"}
    assert targets.target_json(SFP) == {"source": "seller", "note": "Seller Fulfilled Prime"}
    assert targets.target_json(targets.Target("A1", "US", 50, 40)) == {"source": "seller", "note": None}
    (marketplace,) = POLICY.windows("US")
    assert targets.annotations(None, marketplace) == {"limit": "2.50%", "limit_source": "marketplace"}
    (held,) = targets.apply_target([marketplace], SFP)
    assert targets.annotations(SFP, held) == {
        names.ANNOTATION_LIMIT: "0.50%", names.ANNOTATION_LIMIT_SOURCE: "seller", "note": "Seller Fulfilled Prime"}


def test_a_target_from_a_preset():
    preset = POLICY.presets["sfp_us"]
    assert targets.from_preset("A1", "US", preset) == targets.Target("A1", "US", 50, 40, "Seller Fulfilled Prime (US)")
    assert targets.from_preset("A1", "US", preset, "trial").note == "trial"


# --- presets in the policy file -------------------------------------------------------------


def test_the_packaged_policy_has_the_seller_fulfilled_prime_preset():
    assert POLICY.presets["sfp_us"] == policy.Preset(50, 40, "Seller Fulfilled Prime (US)")
    for preset in POLICY.presets.values():
        assert 1 <= preset.warning_bps < preset.limit_bps <= 10000


def test_a_policy_without_presets_has_none():
    text = POLICY_FILE.read_text()
    start = text.index("presets:\n")
    end = text.index("\n\n", start)
    assert policy.parse(text[:start] + text[end + 2:]).presets == {}


def with_presets(block: str) -> str:
    """The packaged policy with its presets section replaced by `block`."""
    text = POLICY_FILE.read_text()
    start = text.index("presets:\n")
    end = text.index("\n\n", start)
    return text[:start] + block + text[end:]


def line_of(text: str, fragment: str) -> int:
    return next(number for number, line in enumerate(text.splitlines(), 1) if fragment in line)


@pytest.mark.parametrize("block, fragment, words", [
    ("presets:\n  sfp: {limit_bps: 50, warning_bps: 50}", "sfp:", "warning_bps 50 must be below limit_bps 50"),
    ("presets:\n  sfp: {limit_bps: 50, warning_bps: 60}", "sfp:", "must be below"),
    ("presets:\n  sfp: {limit_bps: 0.5, warning_bps: 40}", "sfp:",
     "limit_bps (basis points, 50 = 0.5%) must be a whole number"),
    ("presets:\n  sfp: {limit_bps: 20000, warning_bps: 40}", "sfp:", "within 2..10000"),
    ("presets:\n  sfp: {limit_bps: 50}", "sfp:", "preset sfp is missing warning_bps"),
    ("presets:\n  sfp: {limit_bps: 50, warning_bps: 40, limit: 0.005}", "sfp:", "unknown key 'limit'"),
    ("presets:\n  sfp:\n    limit_bps: 50\n    warning_bps: 40\n    note: [a, b]", "note:", "expected a single value"),
    ("presets:\n  sfp: {limit_bps: 50, warning_bps: 40, note: 12}", "sfp:", "note must be text"),
    ("presets:\n  sfp: {limit_bps: 50, warning_bps: 40, note: \"" + "x" * 201 + "\"}", "sfp:",
     "note is 201 characters"),
    ("presets:\n  SFP: {limit_bps: 50, warning_bps: 40}", "SFP:", "preset name 'SFP'"),
    ("presets:\n  9lives: {limit_bps: 50, warning_bps: 40}", "9lives:", "starting with a letter"),
    ("presets:\n  sfp: {limit_bps: 50, warning_bps: 40}\n  sfp: {limit_bps: 60, warning_bps: 40}",
     "sfp: {limit_bps: 60", "preset 'sfp' appears twice"),
    ("presets:\n  - sfp", "- sfp", "presets must be a mapping"),
])
def test_a_bad_preset_names_its_line(block, fragment, words):
    text = with_presets(block)
    with pytest.raises(policy.PolicyError) as caught:
        policy.parse(text, "policy.yaml")
    message = str(caught.value)
    assert f"policy.yaml line {line_of(text, fragment)}: " in message, message
    assert words in message, message


# --- the command's numbers: 0.5% or 0.005, whole basis points ------------------------------


@pytest.mark.parametrize("text, bps", [
    ("0.5%", 50), ("0.005", 50), ("0.4 %", 40), ("2.5%", 250), ("1%", 100), ("100%", 10000),
    ("1", 10000), ("0.0055", 55), ("0.55%", 55), ("0.01%", 1), ("5e-3", 50), (" 0.5% ", 50),
])
def test_limits_are_given_as_percentages_or_fractions(text, bps):
    assert targets.parse_fraction("--limit", text) == bps


@pytest.mark.parametrize("text, words", [
    ("0.555%", "--limit 0.555% is 55.5 basis points: limits are whole basis points"),
    ("0.00555", "55.5 basis points"),
    ("0.001%", "0.1 basis points"),
    ("3", "did you mean 3%?"),
    ("250%", "at most 100%"),
    ("0", "above 0"),
    ("-0.5%", "above 0"),
    ("half", "'half' is not a number"),
    ("0,5%", "is not a number"),
    ("nan", "is not a number"),
    ("%", "is not a number"),
])
def test_fractional_basis_points_and_nonsense_are_refused(text, words):
    with pytest.raises(ValueError) as caught:
        targets.parse_fraction("--limit", text)
    assert words in str(caught.value), str(caught.value)
