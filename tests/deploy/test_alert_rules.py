"""Checks of the Prometheus alert rules (deploy/prometheus/alerts.yml).

promtool comes from Debian's `prometheus` package (apt-get install prometheus);
these tests fail, rather than skip, without it.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
GENERATOR = REPO_ROOT / "deploy" / "k8s" / "gen-prometheusrule.py"
PROMETHEUS_RULE = REPO_ROOT / "deploy" / "k8s" / "base" / "prometheusrule.yaml"

RUNBOOK_BASE = "https://github.com/apaas/apaas-erp-sync/blob/main/README.md"

# README.md carries one "Runbook: <AlertName>" section per alert; its GitHub
# anchor is runbook-<alertname lower-cased>. Adding or renaming an alert means
# adding its runbook section too.
EXPECTED_ALERTS = frozenset(
    {
        "ErpSyncConsumerLagHigh",
        "ErpSyncLagNearRetention",
        "ErpSyncErpRetrying",
        "ErpSyncErpRejecting",
        "ErpSyncErpAuthFailure",
        "ErpSyncDeadLetters",
        "ErpSyncDeadLettersPending",
        "ErpSyncNoSuccessfulPush",
        "ErpSyncConsumerDown",
        # issue 13, "Alert and dashboard gaps" and defect 12
        "ErpSyncBrokerUnreachable",
        "ErpSyncNoPartitionsAssigned",
        "ErpSyncCommitErrors",
        "ErpSyncRebalanceStorm",
        "ErpSyncPartitionStuck",
        "ErpSyncOffsetsReset",
        "ErpSyncDeadLetterValuesOmitted",
        # issue 11: routes and parked records
        "ErpSyncRouteDown",
        "ErpSyncParkedNearDeadline",
        "ErpSyncRetryDeadlineExceeded",
        "ErpSyncParkedGrowing",
        "ErpSyncUnknownStatus",
    }
)
SEVERITIES = frozenset({"critical", "warning", "info"})

# Alerts on an event that already happened (a dead letter, a reset offset): they
# fire at once and their expression's window keeps them firing. Every other
# alert needs a `for:`, so that a start-up, a rebalance or one answer cannot page.
EVENT_ALERTS = frozenset({"ErpSyncDeadLetters", "ErpSyncOffsetsReset", "ErpSyncDeadLetterValuesOmitted",
                          "ErpSyncRetryDeadlineExceeded", "ErpSyncUnknownStatus"})
README = REPO_ROOT / "README.md"


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found on PATH: apt-get install prometheus")
    return path


def _run(*args: str, cwd: Path = REPO_ROOT) -> tuple[int, str]:
    result = subprocess.run(
        [_promtool(), *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=120
    )
    return result.returncode, result.stdout + result.stderr


def _alert_rules() -> list[dict]:
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def _recording_rules() -> list[dict]:
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in rules["groups"] for rule in group["rules"] if "record" in rule]


def _duration_s(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)([smhd])", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"unexpected duration {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_prometheusrule", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ promtool


def test_promtool_check_rules() -> None:
    code, output = _run("check", "rules", str(ALERTS))
    assert code == 0, output
    assert "SUCCESS" in output, output


def test_promtool_unit_tests() -> None:
    code, output = _run("test", "rules", str(ALERTS_TEST))
    assert code == 0, output
    assert "SUCCESS" in output, output
    assert "FAILED" not in output, output


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """A wrong expectation makes `promtool test rules` fail (the check above is not vacuous)."""
    tests = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))
    tests["rule_files"] = [str(ALERTS)]
    case = next(t for t in tests["tests"] if any(r["exp_alerts"] for r in t["alert_rule_test"]))
    for rule_test in case["alert_rule_test"]:
        rule_test["exp_alerts"] = []  # claim that nothing fires
    tests["tests"] = [case]
    broken = tmp_path / "broken_test.yml"
    broken.write_text(yaml.safe_dump(tests))
    code, output = _run("test", "rules", str(broken))
    assert code != 0 and "FAILED" in output, output


def test_promtool_check_example_config() -> None:
    code, output = _run("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert code == 0, output
    assert "SUCCESS" in output, output


def test_promtool_check_compose_config(tmp_path: Path) -> None:
    """The compose Prometheus config, laid out as in the container (alerts.yml beside it)."""
    shutil.copy(REPO_ROOT / "deploy" / "compose" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    code, output = _run("check", "config", str(tmp_path / "prometheus.yml"))
    assert code == 0, output
    assert "SUCCESS" in output, output


def test_scrape_configs_use_the_alerted_job_name() -> None:
    for config_file in (
        PROMETHEUS_DIR / "prometheus.yml",
        REPO_ROOT / "deploy" / "compose" / "prometheus.yml",
    ):
        config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
        jobs = {c["job_name"] for c in config["scrape_configs"]}
        assert "apaas-erp-sync" in jobs, f'{config_file}: the alerts select job="apaas-erp-sync"'
        assert config["rule_files"] == ["alerts.yml"], config_file


# ------------------------------------------------------------- rule contents


def test_expected_alerts_exist() -> None:
    names = [rule["alert"] for rule in _alert_rules()]
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    assert set(names) == EXPECTED_ALERTS


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda r: r["alert"])
def test_alert_has_severity_and_annotations(rule: dict) -> None:
    labels = rule.get("labels") or {}
    annotations = rule.get("annotations") or {}
    assert labels.get("severity") in SEVERITIES, f"severity must be one of {sorted(SEVERITIES)}"
    for key in ("summary", "description", "runbook_url"):
        assert isinstance(annotations.get(key), str) and annotations[key].strip(), f"missing {key}"
    expected_url = f"{RUNBOOK_BASE}#runbook-{rule['alert'].lower()}"
    assert annotations["runbook_url"] == expected_url


def test_auth_failures_are_a_separate_critical_alert() -> None:
    rules = {rule["alert"]: rule for rule in _alert_rules()}
    auth = rules["ErpSyncErpAuthFailure"]
    assert auth["labels"]["severity"] == "critical"
    for pattern in ("AuthFailure.*", "UnauthorizedOperation.*", "IpNotInWhitelist.*"):
        assert pattern in auth["expr"]
        # ...and the generic ERP alerts leave those codes to it.
        assert pattern in rules["ErpSyncErpRetrying"]["expr"]
        assert pattern in rules["ErpSyncErpRejecting"]["expr"]


def test_every_alert_has_a_runbook_section() -> None:
    """Each runbook_url points at a "#### Runbook: <AlertName>" heading of README.md."""
    headings = set(re.findall(r"^#### Runbook: (\S+)\s*$", README.read_text(encoding="utf-8"), re.MULTILINE))
    names = {rule["alert"] for rule in _alert_rules()}
    assert names <= headings, f"README.md has no runbook for {sorted(names - headings)}"
    assert headings <= names, f"README.md has runbooks for alerts that do not exist: {sorted(headings - names)}"


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda r: r["alert"])
def test_only_event_alerts_fire_without_for(rule: dict) -> None:
    if rule["alert"] in EVENT_ALERTS:
        assert "for" not in rule, "an event alert fires at once; its window keeps it firing"
    else:
        assert _duration_s(rule.get("for", "")) >= 120, "a condition alert needs a `for:` of 2m or more"


def test_a_single_auth_answer_cannot_page() -> None:
    """Issue 13: ErpSyncErpAuthFailure paged critical on one answer. Its `for:` must outlast its window."""
    auth = next(rule for rule in _alert_rules() if rule["alert"] == "ErpSyncErpAuthFailure")
    durations = re.findall(r"\[(\w+)\]", auth["expr"]) + re.findall(r"offset (\w+)", auth["expr"])
    windows = {_duration_s(d) for d in durations}
    assert windows == {300}, windows
    assert _duration_s(auth["for"]) > max(windows)


def test_rules_file_has_alerts_only() -> None:
    """No recording rules: tests/integration/test_observability.py checks every metric a rule reads
    against a real scrape of the consumer, and a recorded series is not in it."""
    assert not _recording_rules()


# --------------------------------------------------------------- unit tests


def _rule_tests() -> list[dict]:
    tests = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))
    assert tests["rule_files"] == ["alerts.yml"], "alerts_test.yml must test alerts.yml"
    return [rt for case in tests["tests"] for rt in case.get("alert_rule_test") or []]


@pytest.mark.parametrize("alert", sorted(EXPECTED_ALERTS))
def test_each_alert_has_firing_and_quiet_unit_tests(alert: str) -> None:
    rule_tests = [rt for rt in _rule_tests() if rt["alertname"] == alert]
    assert any(rt.get("exp_alerts") for rt in rule_tests), f"no unit test where {alert} fires"
    assert any(not rt.get("exp_alerts") for rt in rule_tests), f"no unit test where {alert} stays quiet"


def test_unit_tests_only_name_existing_alerts() -> None:
    unknown = {rt["alertname"] for rt in _rule_tests()} - {r["alert"] for r in _alert_rules()}
    assert not unknown, f"alerts_test.yml tests alerts that do not exist: {sorted(unknown)}"


# --------------------------------------------------- generated PrometheusRule


def test_generated_prometheusrule_is_up_to_date() -> None:
    generator = _load_generator()
    expected = generator.render(ALERTS.read_text(encoding="utf-8"))
    assert PROMETHEUS_RULE.read_text(encoding="utf-8") == expected, (
        "deploy/k8s/base/prometheusrule.yaml is stale: run python3 deploy/k8s/gen-prometheusrule.py"
    )


def test_generated_prometheusrule_has_the_same_groups() -> None:
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text(encoding="utf-8"))
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]


def test_generator_check_mode() -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_generator_output_follows_the_rules_file() -> None:
    """A change to alerts.yml changes the generated text, so the staleness test can fail."""
    generator = _load_generator()
    text = ALERTS.read_text(encoding="utf-8")
    changed = text.replace("severity: warning", "severity: info", 1)
    assert changed != text
    assert generator.render(changed) != PROMETHEUS_RULE.read_text(encoding="utf-8")
    with pytest.raises(ValueError):
        generator.render(text + "\nextra_key: true\n")
