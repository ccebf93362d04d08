"""Checks of the Grafana dashboard deploy/grafana/apaas-erp-sync.json.

The metric names the consumer exports are an interface: the dashboard and the
alert rules may only use the documented ones (EXPORTED_METRICS below).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.dashboard_promql import (
    dashboard_expressions,
    iter_panels,
    metric_names_in_dashboard,
    metric_names_in_exposition,
    metric_names_in_promql,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "apaas-erp-sync.json"
ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
PROVISIONING = REPO_ROOT / "deploy" / "grafana" / "provisioning"

# The documented metrics of the consumer (histograms by their base name), plus
# the prometheus-client defaults (process collector on Linux, GC and platform
# collectors).
EXPORTED_METRICS = frozenset(
    {
        "erp_sync_messages_total",
        "erp_sync_consumer_lag",
        "erp_sync_consumer_lag_seconds",
        "erp_sync_erp_requests_total",
        "erp_sync_erp_request_duration_seconds",
        "erp_sync_dead_letters_total",
        "erp_sync_in_flight",
        "erp_sync_in_flight_limit",
        "erp_sync_retry_backoff_seconds",
        "erp_sync_commits_total",
        "erp_sync_rebalances_total",
        "erp_sync_last_accepted_timestamp_seconds",
        "erp_sync_topic_retention_seconds",
        "erp_sync_partitions_assigned",
        "erp_sync_paused_partitions",
        "erp_sync_dead_letters_pending",
        "erp_sync_build_info",
        # issue 13: the gaps the alerts could not see
        "erp_sync_broker_up",
        "erp_sync_committed_offset",
        "erp_sync_partitions_without_committed_offset_total",
        "erp_sync_dead_letter_values_omitted_total",
        # issue 11: routes and parked records
        "erp_sync_route_circuit_open",
        "erp_sync_parked_records",
        "erp_sync_parked_oldest_age_seconds",
        "erp_sync_retry_deadline_seconds",
        "erp_sync_skipped_total",
        "erp_sync_unknown_status_records_total",
        # prometheus-client defaults
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
        "process_max_fds",
        "python_gc_objects_collected_total",
        "python_gc_objects_uncollectable_total",
        "python_gc_collections_total",
        "python_info",
    }
)

# Metrics the dashboard must show (the operator's first questions).
REQUIRED_IN_DASHBOARD = frozenset(
    {
        "erp_sync_messages_total",
        "erp_sync_consumer_lag",
        "erp_sync_consumer_lag_seconds",
        "erp_sync_erp_requests_total",
        "erp_sync_erp_request_duration_seconds",
        "erp_sync_dead_letters_total",
        "erp_sync_retry_backoff_seconds",
        "erp_sync_rebalances_total",
        "erp_sync_commits_total",
        "erp_sync_partitions_assigned",
        "erp_sync_paused_partitions",
        "erp_sync_broker_up",
        "erp_sync_committed_offset",
        "erp_sync_partitions_without_committed_offset_total",
        "erp_sync_dead_letter_values_omitted_total",
        # issue 11: routes and parked records
        "erp_sync_route_circuit_open",
        "erp_sync_parked_records",
        "erp_sync_parked_oldest_age_seconds",
        "erp_sync_retry_deadline_seconds",
        "erp_sync_topic_retention_seconds",
    }
)

# Series that only carry meaning per source topic: panels must honour $topic.
TOPIC_LABELLED = frozenset(
    {
        "erp_sync_messages_total",
        "erp_sync_consumer_lag",
        "erp_sync_consumer_lag_seconds",
        "erp_sync_topic_retention_seconds",
        "erp_sync_committed_offset",
        "erp_sync_partitions_without_committed_offset_total",
    }
)

# How a selector honours $topic: the topics chosen, or (issue 11) their retry topics.
TOPIC_FILTERS = ('topic=~"$topic"', 'topic=~"($topic)\\\\.retry"')

# Series that exist only per route (issue 11): panels must honour $route.
ROUTE_LABELLED = frozenset(
    {
        "erp_sync_route_circuit_open",
        "erp_sync_parked_records",
        "erp_sync_parked_oldest_age_seconds",
        "erp_sync_retry_deadline_seconds",
    }
)

# The prometheus-client defaults, which the consumer does not declare itself.
CLIENT_DEFAULT_METRICS = frozenset(name for name in EXPORTED_METRICS if not name.startswith("erp_sync_"))

DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


# --------------------------------------------------------------- metric names


def test_dashboard_uses_only_documented_metrics() -> None:
    used = metric_names_in_dashboard(DASHBOARD)
    assert used, "no metric found in the dashboard: the extraction is broken"
    unknown = used - EXPORTED_METRICS
    assert not unknown, f"dashboard uses metrics the consumer does not export: {sorted(unknown)}"


def test_dashboard_shows_the_key_metrics() -> None:
    missing = REQUIRED_IN_DASHBOARD - metric_names_in_dashboard(DASHBOARD)
    assert not missing, f"dashboard has no panel for: {sorted(missing)}"


def test_alert_rules_use_only_documented_metrics() -> None:
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    used: set[str] = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            names = metric_names_in_promql(rule["expr"])
            assert names, f"{rule.get('alert')}: no metric found in {rule['expr']!r}"
            used |= names
    unknown = used - EXPORTED_METRICS - {"up"}
    assert not unknown, f"alert rules use metrics the consumer does not export: {sorted(unknown)}"


def test_documented_metrics_are_the_consumer_metrics() -> None:
    """EXPORTED_METRICS is what consumer.metrics.Metrics registers: a renamed metric fails here, not on call."""
    from prometheus_client import CollectorRegistry, generate_latest

    from consumer.metrics import Metrics

    registry = CollectorRegistry()
    Metrics("apaas.workflow.completed", registry=registry)
    exported = metric_names_in_exposition(generate_latest(registry).decode())
    assert exported == EXPORTED_METRICS - CLIENT_DEFAULT_METRICS


def test_paused_panel_says_what_pauses(dashboard: dict) -> None:
    """Issue 13, defect 8: the consumer pauses only at ERP_SYNC_MAX_BUFFERED_RECORDS (resumes at half)."""
    paused = [p for p in iter_panels(dashboard) if "erp_sync_paused_partitions" in json.dumps(p.get("targets"))]
    assert paused
    for panel in paused:
        description = panel.get("description", "")
        assert "ERP_SYNC_MAX_BUFFERED_RECORDS" in description, panel["title"]
        assert "half" in description, panel["title"]
        assert "in-flight limit)" not in description and "or the shared ERP backoff" not in description


# ------------------------------------------------------------ panel structure


def test_dashboard_basics(dashboard: dict) -> None:
    assert dashboard["uid"] == "apaas-erp-sync"
    assert dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41, "expected a Grafana 10/11 schema (~39)"
    ids = [panel["id"] for panel in iter_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_datasource_and_topic_variables(dashboard: dict) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    datasource = variables.get("datasource")
    assert datasource is not None, "missing ${datasource} variable"
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    topic = variables.get("topic")
    assert topic is not None, "missing $topic variable"
    assert topic["type"] == "query"
    assert topic["datasource"] == DATASOURCE_REF
    assert topic.get("includeAll") is True


def test_every_panel_has_title_and_datasource(dashboard: dict) -> None:
    panels = list(iter_panels(dashboard))
    assert any(p.get("type") == "row" and p.get("panels") for p in panels), (
        "expected at least one collapsed row with nested panels"
    )
    for panel in panels:
        where = f"panel id {panel.get('id')} ({panel.get('type')})"
        assert isinstance(panel.get("title"), str) and panel["title"].strip(), f"{where}: no title"
        assert panel.get("datasource") == DATASOURCE_REF, f"{where}: datasource must be ${{datasource}}"
        assert "gridPos" in panel, f"{where}: no gridPos"
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets") or []
        assert targets, f"{where} {panel['title']!r}: no query"
        ref_ids = [t.get("refId") for t in targets]
        assert len(ref_ids) == len(set(ref_ids)) and all(ref_ids), f"{where}: bad refIds {ref_ids}"
        for target in targets:
            assert target.get("datasource") == DATASOURCE_REF, f"{where}: target datasource"
            assert target.get("expr", "").strip(), f"{where}: empty expression"


def test_topic_labelled_metrics_follow_the_topic_variable(dashboard: dict) -> None:
    for where, expr in dashboard_expressions(dashboard):
        if where.startswith("variable"):
            continue
        for name in metric_names_in_promql(expr) & TOPIC_LABELLED:
            selectors = re.findall(rf"\b{re.escape(name)}\s*\{{([^}}]*)\}}", expr)
            assert selectors and all(any(f in s for f in TOPIC_FILTERS) for s in selectors), (
                f'{where}: {name} should be filtered with one of {TOPIC_FILTERS}: {expr}'
            )


def test_route_labelled_metrics_follow_the_route_variable(dashboard: dict) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    route = variables.get("route")
    assert route is not None, "missing $route variable"
    assert route["type"] == "query" and route["datasource"] == DATASOURCE_REF
    assert route.get("includeAll") is True and route.get("allValue") == ".*"
    for where, expr in dashboard_expressions(dashboard):
        if where.startswith("variable"):
            continue
        for name in metric_names_in_promql(expr) & ROUTE_LABELLED:
            selectors = re.findall(rf"\b{re.escape(name)}\s*\{{([^}}]*)\}}", expr)
            assert selectors and all('route=~"$route"' in s for s in selectors), (
                f'{where}: {name} should be filtered with route=~"$route": {expr}'
            )


def test_routes_row_covers_issue_11(dashboard: dict) -> None:
    """Issue 11: by route, requests by code, circuit state, parked records, oldest parked age (against the
    deadline); retry-topic lag in messages and in seconds."""
    row = next((p for p in dashboard["panels"] if p.get("type") == "row" and p["title"] == "Routes"), None)
    assert row is not None, "no Routes row"
    rows = sorted((p for p in dashboard["panels"] if p.get("type") == "row"), key=lambda p: p["gridPos"]["y"])
    below = [r["gridPos"]["y"] for r in rows if r["gridPos"]["y"] > row["gridPos"]["y"]]
    end = below[0] if below else 10**6
    in_row = [
        p
        for p in dashboard["panels"]
        if p.get("type") != "row" and row["gridPos"]["y"] < p["gridPos"]["y"] < end
    ]
    exprs = [t["expr"] for p in in_row for t in p.get("targets") or []]

    def shown(pattern: str) -> bool:
        return any(re.search(pattern, e) for e in exprs)

    assert shown(r"by \(route, result, code\) \(rate\(erp_sync_erp_requests_total\{"), "requests by route and code"
    assert shown(r"\(erp_sync_route_circuit_open\{"), "circuit state per route"
    assert shown(r"by \(route\) \(erp_sync_parked_records\{"), "parked records per route"
    assert shown(r"by \(route\) \(erp_sync_parked_oldest_age_seconds\{"), "oldest parked age per route"
    assert shown(r"erp_sync_retry_deadline_seconds\{"), "the deadline next to the oldest parked age"
    retry = TOPIC_FILTERS[1]
    assert shown(rf"\berp_sync_consumer_lag\{{{re.escape(retry)}\}}"), "retry-topic lag in messages"
    assert shown(rf"\berp_sync_consumer_lag_seconds\{{{re.escape(retry)}\}}"), "retry-topic lag in seconds"


def test_dashboard_expressions_parse_as_promql(dashboard: dict, tmp_path: Path) -> None:
    """promtool parses every expression (as recording rules) after variable substitution."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: apt-get install prometheus")
    rules = []
    for index, (_where, expr) in enumerate(dashboard_expressions(dashboard)):
        rules.append({"record": f"dashboard:expr_{index}", "expr": _substitute_grafana_variables(expr)})
    rules_file = tmp_path / "dashboard-exprs.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "SUCCESS" in output, output


