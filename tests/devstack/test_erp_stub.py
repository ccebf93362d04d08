"""The ERP stub over real HTTP: default validation, behaviour control, records, stats, keep-alive."""

from __future__ import annotations

import concurrent.futures
import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from http.client import HTTPConnection, HTTPException
from pathlib import Path
from typing import Any

import httpx
import pytest

from consumer.devstack.erp_stub import ErpStub, StubClient, format_summary, validate_body
from consumer.devstack.events import spec_example_event
from consumer.transform import erp_request

ROOT = Path(__file__).resolve().parents[2]
SPEC_BODY, SPEC_KEY = erp_request(spec_example_event())
SPEC_INSTANCE_ID = 1427810976874430514


@pytest.fixture(scope="module")
def stub() -> Iterator[ErpStub]:
    with ErpStub() as running:
        yield running


@pytest.fixture
def ctl(stub: ErpStub) -> Iterator[StubClient]:
    with stub.client() as client:
        client.reset()
        yield client
        client.reset()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0, verify=False) as client:  # plain HTTP: skip loading the CA bundle
        yield client


def body_with(**changes: Any) -> bytes:
    """The spec example body with top-level fields replaced (None removes the field)."""
    doc = json.loads(SPEC_BODY)
    for name, value in changes.items():
        if value is None:
            doc.pop(name, None)
        else:
            doc[name] = value
    return json.dumps(doc).encode()


def user_with(**changes: Any) -> bytes:
    """The spec example body with StartUser fields replaced (Ellipsis removes the field)."""
    doc = json.loads(SPEC_BODY)
    for name, value in changes.items():
        if value is ...:
            doc["StartUser"].pop(name)
        else:
            doc["StartUser"][name] = value
    return json.dumps(doc).encode()


def push(http: httpx.Client, stub: ErpStub, body: bytes = SPEC_BODY, key: str | None = SPEC_KEY,
         **kwargs: Any) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return http.post(stub.url, content=body, headers=headers, **kwargs)


def error_code(response: httpx.Response) -> str | None:
    error = response.json()["Response"].get("Error")
    return None if error is None else error["Code"]


# ---------------------------------------------------------------------------------- default answers


def test_success_answer_shape(stub: ErpStub, ctl: StubClient, http: httpx.Client) -> None:
    response = push(http, stub)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    doc = response.json()
    assert set(doc) == {"Response"}
    assert set(doc["Response"]) == {"RequestId", "Data"}
    assert doc["Response"]["Data"] == {}
    assert uuid.UUID(doc["Response"]["RequestId"]).version == 4
    [record] = ctl.wait_for(1)
    assert record["status"] == 200
    assert record["code"] == "OK"
    assert record["request_id"] == doc["Response"]["RequestId"]


