"""Integration tests of the main job on a real Kafka broker and a real HTTP ERP (issue 2, "Tests").

Every test runs the real ``erp-sync run --exit-when-idle`` in a subprocess against the session's
broker (``tests/conftest.py``) and a per-test ERP stub (``consumer/devstack/erp_stub.py``), on its own topic,
its own ``<topic>.dlq`` and its own consumer group. Nothing is mocked.
"""

from __future__ import annotations

import email.message
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from consumer import transform
from consumer.decode import STATUSES, decode
from consumer.devstack.erp_stub import ErpStub, StubClient, validate_body
from consumer.devstack.events import confluent_frame, encode, spec_example_event
from consumer.devstack.samples import sample_events
from consumer.errors import RecordError
from dev.harness import (
    ERP_SYNC,
    Broker,
    committed,
    consumer_env,
    create_topic,
    header_map,
    high_watermarks,
    produce,
    read_all,
    run_until_idle,
    start_consumer,
    unique,
)

pytestmark = pytest.mark.kafka

SPEC_BODY = (
    '{"FlowCode":1425737370216521773,"InstanceId":1427810976874430514,'
    '"StartTime":1427811121259155459,"EndTime":1427811121259155459,'
    '"StartUser":{"SourceUid":"1427811121259155459","TenantUid":"1427811121259155459"},'
    '"VariableInfos":{"LevelInfo":{"Type":"object","Value":{"Name":"1425736144334716972","Days":3}}}}'
)
SPEC_KEY = b"1427810976874430514"
SPEC_IDEMPOTENCY_KEY = "1425737370216521773-1427810976874430514"
FLOW = 1425737370216521773
OFFSET_INVALID = -1001
IDLE_S = "1"

DLQ_HEADERS = {
    "erp_sync.original.topic", "erp_sync.original.partition", "erp_sync.original.offset",
    "erp_sync.original.timestamp", "erp_sync.error.class", "erp_sync.error.code",
    "erp_sync.error.message", "erp_sync.attempts", "erp_sync.erp.request_id",
}


# ------------------------------------------------------------------------------------------ helpers


def new_topics(broker: Broker, prefix: str, partitions: int = 1) -> tuple[str, str, str]:
    """A fresh source topic, its ``.dlq`` and a fresh group id."""
    topic = unique(prefix)
    create_topic(broker, topic, partitions)
    create_topic(broker, topic + ".dlq", 1)
    return topic, topic + ".dlq", unique("group-" + prefix)


def event(instance_id: int, status: str = "APPROVED", flow_code: int = FLOW,
          variables: dict[str, dict[str, str]] | None = None, start_time: int | None = 1732886000000) -> dict[str, Any]:
    """A valid v1 event."""
    return {
        "event_id": str(uuid.UUID(int=instance_id % 2**128)),
        "event_time": 1732886400000,
        "flow_code": flow_code,
        "instance_id": instance_id,
        "status": status,
        "start_time": start_time,
        "end_time": 1732886399000,
        "start_user": {"source_uid": f"wecom-{instance_id}", "tenant_uid": str(instance_id % 1000)},
        "variables": {"Days": {"type": "integer", "value": "3"}} if variables is None else variables,
        "approvals": [],
    }


def record(ev: dict[str, Any]) -> tuple[bytes, bytes]:
    """``(key, value)`` as aPaaS writes it: the instance id as text, the bare Avro record."""
    return str(ev["instance_id"]).encode(), encode(ev)


def run(env: dict[str, str], log: Path) -> str:
    """``erp-sync run --exit-when-idle`` to completion (exit 0 asserted); return its log."""
    return run_until_idle(env, log, idle_s=float(IDLE_S), timeout=60).log()


def env_for(broker: Broker, erp: ErpStub, topic: str, group: str, **extra: str) -> dict[str, str]:
    return consumer_env(broker, topic, group, erp.url, **extra)


def instance_ids(requests: list[dict[str, Any]]) -> list[int]:
    return [r["instance_id"] for r in requests]


def assert_committed_to_end(broker: Broker, group: str, topic: str, partitions: int = 1, log: str = "") -> None:
    ends = high_watermarks(broker, topic, partitions)
    got = committed(broker, group, topic, partitions)
    assert got == ends, f"committed {got} != high watermarks {ends}; consumer log tail:\n{log[-3000:]}"


