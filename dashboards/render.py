"""Draw the generated dashboards from a live Prometheus into PNG files, to see them without Grafana.

Every panel's queries run as range queries over the last N minutes (instant
ones, those of stats and tables, at its end only), with the
Grafana variables filled the way Grafana would ($__rate_interval from the
data source's scrape interval, each template variable its first value unless
given). Timeseries become lines (stacked where the panel stacks) with the
panel's threshold lines, stats big numbers coloured by the panel's
thresholds (per-field overrides and value mappings included), tables text
with their coloured cells. Annotations are not drawn.

    python -m dashboards.render                               # every dashboard, last 60 minutes
    python -m dashboards.render seller --var seller_id=S0012  # one dashboard, one seller
    make dashboards-render PROMETHEUS_URL=http://127.0.0.1:9090

Writes `.render/<dashboard uid>.png`; the folder holds a `.gitignore` of its
own, so nothing drawn is ever committed. Exit 1 when a query failed or a
template variable has no value, 2 when Prometheus cannot be reached.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import yaml
from matplotlib.dates import AutoDateLocator, DateFormatter
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Rectangle
from matplotlib.ticker import Formatter, FuncFormatter, MaxNLocator

from dashboards import generate, queries
from cancelwatch import names

DEFAULT_PROMETHEUS_URL = "http://127.0.0.1:9090"
OUTPUT_DIR = generate.REPOSITORY_ROOT / ".render"
DATASOURCES_FILE = generate.DASHBOARDS_DIR / "provisioning" / "datasources" / "datasources.yml"

# Grafana's named colours (its default palette) in RGB; any other name goes to matplotlib as is.
GRAFANA_COLOURS = {
    "green": "#73BF69", "semi-dark-green": "#56A64B", "dark-green": "#37872D",
    "red": "#F2495C", "semi-dark-red": "#E02F44", "dark-red": "#C4162A",
    "orange": "#FF9830", "semi-dark-orange": "#FA6400", "dark-orange": "#E55400",
    "yellow": "#FADE2A", "semi-dark-yellow": "#F2CC0C", "dark-yellow": "#E0B400",
    "blue": "#5794F2", "semi-dark-blue": "#3274D9", "dark-blue": "#1F60C4",
    "purple": "#B877D9", "semi-dark-purple": "#A352CC", "dark-purple": "#8F3BB8",
    "text": "#464C54", "transparent": "#FFFFFF",
}
# Series colours in Grafana's classic palette order, for series without a fixed colour.
PALETTE = ("#7EB26D", "#EAB839", "#6ED0E0", "#EF843C", "#E24D42", "#1F78C1", "#BA43A9",
           "#705DA0", "#508642", "#CCA300", "#447EBC", "#C15C17", "#890F02", "#0A437C")
NO_DATA = "#8E8E8E"

# Inches per Grafana grid column (24 across) and per grid row (30 px in Grafana).
COLUMN_INCHES = 0.8
ROW_INCHES = 0.34
HEADER_INCHES = 0.55
POINTS_PER_RANGE = 240


class QueryError(Exception):
    """A query Prometheus refused or could not answer."""


class Source(Protocol):
    """Where the series come from: `Prometheus`, or a stand-in in the tests."""

    def range(self, expr: str, start: float, end: float, step: int) -> list[dict]: ...

    def label_values(self, label: str, selector: str | None, start: float, end: float) -> list[str]: ...


class Prometheus:
    """Prometheus's HTTP API (range queries and label values), with the standard library only."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: list[tuple[str, str]]) -> dict:
        address = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(address, timeout=self.timeout) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            try:
                body = json.load(error)
            except ValueError:
                raise QueryError(f"HTTP {error.code} from {address}") from None
        except (urllib.error.URLError, OSError) as error:
            raise QueryError(f"cannot reach Prometheus at {self.url}: "
                             f"{getattr(error, 'reason', error)}") from None
        if body.get("status") != "success":
            raise QueryError(f"{body.get('errorType', 'error')}: {body.get('error', body)}")
        return body["data"]

    def ready(self) -> None:
        """Raise QueryError unless Prometheus answers queries."""
        self._get("/api/v1/query", [("query", "vector(1)")])

    def range(self, expr: str, start: float, end: float, step: int) -> list[dict]:
        return self._get("/api/v1/query_range", [("query", expr), ("start", f"{start:.3f}"),
                                                 ("end", f"{end:.3f}"), ("step", str(step))])["result"]

    def label_values(self, label: str, selector: str | None, start: float, end: float) -> list[str]:
        params = [("start", f"{start:.3f}"), ("end", f"{end:.3f}")]
        if selector:
            params.append(("match[]", selector))
        return self._get(f"/api/v1/label/{label}/values", params)