def test_two_answers_have_distinct_request_ids(stub: ErpStub, ctl: StubClient, http: httpx.Client) -> None:
    ids = {push(http, stub).json()["Response"]["RequestId"] for _ in range(3)}
    assert len(ids) == 3


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json at all", "InvalidParameter"),
        (b"", "InvalidParameter"),
        (b"[1, 2, 3]", "InvalidParameter"),
        (b'"a string"', "InvalidParameter"),
        (b'{"FlowCode": NaN}', "InvalidParameter"),
        (body_with(FlowCode=None), "MissingParameter.FlowCode"),
        (body_with(InstanceId=None), "MissingParameter.InstanceId"),
        (body_with(EndTime=None), "MissingParameter.EndTime"),
        (body_with(StartUser=None), "MissingParameter.StartUser"),
        (user_with(SourceUid=...), "MissingParameter.StartUser.SourceUid"),
        (user_with(TenantUid=...), "MissingParameter.StartUser.TenantUid"),
        (body_with(FlowCode="1425737370216521773"), "InvalidParameter.FlowCode"),
        (body_with(InstanceId=1.5), "InvalidParameter.InstanceId"),
        (body_with(EndTime=True), "InvalidParameter.EndTime"),
        (body_with(StartTime="2024-11-29"), "InvalidParameter.StartTime"),
        (body_with(StartUser="someone"), "InvalidParameter.StartUser"),
        (user_with(SourceUid=123), "InvalidParameter.StartUser.SourceUid"),
        (user_with(SourceUid=""), "InvalidParameter.StartUser.SourceUid"),
        (user_with(TenantUid=None), "InvalidParameter.StartUser.TenantUid"),
        (body_with(VariableInfos=[1]), "InvalidParameter.VariableInfos"),
        (b'{"FlowCode": 1, "InstanceId": 9223372036854775808, "EndTime": 1, '
         b'"StartUser": {"SourceUid": "a", "TenantUid": "b"}}', "InvalidParameter.InstanceId"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_validation_answers(stub: ErpStub, ctl: StubClient, http: httpx.Client, body: bytes, code: str) -> None:
    response = push(http, stub, body)
    assert response.status_code == 200  # Tencent style: the verdict is in the body
    error = response.json()["Response"]["Error"]
    assert error["Code"] == code
    assert error["Message"]
    assert uuid.UUID(response.json()["Response"]["RequestId"])
    assert ctl.stats()["by_code"] == {code: 1}


def test_optional_fields_may_be_absent(stub: ErpStub, ctl: StubClient, http: httpx.Client) -> None:
    response = push(http, stub, body_with(StartTime=None, VariableInfos=None))
    assert error_code(response) is None
    assert response.json()["Response"]["Data"] == {}


def test_validate_body_directly() -> None:
    assert validate_body(SPEC_BODY) == ("OK", "", SPEC_INSTANCE_ID)
    code, _, instance_id = validate_body(b'{"InstanceId": 123456789012345678901234567890}')
    assert code == "MissingParameter.FlowCode"
    assert instance_id == 123456789012345678901234567890


# ---------------------------------------------------------------------------------- behaviour control


def test_script_is_consumed_in_order_then_validating_answer(stub: ErpStub, ctl: StubClient,
                                                            http: httpx.Client) -> None:
    ctl.behaviour(script=[
        {"code": "InternalError.DbError", "message": "db down"},
        {"status": 503},
        {"accept": True},
        {"code": "InvalidParameter.FlowCode"},
    ])
    first = push(http, stub)
    assert first.status_code == 200
    assert first.json()["Response"]["Error"] == {"Code": "InternalError.DbError", "Message": "db down"}
    second = push(http, stub)
    assert second.status_code == 503
    assert error_code(push(http, stub)) is None
    assert error_code(push(http, stub)) == "InvalidParameter.FlowCode"
    assert error_code(push(http, stub)) is None  # script exhausted: the validating answer
    assert error_code(push(http, stub, b"{}")) == "MissingParameter.FlowCode"
    codes = [r["code"] for r in ctl.requests()]
    assert codes == ["InternalError.DbError", "HTTP_503", "OK", "InvalidParameter.FlowCode", "OK",
                     "MissingParameter.FlowCode"]
    assert ctl.current_behaviour()["script"] == []


def test_rules_by_instance_id_with_times(stub: ErpStub, ctl: StubClient, http: httpx.Client) -> None:
    other = body_with(InstanceId=1427810976874430999)
    ctl.behaviour(rules=[{"instance_id": SPEC_INSTANCE_ID, "times": 2,
                          "response": {"code": "ResourceUnavailable", "message": "busy"}}])
    assert error_code(push(http, stub)) == "ResourceUnavailable"
    assert error_code(push(http, stub, other, key="k-other")) is None
    assert error_code(push(http, stub)) == "ResourceUnavailable"
    assert error_code(push(http, stub)) is None  # times used up
    assert ctl.current_behaviour()["rules"][0]["times"] == 0


def test_rules_by_idempotency_key_unlimited_and_before_script(stub: ErpStub, ctl: StubClient,
                                                             http: httpx.Client) -> None:
    ctl.behaviour(
        rules=[{"idempotency_key": "k-bad", "response": {"code": "InvalidParameter.VariableInfos"}}],
        script=[{"code": "InternalError"}],
    )
    for _ in range(3):
        assert error_code(push(http, stub, key="k-bad")) == "InvalidParameter.VariableInfos"
    assert error_code(push(http, stub, key="k-good")) == "InternalError"  # the script is still there
    assert error_code(push(http, stub, key="k-good")) is None


def test_default_answer_after_rules_and_script(stub: ErpStub, ctl: StubClient, http: httpx.Client) -> None:
    ctl.behaviour(
        default={"code": "RequestLimitExceeded", "message": "slow down"},
        script=[{"accept": True}],
        rules=[{"instance_id": 1, "response": {"accept": True}}],
    )
    assert error_code(push(http, stub)) is None  # script
    assert error_code(push(http, stub)) == "RequestLimitExceeded"
    assert error_code(push(http, stub)) == "RequestLimitExceeded"
    assert error_code(push(http, stub, body_with(InstanceId=1))) is None  # rule
    ctl.behaviour()  # omitted fields: back to the start values
    assert error_code(push(http, stub)) is None


def test_request_id_can_be_fixed(stub: ErpStub, ctl: StubClient, http: httpx.Client) -> None:
    ctl.behaviour(script=[{"code": "InternalError", "request_id": "req-42"}])
    assert push(http, stub).json()["Response"]["RequestId"] == "req-42"
    assert ctl.requests()[0]["request_id"] == "req-42"


@pytest.mark.parametrize(
    ("spec", "label"),
    [
        ({"body": "<html><body>502 Bad Gateway</body></html>", "headers": {"Content-Type": "text/html"}},
         "InvalidResponse"),
        ({"body": ""}, "InvalidResponse"),
        ({"body": "\x00\x01garbage{"}, "InvalidResponse"),
        ({"body": '{"Response": {"RequestId": "r", "Error": {"Code": "", "Message": ""}, "Data": {}}}'}, "OK"),
        ({"body": '{"Response": {"Error": {"Code": "FailedOperation", "Message": "x"}}}'}, "FailedOperation"),
        ({"status": 502, "body": "bad gateway"}, "HTTP_502"),
    ],
)
def test_raw_bodies_are_sent_verbatim(stub: ErpStub, ctl: StubClient, http: httpx.Client,
                                      spec: dict[str, Any], label: str) -> None:
    ctl.behaviour(default=spec)
    response = push(http, stub)
    assert response.status_code == spec.get("status", 200)
    assert response.content == spec["body"].encode()
    if "headers" in spec:
        assert response.headers["content-type"] == "text/html"
    [record] = ctl.requests()
    assert record["code"] == label


def test_retry_after_header_and_status(stub: ErpStub, ctl: StubClient, http: httpx.Client) -> None:
    ctl.behaviour(script=[{"status": 429, "headers": {"Retry-After": "2"}, "code": "RequestLimitExceeded"}])
    response = push(http, stub)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert error_code(response) == "RequestLimitExceeded"
    assert ctl.requests()[0]["code"] == "HTTP_429"


def test_close_gives_the_client_a_transport_error(stub: ErpStub, ctl: StubClient, http: httpx.Client) -> None:
    assert push(http, stub).status_code == 200  # a pooled connection first
    ctl.behaviour(script=[{"close": True}])
    with pytest.raises(httpx.TransportError):
        push(http, stub)
    assert push(http, stub).status_code == 200  # the client reconnects
    records = ctl.requests()
    assert [(r["status"], r["code"]) for r in records] == [(200, "OK"), (None, "CLOSED"), (200, "OK")]
    assert records[0]["peer_port"] == records[1]["peer_port"] != records[2]["peer_port"]


def test_hang_makes_the_client_time_out(stub: ErpStub, ctl: StubClient, http: httpx.Client) -> None:
    ctl.behaviour(script=[{"hang_s": 1.0}])
    with pytest.raises(httpx.TimeoutException):
        push(http, stub, timeout=0.2)
    [record] = ctl.requests()  # recorded on arrival, answer decided then
    assert record["code"] == "OK"
    deadline = time.monotonic() + 5
    while ctl.stats()["current_concurrency"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ctl.stats()["current_concurrency"] == 0
    assert push(http, stub).status_code == 200


def test_latency_delays_answers(stub: ErpStub, ctl: StubClient, http: httpx.Client) -> None:
    ctl.behaviour(latency_ms=150, script=[{"accept": True, "latency_ms": 0}])
    started = time.monotonic()
    push(http, stub)
    push(http, stub)
    assert time.monotonic() - started >= 0.15  # a lower bound only: the second push waits 150 ms


def test_duplicate_code(stub: ErpStub, ctl: StubClient, http: httpx.Client) -> None:
    ctl.behaviour(duplicate_code="FailedOperation.DuplicateRequest")
    assert error_code(push(http, stub, key="k-1")) is None
    second = push(http, stub, key="k-1")
    assert second.json()["Response"]["Error"] == {"Code": "FailedOperation.DuplicateRequest", "Message": "duplicate"}
    assert error_code(push(http, stub, key="k-2")) is None
    ctl.clear()  # forgets the seen keys
    assert error_code(push(http, stub, key="k-1")) is None


def test_duplicate_code_only_after_a_success(stub: ErpStub, ctl: StubClient, http: httpx.Client) -> None:
    ctl.behaviour(duplicate_code="FailedOperation.DuplicateRequest", script=[{"code": "InternalError"}])
    assert error_code(push(http, stub, key="k-1")) == "InternalError"
    assert error_code(push(http, stub, key="k-1")) is None
    assert error_code(push(http, stub, key="k-1")) == "FailedOperation.DuplicateRequest"


def test_invalid_behaviour_is_refused(ctl: StubClient) -> None:
    with pytest.raises(ValueError, match="unknown behaviour keys"):
        ctl.behaviour(latency=5)
    with pytest.raises(ValueError, match="unknown ResponseSpec keys"):
        ctl.behaviour(script=[{"stauts": 500}])
    with pytest.raises(ValueError, match="status"):
        ctl.behaviour(default={"status": 99})
    with pytest.raises(ValueError, match="accept"):
        ctl.behaviour(default={"accept": True, "code": "X"})


# ---------------------------------------------------------------------------------- records and stats


def test_records_keep_exact_body_text_and_ids(stub: ErpStub, ctl: StubClient, http: httpx.Client) -> None:
    weird = (b'{"FlowCode": 1425737370216521773, "InstanceId": 9223372036854775807, "EndTime": 1,\n'
             b' "StartUser": {"SourceUid": "\xe5\xbc\xa0\xe4\xbc\x9f", "TenantUid": "7"},'
             b' "VariableInfos": {"Total": {"Type": "double", "Value": 12.30}}}')
    huge = b'{"InstanceId": 123456789012345678901234567890}'
    push(http, stub)
    push(http, stub, weird, key="k-weird")
    push(http, stub, huge, key=None)
    spec, exact, big = ctl.wait_for(3)
    assert spec["body"] == SPEC_BODY.decode()
    assert '"StartTime":1427811121259155459' in spec["body"]
    assert spec["instance_id"] == SPEC_INSTANCE_ID
    assert spec["idempotency_key"] == SPEC_KEY
    assert spec["headers"]["idempotency-key"] == SPEC_KEY
    assert spec["headers"]["content-type"] == "application/json"
    assert all(name == name.lower() for name in spec["headers"])
    assert spec["path"] == "/erp/push"
    assert isinstance(spec["peer_port"], int)
    assert spec["time"] == pytest.approx(time.time(), abs=60)
    assert exact["body"].encode() == weird  # digit for digit, "12.30" and UTF-8 included
    assert exact["instance_id"] == 9223372036854775807
    assert big["instance_id"] == 123456789012345678901234567890
    assert big["idempotency_key"] is None
    assert [r["seq"] for r in (spec, exact, big)] == [1, 2, 3]


def test_any_path_outside_stub_is_a_push(stub: ErpStub, ctl: StubClient, http: httpx.Client) -> None:
    response = http.post(stub.base_url + "/api/v1/workflow/sync?tenant=7", content=SPEC_BODY)
    assert error_code(response) is None
    assert ctl.requests()[0]["path"] == "/api/v1/workflow/sync"
    assert http.get(stub.url).status_code == 405
    assert http.get(stub.base_url + "/_stub/health").status_code == 200
    assert http.get(stub.base_url + "/_stub/nothing").status_code == 404
    assert ctl.stats()["received"] == 1


def test_requests_since_clear_and_reset(stub: ErpStub, ctl: StubClient, http: httpx.Client) -> None:
    for i in range(5):
        push(http, stub, key=f"k-{i}")
    assert [r["seq"] for r in ctl.requests(since=3)] == [4, 5]
    assert [r["seq"] for r in ctl.requests(since=1, limit=2)] == [2, 3]
    assert ctl.requests(since=5) == []
    ctl.clear()
    assert ctl.requests() == []
    stats = ctl.stats()
    assert stats["received"] == 5 and stats["distinct_keys"] == 0 and stats["recorded"] == 0
    push(http, stub)
    assert [r["seq"] for r in ctl.requests()] == [6]  # seq keeps counting across clear
    ctl.reset()
    push(http, stub)
    assert [r["seq"] for r in ctl.requests()] == [1]
    assert ctl.stats()["received"] == 1


def test_stats(stub: ErpStub, ctl: StubClient, http: httpx.Client) -> None:
    ctl.behaviour(script=[{"code": "InvalidParameter.X"}])
    for key in ("a", "b", "a", "c"):
        push(http, stub, key=key)
    stats = ctl.stats()
    assert stats["received"] == 4
    assert stats["by_code"] == {"InvalidParameter.X": 1, "OK": 3}
    assert stats["distinct_keys"] == 3
    assert stats["current_concurrency"] == 0
    assert stats["max_concurrency"] == 1


def test_max_concurrency_with_8_concurrent_requests(stub: ErpStub, ctl: StubClient, http: httpx.Client) -> None:
    ctl.behaviour(latency_ms=200)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: push(http, stub, key=f"k-{i}").status_code, range(8)))
    assert statuses == [200] * 8
    stats = ctl.stats()
    assert stats["max_concurrency"] == 8
    assert stats["current_concurrency"] == 0
    assert ctl.reset_stats()["max_concurrency"] == 0


