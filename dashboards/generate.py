"""Generate cancelwatch's Grafana dashboards and the metrics reference.

The three dashboards (Overview, Seller, Pipeline health) are built here with
grafana-foundation-sdk and written as JSON beside this file; Grafana loads
that JSON through dashboards/provisioning. docs/metrics.md is written from
`cancelwatch.names.METRICS` by `dashboards.metrics_reference`.

    python -m dashboards.generate           # rewrite the JSON and docs/metrics.md
    python -m dashboards.generate --check   # exit 1 when a committed file differs

Every query references metric names from `cancelwatch.names`, so a rename there
changes the dashboards on the next run, and tests/test_dashboards.py fails
until the regenerated JSON is committed. Rates are drawn as a share of the
limit in force, so one 100% line is every limit: a seller's rate is divided
by the limit its worker exports for it (its own target or its marketplace's,
`cancelwatch_seller_limit`), a marketplace's fleet rate by the marketplace's
limit in the packaged policy (streams/cancelwatch/core/policy.yaml).
"""

from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction
from pathlib import Path
from typing import Callable

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus as prometheus_builders
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    DataTransformerConfig,
    DynamicConfigValue,
    FieldColorModeId,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from dashboards import metrics_reference
from cancelwatch import names
from cancelwatch.core import policy

DASHBOARDS_DIR = Path(__file__).resolve().parent
REPOSITORY_ROOT = DASHBOARDS_DIR.parent
METRICS_DOC = REPOSITORY_ROOT / "docs" / "metrics.md"
# The policy the worker loads when CANCELWATCH_POLICY is not set (contract section 4).
POLICY_FILE = REPOSITORY_ROOT / "streams" / "cancelwatch" / "core" / "policy.yaml"

PROMETHEUS = DataSourceRef(type_val="prometheus", uid=names.PROMETHEUS_DATASOURCE_UID)
# Grafana's own annotation store, where `cancelwatch grafana-annotations` writes.
GRAFANA_ANNOTATIONS = DataSourceRef(type_val="grafana", uid="-- Grafana --")

RATE_WINDOW_DAYS = "7"

# Colours of the four reason groups the seller-facing advice is built on.
REASON_GROUP_COLOURS = {
    "inventory": "blue",
    "order_error": "orange",
    "payment": "purple",
    "policy": "red",
}

# Tags of the annotations written by cancelwatch.receivers.grafana_annotations.
ANNOTATION_TAG = "cancelwatch"


def tag(key: str, value: str) -> str:
    """One `key:value` annotation tag, as the annotation receiver writes it."""
    return f"{key}:{value}"


def query(expr: str, legend: str = "", ref_id: str = "A", *, instant: bool = False,
          as_table: bool = False) -> prometheus_builders.Dataquery:
    target = (prometheus_builders.Dataquery().expr(expr).ref_id(ref_id)
              .datasource(PROMETHEUS).legend_format(legend or "__auto"))
    if instant:
        target = target.instant()
    if as_table:
        target = target.format(PromQueryFormat.TABLE)
    return target


def recorded(rule: str) -> str:
    """A recording rule of alerts/rules/*.yml, by its name in `cancelwatch.names.RECORDING_RULES`."""
    if rule not in names.RECORDING_RULES:
        raise ValueError(f"recording rule {rule!r} is not in cancelwatch.names.RECORDING_RULES: "
                         "define it in alerts/rules/ and names.py, or query the raw metric")
    return rule


def selector(*matchers: str) -> str:
    """`{a="1", b="2"}` of the non-empty matchers, or "" when there are none."""
    present = [matcher for matcher in matchers if matcher]
    return "{" + ", ".join(present) + "}" if present else ""


# --- Limits in force (the packaged policy) ---------------------------------------