@dataclasses.dataclass
class Series:
    name: str
    labels: dict[str, str]
    times: list[float]
    values: list[float]

    def last(self) -> float | None:
        present = [value for value in self.values if not math.isnan(value)]
        return present[-1] if present else None


@dataclasses.dataclass
class Window:
    """The time range drawn and the Grafana variables that follow from it."""

    start: float
    end: float
    step: int
    variables: dict[str, str]

    @classmethod
    def last(cls, minutes: int, scrape_seconds: int, end: float | None = None) -> "Window":
        end = time.time() if end is None else end
        seconds = minutes * 60
        step = max(scrape_seconds, math.ceil(seconds / POINTS_PER_RANGE))
        # Grafana: $__rate_interval = max($__interval + scrape interval, 4 * scrape interval).
        rate_interval = max(step + scrape_seconds, 4 * scrape_seconds)
        return cls(end - seconds, end, step, {
            "__interval": f"{step}s", "__rate_interval": f"{rate_interval}s", "__range": f"{minutes}m"})


def scrape_interval_seconds() -> int:
    """The Prometheus data source's `timeInterval`, which Grafana computes $__rate_interval from."""
    document = yaml.safe_load(DATASOURCES_FILE.read_text(encoding="utf-8"))
    source = next(s for s in document["datasources"] if s["uid"] == names.PROMETHEUS_DATASOURCE_UID)
    text = str(source.get("jsonData", {}).get("timeInterval", "15s"))
    match = re.fullmatch(r"(\d+)([smh])", text)
    if not match:
        raise ValueError(f"{DATASOURCES_FILE}: timeInterval {text!r} is not like 15s, 1m or 1h")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]


# --- Reading a panel the way Grafana does ---------------------------------------------

def legend(legend_format: str, labels: dict[str, str]) -> str:
    """A series' name from the target's legend format (`{{label}}`), or its labels."""
    if legend_format and legend_format != "__auto":
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda match: labels.get(match.group(1), ""),
                      legend_format).strip()
    shown = {key: value for key, value in labels.items() if key != "__name__"}
    text = ", ".join(f'{key}="{value}"' for key, value in sorted(shown.items()))
    return f"{labels.get('__name__', '')}{{{text}}}" if text else labels.get("__name__", "value")


def field_config(panel: dict, name: str) -> dict:
    """The panel's field defaults with the overrides that match field `name` applied."""
    config = json.loads(json.dumps(panel.get("fieldConfig", {}).get("defaults", {})))
    for override in panel.get("fieldConfig", {}).get("overrides", []):
        matcher = override.get("matcher", {})
        if matcher.get("id") == "byName" and matcher.get("options") == name:
            for prop in override.get("properties", []):
                *path, last = prop["id"].split(".")
                node = config
                for key in path:
                    node = node.setdefault(key, {})
                node[last] = prop["value"]
    return config


def threshold_colour(config: dict, value: float | None) -> str:
    """The colour of the threshold step `value` falls in (Grafana's absolute thresholds);
    -inf gives the base step, the colour Grafana gives a "no value" text."""
    steps = config.get("thresholds", {}).get("steps") or [{"value": None, "color": "green"}]
    colour = steps[0]["color"]
    if value is None or math.isnan(value):
        return NO_DATA
    for step in steps[1:]:
        if step["value"] is not None and value >= step["value"]:
            colour = step["color"]
    return rgb(colour)