# ---------------------------------------------------------------------------------- capacity model


def concurrent_pushes(stub: ErpStub, count: int, stagger_s: float = 0.0) -> list[tuple[float, int]]:
    """``count`` pushes at once from their own connections: (client-side seconds, status) in start order.

    ``stagger_s`` spaces the starts so that the stub sees them arrive in this order.
    """
    def one(i: int) -> tuple[float, int]:
        time.sleep(i * stagger_s)
        with httpx.Client(timeout=10.0, verify=False) as client:
            started = time.monotonic()
            status = push(client, stub, key=f"k-{i}").status_code
            return time.monotonic() - started, status
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_capacity_serves_in_waves_and_queues_the_rest(stub: ErpStub, ctl: StubClient) -> None:
    """Capacity 2, 100 ms, 6 pushes at once: 3 waves, server-side latencies ≈ 100/100/200/200/300/300 ms."""
    assert ctl.behaviour(latency_ms=100, capacity=2)["capacity"] == 2
    results = concurrent_pushes(stub, 6, stagger_s=0.005)
    assert [status for _, status in results] == [200] * 6
    records = ctl.requests()
    assert len(records) == 6
    served = sorted(r["served_ms"] for r in records)
    queued = sorted(r["queued_ms"] for r in records)
    for got, wave in zip(served, (1, 1, 2, 2, 3, 3), strict=True):
        assert got == pytest.approx(100 * wave, abs=40), served
    for got, wave in zip(queued, (1, 1, 2, 2, 3, 3), strict=True):
        assert got == pytest.approx(100 * (wave - 1), abs=40), queued
    # first in, first out: the pushes are served in arrival (seq) order, two by two
    by_seq = sorted(records, key=lambda r: r["seq"])
    for record, wave in zip(by_seq, (1, 1, 2, 2, 3, 3), strict=True):
        assert record["queued_ms"] == pytest.approx(100 * (wave - 1), abs=40), by_seq
    stats = ctl.stats()
    assert stats["capacity"] == 2
    assert stats["max_serving"] == 2
    assert stats["max_queue"] == 4
    assert stats["max_concurrency"] == 6
    assert (stats["current_serving"], stats["current_queue"]) == (0, 0)
    latency = stats["latency_ms"]
    assert latency["count"] == 6
    assert latency["p50"] == pytest.approx(200, abs=40)  # nearest rank: the 3rd of 6
    assert latency["p99"] == pytest.approx(300, abs=40)  # the 6th of 6
    assert latency["max"] == pytest.approx(300, abs=40)
    assert latency["mean"] == pytest.approx(200, abs=40)
    assert stats["queue_ms"]["p99"] == pytest.approx(200, abs=40)
    # the client sees the same waves
    client_s = sorted(seconds for seconds, _ in results)
    assert client_s[-1] == pytest.approx(0.3, abs=0.1)
    reset = ctl.reset_stats()
    assert (reset["max_queue"], reset["max_serving"], reset["latency_ms"]["count"]) == (0, 0, 0)


