"""Every dashboard query against a real Prometheus scraping a worker with simulated traffic.

Needs the local stack (`make stack-up`) and the `live_pipeline` fixture, which
starts a worker and the traffic simulator and returns the Prometheus base URL
once Prometheus has scraped the worker at least twice with data in it.
Grafana's `$__rate_interval` is replaced by a range wide enough for two scrapes.
Panels over recording rules need Prometheus to have evaluated alerts/rules/*.yml.
The `ALERTS` annotation (alerts Prometheus evaluates from alerts/rules) is only
required to run: it is rightly empty while the pipeline is healthy.
dashboards/render.py draws each dashboard from the same Prometheus.
"""

from __future__ import annotations

import json

import pytest
import requests

from dashboards import generate, queries, render
from cancelwatch import names

pytestmark = pytest.mark.stack

RATE_INTERVAL = "5m"
# Exported only for the windows breached or projected to breach: the seller the Seller
# dashboard picks (the first in alphabetical order) may rightly have none.
ONLY_AT_RISK = {"cancelwatch_seller_hours_to_breach"}
DASHBOARDS = {key: json.loads(generate.path_of(key).read_text(encoding="utf-8"))
              for key in names.DASHBOARD_UIDS}


def instant(prometheus: str, expr: str) -> list[dict]:
    response = requests.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=30)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]["result"]


def label_values(prometheus: str, label: str, selector: str) -> list[str]:
    response = requests.get(f"{prometheus}/api/v1/label/{label}/values",
                            params={"match[]": selector}, timeout=30)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (selector, body)
    return body["data"]


def resolve_variables(prometheus: str, dashboard: dict) -> dict[str, str]:
    """Each template variable's first value, in dashboard order, as Grafana would pick (a
    query_result keeps the order of its sort_desc)."""
    values = {"__rate_interval": RATE_INTERVAL}
    regexes = queries.template_regexes(dashboard)
    for name, query in queries.template_queries(dashboard):
        if name in regexes:
            expr, label = queries.parse_query_result(query, regexes[name])
            found = [series["metric"][label] for series in instant(prometheus, queries.fill_variables(expr, values))]
        else:
            selector, label = queries.parse_label_values(query)
            found = sorted(label_values(prometheus, label, queries.fill_variables(selector, values)))
        assert found, f"variable {name}: {query} resolves to no values"
        values[name] = found[0]
    return values


@pytest.mark.parametrize("key", sorted(DASHBOARDS))
def test_template_variables_resolve_to_values(live_pipeline, key):
    values = resolve_variables(live_pipeline, DASHBOARDS[key])
    assert set(values) == {"__rate_interval"} | {
        name for name, _ in queries.template_queries(DASHBOARDS[key])}


@pytest.mark.parametrize("key", sorted(DASHBOARDS))
def test_every_panel_query_returns_data(live_pipeline, key):
    dashboard = DASHBOARDS[key]
    values = resolve_variables(live_pipeline, dashboard)
    empty = []
    for title, expr in queries.panel_queries(dashboard):
        filled = queries.fill_variables(expr, values)
        result = instant(live_pipeline, filled)
        if not result and not (key == "seller" and queries.metric_names(expr) & ONLY_AT_RISK):
            empty.append(f"{title}: {filled}")
    assert not empty, "queries without data:\n" + "\n".join(empty)


@pytest.mark.parametrize("key", sorted(DASHBOARDS))
def test_prometheus_annotation_queries_return_data(live_pipeline, key):
    dashboard = DASHBOARDS[key]
    values = resolve_variables(live_pipeline, dashboard)
    for name, expr in queries.annotation_queries(dashboard):
        filled = queries.fill_variables(expr, values)
        result = instant(live_pipeline, filled)
        if "ALERTS" not in queries.metric_names(expr):
            assert result, f"annotation {name}: {filled} returned nothing"


@pytest.mark.parametrize("key", sorted(DASHBOARDS))
def test_render_draws_the_dashboard_from_live_data(live_pipeline, key, tmp_path):
    window = render.Window.last(15, render.scrape_interval_seconds())
    out = tmp_path / f"{DASHBOARDS[key]['uid']}.png"
    written, problems = render.render_dashboard(render.Prometheus(live_pipeline), DASHBOARDS[key],
                                                window, {}, out)
    assert (written, problems) == (True, [])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 50_000
