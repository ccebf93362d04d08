"""Fault-injection tests of the consumer process (issue 3, "Faults the consumer must survive": 1, 2, 3, 4, 8).

Every test runs the real ``erp-sync run`` in subprocesses against the session's real Kafka broker
(``tests/conftest.py``) and a real HTTP ERP stub (``consumer/devstack/erp_stub.py``), on its own topic,
``<topic>.dlq`` and consumer group, then injects the fault for real: ``SIGKILL``, ``SIGTERM``, a
second group member, an ERP that closes connections or hangs, a slow ERP against a small
``max.poll.interval.ms``, a transactional producer with aborted transactions. Nothing is mocked.

Each test prints its figures (records, duplicates, time to recover); ``pytest -s`` shows them.

Vocabulary used below: a *duplicate* is an instance id the ERP received more than once; a record is
*acknowledged* when the ERP's accepting answer reached the consumer.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from consumer import transform
from consumer.devstack.erp_stub import ErpStub, StubClient
from consumer.devstack.events import encode
from consumer.devstack.samples import generate_events
from dev.harness import (
    Broker,
    CommitWatcher,
    ConsumerProcess,
    committed,
    consumer_env,
    create_topic,
    group_state,
    high_watermarks,
    log_events,
    process_cpu_seconds,
    produce,
    produce_transactions,
    read_all,
    run_until_idle,
    start_consumer,
    unique,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

OFFSET_INVALID = -1001
IDLE_S = 2.0
SLACK_S = 3.0  # added to ERP_SYNC_SHUTDOWN_TIMEOUT_SECONDS: interpreter exit, librdkafka close, a busy machine

Event = dict[str, Any]
Request = dict[str, Any]


# ------------------------------------------------------------------------------------------ helpers


def new_topics(broker: Broker, prefix: str, partitions: int) -> tuple[str, str, str]:
    """A fresh source topic, its ``.dlq`` (auto-create is off) and a fresh group id."""
    topic = unique(prefix)
    create_topic(broker, topic, partitions)
    create_topic(broker, topic + ".dlq", 1)
    return topic, topic + ".dlq", unique("group-" + prefix)


def approved(count: int, seed: int) -> list[Event]:
    """``count`` APPROVED events with distinct instance ids."""
    evs = list(generate_events(count, seed=seed, approved_ratio=1.0))
    assert len({e["instance_id"] for e in evs}) == count
    return evs


def record(ev: Event, key: bytes | None = None) -> tuple[bytes, bytes]:
    """``(key, value)``: by default the instance id as text (the contract's key), the bare Avro."""
    return (key if key is not None else str(ev["instance_id"]).encode()), encode(ev)


def env_for(broker: Broker, erp: ErpStub, topic: str, group: str, **extra: str) -> dict[str, str]:
    return consumer_env(broker, topic, group, erp.url, **extra)


def wait_until(what: str, predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.02,
               proc: ConsumerProcess | None = None) -> float:
    """Poll ``predicate`` until true; return the seconds waited. Fails early if ``proc`` exits."""
    start = time.monotonic()
    while not predicate():
        if proc is not None and proc.proc.poll() is not None:
            pytest.fail(f"consumer exited ({proc.proc.returncode}) while waiting for {what}; "
                        f"log:\n{proc.log()[-3000:]}")
        if time.monotonic() - start > timeout_s:
            tail = proc.log()[-3000:] if proc is not None else ""
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}\n{tail}")
        time.sleep(poll_s)
    return time.monotonic() - start


def received(stub: StubClient) -> int:
    return int(stub.stats()["received"])


def by_instance(reqs: list[Request]) -> dict[int, list[Request]]:
    out: dict[int, list[Request]] = defaultdict(list)
    for r in reqs:
        out[r["instance_id"]].append(r)
    return out


def check_duplicates_identical(reqs: list[Request], expected: dict[int, tuple[bytes, str]]) -> list[int]:
    """Assert every push of an instance carried the exact expected body and Idempotency-Key;
    return the instance ids pushed more than once (the duplicates), sorted."""
    grouped = by_instance(reqs)
    for iid, rs in grouped.items():
        body, key = expected[iid]
        bodies = {r["body"] for r in rs}
        keys = {(r["idempotency_key"], r["headers"].get("idempotency-key")) for r in rs}
        assert bodies == {body.decode()}, f"instance {iid}: {len(bodies)} different bodies over {len(rs)} pushes"
        assert keys == {(key, key)}, f"instance {iid}: Idempotency-Keys {keys}, expected {key}"
    return sorted(iid for iid, rs in grouped.items() if len(rs) > 1)


def assert_all_accepted(reqs: list[Request], expected_ids: set[int], log: str = "") -> None:
    accepted = {r["instance_id"] for r in reqs if r["code"] == "OK" and r["request_id"] != "HANG"}
    missing = expected_ids - accepted
    assert not missing, (f"{len(missing)} approved records never accepted (e.g. {sorted(missing)[:5]}); "
                         f"log:\n{log[-3000:]}")
    assert {r["instance_id"] for r in reqs} <= expected_ids, "the ERP received an instance that was never produced"


def assert_committed_to_end(broker: Broker, group: str, topic: str, partitions: int, log: str = "") -> dict[int, int]:
    ends = high_watermarks(broker, topic, partitions)
    got = committed(broker, group, topic, partitions)
    assert got == ends, f"committed {got} != high watermarks {ends}; consumer log tail:\n{log[-3000:]}"
    return ends


