"""The operations tools (consumer/ops/) against a real broker, a real ERP stub and `erp-sync run`.

Each test has its own topic and group. Tools run in-process through ``consumer.cli.main`` (with the
environment of ``erp-sync run``); the consumer runs as a subprocess (``erp-sync run``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from consumer import cli, transform
from consumer.delivery.dead_letters import H_ATTEMPTS, H_CLASS, H_CODE, H_OFFSET, H_PARTITION, H_TOPIC, parked_headers
from consumer.delivery.offsets import decode_finished, encode_finished
from consumer.devstack.events import encode, spec_example_event
from consumer.errors import ErpRejectError
from dev.harness import (
    ERP_SYNC,
    Broker,
    committed,
    consumer_env,
    create_topic,
    free_port,
    header_map,
    high_watermarks,
    read_all,
    run_until_idle,
    start_consumer,
    unique,
)

FLOW = spec_example_event()["flow_code"]
REJECT = {"code": "InvalidParameterValue.Budget", "message": "budget exceeded"}


# ------------------------------------------------------------------------------------------------ helpers


def event(instance_id: int, status: str = "APPROVED") -> dict[str, Any]:
    e = spec_example_event()
    e["instance_id"] = instance_id
    e["status"] = status
    return e


def value(instance_id: int, status: str = "APPROVED") -> bytes:
    return encode(event(instance_id, status))


def key(instance_id: int) -> str:
    return f"{FLOW}-{instance_id}"


def body(instance_id: int) -> str:
    return transform.erp_request(event(instance_id))[0].decode()


def iso(ms: int, tz: str = "Z") -> str:
    text = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", tz)


def produce_at(broker: Broker, topic: str, items: Sequence[tuple[int, bytes | None, bytes | None, int]],
               headers: list[tuple[str, bytes]] | None = None) -> None:
    """Write ``(partition, key, value, timestamp ms)`` records with explicit CreateTime timestamps."""
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
    errors: list[Any] = []
    for partition, k, v, ts in items:
        producer.produce(topic, key=k, value=v, partition=partition, timestamp=ts, headers=headers or [],
                         on_delivery=lambda err, _m: errors.append(err) if err else None)
    assert producer.flush(30) == 0 and not errors, errors


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Env:
    broker: Broker
    topic: str
    group: str
    env: dict[str, str]
    tmp: Path
    partitions: int

    def tool(self, *argv: str) -> Result:
        """Run ``erp-sync <argv>`` in this process with the consumer's environment."""
        out, err = io.StringIO(), io.StringIO()
        root = logging.getLogger()
        saved = root.handlers[:], root.level
        try:
            with mock.patch.dict(os.environ, self.env, clear=True), contextlib.redirect_stdout(out), \
                    contextlib.redirect_stderr(err):
                try:
                    code = cli.main(list(argv))
                except SystemExit as exc:  # argparse
                    code = int(exc.code or 0)
        finally:
            root.handlers[:], root.level = saved[0], saved[1]
        return Result(code, out.getvalue(), err.getvalue())

    def status(self) -> dict[str, Any]:
        r = self.tool("status", "--json")
        assert r.code == 0, r.err
        doc: dict[str, Any] = json.loads(r.out)
        return doc

    def run(self) -> None:
        run_until_idle(self.env, self.tmp / "consumer.log", idle_s=0.5, timeout=60)

    def committed(self) -> dict[int, int]:
        return committed(self.broker, self.group, self.topic, self.partitions)


def setup(broker: Broker, erp: Any, tmp_path: Path, partitions: int, dlq: bool = False) -> Env:
    topic = create_topic(broker, unique("tools"), partitions)
    if dlq:
        create_topic(broker, topic + ".dlq", 1)
    group = unique("tools-group")
    env = consumer_env(broker, topic, group, erp.url, ERP_SYNC_LOG_LEVEL="WARNING")
    return Env(broker, topic, group, env, tmp_path, partitions)


