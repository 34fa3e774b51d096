"""docs/metrics.md, written from `cancelwatch.names.METRICS`: every metric and its series bound.

Each metric has a stated upper bound on its label sets that does not grow
with the number of sellers; a metric added to `names.METRICS` without a
bound here fails tests/test_dashboards.py, so the bound stays complete.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from cancelwatch import names, settings
from cancelwatch.worker import metrics


@dataclasses.dataclass(frozen=True)
class Parameters:
    """What the series count depends on, at the shipped defaults."""

    topics: int = 4  # orders, cancellations, account-health and the internal reroute topic
    partitions: int = names.DEFAULT_PARTITIONS
    marketplaces: int = len(names.MARKETPLACES)
    windows: int = 2  # most windows of one marketplace in the policy (IN: 7 and 30 days)
    top_k: int = int(next(s.default for s in settings.SETTINGS if s.variable == "CANCELWATCH_TOP_K"))
    tables: int = 10  # state tables of one worker, fixed by the code
    buckets: int = len(metrics.LATENCY_BUCKETS) + 1  # latency histogram buckets including +Inf


SYMBOLS = (
    ("T", "topics", "source topics the worker consumes: orders, cancellations, account-health, reroute"),
    ("P", "partitions", "partitions per source topic (`CANCELWATCH_PARTITIONS`)"),
    ("M", "marketplaces", "marketplaces of the contract"),
    ("W", "windows", "most windows of one marketplace in the policy (IN: 7 and 30 days)"),
    ("K", "top_k", "sellers at risk with per-seller series (`CANCELWATCH_TOP_K`)"),
    ("S", "tables", "state tables of one worker (an upper bound; fixed by the code)"),
    ("B", "buckets", "latency histogram buckets including `+Inf`"),
)


@dataclasses.dataclass(frozen=True)
class Bound:
    formula: str
    label_sets: Callable[[Parameters], int]


OUTCOMES = len(names.EVENT_OUTCOMES)
KINDS = len(names.DEAD_LETTER_KINDS)
GROUPS = len(names.REASON_GROUPS)
CAUSES = len(names.EXCLUDED_CAUSES)
STATUSES = len(names.STATUSES)
BANDS = len(names.RATE_BANDS)
ALERTS = len(names.ALERT_SEVERITY)  # each alert name has one severity
# The gauges with a series per top-K seller and window.
PER_SELLER = tuple(name for name, (_, labels, _) in names.METRICS.items() if names.LABEL_SELLER in labels)

BOUNDS: dict[str, Bound] = {
    "cancelwatch_events_total": Bound(f"T × {OUTCOMES} outcomes", lambda p: p.topics * OUTCOMES),
    "cancelwatch_dead_letters_total": Bound(f"T × {KINDS} kinds", lambda p: p.topics * KINDS),
    "cancelwatch_reads_again_total": Bound("T", lambda p: p.topics),
    "cancelwatch_orders_total": Bound("M", lambda p: p.marketplaces),
    "cancelwatch_seller_fault_cancellations_total": Bound(
        f"M × {GROUPS} reason groups", lambda p: p.marketplaces * GROUPS),
    "cancelwatch_excluded_cancellations_total": Bound(
        f"M × {CAUSES} causes", lambda p: p.marketplaces * CAUSES),
    "cancelwatch_processing_latency_seconds": Bound("T", lambda p: p.topics),
    "cancelwatch_consumer_lag_messages": Bound("T × P", lambda p: p.topics * p.partitions),
    "cancelwatch_partition_catching_up": Bound("P", lambda p: p.partitions),
    "cancelwatch_sellers": Bound(f"M × {STATUSES} statuses", lambda p: p.marketplaces * STATUSES),
    "cancelwatch_seller_rate_band": Bound(f"M × {BANDS} bands", lambda p: p.marketplaces * BANDS),
    "cancelwatch_fleet_window_orders": Bound("M × W", lambda p: p.marketplaces * p.windows),
    "cancelwatch_fleet_window_cancelled": Bound("M × W", lambda p: p.marketplaces * p.windows),
    "cancelwatch_seller_rate": Bound("K × W", lambda p: p.top_k * p.windows),
    "cancelwatch_seller_headroom": Bound("K × W", lambda p: p.top_k * p.windows),
    "cancelwatch_seller_limit": Bound("K × W", lambda p: p.top_k * p.windows),
    "cancelwatch_seller_hours_to_breach": Bound("K × W", lambda p: p.top_k * p.windows),
    "cancelwatch_seller_window_orders": Bound("K × W", lambda p: p.top_k * p.windows),
    "cancelwatch_seller_window_cancelled": Bound("K × W", lambda p: p.top_k * p.windows),
    "cancelwatch_table_keys": Bound("S", lambda p: p.tables),
    "cancelwatch_alerts_active": Bound(f"{ALERTS} alert names", lambda p: ALERTS),
    "cancelwatch_alert_deliveries_total": Bound("2 outcomes", lambda p: 2),
    "cancelwatch_stray_alerts_resolved_total": Bound("1", lambda p: 1),
    "cancelwatch_alert_queue_alerts": Bound("1", lambda p: 1),
    "cancelwatch_clock_seconds": Bound("1", lambda p: 1),
    "cancelwatch_build_info": Bound("1", lambda p: 1),
}


def samples_per_label_set(kind: str, parameters: Parameters) -> int:
    """Exposition lines one label set gives (the worker turns prometheus-client's `_created` off)."""
    if kind == "histogram":
        return parameters.buckets + 2  # buckets, _sum, _count
    return 1  # a gauge, or a counter's _total


def series_bound(parameters: Parameters = Parameters()) -> int:
    """Upper bound on the cancelwatch_ series one worker's /metrics exposes."""
    return sum(BOUNDS[name].label_sets(parameters) * samples_per_label_set(kind, parameters)
               for name, (kind, _, _) in names.METRICS.items())


def markdown(parameters: Parameters = Parameters()) -> str:
    lines = [
        "# Metrics",
        "",
        "Generated from `streams/cancelwatch/names.py` by `python -m dashboards.generate`; a test fails",
        "when this file and the names drift. Every metric is exported by each worker on",
        "`GET /metrics`. Dashboards over them: [dashboards.md](dashboards.md).",
        "",
        "| metric | type | labels | label sets at most | meaning |",
        "|---|---|---|---|---|",
    ]
    for name, (kind, labels, help_text) in names.METRICS.items():
        bound = BOUNDS[name]
        label_list = ", ".join(f"`{label}`" for label in labels) or "(none)"
        count = bound.label_sets(parameters)
        stated = str(count) if bound.formula == str(count) else f"{bound.formula} = {count}"
        lines.append(f"| `{name}` | {kind} | {label_list} | {stated} | {help_text} |")
    lines += [
        "",
        "The seller gauges (`cancelwatch_sellers`, `cancelwatch_seller_rate_band`, the",
        "`cancelwatch_fleet_window_*` sums and the top-K `cancelwatch_seller_*`) come from each",
        "seller's last evaluation, made as its events are applied and as the clock moves its",
        "windows; while every partition the worker owns is catching up (its alerts held), at",
        "most every 2 s.",
        "",
        "## Cardinality bound",
        "",
        f"No series carries a seller id except the {len(PER_SELLER)} `cancelwatch_seller_*` gauges "
        "of the top-K,",
        "which are built at scrape time for the sellers at risk only. Every other label",
        "ranges over a fixed vocabulary from `streams/cancelwatch/names.py`, so the series count of",
        "`/metrics` does not depend on how many sellers there are.",
        "",
        "| symbol | meaning | default |",
        "|---|---|---|",
    ]
    lines += [f"| {symbol} | {meaning} | {getattr(parameters, field)} |"
              for symbol, field, meaning in SYMBOLS]
    lines += [
        "",
        "A label set is one exposition line for a gauge or a counter (`_total`; the worker",
        "writes no `_created`) and B + 2 for a histogram (B buckets, `_sum`, `_count`).",
        f"At the defaults one worker exposes at most **{series_bound(parameters)}** `cancelwatch_`",
        "series, whether it owns a thousand sellers or millions. Raising `CANCELWATCH_TOP_K`",
        f"by one adds at most {len(PER_SELLER)} × W series.",
        "",
    ]
    return "\n".join(lines)