def requests_with_offset_at_or_above(reqs: list[Request], where: dict[int, tuple[int, int]],
                                     floor: dict[int, int]) -> set[int]:
    """Instance ids among ``reqs`` whose record lies at or above ``floor`` (a committed offset) of its partition."""
    out = set()
    for r in reqs:
        p, off = where[r["instance_id"]]
        if off >= max(floor.get(p, OFFSET_INVALID), 0):
            out.add(r["instance_id"])
    return out


def assert_never_committed_past_unaccepted(watcher: CommitWatcher, reqs: list[Request],
                                           where: dict[int, tuple[int, int]]) -> None:
    """Every committed offset the watcher saw covers only records the ERP had accepted by then.

    A commit past offset ``o`` seen by a query that returned at ``t`` requires ``o``'s first accepting
    push to have reached the ERP before ``t`` (the stub's arrival time precedes the answer, so this
    is a sound, slightly lenient check).
    """
    accepted_at: dict[int, float] = {}
    for r in reqs:
        if r["code"] == "OK" and r["request_id"] != "HANG":
            accepted_at.setdefault(r["instance_id"], r["time"])
    by_partition: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for iid, (p, off) in where.items():
        by_partition[p].append((off, accepted_at.get(iid, math.inf)))
    for _before, after_query, offs in watcher.samples:
        for p, off in offs.items():
            late = sorted(o for o, t in by_partition[p] if o < off and t > after_query)
            assert not late, f"partition {p} committed {off} before offset {late[0]} was accepted"


def sigterm_and_wait(cp: ConsumerProcess, limit_s: float) -> tuple[int, float]:
    """SIGTERM the process; return (exit code, seconds to exit). Kills it and fails past 3 × ``limit_s``."""
    t0 = time.monotonic()
    cp.proc.send_signal(signal.SIGTERM)
    try:
        rc = cp.proc.wait(timeout=3 * limit_s)
    except subprocess.TimeoutExpired:
        cp.proc.kill()
        cp.proc.wait(10)
        pytest.fail(f"still running {3 * limit_s:.0f} s after SIGTERM; log tail:\n{cp.log()[-3000:]}")
    return rc, time.monotonic() - t0


def event_names(log: str) -> list[str]:
    return [str(e.get("event")) for e in log_events(log) if e.get("event")]


def dump(folder: Path, **data: Any) -> None:
    """Keep the raw figures beside the consumer logs (``--basetemp``) for a post-mortem."""
    (folder / "figures.json").write_text(json.dumps(data, default=str))


def figures(title: str, **values: Any) -> None:
    print(f"\n[fault figures] {title}: " + ", ".join(f"{k}={v}" for k, v in values.items()), flush=True)


# ------------------------------------------------------------------------------------------ fault 1


def test_kill_9_mid_stream_then_restart_delivers_everything(broker: Broker, erp: ErpStub, stub: StubClient,
                                                             procs: list[ConsumerProcess], tmp_path: Path) -> None:
    n, partitions, max_in_flight, latency_ms, commit_interval_s = 400, 4, 16, 20, 0.25
    topic, dlq, group = new_topics(broker, "kill9", partitions)
    evs = approved(n, seed=101)
    placed = produce(broker, topic, [record(e) for e in evs])
    where = {e["instance_id"]: placed[i] for i, e in enumerate(evs)}
    expected = {e["instance_id"]: transform.erp_request(e) for e in evs}
    stub.behaviour(latency_ms=latency_ms)
    extra = {"ERP_SYNC_MAX_IN_FLIGHT": str(max_in_flight), "ERP_SYNC_COMMIT_INTERVAL_SECONDS": str(commit_interval_s)}

    watcher = CommitWatcher(broker, group, topic, partitions, interval_s=0.05).start()
    try:
        first = start_consumer(env_for(broker, erp, topic, group, **extra), tmp_path / "first.log")
        procs.append(first)

        def mid_stream() -> bool:  # ~150 pushed, and periodic commits have started landing
            committed_now = watcher.samples and sum(max(o, 0) for o in watcher.samples[-1][2].values())
            return received(stub) >= 150 and bool(committed_now)

        wait_until("150 pushes and a first commit", mid_stream, 120, proc=first)
        t_kill = time.time()
        first.proc.kill()
        assert first.proc.wait(10) == -signal.SIGKILL
        time.sleep(0.3)  # requests already on the wire reach the stub (it records them on arrival)
        before = stub.requests()
        at_kill = committed(broker, group, topic, partitions)

        t_restart = time.time()
        second = run_until_idle(env_for(broker, erp, topic, group, **extra), tmp_path / "second.log", idle_s=IDLE_S,
                                timeout=180)
        run2_s = time.time() - t_restart
        time.sleep(0.2)
    finally:
        watcher.stop()
    log = second.log()
    reqs = stub.requests()
    after = reqs[len(before):]

    assert_all_accepted(reqs, set(expected), log)
    assert read_all(broker, dlq) == []
    ends = assert_committed_to_end(broker, group, topic, partitions, log)
    assert sum(ends.values()) == n
    assert watcher.decreases() == [], f"a committed offset moved backwards: {watcher.decreases()}"
    assert_never_committed_past_unaccepted(watcher, reqs, where)
    committed_at_kill = sum(max(o, 0) for o in at_kill.values())
    assert 0 < committed_at_kill < n, f"the kill was not mid-stream: {committed_at_kill} committed"
    dups = check_duplicates_identical(reqs, expected)
    assert all(len(rs) <= 2 for rs in by_instance(reqs).values()), "an instance was pushed more than twice"
    # Exactly the records the first run pushed at or above the committed offset are pushed again:
    # the restart resumes at the committed offset, and nothing below it is re-sent.
    redone = requests_with_offset_at_or_above(before, where, at_kill)
    assert set(dups) == redone, f"duplicates {len(dups)} != first-run pushes above the commit {len(redone)}"
    assert {r["instance_id"] for r in after} == set(expected) - ({r["instance_id"] for r in before} - redone)

    # The bound. A duplicate is a record in flight at the kill (<= MAX_IN_FLIGHT) or one acknowledged
    # since the last commit the broker kept, at most one commit interval (+ one loop iteration + the
    # async commit's round trip) before the kill. Generously: MAX_IN_FLIGHT + what the first run
    # pushes in 1 s (4 commit intervals) at its measured rate.
    span_s = max(1e-3, t_kill - min(r["time"] for r in before))
    rate = len(before) / span_s
    bound = max_in_flight + math.ceil(rate * 1.0)
    assert len(dups) <= bound, f"{len(dups)} duplicates > bound {bound}"
    last_new = max(r["time"] for r in after)
    first_new = min(r["time"] for r in after)
    figures("kill -9", records=n, pushed_before_kill=len(before), committed_at_kill=committed_at_kill,
            duplicates=len(dups), bound=f"{max_in_flight} + {rate:.0f}/s x 1 s = {bound}",
            commit_interval_s=commit_interval_s, restart_pushes=len(after),
            first_push_after_restart_s=f"{first_new - t_restart:.1f} (the killed member's 6 s session must expire)",
            time_to_recover_s=f"{last_new - t_restart:.1f} (restart to last push; whole run incl. "
                              f"{IDLE_S:.0f} s idle {run2_s:.1f})")