def table_rows(text: str, first: str) -> list[list[str]]:
    """Rows of the table whose header starts with ``first``, cells split on 2+ spaces."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    rows = []
    for line in lines[start + 1:]:
        if not line.strip() or line.startswith(("Total:", "Not selected", "Passed over", "Stopped", "Interrupted",
                                                "(")):
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


RESET_ROW = re.compile(r"^\s*(\d+)\s+(-|\d+)\s+→\s+(\d+)\s+(.*)$")


def reset_rows(text: str) -> dict[int, tuple[str, int, str]]:
    """``{partition: (current, new, change)}`` from a reset-offsets plan."""
    rows = {}
    for line in text.splitlines():
        m = RESET_ROW.match(line)
        if m:
            rows[int(m.group(1))] = (m.group(2), int(m.group(3)), m.group(4))
    return rows


def requests(erp: Any) -> list[dict[str, Any]]:
    with erp.client() as c:
        records: list[dict[str, Any]] = c.requests()
        return records


def set_behaviour(erp: Any, **fields: Any) -> None:
    with erp.client() as c:
        c.behaviour(**fields)


# ------------------------------------------------------------------------------------------------ status


@pytest.mark.kafka
def test_status_table_and_json_after_a_run_and_with_new_records(broker: Broker, erp: Any, tmp_path: Path) -> None:
    t = setup(broker, erp, tmp_path, partitions=2)
    now = int(time.time() * 1000)
    produce_at(broker, t.topic, [(0, b"1", value(1), now), (0, b"2", value(2), now),
                                 (0, b"3", value(3, "REJECTED"), now), (1, b"4", value(4), now),
                                 (1, b"5", value(5), now)])
    t.run()

    doc = t.status()
    assert doc["topic"] == t.topic and doc["group"] == t.group
    assert doc["state"] == "Empty" and doc["members"] == []
    assert doc["partitions"] == [
        {"partition": 0, "committed": 3, "low": 0, "high": 3, "lag": 0, "lag_seconds": 0.0, "owner": None},
        {"partition": 1, "committed": 2, "low": 0, "high": 2, "lag": 0, "lag_seconds": 0.0, "owner": None},
    ]
    assert doc["total_lag"] == 0 and doc["max_lag_seconds"] == 0.0
    text = t.tool("status")
    assert text.code == 0
    assert text.out.splitlines()[0] == f"Topic {t.topic}, group {t.group}: state Empty, 0 active members"
    assert table_rows(text.out, "PARTITION") == [["0", "3", "3", "0", "0.0", "-"], ["1", "2", "2", "0", "0.0", "-"],
                                                 ["total", "0", "0.0"]]
    assert "No active members." in text.out

    produced_at = time.time()
    produce_at(broker, t.topic, [(1, b"6", value(6), int(produced_at * 1000)),
                                 (1, b"7", value(7), int(produced_at * 1000)),
                                 (1, b"8", value(8), int(produced_at * 1000))])
    time.sleep(0.3)
    doc = t.status()
    checked_at = time.time()
    p0, p1 = doc["partitions"]
    assert p0 == {"partition": 0, "committed": 3, "low": 0, "high": 3, "lag": 0, "lag_seconds": 0.0, "owner": None}
    assert (p1["committed"], p1["high"], p1["lag"]) == (2, 5, 3)
    assert 0.3 <= p1["lag_seconds"] <= checked_at - produced_at + 0.01
    assert doc["total_lag"] == 3 and doc["max_lag_seconds"] == p1["lag_seconds"]
    rows = table_rows(t.tool("status").out, "PARTITION")
    assert rows[1][:4] == ["1", "2", "5", "3"] and float(rows[1][4]) >= 0.3 and rows[1][5] == "-"
    assert rows[2][:2] == ["total", "3"]
    assert t.committed() == {0: 3, 1: 2}  # status reads only


@pytest.mark.kafka
def test_status_names_each_owner_shows_the_dlq_and_a_dead_member_until_its_session_times_out(
        broker: Broker, erp: Any, tmp_path: Path) -> None:
    t = setup(broker, erp, tmp_path, partitions=2, dlq=True)
    dlq = t.topic + ".dlq"
    now = int(time.time() * 1000)
    produce_at(broker, t.topic, [(i % 2, str(i).encode(), value(i), now) for i in range(1, 5)])
    for i in range(3):
        write_letter(broker, dlq, t.topic, 100 + i, "erp", value(100 + i))
    assert t.tool("dlq", "replay", "--limit", "1").code == 0
    text = t.tool("status").out
    assert "No active members." in text
    assert (f"Dead-letter topic {dlq}: 3 letters, 3 written in the last hour, 3 in the last 24 h; 2 not replayed "
            f"yet by `erp-sync dlq replay` (group {t.group}.dlq-replay)") in text
    assert table_rows(text, "DLQ PARTITION") == [["0", "0", "3", "3", "3", "1", "2"]]

    # two consumers on one host: same client id, same host, different member ids; they read the retry topic too
    retry = create_topic(broker, t.topic + ".retry", 2)
    first = start_consumer(t.env, tmp_path / "a.log")
    second = start_consumer({**t.env, "ERP_SYNC_METRICS_PORT": str(free_port())}, tmp_path / "b.log")
    try:
        deadline = time.monotonic() + 40
        while True:
            doc = t.status()
            if len(doc["members"]) == 2 and all(m["partitions"] and m["other_assignments"] for m in doc["members"]):
                break
            assert time.monotonic() < deadline, f"{doc}\n{first.log()[-2000:]}\n{second.log()[-2000:]}"
            time.sleep(0.3)
        members = {m["member_id"]: m for m in doc["members"]}
        assert len({(m["client_id"], m["host"]) for m in members.values()}) == 1  # indistinguishable but for the id
        owners = {p["partition"]: p["owner"] for p in doc["partitions"]}
        assert set(owners.values()) == set(members)
        assert doc["retry_topics"][0]["topic"] == retry
        assert {p["partition"]: p["owner"] for p in doc["retry_topics"][0]["partitions"]} == owners  # co-partitioned
        assert doc["session_timeout_ms"] == 6000
        assert doc["dead_letters"] == {
            "topic": dlq, "replay_group": t.group + ".dlq-replay", "letters": 3, "last_hour": 3, "last_24h": 3,
            "not_replayed": 2, "partitions": [{"partition": 0, "low": 0, "high": 3, "letters": 3, "last_hour": 3,
                                               "last_24h": 3, "replay_position": 1, "not_replayed": 2}]}
        text = t.tool("status").out
        assert "state Stable, 2 active members" in text
        rows = table_rows(text, "PARTITION")
        assert {int(r[0]): r[5] for r in rows[:2]} == owners  # the OWNER column names the member
        assert {int(r[0]): r[5] for r in table_rows(text, "RETRY PARTITION")[:2]} == owners
        assert ("(Members as the group coordinator sees them: a consumer that died without leaving (kill -9, a lost "
                "node) is still shown as active, and keeps its partitions, until its session times out: "
                "session.timeout.ms 6000 here.)") in text

        second.proc.kill()  # SIGKILL: it cannot leave the group
        second.proc.wait(10)
        killed = time.monotonic()
        doc = t.status()
        if time.monotonic() - killed < 5:  # within the session timeout: still a member
            assert len(doc["members"]) == 2, doc
        deadline = time.monotonic() + 40
        while len(doc["members"]) != 1 or doc["members"][0]["partitions"] != [0, 1]:
            assert time.monotonic() < deadline, doc
            time.sleep(0.3)
            doc = t.status()
        assert time.monotonic() - killed >= 5.0  # gone only once its session timed out
    finally:
        for cp in (first, second):
            if cp.proc.poll() is None:
                cp.proc.send_signal(signal.SIGTERM)
                cp.wait(30)


@pytest.mark.kafka
def test_status_reads_the_first_of_several_source_topics(broker: Broker, erp: Any, tmp_path: Path) -> None:
    t = setup(broker, erp, tmp_path, partitions=2)
    other = create_topic(broker, unique("tools-other"), 1)
    produce_at(broker, t.topic, [(1, b"1", value(1), int(time.time() * 1000))])
    t.env["ERP_SYNC_TOPIC"] = f"{t.topic},{other}"
    doc = t.status()
    assert doc["topic"] == t.topic
    assert [(p["partition"], p["high"], p["lag"]) for p in doc["partitions"]] == [(0, 0, 0), (1, 1, 1)]


HOUR_MS, MINUTE_MS = 3_600_000, 60_000
CIRCUIT_NOTE = ("(The circuit state lives in the consumers: metric erp_sync_route_circuit_open{route}. status sees "
                "only what is in Kafka: a route with nothing parked may be failing right now, and one with parked "
                "records may be delivering them.)")


def status_at(t: Env, now_ms: int, *argv: str) -> Result:
    """``erp-sync status`` as if run at ``now_ms``: ages and times left are then exact."""
    with mock.patch("consumer.ops.status.now_utc", return_value=datetime.fromtimestamp(now_ms / 1000, UTC)):
        return t.tool("status", *argv)


def park_records(broker: Broker, source: str, retry: str, plan: dict[int, list[tuple[str, int]]]) -> None:
    """Park every record of ``source`` in ``retry`` as ``erp-sync run`` does.

    Same partition, key and value, the headers of ``parked_headers`` (``plan[partition][offset]`` gives
    the route and the first failure), written one minute after the first failure.
    """
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
    errors: list[Any] = []
    for msg in sorted(read_all(broker, source), key=lambda m: (m.partition(), m.offset())):
        route, first_failure = plan[msg.partition()][msg.offset()]
        headers = parked_headers(msg, route, 3, first_failure, ErpRejectError("InternalError", "boom"))
        producer.produce(retry, key=msg.key(), value=msg.value(), partition=msg.partition(),
                         timestamp=first_failure + MINUTE_MS, headers=headers,
                         on_delivery=lambda err, _m: errors.append(err) if err else None)
    assert producer.flush(30) == 0 and not errors, errors


def commit_for_group(broker: Broker, group: str, offsets: list[TopicPartition]) -> None:
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=offsets, asynchronous=False)
    finally:
        consumer.close()


@pytest.mark.kafka
def test_status_shows_the_retry_topics_and_what_each_route_has_parked(broker: Broker, erp: Any,
                                                                        tmp_path: Path) -> None:
    t = setup(broker, erp, tmp_path, partitions=2, dlq=True)
    retry = create_topic(broker, t.topic + ".retry", 2, config={"retention.ms": str(48 * HOUR_MS)})
    other = create_topic(broker, unique("tools-other"), 1)  # a second source topic, without its retry topic
    routes = tmp_path / "routes.yaml"
    routes.write_text(f"""routes:
  - name: hr
    match:
      flow_codes: [{FLOW}]
    url: https://hr.example.com/erp/approval?token=secret
    retry_deadline_seconds: 86400
  - name: payroll
    match:
      topics: [{other}]
    url: https://payroll.example.com/erp
  - name: finance
    url: https://finance.example.com/erp/approval
