"""Hostile input without services: the event decoder under fuzzing, bad settings, bad policy files.

`events.decode` is the one gate every Kafka message passes. Whatever the
bytes, it returns a contract event or raises `BadEvent` with a kind from
names.DEAD_LETTER_KINDS and a non-empty reason; nothing else may escape,
or the worker's batch would crash instead of dead-lettering one message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from cancelwatch import names, settings as settings_module

from cancelwatch.core import events, policy as policy_module
from tests import faults_table

CANCELWATCH = str(Path(sys.executable).with_name("cancelwatch"))
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
FUZZ = hypothesis_settings(max_examples=400, deadline=None,
                           suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

PLACED = {
    "schema_version": 1, "event_id": "e-1", "type": "order_placed", "order_id": "113-1234567-1234567",
    "seller_id": "A1", "marketplace": "US", "fulfillment_channel": "MFN",
    "purchase_date": "2026-11-20T10:00:00Z", "occurred_at": "2026-11-20T10:00:05+01:00",
    "order_status": "Unshipped", "items": [{"sku": "SKU-1", "quantity": 2}],
}
CHANGED = {key: value for key, value in PLACED.items() if key != "items"} | {
    "type": "order_status_changed", "event_id": "e-2", "order_status": "Shipped"}
CANCELLED = {key: value for key, value in PLACED.items() if key != "order_status"} | {
    "type": "order_cancelled", "event_id": "e-3", "initiator": "seller", "reason": "NoInventory",
    "buyer_requested": False, "order_status_at_cancel": "Unshipped"}
VALID = [PLACED, CHANGED, CANCELLED]


def answer(decode, *args):
    """What a decoding function gives: the event, or the BadEvent's (kind, reason)."""
    try:
        return decode(*args)
    except events.BadEvent as bad:
        return (bad.kind, bad.reason)


def checked_on(topic_role: str, raw: bytes, now: datetime | None):
    event = events.decode(raw, now)
    events.check_topic(event, topic_role)
    return event


def outcome(raw: bytes, now: datetime | None = NOW):
    """The decoder's answer; fails the test if anything but an event or BadEvent comes out."""
    # The worker's per-topic decoder answers exactly as decode() followed by check_topic().
    for role in (names.ORDERS_TOPIC, names.CANCELLATIONS_TOPIC):
        assert answer(events.decode_on, role, raw, now) == answer(checked_on, role, raw, now), (role, raw[:200])
        # the worker's quick path: the event decode_on gives without a clock, or None
        unchecked = answer(events.decode_on, role, raw, None)
        quick = events.decode_quick(role, raw)
        assert quick == (unchecked if isinstance(unchecked, events.Event.__args__) else None), (role, raw[:200])
    try:
        event = events.decode(raw, now)
    except events.BadEvent as bad:
        assert bad.kind in names.DEAD_LETTER_KINDS, (raw[:200], bad.kind)
        assert bad.reason and bad.reason.strip(), raw[:200]
        assert str(bad) == bad.reason
        return bad
    assert isinstance(event, (events.OrderPlaced, events.OrderStatusChanged, events.OrderCancelled))
    # A decoded event must be usable by the worker: it re-encodes and decodes to itself.
    assert events.decode(events.encode(event)) == event
    event.occurred_at.timestamp()
    event.purchase_date.timestamp()
    return event


def dumps(document) -> bytes:
    return json.dumps(document).encode()


def test_the_valid_examples_decode():
    for document in VALID:
        assert isinstance(outcome(dumps(document)), events.Event.__args__)


# -- arbitrary bytes and arbitrary JSON ---------------------------------------------------

@FUZZ
@given(st.binary(max_size=4096))
def test_any_bytes_give_an_event_or_a_dead_letter(raw):
    outcome(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=5),
    max_leaves=30,
)


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(set(PLACED) | set(CANCELLED))), json_values, max_size=14))
def test_any_json_object_with_contract_keys_gives_an_event_or_a_dead_letter(document):
    outcome(dumps(document))


@FUZZ
@given(st.sampled_from(VALID), st.data())
def test_valid_events_mutated_field_by_field(document, data):
    mutated = dict(document)
    for field in data.draw(st.lists(st.sampled_from(sorted(document)), min_size=1, max_size=3, unique=True)):
        action = data.draw(st.sampled_from(["delete", "replace", "stringify"]))
        if action == "delete":
            del mutated[field]
        elif action == "replace":
            mutated[field] = data.draw(json_values)
        else:
            mutated[field] = str(mutated[field])
    result = outcome(dumps(mutated))
    if isinstance(result, events.BadEvent):
        assert result.kind in ("invalid_event", "future"), result.reason