# ------------------------------------------------------------------------------------------ fault 2


def test_sigterm_mid_stream_commits_leaves_group_and_exits_0(broker: Broker, erp: ErpStub, stub: StubClient,
                                                            procs: list[ConsumerProcess], tmp_path: Path) -> None:
    n, partitions, max_in_flight, latency_ms, shutdown_s = 400, 4, 16, 20, 5.0
    topic, dlq, group = new_topics(broker, "sigterm", partitions)
    evs = approved(n, seed=202)
    placed = produce(broker, topic, [record(e) for e in evs])
    where = {e["instance_id"]: placed[i] for i, e in enumerate(evs)}
    expected = {e["instance_id"]: transform.erp_request(e) for e in evs}
    stub.behaviour(latency_ms=latency_ms)
    extra = {"ERP_SYNC_MAX_IN_FLIGHT": str(max_in_flight), "ERP_SYNC_SHUTDOWN_TIMEOUT_SECONDS": str(shutdown_s)}

    first = start_consumer(env_for(broker, erp, topic, group, **extra), tmp_path / "first.log")
    procs.append(first)
    wait_until("150 pushes", lambda: received(stub) >= 150, 120, proc=first)
    t_term = time.time()
    rc, exit_s = sigterm_and_wait(first, shutdown_s + SLACK_S)
    log1 = first.log()
    assert rc == 0, log1[-3000:]
    assert exit_s <= shutdown_s + SLACK_S, f"exit took {exit_s:.1f} s > {shutdown_s} + {SLACK_S} s"
    names = event_names(log1)
    assert "stopping" in names and "stopped" in names, names[-10:]
    state, members = group_state(broker, group)
    assert (state, members) == ("EMPTY", 0), f"group {state} with {members} members after the consumer exited"
    before = stub.requests()
    at_stop = committed(broker, group, topic, partitions)
    in_flight_at_term = sum(1 for r in before if r["time"] <= t_term < r["time"] + latency_ms / 1000)

    second = run_until_idle(env_for(broker, erp, topic, group, **extra), tmp_path / "second.log", idle_s=IDLE_S,
                            timeout=180)
    log2 = second.log()
    reqs = stub.requests()
    assert_all_accepted(reqs, set(expected), log2)
    assert read_all(broker, dlq) == []
    assert_committed_to_end(broker, group, topic, partitions, log2)
    dups = check_duplicates_identical(reqs, expected)
    assert set(dups) == requests_with_offset_at_or_above(before, where, at_stop)
    assert len(dups) <= max_in_flight, f"{len(dups)} duplicates after a clean stop > MAX_IN_FLIGHT {max_in_flight}"
    figures("SIGTERM", records=n, received_at_sigterm=len(before), in_flight_at_sigterm=f"~{in_flight_at_term}",
            exit_s=f"{exit_s:.2f}", committed_at_stop=sum(max(o, 0) for o in at_stop.values()),
            duplicates=len(dups), group_after_exit=f"{state}/{members} members")