""", encoding="utf-8")
    t.env.update({"ERP_SYNC_TOPIC": f"{t.topic},{other}", "ERP_SYNC_ROUTES_FILE": str(routes)})
    now = int(time.time()) * 1000
    # (route, first failure) of each parked record, by partition and offset; "legacy" is in no routes file
    plan = {0: [("hr", now - 5 * HOUR_MS), ("hr", now - 3 * HOUR_MS), ("finance", now - 26 * HOUR_MS),
                ("hr", now - HOUR_MS)],
            1: [("finance", now - 44 * HOUR_MS), ("legacy", now - 10 * MINUTE_MS), ("hr", now - 4 * HOUR_MS),
                ("finance", now - 30 * MINUTE_MS)]}
    produce_at(broker, t.topic, [(p, b"k%d%d" % (p, i), value(10 * p + i), now - 50 * HOUR_MS)
                                 for p, records in plan.items() for i in range(len(records))])
    park_records(broker, t.topic, retry, plan)
    # the group finished 0@0 and 1@0, and 1@2 beyond its committed offset (named in the commit's metadata)
    commit_for_group(broker, t.group, [TopicPartition(retry, 0, 1),
                                       TopicPartition(retry, 1, 1, metadata=encode_finished(1, [(2, 3)]))])

    r = status_at(t, now)
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0] == f"Topic {t.topic}, group {t.group}: state Empty, 0 active members"
    assert (f"Retry topic {retry}: records parked from {t.topic}, read by group {t.group} like its source; "
            "retention 2d 0h") in lines
    assert table_rows(r.out, "RETRY PARTITION") == [["0", "1", "4", "3", "10740.0", "-"],
                                                    ["1", "1", "4", "3", "540.0", "-"], ["total", "6", "10740.0"]]
    assert (f"Retry topic {other}.retry: does not exist (`erp-sync create-topics` makes it); until then records of "
            f"{other} that their ERP keeps refusing wait in place.") in lines
    assert (f"Routes (ERP_SYNC_ROUTES_FILE {routes}); parked: records in the retry topics from the group's "
            "committed offsets to their ends") in lines
    assert table_rows(r.out, "ROUTE") == [
        ["hr", "https://hr.example.com/erp/approval?****", "parked (2 records, oldest 3h 0m ago, deadline in 21h 0m)"],
        ["payroll", "https://payroll.example.com/erp", "delivering"],
        ["finance", "https://finance.example.com/erp/approval",
         "parked (2 records, oldest 1d 2h ago, retention in 22h 1m, before the deadline)"],
        ["legacy", "- (not in the routes)", "parked (1 record, oldest 10m 0s ago, retention in 1d 23h)"],
    ]
    assert lines[-2:] == ["(A route not in the routes: its parked records are delivered through the route they "
                          "match now.)", CIRCUIT_NOTE]
    assert "secret" not in r.out

    r = status_at(t, now, "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["retry_topics"] == [
        {"source": t.topic, "topic": retry, "exists": True, "parking": True, "parking_off": None,
         "retention_seconds": 172800.0,
         "partitions": [
             {"partition": 0, "committed": 1, "low": 0, "high": 4, "lag": 3, "lag_seconds": 10740.0, "owner": None},
             {"partition": 1, "committed": 1, "low": 0, "high": 4, "lag": 3, "lag_seconds": 540.0, "owner": None}],
         "total_lag": 6, "max_lag_seconds": 10740.0},
        {"source": other, "topic": other + ".retry", "exists": False, "parking": False, "parking_off": None,
         "retention_seconds": None, "partitions": [], "total_lag": 0, "max_lag_seconds": None},
    ]

    def at(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")

    assert doc["routes"] == [
        {"name": "hr", "url": "https://hr.example.com/erp/approval?****", "configured": True, "state": "parked",
         "parked": 2, "parked_complete": True, "oldest_first_failure": at(now - 3 * HOUR_MS),
         "oldest_age_seconds": 10800.0, "retry_deadline_seconds": 86400.0, "deadline_in_seconds": 75600.0,
         "retention_in_seconds": 162060.0, "summary": "parked (2 records, oldest 3h 0m ago, deadline in 21h 0m)"},
        {"name": "payroll", "url": "https://payroll.example.com/erp", "configured": True, "state": "delivering",
         "parked": 0, "parked_complete": True, "oldest_first_failure": None, "oldest_age_seconds": None,
         "retry_deadline_seconds": 604800.0, "deadline_in_seconds": None, "retention_in_seconds": None,
         "summary": "delivering"},
        {"name": "finance", "url": "https://finance.example.com/erp/approval", "configured": True,
         "state": "parked", "parked": 2, "parked_complete": True, "oldest_first_failure": at(now - 26 * HOUR_MS),
         "oldest_age_seconds": 93600.0, "retry_deadline_seconds": 604800.0, "deadline_in_seconds": 511200.0,
         "retention_in_seconds": 79260.0,
         "summary": "parked (2 records, oldest 1d 2h ago, retention in 22h 1m, before the deadline)"},
        {"name": "legacy", "url": None, "configured": False, "state": "parked", "parked": 1, "parked_complete": True,
         "oldest_first_failure": at(now - 10 * MINUTE_MS), "oldest_age_seconds": 600.0,
         "retry_deadline_seconds": None, "deadline_in_seconds": None, "retention_in_seconds": 172260.0,
         "summary": "parked (1 record, oldest 10m 0s ago, retention in 1d 23h)"},
    ]
    assert doc["routes_note"] is None
    assert doc["parked_scan"] == {"complete": True, "records_read": 6, "unread": 0,
                                  "max_records_per_partition": 100_000, "timeout_seconds": 10.0}

    # a bounded scan: counts become lower bounds, and status says so
    with mock.patch("consumer.ops.parked.MAX_SCAN_RECORDS", 2):
        bounded = status_at(t, now)
        doc = json.loads(status_at(t, now, "--json").out)
    assert {route["name"]: route["summary"] for route in doc["routes"]} == {
        "hr": "parked (at least 1 record, oldest 3h 0m ago, deadline in 21h 0m)",
        "payroll": "delivering (as far as read)",
        "finance": "parked (at least 1 record, oldest 1d 2h ago, retention in 22h 1m, before the deadline)",
        "legacy": "parked (at least 1 record, oldest 10m 0s ago, retention in 1d 23h)"}
    assert doc["parked_scan"] == {"complete": False, "records_read": 4, "unread": 2,
                                  "max_records_per_partition": 2, "timeout_seconds": 10.0}
    assert ("(At least: 2 records not read; status reads at most 2 records per retry partition, for 10 s in all.)"
            in bounded.out.splitlines())

    # no ERP settings at all: status still works, and says why it shows no routes
    del t.env["ERP_SYNC_ROUTES_FILE"], t.env["ERP_SYNC_ERP_URL"]
    r = status_at(t, now)
    assert r.code == 0, r.err
    assert r.out.splitlines()[-1] == ("Routes: not shown: ERP_SYNC_ERP_URL is not set and there is no "
                                      "ERP_SYNC_ROUTES_FILE (status needs neither).")
    assert table_rows(r.out, "RETRY PARTITION")[2] == ["total", "6", "10740.0"]
    doc = json.loads(status_at(t, now, "--json").out)
    assert (doc["routes"], doc["parked_scan"]) == (None, None)
    assert doc["routes_note"] == r.out.splitlines()[-1]
    assert committed(broker, t.group, retry, 2) == {0: 1, 1: 1}  # status reads only


# ------------------------------------------------------------------------------------------------ reset-offsets


@pytest.mark.kafka
def test_reset_offsets_dry_run_execute_partitions_shift_and_datetime(broker: Broker, erp: Any,
                                                                    tmp_path: Path) -> None:
    t = setup(broker, erp, tmp_path, partitions=2)
    t0 = (int(time.time()) - 600) * 1000
    produce_at(broker, t.topic, [(0, str(i).encode(), value(i), t0 + i * 1000) for i in range(5)]
               + [(1, str(10 + i).encode(), value(10 + i), t0 + i * 1000) for i in range(3)])
    # a group that never committed: it would start at the low watermark (auto.offset.reset=earliest)
    fresh = t.tool("reset-offsets", "--to-latest")
    assert fresh.code == 0, fresh.err
    assert reset_rows(fresh.out) == {
        0: ("-", 5, "5 records will be skipped (never pushed); no committed offset: the group would start at 0"),
        1: ("-", 3, "3 records will be skipped (never pushed); no committed offset: the group would start at 0"),
    }
    assert t.committed() == {0: -1001, 1: -1001}
    r = t.tool("reset-offsets", "--to-latest", "--execute")
    assert r.code == 0, r.err
    assert f"Applied: group {t.group} now has committed offsets 0:5, 1:3 (partition:offset)." in r.out
    assert t.committed() == {0: 5, 1: 3}

    dry = t.tool("reset-offsets", "--to-earliest")
    assert dry.code == 0, dry.err
    assert reset_rows(dry.out) == {0: ("5", 0, "5 records will be re-read (approved ones pushed again)"),
                                   1: ("3", 0, "3 records will be re-read (approved ones pushed again)")}
    assert "Total: 8 records will be re-read, 0 skipped." in dry.out
    assert "Dry run: nothing was changed. Add --execute to apply." in dry.out
    assert (f"Warning: records re-read that were dead-lettered before (undecodable, invalid, or rejected by the ERP) "
            f"will be dead-lettered again: {t.topic}.dlq gets a second copy of each, and `erp-sync dlq replay` "
            "handles each copy as a letter of its own.") in dry.out
    assert "Warning" not in fresh.out  # nothing re-read: nothing dead-lettered again
    assert t.committed() == {0: 5, 1: 3}

    r = t.tool("reset-offsets", "--to-offset", "2", "--partitions", "0", "--execute")
    assert r.code == 0, r.err
    assert reset_rows(r.out) == {0: ("5", 2, "3 records will be re-read (approved ones pushed again)")}
    assert f"Applied: group {t.group} now has committed offsets 0:2 (partition:offset)." in r.out
    assert t.committed() == {0: 2, 1: 3}

    r = t.tool("reset-offsets", "--shift-by", "-1", "--partitions", "1", "--execute")
    assert r.code == 0, r.err
    assert reset_rows(r.out) == {1: ("3", 2, "1 record will be re-read (approved ones pushed again)")}
    assert t.committed() == {0: 2, 1: 2}

    r = t.tool("reset-offsets", "--shift-by", "10")
    assert r.code == 0, r.err
    assert reset_rows(r.out) == {
        0: ("2", 5, "3 records will be skipped (never pushed) (12 is above the high watermark: clamped to 5)"),
        1: ("2", 3, "1 record will be skipped (never pushed) (12 is above the high watermark: clamped to 3)"),
    }
    assert t.committed() == {0: 2, 1: 2}

    # first record at or after t0 + 2.5 s: partition 0 offset 3; partition 1 has none (→ its end, 3)
    r = t.tool("reset-offsets", "--to-datetime", iso(t0 + 2500 + 2 * 3600_000, "+02:00"),
               "--execute")
    assert r.code == 0, r.err
    assert reset_rows(r.out) == {
        0: ("2", 3, "1 record will be skipped (never pushed)"),
        1: ("2", 3, "1 record will be skipped (never pushed) (no record at or after that time: the end)"),
    }
    assert t.committed() == {0: 3, 1: 3}

    naive = datetime.fromtimestamp((t0 + 1000) / 1000, UTC).replace(tzinfo=None).isoformat()
    r = t.tool("reset-offsets", "--to-datetime", naive)
    assert r.code == 0, r.err
    assert f"note: --to-datetime {naive} has no time zone: read as UTC" in r.err
    assert {p: row[:2] for p, row in reset_rows(r.out).items()} == {0: ("3", 1), 1: ("3", 1)}
    assert t.committed() == {0: 3, 1: 3}

    r = t.tool("reset-offsets", "--to-latest", "--execute")
    assert r.code == 0, r.err
    assert t.committed() == {0: 5, 1: 3}

    bad = t.tool("reset-offsets", "--to-earliest", "--partitions", "0,7")
    assert bad.code == 2 and f"topic {t.topic} has no partition 7 (it has 0,1)" in bad.err
    bad = t.tool("reset-offsets", "--to-datetime", "yesterday")
    assert bad.code == 2 and "not an ISO 8601 date-time" in bad.err
    bad = t.tool("reset-offsets", "--to-offset", "-1")
    assert bad.code == 2 and "--to-offset -1" in bad.err
    assert t.tool("reset-offsets", "--execute").code == 2  # no target: argparse
    assert t.committed() == {0: 5, 1: 3}


@pytest.mark.kafka
def test_reset_offsets_execute_refused_but_preview_shown_while_a_consumer_is_running(
        broker: Broker, erp: Any, tmp_path: Path) -> None:
    t = setup(broker, erp, tmp_path, partitions=1, dlq=True)
    produce_at(broker, t.topic, [(0, b"1", value(1), int(time.time() * 1000))])
    proc = start_consumer(t.env, tmp_path / "running.log")
    try:
        deadline = time.monotonic() + 30
        while True:
            doc = t.status()
            if doc["members"] and doc["partitions"][0]["committed"] == 1:
                break
            assert time.monotonic() < deadline, f"the consumer did not join: {doc}\n{proc.log()[-2000:]}"
            time.sleep(0.2)
        member = doc["members"][0]
        assert doc["state"] == "Stable" and len(doc["members"]) == 1 and member["partitions"] == [0]
        assert doc["partitions"][0]["owner"] == member["member_id"]
        table = t.tool("status").out
        assert "state Stable, 1 active member" in table
        assert table_rows(table, "MEMBER ID") == [[member["member_id"], member["client_id"], member["host"], "0"]]

        named = (f"member {member['member_id']} (client {member['client_id']}, host {member['host']}, "
                 "partitions 0)")
        r = t.tool("reset-offsets", "--to-earliest", "--execute")
        assert r.code == 2, r
        assert f"group {t.group} has 1 active member (state Stable)" in r.err and named in r.err
        assert r.out == ""

        r = t.tool("reset-offsets", "--to-earliest")  # the preview works while consumers run
        assert r.code == 0, r.err
        assert reset_rows(r.out) == {0: ("1", 0, "1 record will be re-read (approved ones pushed again)")}
        assert "Dry run: nothing was changed. Add --execute to apply." in r.out
        assert (f"Note: group {t.group} has 1 active member (state Stable): CURRENT is the committed offset now, "
                "and it moves while they run. --execute is refused until every `erp-sync run` of the group is "
                "stopped.") in r.out
        assert named in r.out
        assert f"will be dead-lettered again: {t.topic}.dlq gets a second copy of each ({t.topic}.dlq holds 0 " \
            "letters now)" in r.out
        assert t.committed() == {0: 1}
    finally:
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


@pytest.mark.kafka
def test_topic_replay_by_reset_re_pushes_every_approved_record_with_the_same_key_and_body(
        broker: Broker, erp: Any, tmp_path: Path) -> None:
    t = setup(broker, erp, tmp_path, partitions=2)
    now = int(time.time() * 1000)
    approved = [1, 2, 3, 4, 5]
    produce_at(broker, t.topic, [(i % 2, str(i).encode(), value(i), now) for i in approved]
               + [(0, b"6", value(6, "REJECTED"), now)])
    t.run()
    first = requests(erp)
    assert sorted(r["idempotency_key"] for r in first) == [key(i) for i in approved]

    r = t.tool("reset-offsets", "--to-earliest", "--execute")
    assert r.code == 0, r.err
    assert reset_rows(r.out) == {0: ("3", 0, "3 records will be re-read (approved ones pushed again)"),
                                 1: ("3", 0, "3 records will be re-read (approved ones pushed again)")}
    assert t.committed() == {0: 0, 1: 0}
    t.run()

    every = requests(erp)
    assert len(every) == 10
    second = every[len(first):]
    assert Counter(r["idempotency_key"] for r in every) == {key(i): 2 for i in approved}
    for i in approved:
        pushes = [r for r in every if r["idempotency_key"] == key(i)]
        assert [p["body"] for p in pushes] == [body(i), body(i)]
        assert [p["headers"]["idempotency-key"] for p in pushes] == [key(i), key(i)]
        assert [p["code"] for p in pushes] == ["OK", "OK"]
    assert sorted(r["instance_id"] for r in second) == approved
    assert t.committed() == high_watermarks(broker, t.topic, 2) == {0: 3, 1: 3}


# ------------------------------------------------------------------------------------------------ replay


@pytest.mark.kafka
def test_replay_pushes_exactly_the_window_and_leaves_offsets_and_dlq_alone(broker: Broker, erp: Any,
                                                                           tmp_path: Path) -> None:
    t = setup(broker, erp, tmp_path, partitions=2, dlq=True)
    t0 = (int(time.time()) - 600) * 1000
    produce_at(broker, t.topic, [
        (0, b"1", value(1), t0), (0, b"2", value(2), t0 + 1000), (0, b"3", value(3, "REJECTED"), t0 + 2000),
        (0, b"4", value(4), t0 + 3000), (0, b"5", value(5), t0 + 4000),
        (1, b"6", value(6), t0 + 500), (1, b"7", value(7), t0 + 1500), (1, b"9", value(9), t0 - 5000),
        (1, b"8", value(8), t0 + 2500), (1, b"x", b"\x02garbage", t0 + 2700),
    ])
    t.run()
    first = {r["idempotency_key"]: r["body"] for r in requests(erp)}
    assert sorted(first) == sorted(key(i) for i in (1, 2, 4, 5, 6, 7, 8, 9))
    offsets = t.committed()
    assert offsets == {0: 5, 1: 5}
    dlq_before = len(read_all(broker, t.topic + ".dlq"))
    assert dlq_before == 1
    with erp.client() as c:
        c.clear()

    r = t.tool("replay", "--from", iso(t0 + 1000), "--to", iso(t0 + 3000))
    assert r.code == 1, r.err  # the undecodable record is a failure
    pushed = requests(erp)
    assert sorted(p["idempotency_key"] for p in pushed) == [key(2), key(7), key(8)]
    for p in pushed:
        assert p["body"] == first[p["idempotency_key"]] and p["code"] == "OK"
        assert p["headers"]["idempotency-key"] == p["idempotency_key"]
    lines = r.out.splitlines()
    assert lines[1:9] == [
        "  records scanned: 6",
        "  outside the window: 1",
        "  skipped (status not APPROVED): 1",
        "  pushed: 3",
        "  duplicates (ERP said already done): 0",
        "  failed: 1",
        "    partition 1 offset 4 instance ?: decode InvalidAvro: not a v1 WorkflowCompleted record: "
        "status: index -49 outside [0, 5)",
        "  (failed records were NOT written to the dead-letter topic)",
    ]
    assert "The group's committed offsets were not changed." in r.out
    bar = r"^replay \[#{30}\] 100% 6/6 [0-9.]+/s in 0:0[0-9] pushed 3, skipped 1, failed 1$"
    assert re.search(bar, r.err, re.M), r.err
    assert "\x1b" not in r.err  # not a terminal: plain lines
    assert t.committed() == offsets
    assert len(read_all(broker, t.topic + ".dlq")) == dlq_before

    bad = t.tool("replay", "--from", iso(t0 + 3000), "--to", iso(t0 + 1000))
    assert bad.code == 2 and "must be before --to" in bad.err


@pytest.mark.kafka
def test_replay_instance_ids_and_dry_run(broker: Broker, erp: Any, tmp_path: Path) -> None:
    t = setup(broker, erp, tmp_path, partitions=1)
    t0 = (int(time.time()) - 600) * 1000
    produce_at(broker, t.topic, [(0, str(i).encode(), value(i), t0 + i * 1000) for i in (1, 2, 3, 4)])
    window = ("--from", iso(t0), "--to", iso(t0 + 60_000), "--instance-id", "2", "--instance-id", "4")

    dry = t.tool("replay", *window, "--dry-run")
    assert dry.code == 0, dry.err
    assert dry.out.splitlines()[:2] == [
        f"would push: partition 0 offset 1 instance 2 Idempotency-Key {key(2)}",
        f"would push: partition 0 offset 3 instance 4 Idempotency-Key {key(4)}",
    ]
    assert "  not selected (--instance-id): 2" in dry.out and "  would push: 2" in dry.out
    assert requests(erp) == []

    r = t.tool("replay", *window)
    assert r.code == 0, r.err
    assert [(p["idempotency_key"], p["body"]) for p in requests(erp)] == [(key(2), body(2)), (key(4), body(4))]
    assert "  pushed: 2" in r.out and "  failed: 0" in r.out
    assert t.committed() == {0: -1001}  # the group was never touched


@pytest.mark.kafka
def test_replay_pushes_concurrently_one_at_a_time_per_key_with_a_rate_limit(broker: Broker, erp: Any,
                                                                          tmp_path: Path) -> None:
    t = setup(broker, erp, tmp_path, partitions=2)
    t0 = (int(time.time()) - 600) * 1000
    keys = {i: f"k{i % 6}".encode() for i in range(1, 61)}  # 6 keys, 10 records each, in offset order
    keys.update({i: None for i in range(61, 67)})  # no Kafka key: ordered by InstanceId
    produce_at(broker, t.topic, [(i % 2 if k is None else int(k[1:]) % 2, k, value(i), t0 + i)
                                 for i, k in keys.items()])
    set_behaviour(erp, latency_ms=40)
    window = ("--from", iso(t0), "--to", iso(t0 + 60_000))

    r = t.tool("replay", *window, "--max-in-flight", "4")
    assert r.code == 0, r.err
    pushed = requests(erp)
    assert len(pushed) == 66 and "  pushed: 66" in r.out
    with erp.client() as c:
        assert c.stats()["max_concurrency"] == 4
    per_key: dict[bytes | None, list[int]] = {}
    for p in sorted(pushed, key=lambda p: p["seq"]):
        per_key.setdefault(keys[p["instance_id"]], []).append(p["instance_id"])
    for k, seen in per_key.items():
        if k is not None:
            assert seen == sorted(seen), (k, seen)  # one key: in offset order, one after another
    assert re.search(r"  rate: [0-9.]+ pushes/s over [0-9.]+ s \(up to 4 in flight\)", r.out), r.out

    with erp.client() as c:
        c.clear()
    set_behaviour(erp, latency_ms=0)
    started = time.monotonic()
    r = t.tool("replay", *window, "--max-requests-per-second", "40")
    took = time.monotonic() - started
    assert r.code == 0, r.err
    times = sorted(p["time"] for p in requests(erp))
    assert len(times) == 66
    assert times[-1] - times[0] >= (66 - 40) / 40 - 0.1 and took >= 0.55  # a burst of 40, then 40/s


# ------------------------------------------------------------------------------------------------ dlq replay


def dlq_letters(broker: Broker, t: Env) -> list[dict[str, str]]:
    return [header_map(m) for m in read_all(broker, t.topic + ".dlq")]


def replay_position(broker: Broker, group: str, topic: str) -> tuple[int, list[tuple[int, int]]]:
    """The replay group's committed offset on partition 0 and the letters its metadata says are done beyond it."""
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tp = consumer.committed([TopicPartition(topic, 0)], timeout=10)[0]
    finally:
        consumer.close()
    return tp.offset, decode_finished(tp.metadata, tp.offset)