def test_unlimited_capacity_serves_everything_at_the_base_latency(stub: ErpStub, ctl: StubClient) -> None:
    assert ctl.behaviour(latency_ms=100)["capacity"] is None  # the start value: unlimited
    results = concurrent_pushes(stub, 6)
    assert [status for _, status in results] == [200] * 6
    stats = ctl.stats()
    assert stats["capacity"] is None
    assert stats["max_queue"] == 0
    assert stats["max_serving"] == 6
    assert stats["latency_ms"]["count"] == 6
    assert stats["latency_ms"]["p99"] == pytest.approx(100, abs=40)
    assert stats["queue_ms"]["max"] == pytest.approx(0, abs=5)


def test_capacity_one_serializes_and_a_raise_releases_the_queue(stub: ErpStub, ctl: StubClient) -> None:
    ctl.behaviour(latency_ms=300, capacity=1)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        later = pool.submit(concurrent_pushes, stub, 4, 0.005)
        deadline = time.monotonic() + 5
        while ctl.stats()["current_queue"] < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ctl.stats()["current_queue"] == 3
        ctl.behaviour(latency_ms=300, capacity=10)  # more capacity: the queue is served at once
        results = later.result(timeout=10)
    assert [status for _, status in results] == [200] * 4
    served = sorted(r["served_ms"] for r in ctl.requests())
    assert served[-1] < 750  # not 4 x 300 ms