class Limits:
    """The policy's limit and warning level per marketplace, as the dashboards draw them.

    A rate is divided by its marketplace's limit, so 1.0 (100%) is the limit
    everywhere and `warning_share` the warning level. That needs one limit per
    marketplace (all its windows) and one warning level / limit ratio in the
    whole policy; a policy without them is refused, naming what differs.
    """

    def __init__(self, rules: policy.Policy) -> None:
        self.default_bps = self._one_limit("the default windows", rules.default_windows)
        self.bps = {marketplace: self._one_limit(f"marketplace {marketplace}", rules.windows(marketplace))
                    for marketplace in names.MARKETPLACES}
        self.warning_bps = {marketplace: rules.windows(marketplace)[0].warning_bps
                            for marketplace in names.MARKETPLACES}
        every = list(rules.default_windows) + [w for ws in rules.marketplace_windows.values() for w in ws]
        shares = {Fraction(w.warning_bps, w.limit_bps) for w in every}
        if len(shares) != 1:
            raise ValueError(f"{POLICY_FILE}: warning levels are {sorted(map(float, shares))} of the "
                             "limit in different windows; the dashboards draw one warning line as a "
                             "share of the limit, so every window needs the same warning_bps / limit_bps")
        self.warning_share = float(shares.pop())

    @staticmethod
    def _one_limit(where: str, windows) -> int:
        found = {w.limit_bps for w in windows}
        if len(found) != 1:
            raise ValueError(f"{POLICY_FILE}: {where} has windows with limits {sorted(found)} bps; "
                             "the dashboards divide each marketplace's rates by one limit")
        return found.pop()

    def exceptions(self) -> dict[int, list[str]]:
        """Limit (bps) -> marketplaces whose limit is not the default's."""
        groups: dict[int, list[str]] = {}
        for marketplace, bps in self.bps.items():
            if bps != self.default_bps:
                groups.setdefault(bps, []).append(marketplace)
        return groups

    def share_of_limit(self, expression: Callable[[str], str]) -> str:
        """`expression(matcher)` divided by the limit in force, one term per limit.

        `expression` is given a marketplace matcher (or "") to put in each of its
        selectors; marketplaces with the default limit come first.
        """
        exceptions = self.exceptions()
        excluded = sorted(m for group in exceptions.values() for m in group)
        terms = [f"{expression(_marketplace_matcher(excluded, negate=True))} / {self.default_bps / 10000:g}"]
        for bps, marketplaces in sorted(exceptions.items()):
            terms.append(f"{expression(_marketplace_matcher(marketplaces))} / {bps / 10000:g}")
        return " or ".join(terms)

    def describe_limits(self) -> str:
        """The marketplace limits in words: `2.5% (IN: 2.0%)`."""
        text = f"{self.default_bps / 100:.1f}%"
        exceptions = "; ".join(f"{', '.join(marketplaces)}: {bps / 100:.1f}%"
                               for bps, marketplaces in sorted(self.exceptions().items()))
        return f"{text} ({exceptions})" if exceptions else text

    def describe(self) -> str:
        """The levels in words, for panel descriptions."""
        def levels(bps: int, warning_bps: int) -> str:
            return f"{bps / 100:.1f}% limit, {warning_bps / 100:.1f}% warning level"
        first = next(m for m, bps in self.bps.items() if bps == self.default_bps)
        text = f"100% is the marketplace's limit and {self.warning_share:.0%} its warning level " \
               f"(default: {levels(self.default_bps, self.warning_bps[first])}"
        for bps, marketplaces in sorted(self.exceptions().items()):
            text += f"; {', '.join(marketplaces)}: {levels(bps, self.warning_bps[marketplaces[0]])}"
        return text + ")"


def _marketplace_matcher(marketplaces: list[str], negate: bool = False) -> str:
    if not marketplaces:
        return ""
    if len(marketplaces) == 1:
        return f'{names.LABEL_MARKETPLACE}{"!=" if negate else "="}"{marketplaces[0]}"'
    return f'{names.LABEL_MARKETPLACE}{"!~" if negate else "=~"}"{"|".join(marketplaces)}"'


POLICY = policy.load(POLICY_FILE)
LIMITS = Limits(POLICY)


# --- Colours: thresholds of every stat panel, and of the rate lines ---------------------
# A threshold list is ((from value, colour), ...), the first from None (the base).
# Colours mean the same everywhere: green healthy, orange look soon, red act now,
# blue a count that is neither good nor bad.

Levels = tuple[tuple[float | None, str], ...]

UP = ((None, "red"), (1, "green"))                        # 0 down, 1 up
BAD_WHEN_ANY = ((None, "green"), (1, "red"))              # breaches, critical alerts
WARN_WHEN_ANY = ((None, "green"), (1, "orange"))          # warnings, dead letters
NEUTRAL = ((None, "blue"),)                               # ok sellers, other counts
# Headroom: 0 red (the next seller-fault cancel breaches, or it is breached),
# up to the policy's headroom_low orange (SellerCancelRateHeadroomLow fires), above green.
HEADROOM = ((None, "red"), (1, "orange"), (POLICY.headroom_low + 1, "green")) \
    if POLICY.headroom_low >= 1 else ((None, "red"), (1, "green"))
# Messages waiting on the source topics; 1000 is CancelwatchConsumerLagGrowing's threshold.
CONSUMER_LAG = ((None, "green"), (1000, "orange"), (10000, "red"))
# Seconds the worker's clock is behind the wall clock (live mode: about a scrape interval).
CLOCK_BEHIND = ((None, "green"), (60, "orange"), (300, "red"))
# Alert updates waiting for Alertmanager: any is in flight, hundreds means delivery is stuck.
ALERT_QUEUE = ((None, "green"), (1, "orange"), (100, "red"))
# A rate as a share of the limit in force.
SHARE_OF_LIMIT = ((None, "green"), (LIMITS.warning_share, "orange"), (1.0, "red"))
# Hours until a window is projected to breach (whole hours): 0 red (breached now), within the
# forecast horizon orange (SellerCancelRateForecastBreach fires), beyond it green. The base
# step is green: no value means no breach projected, and Grafana colours "no value" by it.
TIME_TO_BREACH = ((None, "green"), (0, "red"), (1, "orange"),
                  (POLICY.forecast_horizon_hours + 1, "green"))
# 0 hours to breach reads "breached" (Grafana would print 0 hours as "0 ms").
BREACHED_NOW = [ValueMap(options={"0": ValueMappingResult(text="breached", color="red", index=0)})]