def write_letter(broker: Broker, dlq: str, source: str, offset: int, cls: str, v: bytes, code: str = "Earlier",
                 now: int = 0) -> None:
    """A dead letter as ``erp-sync run`` writes it (original headers first, then ours)."""
    now = now or int(time.time() * 1000)
    produce_at(broker, dlq, [(0, b"k%d" % offset, v, now)], headers=[
        ("traceparent", b"00-abc-01"), (H_TOPIC, source.encode()), (H_PARTITION, b"0"),
        (H_OFFSET, str(offset).encode()), ("erp_sync.original.timestamp", str(now).encode()),
        (H_CLASS, cls.encode()), (H_CODE, code.encode()), ("erp_sync.error.message", b"earlier"),
        (H_ATTEMPTS, b"3" if cls == "erp" else b"0")])


@pytest.mark.kafka
def test_dlq_replay_a_letter_failing_again_for_the_same_reason_stays_in_place_and_never_multiplies(
        broker: Broker, erp: Any, tmp_path: Path) -> None:
    t = setup(broker, erp, tmp_path, partitions=1, dlq=True)
    now = int(time.time() * 1000)
    set_behaviour(erp, rules=[{"instance_id": 2, "times": 1, "response": REJECT},
                              {"instance_id": 3, "times": 3, "response": REJECT}])
    produce_at(broker, t.topic, [(0, str(i).encode(), value(i), now) for i in (1, 2, 3, 4)])
    t.run()
    letters = dlq_letters(broker, t)
    assert sorted((h[H_OFFSET], h[H_CLASS], h[H_CODE], h[H_ATTEMPTS]) for h in letters) == [
        ("1", "erp", REJECT["code"], "1"), ("2", "erp", REJECT["code"], "1")]
    seen = len(requests(erp))
    assert seen == 4
    replay_group = t.group + ".dlq-replay"

    r = t.tool("dlq", "replay")
    assert r.code == 1, r.err  # instance 3 still fails
    rows = {row[3]: row for row in table_rows(r.out, "DLQ")}
    assert rows["1"][1:] == [t.topic, "0", "1", "2", f"erp {REJECT['code']}", "accepted"]
    assert rows["2"][1:6] == [t.topic, "0", "2", "3", f"erp {REJECT['code']}"]
    assert rows["2"][6] == (f"still failing: same reason (erp {REJECT['code']}: budget exceeded); left in place")
    assert (f"Total: 2 dead letters: 1 accepted, 0 duplicates, 0 skipped, 0 failed again (back on {t.topic}.dlq), "
            "1 still failing for the same reason (left in place).") in r.out
    new = requests(erp)[seen:]
    assert sorted((p["idempotency_key"], p["body"], p["code"]) for p in new) == [
        (key(2), body(2), "OK"), (key(3), body(3), REJECT["code"])]
    assert len(dlq_letters(broker, t)) == 2  # nothing written back
    assert replay_position(broker, replay_group, t.topic + ".dlq") == (1, [])  # at the letter not done

    seen = len(requests(erp))
    r = t.tool("dlq", "replay")  # the same again: instance 2 is not pushed again, the DLQ does not grow
    assert r.code == 1, r.err
    assert [(row[0], row[4], row[6]) for row in table_rows(r.out, "DLQ")] == [
        ("0@1", "3", f"still failing: same reason (erp {REJECT['code']}: budget exceeded); left in place")]
    assert [(p["idempotency_key"], p["code"]) for p in requests(erp)[seen:]] == [(key(3), REJECT["code"])]
    assert len(dlq_letters(broker, t)) == 2

    seen = len(requests(erp))
    r = t.tool("dlq", "replay")  # the ERP takes it now
    assert r.code == 0, r.err
    assert [(row[0], row[4], row[6]) for row in table_rows(r.out, "DLQ")] == [("0@1", "3", "accepted")]
    assert [(p["idempotency_key"], p["code"]) for p in requests(erp)[seen:]] == [(key(3), "OK")]
    assert replay_position(broker, replay_group, t.topic + ".dlq") == (2, [])

    seen = len(requests(erp))
    r = t.tool("dlq", "replay")
    assert r.code == 0, r.err
    assert r.out.strip() == (f"Nothing to replay: {t.topic}.dlq has no dead letter that group "
                             f"{t.group}.dlq-replay has not replayed yet.")
    assert len(requests(erp)) == seen
    assert len(dlq_letters(broker, t)) == 2
    assert t.committed() == {0: 4}  # the consumer's group was never touched


