"""The counting policy: limits, windows, what counts, alert thresholds.

Loaded from a YAML file (default: the packaged `policy.yaml`, contract
section 4) and validated at start-up. A bad file raises `PolicyError` naming
the file, the line and what is wrong. Pure: no Kafka, no clock.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from cancelwatch import names


class PolicyError(ValueError):
    """The policy file cannot be used; the message names file and line."""


@dataclasses.dataclass(frozen=True)
class Window:
    days: int
    limit_bps: int
    warning_bps: int


# A note of a seller target or preset is shown in alerts and in `cancelwatch target list`:
# one line, at most this long.
NOTE_MAX_CHARS = 200
_PRESET_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


def note_problem(note: str) -> str | None:
    """Why a target's note cannot be used (None when it can)."""
    if len(note) > NOTE_MAX_CHARS:
        return f"is {len(note)} characters, over the {NOTE_MAX_CHARS} allowed"
    if any(ord(character) < 32 or ord(character) == 127 for character in note):
        return "holds a control character (a line break or tab): it must be one line of text"
    return None


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named seller target (`cancelwatch target set --preset NAME`), in basis points."""

    limit_bps: int
    warning_bps: int
    note: str | None = None


@dataclasses.dataclass(frozen=True)
class Rule:
    """Matches a cancellation on every field it names (None = any)."""

    initiator: str | None = None
    reason: str | None = None
    buyer_requested: bool | None = None

    def matches(self, initiator: str, reason: str, buyer_requested: bool) -> bool:
        return ((self.initiator is None or self.initiator == initiator)
                and (self.reason is None or self.reason == reason)
                and (self.buyer_requested is None or self.buyer_requested == buyer_requested))


@dataclasses.dataclass(frozen=True)
class Reconciliation:
    """When a comparison with Amazon's account-health report is drifting (contract section 11).

    Drifting: |drift.cancelled| > max_cancelled_drift, or |drift.orders| above both
    max_orders_drift and max_orders_drift_bps of Amazon's orderCount (100 bps = 1%).
    """

    max_cancelled_drift: int = 1
    max_orders_drift: int = 5
    max_orders_drift_bps: int = 100
    report_lag_days: int = 3


@dataclasses.dataclass(frozen=True)
class Policy:
    bucket_seconds: int
    default_windows: tuple[Window, ...]
    marketplace_windows: dict[str, tuple[Window, ...]]
    counts: tuple[Rule, ...]
    exceptions: tuple[Rule, ...]
    headroom_low: int
    forecast_horizon_hours: int
    forecast_pace_hours: int
    listing_consecutive: int
    listing_order_window_days: int
    listing_marketplaces: frozenset[str]
    reconciliation: Reconciliation
    retention_grace_hours: int
    presets: dict[str, Preset]

    def windows(self, marketplace: str) -> tuple[Window, ...]:
        return self.marketplace_windows.get(marketplace, self.default_windows)

    def window_buckets(self, window: Window) -> int:
        return window.days * 86400 // self.bucket_seconds

    @property
    def longest_window_days(self) -> int:
        every = list(self.default_windows)
        for windows in self.marketplace_windows.values():
            every.extend(windows)
        return max([w.days for w in every] + [self.listing_order_window_days])

    @property
    def retention_seconds(self) -> int:
        """How long purchase buckets are kept: the longest window plus the grace period, or plus
        Amazon's report lag (`reconciliation.report_lag_days`) when that is longer."""
        return max(self.longest_window_days * 86400 + self.retention_grace_hours * 3600,
                   self.reconciliation_retention_seconds)

    @property
    def reconciliation_retention_seconds(self) -> int:
        """How far back purchase buckets must be kept for an account-health report whose range
        ended `report_lag_days` ago to compare complete: the longest window plus that lag."""
        return (self.longest_window_days + self.reconciliation.report_lag_days) * 86400

    def is_seller_fault(self, initiator: str, reason: str, buyer_requested: bool) -> bool:
        if any(rule.matches(initiator, reason, buyer_requested) for rule in self.exceptions):
            return False
        return any(rule.matches(initiator, reason, buyer_requested) for rule in self.counts)


def load(path: Path | str) -> Policy:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise PolicyError(f"policy {path}: cannot read: {error.strerror}") from None
    return parse(text, str(path))


def parse(text: str, source: str = "policy") -> Policy:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise PolicyError(f"{source}{where}: not valid YAML: {getattr(error, 'problem', error)}") from None
    if root is None:
        raise PolicyError(f"{source}: the file is empty")
    return _Reader(source).policy(root)