def test_capacity_validation_and_reset(ctl: StubClient) -> None:
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="capacity"):
            ctl.behaviour(capacity=bad)
    assert ctl.behaviour(capacity=3)["capacity"] == 3
    assert ctl.current_behaviour()["capacity"] == 3
    assert ctl.behaviour()["capacity"] is None  # omitted: the start value
    ctl.behaviour(capacity=3)
    ctl.reset()
    assert ctl.current_behaviour()["capacity"] is None


def test_capacity_start_value() -> None:
    with ErpStub(latency_ms=50, capacity=1) as small, small.client() as ctl:
        assert ctl.current_behaviour()["capacity"] == 1
        assert ctl.behaviour(latency_ms=50)["capacity"] == 1  # omitted: the start value
        results = concurrent_pushes(small, 3, stagger_s=0.005)
        assert [status for _, status in results] == [200] * 3
        stats = ctl.stats()
        assert (stats["max_serving"], stats["max_queue"]) == (1, 2)
        assert stats["latency_ms"]["max"] == pytest.approx(150, abs=40)
        assert ctl.behaviour(capacity=None)["capacity"] is None  # explicit null: unlimited
        ctl.reset()
        assert ctl.current_behaviour()["capacity"] == 1
    with pytest.raises(ValueError, match="capacity"):
        ErpStub(capacity=0)