def rgb(colour: str) -> str:
    return GRAFANA_COLOURS.get(colour, colour)


def mapped(config: dict, value: float | None) -> tuple[str | None, str | None]:
    """The text and colour a value mapping of the field gives `value` (Grafana's "value" type,
    keyed by the value as JavaScript prints it), or (None, None) when none matches."""
    if value is None or math.isnan(value):
        return None, None
    key = str(int(value)) if float(value).is_integer() else repr(value)
    for mapping in config.get("mappings", []):
        if mapping.get("type") == "value" and key in mapping.get("options", {}):
            result = mapping["options"][key]
            return result.get("text"), rgb(result["color"]) if result.get("color") else None
    return None, None


def display(config: dict, value: float | None) -> tuple[str, str]:
    """A field's value as Grafana shows it: its text (mapped, or in the field's unit, or the
    field's "no value" text) and its colour (mapped, or of its threshold step)."""
    text, colour = mapped(config, value)
    if text is None:
        text = (config["noValue"] if value is None and "noValue" in config
                else format_value(value, config.get("unit", "short"), config.get("decimals")))
    if colour is None:
        colour = threshold_colour(config, -math.inf if value is None and "noValue" in config else value)
    return text, colour


DURATIONS = ((86400, " day"), (3600, " h"), (60, " min"))


def format_value(value: float | None, unit: str = "short", decimals: int | None = None) -> str:
    """A value in the panel's unit, close to how Grafana prints it."""
    if value is None or math.isnan(value):
        return "-"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if unit == "percentunit":
        return f"{value * 100:.{1 if decimals is None else decimals}f}%"
    if unit == "h":
        return format_value(value * 3600, "s", decimals)
    if unit == "s":
        for size, suffix in DURATIONS:
            if abs(value) >= size:
                return f"{value / size:.3g}{suffix}"
        if abs(value) >= 1 or value == 0:
            return f"{value:.{1 if decimals is None else decimals}f} s"
        return f"{value * 1000:.0f} ms"
    suffix = {"ops": " /s", "cpm": " /min"}.get(unit, "")
    for size, letter in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= size:
            return f"{value / size:.1f}{letter}{suffix}"
    if decimals is None:
        decimals = 0 if float(value).is_integer() else (2 if abs(value) < 10 else 1)
    return f"{value:.{decimals}f}{suffix}"


# --- Fetching ------------------------------------------------------------------------------

def resolve_variables(source: Source, dashboard: dict, window: Window,
                      given: dict[str, str]) -> dict[str, str]:
    """Each template variable's value: the one given, else its first value as Grafana picks:
    of `label_values`, the first in alphabetical order; of `query_result(sort_desc(...))`, the
    label of the series with the highest value at the window's end (the seller most at risk)."""
    values = dict(window.variables)
    regexes = queries.template_regexes(dashboard)
    for name, query in queries.template_queries(dashboard):
        if name in given:
            values[name] = given[name]
            continue
        if name in regexes:
            expr, label = queries.parse_query_result(query, regexes[name])
            ranked = sorted(source.range(queries.fill_variables(expr, values), window.end, window.end, window.step),
                            key=lambda item: -float(item["values"][-1][1]) if item["values"] else 0.0)
            found = [item["metric"][label] for item in ranked if label in item["metric"]]
        else:
            selector, label = queries.parse_label_values(query)
            found = sorted(source.label_values(
                label, queries.fill_variables(selector, values) if selector else None, window.start, window.end))
        if not found:
            raise QueryError(f"template variable ${name} ({query}) has no values in the last "
                             f"{window.variables['__range']}: pass --var {name}=VALUE")
        values[name] = found[0]
    return values


