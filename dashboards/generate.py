"""Generate cancelwatch's Grafana dashboards and the metrics reference.

The three dashboards (Overview, Seller, Pipeline health) are built here with
grafana-foundation-sdk and written as JSON beside this file; Grafana loads
that JSON through dashboards/provisioning. docs/metrics.md is written from
`streams.names.METRICS` by `dashboards.metrics_reference`.

    python -m dashboards.generate           # rewrite the JSON and docs/metrics.md
    python -m dashboards.generate --check   # exit 1 when a committed file differs

Every query references metric names from `streams.names`, so a rename there
changes the dashboards on the next run, and tests/test_dashboards.py fails
until the regenerated JSON is committed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
    Threshold,
    ThresholdsMode,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from dashboards import metrics_reference
from streams import names

DASHBOARDS_DIR = Path(__file__).resolve().parent
REPOSITORY_ROOT = DASHBOARDS_DIR.parent
METRICS_DOC = REPOSITORY_ROOT / "docs" / "metrics.md"

PROMETHEUS = DataSourceRef(type_val="prometheus", uid=names.PROMETHEUS_DATASOURCE_UID)
# Grafana's own annotation store, where `cancelwatch grafana-annotations` writes.
GRAFANA_ANNOTATIONS = DataSourceRef(type_val="grafana", uid="-- Grafana --")

# The default policy's levels (contract section 4); IN uses 1.6% and 2.0%.
WARNING_LEVEL = 0.02
LIMIT = 0.025
RATE_WINDOW_DAYS = "7"

# Colours of the four reason groups the seller-facing advice is built on.
REASON_GROUP_COLOURS = {
    "inventory": "blue",
    "order_error": "orange",
    "payment": "purple",
    "policy": "red",
}

# Tags of the annotations written by streams.grafana_annotations.
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
    """A recording rule of alerts/rules/*.yml, by its name in `streams.names.RECORDING_RULES`."""
    if rule not in names.RECORDING_RULES:
        raise ValueError(f"recording rule {rule!r} is not in streams.names.RECORDING_RULES: "
                         "define it in alerts/rules/ and names.py, or query the raw metric")
    return rule


def rate_thresholds() -> dashboard_builders.ThresholdsConfig:
    return (dashboard_builders.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps([
        Threshold(value=None, color="green"),
        Threshold(value=WARNING_LEVEL, color="orange"),
        Threshold(value=LIMIT, color="red"),
    ]))


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


def rate_panel(panel_id: int, title: str, description: str, *targets, width: int = 12
               ) -> timeseries.Panel:
    """A rate over time with the warning level and the limit drawn as dashed lines."""
    return (series_panel(panel_id, title, description, *targets, unit="percentunit", width=width)
            .min(0).decimals(2).thresholds(rate_thresholds())
            .thresholds_style(common_builders.GraphThresholdsStyleConfig()
                              .mode(common.GraphThresholdsStyleMode.DASHED)))


def stat_panel(panel_id: int, title: str, description: str, *targets, unit: str = "short",
               width: int = 6, height: int = 6) -> stat.Panel:
    panel = (stat.Panel().id(panel_id).title(title).description(description)
             .datasource(PROMETHEUS).unit(unit).span(width).height(height)
             .graph_mode(common.BigValueGraphMode.NONE)
             .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
             .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"])))
    for target in targets:
        panel = panel.with_target(target)
    return panel


def reason_group_overrides(panel: timeseries.Panel) -> timeseries.Panel:
    for group, colour in REASON_GROUP_COLOURS.items():
        panel = panel.override_by_name(group, [DynamicConfigValue(
            id_val="color", value={"mode": "fixed", "fixedColor": colour})])
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

def overview() -> dashboard_builders.Dashboard:
    marketplace = names.LABEL_MARKETPLACE
    window = f'{names.LABEL_WINDOW_DAYS}="{RATE_WINDOW_DAYS}"'
    fleet_rate = (f"sum by ({marketplace}) (cancelwatch_fleet_window_cancelled{{{window}}})"
                  f" / sum by ({marketplace}) (cancelwatch_fleet_window_orders{{{window}}})")
    seller_link = (f"/d/{names.DASHBOARD_UIDS['seller']}/?var-{names.LABEL_MARKETPLACE}="
                   f"${{__data.fields.{names.LABEL_MARKETPLACE}}}&var-{names.LABEL_SELLER}="
                   f"${{__data.fields.{names.LABEL_SELLER}}}&${{__url_time_range}}")
    at_risk_columns = {
        "Value #A": "rate",
        "Value #B": "headroom",
        "Value #C": "orders",
        "Value #D": "cancelled",
    }
    at_risk = (
        table.Panel().id(4).title("Sellers at risk (top-K)")
        .description("The top-K sellers at risk exported by the workers (setting "
                     "CANCELWATCH_TOP_K): rate, headroom, orders and seller-fault cancelled "
                     "orders per window. Click a seller for its dashboard.")
        .datasource(PROMETHEUS).span(24).height(10)
        .with_target(query("cancelwatch_seller_rate", ref_id="A", instant=True, as_table=True))
        .with_target(query("cancelwatch_seller_headroom", ref_id="B", instant=True, as_table=True))
        .with_target(query("cancelwatch_seller_window_orders", ref_id="C", instant=True, as_table=True))
        .with_target(query("cancelwatch_seller_window_cancelled", ref_id="D", instant=True, as_table=True))
        .with_transformation(DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(DataTransformerConfig(id_val="organize", options={
            "excludeByName": {"Time": True, "__name__": True, "job": True, "instance": True},
            "indexByName": {names.LABEL_SELLER: 0, names.LABEL_MARKETPLACE: 1,
                            names.LABEL_WINDOW_DAYS: 2, "Value #A": 3, "Value #B": 4,
                            "Value #C": 5, "Value #D": 6},
            "renameByName": at_risk_columns,
        }))
        .with_transformation(DataTransformerConfig(id_val="sortBy", options={
            "sort": [{"field": "headroom", "desc": False}]}))
        .override_by_name("rate", [
            DynamicConfigValue(id_val="unit", value="percentunit"),
            DynamicConfigValue(id_val="decimals", value=2),
            DynamicConfigValue(id_val="thresholds", value=rate_thresholds().build()),
            DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"}),
        ])
        .override_by_name(names.LABEL_SELLER, [DynamicConfigValue(id_val="links", value=[
            {"title": "Seller dashboard", "url": seller_link}])])
    )
    return (
        base_dashboard("overview", "cancelwatch / Overview",
                       "Fleet cancellation rate per marketplace, sellers at risk, why orders "
                       "are cancelled, and the alerts firing.")
        .annotation(built_in_annotations(enabled=True))
        .annotation(firing_alerts_annotation())
        .annotation(prometheus_alerts_annotation())
        .annotation(alert_annotations("Seller alerts", [ANNOTATION_TAG], "orange"))
        .with_panel(rate_panel(
            1, "Fleet cancellation rate by marketplace (7 days)",
            "Seller-fault cancelled orders / orders over 7 days, summed over all sellers of "
            "the marketplace. Dashed lines: warning level 2.0% and limit 2.5% (IN: 1.6% and 2.0%).",
            query(fleet_rate, "{{marketplace}}"), width=24))
        .with_panel(stat_panel(
            2, "Sellers by status", "Seller-marketplaces by status (ok, warning, breach).",
            query("sum by (status) (cancelwatch_sellers)", "{{status}}", instant=True),
            width=12))
        .with_panel(stat_panel(
            3, "Sellers by 7-day rate band", "Seller-marketplaces by the band their 7-day rate falls in.",
            query("sum by (band) (cancelwatch_seller_rate_band)", "{{band}}", instant=True),
            width=12))
        .with_panel(at_risk)
        .with_panel(reason_group_overrides(series_panel(
            5, "Seller-fault cancellations by reason group",
            "Orders that became seller-fault cancelled per interval, by reason group "
            "(inventory, order_error, payment, policy, and the rest).",
            query("sum by (reason_group) (increase(cancelwatch_seller_fault_cancellations_total"
                  "[$__rate_interval]))", "{{reason_group}}"),
            stacked=True)))
        .with_panel(series_panel(
            6, "Excluded cancellations by cause",
            "Cancelled orders that do not count against the seller, per interval, by cause.",
            query("sum by (cause) (increase(cancelwatch_excluded_cancellations_total"
                  "[$__rate_interval]))", "{{cause}}"),
            stacked=True))
        .with_panel(rate_panel(
            8, "Seller-fault cancellations per new order (14m burn)",
            "Seller-fault cancellations per order entering the rate over the last 14 minutes, "
            "by marketplace: the short-window ratio the marketplace burn-rate alerts use. "
            "Against the same 2.0% and 2.5% lines.",
            query(recorded("marketplace:cancelwatch_seller_fault_cancellations_per_order:ratio_rate14m"),
                  "{{marketplace}}"),
            width=24))
        .with_panel(stat_panel(
            7, "Alerts firing", "Alerts currently firing from the workers, by name.",
            query(f"sum by ({names.LABEL_ALERTNAME}) (cancelwatch_alerts_active)",
                  "{{alertname}}", instant=True),
            width=24, height=5))
    )


# --- Seller --------------------------------------------------------------------

def seller() -> dashboard_builders.Dashboard:
    selector = (f'{names.LABEL_SELLER}="${names.LABEL_SELLER}", '
                f'{names.LABEL_MARKETPLACE}="${names.LABEL_MARKETPLACE}"')
    by_window = "{{window_days}} days"
    return (
        base_dashboard("seller", "cancelwatch / Seller",
                       "One seller in one marketplace: rate per window against the limit, "
                       "headroom, orders and cancellations, and its alerts. Sellers come from "
                       "the top-K sellers at risk.")
        .with_variable(dashboard_builders.QueryVariable(names.LABEL_MARKETPLACE)
                       .label("Marketplace").datasource(PROMETHEUS)
                       .query(f"label_values(cancelwatch_seller_rate, {names.LABEL_MARKETPLACE})")
                       .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
                       .sort(VariableSort.ALPHABETICAL_ASC))
        .with_variable(dashboard_builders.QueryVariable(names.LABEL_SELLER)
                       .label("Seller").datasource(PROMETHEUS)
                       .query(f'label_values(cancelwatch_seller_rate{{{names.LABEL_MARKETPLACE}='
                              f'"${names.LABEL_MARKETPLACE}"}}, {names.LABEL_SELLER})')
                       .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
                       .sort(VariableSort.ALPHABETICAL_ASC))
        .annotation(built_in_annotations(enabled=False))
        .annotation(alert_annotations(
            "Alerts of this seller",
            [ANNOTATION_TAG, tag(names.LABEL_SELLER, f"${names.LABEL_SELLER}"),
             tag(names.LABEL_MARKETPLACE, f"${names.LABEL_MARKETPLACE}")], "red"))
        .with_panel(rate_panel(
            1, "Cancellation rate per window",
            "The seller's rate in each window of its marketplace. Dashed lines: warning level "
            "2.0% and limit 2.5% (IN: 1.6% and 2.0%).",
            query(f"cancelwatch_seller_rate{{{selector}}}", by_window), width=16))
        .with_panel(stat_panel(
            2, "Headroom", "More seller-fault cancellations the seller can absorb and stay under "
            "the limit, per window.",
            query(f"cancelwatch_seller_headroom{{{selector}}}", by_window, instant=True),
            width=8, height=8))
        .with_panel(series_panel(
            3, "Orders in window", "Orders in each window (rate denominator).",
            query(f"cancelwatch_seller_window_orders{{{selector}}}", by_window)))
        .with_panel(series_panel(
            4, "Seller-fault cancelled orders in window",
            "Seller-fault cancelled orders in each window (rate numerator).",
            query(f"cancelwatch_seller_window_cancelled{{{selector}}}", by_window)))
        .with_panel(reason_group_overrides(series_panel(
            5, "Seller-fault cancellations in the marketplace by reason group",
            "Marketplace-wide reason groups for context; this seller's dominant reason and the "
            "suggested action are in its alert annotations.",
            query(f'sum by (reason_group) (increase(cancelwatch_seller_fault_cancellations_total'
                  f'{{{names.LABEL_MARKETPLACE}="${names.LABEL_MARKETPLACE}"}}[$__rate_interval]))',
                  "{{reason_group}}"),
            width=24, stacked=True)))
    )


# --- Pipeline health -------------------------------------------------------------

def pipeline() -> dashboard_builders.Dashboard:
    return (
        base_dashboard("pipeline", "cancelwatch / Pipeline health",
                       "Is the worker keeping up: throughput, lag, latency, dead letters, "
                       "alert delivery, state size.")
        .annotation(built_in_annotations(enabled=True))
        .annotation(prometheus_alerts_annotation())
        .with_panel(stat_panel(
            1, "Workers up", "1 when Prometheus scraped the worker's /metrics successfully.",
            query(f'up{{job="{names.PROMETHEUS_JOB}"}}', "{{instance}}", instant=True),
            width=8, height=5))
        .with_panel(stat_panel(
            2, "Worker clock behind wall clock",
            "Wall clock minus the worker's now: about 0 in live mode, the replay position in "
            "event-clock mode.",
            query("time() - cancelwatch_clock_seconds", "{{instance}}", instant=True),
            unit="s", width=8, height=5))
        .with_panel(stat_panel(
            3, "Alert updates queued", "Alert updates waiting for delivery to Alertmanager.",
            query("sum (cancelwatch_alert_queue_alerts)", "queued", instant=True),
            width=8, height=5))
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
            7, "Dead letters by kind", "Messages sent to the dead-letter topic per second, over 5m.",
            query(f"sum by (topic, kind) ({recorded('job_topic_kind:cancelwatch_dead_letters:rate5m')})",
                  "{{topic}} {{kind}}"),
            unit="ops", stacked=True))
        .with_panel(series_panel(
            8, "Alert deliveries by outcome",
            "Alert batches posted to Alertmanager per second, over 5m.",
            query(f"sum by (outcome) ({recorded('job_outcome:cancelwatch_alert_deliveries:rate5m')})",
                  "{{outcome}}"),
            unit="ops", stacked=True))
        .with_panel(series_panel(
            9, "State table keys", "Keys held in each state table, summed over workers.",
            query("sum by (table) (cancelwatch_table_keys)", "{{table}}")))
        .with_panel(series_panel(
            10, "Alerts firing by name", "Alerts currently firing from the workers.",
            query(f"sum by ({names.LABEL_ALERTNAME}) (cancelwatch_alerts_active)", "{{alertname}}")))
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