def content_type(value: str) -> tuple[str, dict[str, str]]:
    msg = email.message.Message()
    msg["content-type"] = value
    params = {k.lower(): v.lower() for k, v in msg.get_params()[1:]}
    return msg.get_content_type(), params


def decodes_to(value: bytes | None) -> int | None:
    """The instance id of a dead letter's value, or None if it is not a decodable event."""
    try:
        return int(decode(value)["instance_id"])
    except RecordError:
        return None


# ------------------------------------------------------------------------------------------ 1


def test_spec_example_reaches_the_erp_byte_exact(broker: Broker, erp: ErpStub, stub: StubClient,
                                                  tmp_path: Path) -> None:
    topic, dlq, group = new_topics(broker, "spec")
    produce(broker, topic, [(SPEC_KEY, encode(spec_example_event()))])

    log = run(env_for(broker, erp, topic, group), tmp_path / "run.log")

    reqs = stub.requests()
    assert len(reqs) == 1, f"expected exactly one push, got {len(reqs)}; log:\n{log[-3000:]}"
    (req,) = reqs
    assert req["body"] == SPEC_BODY
    assert req["path"] == "/erp/push"
    assert req["headers"]["idempotency-key"] == SPEC_IDEMPOTENCY_KEY
    assert req["idempotency_key"] == SPEC_IDEMPOTENCY_KEY
    assert req["instance_id"] == 1427810976874430514
    assert content_type(req["headers"]["content-type"]) == ("application/json", {"charset": "utf-8"})
    assert req["code"] == "OK" and req["status"] == 200
    assert read_all(broker, dlq) == []
    assert_committed_to_end(broker, group, topic, log=log)
    assert high_watermarks(broker, topic) == {0: 1}


# ------------------------------------------------------------------------------------------ 2


def test_non_approved_statuses_are_skipped_and_committed(broker: Broker, erp: ErpStub, stub: StubClient,
                                                          tmp_path: Path) -> None:
    topic, dlq, group = new_topics(broker, "status")
    skipped = ["REJECTED", "WITHDRAWN", "TERMINATED", "UNKNOWN"]
    assert set(skipped) | {"APPROVED"} == set(STATUSES)
    evs = [event(7_000_000_000_000_000_001 + i, status=s) for i, s in enumerate(skipped)]
    sentinel = event(7_000_000_000_000_000_999)  # APPROVED, last: proves the run read past the others
    produce(broker, topic, [record(e) for e in [*evs, sentinel]])

    log = run(env_for(broker, erp, topic, group), tmp_path / "run.log")

    reqs = stub.requests()
    assert instance_ids(reqs) == [7_000_000_000_000_000_999], log[-3000:]
    assert stub.stats()["received"] == 1
    assert read_all(broker, dlq) == []
    assert_committed_to_end(broker, group, topic, log=log)
    assert high_watermarks(broker, topic) == {0: 5}


# ------------------------------------------------------------------------------------------ 3