def fetch(source: Source, panel: dict, window: Window, values: dict[str, str]) -> dict[str, list[Series]]:
    """refId -> the series each target of the panel returns over the window. An instant target
    (stats, tables) is evaluated at the window's end only, as Grafana does: a series that has
    stopped being exported (a seller no longer projected to breach, or no longer in the top-K)
    is gone, not shown with the last value it had."""
    result = {}
    for target in panel.get("targets", []):
        expr = queries.fill_variables(target["expr"], values)
        start = window.end if target.get("instant") else window.start
        result[target["refId"]] = [
            Series(legend(target.get("legendFormat", ""), item["metric"]), item["metric"],
                   [float(t) for t, _ in item["values"]], [float(v) for _, v in item["values"]])
            for item in source.range(expr, start, window.end, window.step)]
    return result


# --- Drawing -------------------------------------------------------------------------------

@dataclasses.dataclass
class Box:
    """A panel's place on the figure, in figure fractions."""

    left: float
    bottom: float
    width: float
    height: float
    width_inches: float
    height_inches: float

    def inset(self, left: float = 0, right: float = 0, top: float = 0, bottom: float = 0) -> "Box":
        """The box shrunk by margins given in inches."""
        scale_x = self.width / self.width_inches
        scale_y = self.height / self.height_inches
        return Box(self.left + left * scale_x, self.bottom + bottom * scale_y,
                   self.width - (left + right) * scale_x, self.height - (top + bottom) * scale_y,
                   self.width_inches - left - right, self.height_inches - top - bottom)

    def rect(self) -> list[float]:
        return [self.left, self.bottom, self.width, self.height]


def panel_box(panel: dict, rows: int) -> Box:
    grid = panel["gridPos"]
    total_width = 24 * COLUMN_INCHES
    total_height = rows * ROW_INCHES + HEADER_INCHES
    margin = 0.06
    left = grid["x"] * COLUMN_INCHES + margin
    top = HEADER_INCHES + grid["y"] * ROW_INCHES + margin
    width = grid["w"] * COLUMN_INCHES - 2 * margin
    height = grid["h"] * ROW_INCHES - 2 * margin
    return Box(left / total_width, 1 - (top + height) / total_height, width / total_width,
               height / total_height, width, height)


def draw_frame(figure: Figure, panel: dict, box: Box) -> Box:
    """The panel's border and title; returns the area left for its content."""
    frame = figure.add_axes(box.rect())
    frame.set_axis_off()
    frame.add_patch(FancyBboxPatch((0, 0), 1, 1, boxstyle="round,pad=0,rounding_size=0.01",
                                   transform=frame.transAxes, facecolor="#FFFFFF",
                                   edgecolor="#D8D9DA", linewidth=1))
    frame.text(0.08 / box.width_inches, 1 - 0.14 / box.height_inches, panel.get("title", ""),
               transform=frame.transAxes,
               fontsize=10, fontweight="bold", va="center", ha="left", color="#202226")
    return box.inset(left=0.08, right=0.08, top=0.32, bottom=0.06)


def message(figure: Figure, area: Box, text: str, colour: str = NO_DATA) -> None:
    axes = figure.add_axes(area.rect())
    axes.set_axis_off()
    axes.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, color=colour, wrap=True,
              transform=axes.transAxes)


