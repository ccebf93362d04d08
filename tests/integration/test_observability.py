"""Metrics, probes, dashboard and Prometheus against a real running consumer (issue 4).

One consumer runs against the real broker and the real ERP stub while the stub answers a retry code,
an HTTP 503 and a reject; the test scrapes /metrics, checks /healthz and /readyz, checks every
metric of the Grafana dashboard and the alert rules against the real scrape, and lets a real
Prometheus (Debian package) scrape the consumer and answer queries for the lag and error-code series.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from consumer.devstack.erp_stub import ErpStub, StubClient
from consumer.devstack.events import encode, spec_example_event
from dev.harness import (
    Broker,
    ConsumerProcess,
    consumer_env,
    create_topic,
    free_port,
    produce,
    start_consumer,
    unique,
)
from tests.deploy.dashboard_promql import metric_names_in_dashboard, metric_names_in_exposition, metric_names_in_promql

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.kafka
REJECTED_ID = 900_000_000_000_000_003


def _event(instance_id: int) -> bytes:
    return encode({**spec_example_event(), "instance_id": instance_id})


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture(scope="module")
def running(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A consumer that has delivered 6 records through a retry code, a 503 and a reject."""
    stub = ErpStub()
    stub.start()
    client = StubClient(stub.base_url)
    client.behaviour(
        script=[{"status": 200, "code": "InternalError.DbError", "message": "db down"},
                {"status": 503, "body": "<html>maintenance</html>"}],
        rules=[{"instance_id": REJECTED_ID, "response": {"status": 200, "code": "InvalidParameter.FlowCode",
                                                        "message": "unknown flow"}}],
    )
    topic = create_topic(broker, unique("obs"), 2)
    create_topic(broker, topic + ".dlq", 1)
    ids = [900_000_000_000_000_001 + i for i in range(6)]
    produce(broker, topic, [(str(i).encode(), _event(i)) for i in ids])
    produce(broker, topic, [(b"x", b"\x02garbage")])  # a decode dead letter
    tmp = tmp_path_factory.mktemp("obs")
    env = consumer_env(broker, topic, unique("obs"), stub.url)
    cp = start_consumer(env, tmp / "consumer.log")
    base = f"http://127.0.0.1:{cp.metrics_port}"
    try:
        client.wait_for(8, timeout_s=60)  # 6 records + 2 retries
        deadline = time.monotonic() + 30
        scrape = ""
        while time.monotonic() < deadline:
            try:
                scrape = httpx.get(f"{base}/metrics", timeout=5).text
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            s = _samples(scrape)
            if (_value(s, "erp_sync_dead_letters_total", **{"class": "erp", "code": "InvalidParameter.FlowCode"})
                    and _value(s, "erp_sync_commits_total", result="ok")):
                break
            time.sleep(0.2)
        yield {"cp": cp, "base": base, "scrape": scrape, "topic": topic, "tmp": tmp, "stub": stub}
    finally:
        if cp.proc.poll() is None:
            cp.proc.send_signal(signal.SIGTERM)
            cp.wait(30)
        stub.stop()


def test_scrape_counts_every_outcome_and_code(running: dict[str, Any]) -> None:
    s = _samples(running["scrape"])
    topic = running["topic"]
    assert _value(s, "erp_sync_messages_total", topic=topic, outcome="pushed") == 5.0
    assert _value(s, "erp_sync_messages_total", topic=topic, outcome="dead_lettered") == 2.0
    requests = {"route": "default"}
    assert _value(s, "erp_sync_erp_requests_total", result="retry", code="InternalError.DbError", **requests) == 1.0
    assert _value(s, "erp_sync_erp_requests_total", result="retry", code="HTTP_503", route="default") == 1.0
    assert _value(s, "erp_sync_erp_requests_total", result="reject", code="InvalidParameter.FlowCode",
                  **requests) == 1.0
    assert _value(s, "erp_sync_erp_requests_total", result="accepted", code="OK", route="default") == 5.0
    assert _value(s, "erp_sync_dead_letters_total", **{"class": "decode", "code": "InvalidAvro"}) == 1.0
    assert _value(s, "erp_sync_erp_request_duration_seconds_count", route="default") == 8.0
    assert _value(s, "erp_sync_partitions_assigned") == 2.0
    assert _value(s, "erp_sync_rebalances_total", event="assign") == 1.0
    assert _value(s, "erp_sync_in_flight") == 0.0
    assert (_value(s, "erp_sync_last_accepted_timestamp_seconds") or 0) > time.time() - 120


