"""No head-of-line blocking (issue "routes, parked records, a retry deadline"), on the real broker.

``erp-sync run`` in a subprocess, a real KRaft broker, real HTTP ERP stubs (one per route). Each
test prints its figures (``figures`` lines, captured with ``-s``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from consumer.devstack.erp_stub import ErpStub, StubClient
from consumer.devstack.events import encode, spec_example_event
from dev.harness import (
    ERP_SYNC,
    Broker,
    ConsumerProcess,
    committed,
    consumer_env,
    create_topic,
    header_map,
    high_watermarks,
    produce,
    read_all,
    start_consumer,
    stop_consumer,
    unique,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
HR, FIN = 1_400_000_000_000_000_001, 1_400_000_000_000_000_002
PARTITIONS = 3


def figures(name: str, **values: Any) -> None:
    print(f"\nfigures {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


def event(instance_id: int, flow_code: int = FIN) -> bytes:
    return encode({**spec_example_event(), "instance_id": instance_id, "flow_code": flow_code})


def topics(broker: Broker, name: str, retry_config: dict[str, str] | None = None) -> str:
    create_topic(broker, name, PARTITIONS)
    create_topic(broker, name + ".dlq")
    create_topic(broker, name + ".retry", PARTITIONS, config=retry_config)
    return name


def routes_file(tmp_path: Path, hr_url: str, fin_url: str) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(f"routes:\n  - name: hr\n    match: {{flow_codes: [{HR}]}}\n    url: {hr_url}\n"
                    f"  - name: finance\n    url: {fin_url}\n", encoding="utf-8")
    return path


def accepted_ids(stub: StubClient) -> list[int]:
    return [int(r["instance_id"]) for r in stub.requests() if r["code"] == "OK"]


def committed_total(broker: Broker, group: str, topic: str) -> int:
    return sum(max(0, o) for o in committed(broker, group, topic, PARTITIONS).values())


@pytest.fixture
def second_erp() -> Any:
    stub = ErpStub()
    stub.start()
    try:
        yield stub
    finally:
        stub.stop()


def test_one_route_down_does_not_hold_back_the_other(broker: Broker, erp: ErpStub, stub: StubClient,
                                                     second_erp: ErpStub, tmp_path: Path,
                                                     procs: list[ConsumerProcess]) -> None:
    """Route hr's ERP down while records of both routes arrive on shared partitions."""
    topic = topics(broker, unique("routes"))
    group = unique("g-routes")
    fin = StubClient(second_erp.base_url)
    env = consumer_env(broker, topic, group, "", ERP_SYNC_ROUTES_FILE=str(routes_file(tmp_path, erp.url,
                                                                                       second_erp.url)),
                       ERP_SYNC_PARK_AFTER_SECONDS="3", ERP_SYNC_COMMIT_INTERVAL_SECONDS="0.2",
                       ERP_SYNC_RETRY_BACKOFF_MAX_SECONDS="1")
    del env["ERP_SYNC_ERP_URL"]
    cp = start_consumer(env, tmp_path / "run.log")
    procs.append(cp)
    # warm up: one record of each route, then finance alone for its rate
    produce(broker, topic, [(b"w-hr", event(1, HR)), (b"w-fin", event(2, FIN))])
    wait_until(lambda: len(accepted_ids(stub)) == 1 and len(accepted_ids(fin)) == 1, 60, "warm-up delivered")
    alone = [(f"fa{i}".encode(), event(100_000 + i)) for i in range(400)]
    started = time.monotonic()
    produce(broker, topic, alone)
    wait_until(lambda: len(accepted_ids(fin)) == 401, 60, "finance alone")
    alone_rate = 400 / (time.monotonic() - started)

    stub.behaviour(default={"status": 503})  # hr's ERP goes down
    mixed: list[tuple[bytes, bytes]] = []
    for i in range(400):
        mixed.append((f"h{i % 50}".encode(), event(200_000 + i, HR)))  # 50 keys, 8 records each
        mixed.append((f"f{i}".encode(), event(300_000 + i, FIN)))
    started = time.monotonic()
    produce(broker, topic, mixed)
    wait_until(lambda: len(accepted_ids(fin)) == 801, 60, "finance during hr's outage")
    outage_rate = 400 / (time.monotonic() - started)
    end = sum(high_watermarks(broker, topic, PARTITIONS).values())
    caught_up = wait_until(lambda: committed_total(broker, group, topic) == end, 30,
                           "the source committed to its end while hr is down")
    parked = read_all(broker, topic + ".retry")
    assert len(parked) == 400 and {header_map(m)["erp_sync.route"] for m in parked} == {"hr"}

    stub.behaviour()  # hr comes back after the outage
    outage_s = time.monotonic() - started
    wait_until(lambda: len(set(accepted_ids(stub))) == 401, 90, "hr's parked records delivered")
    retry_end = sum(high_watermarks(broker, topic + ".retry", PARTITIONS).values())
    wait_until(lambda: committed_total(broker, group, topic + ".retry") == retry_end, 30, "the retry topic committed")
    order = [r for r in accepted_ids(stub) if r >= 200_000]
    by_key: dict[int, list[int]] = defaultdict(list)
    for iid in order:
        by_key[(iid - 200_000) % 50].append(iid)
    assert all(ids == sorted(ids) for ids in by_key.values()), "per-key order of hr's records"
    duplicates = len(order) - len(set(order))
    assert read_all(broker, topic + ".dlq") == []
    assert stop_consumer(cp) == 0
    figures("routes: hr down, finance goes on", finance_alone_per_s=round(alone_rate), finance_during_outage_per_s=
            round(outage_rate), ratio=round(outage_rate / alone_rate, 2), source_caught_up_s=round(caught_up, 1),
            outage_s=round(outage_s, 1), hr_parked=len(parked), hr_duplicates=duplicates)
    assert outage_rate >= 0.5 * alone_rate, (outage_rate, alone_rate)