def test_dead_letters_of_each_class_keep_bytes_and_carry_headers(broker: Broker, erp: ErpStub, stub: StubClient,
                                                                  tmp_path: Path) -> None:
    topic, dlq, group = new_topics(broker, "dlq")
    valid = encode(spec_example_event())
    rejected_id = 5_100_000_000_000_000_001
    stub.behaviour(rules=[{"instance_id": rejected_id, "response": {
        "code": "InvalidParameter.FlowCode", "message": "FlowCode is not known to this ERP",
        "request_id": "req-123"}}])

    good_ids = iter(range(5_200_000_000_000_000_001, 5_200_000_000_000_000_100))

    def good() -> tuple[bytes, bytes]:
        return record(event(next(good_ids)))

    accented = event(5_100_000_000_000_000_003)
    accented["start_user"]["source_uid"] = "caf\u00e9"
    bad_utf8 = encode(accented).replace("é".encode(), b"\xc3\x28")  # same length, invalid UTF-8
    too_large = b"\x02" + bytes(range(256)) * 20  # 5121 bytes > ERP_SYNC_MAX_VALUE_BYTES=4096
    bad_variable = event(5_100_000_000_000_000_002, variables={
        "Ok": {"type": "string", "value": '"fine"'}, "Days": {"type": "integer", "value": "3.5"}})
    # (key, value, error class, error code) in offset order; each poison record is followed by a good one.
    poison: list[tuple[bytes | None, bytes | None, str, str]] = [
        (None, b"\xff\xfe\xfdthis is not avro", "decode", "InvalidAvro"),
        (b"k-empty", b"", "decode", "MissingValue"),
        (b"k-none", None, "decode", "MissingValue"),
        (b"k-truncated", valid[: len(valid) // 2], "decode", "InvalidAvro"),
        (b"k-confluent", confluent_frame(1, valid), "decode", "ConfluentFramed"),
        (b"k-trailing", valid + b"\x00", "decode", "TrailingBytes"),
        (b"k-utf8", bad_utf8, "decode", "InvalidUtf8"),
        (b"k-large", too_large, "decode", "ValueTooLarge"),
        (*record(bad_variable), "validation", "TypeMismatch"),
        (*record(event(rejected_id)), "erp", "InvalidParameter.FlowCode"),
    ]
    rows: list[tuple[bytes | None, bytes | None]] = []
    expected_dead: dict[int, tuple[bytes | None, bytes | None, str, str]] = {}
    expected_good: list[int] = []
    for key, value, cls, code in poison:
        expected_dead[len(rows)] = (key, value, cls, code)
        rows.append((key, value))
        g = good()
        expected_good.append(int(g[0]))
        rows.append(g)
    original_headers = [("trace-id", b"t-42"), ("origin", "审批".encode())]
    produce(broker, topic, rows, headers=original_headers)

    log = run(env_for(broker, erp, topic, group, ERP_SYNC_MAX_VALUE_BYTES="4096"), tmp_path / "run.log")

    # Everything behind the poison records was still pushed (distinct keys: in any order); the
    # rejected one was tried exactly once.
    reqs = stub.requests()
    assert sorted(instance_ids(reqs)) == sorted([*expected_good, rejected_id]), log[-3000:]
    assert [r["code"] for r in reqs if r["instance_id"] == rejected_id] == ["InvalidParameter.FlowCode"]

    sources = {m.offset(): m for m in read_all(broker, topic)}
    letters = read_all(broker, dlq)
    assert len(letters) == len(poison), f"{len(letters)} dead letters; log:\n{log[-3000:]}"
    by_offset = {int(header_map(m)["erp_sync.original.offset"]): m for m in letters}
    assert set(by_offset) == set(expected_dead)
    for offset, (key, value, cls, code) in expected_dead.items():
        letter = by_offset[offset]
        h = header_map(letter)
        where = f"dead letter of offset {offset} ({cls}/{code}): headers {h}"
        assert letter.key() == key, where
        assert letter.value() == value, where  # None stays None, b"" stays b""
        assert h["erp_sync.original.topic"] == topic, where
        assert h["erp_sync.original.partition"] == "0", where
        assert h["erp_sync.original.timestamp"] == str(sources[offset].timestamp()[1]), where
        assert sources[offset].timestamp()[1] > 0
        assert h["erp_sync.error.class"] == cls, where
        assert h["erp_sync.error.code"] == code, where
        assert h["erp_sync.error.message"].strip(), where
        assert h["erp_sync.attempts"] == ("1" if cls == "erp" else "0"), where
        if cls == "erp":
            assert h["erp_sync.erp.request_id"] == "req-123", where
            assert "FlowCode is not known to this ERP" in h["erp_sync.error.message"], where
        else:
            assert "erp_sync.erp.request_id" not in h, where
        kept = [(k, v) for k, v in (letter.headers() or []) if k not in DLQ_HEADERS]
        assert kept == original_headers, where
    assert_committed_to_end(broker, group, topic, log=log)
    assert high_watermarks(broker, topic) == {0: 2 * len(poison)}


def test_dead_letter_keeps_a_null_header_value(broker: Broker, erp: ErpStub, stub: StubClient,
                                               tmp_path: Path) -> None:
    topic, dlq, group = new_topics(broker, "nullhdr")
    headers: list[tuple[str, bytes | None]] = [("trace-id", b"t-1"), ("nullable", None), ("empty", b"")]
    produce(broker, topic, [(b"k", b"not avro")], headers=headers)  # type: ignore[arg-type]
    (source,) = read_all(broker, topic)
    assert source.headers() == headers  # Kafka keeps a null header value distinct from b""

    log = run(env_for(broker, erp, topic, group), tmp_path / "run.log")

    (letter,) = read_all(broker, dlq)
    assert header_map(letter)["erp_sync.error.code"] == "InvalidAvro", log[-3000:]
    kept = [(k, v) for k, v in (letter.headers() or []) if k not in DLQ_HEADERS]
    assert kept == headers
    assert stub.stats()["received"] == 0
    assert_committed_to_end(broker, group, topic, log=log)


# ------------------------------------------------------------------------------------------ 4


def test_retry_then_accept_honours_retry_after(broker: Broker, erp: ErpStub, stub: StubClient,
                                               tmp_path: Path) -> None:
    topic, dlq, group = new_topics(broker, "retry")
    ev = event(6_100_000_000_000_000_001)
    stub.behaviour(script=[
        {"code": "InternalError.DbError", "message": "database unavailable"},
        {"status": 503},
        {"status": 429, "headers": {"Retry-After": "1"}},
    ])
    produce(broker, topic, [record(ev)])

    log = run(env_for(broker, erp, topic, group), tmp_path / "run.log")

    reqs = stub.requests()
    assert [r["code"] for r in reqs] == ["InternalError.DbError", "HTTP_503", "HTTP_429", "OK"], log[-3000:]
    expected_body, expected_key = transform.erp_request(ev)
    assert {r["body"] for r in reqs} == {expected_body.decode()}
    assert {r["headers"]["idempotency-key"] for r in reqs} == {expected_key}
    assert expected_key == f"{FLOW}-6100000000000000001"
    gap = reqs[3]["time"] - reqs[2]["time"]
    assert gap >= 0.9, f"Retry-After: 1 not honoured: 4th request {gap:.3f} s after the 3rd"
    assert read_all(broker, dlq) == []
    assert_committed_to_end(broker, group, topic, log=log)


def test_a_record_the_erp_keeps_failing_does_not_hold_the_only_push_slot(broker: Broker, erp: ErpStub,
                                                                           stub: StubClient, tmp_path: Path) -> None:
    """ERP_SYNC_MAX_IN_FLIGHT=1 (an adaptive limit can be cut to 1 too) and an ERP that answers
    InternalError to one record for good: while that record waits out its own backoff, the 20 records
    of other keys behind it are pushed. (A new user's trial: 0 of 20 pushed in 2 minutes, the log
    saying "the others go on".) The failing record stays unfinished: the commit stays below it."""
    topic, dlq, group = new_topics(broker, "oneslot")
    bad = event(6_150_000_000_000_000_000)
    good = [event(6_150_000_000_000_000_001 + i) for i in range(20)]
    stub.behaviour(rules=[{"instance_id": bad["instance_id"],
                           "response": {"code": "InternalError", "message": "this one, for good"}}])
    produce(broker, topic, [record(bad), *(record(ev) for ev in good)])
    cp = start_consumer(env_for(broker, erp, topic, group, ERP_SYNC_MAX_IN_FLIGHT="1"), tmp_path / "run.log")
    try:
        deadline = time.monotonic() + 30
        while len([r for r in stub.requests() if r["code"] == "OK"]) < len(good):
            assert cp.proc.poll() is None and time.monotonic() < deadline, cp.log()[-3000:]
            time.sleep(0.2)
    finally:
        cp.proc.terminate()
        code = cp.wait(30)
    assert code == 0, cp.log()[-3000:]
    reqs = stub.requests()
    assert instance_ids([r for r in reqs if r["code"] == "OK"]) == [ev["instance_id"] for ev in good]
    bad_codes = [r["code"] for r in reqs if r["instance_id"] == bad["instance_id"]]
    assert bad_codes and set(bad_codes) == {"InternalError"}, bad_codes
    assert read_all(broker, dlq) == []
    assert committed(broker, group, topic, 1) == {0: OFFSET_INVALID}  # the failing record is at offset 0


# ------------------------------------------------------------------------------------------ 5


def test_per_key_order_with_concurrency_across_keys(broker: Broker, erp: ErpStub, stub: StubClient,
                                                    tmp_path: Path) -> None:
    topic, dlq, group = new_topics(broker, "order")
    stub.behaviour(latency_ms=50)
    keys = [b"key-a", b"key-b", b"key-c"]
    rows = []
    expected: dict[bytes, list[int]] = {k: [] for k in keys}
    for i in range(20):
        for k_index, key in enumerate(keys):
            iid = 6_200_000_000_000_000_000 + k_index * 1000 + i
            expected[key].append(iid)
            rows.append((key, encode(event(iid))))
    produce(broker, topic, rows, partition=0)

    log = run(env_for(broker, erp, topic, group), tmp_path / "run.log")

    reqs = stub.requests()
    assert len(reqs) == 60, log[-3000:]
    owner = {iid: key for key, iids in expected.items() for iid in iids}
    for key in keys:
        mine = [r for r in reqs if owner[r["instance_id"]] == key]
        assert instance_ids(mine) == expected[key], f"{key!r} out of offset order"
        gaps = [b["time"] - a["time"] for a, b in zip(mine, mine[1:], strict=False)]
        assert min(gaps) >= 0.04, f"{key!r}: two pushes of one key overlapped (gap {min(gaps):.3f} s)"
    stats = stub.stats()
    assert 2 <= stats["max_concurrency"] <= len(keys), stats
    assert read_all(broker, dlq) == []
    assert_committed_to_end(broker, group, topic, log=log)


# ------------------------------------------------------------------------------------------ 6


def test_commits_reach_every_partition_end(broker: Broker, erp: ErpStub, stub: StubClient, tmp_path: Path) -> None:
    topic, dlq, group = new_topics(broker, "parts", partitions=3)
    evs = sample_events(60, seed=7)  # leave, expense, purchase; every status; faulty ones
    assert len(evs) == 60
    pushed: Counter[int] = Counter()
    dead: Counter[tuple[int, str, str]] = Counter()  # (instance id, error class, error code)
    skipped = 0
    for ev in evs:
        if not transform.is_pushed(ev):
            skipped += 1
            continue
        try:
            body, _key = transform.erp_request(ev)
        except RecordError as exc:
            dead[(ev["instance_id"], exc.error_class, exc.code)] += 1
            continue
        pushed[ev["instance_id"]] += 1
        stub_code, _message, _iid = validate_body(body)  # the stub's default answer: it validates
        if stub_code != "OK":
            dead[(ev["instance_id"], "erp", stub_code)] += 1
    # The mix must exercise every path, or this test proves little.
    assert pushed and skipped and sorted(cls for _, cls, _ in dead) == ["erp", "validation"]
    placed = produce(broker, topic, [record(ev) for ev in evs])
    assert {p for p, _ in placed} == {0, 1, 2}, "the mix must land on all three partitions"

    log = run(env_for(broker, erp, topic, group), tmp_path / "run.log")

    reqs = stub.requests()
    assert Counter(instance_ids(reqs)) == pushed, log[-3000:]
    letters = read_all(broker, dlq)
    got_dead = Counter((decodes_to(m.value()), header_map(m)["erp_sync.error.class"],
                        header_map(m)["erp_sync.error.code"]) for m in letters)
    assert got_dead == dead
    assert_committed_to_end(broker, group, topic, partitions=3, log=log)
    assert sum(high_watermarks(broker, topic, 3).values()) == 60


# ------------------------------------------------------------------------------------------ 7


def test_restart_re_reads_nothing_already_committed(broker: Broker, erp: ErpStub, stub: StubClient,
                                                   tmp_path: Path) -> None:
    topic, dlq, group = new_topics(broker, "restart")
    first = [event(6_300_000_000_000_000_000 + i) for i in range(5)]
    second = [event(6_300_000_000_000_000_100 + i) for i in range(3)]
    env = env_for(broker, erp, topic, group)
    produce(broker, topic, [record(e) for e in first])

    log1 = run(env, tmp_path / "run1.log")
    reqs1 = stub.requests()
    assert sorted(instance_ids(reqs1)) == [e["instance_id"] for e in first], log1[-3000:]
    assert_committed_to_end(broker, group, topic, log=log1)
    assert [r["seq"] for r in reqs1] == list(range(1, len(first) + 1))

    produce(broker, topic, [record(e) for e in second])
    log2 = run(env, tmp_path / "run2.log")

    assert stub.stats()["received"] == len(first) + len(second), log2[-3000:]
    assert sorted(instance_ids(stub.requests(since=len(first)))) == [e["instance_id"] for e in second]
    assert read_all(broker, dlq) == []
    assert_committed_to_end(broker, group, topic, log=log2)
    assert high_watermarks(broker, topic) == {0: 8}


# ------------------------------------------------------------------------------------------ 8


def test_new_group_starts_from_earliest(broker: Broker, erp: ErpStub, stub: StubClient, tmp_path: Path) -> None:
    topic, dlq, group = new_topics(broker, "earliest")
    evs = [event(6_400_000_000_000_000_000 + i) for i in range(4)]
    produce(broker, topic, [record(e) for e in evs])
    assert committed(broker, group, topic) == {0: OFFSET_INVALID}  # the group has never committed
    env = env_for(broker, erp, topic, group)
    assert not any("AUTO_OFFSET_RESET" in k for k in env)  # the default is under test

    log = run(env, tmp_path / "run.log")

    assert sorted(instance_ids(stub.requests())) == [e["instance_id"] for e in evs], log[-3000:]
    assert_committed_to_end(broker, group, topic, log=log)


def test_topic_retention_gauge_is_exported(broker: Broker, erp: ErpStub, tmp_path: Path) -> None:
    # Regression: topic_retention_seconds() once used a temporary AdminClient that was destroyed before
    # its future completed (_DESTROY "Handle is terminating"), so this gauge was never set.
    topic = unique("retention")
    create_topic(broker, topic, 1, config={"retention.ms": "3600000"})
    create_topic(broker, topic + ".dlq", 1)
    env = env_for(broker, erp, topic, unique("group-retention"))
    cp = start_consumer(env, tmp_path / "run.log")
    expected = f'erp_sync_topic_retention_seconds{{topic="{topic}"}} 3600.0'
    metrics = ""
    try:
        # retention is read off the poll loop (and retried until known), published within seconds
        deadline = time.monotonic() + 30
        while expected not in metrics:
            assert cp.proc.poll() is None and time.monotonic() < deadline, cp.log()[-3000:]
            time.sleep(0.2)
            try:
                metrics = httpx.get(f"http://127.0.0.1:{cp.metrics_port}/metrics", timeout=10).text
            except httpx.HTTPError:
                continue
    finally:
        cp.proc.terminate()
        code = cp.wait(30)
    assert code == 0, cp.log()[-3000:]
    unknown = [line for line in cp.log().splitlines() if "retention_unknown" in line]
    assert f'erp_sync_topic_retention_seconds{{topic="{topic}"}} 3600.0' in metrics, unknown


# ------------------------------------------------------------------------------------------ 9


@pytest.mark.parametrize(("variable", "value"), [
    ("ERP_SYNC_ERP_URL", None),
    ("ERP_SYNC_ERP_TIMEOUT_SECONDS", "abc"),
    ("ERP_SYNC_KAFKA_NOT_A_PROPERTY", "1"),
])
def test_bad_configuration_fails_at_start_naming_the_variable(broker: Broker, variable: str, value: str | None,
                                                              tmp_path: Path) -> None:
    topic = unique("badconf")  # never created: the process must fail before it looks
    env = consumer_env(broker, topic, unique("group-badconf"), "http://127.0.0.1:9/erp/push")
    if value is None:
        del env[variable]
    else:
        env[variable] = value
    started = time.monotonic()
    proc = subprocess.run([ERP_SYNC, "run", "--exit-when-idle", IDLE_S], env=env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2, f"exit {proc.returncode}; stderr:\n{proc.stderr[-3000:]}"
    assert variable in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert time.monotonic() - started < 15