def draw_timeseries(figure: Figure, panel: dict, area: Box, data: dict[str, list[Series]],
                    window: Window) -> None:
    series = [s for ref in sorted(data) for s in data[ref]]
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    custom = defaults.get("custom", {})
    unit, decimals = defaults.get("unit", "short"), defaults.get("decimals")
    if not series:
        message(figure, area, defaults.get("noValue", "No data"))
        return
    legend_width = min(3.6, area.width_inches * 0.34)
    plot = figure.add_axes(area.inset(left=0.75, right=legend_width + 0.1, bottom=0.3).rect())
    stacked = custom.get("stacking", {}).get("mode") in ("normal", "percent")
    colours = []
    times = sorted({t for s in series for t in s.times})
    moments = [datetime.fromtimestamp(t, timezone.utc) for t in times]
    below = [0.0] * len(times)
    for index, item in enumerate(series):
        fixed = field_config(panel, item.name).get("color", {})
        colour = rgb(fixed["fixedColor"]) if fixed.get("mode") == "fixed" else PALETTE[index % len(PALETTE)]
        colours.append(colour)
        by_time = dict(zip(item.times, item.values))
        if stacked:
            top = [low + (0.0 if math.isnan(by_time.get(t, math.nan)) else by_time[t])
                   for low, t in zip(below, times)]
            plot.fill_between(moments, below, top, color=colour,
                              alpha=custom.get("fillOpacity", 30) / 100, linewidth=0)
            plot.plot(moments, top, color=colour, linewidth=1.2)
            below = top
        else:
            plot.plot([datetime.fromtimestamp(t, timezone.utc) for t in item.times], item.values,
                      color=colour, linewidth=1.5)
    steps = defaults.get("thresholds", {}).get("steps", [])
    style = custom.get("thresholdsStyle", {}).get("mode", "off")
    if style != "off":
        for step in steps[1:]:
            plot.axhline(step["value"], color=rgb(step["color"]), linewidth=1.2,
                         linestyle="--" if "dashed" in style else "-")
    low, high = plot.get_ylim()
    drawn = [value for item in series for value in item.values if not math.isnan(value)]
    if drawn and min(drawn) == max(drawn):
        # A flat line (a count that stayed 0): from 0 up, as Grafana draws it, not around it.
        low, high = min(0.0, drawn[0]), max(drawn[0], 0.0) + max(1.0, abs(drawn[0]))
    if "min" in defaults:
        low = defaults["min"]
    if "axisSoftMax" in custom:
        high = max(high, custom["axisSoftMax"])
    if style != "off" and steps[1:]:
        high = max(high, max(step["value"] for step in steps[1:]) * 1.1)
    plot.set_ylim(low, high if high > low else low + 1)
    plot.yaxis.set_major_locator(MaxNLocator(5))
    plot.yaxis.set_major_formatter(axis_formatter(unit, decimals, max(abs(low), abs(high))))
    plot.set_xlim(datetime.fromtimestamp(window.start, timezone.utc),
                  datetime.fromtimestamp(window.end, timezone.utc))
    plot.xaxis.set_major_locator(AutoDateLocator(minticks=3, maxticks=8, tz=timezone.utc))
    plot.xaxis.set_major_formatter(DateFormatter("%H:%M", tz=timezone.utc))
    plot.tick_params(labelsize=7.5, colors="#464C54")
    plot.grid(True, color="#EEEEEE", linewidth=0.8)
    for spine in plot.spines.values():
        spine.set_color("#D8D9DA")
    draw_legend(figure, area.inset(left=area.width_inches - legend_width), series, colours, unit, decimals)


def axis_formatter(unit: str, decimals: int | None, largest: float) -> Formatter:
    """Tick labels in the panel's unit; durations all in the unit of the largest tick, as Grafana."""
    if unit == "s":
        size, suffix = next(((size, suffix) for size, suffix in DURATIONS if largest >= size), (1, " s"))
        return FuncFormatter(lambda value, _: f"{value / size:.3g}{suffix}")
    return DistinctTicks(unit, decimals)


class DistinctTicks(Formatter):
    """Tick labels in the panel's unit with as many decimals as it takes to tell the ticks apart
    (2.79K, 2.80K, not 2.8K twice), as Grafana adds decimals to close ticks."""

    def __init__(self, unit: str, decimals: int | None) -> None:
        self.unit = unit
        self.decimals = decimals
        self.extra = 0

    def set_locs(self, locs) -> None:
        self.extra = 0
        while self.extra < 4 and len({self.label(value) for value in locs}) < len(set(locs)):
            self.extra += 1

    def label(self, value: float) -> str:
        text = format_value(value, self.unit, self.decimals)
        if not self.extra:
            return text
        for size, letter in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
            if abs(value) >= size and self.unit not in ("percentunit", "h"):
                suffix = {"ops": " /s", "cpm": " /min"}.get(self.unit, "")
                return f"{value / size:.{1 + self.extra}f}{letter}{suffix}"
        places = (self.decimals or 0) + self.extra
        if self.unit == "percentunit":
            return f"{value * 100:.{places}f}%"
        return f"{value:.{places}f}" + {"ops": " /s", "cpm": " /min"}.get(self.unit, "")

    def __call__(self, value: float, position=None) -> str:
        return self.label(value)