def test_a_record_answered_retry_forever_is_parked_then_dead_lettered_at_its_deadline(
        broker: Broker, erp: ErpStub, stub: StubClient, tmp_path: Path, procs: list[ConsumerProcess]) -> None:
    topic = topics(broker, unique("poison"))
    group = unique("g-poison")
    poison, follower = 400_000, 400_001
    stub.behaviour(rules=[{"instance_id": poison, "response": {"code": "InternalError", "message": "db lock"}}])
    records = [(b"k", event(poison)), (b"k", event(follower))]
    records += [(f"o{i}".encode(), event(410_000 + i)) for i in range(300)]
    produce(broker, topic, records, partition=0)
    env = consumer_env(broker, topic, group, erp.url, ERP_SYNC_PARK_AFTER_SECONDS="2",
                       ERP_SYNC_RETRY_DEADLINE_SECONDS="8", ERP_SYNC_COMMIT_INTERVAL_SECONDS="0.2",
                       ERP_SYNC_RETRY_BACKOFF_MAX_SECONDS="1")
    cp = start_consumer(env, tmp_path / "run.log")
    procs.append(cp)
    started = time.monotonic()
    took = wait_until(lambda: committed(broker, group, topic, PARTITIONS)[0] == len(records), 30,
                      "the partition's commit reaches its end within the park budget")
    parked = read_all(broker, topic + ".retry")
    assert [header_map(m)["erp_sync.original.offset"] for m in parked] == ["0", "1"]
    assert follower not in [int(r["instance_id"]) for r in stub.requests()], "the follower must not go first"
    dead_after = wait_until(lambda: read_all(broker, topic + ".dlq"), 30, "the deadline's dead letter")
    (letter,) = read_all(broker, topic + ".dlq")
    headers = header_map(letter)
    assert (headers["erp_sync.error.class"], headers["erp_sync.error.code"]) == ("erp", "RetryDeadlineExceeded")
    assert "last answer InternalError: db lock" in headers["erp_sync.error.message"]
    assert letter.value() == event(poison)
    wait_until(lambda: follower in accepted_ids(stub), 20, "the follower after the dead letter")
    tries = [int(r["instance_id"]) for r in stub.requests()]
    assert tries.index(follower) > max(i for i, iid in enumerate(tries) if iid == poison)
    assert stop_consumer(cp) == 0
    figures("poison record parked", commit_reached_end_s=round(took, 1), dead_letter_after_s=round(
        time.monotonic() - started, 1), dead_letter_waited_s=round(dead_after, 1), poison_attempts=tries.count(poison))