def test_records_are_bounded() -> None:
    with ErpStub(max_records=3) as small, small.client() as ctl, httpx.Client() as http:
        for i in range(5):
            push(http, small, key=f"k-{i}")
        records = ctl.requests()
        assert [r["seq"] for r in records] == [3, 4, 5]
        assert [r["seq"] for r in ctl.requests(since=3)] == [4, 5]
        stats = ctl.stats()
        assert (stats["received"], stats["recorded"], stats["dropped"]) == (5, 3, 2)


def test_wait_for_times_out_with_a_clear_message(ctl: StubClient) -> None:
    with pytest.raises(TimeoutError, match=r"expected at least 2 recorded pushes within 0.2 s, got 0"):
        ctl.wait_for(2, timeout_s=0.2)


def test_stub_client_accepts_the_push_url(stub: ErpStub, ctl: StubClient) -> None:
    with StubClient(stub.url) as other:
        assert other.base_url == stub.base_url
        assert other.health()


def test_format_summary(stub: ErpStub, ctl: StubClient, http: httpx.Client) -> None:
    ctl.behaviour(script=[{"accept": True}, {"close": True}])
    push(http, stub)
    with pytest.raises(httpx.TransportError):
        push(http, stub, user_with(SourceUid=""), key="k-2")
    push(http, stub, user_with(SourceUid=""), key="k-3")
    text = format_summary(ctl.wait_for(3))
    assert str(SPEC_INSTANCE_ID) in text
    assert SPEC_KEY in text
    assert "200 OK" in text
    assert "200 InvalidParameter.StartUser.SourceUid" in text
    assert "closed" in text
    assert text.splitlines()[0] == ("The ERP received 3 pushes: 1 answered OK, 2 not (an error code is a reject, "
                                    "dead-lettered, or a retry code, pushed again; a closed connection is pushed "
                                    "again):")
    assert SPEC_BODY.decode() in text
    assert format_summary([]) == "The ERP received no pushes."


