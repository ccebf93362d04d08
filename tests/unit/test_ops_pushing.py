"""The tools' pushes (consumer/ops/pushing.py): run's push routine under run's key-ordered dispatcher.

The ERP is an ``httpx.MockTransport`` with an async handler that waits like a slow ERP; the real
broker and the real HTTP path are in tests/integration/test_tools.py and test_tools_throughput.py.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections import defaultdict
from pathlib import Path

import httpx
import orjson
import pytest

from consumer.cli import build_parser
from consumer.delivery.push import PushResult
from consumer.erp.verdict import Outcome
from consumer.errors import UsageError, ValidationError
from consumer.ops.console import Progress
from consumer.ops.pushing import ToolPushes
from consumer.ops.replay import PushOptions
from consumer.settings import load_settings

OK = b'{"Response": {"RequestId": "r-1", "Data": {}}}'


class SlowErp:
    """Answers after ``latency_s``; records the order of requests and the concurrency reached."""

    def __init__(self, latency_s: float, answers: dict[str, list[str]] | None = None) -> None:
        self.latency_s = latency_s
        self.answers = answers or {}
        self.running = 0
        self.peak = 0
        self.started: list[str] = []
        self.finished: list[str] = []
        self.times: list[float] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        key = request.headers["idempotency-key"]
        self.started.append(key)
        self.times.append(time.monotonic())
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.latency_s)
        finally:
            self.running -= 1
        self.finished.append(key)
        script = self.answers.get(key)
        if script:
            code = script.pop(0)
            body = {"Response": {"RequestId": "r-2", "Error": {"Code": code, "Message": code}}}
            return httpx.Response(200, content=orjson.dumps(body))
        return httpx.Response(200, content=OK)


def pushes(erp: SlowErp, in_flight: int, rate: float | None = None, **env: str) -> ToolPushes:
    settings = load_settings({"ERP_SYNC_ERP_URL": "https://erp.test/push",
                              "ERP_SYNC_RETRY_BACKOFF_INITIAL_SECONDS": "0.05",
                              "ERP_SYNC_RETRY_BACKOFF_MAX_SECONDS": "0.2", **env})
    return ToolPushes(settings, Progress("test", 0, stream=io.StringIO()), in_flight, rate,
                      transport=httpx.MockTransport(erp))


def test_records_of_different_keys_run_concurrently_and_one_key_stays_in_order() -> None:
    erp = SlowErp(0.02)
    results: dict[str, PushResult] = {}
    order: dict[int, list[int]] = defaultdict(list)
    started = time.monotonic()
    with pushes(erp, in_flight=16) as tool:
        for i in range(320):
            k = i % 40
            name = f"F-{i}"

            def done(result: PushResult, name: str = name, k: int = k, i: int = i) -> None:
                results[name] = result
                order[k].append(i)
            tool.submit(k, b"{}", name, done)
        tool.finish()
    took = time.monotonic() - started
    assert len(results) == 320 and all(r.verdict is not None and r.verdict.outcome is Outcome.ACCEPTED
                                       for r in results.values())
    assert erp.peak == 16 and tool.peak_running == 16
    assert took < 320 * 0.02 / 4  # one at a time would take 6.4 s
    for k, seen in order.items():  # settled in submission order per key…
        assert seen == sorted(seen), k
    per_key_sent: dict[int, list[int]] = defaultdict(list)
    for name in erp.started:  # …and sent in that order, one at a time
        i = int(name[2:])
        per_key_sent[i % 40].append(i)
    assert all(v == sorted(v) for v in per_key_sent.values())


def test_the_reader_never_gets_more_than_max_outstanding_records_ahead() -> None:
    erp = SlowErp(0.01)
    most = 0
    with pushes(erp, in_flight=4) as tool:
        assert tool.max_outstanding == 16
        for i in range(100):
            tool.submit(i, b"{}", f"F-{i}", lambda _r: None)
            most = max(most, tool.outstanding)
        tool.finish()
    assert most == 16 and tool.outstanding == 0


def test_the_rate_limit_caps_requests_per_second() -> None:
    erp = SlowErp(0.0)
    with pushes(erp, in_flight=32, rate=50) as tool:
        for i in range(100):
            tool.submit(i, b"{}", f"F-{i}", lambda _r: None)
        tool.finish()
    span = erp.times[-1] - erp.times[0]
    assert 0.85 <= span <= 1.5, span  # a burst of 50, then 50 more at 50/s


def test_retry_answers_go_through_the_one_push_routine_and_a_reject_is_final() -> None:
    erp = SlowErp(0.0, answers={"F-1": ["InternalError", "InternalError"], "F-2": ["InvalidParameter.X"]})
    results: dict[str, PushResult] = {}
    with pushes(erp, in_flight=4) as tool:
        for name in ("F-1", "F-2", "F-3"):
            tool.submit(name, b"{}", name, lambda r, name=name: results.__setitem__(name, r))
        tool.finish()
    assert results["F-1"].attempts == 3 and results["F-1"].verdict is not None
    assert results["F-1"].verdict.outcome is Outcome.ACCEPTED
    assert results["F-2"].attempts == 1 and results["F-2"].verdict is not None
    assert results["F-2"].verdict.outcome is Outcome.REJECT and results["F-2"].verdict.code == "InvalidParameter.X"
    assert erp.started.count("F-1") == 3


def test_cancel_gives_up_the_pushes_waiting_for_a_retry() -> None:
    erp = SlowErp(0.0, answers={"F-1": ["ServiceUnavailable"] * 1000})
    results: list[PushResult] = []
    with pushes(erp, in_flight=4, ERP_SYNC_RETRY_BACKOFF_INITIAL_SECONDS="5",
                ERP_SYNC_RETRY_BACKOFF_MAX_SECONDS="5") as tool:
        tool.submit(1, b"{}", "F-1", results.append)
        tool.submit(2, b"{}", "F-2", results.append)
        deadline = time.monotonic() + 5
        while len(erp.started) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        tool.cancel()
        started = time.monotonic()
        tool.finish()
        assert time.monotonic() - started < 1.0
    assert tool.cancelled and len(results) == 2
    assert any(r.verdict is None for r in results)


@pytest.mark.parametrize(("argv", "env", "expected"), [
    ((), {}, (32, None)),
    ((), {"ERP_SYNC_MAX_IN_FLIGHT": "8", "ERP_SYNC_ERP_MAX_REQUESTS_PER_SECOND": "20"}, (8, 20.0)),
    (("--max-in-flight", "4", "--max-requests-per-second", "5"), {"ERP_SYNC_ERP_MAX_REQUESTS_PER_SECOND": "20"},
     (4, 5.0)),
    (("--max-requests-per-second", "0"), {"ERP_SYNC_ERP_MAX_REQUESTS_PER_SECOND": "20"}, (32, None)),
])
@pytest.mark.parametrize("command", [("replay", "--from", "2024-01-01T00:00Z", "--to", "2024-01-02T00:00Z"),
                                     ("dlq", "replay")])
def test_push_options_default_to_the_settings_of_run(command: tuple[str, ...], argv: tuple[str, ...],
                                                     env: dict[str, str], expected: tuple[int, float | None]) -> None:
    settings = load_settings({"ERP_SYNC_ERP_URL": "https://erp.test/push", **env})
    args = build_parser().parse_args([*command, *argv])
    options = PushOptions.of(settings, args)
    assert (options.max_in_flight, options.max_requests_per_second) == expected


@pytest.mark.parametrize("argv", [("--max-in-flight", "0"), ("--max-requests-per-second", "-1")])
def test_bad_push_options_are_usage_errors(argv: tuple[str, ...]) -> None:
    settings = load_settings({"ERP_SYNC_ERP_URL": "https://erp.test/push"})
    with pytest.raises(UsageError, match=argv[0]):
        PushOptions.of(settings, build_parser().parse_args(["dlq", "replay", *argv]))


ROUTES = """\
routes:
  - name: hr
    match: {flow_codes: [1001]}
    url: https://hr.test/push
  - name: finance
    match: {topics: [wf]}
    url: https://finance.test/push