def test_kill_9_while_parking_and_while_delivering_loses_nothing_and_keys_still_wait(
        broker: Broker, erp: ErpStub, stub: StubClient, tmp_path: Path, procs: list[ConsumerProcess]) -> None:
    topic = topics(broker, unique("kill-park"))
    group = unique("g-kill-park")
    env = consumer_env(broker, topic, group, erp.url, ERP_SYNC_PARK_AFTER_SECONDS="1",
                       ERP_SYNC_COMMIT_INTERVAL_SECONDS="0.2", ERP_SYNC_RETRY_BACKOFF_MAX_SECONDS="0.5",
                       ERP_SYNC_MAX_IN_FLIGHT="2")
    stub.behaviour(default={"status": 503})  # down: everything gets parked
    records = [(f"k{i % 20}".encode(), event(500_000 + i)) for i in range(200)]
    produce(broker, topic, records)
    first = start_consumer(env, tmp_path / "run1.log")
    procs.append(first)
    wait_until(lambda: len(read_all(broker, topic + ".retry")) >= 50, 40, "parking under way")
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    second = start_consumer(env, tmp_path / "run2.log")  # still down: it finishes parking
    procs.append(second)
    wait_until(lambda: committed_total(broker, group, topic) == 200, 60, "the source committed to its end")
    produce(broker, topic, [(b"k3", event(599_999))])  # a later record of a parked key, while it is parked
    stub.behaviour(latency_ms=50)  # the ERP is back (2 in flight, 50 ms: about 40/s): parked records are delivered...
    wait_until(lambda: len(set(accepted_ids(stub))) >= 60, 60, "delivery from the retry topic under way")
    os.kill(second.proc.pid, signal.SIGKILL)  # ...and killed while delivering them
    second.proc.wait(10)
    delivered_before = len(set(accepted_ids(stub)))
    third = start_consumer(env, tmp_path / "run3.log")
    procs.append(third)
    wait_until(lambda: '"event": "started"' in third.log(), 30, "the third consumer started")
    wait_until(lambda: set(accepted_ids(stub)) == {500_000 + i for i in range(200)} | {599_999}, 90,
               "every record delivered")
    accepted = accepted_ids(stub)
    k3 = [iid for iid in accepted if iid == 599_999 or (iid >= 500_000 and (iid - 500_000) % 20 == 3)]
    first_seen = list(dict.fromkeys(k3))
    assert first_seen == sorted(first_seen), f"key k3 out of order: {first_seen}"
    assert read_all(broker, topic + ".dlq") == []
    assert stop_consumer(third) == 0
    figures("kill -9 while parking and delivering", accepted=len(accepted), distinct=len(set(accepted)),
            duplicates=len(accepted) - len(set(accepted)), delivered_before_second_kill=delivered_before)
    assert delivered_before < 201, "the second kill must land while parked records were being delivered"


def test_a_retry_topic_that_refuses_the_record_holds_the_source_commit(
        broker: Broker, erp: ErpStub, stub: StubClient, tmp_path: Path, procs: list[ConsumerProcess]) -> None:
    topic = topics(broker, unique("unwritable"), retry_config={"max.message.bytes": "200"})
    group = unique("g-unwritable")
    stub.behaviour(rules=[{"instance_id": 600_001, "response": {"code": "InternalError"}}])
    produce(broker, topic, [(b"a", event(600_000)), (b"k", event(600_001)), (b"b", event(600_002))], partition=0)
    env = consumer_env(broker, topic, group, erp.url, ERP_SYNC_PARK_AFTER_SECONDS="1",
                       ERP_SYNC_COMMIT_INTERVAL_SECONDS="0.2", ERP_SYNC_RETRY_BACKOFF_MAX_SECONDS="0.5")
    cp = start_consumer(env, tmp_path / "run.log")
    procs.append(cp)
    wait_until(lambda: {600_000, 600_002} <= set(accepted_ids(stub)), 30, "the others delivered")
    time.sleep(4)  # well past the park budget: parking is refused by the retry topic
    assert committed(broker, group, topic, PARTITIONS)[0] == 1, "never past a record it could not park"
    assert read_all(broker, topic + ".retry") == []
    assert '"event": "parked_record_failed"' in cp.log()
    assert stop_consumer(cp) == 0


@pytest.mark.parametrize(("text", "message"), [
    ("routes:\n  - name: hr\n    url: https://h.example/x\n    timeout: 3\n", "route 'hr': timeout: unknown field"),
    ("routes:\n  - name: a\n    match: {topics: [t]}\n    url: https://h.example/x\n  - name: a\n"
     "    url: https://h.example/y\n", "route 'a': name: used by an earlier route"),
    ("routes:\n  - name: hr\n    match: {flow_codes: []}\n    url: https://h.example/x\n",
     "route 'hr': match.flow_codes: empty: this route would match nothing"),
    ("routes:\n  - name: hr\n    url: https//h.example/x\n", "route 'hr': url must be an http:// or https:// URL"),
])
def test_a_bad_routes_file_stops_the_start_with_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERP_SYNC_")}
    env.update(ERP_SYNC_ROUTES_FILE=str(path), ERP_SYNC_METRICS_PORT="0")
    for command in ("run", "check-config"):
        done = subprocess.run([ERP_SYNC, command], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        line = done.stderr.strip().splitlines()[-1]
        assert line.startswith(f"erp-sync: configuration error: ERP_SYNC_ROUTES_FILE: {path}: ") and message in line