@pytest.mark.kafka
def test_dlq_replay_class_leaves_other_letters_in_place_and_replays_the_rest_of_a_mixed_dlq(
        broker: Broker, erp: Any, tmp_path: Path) -> None:
    t = setup(broker, erp, tmp_path, partitions=1)
    dlq = create_topic(broker, t.topic + ".dlq", 1)
    write_letter(broker, dlq, t.topic, 100, "validation", value(10), "OutOfRange")
    write_letter(broker, dlq, t.topic, 101, "erp", value(11))
    write_letter(broker, dlq, t.topic, 102, "decode", b"\x02garbage")
    write_letter(broker, dlq, t.topic, 103, "erp", value(13))
    write_letter(broker, dlq, t.topic, 104, "validation", value(14), "OutOfRange")
    replay_group = t.group + ".dlq-replay"

    r = t.tool("dlq", "replay", "--class", "erp")  # the first letter is of another class: not a reason to stop
    assert r.code == 0, r.err
    assert [row[3:5] + row[6:] for row in table_rows(r.out, "DLQ")] == [["101", "11", "accepted"],
                                                                        ["103", "13", "accepted"]]
    assert ("Not selected by --class erp: 3 dead letters (1 decode, 2 validation) left in place; a run without "
            "--class replays them.") in r.out
    assert sorted(p["idempotency_key"] for p in requests(erp)) == [key(11), key(13)]
    assert replay_position(broker, replay_group, dlq) == (0, [(1, 2), (3, 4)])

    r = t.tool("dlq", "replay", "--class", "erp")  # nothing of that class left
    assert r.code == 0, r.err
    assert "DLQ" not in r.out.splitlines()[1]  # no letter handled
    assert "Not selected by --class erp: 3 dead letters" in r.out
    assert "Passed over: 2 dead letters an earlier run already replayed." in r.out
    assert len(requests(erp)) == 2

    r = t.tool("dlq", "replay", "--class", "validation")  # the ERP takes them now (the cause was fixed)
    assert r.code == 0, r.err
    assert [row[3:5] + row[6:] for row in table_rows(r.out, "DLQ")] == [["100", "10", "accepted"],
                                                                        ["104", "14", "accepted"]]
    assert replay_position(broker, replay_group, dlq) == (2, [(3, 5)])
    assert len(read_all(broker, dlq)) == 5  # nothing written back