@FUZZ
@given(st.sampled_from(VALID), st.data())
def test_valid_events_with_bytes_flipped_or_cut(document, data):
    raw = bytearray(dumps(document))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    outcome(bytes(raw[:cut]))


# -- every field with a value of the wrong type -----------------------------------------

WRONG_TYPES = [None, True, 0, -1, 1.5, "", "x" * 200, [], {}, [1], {"a": 1}, 2**70, "2026-11-20"]
# The few of those a field accepts: any short text is a valid id, items are optional.
ACCEPTED = {(field, "2026-11-20") for field in ("event_id", "order_id", "seller_id")} | {
    ("items", None), ("items", "[]"), ("buyer_requested", "True")}


def accepted(field: str, value) -> bool:
    return (field, value if isinstance(value, str) or value is None else repr(value)) in ACCEPTED


@pytest.mark.parametrize("document", VALID, ids=lambda d: d["type"])
def test_every_field_with_every_wrong_type_is_an_invalid_event(document):
    tried = 0
    for field in document:
        for wrong in WRONG_TYPES:
            mutated = dict(document, **{field: wrong})
            result = outcome(dumps(mutated))
            tried += 1
            if accepted(field, wrong):
                assert not isinstance(result, events.BadEvent), (field, wrong, result)
                continue
            assert isinstance(result, events.BadEvent), (field, wrong)
            assert result.kind == "invalid_event", (field, wrong, result.reason)
            if field != "type":
                assert field in result.reason or "type" in result.reason, (field, wrong, result.reason)
    assert tried == len(document) * len(WRONG_TYPES)


@pytest.mark.parametrize("field", ["event_id", "order_id", "seller_id", "marketplace", "type",
                                   "purchase_date", "occurred_at", "schema_version"])
def test_a_missing_required_field_is_named(field):
    document = {key: value for key, value in CANCELLED.items() if key != field}
    result = outcome(dumps(document))
    assert isinstance(result, events.BadEvent)
    assert result.kind == "invalid_event"
    assert field in result.reason


# -- named hostile inputs ------------------------------------------------------------------

def placed_with(**changes) -> bytes:
    return dumps(dict(PLACED, **changes))