# ---------------------------------------------------------------------------------- connections


def test_keep_alive_reuses_one_connection(stub: ErpStub, ctl: StubClient, http: httpx.Client) -> None:
    for _ in range(3):
        push(http, stub)
    time.sleep(0.6)
    push(http, stub)
    assert len({r["peer_port"] for r in ctl.requests()}) == 1


def test_close_idle_after_s_closes_pooled_connections_silently(stub: ErpStub, ctl: StubClient,
                                                               http: httpx.Client) -> None:
    ctl.behaviour(close_idle_after_s=0.3)
    first = push(http, stub)
    assert "close" not in first.headers.get("connection", "")  # nothing tells the client
    time.sleep(0.1)
    push(http, stub)  # within the idle limit: same connection
    time.sleep(1.0)
    # httpx notices the server's FIN on the pooled connection before reusing it and reconnects.
    assert push(http, stub).status_code == 200
    ports = [r["peer_port"] for r in ctl.requests()]
    assert ports[0] == ports[1] != ports[2]

    # A client that does not check its pooled connection fails on the stale one.
    raw = http_client_post(stub.port)
    try:
        time.sleep(1.0)
        with pytest.raises((ConnectionError, HTTPException)):
            raw.request("POST", "/erp/push", body=SPEC_BODY, headers={"Content-Type": "application/json"})
            raw.getresponse().read()
    finally:
        raw.close()


def http_client_post(port: int) -> HTTPConnection:
    connection = HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("POST", "/erp/push", body=SPEC_BODY, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    assert response.status == 200
    return connection


def test_throughput_smoke_16_threads_one_client(stub: ErpStub, ctl: StubClient) -> None:
    total = 2000
    with httpx.Client(timeout=30.0, limits=httpx.Limits(max_connections=16, max_keepalive_connections=16)) as http:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda i: push(http, stub, key=f"k-{i % 500}").status_code, range(total)))
    assert statuses == [200] * total
    records = ctl.wait_for(total, timeout_s=30)
    assert len(records) == total
    assert [r["seq"] for r in records] == list(range(1, total + 1))
    stats = ctl.stats()
    assert stats["received"] == total
    assert stats["by_code"] == {"OK": total}
    assert stats["distinct_keys"] == 500


# ---------------------------------------------------------------------------------- foreground main()


def test_main_runs_in_the_foreground_until_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "consumer.devstack.erp_stub", "--port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"ERP stub listening on (http://127\.0\.0\.1:\d+); push URL (\S+)", line)
        assert match, line
        base, push_url = match.groups()
        assert push_url == base + "/erp/push"
        with httpx.Client() as http:
            assert error_code(http.post(push_url, content=SPEC_BODY)) is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "consumer.devstack.erp_stub", "--port", "0", "--capacity", "2"],
    [str(Path(sys.executable).parent / "erp-sync"), "erp-stub", "--port", "0", "--capacity", "2"],
], ids=["module", "erp-sync"])
def test_capacity_flag(command: list[str]) -> None:
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        base = None
        for _ in range(20):
            line = process.stdout.readline()
            match = re.search(r"ERP stub listening on (http://127\.0\.0\.1:\d+)", line)
            if match:
                base = match.group(1)
                break
        assert base, "no start-up line"
        with StubClient(base) as ctl:
            assert ctl.current_behaviour()["capacity"] == 2
            assert ctl.stats()["capacity"] == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_validate_body_accepts_numbers_beyond_a_double() -> None:
    """orjson refuses a 5,000-digit integer (it overflows a double); the stub reads it exactly instead."""
    event = spec_example_event()
    event["variables"] = {"X": {"type": "object", "value": '{"a": ' + "9" * 5000 + "}"}}
    body, _ = erp_request(event)
    assert validate_body(body) == ("OK", "", SPEC_INSTANCE_ID)
    assert validate_body(b'{"FlowCode": 1, "x": ' + b"9" * 5000 + b"") == (
        "InvalidParameter", "body is not a JSON object", None)