def test_sigterm_while_the_erp_hangs_exits_in_time_and_commits_only_acknowledged(
        broker: Broker, erp: ErpStub, stub: StubClient, procs: list[ConsumerProcess], tmp_path: Path) -> None:
    n, partitions, max_in_flight, shutdown_s = 200, 4, 16, 5.0
    topic, dlq, group = new_topics(broker, "sigterm-hang", partitions)
    evs = approved(n, seed=203)
    placed = produce(broker, topic, [record(e) for e in evs])
    where = {e["instance_id"]: placed[i] for i, e in enumerate(evs)}
    expected = {e["instance_id"]: transform.erp_request(e) for e in evs}
    stub.behaviour(latency_ms=20)
    # ERP timeout 15 s > shutdown timeout + slack: the hung requests are still waiting for their
    # answer when the process must be gone.
    extra = {"ERP_SYNC_MAX_IN_FLIGHT": str(max_in_flight), "ERP_SYNC_SHUTDOWN_TIMEOUT_SECONDS": str(shutdown_s),
             "ERP_SYNC_ERP_TIMEOUT_SECONDS": "15"}

    first = start_consumer(env_for(broker, erp, topic, group, **extra), tmp_path / "first.log")
    procs.append(first)
    wait_until("60 pushes", lambda: received(stub) >= 60, 120, proc=first)
    stub.behaviour(default={"hang_s": 30, "request_id": "HANG"})  # answers only after 30 s
    wait_until(f"{max_in_flight} hung requests", lambda: stub.stats()["current_concurrency"] >= max_in_flight,
               60, proc=first)
    rc, exit_s = sigterm_and_wait(first, shutdown_s + SLACK_S)
    log1 = first.log()
    before = stub.requests()
    at_stop = committed(broker, group, topic, partitions)
    acked = {r["instance_id"] for r in before if r["code"] == "OK" and r["request_id"] != "HANG"}
    hung = {r["instance_id"] for r in before if r["request_id"] == "HANG"}
    first_unacked = {p: min([off for iid, (pp, off) in where.items() if pp == p and iid not in acked],
                            default=high_watermarks(broker, topic, partitions)[p]) for p in range(partitions)}
    assert rc == 0, log1[-3000:]
    assert exit_s <= shutdown_s + SLACK_S, (
        f"exit took {exit_s:.1f} s > {shutdown_s} + {SLACK_S} s with the ERP hanging; log tail:\n{log1[-2500:]}")
    assert "stopped" in event_names(log1)
    # Nothing past an unacknowledged record; and everything acknowledged before it is committed.
    assert {p: max(o, 0) for p, o in at_stop.items()} == first_unacked, (
        f"committed {at_stop} != first unacknowledged offsets {first_unacked}")

    stub.behaviour(latency_ms=0)
    second = run_until_idle(env_for(broker, erp, topic, group, **extra), tmp_path / "second.log", idle_s=IDLE_S,
                            timeout=180)
    log2 = second.log()
    reqs = stub.requests()
    assert_all_accepted(reqs, set(expected), log2)
    assert read_all(broker, dlq) == []
    assert_committed_to_end(broker, group, topic, partitions, log2)
    dups = check_duplicates_identical(reqs, expected)
    figures("SIGTERM, ERP hanging", records=n, acknowledged_before_sigterm=len(acked), hung_at_sigterm=len(hung),
            exit_s=f"{exit_s:.2f}", committed_at_stop=sum(first_unacked.values()), duplicates=len(dups))


# ------------------------------------------------------------------------------------------ fault 3


def test_rebalance_second_member_joins_then_first_leaves(broker: Broker, erp: ErpStub, stub: StubClient,
                                                         procs: list[ConsumerProcess], tmp_path: Path) -> None:
    n, partitions, latency_ms = 300, 4, 30
    topic, dlq, group = new_topics(broker, "rebalance", partitions)
    evs = approved(n, seed=303)
    placed = produce(broker, topic, [record(e) for e in evs])
    where = {e["instance_id"]: placed[i] for i, e in enumerate(evs)}
    expected = {e["instance_id"]: transform.erp_request(e) for e in evs}
    stub.behaviour(latency_ms=latency_ms)
    watcher = CommitWatcher(broker, group, topic, partitions, interval_s=0.1).start()
    try:
        # A is slow (1 push at a time) so the stream is still running when B has joined.
        # A's SIGTERM delivers its buffered records until its shutdown deadline; keep that short so A
        # leaves the group well within B's idle window (B must be handed A's partitions)
        a = start_consumer(env_for(broker, erp, topic, group, ERP_SYNC_MAX_IN_FLIGHT="1",
                                   ERP_SYNC_SHUTDOWN_TIMEOUT_SECONDS="1"), tmp_path / "a.log")
        procs.append(a)
        wait_until("60 pushes", lambda: received(stub) >= 60, 120, proc=a)
        t_b = time.monotonic()
        # B runs until the test stops it: with an idle exit it could drain its own partitions and leave
        # before A does (it did once, on a fast run), and then nobody would take over A's partitions.
        b = start_consumer(env_for(broker, erp, topic, group, ERP_SYNC_MAX_IN_FLIGHT="2"), tmp_path / "b.log")
        procs.append(b)

        def both_assigned() -> bool:
            return event_names(b.log()).count("assigned") >= 1 and event_names(a.log()).count("assigned") >= 2

        wait_until("B assigned and A re-assigned", both_assigned, 120, poll_s=0.05, proc=a)
        join_s = time.monotonic() - t_b
        at_join = received(stub)
        wait_until("150 pushes", lambda: received(stub) >= 150, 120, proc=a)
        at_term = received(stub)
        rc_a, exit_a_s = sigterm_and_wait(a, 20 + SLACK_S)
        assert rc_a == 0, a.log()[-3000:]
        t_a_gone = time.monotonic()

        def all_accepted() -> bool:
            return {r["instance_id"] for r in stub.requests() if r["code"] == "OK"} >= set(expected)

        wait_until("every record accepted after A left", all_accepted, 180, poll_s=0.2, proc=b)
        b_done_s = time.monotonic() - t_a_gone
        rc_b, _ = sigterm_and_wait(b, 20 + SLACK_S)  # B commits its finished records on the way out
        assert rc_b == 0, b.log()[-3000:]
        time.sleep(0.3)  # one more watcher sample after B's last commit
    finally:
        watcher.stop()
    log_a, log_b = a.log(), b.log()
    reqs = stub.requests()
    assert_all_accepted(reqs, set(expected), log_b)
    assert read_all(broker, dlq) == []
    assert_committed_to_end(broker, group, topic, partitions, log_b)
    names_a, names_b = event_names(log_a), event_names(log_b)
    assert "revoked" in names_a and "assigned" in names_a, names_a
    assert names_b.count("assigned") >= 2, f"B was not given A's partitions after A left: {names_b}"
    assert not [e for e in log_events(log_a + log_b) if e.get("level") in ("ERROR", "CRITICAL")]
    assert len(watcher.samples) >= 20, f"only {len(watcher.samples)} committed-offset samples ({watcher.errors[:3]})"
    assert watcher.decreases() == [], f"a committed offset moved backwards: {watcher.decreases()}"
    assert_never_committed_past_unaccepted(watcher, reqs, where)
    dups = check_duplicates_identical(reqs, expected)
    # A was revoked twice (B's join, its own exit); each revoke may abandon at most its in-flight push.
    assert len(dups) <= 2, f"{len(dups)} duplicates"
    figures("rebalance", records=n, b_joined_after_s=f"{join_s:.1f}", pushes_at_b_join=at_join,
            pushes_at_sigterm_a=at_term, a_exit_s=f"{exit_a_s:.2f}",
            b_finished_after_a_left_s=f"{b_done_s:.1f}",
            commit_samples=len(watcher.samples), backwards_moves=0, duplicates=len(dups))