def draw_legend(figure: Figure, area: Box, series: list[Series], colours: list[str], unit: str,
                decimals: int | None) -> None:
    """Grafana's table legend: name, last value and max per series, as many as fit."""
    axes = figure.add_axes(area.rect())
    axes.set_axis_off()
    line = 0.19  # inches per row
    fit = max(1, int(area.height_inches / line) - 1)
    shown = series if len(series) <= fit else series[:fit - 1]
    characters = max(8, int(0.56 * area.width_inches * 72 / 4.0))  # about 4 points a character
    axes.text(0.80, 1, "last", transform=axes.transAxes, fontsize=7, color="#6E7079", va="top", ha="right")
    axes.text(0.99, 1, "max", transform=axes.transAxes, fontsize=7, color="#6E7079", va="top", ha="right")
    for row, (item, colour) in enumerate(zip(shown, colours), start=1):
        y = 1 - row * line / area.height_inches
        present = [v for v in item.values if not math.isnan(v)]
        axes.add_patch(Rectangle((0, y - 0.012), 0.04, 0.024 * 2, transform=axes.transAxes, color=colour))
        name = item.name if len(item.name) <= characters else item.name[:characters - 1] + "…"
        axes.text(0.06, y, name, transform=axes.transAxes, fontsize=7, va="center")
        axes.text(0.80, y, format_value(item.last(), unit, decimals), transform=axes.transAxes,
                  fontsize=7, va="center", ha="right")
        axes.text(0.99, y, format_value(max(present) if present else None, unit, decimals),
                  transform=axes.transAxes, fontsize=7, va="center", ha="right")
    if len(shown) < len(series):
        axes.text(0.06, 1 - (len(shown) + 1) * line / area.height_inches,
                  f"+ {len(series) - len(shown)} more", transform=axes.transAxes, fontsize=7,
                  color="#6E7079", va="center")


def draw_stat(figure: Figure, panel: dict, area: Box, data: dict[str, list[Series]]) -> None:
    """Big numbers, one per series, on the colour of the threshold step each value is in."""
    series = [s for ref in sorted(data) for s in data[ref]]
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    if not series:
        if "noValue" in defaults:
            series = [Series("", {}, [], [])]
        else:
            message(figure, area, "No data")
            return
    count = len(series)
    columns = max(1, min(count, math.floor(area.width_inches / max(0.9, area.height_inches * 0.7))))
    rows = math.ceil(count / columns)
    width, height = area.width_inches / columns, area.height_inches / rows
    for index, item in enumerate(series):
        row, column = divmod(index, columns)
        cell = Box(area.left + column * area.width / columns,
                   area.bottom + (rows - 1 - row) * area.height / rows,
                   area.width / columns, area.height / rows, width, height).inset(0.03, 0.03, 0.03, 0.03)
        text, colour = display(field_config(panel, item.name), item.last())
        axes = figure.add_axes(cell.rect())
        axes.set_axis_off()
        axes.add_patch(FancyBboxPatch((0, 0), 1, 1, boxstyle="round,pad=0,rounding_size=0.03",
                                      transform=axes.transAxes, facecolor=colour, edgecolor="none"))
        ink = "#202226" if colour in (rgb("yellow"), rgb("transparent")) else "#FFFFFF"
        size = max(9.0, min(30.0, cell.height_inches * 22, cell.width_inches * 72 / max(3, len(text)) * 1.4))
        if item.name:
            axes.text(0.5, 0.8, item.name, ha="center", va="center", transform=axes.transAxes,
                      fontsize=max(6.5, min(10.0, cell.width_inches * 72 / max(8, len(item.name)) * 1.6)),
                      color=ink)
        axes.text(0.5, 0.4 if item.name else 0.5, text, ha="center", va="center",
                  transform=axes.transAxes, fontsize=size, fontweight="bold", color=ink)


