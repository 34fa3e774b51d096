"""Seller targets (contract section 10): a seller's own limit, stricter than the marketplace's.

The compacted topic `seller-targets` holds, per key `{seller_id}/{marketplace}`,
a target or a tombstone (null value) that removes it; the latest message per
key wins. `decode_target` checks one message and raises `BadTarget` (for the
dead-letter topic) when it breaks the contract; `apply_target` puts a target's
limit and warning level into a seller's windows; `target_json` and
`annotations` say in the seller view and in alerts where the limit comes from.
`target_key` and `encode_target` write messages the decoder accepts
(`cancelwatch target`). Pure: no Kafka, no clock.
"""

from __future__ import annotations

import dataclasses
import math
from decimal import Decimal, InvalidOperation
from typing import Iterable, Literal, Optional

import msgspec

from cancelwatch import names

from cancelwatch.core import events, policy

SOURCE_SELLER = "seller"
SOURCE_MARKETPLACE = "marketplace"
ANNOTATION_NOTE = "note"
MAX_VALUE_BYTES = 10_000

# `limit` and `warning_level` are fractions in whole basis points, but JSON numbers are
# doubles: 0.0029 * 10000 is 28.999999999999996, not 29. For a fraction in (0, 1] that
# product is off by at most a few units in its last place (below 1e-12 for numbers up
# to 10000), so a value within 1e-9 of a whole number of basis points is that number.
# Anything farther off is meant as a fraction of a basis point and is refused: 0.00555
# is 55.5 bps, and even 0.001 bps is 1e-3 off.
BPS_TOLERANCE = 1e-9


class BadTarget(events.BadEvent):
    """A seller-targets message that breaks the contract; `kind` is one of
    names.DEAD_LETTER_KINDS (`invalid_json` or `invalid_event`), `reason` names the field."""


@dataclasses.dataclass(frozen=True)
class Target:
    """A seller's own limit and warning level in one marketplace, in basis points."""

    seller_id: str
    marketplace: str
    limit_bps: int
    warning_bps: int
    note: str | None = None


@dataclasses.dataclass(frozen=True)
class TargetUpdate:
    """One message of the topic: the target of a seller and marketplace, or None (tombstone:
    the target is removed and the marketplace's limits apply again)."""

    seller_id: str
    marketplace: str
    target: Target | None

    @property
    def key(self) -> tuple[str, str]:
        return (self.seller_id, self.marketplace)