def log_time(entry: dict[str, Any]) -> float:
    """A JSON log line's ``time`` (local ``%Y-%m-%d %H:%M:%S,%f``) as epoch seconds."""
    return datetime.strptime(str(entry["time"]), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_rebalance_push_completing_after_revoke_commits_nothing_for_the_lost_partition(
        broker: Broker, erp: ErpStub, stub: StubClient, procs: list[ConsumerProcess], tmp_path: Path) -> None:
    """A's pushes outlive the revoke grace (the ERP accepts them after 8 s; grace 1 s, ERP timeout 15 s):
    they complete after their partitions were revoked; A must neither commit them nor crash, and
    offsets never move back."""
    n, partitions, slow_ms = 200, 4, 8000  # 8 s: longer than B's start and join on a busy machine
    topic, dlq, group = new_topics(broker, "revoke-late", partitions)
    evs = approved(n, seed=313)
    placed = produce(broker, topic, [record(e) for e in evs])
    where = {e["instance_id"]: placed[i] for i, e in enumerate(evs)}
    expected = {e["instance_id"]: transform.erp_request(e) for e in evs}
    stub.behaviour(latency_ms=30)
    watcher = CommitWatcher(broker, group, topic, partitions, interval_s=0.1).start()
    try:
        a = start_consumer(consumer_env(broker, topic, group, erp.base_url + "/erp/push-a",
                                        ERP_SYNC_MAX_IN_FLIGHT="4", ERP_SYNC_SHUTDOWN_TIMEOUT_SECONDS="1",
                                        ERP_SYNC_ERP_TIMEOUT_SECONDS="15"),
                           tmp_path / "a.log")
        procs.append(a)
        wait_until("40 pushes", lambda: received(stub) >= 40, 120, proc=a)
        stub.behaviour(latency_ms=slow_ms)
        t_slow = time.time()  # pushes arriving from now until t_fast are answered after 8 s
        wait_until("A's 4 workers in slow pushes", lambda: stub.stats()["current_concurrency"] >= 4, 60, proc=a)
        b = start_consumer(consumer_env(broker, topic, group, erp.base_url + "/erp/push-b",
                                        ERP_SYNC_MAX_IN_FLIGHT="4"),
                           tmp_path / "b.log", ("run", "--exit-when-idle", str(IDLE_S)))
        procs.append(b)
        wait_until("A revoked", lambda: "revoked" in event_names(a.log()), 120, poll_s=0.05, proc=a)
        t_fast = time.time()
        stub.behaviour(latency_ms=30)
        rc_b = b.proc.wait(timeout=180)
        assert rc_b == 0, b.log()[-3000:]
        wait_until("everything committed", lambda: committed(broker, group, topic, partitions) == high_watermarks(
            broker, topic, partitions), 120, poll_s=0.2, proc=a)
        rc_a, _ = sigterm_and_wait(a, 20 + SLACK_S)
        assert rc_a == 0, a.log()[-3000:]
        time.sleep(0.3)
    finally:
        watcher.stop()
    log_a, log_b = a.log(), b.log()
    reqs = stub.requests()
    assert_all_accepted(reqs, set(expected), log_a)
    assert read_all(broker, dlq) == []
    assert_committed_to_end(broker, group, topic, partitions, log_a)
    assert not [e for e in log_events(log_a + log_b) if e.get("level") in ("ERROR", "CRITICAL")], "errors logged"
    assert "Traceback" not in log_a + log_b
    assert watcher.decreases() == [], f"a committed offset moved backwards: {watcher.decreases()}"
    assert_never_committed_past_unaccepted(watcher, reqs, where)
    first_revoke = min(log_time(e) for e in log_events(log_a) if e.get("event") == "revoked")
    # A's pushes that were answered after the revoke (and its 1 s grace) had ended: the case under test.
    late = [r for r in reqs if r["path"] == "/erp/push-a" and t_slow < r["time"] < min(first_revoke, t_fast)
            and r["time"] + slow_ms / 1000 > first_revoke]
    dump(tmp_path, requests=reqs, commits=watcher.samples, offsets=where,
         marks={"t_slow": t_slow, "t_fast": t_fast, "first_revoke": first_revoke})
    assert late, "no push of A outlived its partition's revoke: the scenario did not happen"
    assert all(r["code"] == "OK" for r in late)
    assert "erp_backoff" not in event_names(log_a), "a slow push timed out instead of completing"
    dups = check_duplicates_identical(reqs, expected)
    # Every late push's record was pushed again by the partition's next owner (it was not committed).
    assert {r["instance_id"] for r in late} <= set(dups), "a push completed after revoke was committed"
    figures("push completing after revoke", records=n, late_completions=len(late), duplicates=len(dups),
            commit_samples=len(watcher.samples), backwards_moves=0)


# ------------------------------------------------------------------------------------------ fault 4


def max_probes(duration_s: float, initial_s: float, max_s: float) -> int:
    """Most backoff periods that fit in ``duration_s`` (each delay >= 50 % of its step): probe count bound."""
    t, k = 0.0, 0
    while t <= duration_s:
        k += 1
        t += 0.5 * min(max_s, initial_s * 2 ** (k - 1))
    return k + 1


def test_erp_outage_backs_off_commits_nothing_undelivered_then_delivers_in_key_order(
        broker: Broker, erp: ErpStub, stub: StubClient, procs: list[ConsumerProcess], tmp_path: Path) -> None:
    partitions, max_in_flight, keys = 4, 8, 10
    initial_s, max_s, timeout_s = 0.2, 1.0, 0.5
    close_s, hang_s = 4.0, 3.0
    topic, dlq, group = new_topics(broker, "outage", partitions)
    evs = approved(220, seed=404)
    key_of = {e["instance_id"]: f"order-{i % keys}".encode() for i, e in enumerate(evs)}
    expected = {e["instance_id"]: transform.erp_request(e) for e in evs}
    where: dict[int, tuple[int, int]] = {}

    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5, "enable.idempotence": True})

    def put(batch: list[Event]) -> None:  # one thread at a time: the test, then the feeder
        placed: dict[int, tuple[int, int]] = {}

        def cb(iid: int) -> Callable[[Any, Any], None]:
            def done(err: Any, msg: Any) -> None:
                if err is None:
                    placed[iid] = (msg.partition(), msg.offset())
            return done

        for e in batch:
            producer.produce(topic, key=key_of[e["instance_id"]], value=encode(e),
                             on_delivery=cb(e["instance_id"]))
        assert producer.flush(30) == 0 and len(placed) == len(batch), "produce failed"
        where.update(placed)

    stub.behaviour(latency_ms=5)
    env = env_for(broker, erp, topic, group, ERP_SYNC_MAX_IN_FLIGHT=str(max_in_flight),
                  ERP_SYNC_RETRY_BACKOFF_INITIAL_SECONDS=str(initial_s), ERP_SYNC_RETRY_BACKOFF_MAX_SECONDS=str(max_s),
                  ERP_SYNC_ERP_TIMEOUT_SECONDS=str(timeout_s), ERP_SYNC_COMMIT_INTERVAL_SECONDS="0.2")
    cp = start_consumer(env, tmp_path / "run.log")
    procs.append(cp)
    watcher = CommitWatcher(broker, group, topic, partitions, interval_s=0.1).start()
    try:
        warm, during = evs[:20], evs[20:]
        put(warm)
        wait_until("the first 20 delivered", lambda: stub.stats()["by_code"].get("OK", 0) >= 20, 120, proc=cp)
        wait_until("the first 20 committed", lambda: sum(max(o, 0) for o in committed(
            broker, group, topic, partitions).values()) == 20, 60, poll_s=0.1, proc=cp)
        hw_before = high_watermarks(broker, topic, partitions)

        # The outage: connections closed without an answer, then answers slower than the ERP timeout;
        # records keep arriving all along.
        seq0 = stub.stats()["last_seq"]
        stub.behaviour(default={"close": True})
        t_out = time.time()
        log_pos = cp.log_path.stat().st_size
        cpu0 = process_cpu_seconds(cp.proc.pid)
        stop_producing = threading.Event()
        produced_during: list[int] = []
        chunk = 10
        chunks = len(during) // chunk

        def feed() -> None:  # a chunk (one record per key) every ~0.33 s, all within the outage
            for i in range(chunks):
                if stop_producing.wait(max(0.0, t_out + i * (close_s + hang_s - 0.5) / chunks - time.time())):
                    return
                batch = during[i * chunk:(i + 1) * chunk]
                put(batch)
                produced_during.extend(e["instance_id"] for e in batch)

        feeder = threading.Thread(target=feed, name="feeder")
        feeder.start()
        time.sleep(max(0.0, t_out + close_s - time.time()))
        stub.behaviour(default={"hang_s": 3.0, "request_id": "HANG"})
        time.sleep(max(0.0, t_out + close_s + hang_s - time.time()))
        stub.behaviour(latency_ms=5)
        t_back = time.time()
        cpu_outage = process_cpu_seconds(cp.proc.pid) - cpu0
        log_during = cp.log_path.read_text(errors="replace")[log_pos:]
        during_put = len(produced_during)
        stop_producing.set()
        feeder.join(60)
        outage_lines = [ln for ln in log_during.splitlines() if ln.strip()]
        outage_reqs = [r for r in stub.requests(since=seq0) if r["time"] <= t_back]
        # produce what the feeder did not get to within the outage (normally nothing)
        put([e for e in during if e["instance_id"] not in set(produced_during)])

        wait_until("everything delivered and committed", lambda: committed(
            broker, group, topic, partitions) == high_watermarks(broker, topic, partitions), 180, poll_s=0.1, proc=cp)
        ends = high_watermarks(broker, topic, partitions)
        time.sleep(0.3)
    finally:
        watcher.stop()
    rc, _ = sigterm_and_wait(cp, 20 + SLACK_S)
    log = cp.log()
    assert rc == 0, log[-3000:]
    reqs = stub.requests()
    dump(tmp_path, requests=reqs, commits=watcher.samples, marks={"t_out": t_out, "t_back": t_back}, offsets=where)

    # Nothing dead-lettered, everything accepted, once.
    assert read_all(broker, dlq) == []
    assert_all_accepted(reqs, set(expected), log)
    real_ok = [r for r in reqs if r["code"] == "OK" and r["request_id"] != "HANG"]
    assert len(real_ok) == len(expected), f"{len(real_ok) - len(expected)} instances accepted twice"
    check_duplicates_identical(reqs, expected)
    assert_committed_to_end(broker, group, topic, partitions, log)

    # During the outage nothing was delivered, so nothing past the pre-outage end may be committed...
    outage_samples = [s for s in watcher.samples if t_out <= s[0] and s[1] <= t_back]
    assert outage_samples, "no committed-offset sample during the outage"
    for _b, _a, offs in outage_samples:
        assert all(offs[p] <= hw_before[p] for p in offs), f"committed {offs} during the outage > {hw_before}"
    assert not [r for r in outage_reqs if r["code"] == "OK" and r["request_id"] != "HANG"]
    # ... and at any time, never past a record not yet accepted.
    assert_never_committed_past_unaccepted(watcher, reqs, where)
    assert watcher.decreases() == []
    recover_s = min(a for _b, a, offs in watcher.samples if _b >= t_back and offs == ends) - t_back

    # Shared backoff and a single probe: the initial burst (at most MAX_IN_FLIGHT attempts), then one
    # probe per backoff period; a closed connection counts twice (the client re-sends once at once on a
    # fresh connection when a pooled connection drops: consumer/erp/client.py).
    outage_s = t_back - t_out
    probes = max_probes(outage_s, initial_s, max_s)
    bound = 2 * (max_in_flight + probes)
    by_code: dict[str, int] = defaultdict(int)
    for r in outage_reqs:
        by_code["HANG" if r["request_id"] == "HANG" else r["code"]] += 1
    assert len(outage_reqs) <= bound, f"{len(outage_reqs)} requests during a {outage_s:.1f} s outage > {bound}"
    assert by_code.get("CLOSED", 0) >= 2 and by_code.get("HANG", 0) >= 1, dict(by_code)
    assert len(outage_lines) < 30, f"{len(outage_lines)} log lines during the outage:\n" + "\n".join(outage_lines[:40])
    backoff_lines = [e for e in log_events(log) if e.get("event") == "erp_backoff"]
    assert backoff_lines and "failure 1 in a row" in backoff_lines[0]["message"], backoff_lines[:3]
    assert sum("failure 1 in a row" in e["message"] for e in backoff_lines) == 1, [e["message"] for e in backoff_lines]
    recovered = [e for e in log_events(log) if e.get("event") == "erp_recovered"]
    assert len(recovered) == 1 and recovered[0]["failures"] >= 2, recovered
    assert cpu_outage < 0.5 * outage_s, f"the consumer used {cpu_outage:.1f} CPU-s in a {outage_s:.1f} s outage"

    # Key order: a record is sent only once every earlier record of its Kafka key was accepted.
    acc_seq = {r["instance_id"]: r["seq"] for r in reversed(real_ok)}
    per_key: dict[bytes, list[int]] = defaultdict(list)
    for iid, k in key_of.items():
        per_key[k].append(iid)
    for k, iids in per_key.items():
        iids.sort(key=lambda i: where[i])
        assert len({where[i][0] for i in iids}) == 1
        for earlier, later in zip(iids, iids[1:], strict=False):
            first_later = min(r["seq"] for r in reqs if r["instance_id"] == later)
            assert acc_seq[earlier] < first_later, (
                f"key {k!r}: offset {where[later][1]} sent before offset {where[earlier][1]} was accepted")
    figures("ERP outage", records=len(evs), produced_during_outage=during_put, outage_s=f"{outage_s:.1f}",
            requests_during_outage=f"{len(outage_reqs)} {dict(by_code)}",
            request_bound=f"2*({max_in_flight}+{probes} probes)={bound}", log_lines_during_outage=len(outage_lines),
            cpu_s_during_outage=f"{cpu_outage:.2f}", dead_letters=0, accepted_twice=0,
            time_to_recover_s=f"{recover_s:.1f} (ERP back -> everything committed)")