def table_rows(panel: dict, data: dict[str, list[Series]]) -> tuple[list[str], list[dict]]:
    """The table's columns and rows after its merge, organize and sortBy transformations."""
    merged: dict[tuple, dict] = {}
    for ref in sorted(data):
        for item in data[ref]:
            labels = {key: value for key, value in item.labels.items() if key != "__name__"}
            row = merged.setdefault(tuple(sorted(labels.items())), dict(labels))
            row[f"Value #{ref}"] = item.last()
    rows = list(merged.values())
    columns = sorted({column for row in rows for column in row})
    for transformation in panel.get("transformations", []):
        options = transformation.get("options", {})
        if transformation["id"] == "organize":
            excluded = {name for name, hide in options.get("excludeByName", {}).items() if hide}
            order = options.get("indexByName", {})
            renamed = options.get("renameByName", {})
            columns = sorted((c for c in columns if c not in excluded),
                             key=lambda c: (order.get(c, len(order)), c))
            rows = [{renamed.get(k, k): v for k, v in row.items() if k not in excluded} for row in rows]
            columns = [renamed.get(c, c) for c in columns]
        elif transformation["id"] == "sortBy" and options.get("sort"):
            # Grafana sorts on the first field given only.
            field, descending = options["sort"][0]["field"], options["sort"][0].get("desc", False)
            present = [row for row in rows if row.get(field) is not None]
            missing = [row for row in rows if row.get(field) is None]
            rows = sorted(present, key=lambda row: row[field], reverse=descending) + missing
    return columns, rows


def draw_table(figure: Figure, panel: dict, area: Box, data: dict[str, list[Series]]) -> None:
    columns, rows = table_rows(panel, data)
    if not rows:
        message(figure, area, "No data")
        return
    line = 0.2
    fit = max(1, int(area.height_inches / line) - 2)
    shown = rows[:fit]
    axes = figure.add_axes(area.rect())
    axes.set_axis_off()
    configs = {column: field_config(panel, column) for column in columns}
    cells, colours, inks = [], [], []
    for row in shown:
        cells.append([])
        colours.append([])
        inks.append([])
        for column in columns:
            value, config = row.get(column), configs[column]
            kind = config.get("custom", {}).get("cellOptions", {}).get("type")
            if isinstance(value, float) or value is None:
                text, colour = display(config, value)
                cells[-1].append(text)
            else:
                cells[-1].append(str(value))
            # Only values are coloured; an empty cell stays plain.
            coloured = kind if isinstance(value, float) else None
            colours[-1].append(colour if coloured == "color-background" else "#FFFFFF")
            inks[-1].append(colour if coloured == "color-text" else "#202226")
    height = min(1.0, (len(shown) + 1) * line / area.height_inches)
    grid = axes.table(cellText=cells, colLabels=columns, cellColours=colours, loc="upper center",
                      cellLoc="left", colLoc="left", bbox=[0, 1 - height, 1, height])
    grid.auto_set_font_size(False)
    grid.set_fontsize(8)
    for (row, column), cell in grid.get_celld().items():
        cell.set_edgecolor("#E6E7E8")
        if row == 0:
            cell.set_text_props(fontweight="bold", color="#464C54")
        else:
            cell.get_text().set_color(inks[row - 1][column])
    if len(rows) > len(shown):
        axes.text(0, 1 - height - 0.02, f"+ {len(rows) - len(shown)} more rows", transform=axes.transAxes,
                  fontsize=7.5, color="#6E7079", va="top")