@pytest.mark.kafka
def test_dlq_replay_limit_dry_run_and_a_new_reason_written_back_once_with_its_original_headers(
        broker: Broker, erp: Any, tmp_path: Path) -> None:
    t = setup(broker, erp, tmp_path, partitions=1)
    dlq = create_topic(broker, t.topic + ".dlq", 1)
    now = int(time.time() * 1000)
    write_letter(broker, dlq, t.topic, 100, "erp", value(11), now=now)
    write_letter(broker, dlq, t.topic, 101, "erp", value(12), now=now)
    write_letter(broker, dlq, t.topic, 102, "decode", b"\x02garbage", now=now)
    write_letter(broker, dlq, t.topic, 103, "erp", value(13), now=now)
    replay_group = t.group + ".dlq-replay"

    r = t.tool("dlq", "replay", "--class", "erp", "--limit", "1")
    assert r.code == 0, r.err
    assert [row[3:5] + row[6:] for row in table_rows(r.out, "DLQ")] == [["100", "11", "accepted"]]
    assert "Stopped after --limit 1; the other dead letters wait for the next run." in r.out
    assert replay_position(broker, replay_group, dlq) == (1, [])

    r = t.tool("dlq", "replay", "--class", "erp")
    assert r.code == 0, r.err
    assert [row[3:5] + row[6:] for row in table_rows(r.out, "DLQ")] == [["101", "12", "accepted"],
                                                                        ["103", "13", "accepted"]]
    assert replay_position(broker, replay_group, dlq) == (2, [(3, 4)])

    dry = t.tool("dlq", "replay", "--dry-run")
    assert dry.code == 0, dry.err
    assert [row[3:] for row in table_rows(dry.out, "DLQ")] == [
        ["102", "?", "decode Earlier", "would fail again: decode InvalidAvro: not a v1 WorkflowCompleted record: "
                                       "status: index -49 outside [0, 5)"]]
    assert "Passed over: 1 dead letter an earlier run already replayed." in dry.out
    assert replay_position(broker, replay_group, dlq) == (2, [(3, 4)])
    assert len(requests(erp)) == 3 and len(read_all(broker, dlq)) == 4

    r = t.tool("dlq", "replay")  # a new reason (InvalidAvro, not Earlier): written back once, the old one done
    assert r.code == 1, r.err
    assert [row[3:5] + row[6:7] for row in table_rows(r.out, "DLQ")] == [
        ["102", "?", "failed again: decode InvalidAvro: not a v1 WorkflowCompleted record: status: index -49 "
                     "outside [0, 5); back on the DLQ (attempts 0, replays 1)"]]
    assert replay_position(broker, replay_group, dlq) == (4, [])
    written = read_all(broker, dlq)
    assert len(written) == 5
    back = written[4]
    assert back.key() == b"k102" and back.value() == b"\x02garbage"
    assert [k for k, _v in back.headers()] == [
        "traceparent", H_TOPIC, H_PARTITION, H_OFFSET, "erp_sync.original.timestamp", H_CLASS, H_CODE,
        "erp_sync.error.message", H_ATTEMPTS, "erp_sync.replays"]
    h = header_map(back)
    assert (h["traceparent"], h[H_TOPIC], h[H_OFFSET], h["erp_sync.original.timestamp"]) == (
        "00-abc-01", t.topic, "102", str(now))
    assert (h[H_CLASS], h[H_CODE], h[H_ATTEMPTS], h["erp_sync.replays"]) == ("decode", "InvalidAvro", "0", "1")

    for _ in range(3):  # the same reason from now on: it stays where it is (not 5 → 6 → 7 → 8 letters)
        r = t.tool("dlq", "replay")
        assert r.code == 1, r.err
        assert [row[0] + " " + row[6] for row in table_rows(r.out, "DLQ")] == [
            "0@4 still failing: same reason (decode InvalidAvro: not a v1 WorkflowCompleted record: status: index "
            "-49 outside [0, 5)); left in place"]
        assert len(read_all(broker, dlq)) == 5
        assert replay_position(broker, replay_group, dlq) == (4, [])
    dry = t.tool("dlq", "replay", "--dry-run")
    assert dry.code == 0, dry.err
    assert [row[6] for row in table_rows(dry.out, "DLQ")] == [
        "would still fail: same reason (decode InvalidAvro: not a v1 WorkflowCompleted record: status: index -49 "
        "outside [0, 5)); left in place"]

    assert t.tool("dlq", "replay", "--limit", "0").code == 2
    assert t.tool("dlq", "replay", "--class", "nope").code == 2


