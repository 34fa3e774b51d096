"""The worker's Prometheus metrics: counters updated as events are applied, and a
collector that builds the state gauges fresh at every scrape.

Names, labels and help texts come from `names.METRICS`. Per-seller series
exist only for the bounded top-K sellers at risk, chosen at scrape time, so
the series count does not grow with the number of sellers.
"""

from __future__ import annotations

import bisect
import heapq
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily

from cancelwatch import compiled, names

from cancelwatch.core import window

# `_created` series only repeat the start time of each counter; leave them out.
disable_created_metrics()

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400)


def _spec(name: str) -> tuple[str, tuple[str, ...], str]:
    kind, labels, text = names.METRICS[name]
    return kind, labels, text


def _counter(registry: CollectorRegistry, name: str) -> Counter:
    kind, labels, text = _spec(name)
    assert kind == "counter", name
    return Counter(name.removesuffix("_total"), text, labels, registry=registry)


class SellerSummary:
    """What the scrape needs of one seller-marketplace, refreshed on evaluation.

    Kept small (one per seller): rate, headroom and risk are computed at scrape
    time, and only for the ranking."""

    __slots__ = ("status", "band", "windows")

    def __init__(self, status: str, band: str, windows: tuple) -> None:
        self.status = status
        self.band = band
        # ((days, orders, cancelled, limit_bps, warning_bps, hours to breach or None), ...)
        self.windows = windows

    def risk(self, seller_id: str) -> tuple:
        """The at-risk API's ranking (contract section 8): breached, then share of the limit, then headroom."""
        return window.risk_key((orders, cancelled, limit, warning)
                               for _, orders, cancelled, limit, warning, _ in self.windows) \
            + (seller_id,)


def rate_band(orders: int, cancelled: int, limit_bps: int, warning_bps: int) -> str:
    """Band of a window's rate against its limit and warning level (basis points), compared in
    integers: under half the warning level, under the warning level, under the limit, at or over it."""
    if orders == 0 or cancelled * 20000 < warning_bps * orders:
        return names.RATE_BANDS[0]
    if cancelled * 10000 < warning_bps * orders:
        return names.RATE_BANDS[1]
    if cancelled * 10000 < limit_bps * orders:
        return names.RATE_BANDS[2]
    return names.RATE_BANDS[3]