def test_slow_erp_never_exceeds_max_poll_interval(broker: Broker, erp: ErpStub, stub: StubClient,
                                                  tmp_path: Path) -> None:
    n, latency_ms, max_in_flight, poll_interval_ms = 12, 2000, 2, 6000  # 12 s of pushes: twice the interval
    topic, dlq, group = new_topics(broker, "slow", 1)
    evs = approved(n, seed=405)
    produce(broker, topic, [record(e) for e in evs])
    expected = {e["instance_id"]: transform.erp_request(e) for e in evs}
    stub.behaviour(latency_ms=latency_ms)
    env = env_for(broker, erp, topic, group, ERP_SYNC_MAX_IN_FLIGHT=str(max_in_flight),
                  ERP_SYNC_KAFKA_CONSUMER_MAX_POLL_INTERVAL_MS=str(poll_interval_ms),
                  ERP_SYNC_KAFKA_CONSUMER_SESSION_TIMEOUT_MS="6000")
    t0 = time.monotonic()
    cp = run_until_idle(env, tmp_path / "run.log", idle_s=IDLE_S, timeout=240)
    took = time.monotonic() - t0
    log = cp.log()
    reqs = stub.requests()
    names = event_names(log)
    assert "idle_exit" in names, names
    running = names[:names.index("idle_exit")]  # the leave at exit revokes, normally
    assert running.count("assigned") == 1, f"assignments: {running.count('assigned')}; events {running}"
    assert "revoked" not in running and "lost" not in running, running
    said = "\n".join(str(e.get("message")) for e in log_events(log) if e.get("event") != "config").lower()
    for sign in ("max.poll", "maximum poll", "max_poll", "lost"):
        assert sign not in said, f"{sign!r} in the log:\n{said[-3000:]}"
    assert_all_accepted(reqs, set(expected), log)
    assert len(reqs) == n, f"{len(reqs)} pushes for {n} records: duplicates"
    assert check_duplicates_identical(reqs, expected) == []
    assert stub.stats()["max_concurrency"] <= max_in_flight
    assert read_all(broker, dlq) == []
    assert_committed_to_end(broker, group, topic, 1, log)
    figures("slow ERP vs max.poll.interval.ms", records=n, erp_latency_ms=latency_ms,
            max_poll_interval_ms=poll_interval_ms, run_s=f"{took:.1f}", assignments=1, duplicates=0)