"""


def test_replays_go_to_the_route_run_would_use(tmp_path: Path) -> None:
    """Without routing, a tool pushed every record to ERP_SYNC_ERP_URL (issue 11: tools follow the routes)."""
    from tests.unit.doubles import FakeMessage

    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES)
    hosts: list[tuple[str, str]] = []

    async def erp(request: httpx.Request) -> httpx.Response:
        hosts.append((request.headers["idempotency-key"], request.url.host))
        return httpx.Response(200, content=OK)

    settings = load_settings({"ERP_SYNC_ROUTES_FILE": str(path)})
    with ToolPushes(settings, Progress("test", 0, stream=io.StringIO()), 4, None,
                    transport=httpx.MockTransport(erp)) as tool:
        hr = tool.route_of(FakeMessage("wf", 0, 1), 1001)
        finance = tool.route_of(FakeMessage("wf", 0, 2), 7)
        parked = tool.route_of(FakeMessage("wf.dlq", 0, 3, headers=[("erp_sync.route", b"hr")]), 7, "wf")
        gone = tool.route_of(FakeMessage("wf.dlq", 0, 4, headers=[("erp_sync.route", b"old")]), 7, "wf")
        assert [r.name for r in (hr, finance, parked, gone)] == ["hr", "finance", "hr", "finance"]
        with pytest.raises(ValidationError, match=r"^NoRoute: no route matches it \(topic orders, FlowCode 7\)"):
            tool.route_of(FakeMessage("orders", 0, 5), 7)
        results: list[PushResult] = []
        for key, route in (("1001-1", hr), ("7-2", finance), ("7-3", parked)):
            tool.submit(key, b"{}", key, results.append, route)
        tool.finish()
    assert sorted(hosts) == [("1001-1", "hr.test"), ("7-2", "finance.test"), ("7-3", "hr.test")]
    assert [r.verdict.outcome for r in results if r.verdict] == [Outcome.ACCEPTED] * 3


def test_a_tool_pushes_32_at_once_when_run_adapts() -> None:
    settings = load_settings({"ERP_SYNC_ERP_URL": "https://erp.test/push"})
    assert settings.max_in_flight == "auto"
    assert PushOptions.of(settings).max_in_flight == 32
    assert PushOptions.of(load_settings({"ERP_SYNC_ERP_URL": "https://erp.test/push",
                                         "ERP_SYNC_MAX_IN_FLIGHT": "5"})).max_in_flight == 5