@pytest.mark.kafka
def test_dlq_replay_concurrently_never_commits_past_a_letter_not_done(broker: Broker, erp: Any,
                                                                     tmp_path: Path) -> None:
    t = setup(broker, erp, tmp_path, partitions=1)
    dlq = create_topic(broker, t.topic + ".dlq", 1)
    for i in range(40):
        write_letter(broker, dlq, t.topic, i, "erp", value(1000 + i), REJECT["code"] if i in (0, 17) else "Earlier")
    # letter 0 is slow and still rejected; 17 still rejected; the others accepted while 0 is in flight
    set_behaviour(erp, latency_ms=20, rules=[
        {"instance_id": 1000, "times": 1, "response": {**REJECT, "latency_ms": 1000}},
        {"instance_id": 1017, "times": 1, "response": REJECT}])
    r = t.tool("dlq", "replay", "--max-in-flight", "8")
    assert r.code == 1, r.err
    results = {int(row[3]): row[6] for row in table_rows(r.out, "DLQ")}
    assert len(results) == 40
    assert {i for i, res in results.items() if res.startswith("still failing: same reason")} == {0, 17}
    assert all(res == "accepted" for i, res in results.items() if i not in (0, 17))
    with erp.client() as c:
        assert c.stats()["max_concurrency"] == 8
    assert replay_position(broker, t.group + ".dlq-replay", dlq) == (0, [(1, 17), (18, 40)])

    seen = len(requests(erp))
    r = t.tool("dlq", "replay")  # only the two letters not done are pushed again
    assert r.code == 0, r.err
    assert sorted(p["instance_id"] for p in requests(erp)[seen:]) == [1000, 1017]
    assert "Passed over: 38 dead letters an earlier run already replayed." in r.out
    assert replay_position(broker, t.group + ".dlq-replay", dlq) == (40, [])
    assert len(read_all(broker, dlq)) == 40