# ------------------------------------------------------------------------------------------ fault 8


def test_transactional_input_reads_committed_only_and_lag_reaches_zero(broker: Broker, erp: ErpStub,
                                                                       stub: StubClient, tmp_path: Path) -> None:
    topic, dlq, group = new_topics(broker, "txn", 1)
    evs = list(generate_events(40, seed=808, approved_ratio=0.6))
    chunks = [evs[i:i + 8] for i in range(0, 40, 8)]
    plan = [True, False, True, False, True]  # committed, aborted, interleaved
    txid = unique("tx")
    placed = produce_transactions(broker, topic, [(c, [record(e) for e in chunk]) for c, chunk in zip(plan, chunks,
                                                                                                       strict=True)],
                                  transactional_id=txid)
    wanted = {e["instance_id"]: transform.erp_request(e) for c, chunk in zip(plan, chunks, strict=True) if c
              for e in chunk if e["status"] == "APPROVED"}
    aborted_ids = {e["instance_id"] for c, chunk in zip(plan, chunks, strict=True) if not c for e in chunk}
    hw = high_watermarks(broker, topic)[0]
    offsets = [off for txn in placed for _p, off in txn]
    assert hw == 40 + len(plan), f"high watermark {hw}: 40 records + {len(plan)} control records expected"
    assert offsets != list(range(40)), "control records leave gaps in the offsets"
    assert len({e["instance_id"] for e in evs}) == 40 and wanted and aborted_ids

    log = run_until_idle(env_for(broker, erp, topic, group), tmp_path / "first.log", idle_s=IDLE_S,
                         timeout=120).log()
    reqs = stub.requests()
    assert sorted(r["instance_id"] for r in reqs) == sorted(wanted), log[-3000:]
    assert check_duplicates_identical(reqs, wanted) == []
    assert all(r["code"] == "OK" for r in reqs)
    assert committed(broker, group, topic) == {0: hw}, "lag is not 0: the commit stalled on a control record"
    assert read_all(broker, dlq) == []

    # A trailing aborted transaction (its records and its marker are the last offsets), then a rerun:
    # nothing is pushed and the commit still reaches the end.
    tail = list(generate_events(6, seed=809, approved_ratio=1.0))
    for e in tail:
        e["instance_id"] += 10**15
    produce_transactions(broker, topic, [(False, [record(e) for e in tail])], transactional_id=txid)
    hw2 = high_watermarks(broker, topic)[0]
    assert hw2 == hw + len(tail) + 1
    log2 = run_until_idle(env_for(broker, erp, topic, group), tmp_path / "second.log", idle_s=IDLE_S,
                          timeout=120).log()
    assert stub.stats()["received"] == len(reqs), f"the rerun pushed again; log:\n{log2[-3000:]}"
    assert committed(broker, group, topic) == {0: hw2}, log2[-3000:]
    figures("transactions", records=40 + len(tail), committed_txns=3, aborted_txns=len(plan) - 3 + 1,
            pushed=len(wanted), control_records=len(plan) + 1, high_watermark=hw2, committed_offset=hw2,
            rerun_pushes=0)