class _Value(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    schema_version: Literal[1]
    seller_id: events.ShortId
    marketplace: events.Marketplace
    limit: float
    warning_level: float
    note: Optional[str] = None


_decoder = msgspec.json.Decoder(_Value)
_encoder = msgspec.json.Encoder()


def decode_target(key: bytes | None, value: bytes | None) -> TargetUpdate:
    """Check one message of the seller-targets topic; raise BadTarget when it is not valid."""
    seller_id, marketplace = _decode_key(key)
    if value is None:
        return TargetUpdate(seller_id, marketplace, None)
    if not value:
        raise BadTarget("invalid_json", "the value is empty: a target is a JSON object, and a "
                                        "tombstone (removing the target) is a null value")
    if len(value) > MAX_VALUE_BYTES:
        raise BadTarget("invalid_json", f"the value is {len(value)} bytes, over the {MAX_VALUE_BYTES} limit")
    try:
        decoded = _decoder.decode(value)
    except msgspec.ValidationError as error:
        raise BadTarget("invalid_event", f"value: {error}") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        raise BadTarget("invalid_json", f"the value is not valid JSON: {error}") from None
    if (decoded.seller_id, decoded.marketplace) != (seller_id, marketplace):
        raise BadTarget("invalid_event",
                        f"key {seller_id}/{marketplace} does not match the value's seller_id "
                        f"{decoded.seller_id!r} and marketplace {decoded.marketplace}")
    limit_bps = _whole_bps("limit", decoded.limit)
    warning_bps = _whole_bps("warning_level", decoded.warning_level)
    if warning_bps >= limit_bps:
        raise BadTarget("invalid_event",
                        f"warning_level {decoded.warning_level!r} must be below limit {decoded.limit!r}")
    note = decoded.note.strip() if decoded.note else None
    if note:
        problem = policy.note_problem(note)
        if problem:
            raise BadTarget("invalid_event", f"note {problem}")
    return TargetUpdate(seller_id, marketplace, Target(seller_id, marketplace, limit_bps, warning_bps, note or None))


def _decode_key(key: bytes | None) -> tuple[str, str]:
    """`{seller_id}/{marketplace}`, split on the last '/' (seller ids may hold '/')."""
    example = "a target's key is {seller_id}/{marketplace}, e.g. A1/US"
    if key is None:
        raise BadTarget("invalid_event", f"the message has no key; {example}")
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        raise BadTarget("invalid_event", f"the key is not UTF-8 text; {example}") from None
    seller_id, slash, marketplace = text.rpartition("/")
    if not slash:
        raise BadTarget("invalid_event", f"key {text!r} has no '/'; {example}")
    if marketplace not in names.MARKETPLACES:
        raise BadTarget("invalid_event", f"key {text!r}: {marketplace!r} after the last '/' is not a "
                                         f"marketplace code ({' '.join(names.MARKETPLACES)})")
    if not 1 <= len(seller_id) <= 64:
        raise BadTarget("invalid_event", f"key {text!r}: the seller id before the last '/' must be "
                                         f"1..64 characters, not {len(seller_id)}")
    return seller_id, marketplace


def _whole_bps(field: str, fraction: float) -> int:
    if not (math.isfinite(fraction) and 0 < fraction <= 1):
        raise BadTarget("invalid_event", f"{field} {fraction!r} must be a fraction above 0 and at most 1 "
                                         "(0.005 is 0.5%)")
    scaled = fraction * 10000
    bps = round(scaled)
    if abs(scaled - bps) > BPS_TOLERANCE or bps < 1:
        raise BadTarget("invalid_event", f"{field} {fraction!r} is {scaled:.6g} basis points; targets are "
                                         "whole basis points (steps of 0.0001: 0.005 is 50)")
    return bps


def parse_fraction(option: str, text: str) -> int:
    """Basis points of `0.5%` or `0.005`; ValueError, naming the option, for anything else."""
    raw = text.strip()
    percent = raw.endswith("%")
    try:
        value = Decimal(raw[:-1].strip() if percent else raw)
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite():
        raise ValueError(f"{option} {text!r} is not a number: write a percentage (0.5%) or a fraction (0.005)")
    bps = value * (100 if percent else 10000)
    if not 0 < bps <= 10000:
        hint = f" (a fraction: did you mean {text}%?)" if not percent and 1 < value <= 100 else ""
        raise ValueError(f"{option} {text} must be above 0 and at most 100%{hint}")
    if bps != bps.to_integral_value():
        raise ValueError(f"{option} {text} is {bps.normalize():f} basis points: limits are whole basis "
                         "points (steps of 0.01%, or 0.0001 as a fraction)")
    return int(bps)


def target_key(seller_id: str, marketplace: str) -> bytes:
    return f"{seller_id}/{marketplace}".encode("utf-8")


def target_value(target: Target) -> dict:
    """The contract's JSON value of a target (what `encode_target` writes)."""
    return msgspec.to_builtins(_value(target))


def encode_target(target: Target) -> bytes:
    """The message value of a target. Not checked: `validated` checks it as the worker will."""
    return _encoder.encode(_value(target))


def _value(target: Target) -> _Value:
    return _Value(schema_version=1, seller_id=target.seller_id, marketplace=target.marketplace,
                  limit=target.limit_bps / 10000, warning_level=target.warning_bps / 10000,
                  note=target.note)


def validated(target: Target) -> Target:
    """The target as the worker will read it back; raise BadTarget when the worker would refuse it."""
    try:
        key, value = target_key(target.seller_id, target.marketplace), encode_target(target)
    except UnicodeEncodeError as error:
        # a command line's bytes that are not UTF-8 reach Python as lone surrogates
        raise BadTarget("invalid_event", f"{error.object!r} is not UTF-8 text") from None
    read_back = decode_target(key, value).target
    assert read_back is not None  # a value always decodes to a target
    return read_back


def apply_update(targets: dict[tuple[str, str], Target], update: TargetUpdate) -> None:
    """Fold one message into the targets by (seller_id, marketplace): a target replaces, a
    tombstone removes. Fed the topic in offset order, the latest message per key wins."""
    if update.target is None:
        targets.pop(update.key, None)
    else:
        targets[update.key] = update.target


def latest(updates: Iterable[TargetUpdate]) -> dict[tuple[str, str], Target]:
    targets: dict[tuple[str, str], Target] = {}
    for update in updates:
        apply_update(targets, update)
    return targets


def apply_target(windows: Iterable[policy.Window], target: Target | None) -> list[policy.Window]:
    """The windows of a seller in one marketplace with the target's limit and warning level
    (every window: India's 7 and 30 days alike), or unchanged without a target."""
    if target is None:
        return list(windows)
    return [dataclasses.replace(window, limit_bps=target.limit_bps, warning_bps=target.warning_bps)
            for window in windows]


def target_json(target: Target | None) -> dict:
    """The seller view's `target` field."""
    if target is None:
        return {"source": SOURCE_MARKETPLACE}
    return {"source": SOURCE_SELLER, "note": target.note}


def annotations(target: Target | None, window: policy.Window) -> dict[str, str]:
    """Alert annotations of the limit in force in `window` (one returned by apply_target):
    `limit` as a percentage, `limit_source` seller or marketplace, and the target's `note`."""
    result = {
        names.ANNOTATION_LIMIT: f"{window.limit_bps / 100:.2f}%",
        names.ANNOTATION_LIMIT_SOURCE: SOURCE_MARKETPLACE if target is None else SOURCE_SELLER,
    }
    if target is not None and target.note:
        result[ANNOTATION_NOTE] = target.note
    return result


def from_preset(seller_id: str, marketplace: str, preset: policy.Preset, note: str | None = None) -> Target:
    """A target from a policy preset; `note` replaces the preset's own."""
    return Target(seller_id, marketplace, preset.limit_bps, preset.warning_bps,
                  note if note is not None else preset.note)