# Synthetic series for every documented metric, shaped like a real scrape of one pod.
_POD = 'job="apaas-erp-sync",instance="pod-a"'
SYNTHETIC_SERIES = {
    f'erp_sync_messages_total{{{_POD},topic="apaas.workflow.completed",outcome="pushed"}}': "0+10x30",
    f'erp_sync_consumer_lag{{{_POD},topic="apaas.workflow.completed",partition="0"}}': "5x30",
    f'erp_sync_consumer_lag_seconds{{{_POD},topic="apaas.workflow.completed",partition="0"}}': "12x30",
    f'erp_sync_topic_retention_seconds{{{_POD},topic="apaas.workflow.completed"}}': "604800x30",
    f'erp_sync_erp_requests_total{{{_POD},result="accepted",code="OK",route="default"}}': "0+10x30",
    f'erp_sync_erp_requests_total{{{_POD},result="retry",code="HTTP_503",route="default"}}': "0+1x30",
    f'erp_sync_erp_request_duration_seconds_bucket{{{_POD},route="default",le="0.1"}}': "0+5x30",
    f'erp_sync_erp_request_duration_seconds_bucket{{{_POD},route="default",le="+Inf"}}': "0+10x30",
    f'erp_sync_erp_request_duration_seconds_sum{{{_POD},route="default"}}': "0+1x30",
    f'erp_sync_erp_request_duration_seconds_count{{{_POD},route="default"}}': "0+10x30",
    f'erp_sync_dead_letters_total{{{_POD},class="erp",code="InvalidParameter"}}': "0+1x30",
    f"erp_sync_in_flight{{{_POD}}}": "3x30",
    f'erp_sync_retry_backoff_seconds{{{_POD},route="default"}}': "0x30",
    f'erp_sync_route_circuit_open{{{_POD},route="default"}}': "0x30",
    f'erp_sync_parked_records{{{_POD},route="default"}}': "2x30",
    f'erp_sync_parked_oldest_age_seconds{{{_POD},route="default"}}': "90x30",
    f'erp_sync_retry_deadline_seconds{{{_POD},route="default"}}': "604800x30",
    # the retry topic of the source topic: parked records are consumed like a source
    f'erp_sync_messages_total{{{_POD},topic="apaas.workflow.completed",outcome="parked"}}': "0+1x30",
    f'erp_sync_messages_total{{{_POD},topic="apaas.workflow.completed.retry",outcome="pushed"}}': "0+1x30",
    f'erp_sync_consumer_lag{{{_POD},topic="apaas.workflow.completed.retry",partition="0"}}': "2x30",
    f'erp_sync_consumer_lag_seconds{{{_POD},topic="apaas.workflow.completed.retry",partition="0"}}': "60x30",
    f'erp_sync_topic_retention_seconds{{{_POD},topic="apaas.workflow.completed.retry"}}': "604800x30",
    f'erp_sync_committed_offset{{{_POD},topic="apaas.workflow.completed.retry",partition="0"}}': "10+1x30",
    f'erp_sync_dead_letters_total{{{_POD},class="erp",code="RetryDeadlineExceeded"}}': "0x10 1x20",
    f'erp_sync_commits_total{{{_POD},result="ok"}}': "0+10x30",
    f'erp_sync_commits_total{{{_POD},result="error"}}': "0x30",
    f'erp_sync_rebalances_total{{{_POD},event="assign"}}': "0+1x30",
    f"erp_sync_last_accepted_timestamp_seconds{{{_POD}}}": "0+60x30",
    f"erp_sync_partitions_assigned{{{_POD}}}": "6x30",
    f"erp_sync_paused_partitions{{{_POD}}}": "0x30",
    f"erp_sync_dead_letters_pending{{{_POD}}}": "0x30",
    f'erp_sync_build_info{{{_POD},version="0.1.0"}}': "1x30",
    f"erp_sync_broker_up{{{_POD}}}": "1x30",
    f'erp_sync_committed_offset{{{_POD},topic="apaas.workflow.completed",partition="0"}}': "1000+10x30",
    f'erp_sync_partitions_without_committed_offset_total{{{_POD},topic="apaas.workflow.completed"}}': "_x5 6x25",
    f"erp_sync_dead_letter_values_omitted_total{{{_POD}}}": "0x30",
    f"process_cpu_seconds_total{{{_POD}}}": "0+6x30",
    f"process_resident_memory_bytes{{{_POD}}}": "100000000x30",
    # Another job's process metrics: the joins on erp_sync_build_info must drop them.
    'process_cpu_seconds_total{job="node",instance="node-1"}': "0+60x30",
}