def test_lag_is_zero_for_every_partition_once_caught_up(running: dict[str, Any]) -> None:
    topic = running["topic"]
    deadline = time.monotonic() + 30
    while True:
        s = _samples(httpx.get(f"{running['base']}/metrics", timeout=5).text)
        lags = [_value(s, "erp_sync_consumer_lag", topic=topic, partition=str(p)) for p in (0, 1)]
        lag_s = [_value(s, "erp_sync_consumer_lag_seconds", topic=topic, partition=str(p)) for p in (0, 1)]
        if lags == [0.0, 0.0] and lag_s == [0.0, 0.0] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert lags == [0.0, 0.0]
    assert lag_s == [0.0, 0.0]


def test_probes_say_why(running: dict[str, Any]) -> None:
    live = httpx.get(f"{running['base']}/healthz", timeout=5)
    ready = httpx.get(f"{running['base']}/readyz", timeout=5)
    assert live.status_code == 200 and live.text.startswith("ok: last poll")
    assert ready.status_code == 200 and ready.text == "ok: 2 partitions assigned\n"
    assert httpx.get(f"{running['base']}/nope", timeout=5).status_code == 404


def test_dashboard_and_alert_metrics_exist_in_a_real_scrape(running: dict[str, Any]) -> None:
    scraped = metric_names_in_exposition(httpx.get(f"{running['base']}/metrics", timeout=5).text)
    dashboard = metric_names_in_dashboard(ROOT / "deploy" / "grafana" / "apaas-erp-sync.json")
    assert dashboard, "no metric found in the dashboard"
    assert dashboard - scraped == set()
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    in_rules: set[str] = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            in_rules |= metric_names_in_promql(rule["expr"])
    assert in_rules - scraped - {"up"} == set()


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian package prometheus not installed")
def test_real_prometheus_scrapes_lag_and_error_codes(running: dict[str, Any]) -> None:
    tmp: Path = running["tmp"]
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "apaas-erp-sync",
                            "static_configs": [{"targets": [f"127.0.0.1:{running['cp'].metrics_port}"]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp / "prometheus.log", "w"))  # noqa: SIM115
    api = f"http://127.0.0.1:{port}/api/v1/query"
    try:
        def query(q: str) -> list[dict[str, Any]]:
            body = httpx.get(api, params={"query": q}, timeout=5).json()
            assert body["status"] == "success", body
            result: list[dict[str, Any]] = body["data"]["result"]
            return result

        deadline = time.monotonic() + 60
        lag: list[dict[str, Any]] = []
        codes: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                lag = query(f'erp_sync_consumer_lag{{topic="{running["topic"]}"}}')
                codes = query('erp_sync_erp_requests_total{job="apaas-erp-sync"}')
                up = query('up{job="apaas-erp-sync"}')
            except (httpx.HTTPError, ValueError):  # starting: refused, or a plain-text 503
                time.sleep(0.5)
                continue
            if len(lag) == 2 and codes and up and up[0]["value"][1] == "1":
                break
            time.sleep(0.5)
        assert sorted(r["metric"]["partition"] for r in lag) == ["0", "1"]
        assert all(r["value"][1] == "0" for r in lag)
        by_code = {(r["metric"]["result"], r["metric"]["code"]): r["value"][1] for r in codes}
        assert by_code == {("accepted", "OK"): "5", ("retry", "InternalError.DbError"): "1",
                           ("retry", "HTTP_503"): "1", ("reject", "InvalidParameter.FlowCode"): "1"}
    finally:
        prom.terminate()
        prom.wait(20)


def test_sigterm_after_observing_exits_zero(running: dict[str, Any]) -> None:
    cp: ConsumerProcess = running["cp"]
    cp.proc.send_signal(signal.SIGTERM)
    assert cp.wait(30) == 0
    lines = [json.loads(line) for line in cp.log().splitlines() if line.startswith("{")]
    stopped = [rec for rec in lines if rec.get("event") == "stopped"]
    assert len(stopped) == 1
    assert stopped[0]["message"].startswith("stopped: 5 pushed, 0 duplicates, 0 skipped, 2 dead-lettered")


def test_readiness_of_a_member_without_partitions() -> None:
    from consumer.metrics import Health

    h = Health()
    h.broker_up = True
    assert h.readiness() == (False, "waiting for a partition assignment (joining the consumer group)")
    h.joined = True
    assert h.readiness() == (True, "ok: member of the group, 0 partitions assigned (more consumers than partitions)")
    h.broker_up, h.reason = False, "Connection refused"
    assert h.readiness() == (False, "broker not reachable: Connection refused")