HOSTILE = {
    "invalid UTF-8 inside a string": (
        placed_with(seller_id="SELLER").replace(b"SELLER", b"SE\xff\xfeER"), "invalid_json"),
    "invalid UTF-8 alone": (b"\xc3\x28\xa0\xa1", "invalid_json"),
    "lone surrogate escape": (placed_with(seller_id="X").replace(b'"X"', b'"\\ud800"'), None),
    "UTF-8 BOM before the object": (b"\xef\xbb\xbf" + placed_with(), "invalid_json"),
    "UTF-16 BOM": (b"\xff\xfe" + placed_with().decode().encode("utf-16-le"), "invalid_json"),
    "deeply nested arrays": (b"[" * 100_000 + b"]" * 100_000, "invalid_event"),
    "deeply nested objects": (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "invalid_json"),
    "deep nesting in an ignored field": (
        placed_with(extra=0).replace(b'"extra": 0', b'"extra": ' + b"[" * 50_000 + b"]" * 50_000), None),
    "1e400 as schema_version": (placed_with(schema_version=1).replace(b'"schema_version": 1', b'"schema_version": 1e400'),
                                "invalid_event"),
    "2**70 as schema_version": (placed_with(schema_version=2**70), "invalid_event"),
    "2**70 as a quantity": (placed_with(items=[{"sku": "S", "quantity": 2**70}]), "invalid_event"),
    "-1e400 as a quantity": (placed_with(items=[{"sku": "S", "quantity": 1}]).replace(b'"quantity": 1', b'"quantity": -1e400'),
                             "invalid_event"),
    "huge integer literal": (placed_with(schema_version=1).replace(b'"schema_version": 1', b'"schema_version": ' + b"9" * 5000),
                             "invalid_event"),
    "NaN literal": (placed_with(schema_version=1).replace(b'"schema_version": 1', b'"schema_version": NaN'), "invalid_json"),
    "Infinity literal": (placed_with(schema_version=1).replace(b'"schema_version": 1', b'"schema_version": Infinity'),
                         "invalid_json"),
    "NaN as a float field": (placed_with(extra=0).replace(b'"extra": 0', b'"extra": NaN'), "invalid_json"),
    "duplicate keys, the last one invalid": (placed_with()[:-1] + b', "marketplace": "XX"}', "invalid_event"),
    "duplicate type keys": (placed_with()[:-1] + b', "type": "order_cancelled"}', "invalid_event"),
    "oversized message": (placed_with(padding="x" * events.MAX_MESSAGE_BYTES), "invalid_json"),
    "oversized garbage": (b"\x00" * (events.MAX_MESSAGE_BYTES + 1), "invalid_json"),
    "empty message": (b"", "invalid_json"),
    "tombstone": (None, "invalid_json"),
    "JSON null": (b"null", "invalid_event"),
    "JSON array of events": (b"[" + placed_with() + b"]", "invalid_event"),
    "two events back to back": (placed_with() + placed_with(), "invalid_json"),
    "trailing garbage": (placed_with() + b"garbage", "invalid_json"),
    "NUL bytes inside": (placed_with()[:10] + b"\x00" + placed_with()[10:], "invalid_json"),
    "unknown type": (placed_with(type="order_exploded"), "invalid_event"),
    "schema_version 2": (placed_with(schema_version=2), "invalid_event"),
    "timestamp without offset": (placed_with(purchase_date="2026-11-20T10:00:00"), "invalid_event"),
    "timestamp as epoch number": (placed_with(purchase_date=1795168800), "invalid_event"),
    "impossible date": (placed_with(purchase_date="2026-02-30T10:00:00Z"), "invalid_event"),
    "year 9999 far in the future": (placed_with(occurred_at="9999-12-31T23:59:59-23:59"), "future"),
    "year 1 with an offset": (placed_with(purchase_date="0001-01-01T00:00:00+23:59"), None),
    "event_id of 129 characters": (placed_with(event_id="e" * 129), "invalid_event"),
    "seller_id of 65 characters": (placed_with(seller_id="s" * 65), "invalid_event"),
    "quantity 0": (placed_with(items=[{"sku": "S", "quantity": 0}]), "invalid_event"),
    "boolean as schema_version": (placed_with(schema_version=True), "invalid_event"),
    "marketplace in lower case": (placed_with(marketplace="us"), "invalid_event"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_named_hostile_input(name):
    raw, kind = HOSTILE[name]
    result = outcome(raw)
    if kind is None:
        return  # either answer is fine; outcome() proved nothing else escaped
    assert isinstance(result, events.BadEvent), name
    assert result.kind == kind, (name, result.reason)


def test_oversized_messages_are_refused_before_parsing():
    result = outcome(b"[" * (events.MAX_MESSAGE_BYTES + 1))
    assert result.kind == "invalid_json"
    assert str(events.MAX_MESSAGE_BYTES) in result.reason


def test_the_future_check_uses_the_given_clock_only():
    raw = placed_with(occurred_at="2026-11-20T12:06:00Z")
    assert outcome(raw).kind == "future"
    assert isinstance(outcome(raw, now=None), events.OrderPlaced)
    assert isinstance(outcome(placed_with(occurred_at="2026-11-20T12:04:59Z")), events.OrderPlaced)


def test_hostile_inputs_record():
    """The bad inputs of docs/faults.md, recorded once each named one is seen to end as listed there."""
    # The table says every case ended as a decoded event or a dead letter with a kind and a
    # reason: check it for the named messages here, so the record holds even run on its own.
    for name, (raw, kind) in HOSTILE.items():
        result = outcome(raw)
        if kind is not None:
            assert isinstance(result, events.BadEvent) and result.kind == kind, (name, result)
    counts = {
        "named hostile messages (invalid UTF-8, BOM, deep nesting, 1e400, 2**70, NaN, duplicate keys, "
        "oversized, ...)": len(HOSTILE),
        "wrong type in every field of every event type": sum(len(d) for d in VALID) * len(WRONG_TYPES),
        f"fuzzed messages (hypothesis, {FUZZ.max_examples} each: random bytes, random JSON objects, "
        "events mutated field by field, events with bytes flipped or cut)": 4 * FUZZ.max_examples,
        "bad values of settings": len(BAD_SETTINGS),
        "bad policy files": len(BAD_POLICIES),
    }
    assert all(count > 0 for count in counts.values()), counts
    faults_table.record_bad_inputs(counts)      # written only when recording
    assert json.loads(faults_table.RECORDS.read_text())["bad_inputs"]["counts"] == counts, \
        "docs/faults.json is behind the bad inputs tried: re-record (see docs/faults.md)"
    table = faults_table.TABLE.read_text()
    for name, count in counts.items():
        assert f"| {name} | {count:,} |" in table, name


# -- bad settings ----------------------------------------------------------------------------

# (variable, bad value) pairs: a list, so a variable tried twice is tried twice.
BAD_SETTINGS = [
    ("CANCELWATCH_BROKER", "http://127.0.0.1:9092"),
    ("CANCELWATCH_ALERTMANAGER_URL", "ftp://alerts"),
    ("CANCELWATCH_WEB_PORT", "70000"),
    ("CANCELWATCH_CLOCK", "sundial"),
    ("CANCELWATCH_POLICY", "/nonexistent/policy.yaml"),
    ("CANCELWATCH_ORDERS_TOPIC", "orders topic"),
    ("CANCELWATCH_CANCELLATIONS_TOPIC", ""),
    ("CANCELWATCH_DEAD_LETTER_TOPIC", "dlq/1"),
    ("CANCELWATCH_REROUTE_TOPIC", "x" * 250),
    ("CANCELWATCH_TARGETS_TOPIC", "seller:targets"),
    ("CANCELWATCH_ACCOUNT_HEALTH_TOPIC", "account health"),
    ("CANCELWATCH_PARTITIONS", "0"),
    ("CANCELWATCH_APP_ID", "my app"),
    ("CANCELWATCH_TOP_K", "many"),
    ("CANCELWATCH_GRAFANA_URL", "grafana:3000"),
    ("CANCELWATCH_WEB_ADVERTISED_URL", "worker-1:6066"),
    ("CANCELWATCH_WEB_ADVERTISED_URL", "http://:6066"),
    ("CANCELWATCH_ALERT_RESEND_SECONDS", "soon"),
    ("CANCELWATCH_KAFKA_SECURITY_PROTOCOL", "TLS"),
    ("CANCELWATCH_KAFKA_SASL_MECHANISM", "GSSAPI"),
    ("CANCELWATCH_KAFKA_PASSWORD_FILE", "/nonexistent/password"),
    ("CANCELWATCH_KAFKA_CA_FILE", "/nonexistent/ca.pem"),
    ("CANCELWATCH_LOG_LEVEL", "loud"),
    ("CANCELWATCH_SESSION_TIMEOUT_SECONDS", "5"),
    ("CANCELWATCH_CATCHUP_LAG", "-1"),
    ("CANCELWATCH_CATCHUP_AGE_SECONDS", "0"),
    ("CANCELWATCH_FAILPOINT", "halfway"),
    ("CANCELWATCH_FAILPOINT_AT", "0"),
    ("CANCELWATCH_CORE", "cython"),
]
# Settings that take any text; they are wrong only in combination (checked below) or
# when used (the web host is checked by binding to it).
FREE_FORM = {"CANCELWATCH_KAFKA_USERNAME", "CANCELWATCH_KAFKA_PASSWORD", "CANCELWATCH_DATA_DIR",
             "CANCELWATCH_WEB_HOST"}


def test_every_setting_has_a_bad_value_tried_or_is_free_form():
    every = {setting.variable for setting in settings_module.SETTINGS}
    tried = {variable for variable, _ in BAD_SETTINGS}
    assert every - FREE_FORM - tried == set(), "no bad value tried for these settings"
    assert tried - every == set(), "bad values tried for settings that do not exist"


@pytest.mark.parametrize("variable, value", BAD_SETTINGS,
                         ids=[f"{variable}={value[:20]}" for variable, value in BAD_SETTINGS])
def test_a_bad_setting_raises_an_error_naming_the_variable(variable, value):
    with pytest.raises(settings_module.SettingError) as raised:
        settings_module.load({variable: value})
    assert raised.value.variable == variable
    assert variable in str(raised.value)


@pytest.mark.parametrize("protocol", ["SASL_SSL", "SASL_PLAINTEXT"])
def test_sasl_without_credentials_names_the_missing_settings(protocol):
    for env in ({}, {"CANCELWATCH_KAFKA_USERNAME": "u"}, {"CANCELWATCH_KAFKA_PASSWORD": "p"}):
        with pytest.raises(settings_module.SettingError) as raised:
            settings_module.load({"CANCELWATCH_KAFKA_SECURITY_PROTOCOL": protocol, **env})
        assert "CANCELWATCH_KAFKA_USERNAME" in str(raised.value)
        assert "CANCELWATCH_KAFKA_PASSWORD" in str(raised.value)


def run_worker(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("CANCELWATCH_")}
    # No broker listens on port 1: a worker that got past its checks would fail differently.
    clean.update({"CANCELWATCH_BROKER": "kafka://127.0.0.1:1", **env})
    return subprocess.run([CANCELWATCH, "worker"], env=clean, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("variable, value", [(variable, value) for variable, value in BAD_SETTINGS if variable in (
    "CANCELWATCH_WEB_PORT", "CANCELWATCH_CLOCK", "CANCELWATCH_BROKER", "CANCELWATCH_KAFKA_SECURITY_PROTOCOL")])
def test_the_worker_refuses_to_start_with_a_bad_setting(variable, value):
    done = run_worker({variable: value})
    assert done.returncode == 2, done.stderr
    assert variable in done.stderr
    assert "Traceback" not in done.stderr


# -- bad policy files --------------------------------------------------------------------

GOOD_POLICY = Path(policy_module.__file__).with_name("policy.yaml").read_text()


def replace_line(text: str, old: str, new: str) -> tuple[str, int]:
    """The policy with one line changed, and that line's number (1-based)."""
    lines = text.splitlines()
    number = next(index for index, line in enumerate(lines) if old in line)
    lines[number] = lines[number].replace(old, new)
    return "\n".join(lines) + "\n", number + 1


BAD_POLICIES = {
    "limit above 100%": ("{days: 7, limit_bps: 250, warning_bps: 200}",
                         "{days: 7, limit_bps: 25000, warning_bps: 200}", "limit_bps"),
    "warning above limit": ("{days: 7, limit_bps: 250, warning_bps: 200}",
                            "{days: 7, limit_bps: 250, warning_bps: 300}", "warning_bps"),
    "warning at the limit": ("{days: 7, limit_bps: 250, warning_bps: 200}",
                             "{days: 7, limit_bps: 250, warning_bps: 250}", "warning_bps"),
    "unknown marketplace": ("  IN:", "  XX:", "XX"),
    "unknown reason": ("reason: ShipmentNotConfirmed}", "reason: LateShipment}", "LateShipment"),
    "unknown initiator": ("- {initiator: seller}", "- {initiator: robot}", "robot"),
    "buyer_requested not a boolean": ("buyer_requested: true}", "buyer_requested: maybe}", "buyer_requested"),
    "bucket not dividing a day": ("bucket_minutes: 60", "bucket_minutes: 7", "bucket_minutes"),
    "days as text": ("{days: 7, limit_bps: 250, warning_bps: 200}",
                     "{days: seven, limit_bps: 250, warning_bps: 200}", "days"),
    "unknown key": ("headroom_low: 1", "headroom_lo: 1", "headroom_lo"),
    "broken YAML": ("forecast_pace_hours: 24", "forecast_pace_hours: [24", "YAML"),
    "wrong version": ("version: 1", "version: 2", "version"),
}


@pytest.mark.parametrize("name", sorted(BAD_POLICIES))
def test_a_bad_policy_file_names_its_line(name, tmp_path):
    old, new, word = BAD_POLICIES[name]
    text, line = replace_line(GOOD_POLICY, old, new)
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(policy_module.PolicyError) as raised:
        policy_module.load(path)
    message = str(raised.value)
    assert str(path) in message
    assert word in message
    if name == "broken YAML":
        assert " line " in message  # YAML's own parser reports where it noticed, a line or two on
    else:
        assert f" line {line}:" in message, (message, line)


def test_the_worker_refuses_a_bad_policy_naming_the_line(tmp_path):
    text, line = replace_line(GOOD_POLICY, "warning_bps: 200}", "warning_bps: 900}")
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    done = run_worker({"CANCELWATCH_POLICY": str(path)})
    assert done.returncode == 2, done.stderr
    assert f"{path} line {line}:" in done.stderr
    assert "Traceback" not in done.stderr


def test_empty_and_unreadable_policy_files(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(policy_module.PolicyError, match="empty"):
        policy_module.load(empty)
    with pytest.raises(policy_module.PolicyError, match="cannot read"):
        policy_module.load(tmp_path / "missing.yaml")


def test_the_faults_table_is_rendered_from_the_recorded_measurements():
    """docs/faults.md is exactly what the recorded runs in docs/faults.json render to."""
    records = json.loads(faults_table.RECORDS.read_text())
    assert faults_table.TABLE.read_text() == faults_table.render(records)
    for row in records["faults"].values():
        assert row["lost"] == 0 and row["double_counted"] == 0 and row["injected"] >= 1
    assert records["faults"].get("kill", {}).get("injected", 0) >= 5