def _substitute_grafana_variables(expr: str) -> str:
    expr = re.sub(r"\$__(rate_)?interval|\$__range", "5m", expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)  # only valid inside label matchers


def test_every_dashboard_query_returns_data(dashboard: dict, tmp_path: Path) -> None:
    """Evaluate each panel query on synthetic series of one healthy pod: none may come back empty.

    Catches label mistakes in joins and filters that a syntax check cannot. Each
    query becomes an alert `count(<query>) > 0` that must fire in promtool.
    """
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: apt-get install prometheus")
    expressions = [(w, e) for w, e in dashboard_expressions(dashboard) if not w.startswith("variable")]
    rules = [
        {"alert": f"DashboardQuery{index}", "expr": f"count({_substitute_grafana_variables(expr)}) > 0"}
        for index, (_where, expr) in enumerate(expressions)
    ]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in SYNTHETIC_SERIES.items()],
                "alert_rule_test": [
                    {"eval_time": "20m", "alertname": rule["alert"], "exp_alerts": [{"exp_labels": {}}]}
                    for rule in rules
                ],
            }
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        [promtool, "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        empty = [expressions[int(m)] for m in re.findall(r"alertname: DashboardQuery(\d+)", output)]
        pytest.fail(f"queries returning no data: {empty}\n{output[-2000:]}")
    assert "SUCCESS" in output, output


def test_panels_do_not_overlap(dashboard: dict) -> None:
    def check(panels: list[dict]) -> None:
        cells: dict[tuple[int, int], str] = {}
        for panel in panels:
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, f"{panel['title']!r} is wider than the grid"
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                    cells[(x, y)] = panel["title"]
            if panel.get("type") == "row" and panel.get("panels"):
                check(panel["panels"])

    check(dashboard["panels"])


def test_grafana_provisioning_files() -> None:
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    assert datasources["apiVersion"] == 1
    assert [d["type"] for d in datasources["datasources"]] == ["prometheus"]
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "apaas-erp-sync.yml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


# ------------------------------------------------------------ helper module


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            "sum by (topic, outcome) "
            '(rate(erp_sync_messages_total{topic=~"$topic", outcome!="x"}[$__rate_interval]))',
            {"erp_sync_messages_total"},
        ),
        (
            "histogram_quantile(0.99, sum(rate(erp_sync_erp_request_duration_seconds_bucket[5m])) by (le))",
            {"erp_sync_erp_request_duration_seconds"},
        ),
        (
            "sum(rate(a_seconds_sum[5m])) / sum(rate(a_seconds_count[5m]))",
            {"a_seconds"},
        ),
        ('up{job="apaas-erp-sync"} == 0 or absent(up{job="apaas-erp-sync"})', {"up"}),
        (
            "max by (topic, partition) (lag) > on (topic) group_left () 0.8 * max by (topic) (ret > 0)",
            {"lag", "ret"},
        ),
        ("x unless x offset 5m or increase(x[5m]) > bool 1e3", {"x"}),
        ("time() - last_ts > 300 and on (job, instance) sum without (le) (lag) > 0", {"last_ts", "lag"}),
        ("max_over_time(rate(c_total[1m])[1h:5m]) @ end()", {"c_total"}),
        ('label_replace(m, "dst", "$1", "src", "(by|on) sum(x)")', {"m"}),
        (
            "rate(process_cpu_seconds_total[5m]) * on (job, instance) group_left () info_metric",
            {"process_cpu_seconds_total", "info_metric"},
        ),
        ("vector(1) + Inf - NaN", set()),
    ],
)
def test_metric_name_extraction(expr: str, expected: set[str]) -> None:
    assert metric_names_in_promql(expr) == expected


