"""Generated dashboards, their provisioning files and docs/metrics.md.

Offline checks: the committed JSON is what the generator writes, it loads in
the pinned grafana-foundation-sdk's models, uids and data sources are fixed,
every query is valid PromQL (checked by promtool) over metrics that exist,
and the provisioning files follow Grafana's documented format.
tests/test_dashboards_live.py runs the same queries against real data.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from grafana_foundation_sdk.cog import plugins
from grafana_foundation_sdk.models import prometheus as prometheus_models
from grafana_foundation_sdk.models.dashboard import Dashboard

from dashboards import generate, metrics_reference, queries, render
from cancelwatch import names

ROOT = Path(__file__).resolve().parent.parent
PROVISIONING = ROOT / "dashboards" / "provisioning"
DASHBOARD_MOUNT = "/var/lib/grafana/dashboards"
# Grafana's own variables, with the values the syntax check substitutes.
GRAFANA_VARIABLES = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}


def load(key: str) -> dict:
    return json.loads(generate.path_of(key).read_text(encoding="utf-8"))


ALL = {key: load(key) for key in names.DASHBOARD_UIDS}


def every_expression(dashboard: dict) -> list[tuple[str, str]]:
    return queries.panel_queries(dashboard) + queries.annotation_queries(dashboard)


def recording_rules() -> dict[str, str]:
    """Recording rule name -> its expression, from alerts/rules/*.yml."""
    recorded = {}
    for path in sorted((ROOT / "alerts" / "rules").glob("*.yml")):
        for group in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("groups", []):
            recorded.update({rule["record"]: rule["expr"] for rule in group.get("rules", [])
                             if "record" in rule})
    return recorded


def known_metrics() -> dict[str, tuple[str, ...]]:
    """Metric name -> its labels, for every name a query may select."""
    known: dict[str, tuple[str, ...]] = {
        "up": ("job", "instance"),
        "ALERTS": (names.LABEL_ALERTNAME, "alertstate", names.LABEL_SEVERITY, names.LABEL_TEAM,
                   names.LABEL_MARKETPLACE, "topic"),
    }
    for name, (kind, labels, _) in names.METRICS.items():
        known[name] = labels
        if kind == "histogram":
            known[f"{name}_bucket"] = labels + ("le",)
            known[f"{name}_sum"] = labels
            known[f"{name}_count"] = labels
    for rule in recording_rules():
        known[rule] = tuple(rule.split(":")[0].split("_"))  # level:metric:operations
    return known


# --- Generation ------------------------------------------------------------------

def test_committed_files_are_what_the_generator_writes():
    assert generate.drifted() == [], "run `python -m dashboards.generate` and commit the result"
    assert generate.main(["--check"]) == 0


def test_check_mode_reports_a_changed_file(tmp_path, monkeypatch):
    stale = tmp_path / "cancelwatch-overview.json"
    stale.write_text("{}\n", encoding="utf-8")
    monkeypatch.setattr(generate, "DASHBOARDS_DIR", tmp_path)
    monkeypatch.setattr(generate, "METRICS_DOC", tmp_path / "metrics.md")
    monkeypatch.setattr(generate, "REPOSITORY_ROOT", tmp_path)
    assert generate.main(["--check"]) == 1
    assert stale.read_text(encoding="utf-8") == "{}\n"


@pytest.mark.parametrize("key", sorted(ALL))
def test_dashboard_loads_in_the_pinned_sdk_models(key):
    plugins.register_default_plugins()
    model = Dashboard.from_json(ALL[key])
    assert model.uid == names.DASHBOARD_UIDS[key]
    assert model.title == ALL[key]["title"]
    assert len(model.panels) == len(ALL[key]["panels"])
    for panel in model.panels:
        assert panel.targets, f"panel {panel.title!r} has no query"
        for target in panel.targets:
            assert isinstance(target, prometheus_models.Dataquery), (
                f"panel {panel.title!r}: target decoded as {type(target).__name__}")
    assert json.loads(json.dumps(model.to_json(), default=lambda o: o.to_json()))["uid"] == model.uid


def test_uids_are_stable():
    assert {key: dashboard["uid"] for key, dashboard in ALL.items()} == {
        "overview": "cancelwatch-overview",
        "seller": "cancelwatch-seller",
        "pipeline": "cancelwatch-pipeline",
    }
    for key in ALL:
        assert generate.path_of(key).name == f"{names.DASHBOARD_UIDS[key]}.json"


@pytest.mark.parametrize("key", sorted(ALL))
def test_panel_ids_are_unique_and_panels_fit_the_grid(key):
    panels = ALL[key]["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]


# --- Data sources ------------------------------------------------------------------

@pytest.mark.parametrize("key", sorted(ALL))
def test_every_panel_and_query_uses_the_fixed_prometheus_uid(key):
    expected = {"type": "prometheus", "uid": names.PROMETHEUS_DATASOURCE_UID}
    for panel in ALL[key]["panels"]:
        assert panel["datasource"] == expected, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, (panel["title"], target["refId"])
    for annotation in ALL[key]["annotations"]["list"]:
        if "expr" in annotation:
            assert annotation["datasource"] == expected, annotation["name"]
        else:
            assert annotation["datasource"] == {"type": "grafana", "uid": "-- Grafana --"}
    for variable in ALL[key]["templating"].get("list", []):
        assert variable["datasource"] == expected, variable["name"]


# --- Queries -------------------------------------------------------------------------

@pytest.mark.parametrize("key", sorted(ALL))
def test_every_query_selects_only_known_metrics(key):
    known = known_metrics()
    regexes = queries.template_regexes(ALL[key])
    expressions = every_expression(ALL[key]) + [
        (name, queries.template_expression(query, regexes.get(name, ""))[0])
        for name, query in queries.template_queries(ALL[key])]
    assert expressions
    for title, expr in expressions:
        selected = queries.metric_names(expr)
        assert selected, f"{title!r}: {expr!r} selects no metric"
        unknown = selected - set(known)
        assert not unknown, f"{title!r}: {expr!r} selects {sorted(unknown)}, not in cancelwatch.names.METRICS"


@pytest.mark.parametrize("key", sorted(ALL))
def test_grouping_and_matcher_labels_exist_on_the_selected_metrics(key):
    known = known_metrics()
    for title, expr in every_expression(ALL[key]):
        labels = {"job", "instance"}
        for metric in queries.metric_names(expr):
            labels |= set(known[metric])
        used = set()
        for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            used |= {label.strip() for label in group.split(",") if label.strip()}
        for matchers in re.findall(r"\{([^{}]*)\}", expr):
            used |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
        assert used <= labels, f"{title!r}: {expr!r} uses labels {sorted(used - labels)} it does not have"


def test_every_recording_rule_a_dashboard_uses_is_defined():
    used = {name for dashboard in ALL.values() for _, expr in every_expression(dashboard)
            for name in queries.metric_names(expr) if ":" in name}
    assert used, "the dashboards use the recording rules of alerts/rules"
    assert used <= set(recording_rules()) and used <= set(names.RECORDING_RULES)


def test_every_metric_is_on_some_dashboard():
    rules = recording_rules()
    selected = set()
    for dashboard in ALL.values():
        for _, expr in every_expression(dashboard):
            for name in queries.metric_names(expr):
                selected |= queries.metric_names(rules[name]) if name in rules else {name}
    selected = {re.sub(r"_(bucket|sum|count)$", "", name) if name.startswith(
        "cancelwatch_processing_latency_seconds") else name for name in selected}
    not_shown = set(names.METRICS) - selected - {"cancelwatch_build_info"}
    assert not not_shown, f"metrics on no dashboard: {sorted(not_shown)}"


def test_metric_names_ignores_functions_labels_and_variables():
    expr = ('histogram_quantile(0.99, sum by (le, topic) (rate(a_bucket{topic=~"or.*", x="$v"}'
            '[$__rate_interval]))) / on (topic) group_left b_total or vector(0) and time()')
    assert queries.metric_names(expr) == {"a_bucket", "b_total"}


def test_fill_variables_names_a_missing_value():
    assert queries.fill_variables('m{a="$a", b="${b}"}', {"a": "1", "b": "2"}) == 'm{a="1", b="2"}'
    with pytest.raises(KeyError, match=r"\$seller_id"):
        queries.fill_variables('m{seller_id="$seller_id"}', {})


def test_every_query_is_valid_promql(tmp_path):
    """promtool parses each query as a recording rule: real PromQL syntax, offline."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed: apt-get install -y prometheus"
    rules = []
    for key, dashboard in sorted(ALL.items()):
        values = dict(GRAFANA_VARIABLES)
        values.update({name: "X" for name, _ in queries.template_queries(dashboard)})
        for index, (_, expr) in enumerate(every_expression(dashboard)):
            rules.append({"record": f"dashboard:{key}:query{index}",
                          "expr": queries.fill_variables(expr, values)})
    rule_file = tmp_path / "dashboard_queries.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(rule_file)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


# --- Template variables ---------------------------------------------------------------

@pytest.mark.parametrize("key", sorted(ALL))
def test_template_variables_are_well_formed(key):
    dashboard = ALL[key]
    defined: list[str] = []
    regexes = queries.template_regexes(dashboard)
    for name, query in queries.template_queries(dashboard):
        expression, label = queries.template_expression(query, regexes.get(name, ""))
        assert label == name, f"variable {name} lists values of {label}"
        assert expression
        for metric in queries.metric_names(expression):
            assert label in names.METRICS[metric][1], f"{metric} has no label {label}"
        used = set(re.findall(r"\$\{?(\w+)", query))
        assert used <= set(defined), f"variable {name} uses {used - set(defined)} defined after it"
        defined.append(name)
    for title, expr in every_expression(dashboard):
        used = {name for name in re.findall(r"\$\{?(\w+)", expr) if not name.startswith("__")}
        assert used <= set(defined), f"{title!r} uses undefined variables {used - set(defined)}"


def test_seller_dashboard_is_templated_by_marketplace_and_seller():
    variables = ALL["seller"]["templating"]["list"]
    assert [variable["name"] for variable in variables] == [names.LABEL_MARKETPLACE, names.LABEL_SELLER]
    # It opens on the seller most at risk: values ranked by share of the limit, kept in that order.
    for variable in variables:
        assert variable["query"].startswith("query_result(sort_desc(") and variable["sort"] == 0
        assert queries.parse_query_result(variable["query"], variable["regex"])[1] == variable["name"]
    for title, expr in queries.panel_queries(ALL["seller"]):
        assert f'{names.LABEL_MARKETPLACE}="${names.LABEL_MARKETPLACE}"' in expr, title


def test_sellers_at_risk_links_to_the_seller_dashboard():
    table = next(panel for panel in ALL["overview"]["panels"] if panel["type"] == "table")
    links = [prop["value"] for override in table["fieldConfig"]["overrides"]
             for prop in override["properties"] if prop["id"] == "links"]
    assert len(links) == 1
    url = links[0][0]["url"]
    assert url.startswith(f"/d/{names.DASHBOARD_UIDS['seller']}/")
    assert f"var-{names.LABEL_SELLER}=${{__data.fields.{names.LABEL_SELLER}}}" in url
    assert f"var-{names.LABEL_MARKETPLACE}=${{__data.fields.{names.LABEL_MARKETPLACE}}}" in url


def panel_titled(key: str, start: str) -> dict:
    return next(panel for panel in ALL[key]["panels"] if panel["title"].startswith(start))


# Panels that draw a rate divided by the limit in force in its marketplace.
SHARE_PANELS = (("overview", "Fleet cancellation rate"), ("overview", "Seller-fault cancellations per new order"),
                ("seller", "Cancellation rate per window"))


@pytest.mark.parametrize("key, title", SHARE_PANELS)
def test_rate_panels_draw_the_limit_at_100_percent_and_the_warning_level_at_80(key, title):
    defaults = panel_titled(key, title)["fieldConfig"]["defaults"]
    assert defaults["unit"] == "percentunit"
    assert [(step["value"], step["color"]) for step in defaults["thresholds"]["steps"]] == [
        (None, "green"), (0.8, "orange"), (1.0, "red")]
    assert defaults["custom"]["thresholdsStyle"]["mode"] == "dashed"


def test_no_panel_draws_the_default_policy_levels_for_every_marketplace():
    for key, dashboard in ALL.items():
        for panel in dashboard["panels"]:
            configs = [panel["fieldConfig"]["defaults"]] + [
                prop["value"] for override in panel["fieldConfig"]["overrides"]
                for prop in override["properties"] if prop["id"] == "thresholds"]
            for config in configs:
                steps = (config.get("thresholds") or config).get("steps", [])
                assert not {0.02, 0.025} & {step["value"] for step in steps}, (key, panel["title"])


def promql_values(tmp_path: Path, series: dict[str, float], expr: str) -> dict[str, float]:
    """`expr` evaluated by promtool over constant `series`: labels -> value rounded to 0.001."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed: apt-get install -y prometheus"
    test = {"rule_files": [], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": name, "values": f"{value}x10"} for name, value in series.items()],
        "promql_expr_test": [{"expr": f"round(({expr}), 0.001)", "eval_time": "5m", "exp_samples": []}],
    }]}
    path = tmp_path / "promql_test.yml"
    path.write_text(yaml.safe_dump(test), encoding="utf-8")
    result = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, check=False)
    got = re.search(r"^\s*got: (.*)$", result.stdout + result.stderr, re.M)
    if got is None:  # promtool found what the empty expectation says: no sample at all
        assert result.returncode == 0, result.stdout + result.stderr
        return {}
    return {labels: float(value) for labels, value in re.findall(r"(\{[^}]*\}) ([-+.\dEe]+)", got.group(1))}


# One seller-marketplace in the US (limit 2.5%, warning 2.0%) and one in IN (2.0% and 1.6%),
# contract section 4. The same 1.8% is 72% of the US limit and 90% of India's. S3 holds itself
# to its own 0.5% target (contract section 10), so its 0.6% is 120% of its limit.
LIMIT_INPUT = {
    'cancelwatch_fleet_window_cancelled{marketplace="US", window_days="7"}': 18,
    'cancelwatch_fleet_window_orders{marketplace="US", window_days="7"}': 1000,
    'cancelwatch_fleet_window_cancelled{marketplace="IN", window_days="7"}': 18,
    'cancelwatch_fleet_window_orders{marketplace="IN", window_days="7"}': 1000,
    'cancelwatch_fleet_window_cancelled{marketplace="IN", window_days="30"}': 50,
    'cancelwatch_fleet_window_orders{marketplace="IN", window_days="30"}': 1000,
    'cancelwatch_seller_rate{seller_id="S1", marketplace="IN", window_days="7", instance="w1"}': 0.016,
    'cancelwatch_seller_rate{seller_id="S1", marketplace="IN", window_days="30", instance="w1"}': 0.02,
    'cancelwatch_seller_rate{seller_id="S2", marketplace="US", window_days="7", instance="w2"}': 0.016,
    'cancelwatch_seller_rate{seller_id="S3", marketplace="US", window_days="7", instance="w2"}': 0.006,
    'cancelwatch_seller_limit{seller_id="S1", marketplace="IN", window_days="7", instance="w1"}': 0.02,
    'cancelwatch_seller_limit{seller_id="S1", marketplace="IN", window_days="30", instance="w1"}': 0.02,
    'cancelwatch_seller_limit{seller_id="S2", marketplace="US", window_days="7", instance="w2"}': 0.025,
    'cancelwatch_seller_limit{seller_id="S3", marketplace="US", window_days="7", instance="w2"}': 0.005,
    # S4 has no order in its window: no rate, but its limit in force.
    'cancelwatch_seller_limit{seller_id="S4", marketplace="US", window_days="7", instance="w2"}': 0.025,
    'marketplace:cancelwatch_seller_fault_cancellations_per_order:ratio_rate14m{marketplace="US"}': 0.05,
    'marketplace:cancelwatch_seller_fault_cancellations_per_order:ratio_rate14m{marketplace="IN"}': 0.01,
}


def test_fleet_rate_is_a_share_of_each_marketplace_limit(tmp_path):
    [target] = panel_titled("overview", "Fleet cancellation rate")["targets"]
    assert promql_values(tmp_path, LIMIT_INPUT, target["expr"]) == {
        '{marketplace="US"}': 0.72, '{marketplace="IN"}': 0.9}


def test_burn_rate_is_a_share_of_each_marketplace_limit(tmp_path):
    [target] = panel_titled("overview", "Seller-fault cancellations per new order")["targets"]
    assert promql_values(tmp_path, LIMIT_INPUT, target["expr"]) == {
        '{marketplace="US"}': 2.0, '{marketplace="IN"}': 0.5}


def test_sellers_at_risk_show_the_rate_as_a_share_of_the_limit_in_force(tmp_path):
    table = panel_titled("overview", "Sellers at risk")
    share = next(target for target in table["targets"] if target["refId"] == "E")
    assert promql_values(tmp_path, LIMIT_INPUT, share["expr"]) == {
        '{marketplace="IN", seller_id="S1", window_days="30"}': 1.0,
        '{marketplace="IN", seller_id="S1", window_days="7"}': 0.8,
        '{marketplace="US", seller_id="S2", window_days="7"}': 0.64,
        '{marketplace="US", seller_id="S3", window_days="7"}': 1.2}
    renamed = table["transformations"][2]["options"]["renameByName"]
    assert renamed["Value #E"] == "of limit"
    assert "0.025" not in share["expr"] and "0.02" not in share["expr"]


def test_sellers_at_risk_are_ranked_by_their_highest_share_of_the_limit(tmp_path):
    """Contract section 8: breached first, then warning, then share of the limit; each row ranks
    by its seller's most exposed window, so a seller's windows stay together."""
    table = panel_titled("overview", "Sellers at risk")
    risk = next(target for target in table["targets"] if target["refId"] == "H")
    assert promql_values(tmp_path, LIMIT_INPUT, risk["expr"]) == {
        '{marketplace="US", seller_id="S3", window_days="7"}': 1.2,
        '{marketplace="IN", seller_id="S1", window_days="30"}': 1.0,
        '{marketplace="IN", seller_id="S1", window_days="7"}': 1.0,
        '{marketplace="US", seller_id="S2", window_days="7"}': 0.64}
    merge, sort, organize = (transformation["id"] for transformation in table["transformations"])
    assert (merge, sort, organize) == ("merge", "sortBy", "organize")
    assert table["transformations"][1]["options"]["sort"] == [{"field": "Value #H", "desc": True}]
    assert table["transformations"][2]["options"]["excludeByName"]["Value #H"] is True


def test_seller_rate_is_a_share_of_its_limit_in_force(tmp_path):
    [target] = panel_titled("seller", "Cancellation rate per window")["targets"]
    for seller, marketplace, expected in (
            ("S1", "IN", {'{marketplace="IN", seller_id="S1", window_days="30"}': 1.0,
                          '{marketplace="IN", seller_id="S1", window_days="7"}': 0.8}),
            ("S3", "US", {'{marketplace="US", seller_id="S3", window_days="7"}': 1.2})):
        expr = queries.fill_variables(target["expr"], {"seller_id": seller, "marketplace": marketplace})
        assert promql_values(tmp_path, LIMIT_INPUT, expr) == expected


def test_limits_follow_the_policy():
    policy_module = generate.policy
    window = policy_module.Window
    policy = dataclasses.replace(generate.POLICY, marketplace_windows={
        "IN": (window(7, 200, 160), window(30, 200, 160)),
        "JP": (window(7, 300, 240),),
        "SG": (window(7, 200, 160),),
    })
    limits = generate.Limits(policy)
    assert limits.share_of_limit(lambda matcher: f"r{generate.selector(matcher)}") == (
        'r{marketplace!~"IN|JP|SG"} / 0.025 or r{marketplace=~"IN|SG"} / 0.02 or r{marketplace="JP"} / 0.03')
    assert limits.warning_share == 0.8
    uneven = dataclasses.replace(policy, marketplace_windows={"IN": (window(7, 200, 150),)})
    with pytest.raises(ValueError, match="warning_bps / limit_bps"):
        generate.Limits(uneven)
    split = dataclasses.replace(policy, marketplace_windows={"IN": (window(7, 200, 160), window(30, 250, 200))})
    with pytest.raises(ValueError, match="marketplace IN"):
        generate.Limits(split)


# --- Colours of stat panels --------------------------------------------------------------

GOOD, WARN, BAD, NEUTRAL = "good", "warn", "bad", "neutral"
COLOUR_MEANINGS = ((("red",), BAD), (("orange", "yellow"), WARN), (("green",), GOOD),
                   (("blue", "text", "purple"), NEUTRAL))


def meaning(colour: str) -> str:
    for words, what in COLOUR_MEANINGS:
        if any(word in colour.lower() for word in words):
            return what
    raise AssertionError(f"colour {colour!r} has no agreed meaning")


def colour_at(thresholds: dict, value: float) -> str:
    steps = thresholds["steps"]
    colour = steps[0]["color"]
    for step in steps[1:]:
        if value >= step["value"]:
            colour = step["color"]
    return colour


def field_thresholds(panel: dict, field: str | None) -> dict:
    for override in panel["fieldConfig"]["overrides"]:
        if field is not None and override["matcher"] == {"id": "byName", "options": field}:
            found = [prop["value"] for prop in override["properties"] if prop["id"] == "thresholds"]
            if found:
                return found[0]
    return panel["fieldConfig"]["defaults"]["thresholds"]


ZERO_OR_ANY = {0: GOOD, 1: BAD, 3: BAD}
HORIZON = generate.POLICY.forecast_horizon_hours
# (dashboard, stat panel) -> field shown (None: every field without an override) -> value -> meaning
STAT_COLOURS = {
    ("pipeline", "Workers up"): {None: {0: BAD, 1: GOOD}},
    ("pipeline", "Consumer lag (largest topic)"): {None: {0: GOOD, 999: GOOD, 1000: WARN, 50000: BAD}},
    ("pipeline", "Worker clock behind wall clock"): {None: {0: GOOD, 20: GOOD, 60: WARN, 3600: BAD}},
    ("pipeline", "Dead letters (last hour)"): {None: {0: GOOD, 1: WARN, 500: WARN}},
    ("pipeline", "Partitions catching up"): {None: {0: GOOD, 1: WARN, 4: WARN}},
    ("pipeline", "Alert updates queued"): {None: {0: GOOD, 1: WARN, 1000: BAD}},
    ("overview", "Sellers by status"): {
        "ok": {0: NEUTRAL, 1: NEUTRAL, 100000: NEUTRAL},
        "warning": {0: GOOD, 1: WARN, 40: WARN},
        "breach": ZERO_OR_ANY},
    ("overview", "Sellers by 7-day rate band"): {
        "low": {0: NEUTRAL, 100000: NEUTRAL}, "moderate": {0: NEUTRAL, 100000: NEUTRAL},
        "warning": {0: GOOD, 1: WARN}, "breach": ZERO_OR_ANY},
    ("overview", "Alerts firing"): {
        alertname: ZERO_OR_ANY if severity == "critical" else {0: GOOD, 1: WARN, 3: WARN}
        for alertname, severity in names.ALERT_SEVERITY.items()},
    ("seller", "Headroom"): {None: {0: BAD, 1: WARN, 2: GOOD, 500: GOOD}},
    # Hours: breached now, within the forecast horizon, beyond it; -inf is how Grafana colours
    # the "not projected" text shown when no breach is projected (no series).
    ("seller", "Time to breach"): {None: {
        0: BAD, 1: WARN, 23: WARN, HORIZON: WARN, HORIZON + 1: GOOD, -math.inf: GOOD}},
    ("seller", "Limit in force"): {None: {0.005: NEUTRAL, 0.02: NEUTRAL, 0.025: NEUTRAL}},
    ("pipeline", "Reconciliation alerts firing"): {
        alertname: ZERO_OR_ANY if names.ALERT_SEVERITY[alertname] == "critical" else {0: GOOD, 1: WARN, 3: WARN}
        for alertname in names.RECONCILIATION_ALERTS},
}


def test_every_stat_panel_has_agreed_colours():
    stats = {(key, panel["title"]) for key, dashboard in ALL.items() for panel in dashboard["panels"]
             if panel["type"] == "stat"}
    assert stats == set(STAT_COLOURS), "give each stat panel its colour semantics in STAT_COLOURS"


@pytest.mark.parametrize("key, title", sorted(STAT_COLOURS))
def test_stat_panel_colours_match_their_meaning(key, title):
    panel = next(panel for panel in ALL[key]["panels"] if panel["title"] == title)
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["color"] == {"mode": "thresholds"}, title
    assert defaults["thresholds"]["mode"] == "absolute" and defaults["thresholds"]["steps"][0]["value"] is None
    assert panel["options"]["colorMode"] in ("background", "value")
    for field, expected in STAT_COLOURS[(key, title)].items():
        thresholds = field_thresholds(panel, field)
        got = {value: meaning(colour_at(thresholds, value)) for value in expected}
        assert got == expected, f"{title} / {field or 'default'}: {got}"


def test_sellers_at_risk_colour_the_share_of_the_limit_and_the_headroom():
    table = panel_titled("overview", "Sellers at risk")
    share = field_thresholds(table, "of limit")
    assert {v: meaning(colour_at(share, v)) for v in (0.5, 0.8, 0.99, 1.0)} == {
        0.5: GOOD, 0.8: WARN, 0.99: WARN, 1.0: BAD}
    headroom = field_thresholds(table, "headroom")
    assert {v: meaning(colour_at(headroom, v)) for v in (0, 1, 2)} == {0: BAD, 1: WARN, 2: GOOD}
    hours = field_thresholds(table, "time to breach")
    assert {v: meaning(colour_at(hours, v)) for v in (0, 1, 23, HORIZON, HORIZON + 1)} == {
        0: BAD, 1: WARN, 23: WARN, HORIZON: WARN, HORIZON + 1: GOOD}


def test_time_to_breach_reads_breached_at_0_hours():
    """Grafana prints 0 hours as "0 ms": a value mapping says what 0 means, in red."""
    table = panel_titled("overview", "Sellers at risk")
    stat = panel_titled("seller", "Time to breach")
    for config in (render.field_config(table, "time to breach"), render.field_config(stat, "7 days")):
        assert config["unit"] == "h"
        assert render.display(config, 0.0) == ("breached", render.rgb("red"))
        assert render.display(config, 5.0) == ("5 h", render.rgb("orange"))
    assert stat["fieldConfig"]["defaults"]["noValue"] == "not projected"
    assert render.display(render.field_config(stat, ""), None) == ("not projected", render.rgb("green"))


def test_dead_letter_panels_show_0_without_data():
    for title in ("Dead letters (last hour)", "Dead letters per minute"):
        assert panel_titled("pipeline", title)["fieldConfig"]["defaults"]["noValue"] == "0"


def test_counts_are_per_minute_whatever_the_zoom():
    """A count per query interval grows with the zoom; these are rates scaled to a minute."""
    for key, dashboard in ALL.items():
        for title, expr in queries.panel_queries(dashboard):
            assert "increase(" not in expr or "[$__" not in expr, (title, expr)
            if "per minute" in title:
                assert expr.startswith("60 * "), (title, expr)


# --- Render (dashboards/render.py) --------------------------------------------------------

class FakePrometheus:
    """Two series per query over the window (instant queries: one point, at its end), and one
    value per template variable. Hours to breach have none, as when no breach is projected:
    empty table cells, a "no value" stat."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def range(self, expr, start, end, step):
        self.queries.append(expr)
        if "cancelwatch_seller_hours_to_breach" in queries.metric_names(expr):
            return []
        times = range(int(start), int(end) + 1, step)
        return [{"metric": {"marketplace": marketplace, "status": status, "seller_id": "S1",
                            "window_days": "7", "instance": "w1"},
                 "values": [[t, str(index + (t - start) / max(1, end - start))] for t in times]}
                for index, (marketplace, status) in enumerate((("US", "ok"), ("IN", "breach")))]

    def label_values(self, label, selector, start, end):
        return {"marketplace": ["US", "IN"], "seller_id": ["S2", "S1"]}[label]


@pytest.mark.parametrize("key", sorted(ALL))
def test_render_draws_every_panel_of_a_dashboard(key, tmp_path):
    source = FakePrometheus()
    window = render.Window.last(60, render.scrape_interval_seconds(), end=1_800_000_000)
    out = tmp_path / f"{ALL[key]['uid']}.png"
    assert render.render_dashboard(source, ALL[key], window, {}, out) == (True, [])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    ranked_variables = len(queries.template_regexes(ALL[key]))     # query_result: one query each
    assert len(source.queries) == len(queries.panel_queries(ALL[key])) + ranked_variables
    assert not any("$" in expr for expr in source.queries)
    if key == "seller":
        assert all('seller_id="S1"' in expr and 'marketplace="IN"' in expr
                   for expr in source.queries[ranked_variables:] if "seller_id" in expr)


def test_render_evaluates_instant_targets_at_the_end_only():
    """A stat or table shows what is exported now: a series gone before the end (a seller no
    longer projected to breach) is not shown with its last value, as Grafana's instant query."""
    class Gone(FakePrometheus):
        def range(self, expr, start, end, step):
            self.queries.append((start, end))
            return [] if start == end else [{"metric": {"window_days": "7"}, "values": [[start, "5"]]}]

    source = Gone()
    window = render.Window.last(60, 15, end=1_800_000_000)
    panel = {"targets": [{"refId": "A", "expr": "m", "instant": True}, {"refId": "B", "expr": "m"}]}
    data = render.fetch(source, panel, window, {})
    assert data["A"] == [] and data["B"][0].last() == 5.0
    assert source.queries == [(window.end, window.end), (window.start, window.end)]


def test_axis_ticks_get_the_decimals_that_tell_them_apart():
    ticks = render.DistinctTicks("short", None)
    ticks.set_locs([2600.0, 2650.0, 2700.0])
    assert [ticks(value) for value in (2600.0, 2650.0, 2700.0)] == ["2.60K", "2.65K", "2.70K"]
    ticks.set_locs([0.0, 20.0, 40.0])
    assert [ticks(value) for value in (0.0, 20.0, 40.0)] == ["0", "20", "40"]


def test_render_picks_the_seller_most_at_risk_as_grafana_would():
    class Ranked(FakePrometheus):
        def range(self, expr, start, end, step):
            self.queries.append(expr)
            label = "seller_id" if "by (seller_id)" in expr else "marketplace"
            shares = {"seller_id": (("S1", "0.4"), ("S7", "0.97"), ("S3", "0.2")),
                      "marketplace": (("DE", "0.3"), ("US", "0.97"))}[label]
            return [{"metric": {label: value}, "values": [[end, share]]} for value, share in shares]

    source = Ranked()
    window = render.Window.last(60, 15, end=1_800_000_000)
    values = render.resolve_variables(source, ALL["seller"], window, {})
    assert (values["marketplace"], values["seller_id"]) == ("US", "S7")
    assert 'marketplace="US"' in source.queries[1]
    assert render.resolve_variables(source, ALL["seller"], window, {"seller_id": "S3"})["seller_id"] == "S3"


def test_render_fills_grafana_variables_from_the_scrape_interval():
    window = render.Window.last(60, 15, end=1_800_000_000)
    assert (window.step, window.variables) == (15, {
        "__interval": "15s", "__rate_interval": "60s", "__range": "60m"})
    assert render.Window.last(24 * 60, 15).variables["__rate_interval"] == "375s"


def test_render_colours_a_stat_by_its_field_override():
    panel = panel_titled("overview", "Sellers by status")
    assert render.threshold_colour(render.field_config(panel, "breach"), 1) == render.rgb("red")
    assert render.threshold_colour(render.field_config(panel, "breach"), 0) == render.rgb("green")
    assert render.threshold_colour(render.field_config(panel, "ok"), 250) == render.rgb("blue")


def test_render_table_merges_sorts_and_renames_like_grafana():
    table = panel_titled("overview", "Sellers at risk")
    labels = {"seller_id": "S1", "marketplace": "IN", "window_days": "7"}
    other = dict(labels, seller_id="S2", marketplace="US")

    def series(value, **extra):
        return render.Series("", dict(extra), [0.0], [value])
    thirty = dict(labels, window_days="30")
    data = {"A": [series(0.016, **labels), series(0.01, **other), series(0.006, **thirty)],
            "B": [series(2, **labels)], "C": [series(500, **labels)], "D": [series(8, **labels)],
            "E": [series(0.8, **labels), series(0.4, **other), series(0.3, **thirty)],
            "F": [series(7, **labels)],
            "G": [series(0.02, **labels), series(0.025, **other), series(0.02, **thirty)],
            "H": [series(0.8, **labels), series(0.4, **other), series(0.8, **thirty)]}
    columns, rows = render.table_rows(table, data)
    assert columns == ["seller_id", "marketplace", "window_days", "of limit", "time to breach", "rate",
                       "limit", "headroom", "orders", "cancelled"]
    # S1's 30-day window (30%) ranks with its 7-day one (80%), above S2 (40%).
    assert [(row["seller_id"], row["window_days"]) for row in rows] == [("S1", "7"), ("S1", "30"), ("S2", "7")]
    assert rows[0]["of limit"] == 0.8 and rows[0]["time to breach"] == 7
    assert rows[2].get("headroom") is None and rows[2].get("time to breach") is None
    assert "Value #H" not in rows[0]


def test_render_sorts_on_the_first_sort_field_only_like_grafana():
    panel = {"transformations": [{"id": "sortBy", "options": {"sort": [
        {"field": "Value #A", "desc": True}, {"field": "Value #B"}]}}]}
    data = {"A": [render.Series("", {"k": key}, [0.0], [value]) for key, value in (("x", 1.0), ("y", 2.0))],
            "B": [render.Series("", {"k": key}, [0.0], [value]) for key, value in (("x", 0.0), ("y", 9.0))]}
    assert [row["k"] for row in render.table_rows(panel, data)[1]] == ["y", "x"]


def test_render_formats_values_in_the_panel_unit():
    assert render.format_value(0.8, "percentunit", 0) == "80%"
    assert render.format_value(12.0, "cpm") == "12 /min"
    assert render.format_value(90.0, "s") == "1.5 min"
    assert render.format_value(5.0, "h", 0) == "5 h" and render.format_value(48.0, "h", 0) == "2 day"
    assert render.format_value(15300.0) == "15.3K"
    assert render.format_value(None) == "-"
    assert render.legend("{{window_days}} days", {"window_days": "30"}) == "30 days"


def test_seller_alert_annotations_filter_by_the_seller_tags():
    annotation = next(a for a in ALL["seller"]["annotations"]["list"] if "target" in a)
    assert annotation["target"]["type"] == "tags"
    assert annotation["target"]["matchAny"] is False
    assert set(annotation["target"]["tags"]) == {
        generate.ANNOTATION_TAG, "seller_id:$seller_id", "marketplace:$marketplace"}
    built_in = next(a for a in ALL["seller"]["annotations"]["list"] if a.get("builtIn") == 1)
    assert built_in["enable"] is False  # would show every seller's annotations


# --- Provisioning (Grafana's documented format, apiVersion 1) ----------------------------

DATASOURCE_KEYS = {"name", "type", "uid", "access", "orgId", "url", "user", "database",
                   "basicAuth", "basicAuthUser", "withCredentials", "isDefault", "jsonData",
                   "secureJsonData", "version", "editable"}
PROVIDER_KEYS = {"name", "orgId", "folder", "folderUid", "type", "disableDeletion",
                 "updateIntervalSeconds", "allowUiUpdates", "options"}


def test_datasources_file_matches_grafana_provisioning_format():
    document = yaml.safe_load((PROVISIONING / "datasources" / "datasources.yml").read_text())
    assert set(document) <= {"apiVersion", "datasources", "deleteDatasources", "prune"}
    assert document["apiVersion"] == 1
    by_uid = {}
    for source in document["datasources"]:
        assert set(source) <= DATASOURCE_KEYS, set(source) - DATASOURCE_KEYS
        assert isinstance(source["name"], str) and isinstance(source["type"], str)
        assert source["access"] in ("proxy", "direct")
        assert isinstance(source["orgId"], int) and isinstance(source["version"], int)
        assert isinstance(source["isDefault"], bool) and isinstance(source["editable"], bool)
        assert isinstance(source.get("jsonData", {}), dict)
        by_uid[source["uid"]] = source
    assert [source["isDefault"] for source in document["datasources"]].count(True) == 1
    prometheus = by_uid[names.PROMETHEUS_DATASOURCE_UID]
    assert (prometheus["type"], prometheus["url"]) == ("prometheus", "http://prometheus:9090")
    alertmanager = by_uid[names.ALERTMANAGER_DATASOURCE_UID]
    assert (alertmanager["type"], alertmanager["url"]) == ("alertmanager", "http://alertmanager:9093")
    assert alertmanager["jsonData"]["implementation"] == "prometheus"


def test_dashboard_provider_matches_grafana_provisioning_format():
    document = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yml").read_text())
    assert set(document) == {"apiVersion", "providers"}
    assert document["apiVersion"] == 1
    [provider] = document["providers"]
    assert set(provider) <= PROVIDER_KEYS, set(provider) - PROVIDER_KEYS
    assert provider["type"] == "file"
    assert provider["folder"] == "cancelwatch"
    assert isinstance(provider["orgId"], int) and isinstance(provider["updateIntervalSeconds"], int)
    assert isinstance(provider["disableDeletion"], bool) and isinstance(provider["allowUiUpdates"], bool)
    assert set(provider["options"]) <= {"path", "foldersFromFilesStructure"}
    assert provider["options"]["path"] == DASHBOARD_MOUNT


def test_docs_state_the_mount_path_and_every_dashboard():
    text = (ROOT / "docs" / "dashboards.md").read_text(encoding="utf-8")
    assert DASHBOARD_MOUNT in text
    for dashboard in ALL.values():
        assert dashboard["uid"] in text
        for panel in dashboard["panels"]:
            assert panel["title"] in text, f"docs/dashboards.md does not describe {panel['title']!r}"


# --- docs/metrics.md -----------------------------------------------------------------------

def test_every_metric_has_a_series_bound():
    assert set(metrics_reference.BOUNDS) == set(names.METRICS)


def test_metrics_doc_lists_every_metric_with_type_labels_and_help():
    text = metrics_reference.markdown()
    for name, (kind, labels, help_text) in names.METRICS.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"| {kind} |" in row and help_text in row
        for label in labels:
            assert f"`{label}`" in row


def test_series_bound_grows_with_top_k_only_by_per_seller_gauges():
    base = metrics_reference.Parameters()
    bigger = metrics_reference.Parameters(top_k=base.top_k + 1)
    per_seller = [name for name, (_, labels, _) in names.METRICS.items() if names.LABEL_SELLER in labels]
    assert metrics_reference.series_bound(bigger) - metrics_reference.series_bound(base) == (
        len(per_seller) * base.windows)
