"""Duplicates after a kill -9 and a rebalance: only the pushes that were in flight (issue 14).

The group commits, beside the contiguous offset, the offsets finished beyond it (the commit's
metadata); the next owner of a partition, this process restarted or another member, skips them. So
when a few pushes hang and everything behind them is done, a kill -9 or a rebalance re-pushes exactly
the hung ones: before the metadata, every record from the first hung one on was pushed again.

Real broker, real ERP stub; the hung pushes are stub rules (``hang_s``) on chosen instances.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from consumer import transform
from consumer.delivery.offsets import decode_finished, in_ranges
from consumer.devstack.erp_stub import ErpStub, StubClient
from dev.harness import Broker, ConsumerProcess, log_events, produce, run_until_idle, start_consumer
from tests.faults.test_faults_process import (
    IDLE_S,
    SLACK_S,
    approved,
    assert_all_accepted,
    assert_committed_to_end,
    by_instance,
    check_duplicates_identical,
    env_for,
    event_names,
    figures,
    new_topics,
    record,
    sigterm_and_wait,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

HANG_S = 600.0
"""Long enough to outlive the test: a hung push is in flight until its consumer dies or gives it up."""


def committed_with_metadata(broker: Broker, group: str, topic: str, partitions: int) -> dict[int, tuple[int, str]]:
    """The group's committed offset and commit metadata per partition (read without joining the group)."""
    reader = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = reader.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        reader.close()
    return {tp.partition: (tp.offset, tp.metadata or "") for tp in tps}


def finished_beyond_commit(broker: Broker, group: str, topic: str, partitions: int) -> set[tuple[int, int]]:
    """``(partition, offset)`` the group's commit metadata names as finished beyond its committed offset."""
    out = set()
    for p, (offset, metadata) in committed_with_metadata(broker, group, topic, partitions).items():
        ranges = decode_finished(metadata, offset)
        out |= {(p, o) for start, end in ranges for o in range(start, end) if in_ranges(ranges, o)}
    return out


def hang(stub: StubClient, instance_ids: list[int]) -> None:
    """These instances' pushes get no answer (for :data:`HANG_S`); every other push is answered at once."""
    stub.behaviour(rules=[{"instance_id": iid, "response": {"hang_s": HANG_S, "request_id": "HANG"}}
                          for iid in instance_ids])


def scenario(broker: Broker, name: str, partitions: int, seed: int) -> tuple[
        str, str, dict[int, tuple[int, int]], dict[int, Any], dict[int, list[int]]]:
    """300 approved records on ``partitions`` partitions.

    Returns:
        The topic, the group, where each instance landed (partition, offset), its expected ERP request,
        and each partition's instances in offset order.
    """
    topic, _dlq, group = new_topics(broker, name, partitions)
    evs = approved(300, seed=seed)
    placed = produce(broker, topic, [record(e) for e in evs])
    where = {e["instance_id"]: placed[i] for i, e in enumerate(evs)}
    expected = {e["instance_id"]: transform.erp_request(e) for e in evs}
    by_partition = {p: sorted((iid for iid, (pp, _o) in where.items() if pp == p), key=lambda i: where[i][1])
                    for p in range(partitions)}
    return topic, group, where, expected, by_partition


def answered_ok(stub: StubClient) -> set[int]:
    """Instances the ERP accepted, the hung requests left out."""
    return {r["instance_id"] for r in stub.requests() if r["code"] == "OK" and r["request_id"] != "HANG"}