SEVERITY_LEVELS = {"critical": BAD_WHEN_ANY, "warning": WARN_WHEN_ANY}
STATUS_LEVELS = {names.STATUS_OK: NEUTRAL, names.STATUS_WARNING: WARN_WHEN_ANY,
                 names.STATUS_BREACH: BAD_WHEN_ANY}
# Bands of the 7-day rate against the limit in force (cancelwatch.worker.metrics.rate_band).
BAND_LEVELS = dict(zip(names.RATE_BANDS, (NEUTRAL, NEUTRAL, WARN_WHEN_ANY, BAD_WHEN_ANY)))


def thresholds(levels: Levels) -> dashboard_builders.ThresholdsConfig:
    return (dashboard_builders.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE)
            .steps([Threshold(value=value, color=colour) for value, colour in levels]))


def fixed_colour(colour: str) -> DynamicConfigValue:
    return DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": colour})


def series_panel(panel_id: int, title: str, description: str, *targets,
                 unit: str = "short", width: int = 12, height: int = 8,
                 stacked: bool = False) -> timeseries.Panel:
    panel = (timeseries.Panel().id(panel_id).title(title).description(description)
             .datasource(PROMETHEUS).unit(unit).span(width).height(height)
             .legend(common_builders.VizLegendOptions()
                     .display_mode(common.LegendDisplayMode.TABLE)
                     .placement(common.LegendPlacement.BOTTOM).show_legend(True)
                     .calcs(["lastNotNull", "max"])))
    for target in targets:
        panel = panel.with_target(target)
    if stacked:
        panel = (panel.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
                 .fill_opacity(30))
    return panel


def share_panel(panel_id: int, title: str, description: str, *targets, width: int = 12
                ) -> timeseries.Panel:
    """A rate as a share of the limit in force, with the warning level and the limit dashed."""
    return (series_panel(panel_id, title, description, *targets, unit="percentunit", width=width)
            .min(0).axis_soft_max(1.0).decimals(0).thresholds(thresholds(SHARE_OF_LIMIT))
            .thresholds_style(common_builders.GraphThresholdsStyleConfig()
                              .mode(common.GraphThresholdsStyleMode.DASHED)))