class _Reader:
    """Turns the YAML node tree into a Policy, keeping line numbers for errors."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, node: yaml.Node, message: str) -> PolicyError:
        return PolicyError(f"{self.source} line {node.start_mark.line + 1}: {message}")

    def mapping(self, node: yaml.Node, where: str, required: set[str], optional: set[str]) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{where} must be a mapping")
        result: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if key not in required | optional:
                allowed = ", ".join(sorted(required | optional))
                raise self.fail(key_node, f"unknown key {key!r} in {where} (allowed: {allowed})")
            if key in result:
                raise self.fail(key_node, f"{key!r} appears twice in {where}")
            result[key] = value_node
        missing = sorted(required - set(result))
        if missing:
            raise self.fail(node, f"{where} is missing {', '.join(missing)}")
        return result

    def scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, "expected a single value")
        return yaml.safe_load(yaml.serialize(node))

    def integer(self, node: yaml.Node, what: str, low: int, high: int) -> int:
        value = self.scalar(node)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(node, f"{what} must be a whole number, got {value!r}")
        if not low <= value <= high:
            raise self.fail(node, f"{what} must be within {low}..{high}, got {value}")
        return value

    def sequence(self, node: yaml.Node, where: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.fail(node, f"{where} must be a non-empty list")
        return list(node.value)

    def windows(self, node: yaml.Node, where: str, bucket_seconds: int) -> tuple[Window, ...]:
        fields = self.mapping(node, where, {"windows"}, set())
        windows = []
        for item in self.sequence(fields["windows"], f"{where}.windows"):
            entry = self.mapping(item, "a window", {"days", "limit_bps", "warning_bps"}, set())
            days = self.integer(entry["days"], "days", 1, 366)
            limit = self.integer(entry["limit_bps"], "limit_bps (basis points, 250 = 2.5%)", 1, 10000)
            warning = self.integer(entry["warning_bps"], "warning_bps (basis points)", 1, 10000)
            if warning >= limit:
                raise self.fail(entry["warning_bps"], f"warning_bps {warning} is not below limit_bps {limit}: "
                                                      "the warning level must come before the limit")
            if days * 86400 % bucket_seconds:
                raise self.fail(entry["days"], f"a {days}-day window is not a whole number of buckets")
            if any(w.days == days for w in windows):
                raise self.fail(entry["days"], f"two windows of {days} days")
            windows.append(Window(days, limit, warning))
        return tuple(windows)

    def rules(self, node: yaml.Node, where: str) -> tuple[Rule, ...]:
        if isinstance(node, yaml.SequenceNode) and not node.value:
            return ()
        rules = []
        for item in self.sequence(node, where):
            entry = self.mapping(item, f"a rule in {where}", set(), {"initiator", "reason", "buyer_requested"})
            if not entry:
                raise self.fail(item, f"a rule in {where} must name at least one of initiator, reason, buyer_requested")
            initiator = reason = requested = None
            if "initiator" in entry:
                initiator = self.scalar(entry["initiator"])
                if initiator not in names.INITIATORS:
                    raise self.fail(entry["initiator"], f"initiator {initiator!r} is not one of {', '.join(names.INITIATORS)}")
            if "reason" in entry:
                reason = self.scalar(entry["reason"])
                if reason not in names.REASONS:
                    raise self.fail(entry["reason"], f"reason {reason!r} is not a contract reason code")
            if "buyer_requested" in entry:
                requested = self.scalar(entry["buyer_requested"])
                if not isinstance(requested, bool):
                    raise self.fail(entry["buyer_requested"], f"buyer_requested must be true or false, got {requested!r}")
            rules.append(Rule(initiator, reason, requested))
        return tuple(rules)

    def policy(self, root: yaml.Node) -> Policy:
        top = self.mapping(root, "the policy", {"version", "bucket_minutes", "default", "counting", "alerts"},
                           {"marketplaces", "retention_grace_hours", "presets", "reconciliation"})
        version = self.integer(top["version"], "version", 1, 1)
        del version
        bucket_minutes = self.integer(top["bucket_minutes"], "bucket_minutes", 1, 1440)
        if 1440 % bucket_minutes:
            raise self.fail(top["bucket_minutes"], "bucket_minutes must divide a day (1440 minutes)")
        bucket_seconds = bucket_minutes * 60
        default_windows = self.windows(top["default"], "default", bucket_seconds)
        marketplace_windows: dict[str, tuple[Window, ...]] = {}
        if "marketplaces" in top:
            node = top["marketplaces"]
            if not isinstance(node, yaml.MappingNode):
                raise self.fail(node, "marketplaces must be a mapping of marketplace code to windows")
            for key_node, value_node in node.value:
                if key_node.value not in names.MARKETPLACES:
                    raise self.fail(key_node, f"{key_node.value!r} is not a contract marketplace code")
                marketplace_windows[key_node.value] = self.windows(value_node, key_node.value, bucket_seconds)
        counting = self.mapping(top["counting"], "counting", {"counts"}, {"except"})
        alerts = self.mapping(top["alerts"], "alerts",
                              {"headroom_low", "forecast_horizon_hours", "forecast_pace_hours", "listing"}, set())
        listing = self.mapping(alerts["listing"], "alerts.listing",
                               {"consecutive", "order_window_days", "marketplaces"}, set())
        listing_marketplaces = self._marketplace_set(listing["marketplaces"])
        grace = self.integer(top["retention_grace_hours"], "retention_grace_hours", 0, 24 * 365) \
            if "retention_grace_hours" in top else 24
        pace_hours = self.integer(alerts["forecast_pace_hours"], "forecast_pace_hours", 1, 24 * 30)
        if pace_hours * 3600 % bucket_seconds:
            raise self.fail(alerts["forecast_pace_hours"], "forecast_pace_hours must be a whole number of buckets")
        horizon_hours = self.integer(alerts["forecast_horizon_hours"], "forecast_horizon_hours", 1, 24 * 30)
        if horizon_hours * 3600 % bucket_seconds:
            raise self.fail(alerts["forecast_horizon_hours"], "forecast_horizon_hours must be a whole number of buckets")
        return Policy(
            bucket_seconds=bucket_seconds,
            default_windows=default_windows,
            marketplace_windows=marketplace_windows,
            counts=self.rules(counting["counts"], "counting.counts"),
            exceptions=self.rules(counting["except"], "counting.except") if "except" in counting else (),
            headroom_low=self.integer(alerts["headroom_low"], "headroom_low", 0, 1_000_000),
            forecast_horizon_hours=horizon_hours,
            forecast_pace_hours=pace_hours,
            listing_consecutive=self.integer(listing["consecutive"], "consecutive", 1, 100),
            listing_order_window_days=self.integer(listing["order_window_days"], "order_window_days", 1, 366),
            listing_marketplaces=listing_marketplaces,
            reconciliation=self.reconciliation(top["reconciliation"]) if "reconciliation" in top
            else Reconciliation(),
            retention_grace_hours=grace,
            presets=self.presets(top["presets"]) if "presets" in top else {},
        )

    def presets(self, node: yaml.Node) -> dict[str, Preset]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, "presets must be a mapping of preset name to "
                                  "{limit_bps, warning_bps, note}")
        presets: dict[str, Preset] = {}
        for key_node, value_node in node.value:
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else ""
            if not (0 < len(name) <= 40 and name[0].isalpha() and set(name) <= _PRESET_NAME_CHARS):
                raise self.fail(key_node, f"preset name {name!r} must be 1..40 lower-case letters, "
                                          "digits, '_' or '-', starting with a letter")
            if name in presets:
                raise self.fail(key_node, f"preset {name!r} appears twice")
            entry = self.mapping(value_node, f"preset {name}", {"limit_bps", "warning_bps"}, {"note"})
            limit = self.integer(entry["limit_bps"], "limit_bps (basis points, 50 = 0.5%)", 2, 10000)
            warning = self.integer(entry["warning_bps"], "warning_bps (basis points)", 1, 10000)
            if warning >= limit:
                raise self.fail(entry["warning_bps"], f"warning_bps {warning} must be below limit_bps "
                                                      f"{limit}: a seller target warns before its limit")
            note = None
            if "note" in entry:
                note = self.scalar(entry["note"])
                if not isinstance(note, str):
                    raise self.fail(entry["note"], f"note must be text, got {note!r}")
                problem = note_problem(note)
                if problem:
                    raise self.fail(entry["note"], f"note {problem}")
                note = note.strip() or None
            presets[name] = Preset(limit, warning, note)
        return presets

    def _marketplace_set(self, node: yaml.Node) -> frozenset[str]:
        if isinstance(node, yaml.ScalarNode):
            if self.scalar(node) == "all":
                return frozenset(names.MARKETPLACES)
            raise self.fail(node, "marketplaces must be `all` or a list of marketplace codes")
        codes = []
        for item in self.sequence(node, "alerts.listing.marketplaces"):
            code = self.scalar(item)
            if code not in names.MARKETPLACES:
                raise self.fail(item, f"{code!r} is not a contract marketplace code")
            codes.append(code)
        return frozenset(codes)

    def reconciliation(self, node: yaml.Node) -> Reconciliation:
        keys = {"max_cancelled_drift", "max_orders_drift", "max_orders_drift_bps", "report_lag_days"}
        entry = self.mapping(node, "reconciliation", set(), keys)
        defaults = Reconciliation()
        values = {key: getattr(defaults, key) for key in keys}
        bounds = {
            "max_cancelled_drift": ("max_cancelled_drift (orders)", 0, 1_000_000),
            "max_orders_drift": ("max_orders_drift (orders)", 0, 1_000_000),
            "max_orders_drift_bps": ("max_orders_drift_bps (basis points, 100 = 1%)", 0, 10000),
            "report_lag_days": ("report_lag_days", 0, 366),
        }
        for key, value_node in entry.items():
            what, low, high = bounds[key]
            values[key] = self.integer(value_node, what, low, high)
        return Reconciliation(**values)