@pytest.mark.kafka
def test_dlq_replay_interrupted_commits_only_the_letters_done(broker: Broker, erp: Any, tmp_path: Path) -> None:
    t = setup(broker, erp, tmp_path, partitions=1)
    dlq = create_topic(broker, t.topic + ".dlq", 1)
    for i in range(24):
        write_letter(broker, dlq, t.topic, i, "erp", value(2000 + i))
    set_behaviour(erp, latency_ms=400)
    log = open(tmp_path / "dlq-replay.log", "w")  # noqa: SIM115 - closed below
    # SIGINT as a terminal's Ctrl-C delivers it, even when this session runs in the background (a shell
    # starts background jobs with SIGINT ignored, and a child inherits that: Python then installs no handler)
    proc = subprocess.Popen([ERP_SYNC, "dlq", "replay", "--max-in-flight", "4"], env=t.env, stdout=log,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 30
        while len(requests(erp)) < 6:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "dlq-replay.log").read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
    output = (tmp_path / "dlq-replay.log").read_text()
    assert ("Interrupted: the dead letters accepted, skipped or written back above are done; the others wait for "
            "the next run.") in output
    assert "given up: interrupted before the ERP answered" in output
    accepted = {p["instance_id"] - 2000 for p in requests(erp) if p["code"] == "OK"}
    committed_offset, beyond = replay_position(broker, t.group + ".dlq-replay", dlq)
    done = set(range(committed_offset)) | {o for start, end in beyond for o in range(start, end)}
    assert done and done <= accepted  # never past a letter that is not done
    assert len(done) < 24

    set_behaviour(erp, latency_ms=0)
    seen = len(requests(erp))
    r = t.tool("dlq", "replay")
    assert r.code == 0, r.err
    again = {p["instance_id"] - 2000 for p in requests(erp)[seen:]}
    assert again == set(range(24)) - done  # the rest, and only the rest
    assert replay_position(broker, t.group + ".dlq-replay", dlq) == (24, [])
