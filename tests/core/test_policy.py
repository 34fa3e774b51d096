"""The counting policy: the packaged defaults of contract section 4, what a policy file may
not say (refused naming its line and why), what counts against a seller, and how long
purchase buckets are kept."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import pytest

from cancelwatch import names, settings as settings_module

from cancelwatch.core import policy as policy_module
from cancelwatch.core.policy import Preset, Reconciliation, Rule, Window
from tests import oracle

PACKAGED = policy_module.load(settings_module.load({}).policy_path)
DAY = 86400

# The smallest policy a file can hold: every optional section left out.
MINIMAL = """\
version: 1
bucket_minutes: 60
default:
  windows:
    - {days: 7, limit_bps: 250, warning_bps: 200}
counting:
  counts:
    - {initiator: seller}
alerts:
  headroom_low: 1
  forecast_horizon_hours: 24
  forecast_pace_hours: 24
  listing: {consecutive: 2, order_window_days: 30, marketplaces: all}
"""


def edited(old: str, new: str) -> str:
    assert MINIMAL.count(old) == 1, old
    return MINIMAL.replace(old, new)


def line_of(text: str, fragment: str) -> int:
    """The 1-based number of the one line of `text` holding `fragment`."""
    numbers = [number for number, line in enumerate(text.splitlines(), 1) if fragment in line]
    assert len(numbers) == 1, (fragment, numbers)
    return numbers[0]


# -- the packaged policy -------------------------------------------------------------------

def test_the_worker_loads_the_packaged_policy_by_default():
    assert settings_module.load({}).policy_path == Path(policy_module.__file__).with_name("policy.yaml")


def test_the_packaged_windows_are_the_contracts():
    assert PACKAGED.bucket_seconds == 3600
    assert PACKAGED.windows("US") == (Window(days=7, limit_bps=250, warning_bps=200),)
    assert PACKAGED.windows("IN") == (Window(days=7, limit_bps=200, warning_bps=160),
                                      Window(days=30, limit_bps=200, warning_bps=160))
    others = {marketplace: PACKAGED.windows(marketplace) for marketplace in names.MARKETPLACES if marketplace != "IN"}
    assert others == {marketplace: PACKAGED.default_windows for marketplace in others}
    assert [PACKAGED.window_buckets(window) for window in PACKAGED.windows("IN")] == [168, 720]


def test_the_packaged_counting_rules_are_the_contracts():
    assert PACKAGED.counts == (Rule(initiator="seller"), Rule(initiator="amazon", reason="ShipmentNotConfirmed"))
    assert PACKAGED.exceptions == (Rule(initiator="seller", reason="BuyerCanceled", buyer_requested=True),)


def test_the_packaged_alert_reconciliation_and_preset_settings():
    assert (PACKAGED.headroom_low, PACKAGED.forecast_horizon_hours, PACKAGED.forecast_pace_hours) == (1, 24, 24)
    assert (PACKAGED.listing_consecutive, PACKAGED.listing_order_window_days) == (2, 30)
    assert PACKAGED.listing_marketplaces == frozenset(names.MARKETPLACES)
    assert PACKAGED.reconciliation == Reconciliation(max_cancelled_drift=1, max_orders_drift=5,
                                                     max_orders_drift_bps=100, report_lag_days=3)
    assert PACKAGED.retention_grace_hours == 24
    assert PACKAGED.presets["sfp_us"] == Preset(limit_bps=50, warning_bps=40, note="Seller Fulfilled Prime (US)")
    assert all(preset.warning_bps < preset.limit_bps for preset in PACKAGED.presets.values())


def test_optional_sections_left_out_take_their_defaults():
    minimal = policy_module.parse(MINIMAL)
    assert minimal.marketplace_windows == {}
    assert minimal.exceptions == ()
    assert minimal.reconciliation == Reconciliation()
    assert minimal.retention_grace_hours == 24
    assert minimal.presets == {}


def test_a_listing_restricted_to_some_marketplaces():
    restricted = policy_module.parse(edited("marketplaces: all", "marketplaces: [US, IN]"))
    assert restricted.listing_marketplaces == frozenset({"US", "IN"})


# -- bad policy files ----------------------------------------------------------------------

# name: (policy text, a fragment of the line at fault, what the reason must say)
BAD_POLICIES = {
    "a bucket that does not divide a day (7 days would be 100.8 buckets)": (
        edited("bucket_minutes: 60", "bucket_minutes: 100"), "bucket_minutes",
        "bucket_minutes must divide a day"),
    "a bucket longer than a day": (
        edited("bucket_minutes: 60", "bucket_minutes: 2880"), "bucket_minutes", "within 1..1440"),
    "a forecast pace that is not a whole number of buckets": (
        edited("bucket_minutes: 60", "bucket_minutes: 720").replace("forecast_pace_hours: 24",
                                                                    "forecast_pace_hours: 6"),
        "forecast_pace_hours", "forecast_pace_hours must be a whole number of buckets"),
    "a forecast horizon that is not a whole number of buckets": (
        edited("bucket_minutes: 60", "bucket_minutes: 720").replace("forecast_horizon_hours: 24",
                                                                    "forecast_horizon_hours: 30"),
        "forecast_horizon_hours", "forecast_horizon_hours must be a whole number of buckets"),
    "a warning level above the limit": (
        edited("warning_bps: 200}", "warning_bps: 300}"), "warning_bps", "warning_bps 300 is not below limit_bps 250"),
    "a warning level above the limit in a marketplace's window": (
        MINIMAL + "marketplaces:\n  IN:\n    windows:\n      - {days: 30, limit_bps: 200, warning_bps: 201}\n",
        "warning_bps: 201", "warning_bps 201 is not below limit_bps 200"),
    "a limit of zero": (edited("limit_bps: 250", "limit_bps: 0"), "limit_bps", "within 1..10000, got 0"),
    "a limit above 100%": (edited("limit_bps: 250", "limit_bps: 10001"), "limit_bps", "within 1..10000"),
    "a window of zero days": (edited("days: 7", "days: 0"), "days: 0", "days must be within 1..366"),
    "two windows of the same length": (
        edited("    - {days: 7, limit_bps: 250, warning_bps: 200}\n",
               "    - {days: 7, limit_bps: 250, warning_bps: 200}\n"
               "    - {days: 7, limit_bps: 300, warning_bps: 200}\n"),
        "limit_bps: 300", "two windows of 7 days"),
    "no window": (edited("  windows:\n    - {days: 7, limit_bps: 250, warning_bps: 200}\n", "  windows: []\n"),
                  "windows: []", "default.windows must be a non-empty list"),
    "a marketplace that is not the contract's": (
        MINIMAL + "marketplaces:\n  GB:\n    windows:\n      - {days: 7, limit_bps: 200, warning_bps: 160}\n",
        "GB:", "'GB' is not a contract marketplace code"),
    "an unknown key at the top": (MINIMAL + "thresholds: 3\n", "thresholds", "unknown key 'thresholds' in the policy"),
    "an unknown key in a window": (
        edited("limit_bps: 250", "limit: 250"), "limit: 250", "unknown key 'limit' in a window"),
    "an unknown key in a counting rule": (
        edited("{initiator: seller}", "{initiator: seller, channel: MFN}"), "channel",
        "unknown key 'channel' in a rule in counting.counts"),
    "an unknown key in the listing alert": (
        edited("consecutive: 2", "consecutive: 2, sku_limit: 5"), "sku_limit",
        "unknown key 'sku_limit' in alerts.listing"),
    "an unknown key in counting": (
        edited("counting:\n", "counting:\n  excepting: []\n"), "excepting", "unknown key 'excepting' in counting"),
    "a key written twice": (MINIMAL + "bucket_minutes: 30\n", "bucket_minutes: 30", "'bucket_minutes' appears twice"),
    "a missing section": (edited("counting:\n  counts:\n    - {initiator: seller}\n", ""), "version",
                          "the policy is missing counting"),
    "a rule that names nothing": (edited("{initiator: seller}", "{}"), "- {}", "must name at least one of"),
    "an unknown initiator": (edited("{initiator: seller}", "{initiator: robot}"), "robot",
                             "initiator 'robot' is not one of seller, buyer, amazon"),
    "an unknown reason": (edited("{initiator: seller}", "{reason: LateShipment}"), "LateShipment",
                          "reason 'LateShipment' is not a contract reason code"),
    "a preset name in capitals": (
        MINIMAL + "presets:\n  SFP: {limit_bps: 50, warning_bps: 40}\n", "SFP", "preset name 'SFP' must be"),
    "a preset name starting with a digit": (
        MINIMAL + "presets:\n  1pct: {limit_bps: 100, warning_bps: 80}\n", "1pct", "preset name '1pct' must be"),
    "a preset whose warning level is its limit": (
        MINIMAL + "presets:\n  sfp: {limit_bps: 50, warning_bps: 50}\n", "sfp",
        "warning_bps 50 must be below limit_bps 50"),
    "a preset whose warning level is above its limit": (
        MINIMAL + "presets:\n  sfp: {limit_bps: 50, warning_bps: 60}\n", "sfp",
        "warning_bps 60 must be below limit_bps 50"),
    "a preset without a limit": (
        MINIMAL + "presets:\n  sfp: {warning_bps: 40}\n", "sfp", "preset sfp is missing limit_bps"),
    "a preset with an unknown key": (
        MINIMAL + "presets:\n  sfp: {limit_bps: 50, warning_bps: 40, colour: red}\n", "sfp",
        "unknown key 'colour' in preset sfp"),
    "a preset written twice": (
        MINIMAL + "presets:\n  sfp: {limit_bps: 50, warning_bps: 40}\n  sfp: {limit_bps: 60, warning_bps: 40}\n",
        "limit_bps: 60", "preset 'sfp' appears twice"),
    "a preset note of two lines": (
        MINIMAL + 'presets:\n  sfp: {limit_bps: 50, warning_bps: 40, note: "Prime\\nUS"}\n', "sfp",
        "note holds a control character"),
    "a preset note too long": (
        MINIMAL + f"presets:\n  sfp: {{limit_bps: 50, warning_bps: 40, note: {'x' * 201}}}\n", "sfp",
        "note is 201 characters, over the 200 allowed"),
    "presets as a list": (MINIMAL + "presets: [sfp]\n", "presets", "presets must be a mapping"),
    "a reconciliation that is not a mapping": (
        MINIMAL + "reconciliation: strict\n", "reconciliation", "reconciliation must be a mapping"),
    "an unknown key in reconciliation": (
        MINIMAL + "reconciliation:\n  max_drift: 2\n", "max_drift", "unknown key 'max_drift' in reconciliation"),
    "a negative report lag": (
        MINIMAL + "reconciliation:\n  report_lag_days: -1\n", "report_lag_days",
        "report_lag_days must be within 0..366, got -1"),
    "an orders drift above 100%": (
        MINIMAL + "reconciliation:\n  max_orders_drift_bps: 20000\n", "max_orders_drift_bps",
        "max_orders_drift_bps (basis points, 100 = 1%) must be within 0..10000"),
    "a fractional cancelled drift": (
        MINIMAL + "reconciliation:\n  max_cancelled_drift: 1.5\n", "max_cancelled_drift",
        "must be a whole number, got 1.5"),
    "a drift written as text": (
        MINIMAL + "reconciliation:\n  max_orders_drift: five\n", "max_orders_drift",
        "must be a whole number, got 'five'"),
}


@pytest.mark.parametrize("name", sorted(BAD_POLICIES))
def test_a_bad_policy_is_refused_naming_its_line_and_why(name):
    text, fragment, reason = BAD_POLICIES[name]
    with pytest.raises(policy_module.PolicyError) as raised:
        policy_module.parse(text, "bad.yaml")
    message = str(raised.value)
    assert message.startswith(f"bad.yaml line {line_of(text, fragment)}: "), message
    assert reason in message


def test_the_edits_above_break_nothing_but_what_they_name():
    """The same edits with valid values load, so each refusal is the named fault's."""
    policy_module.parse(edited("bucket_minutes: 60", "bucket_minutes: 720"))
    policy_module.parse(edited("warning_bps: 200}", "warning_bps: 249}"))
    policy_module.parse(MINIMAL + "presets:\n  sfp: {limit_bps: 50, warning_bps: 49, note: Prime}\n")
    policy_module.parse(MINIMAL + "reconciliation:\n  report_lag_days: 0\n  max_orders_drift_bps: 10000\n")


