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