def test_kill_9_pushes_again_only_the_pushes_in_flight(broker: Broker, erp: ErpStub, stub: StubClient,
                                                       procs: list[ConsumerProcess], tmp_path: Path) -> None:
    partitions = 2
    topic, group, where, expected, by_offset = scenario(broker, "dups-kill", partitions, 1401)
    n = len(expected)
    # early records of both partitions hang: their partitions' contiguous commit stays behind them
    hung = [by_offset[0][3], by_offset[0][10], by_offset[1][5]]
    hang(stub, hung)
    env = env_for(broker, erp, topic, group, ERP_SYNC_ERP_TIMEOUT_SECONDS="300",
                  ERP_SYNC_COMMIT_INTERVAL_SECONDS="0.2")
    first = start_consumer(env, tmp_path / "first.log")
    procs.append(first)
    done_elsewhere = {where[iid] for iid in expected if iid not in hung}

    def everything_else_done_and_committed() -> bool:
        if answered_ok(stub) != set(expected) - set(hung):
            return False
        floors = committed_with_metadata(broker, group, topic, partitions)
        beyond = finished_beyond_commit(broker, group, topic, partitions)
        committed_below = {(p, o) for p, (floor, _m) in floors.items() for o in range(max(floor, 0))}
        return done_elsewhere <= (beyond | committed_below)

    wait_until("every other record accepted and its commit (with metadata) acknowledged",
               everything_else_done_and_committed, 120, poll_s=0.2, proc=first)
    in_flight_at_kill = [r["instance_id"] for r in stub.requests() if r["request_id"] == "HANG"]
    assert sorted(in_flight_at_kill) == sorted(hung)
    floors = committed_with_metadata(broker, group, topic, partitions)
    assert {p: f for p, (f, _m) in floors.items()} == {0: where[hung[0]][1], 1: where[hung[2]][1]}
    first.proc.kill()
    assert first.proc.wait(10) == -signal.SIGKILL
    before = len(stub.requests())

    stub.behaviour()  # the ERP answers everything again
    t_restart = time.time()
    second = run_until_idle(env, tmp_path / "second.log", idle_s=IDLE_S, timeout=180)
    log = second.log()
    reqs = stub.requests()
    again = [r["instance_id"] for r in reqs[before:]]

    assert sorted(again) == sorted(hung), f"pushed again after the restart: {len(again)} records"
    assert_all_accepted(reqs, set(expected), log)
    assert_committed_to_end(broker, group, topic, partitions, log)
    dups = check_duplicates_identical(reqs, expected)
    assert sorted(dups) == sorted(hung)  # duplicates == the pushes in flight at the kill
    stopped = next(e for e in log_events(log) if e.get("event") == "stopped")
    floor = {0: where[hung[0]][1], 1: where[hung[2]][1]}  # what the restart reads from
    reread = sum(1 for p, o in where.values() if o >= floor[p])
    assert stopped["already_done"] == reread - len(hung)  # finished beyond the commit: skipped, not pushed
    figures("kill -9 with pushes hanging", records=n, in_flight_at_kill=len(in_flight_at_kill),
            pushed_again=len(again), duplicates=len(dups), skipped_by_commit_metadata=stopped["already_done"],
            restart_to_idle_s=f"{time.time() - t_restart:.1f}")


def test_a_member_joining_then_leaving_pushes_again_only_the_pushes_in_flight(
        broker: Broker, erp: ErpStub, stub: StubClient, procs: list[ConsumerProcess], tmp_path: Path) -> None:
    partitions = 4
    topic, group, _where, expected, by_partition = scenario(broker, "dups-rebalance", partitions, 1402)
    n = len(expected)
    hung = [by_partition[p][2] for p in range(partitions)]  # one early record of every partition hangs
    hang(stub, hung)
    def env() -> dict[str, str]:  # each member its own metrics port
        return env_for(broker, erp, topic, group, ERP_SYNC_ERP_TIMEOUT_SECONDS="300",
                       ERP_SYNC_SHUTDOWN_TIMEOUT_SECONDS="1")

    a = start_consumer(env(), tmp_path / "a.log")
    procs.append(a)

    def the_others_accepted() -> bool:
        return answered_ok(stub) == set(expected) - set(hung)

    wait_until("every record but the hung ones accepted", the_others_accepted, 120, poll_s=0.2, proc=a)
    stub.behaviour()  # from now on the ERP answers; A's hung requests stay hung
    b = start_consumer(env(), tmp_path / "b.log")
    procs.append(b)
    wait_until("B assigned", lambda: "assigned" in event_names(b.log()), 60, poll_s=0.1, proc=b)
    rc_a, _ = sigterm_and_wait(a, 1 + SLACK_S + 10)
    assert rc_a == 0, a.log()[-3000:]

    def all_accepted() -> bool:
        return answered_ok(stub) == set(expected)

    wait_until("B delivered the records A left in flight", all_accepted, 120, poll_s=0.2, proc=b)
    rc_b, _ = sigterm_and_wait(b, 20 + SLACK_S)
    assert rc_b == 0, b.log()[-3000:]
    reqs = stub.requests()
    dups = check_duplicates_identical(reqs, expected)
    assert sorted(dups) == sorted(hung), f"{len(dups)} duplicates, {len(hung)} pushes were in flight"
    assert all(len(rs) == 2 for iid, rs in by_instance(reqs).items() if iid in hung)
    assert_committed_to_end(broker, group, topic, partitions, b.log())
    figures("rebalance with pushes hanging", records=n, in_flight_at_join=len(hung), duplicates=len(dups))