def test_a_bad_policy_file_is_named_in_the_refusal(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(edited("warning_bps: 200}", "warning_bps: 300}"))
    with pytest.raises(policy_module.PolicyError, match=f"^{path} line 5: warning_bps 300 is not below limit_bps 250: the warning level must come before the limit$"):
        policy_module.load(path)


# -- what counts against the seller -------------------------------------------------------

SELLER_FAULT = {
    ("seller", "NoInventory", False): True,
    ("seller", "NoInventory", True): True,
    ("seller", "BuyerCanceled", False): True,
    ("seller", "BuyerCanceled", True): False,
    ("seller", "ShipmentNotConfirmed", False): True,
    ("seller", "Other", True): True,
    ("buyer", "BuyerCanceled", True): False,
    ("buyer", "NoInventory", False): False,
    ("amazon", "ShipmentNotConfirmed", False): True,
    ("amazon", "ShipmentNotConfirmed", True): True,
    ("amazon", "PaymentNotCompleted", False): False,
    ("amazon", "PolicyViolation", False): False,
    ("amazon", "NoInventory", False): False,
}


def test_is_seller_fault_on_the_named_cases():
    assert {case: PACKAGED.is_seller_fault(*case) for case in SELLER_FAULT} == SELLER_FAULT


def test_is_seller_fault_on_every_initiator_reason_and_request():
    table = list(itertools.product(names.INITIATORS, names.REASONS, (False, True)))
    wrong = [case for case in table if PACKAGED.is_seller_fault(*case) != oracle.counts_against_seller(
        SimpleNamespace(initiator=case[0], reason=case[1], buyer_requested=case[2],
                        order_status_at_cancel="Unshipped"))]
    assert wrong == []
    # every seller cancel but BuyerCanceled at the buyer's request, and Amazon's ShipmentNotConfirmed
    assert sum(PACKAGED.is_seller_fault(*case) for case in table) == len(names.REASONS) * 2 - 1 + 2


def test_an_exception_overrides_a_counting_rule():
    policy = policy_module.parse(MINIMAL.replace("counting:\n  counts:\n    - {initiator: seller}\n",
                                                 "counting:\n  counts:\n    - {initiator: seller}\n"
                                                 "  except:\n    - {reason: NoInventory}\n"))
    assert not policy.is_seller_fault("seller", "NoInventory", False)
    assert policy.is_seller_fault("seller", "CustomerExchange", False)
    assert not policy.is_seller_fault("amazon", "ShipmentNotConfirmed", False)


def test_a_policy_where_nothing_counts():
    policy = policy_module.parse(edited("  counts:\n    - {initiator: seller}\n", "  counts: []\n"))
    assert not any(policy.is_seller_fault(*case)
                   for case in itertools.product(names.INITIATORS, names.REASONS, (False, True)))


# -- retention ---------------------------------------------------------------------------

def test_the_packaged_retention_covers_the_longest_window_plus_the_report_lag():
    # IN's 30 days plus Amazon's 3-day report lag outlast 30 days plus the 24-hour grace.
    assert PACKAGED.longest_window_days == 30
    assert PACKAGED.retention_seconds == (30 + 3) * DAY
    assert PACKAGED.reconciliation_retention_seconds == (30 + 3) * DAY


RETENTIONS = {
    "a 90-day window": (
        MINIMAL + "marketplaces:\n  DE:\n    windows:\n      - {days: 90, limit_bps: 250, warning_bps: 200}\n",
        (90 + 3) * DAY),
    "a listing window longer than every rate window": (
        edited("order_window_days: 30", "order_window_days: 60"), (60 + 3) * DAY),
    "no report lag, two days of grace": (
        MINIMAL + "retention_grace_hours: 48\nreconciliation:\n  report_lag_days: 0\n", 30 * DAY + 48 * 3600),
    "a grace longer than the report lag": (
        MINIMAL + "retention_grace_hours: 100\n", 30 * DAY + 100 * 3600),
    "a ten-day report lag": (MINIMAL + "reconciliation:\n  report_lag_days: 10\n", (30 + 10) * DAY),
}


@pytest.mark.parametrize("name", sorted(RETENTIONS))
def test_retention_is_the_longest_window_plus_the_longer_of_grace_and_report_lag(name):
    text, seconds = RETENTIONS[name]
    policy = policy_module.parse(text)
    assert policy.retention_seconds == seconds
    assert policy.retention_seconds >= (policy.longest_window_days + policy.reconciliation.report_lag_days) * DAY
    assert policy.retention_seconds >= policy.longest_window_days * DAY + policy.retention_grace_hours * 3600
