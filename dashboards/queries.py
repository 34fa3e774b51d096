"""The PromQL inside generated dashboards: read it back out, name its metrics, fill its variables.

Used by the tests: the offline test checks every query references only known
metrics, the live test runs every query against a real Prometheus.
"""

from __future__ import annotations

import re
from typing import Iterator

# PromQL words that look like metric names but are not.
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "bool", "offset", "inf", "nan"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_IDENTIFIER = re.compile(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<selector>.+),\s*)?(?P<label>\w+)\s*\)\s*$")
_QUERY_RESULT = re.compile(r"^\s*query_result\((?P<expr>.+)\)\s*$")
_LABEL_REGEX = re.compile(r'^/(?P<label>\w+)="\(\[\^"\]\+\)"/$')


def _panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def panel_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) of every panel target of a dashboard."""
    return [(panel.get("title", ""), target["expr"])
            for panel in _panels(dashboard)
            for target in panel.get("targets", [])
            if "expr" in target]


def annotation_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(annotation name, PromQL expression) of the Prometheus annotation queries."""
    return [(annotation["name"], annotation["expr"])
            for annotation in dashboard.get("annotations", {}).get("list", [])
            if annotation.get("expr")]


def template_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(variable name, query) of every query template variable, in dashboard order."""
    return [(variable["name"], variable["query"])
            for variable in dashboard.get("templating", {}).get("list", [])
            if variable.get("type") == "query"]


def template_regexes(dashboard: dict) -> dict[str, str]:
    """Variable name -> the regex Grafana applies to its query's values (only those with one)."""
    return {variable["name"]: variable["regex"]
            for variable in dashboard.get("templating", {}).get("list", [])
            if variable.get("type") == "query" and variable.get("regex")}


def parse_query_result(query: str, regex: str) -> tuple[str, str]:
    """`query_result(expr)` with the regex `/label="([^"]+)"/` as (expr, label): the values are
    that label of each series expr returns, in its order. ValueError otherwise."""
    match, label = _QUERY_RESULT.match(query), _LABEL_REGEX.match(regex or "")
    if not match or not label:
        raise ValueError(f"template query {query!r} (regex {regex!r}) is not query_result(expr) with "
                         f'a regex /label="([^"]+)"/')
    return match.group("expr"), label.group("label")


def template_expression(query: str, regex: str = "") -> tuple[str, str]:
    """The PromQL of a template query (label_values' selector, or query_result's expression) and
    the label its values are: (expression, label)."""
    if _QUERY_RESULT.match(query):
        return parse_query_result(query, regex)
    selector, label = parse_label_values(query)
    return selector or "", label


def parse_label_values(query: str) -> tuple[str | None, str]:
    """`label_values(selector, label)` as (selector or None, label); ValueError otherwise."""
    match = _LABEL_VALUES.match(query)
    if not match:
        raise ValueError(f"template query {query!r} is not label_values([selector,] label)")
    return match.group("selector"), match.group("label")


def metric_names(expr: str) -> set[str]:
    """Names of the metrics a PromQL expression selects (functions and labels left out)."""
    stripped = _STRING.sub('""', expr)
    stripped = _MATCHERS.sub("", stripped)
    stripped = _RANGE.sub("", stripped)
    stripped = _GROUPING.sub("", stripped)
    stripped = _VARIABLE.sub("", stripped)
    return {name for name, call in _IDENTIFIER.findall(stripped)
            if not call and name.lower() not in KEYWORDS}


def fill_variables(expr: str, values: dict[str, str]) -> str:
    """Replace `$name` and `${name}` with the given values; error on one left unset."""
    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"query {expr!r} uses ${name}, which has no value: pass it in values")
        return values[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, expr)