class Metrics:
    def __init__(self, version: str, clock_mode: str, top_k: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.events = _counter(self.registry, "cancelwatch_events_total")
        self.dead_letters = _counter(self.registry, "cancelwatch_dead_letters_total")
        self.reads_again = _counter(self.registry, "cancelwatch_reads_again_total")
        self.orders = _counter(self.registry, "cancelwatch_orders_total")
        self.seller_faults = _counter(self.registry, "cancelwatch_seller_fault_cancellations_total")
        self.excluded = _counter(self.registry, "cancelwatch_excluded_cancellations_total")
        self.deliveries = _counter(self.registry, "cancelwatch_alert_deliveries_total")
        self.stray_alerts = _counter(self.registry, "cancelwatch_stray_alerts_resolved_total")
        _, labels, text = _spec("cancelwatch_processing_latency_seconds")
        self.latency = Histogram("cancelwatch_processing_latency_seconds", text, labels,
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.version = version
        self.clock_mode = clock_mode
        self.top_k = top_k
        self._state: Callable[[], "ScrapeState"] | None = None

    def observe_latencies(self, topic: str, values: list[float]) -> None:
        """Observe many latencies at once: one bucket count per bucket, not per value."""
        child = self.latency.labels(topic)
        counts = [0] * (len(LATENCY_BUCKETS) + 1)
        total = 0.0
        for value in values:
            value = value if value > 0.0 else 0.0
            counts[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
            total += value
        # prometheus_client keeps one counter per bucket (the last is +Inf); add to each.
        for index, count in enumerate(counts):
            if count:
                child._buckets[index].inc(count)
        child._sum.inc(total)

    def attach(self, state: Callable[[], "ScrapeState"]) -> None:
        """Register the scrape-time collector; `state()` gives the worker's current state."""
        self._state = state
        self.registry.register(_StateCollector(self))

    def exposition(self, only: Iterable[str] = ()) -> bytes:
        """The text exposition; `only`: just these sample names (`GET /metrics?name[]=...`, as
        Prometheus' own client serves it), without building the other families."""
        only = set(only)
        return generate_latest(self.registry.restricted_registry(only) if only else self.registry)


class ScrapeState:
    """The worker's state as the collector sees it."""

    def __init__(self, summaries, lag: dict, table_keys: dict, alerts: Iterable[tuple[str, str]],
                 queue: int, clock: float, catching_up: dict | None = None) -> None:
        self.summaries = summaries      # .items(): ((seller_id, marketplace), SellerSummary)
        self.lag = lag                  # (topic, partition) -> messages
        self.table_keys = table_keys    # table -> keys
        self.alerts = alerts            # (alertname, severity) per firing alert
        self.queue = queue
        self.clock = clock
        self.catching_up = catching_up or {}   # partition -> bool, for the partitions owned


def _gauge(name: str) -> GaugeMetricFamily:
    kind, labels, text = _spec(name)
    assert kind == "gauge", name
    return GaugeMetricFamily(name, text, labels=list(labels))


def _contenders(items, k: int) -> list:
    """The sellers that can rank among the `k` riskiest: those with a seller-fault cancel in
    some window rank before every seller without one (`window.risk_key`: breached, at the
    warning level or any share of the limit come first), so the others are ranked only when
    fewer than `k` sellers have a cancel."""
    items = list(items)
    cancelling = [item for item in items if any(w[2] for w in item[1].windows)]
    return cancelling if len(cancelling) >= k else items


# The gauges `_StateCollector` builds at each scrape.
STATE_GAUGES = ("cancelwatch_sellers", "cancelwatch_seller_rate_band", "cancelwatch_fleet_window_orders",
                "cancelwatch_fleet_window_cancelled", "cancelwatch_seller_rate", "cancelwatch_seller_headroom",
                "cancelwatch_seller_window_orders", "cancelwatch_seller_window_cancelled",
                "cancelwatch_seller_limit", "cancelwatch_seller_hours_to_breach",
                "cancelwatch_consumer_lag_messages", "cancelwatch_partition_catching_up", "cancelwatch_table_keys",
                "cancelwatch_alerts_active", "cancelwatch_alert_queue_alerts", "cancelwatch_clock_seconds",
                "cancelwatch_build_info")


class _StateCollector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self):
        """Its families' names (a request for other names does not collect them)."""
        return [_gauge(name) for name in STATE_GAUGES]

    def collect(self):
        metrics = self.metrics
        state = metrics._state()
        sellers = _gauge("cancelwatch_sellers")
        bands = _gauge("cancelwatch_seller_rate_band")
        fleet_orders = _gauge("cancelwatch_fleet_window_orders")
        fleet_cancelled = _gauge("cancelwatch_fleet_window_cancelled")
        status_counts: dict[tuple[str, str], int] = {}
        band_counts: dict[tuple[str, str], int] = {}
        window_orders: dict[tuple[str, str], int] = {}
        window_cancelled: dict[tuple[str, str], int] = {}
        for (seller_id, marketplace), summary in state.summaries.items():
            key = (marketplace, summary.status)
            status_counts[key] = status_counts.get(key, 0) + 1
            key = (marketplace, summary.band)
            band_counts[key] = band_counts.get(key, 0) + 1
            for days, orders, cancelled, *_ in summary.windows:
                key = (marketplace, str(days))
                window_orders[key] = window_orders.get(key, 0) + orders
                window_cancelled[key] = window_cancelled.get(key, 0) + cancelled
        for marketplace in sorted({m for m, _ in status_counts}):
            for status in names.STATUSES:
                sellers.add_metric([marketplace, status], status_counts.get((marketplace, status), 0))
            for band in names.RATE_BANDS:
                bands.add_metric([marketplace, band], band_counts.get((marketplace, band), 0))
        for key in sorted(window_orders):
            fleet_orders.add_metric(list(key), window_orders[key])
            fleet_cancelled.add_metric(list(key), window_cancelled[key])
        yield from (sellers, bands, fleet_orders, fleet_cancelled)

        top = heapq.nsmallest(metrics.top_k, _contenders(state.summaries.items(), metrics.top_k),
                              key=lambda item: item[1].risk(item[0][0]))
        rate = _gauge("cancelwatch_seller_rate")
        headroom = _gauge("cancelwatch_seller_headroom")
        orders_gauge = _gauge("cancelwatch_seller_window_orders")
        cancelled_gauge = _gauge("cancelwatch_seller_window_cancelled")
        limit_gauge = _gauge("cancelwatch_seller_limit")
        to_breach = _gauge("cancelwatch_seller_hours_to_breach")
        for (seller_id, marketplace), summary in top:
            for days, orders, cancelled, limit, _, hours in summary.windows:
                labels = [seller_id, marketplace, str(days)]
                if orders:
                    rate.add_metric(labels, cancelled / orders)
                    headroom.add_metric(labels, window.headroom(orders, cancelled, limit))
                orders_gauge.add_metric(labels, orders)
                cancelled_gauge.add_metric(labels, cancelled)
                limit_gauge.add_metric(labels, limit / 10000)
                if hours is not None:
                    to_breach.add_metric(labels, hours)
        yield from (rate, headroom, orders_gauge, cancelled_gauge, limit_gauge, to_breach)

        lag = _gauge("cancelwatch_consumer_lag_messages")
        for (topic, partition), messages in sorted(state.lag.items()):
            lag.add_metric([topic, str(partition)], messages)
        # Every dead-letter series of the source topics consumed starts at 0 (from the next
        # scrape), so panels show 0 rather than no data and the first dead letter is an increase.
        for topic in {topic for topic, _ in state.lag}:
            for kind in names.DEAD_LETTER_KINDS:
                metrics.dead_letters.labels(topic, kind)
        catching_up = _gauge("cancelwatch_partition_catching_up")
        for partition, flag in sorted(state.catching_up.items()):
            catching_up.add_metric([str(partition)], 1 if flag else 0)
        yield catching_up
        keys = _gauge("cancelwatch_table_keys")
        for table, count in sorted(state.table_keys.items()):
            keys.add_metric([table], count)
        active = _gauge("cancelwatch_alerts_active")
        counts: dict[tuple[str, str], int] = {}
        for pair in state.alerts:
            counts[pair] = counts.get(pair, 0) + 1
        for alertname in (names.SELLER_ALERTS + (names.ALERT_LISTING,) + names.RECONCILIATION_ALERTS):
            severity = names.ALERT_SEVERITY[alertname]
            active.add_metric([alertname, severity], counts.get((alertname, severity), 0))
        queue = _gauge("cancelwatch_alert_queue_alerts")
        queue.add_metric([], state.queue)
        clock = _gauge("cancelwatch_clock_seconds")
        clock.add_metric([], state.clock)
        build = _gauge("cancelwatch_build_info")
        build.add_metric([metrics.version, metrics.clock_mode, compiled.running()], 1)
        yield from (lag, keys, active, queue, clock, build)