def render_dashboard(source: Source, dashboard: dict, window: Window, given: dict[str, str],
                     out: Path) -> tuple[bool, list[str]]:
    """Draw one dashboard into `out`: whether it was written, and the problems met."""
    problems: list[str] = []
    try:
        values = resolve_variables(source, dashboard, window, given)
    except QueryError as error:
        return False, [f"{dashboard['uid']}: {error}"]
    panels = sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    figure = Figure(figsize=(24 * COLUMN_INCHES, rows * ROW_INCHES + HEADER_INCHES), facecolor="#F4F5F5")
    chosen = "  ".join(f"{name}={values[name]}" for name, _ in queries.template_queries(dashboard))
    span = (f"{datetime.fromtimestamp(window.start, timezone.utc):%Y-%m-%d %H:%M} to "
            f"{datetime.fromtimestamp(window.end, timezone.utc):%H:%M} UTC")
    figure.text(0.005, 1 - 0.3 / (rows * ROW_INCHES + HEADER_INCHES), f"{dashboard['title']}   {chosen}",
                fontsize=13, fontweight="bold", va="center", color="#202226")
    figure.text(0.995, 1 - 0.3 / (rows * ROW_INCHES + HEADER_INCHES), span, fontsize=9, va="center",
                ha="right", color="#464C54")
    drawers = {"timeseries": functools.partial(draw_timeseries, window=window),
               "stat": draw_stat, "table": draw_table}
    for panel in panels:
        area = draw_frame(figure, panel, panel_box(panel, rows))
        drawer = drawers.get(panel["type"])
        if drawer is None:
            message(figure, area, f"panel type {panel['type']!r} is not drawn")
            continue
        try:
            data = fetch(source, panel, window, values)
        except QueryError as error:
            problems.append(f"{dashboard['uid']} / {panel['title']}: {error}")
            message(figure, area, f"query failed:\n{error}", colour=rgb("red"))
            continue
        drawer(figure, panel, area, data)
    out.parent.mkdir(parents=True, exist_ok=True)
    ignore = out.parent / ".gitignore"
    if out.parent == OUTPUT_DIR and not ignore.exists():
        ignore.write_text("# Written by dashboards/render.py: drawn dashboards are never committed.\n*\n",
                          encoding="utf-8")
    figure.savefig(out, dpi=100, facecolor=figure.get_facecolor())
    return True, problems


def load_dashboard(name: str) -> dict:
    """A dashboard by key (overview) or uid (cancelwatch-overview)."""
    keys = {key: key for key in names.DASHBOARD_UIDS} | {uid: key for key, uid in names.DASHBOARD_UIDS.items()}
    if name not in keys:
        raise SystemExit(f"render: no dashboard {name!r}; choose from {', '.join(sorted(keys))}")
    return json.loads(generate.path_of(keys[name]).read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.render", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dashboards", nargs="*", metavar="DASHBOARD",
                        help="key or uid (overview, seller, pipeline); default: all three")
    parser.add_argument("--prometheus-url", default=DEFAULT_PROMETHEUS_URL,
                        help=f"Prometheus to query (default {DEFAULT_PROMETHEUS_URL})")
    parser.add_argument("--minutes", type=int, default=60, help="how far back to draw (default 60)")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="value of a template variable, e.g. seller_id=S0012 (repeatable)")
    parser.add_argument("--out", type=Path, default=OUTPUT_DIR,
                        help="folder of the PNG files (default .render/)")
    args = parser.parse_args(argv)
    if args.minutes < 1:
        parser.error("--minutes must be at least 1")
    given = {}
    for item in args.var:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--var {item!r} is not NAME=VALUE")
        given[name] = value
    source = Prometheus(args.prometheus_url)
    try:
        source.ready()
    except QueryError as error:
        print(f"render: {error}; start the stack with `make stack-up` or pass --prometheus-url",
              file=sys.stderr)
        return 2
    window = Window.last(args.minutes, scrape_interval_seconds())
    problems = []
    for name in args.dashboards or list(names.DASHBOARD_UIDS):
        dashboard = load_dashboard(name)
        out = args.out / f"{dashboard['uid']}.png"
        written, found = render_dashboard(source, dashboard, window, given, out)
        problems += found
        if written:
            print(f"wrote {out}")
    for problem in problems:
        print(f"render: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