def test_extraction_reports_unknown_metrics(tmp_path: Path) -> None:
    """The subset check above can fail: an undocumented name is reported."""
    board = {
        "panels": [
            {
                "type": "row",
                "title": "r",
                "collapsed": True,
                "panels": [{"title": "p", "targets": [{"expr": "rate(not_a_real_metric_total[5m])"}]}],
            }
        ],
        "templating": {
            "list": [
                {
                    "name": "t",
                    "type": "query",
                    "query": {"query": 'label_values(erp_sync_consumer_lag{x="1"}, topic)'},
                },
                {"name": "d", "type": "datasource", "query": "prometheus"},
            ]
        },
    }
    path = tmp_path / "board.json"
    path.write_text(json.dumps(board))
    names = metric_names_in_dashboard(path)
    assert names == {"not_a_real_metric_total", "erp_sync_consumer_lag"}
    assert names - EXPORTED_METRICS == {"not_a_real_metric_total"}


def test_exposition_names_match_dashboard_names() -> None:
    """metric_names_in_exposition() normalises a real prometheus-client scrape like the dashboard."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    registry = CollectorRegistry()
    Counter("erp_sync_messages", "m", ["topic", "outcome"], registry=registry).labels("t", "pushed").inc()
    Counter("erp_sync_dead_letters", "d", ["class", "code"], registry=registry)  # no child yet
    Histogram("erp_sync_erp_request_duration_seconds", "h", registry=registry).observe(0.2)
    Gauge("erp_sync_in_flight", "g", registry=registry).set(3)
    names = metric_names_in_exposition(generate_latest(registry).decode())
    assert names == {
        "erp_sync_messages_total",
        "erp_sync_dead_letters_total",
        "erp_sync_erp_request_duration_seconds",
        "erp_sync_in_flight",
    }
