"""Find the Prometheus metric names used by the Grafana dashboard (and by PromQL in general).

The metric names are an interface between the consumer and its dashboard and
alerts. These helpers pull them out of PromQL text without a full parser, so
tests can compare them with the documented list (tests/test_dashboard.py) or,
later, with a real scrape of a running consumer:

    used = metric_names_in_dashboard(DASHBOARD)
    exported = metric_names_in_exposition(httpx.get(".../metrics").text)
    assert used <= exported

What counts as a metric name: an identifier that is not followed by "(" (a
function or aggregation call), is not a PromQL keyword, aggregation operator or
modifier, and is not inside a label matcher {..}, a range/subquery [..], a
by/without/on/ignoring/group_left/group_right label list, or a string.
Histogram/summary series suffixes (_bucket, _sum, _count) are reduced to the
base name, e.g. erp_sync_erp_request_duration_seconds_bucket ->
erp_sync_erp_request_duration_seconds.

Grafana variables ($topic, ${datasource}, $__rate_interval, ...) are tolerated.
A selector without a metric name ({__name__=~"..."}) yields no name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "dashboard_expressions",
    "metric_names_in_dashboard",
    "metric_names_in_exposition",
    "metric_names_in_promql",
    "normalise_metric_name",
]

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Words that look like identifiers but are never metric names. Aggregation
# operators are listed because `sum by (x) (...)` puts a keyword, not "(",
# right after them.
PROMQL_KEYWORDS = frozenset(
    {
        # binary set operators / modifiers
        "and",
        "or",
        "unless",
        "atan2",
        "bool",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "start",
        "end",
        # aggregation operators
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
        # float literals
        "inf",
        "nan",
    }
)

_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\$?[A-Za-z_][A-Za-z0-9_]*|\[\[[^\]]*\]\]")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_COMMENT = re.compile(r"#[^\n]*")
_LABEL_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
_AT_MODIFIER = re.compile(r"@\s*(?:start\s*\(\s*\)|end\s*\(\s*\)|[-+]?[0-9.eE+]+)")
_TOKEN = re.compile(
    r"(?P<number>(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)[A-Za-z0-9_]*)"
    r"|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)"
)


def normalise_metric_name(name: str) -> str:
    """Reduce a histogram/summary series name to its base metric name."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def metric_names_in_promql(expr: str, *, normalise: bool = True) -> set[str]:
    """Return the metric names referenced by one PromQL expression."""
    text = _GRAFANA_VARIABLE.sub(" 1 ", expr)
    text = _STRING.sub(' "" ', text)
    text = _COMMENT.sub(" ", text)
    text = _LABEL_MATCHERS.sub(" ", text)
    previous = None
    while previous != text:  # subqueries may nest brackets: [5m:1m] inside [..]
        previous = text
        text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    text = _AT_MODIFIER.sub(" ", text)

    names: set[str] = set()
    for match in _TOKEN.finditer(text):
        ident = match.group("ident")
        if ident is None:
            continue
        if ident.lower() in PROMQL_KEYWORDS:
            continue
        rest = text[match.end() :].lstrip()
        if rest.startswith("("):
            continue  # function call
        names.add(normalise_metric_name(ident) if normalise else ident)
    return names


def _walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        # Collapsed rows keep their panels inside the row object.
        yield from _walk_panels(panel.get("panels") or [])


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, rows and panels nested in rows included."""
    yield from _walk_panels(dashboard.get("panels") or [])


def dashboard_expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every Prometheus query variable."""
    found: list[tuple[str, str]] = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if expr:
                found.append((f"panel {panel.get('title')!r} target {target.get('refId')}", expr))
    for variable in (dashboard.get("templating") or {}).get("list") or []:
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if not query:
            continue
        expr = _variable_query_to_promql(query)
        if expr:
            found.append((f"variable {variable.get('name')!r}", expr))
    return found


def _variable_query_to_promql(query: str) -> str | None:
    """The PromQL inside a Grafana Prometheus variable query, if any."""
    query = query.strip()
    match = re.fullmatch(r"label_values\((.*)\)", query, re.DOTALL)
    if match:
        args = match.group(1)
        # label_values(label) has no selector; label_values(selector, label) has.
        depth = 0
        for index, char in enumerate(args):
            if char in "({[":
                depth += 1
            elif char in ")}]":
                depth -= 1
            elif char == "," and depth == 0:
                return args[:index]
        return None
    match = re.fullmatch(r"query_result\((.*)\)", query, re.DOTALL)
    if match:
        return match.group(1)
    if re.fullmatch(r"(label_names|metrics)\(.*\)", query, re.DOTALL):
        return None
    return query


def metric_names_in_dashboard(path: str | Path) -> set[str]:
    """Metric names used by a Grafana dashboard JSON file (panels and variables)."""
    dashboard = json.loads(Path(path).read_text(encoding="utf-8"))
    names: set[str] = set()
    for _where, expr in dashboard_expressions(dashboard):
        names |= metric_names_in_promql(expr)
    return names


def metric_names_in_exposition(text: str) -> set[str]:
    """Metric names offered by a Prometheus text exposition (a /metrics scrape).

    Uses both `# TYPE` lines (a labelled metric without children has no samples
    yet) and sample lines; `_created` series are dropped and histogram/summary
    suffixes normalised, so the result is comparable with
    metric_names_in_dashboard().
    """
    names: set[str] = set()
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "TYPE" and not parts[2].endswith("_created"):
                names.add(normalise_metric_name(parts[2]))
            continue
        name = re.split(r"[{\s]", line, maxsplit=1)[0]
        if name.endswith("_created"):
            continue
        names.add(normalise_metric_name(name))
    return names