def stat_panel(panel_id: int, title: str, description: str, *targets, levels: Levels,
               by_name: dict[str, Levels] | None = None, unit: str = "short",
               width: int = 6, height: int = 6, no_value: str | None = None,
               decimals: int | None = None, mappings: list | None = None) -> stat.Panel:
    """Big numbers coloured by `levels` (and per field by `by_name`, keyed by legend)."""
    panel = (stat.Panel().id(panel_id).title(title).description(description)
             .datasource(PROMETHEUS).unit(unit).span(width).height(height)
             .graph_mode(common.BigValueGraphMode.NONE)
             .color_mode(common.BigValueColorMode.BACKGROUND)
             .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
             .color_scheme(dashboard_builders.FieldColor().mode(FieldColorModeId.THRESHOLDS))
             .thresholds(thresholds(levels))
             .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"])))
    for name, field_levels in (by_name or {}).items():
        panel = panel.override_by_name(name, [DynamicConfigValue(
            id_val="thresholds", value=thresholds(field_levels).build())])
    if no_value is not None:
        panel = panel.no_value(no_value)
    if decimals is not None:
        panel = panel.decimals(decimals)
    if mappings:
        panel = panel.mappings(mappings)
    for target in targets:
        panel = panel.with_target(target)
    return panel


def reason_group_overrides(panel: timeseries.Panel) -> timeseries.Panel:
    for group, colour in REASON_GROUP_COLOURS.items():
        panel = panel.override_by_name(group, [fixed_colour(colour)])
    return panel


def built_in_annotations(enabled: bool) -> dashboard_builders.AnnotationQuery:
    """Grafana's default "Annotations & Alerts" query of a dashboard."""
    return (dashboard_builders.AnnotationQuery().name("Annotations & Alerts")
            .datasource(GRAFANA_ANNOTATIONS).built_in(1).enable(enabled).hide(True)
            .icon_color("rgba(0, 211, 255, 1)").type("dashboard"))


def alert_annotations(name: str, tags: list[str], colour: str) -> dashboard_builders.AnnotationQuery:
    """Alert start/end written to Grafana by `cancelwatch grafana-annotations`."""
    return (dashboard_builders.AnnotationQuery().name(name).datasource(GRAFANA_ANNOTATIONS)
            .enable(True).icon_color(colour)
            .target(dashboard_builders.AnnotationTarget().type("tags").tags(tags)
                    .match_any(False).limit(500)))


# Options of a Prometheus annotation query that the pinned SDK's
# AnnotationQuery model does not carry; added to the JSON after the build.
FIRING_ALERTS_EXPR = f"sum by ({names.LABEL_ALERTNAME}, {names.LABEL_SEVERITY}) (cancelwatch_alerts_active) > 0"
PROMETHEUS_ALERTS_EXPR = f'ALERTS{{alertstate="firing", {names.LABEL_TEAM}="{names.TEAM_OPS}"}}'
PROMETHEUS_ANNOTATION_OPTIONS = {
    "Prometheus alerts": {
        "titleFormat": "{{alertname}}",
        "textFormat": "{{severity}} {{marketplace}}{{topic}}",
        "tagKeys": f"{names.LABEL_ALERTNAME},{names.LABEL_SEVERITY}",
        "step": "60s",
        "useValueForTime": False,
    },
    "Firing alerts (worker)": {
        "titleFormat": "{{alertname}}",
        "textFormat": "{{severity}}: alerts of this name are firing",
        "tagKeys": f"{names.LABEL_ALERTNAME},{names.LABEL_SEVERITY}",
        "step": "60s",
        "useValueForTime": False,
    },
}


def firing_alerts_annotation() -> dashboard_builders.AnnotationQuery:
    return (dashboard_builders.AnnotationQuery().name("Firing alerts (worker)")
            .datasource(PROMETHEUS).enable(True).icon_color("red").expr(FIRING_ALERTS_EXPR))


def prometheus_alerts_annotation() -> dashboard_builders.AnnotationQuery:
    """Alerts of alerts/rules/*.yml (pipeline, marketplace burn rate), evaluated by Prometheus."""
    return (dashboard_builders.AnnotationQuery().name("Prometheus alerts")
            .datasource(PROMETHEUS).enable(True).icon_color("purple").expr(PROMETHEUS_ALERTS_EXPR))


def base_dashboard(key: str, title: str, description: str) -> dashboard_builders.Dashboard:
    return (dashboard_builders.Dashboard(title).uid(names.DASHBOARD_UIDS[key])
            .description(description).tags([ANNOTATION_TAG]).editable()
            .tooltip(DashboardCursorSync.CROSSHAIR).timezone("utc")
            .time("now-6h", "now").refresh("30s").version(1)
            .link(dashboard_builders.DashboardLink("cancelwatch").type("dashboards")
                  .tags([ANNOTATION_TAG]).as_dropdown(True).include_vars(False).keep_time(True)))


# --- Overview ----------------------------------------------------------------

def fleet_rate(marketplace_matcher: str) -> str:
    """Seller-fault cancelled / orders over the rate window, summed over a marketplace's sellers."""
    matchers = (f'{names.LABEL_WINDOW_DAYS}="{RATE_WINDOW_DAYS}"', marketplace_matcher)
    by = f"sum by ({names.LABEL_MARKETPLACE})"
    return (f"{by} (cancelwatch_fleet_window_cancelled{selector(*matchers)})"
            f" / ({by} (cancelwatch_fleet_window_orders{selector(*matchers)}) > 0)")


def per_seller(metric: str, *matchers: str) -> str:
    """A top-K gauge by seller, marketplace and window, without job and instance."""
    labels = f"{names.LABEL_SELLER}, {names.LABEL_MARKETPLACE}, {names.LABEL_WINDOW_DAYS}"
    return f"max by ({labels}) ({metric}{selector(*matchers)})"


def seller_share_of_limit(*matchers: str) -> str:
    """A top-K seller's rate per window divided by the limit in force for it (its own target or
    its marketplace's), as its worker exports them."""
    return (f"{per_seller('cancelwatch_seller_rate', *matchers)}"
            f" / {per_seller('cancelwatch_seller_limit', *matchers)}")


def seller_risk() -> str:
    """Per window row, its seller's highest share of the limit over its windows.

    Sorting on it ranks sellers as the at-risk API does (contract section 8): breached
    (100% or more in some window) first, then at the warning level (80% of every marketplace
    limit), then by share of the limit; the windows of one seller stay together. The warning
    level is not exported, so a seller's own target with another warning level, and ties the
    API breaks by headroom, rank by the share alone."""
    seller = f"{names.LABEL_SELLER}, {names.LABEL_MARKETPLACE}"
    return (f"{per_seller('cancelwatch_seller_limit')} * 0 + on ({seller}) group_left "
            f"max by ({seller}) ({seller_share_of_limit()})")


def ranked_values(label: str, *matchers: str) -> str:
    """A template variable's query: the values of `label` among the top-K sellers, the most at
    risk first (by the highest share of the limit in force of the sellers having it), so the
    dashboard opens on the marketplace and the seller the Overview ranks first. Kept in that
    order by sort: disabled; `label_regex` picks the value out of each result line."""
    return f"query_result(sort_desc(max by ({label}) ({seller_share_of_limit(*matchers)})))"


def label_regex(label: str) -> str:
    """Grafana's regex taking a label's value out of a query_result line (`{label="v"} 0.9 ...`)."""
    return f'/{label}="([^"]+)"/'


def per_minute(counter: str, by: str, matcher: str = "") -> str:
    """Events per minute of a counter, whatever the zoom (`$__rate_interval` only smooths)."""
    return f"60 * sum by ({by}) (rate({counter}{selector(matcher)}[$__rate_interval]))"


def overview() -> dashboard_builders.Dashboard:
    seller_link = (f"/d/{names.DASHBOARD_UIDS['seller']}/?var-{names.LABEL_MARKETPLACE}="
                   f"${{__data.fields.{names.LABEL_MARKETPLACE}}}&var-{names.LABEL_SELLER}="
                   f"${{__data.fields.{names.LABEL_SELLER}}}&${{__url_time_range}}")
    at_risk_columns = {
        "Value #E": "of limit",
        "Value #F": "time to breach",
        "Value #A": "rate",
        "Value #G": "limit",
        "Value #B": "headroom",
        "Value #C": "orders",
        "Value #D": "cancelled",
    }
    at_risk = (
        table.Panel().id(4).title("Sellers at risk (top-K)")
        .description("The top-K sellers at risk exported by the workers (setting "
                     "CANCELWATCH_TOP_K), one row per window, ranked as the at-risk API ranks sellers: "
                     "by the seller's highest share of its limit in force over its windows, so breached "
                     "sellers come first, then those at the warning level, and a seller's windows stay "
                     "together. Columns: rate as a share of the limit in force (the seller's own target "
                     "or its marketplace's limit), hours until the window is projected to breach "
                     "(breached, red, when it is; orange within the forecast horizon of "
                     f"{POLICY.forecast_horizon_hours} h; empty when no breach is projected), rate, the "
                     "limit in force, headroom, orders and seller-fault cancelled orders. Click a seller "
                     "for its dashboard.")
        .datasource(PROMETHEUS).span(24).height(10)
        .with_target(query(per_seller("cancelwatch_seller_rate"), ref_id="A", instant=True, as_table=True))
        .with_target(query(per_seller("cancelwatch_seller_headroom"), ref_id="B", instant=True, as_table=True))
        .with_target(query(per_seller("cancelwatch_seller_window_orders"), ref_id="C", instant=True,
                           as_table=True))
        .with_target(query(per_seller("cancelwatch_seller_window_cancelled"), ref_id="D", instant=True,
                           as_table=True))
        .with_target(query(seller_share_of_limit(), ref_id="E", instant=True, as_table=True))
        .with_target(query(per_seller("cancelwatch_seller_hours_to_breach"), ref_id="F", instant=True,
                           as_table=True))
        .with_target(query(per_seller("cancelwatch_seller_limit"), ref_id="G", instant=True, as_table=True))
        .with_target(query(seller_risk(), ref_id="H", instant=True, as_table=True))
        .with_transformation(DataTransformerConfig(id_val="merge", options={}))
        # Grafana sorts on one field only: the seller's risk, before organize hides it.
        .with_transformation(DataTransformerConfig(id_val="sortBy", options={
            "sort": [{"field": "Value #H", "desc": True}]}))
        .with_transformation(DataTransformerConfig(id_val="organize", options={
            "excludeByName": {"Time": True, "Value #H": True},
            "indexByName": {names.LABEL_SELLER: 0, names.LABEL_MARKETPLACE: 1,
                            names.LABEL_WINDOW_DAYS: 2}
            | {column: index for index, column in enumerate(at_risk_columns, start=3)},
            "renameByName": at_risk_columns,
        }))
        .override_by_name("of limit", [
            DynamicConfigValue(id_val="unit", value="percentunit"),
            DynamicConfigValue(id_val="decimals", value=0),
            DynamicConfigValue(id_val="thresholds", value=thresholds(SHARE_OF_LIMIT).build()),
            DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"}),
        ])
        .override_by_name("time to breach", [
            DynamicConfigValue(id_val="unit", value="h"),
            DynamicConfigValue(id_val="decimals", value=0),
            DynamicConfigValue(id_val="thresholds", value=thresholds(TIME_TO_BREACH).build()),
            DynamicConfigValue(id_val="mappings", value=BREACHED_NOW),
            DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-text"}),
        ])
        .override_by_name("rate", [
            DynamicConfigValue(id_val="unit", value="percentunit"),
            DynamicConfigValue(id_val="decimals", value=2),
        ])
        .override_by_name("limit", [
            DynamicConfigValue(id_val="unit", value="percentunit"),
            DynamicConfigValue(id_val="decimals", value=2),
        ])
        .override_by_name("headroom", [
            DynamicConfigValue(id_val="thresholds", value=thresholds(HEADROOM).build()),
            DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-text"}),
        ])
        .override_by_name(names.LABEL_SELLER, [DynamicConfigValue(id_val="links", value=[
            {"title": "Seller dashboard", "url": seller_link}])])
    )
    return (
        base_dashboard("overview", "cancelwatch / Overview",
                       "Fleet cancellation rate per marketplace as a share of its limit, sellers "
                       "at risk, why orders are cancelled, and the alerts firing.")
        .annotation(built_in_annotations(enabled=True))
        .annotation(firing_alerts_annotation())
        .annotation(prometheus_alerts_annotation())
        .annotation(alert_annotations("Seller alerts", [ANNOTATION_TAG], "orange"))
        .with_panel(stat_panel(
            2, "Sellers by status",
            "Seller-marketplaces by status: ok (blue), warning (orange when any), breach "
            "(red when any).",
            query("sum by (status) (cancelwatch_sellers)", "{{status}}", instant=True),
            levels=NEUTRAL, by_name=STATUS_LEVELS, width=12, height=5))
        .with_panel(stat_panel(
            3, "Sellers by 7-day rate band",
            "Seller-marketplaces by the band their 7-day rate falls in against the limit in force "
            "(the marketplace's, or the seller's own target): low (under half the warning level), "
            "moderate, warning (orange when any), breach (red when any).",
            query("sum by (band) (cancelwatch_seller_rate_band)", "{{band}}",
                  instant=True),
            levels=NEUTRAL, by_name=BAND_LEVELS, width=12, height=5))
        .with_panel(stat_panel(
            7, "Alerts firing",
            "Alerts currently firing from the workers, by name: red when a critical one fires, "
            "orange for warnings.",
            query(f"sum by ({names.LABEL_ALERTNAME}) (cancelwatch_alerts_active)",
                  "{{alertname}}", instant=True),
            levels=WARN_WHEN_ANY,
            by_name={name: SEVERITY_LEVELS[severity] for name, severity in names.ALERT_SEVERITY.items()},
            width=24, height=4))
        .with_panel(share_panel(
            1, "Fleet cancellation rate by marketplace, share of its limit (7 days)",
            "Seller-fault cancelled orders / orders over 7 days, summed over all sellers of the "
            f"marketplace, divided by the marketplace's limit: {LIMITS.describe()}.",
            query(LIMITS.share_of_limit(fleet_rate), "{{marketplace}}"), width=24))
        .with_panel(at_risk)
        .with_panel(reason_group_overrides(series_panel(
            5, "Seller-fault cancellations per minute by reason group",
            "Orders that became seller-fault cancelled, per minute, by reason group "
            "(inventory, order_error, payment, policy, and the rest).",
            query(per_minute("cancelwatch_seller_fault_cancellations_total", "reason_group"),
                  "{{reason_group}}"),
            unit="cpm", stacked=True)))
        .with_panel(series_panel(
            6, "Excluded cancellations per minute by cause",
            "Cancelled orders that do not count against the seller, per minute, by cause.",
            query(per_minute("cancelwatch_excluded_cancellations_total", "cause"), "{{cause}}"),
            unit="cpm", stacked=True))
        .with_panel(share_panel(
            8, "Seller-fault cancellations per new order, share of the limit (14m burn)",
            "Seller-fault cancellations per order entering the rate over the last 14 minutes, "
            "by marketplace, divided by the marketplace's limit: the burn rate the marketplace "
            "burn-rate alerts use (100% spends exactly the limit; the page fires at 1440%). "
            f"{LIMITS.describe()}.",
            query(LIMITS.share_of_limit(lambda matcher: recorded(
                "marketplace:cancelwatch_seller_fault_cancellations_per_order:ratio_rate14m")
                + selector(matcher)), "{{marketplace}}"),
            width=24))
    )


# --- Seller --------------------------------------------------------------------

def seller() -> dashboard_builders.Dashboard:
    seller_matchers = (f'{names.LABEL_SELLER}="${names.LABEL_SELLER}"',
                       f'{names.LABEL_MARKETPLACE}="${names.LABEL_MARKETPLACE}"')
    chosen = selector(*seller_matchers)
    by_window = "{{window_days}} days"
    return (
        base_dashboard("seller", "cancelwatch / Seller",
                       "One seller in one marketplace: rate per window as a share of its limit in "
                       "force, headroom, time to a projected breach, the limit in force, orders and "
                       "cancellations, and its alerts. Sellers come from the top-K sellers at risk.")
        .with_variable(dashboard_builders.QueryVariable(names.LABEL_MARKETPLACE)
                       .label("Marketplace").datasource(PROMETHEUS)
                       .query(ranked_values(names.LABEL_MARKETPLACE))
                       .regex(label_regex(names.LABEL_MARKETPLACE))
                       .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
                       .sort(VariableSort.DISABLED))
        .with_variable(dashboard_builders.QueryVariable(names.LABEL_SELLER)
                       .label("Seller").datasource(PROMETHEUS)
                       .query(ranked_values(names.LABEL_SELLER,
                                            f'{names.LABEL_MARKETPLACE}="${names.LABEL_MARKETPLACE}"'))
                       .regex(label_regex(names.LABEL_SELLER))
                       .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
                       .sort(VariableSort.DISABLED))
        .annotation(built_in_annotations(enabled=False))
        .annotation(alert_annotations(
            "Alerts of this seller",
            [ANNOTATION_TAG, tag(names.LABEL_SELLER, f"${names.LABEL_SELLER}"),
             tag(names.LABEL_MARKETPLACE, f"${names.LABEL_MARKETPLACE}")], "red"))
        .with_panel(share_panel(
            1, "Cancellation rate per window, share of its limit in force",
            "The seller's rate in each window of its marketplace divided by the limit in force for "
            "it: its own target when it has one (contract section 10), else its marketplace's. "
            f"100% is that limit and {LIMITS.warning_share:.0%} the marketplace's warning level.",
            query(seller_share_of_limit(*seller_matchers), by_window),
            width=12))
        .with_panel(stat_panel(
            2, "Headroom", "More seller-fault cancellations the seller can absorb and stay under "
            "the limit, per window: red at 0, orange at the headroom-low alert's level, green above.",
            query(f"cancelwatch_seller_headroom{chosen}", by_window, instant=True),
            levels=HEADROOM, width=4, height=8))
        .with_panel(stat_panel(
            6, "Time to breach",
            "Hours until the window is projected to breach its limit at the recent pace (the forecast "
            "SellerCancelRateForecastBreach fires on): breached (red) when it is breached now, orange "
            f"within the forecast horizon of {POLICY.forecast_horizon_hours} h, \"not projected\" "
            "(green) when no breach is projected.",
            query(f"cancelwatch_seller_hours_to_breach{chosen}", by_window, instant=True),
            levels=TIME_TO_BREACH, unit="h", decimals=0, mappings=BREACHED_NOW,
            no_value="not projected", width=4, height=8))
        .with_panel(stat_panel(
            7, "Limit in force",
            "The limit the seller's rate is held to in each window. The marketplace limits of the "
            f"packaged policy are {LIMITS.describe_limits()}; any other value is the seller's own "
            "target (contract section 10), which its alerts name in their limit_source annotation.",
            query(f"cancelwatch_seller_limit{chosen}", by_window, instant=True),
            levels=NEUTRAL, unit="percentunit", decimals=2, width=4, height=8))
        .with_panel(series_panel(
            3, "Orders in window", "Orders in each window (rate denominator).",
            query(f"cancelwatch_seller_window_orders{chosen}", by_window)))
        .with_panel(series_panel(
            4, "Seller-fault cancelled orders in window",
            "Seller-fault cancelled orders in each window (rate numerator).",
            query(f"cancelwatch_seller_window_cancelled{chosen}", by_window)))
        .with_panel(reason_group_overrides(series_panel(
            5, "Seller-fault cancellations per minute in the marketplace by reason group",
            "Marketplace-wide reason groups per minute, for context; this seller's dominant reason "
            "and the suggested action are in its alert annotations.",
            query(per_minute("cancelwatch_seller_fault_cancellations_total", "reason_group",
                             f'{names.LABEL_MARKETPLACE}="${names.LABEL_MARKETPLACE}"'),
                  "{{reason_group}}"),
            unit="cpm", width=24, stacked=True)))
    )


# --- Pipeline health -------------------------------------------------------------

def pipeline() -> dashboard_builders.Dashboard:
    reconciliation = selector(f'{names.LABEL_ALERTNAME}=~"{"|".join(names.RECONCILIATION_ALERTS)}"')
    return (
        base_dashboard("pipeline", "cancelwatch / Pipeline health",
                       "Is the worker keeping up: throughput, lag, latency, dead letters, "
                       "alert delivery, state size.")
        .annotation(built_in_annotations(enabled=True))
        .annotation(prometheus_alerts_annotation())
        .with_panel(stat_panel(
            1, "Workers up", "1 (green) when Prometheus scraped the worker's /metrics "
            "successfully, 0 (red) when not.",
            query(f'up{{job="{names.PROMETHEUS_JOB}"}}', "{{instance}}", instant=True),
            levels=UP, width=4, height=5))
        .with_panel(stat_panel(
            11, "Consumer lag (largest topic)",
            "Messages not yet processed on the source topic furthest behind: orange from 1,000 "
            "(the lag alert's level), red from 10,000.",
            query(f"max ({recorded('job_topic:cancelwatch_consumer_lag_messages:sum')})", "messages",
                  instant=True),
            levels=CONSUMER_LAG, width=4, height=5))
        .with_panel(stat_panel(
            13, "Partitions catching up",
            "Partitions whose backlog is above CANCELWATCH_CATCHUP_LAG: their new seller alerts "
            "are held until they catch up. Orange when any.",
            query("sum (cancelwatch_partition_catching_up)", "partitions", instant=True),
            levels=WARN_WHEN_ANY, width=4, height=5))
        .with_panel(stat_panel(
            2, "Worker clock behind wall clock",
            "Wall clock minus the worker's now: about 0 in live mode (orange from 1 minute, red "
            "from 5); in event-clock mode the replay position, red while replaying history.",
            query("time() - cancelwatch_clock_seconds", "{{instance}}", instant=True),
            levels=CLOCK_BEHIND, unit="s", width=4, height=5))
        .with_panel(stat_panel(
            12, "Dead letters (last hour)",
            "Messages sent to the dead-letter topic in the last hour, over all source topics: "
            "orange when any.",
            query("round(sum (increase(cancelwatch_dead_letters_total[1h])))", "dead letters",
                  instant=True),
            levels=WARN_WHEN_ANY, width=4, height=5, no_value="0"))
        .with_panel(stat_panel(
            3, "Alert updates queued",
            "Alert updates waiting for delivery to Alertmanager: orange while any is in flight, "
            "red from 100 (deliveries failing).",
            query("sum (cancelwatch_alert_queue_alerts)", "queued", instant=True),
            levels=ALERT_QUEUE, width=4, height=5))
        .with_panel(series_panel(
            4, "Events consumed by topic and outcome",
            "Events per second, by source topic and outcome.",
            query("sum by (topic, outcome) (rate(cancelwatch_events_total[$__rate_interval]))",
                  "{{topic}} {{outcome}}"),
            unit="ops", stacked=True))
        .with_panel(series_panel(
            5, "Consumer lag", "Messages not yet processed, by source topic.",
            query(f"sum by (topic) ({recorded('job_topic:cancelwatch_consumer_lag_messages:sum')})",
                  "{{topic}}")))
        .with_panel(series_panel(
            6, "Processing latency", "From an event's occurred_at to applied: p50 and p99 over 5m.",
            query("histogram_quantile(0.5, sum by (le, topic) "
                  "(rate(cancelwatch_processing_latency_seconds_bucket[5m])))", "p50 {{topic}}", "A"),
            query(f"max by (topic) "
                  f"({recorded('job_topic:cancelwatch_processing_latency_seconds:p99_rate5m')})",
                  "p99 {{topic}}", "B"),
            unit="s"))
        .with_panel(series_panel(
            7, "Dead letters per minute by kind",
            "Messages sent to the dead-letter topic per minute (over 5m), by kind; 0 until the "
            "first one.",
            query(f"60 * sum by (kind) ({recorded('job_topic_kind:cancelwatch_dead_letters:rate5m')})",
                  "{{kind}}"),
            unit="cpm", stacked=True).no_value("0"))
        .with_panel(series_panel(
            8, "Alert deliveries per minute by outcome",
            "Alert batches posted to Alertmanager per minute (over 5m): sent (green) or failed (red).",
            query(f"60 * sum by (outcome) "
                  f"({recorded('job_outcome:cancelwatch_alert_deliveries:rate5m')})", "{{outcome}}"),
            unit="cpm", stacked=True)
            .override_by_name("sent", [fixed_colour("green")])
            .override_by_name("failed", [fixed_colour("red")]))
        .with_panel(series_panel(
            9, "State table keys", "Keys held in each state table, summed over workers.",
            query("sum by (table) (cancelwatch_table_keys)", "{{table}}")))
        .with_panel(series_panel(
            10, "Alerts firing by name", "Alerts currently firing from the workers.",
            query(f"sum by ({names.LABEL_ALERTNAME}) (cancelwatch_alerts_active)", "{{alertname}}"),
            width=8))
        .with_panel(series_panel(
            15, "Work redone after rebalances (last hour)",
            "Times a source partition was read again because records read were not applied for "
            "10 s (a fetch given up with no seek behind it), by topic; and alerts of a worker's "
            "sellers that a previous owner sent after the handover, resolved by the owner's sweep "
            "(stray alerts). Over the last hour: 0 normally; a count that keeps rising means "
            "workers keep losing fetches or partitions (rebalances in a loop, a fault).",
            query("sum by (topic) (increase(cancelwatch_reads_again_total[1h]))", "{{topic}}"),
            query("sum (increase(cancelwatch_stray_alerts_resolved_total[1h]))", "stray alerts resolved"),
            width=8).no_value("0"))
        .with_panel(stat_panel(
            14, "Reconciliation alerts firing",
            "Alerts from comparing cancelwatch's counts with Amazon's account-health reports, by "
            f"name: {names.ALERT_DRIFT} (orange when any) means the counts disagree, so an order "
            f"source may not publish, or publish twice; {names.ALERT_ACCOUNT_AT_RISK} (red when "
            "any) means Amazon reports an account at risk or deactivated.",
            query(f"sum by ({names.LABEL_ALERTNAME}) (cancelwatch_alerts_active{reconciliation})",
                  "{{alertname}}", instant=True),
            levels=WARN_WHEN_ANY,
            by_name={name: SEVERITY_LEVELS[names.ALERT_SEVERITY[name]]
                     for name in names.RECONCILIATION_ALERTS},
            width=8, height=8))
    )


# --- Output --------------------------------------------------------------------

BUILDERS = {"overview": overview, "seller": seller, "pipeline": pipeline}


def dashboard_json(key: str) -> dict:
    """The dashboard as Grafana's JSON model, ready to provision."""
    model = json.loads(json.dumps(BUILDERS[key]().build(), cls=JSONEncoder))
    for annotation in model["annotations"]["list"]:
        annotation.update(PROMETHEUS_ANNOTATION_OPTIONS.get(annotation["name"], {}))
    return model


def path_of(key: str) -> Path:
    return DASHBOARDS_DIR / f"{names.DASHBOARD_UIDS[key]}.json"


def rendered() -> dict[Path, str]:
    """Every generated file and its text."""
    files = {path_of(key): json.dumps(dashboard_json(key), indent=2, sort_keys=True) + "\n"
             for key in BUILDERS}
    files[METRICS_DOC] = metrics_reference.markdown()
    return files


def drifted() -> list[Path]:
    """Generated files whose committed text differs from what the generator writes."""
    return [path for path, text in rendered().items()
            if not path.exists() or path.read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a committed file is out of date")
    args = parser.parse_args(argv)
    if args.check:
        stale = drifted()
        for path in stale:
            print(f"{path.relative_to(REPOSITORY_ROOT)} is out of date: "
                  "run `python -m dashboards.generate` and commit the result", file=sys.stderr)
        return 1 if stale else 0
    for path, text in rendered().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(REPOSITORY_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
