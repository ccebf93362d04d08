"""The delivery loop's decisions, with doubles at its seams (tests/unit/doubles.py): no broker, no socket.

Each test builds a real :class:`~consumer.delivery.pipeline.Pipeline` (its dispatcher, push routine,
settle point, committer, rebalance handling and flow control are the product's) with a fake Kafka
consumer, a fake dead-letter producer and an ``httpx.MockTransport`` ERP, and drives it step by step.
The same behaviours are proven against a real broker and real HTTP servers in tests/integration and
tests/faults; these tests pin the decisions down in milliseconds.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from consumer.delivery.dead_letters import H_CLASS, H_CODE, H_OFFSET, H_REQUEST_ID
from consumer.delivery.pipeline import Pipeline
from consumer.devstack.events import encode, spec_example_event
from consumer.settings import load_settings
from consumer.transform import erp_request
from tests.unit.doubles import FakeCluster, FakeConsumer, FakeErp, FakeProducer

TOPIC = "wf"
SPEC_BODY, SPEC_KEY = erp_request(spec_example_event())


def event(instance_id: int, status: str = "APPROVED") -> bytes:
    return encode({**spec_example_event(), "instance_id": instance_id, "status": status})


class Loop:
    """A pipeline over the doubles, stepped by the test."""

    def __init__(self, start: bool = True, **env: str | None) -> None:
        self.cluster = FakeCluster()
        self.consumers: list[FakeConsumer] = []
        self.producer = FakeProducer(self.cluster)
        self.erp = FakeErp()
        given = {"ERP_SYNC_ERP_URL": "http://erp.test/push", "ERP_SYNC_TOPIC": TOPIC,
                 "ERP_SYNC_COMMIT_INTERVAL_SECONDS": "0.01", "ERP_SYNC_METRICS_PORT": "0", **env}
        settings = load_settings({k: v for k, v in given.items() if v is not None})  # None: leave it unset
        self.p = Pipeline(settings, consumer_factory=self._consumer, producer=self.producer,
                          erp_transport=self.erp.transport())
        if start:
            self.p.start()

    def _consumer(self, conf: dict[str, Any]) -> FakeConsumer:
        consumer = FakeConsumer(self.cluster, conf)
        if not str(conf.get("group.id", "")).endswith(".parked-scan"):  # the loop's own consumers
            self.consumers.append(consumer)
        return consumer

    @property
    def consumer(self) -> FakeConsumer:
        return self.consumers[-1]

    def until(self, predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
            self.p.step()

    def steps(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.p.step()

    def close(self) -> None:
        self.erp.hold.set()
        self.p.stop("test over")
        self.p.shutdown()


@pytest.fixture
def make() -> Iterator[Callable[..., Loop]]:
    loops: list[Loop] = []

    def build(start: bool = True, **env: str | None) -> Loop:
        loop = Loop(start, **env)
        loops.append(loop)
        return loop

    yield build
    for loop in loops:
        if not loop.p.stopping:
            loop.close()


def test_spec_example_is_pushed_byte_exact_and_committed(make: Callable[..., Loop]) -> None:
    loop = make()
    loop.cluster.append(TOPIC, 0, encode(spec_example_event()))
    loop.consumer.assign([(TOPIC, 0)])
    loop.until(lambda: loop.consumer.committed_offsets().get((TOPIC, 0)) == 1, what="commit of offset 1")
    assert [r["body"] for r in loop.erp.received] == [SPEC_BODY]
    assert loop.erp.received[0]["headers"]["idempotency-key"] == SPEC_KEY == "1425737370216521773-1427810976874430514"
    assert (loop.p.stats.pushed, loop.p.stats.skipped, loop.p.stats.dead_lettered) == (1, 0, 0)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_commit_never_passes_an_unfinished_record_under_random_completion_orders(
        make: Callable[..., Loop], seed: int) -> None:
    rng = random.Random(seed)
    loop = make(ERP_SYNC_MAX_IN_FLIGHT="16")
    statuses: dict[tuple[int, int], str] = {}
    offsets_of: dict[int, tuple[int, int]] = {}
    for i in range(240):
        partition = rng.randrange(3)
        status = "APPROVED" if rng.random() < 0.7 else "REJECTED"
        iid = 9_000_000 + i
        offset = loop.cluster.append(TOPIC, partition, event(iid, status), key=str(rng.randrange(40)).encode())
        statuses[(partition, offset)] = status
        offsets_of[iid] = (partition, offset)
    delays = {iid: rng.choice([0.0, 0.0, 0.001, 0.004, 0.012]) for iid in offsets_of}
    loop.erp.delay_s = lambda iid: delays[iid]
    answered: set[tuple[int, int]] = set()
    violations: list[str] = []
    original_commit = loop.consumer.commit

    def checked_commit(*, offsets: Any, asynchronous: bool = True) -> Any:
        with loop.erp.lock:
            answered.update(offsets_of[iid] for iid in loop.erp.answered)
        for tp in offsets:
            for off in range(tp.offset):
                done = statuses[(tp.partition, off)] != "APPROVED" or (tp.partition, off) in answered
                if not done:
                    violations.append(f"committed {tp.partition}@{tp.offset} before {off} was answered")
        return original_commit(offsets=offsets, asynchronous=asynchronous)

    loop.consumer.commit = checked_commit  # type: ignore[method-assign]
    loop.consumer.assign([(TOPIC, p) for p in range(3)])
    ends = {p: sum(1 for (q, _o) in statuses if q == p) for p in range(3)}
    loop.until(lambda: all(loop.consumer.committed_offsets().get((TOPIC, p)) == ends[p] for p in range(3)),
               what="commits at the end of every partition")
    assert violations == []
    approved = sum(1 for s in statuses.values() if s == "APPROVED")
    assert sorted(r["instance_id"] for r in loop.erp.received) == sorted(
        iid for iid, tp in offsets_of.items() if statuses[tp] == "APPROVED")
    assert (loop.p.stats.pushed, loop.p.stats.skipped) == (approved, 240 - approved)
    committed = [c.offsets for c in loop.consumer.commits]
    for p in range(3):  # never backwards
        seq = [c[(TOPIC, p)] for c in committed if (TOPIC, p) in c]
        assert seq == sorted(seq)


def test_per_key_order_holds_with_concurrent_pushes(make: Callable[..., Loop]) -> None:
    loop = make(ERP_SYNC_MAX_IN_FLIGHT="8")
    rng = random.Random(11)
    sent: dict[bytes, list[int]] = {}
    for i in range(120):
        key = str(i % 6).encode()
        iid = 7_000_000 + i
        loop.cluster.append(TOPIC, 0, event(iid), key=key)
        sent.setdefault(key, []).append(iid)
    loop.erp.delay_s = lambda iid: rng.choice([0.0, 0.003, 0.01])
    loop.consumer.assign([(TOPIC, 0)])
    loop.until(lambda: loop.consumer.committed_offsets().get((TOPIC, 0)) == 120)
    order = [r["instance_id"] for r in loop.erp.received]
    for iids in sent.values():
        assert [i for i in order if i in set(iids)] == iids


def test_revoke_mid_push_commits_what_finished_and_abandons_what_was_queued(make: Callable[..., Loop]) -> None:
    loop = make(ERP_SYNC_MAX_IN_FLIGHT="2", ERP_SYNC_SHUTDOWN_TIMEOUT_SECONDS="5")
    for i in range(6):
        loop.cluster.append(TOPIC, 0, event(100 + i), key=b"same-key")  # one key: pushed one at a time
    loop.erp.delay_s = lambda iid: 0.3 if iid == 101 else 0.0
    loop.consumer.assign([(TOPIC, 0)])
    loop.until(lambda: [r["instance_id"] for r in loop.erp.received] == [100, 101], what="101 in flight")
    loop.consumer.revoke()
    started = time.monotonic()
    loop.p.step()  # the revoke runs inside consume(): it waits for 101, commits, releases
    took = time.monotonic() - started
    assert 0.1 < took < 2.0, took
    sync_commits = [c.offsets for c in loop.consumer.commits if not c.asynchronous]
    assert sync_commits[-1] == {(TOPIC, 0): 2}, "101 finished within the grace: its offset is committed"
    loop.steps(0.2)
    assert [r["instance_id"] for r in loop.erp.received] == [100, 101], "queued records were not pushed"
    assert loop.consumer.committed_offsets() == {(TOPIC, 0): 2}
    assert loop.p.assignment.tps == []
    # re-assigned: the new owner (here, us again) starts from the committed offset
    loop.consumer.assign([(TOPIC, 0)])
    loop.until(lambda: loop.consumer.committed_offsets().get((TOPIC, 0)) == 6)
    assert [r["instance_id"] for r in loop.erp.received] == [100, 101, 102, 103, 104, 105]


def test_a_lost_partition_commits_nothing_and_late_verdicts_are_ignored(make: Callable[..., Loop]) -> None:
    loop = make(ERP_SYNC_MAX_IN_FLIGHT="4")
    for i in range(4):
        loop.cluster.append(TOPIC, 0, event(200 + i), key=str(i).encode())
    loop.erp.hold.clear()  # every push hangs until released
    loop.consumer.assign([(TOPIC, 0)])
    loop.until(lambda: loop.erp.in_flight == 4, what="4 pushes in flight")
    commits_before = len(loop.consumer.commits)
    loop.consumer.lose()
    loop.p.step()
    loop.erp.hold.set()  # the verdicts come back after the loss
    loop.until(lambda: len(loop.erp.answered) == 4)
    loop.steps(0.1)
    assert loop.consumer.commits[commits_before:] == [], "a lost partition must not be committed"
    assert loop.p.stats.pushed == 4  # the pushes happened (and are counted), the offsets are not ours
    assert loop.p.assignment.get(TOPIC, 0) is None


def test_the_in_flight_gauge_is_read_at_scrape_time_not_at_the_last_lag_update(make: Callable[..., Loop]) -> None:
    loop = make(ERP_SYNC_MAX_IN_FLIGHT="4", ERP_SYNC_LAG_REFRESH_SECONDS="3600")
    registry = loop.p.metrics.registry
    for i in range(4):
        loop.cluster.append(TOPIC, 0, event(250 + i), key=str(i).encode())
    loop.erp.hold.clear()
    loop.consumer.assign([(TOPIC, 0)])
    loop.until(lambda: loop.erp.in_flight == 4, what="4 pushes in flight")
    assert registry.get_sample_value("erp_sync_in_flight") == 4
    loop.erp.hold.set()
    loop.until(lambda: loop.consumer.committed_offsets().get((TOPIC, 0)) == 4)
    assert registry.get_sample_value("erp_sync_in_flight") == 0


def test_backpressure_pauses_at_the_buffer_bound_and_resumes_at_half(make: Callable[..., Loop]) -> None:
    loop = make(ERP_SYNC_MAX_BUFFERED_RECORDS="10", ERP_SYNC_MAX_IN_FLIGHT="4")
    for i in range(60):
        loop.cluster.append(TOPIC, 0, event(300 + i), key=str(i).encode())
    loop.erp.hold.clear()
    loop.consumer.assign([(TOPIC, 0)])
    loop.until(lambda: loop.consumer.pause_calls != [], what="a pause")
    assert loop.consumer.pause_calls == [[(TOPIC, 0)]]
    assert loop.p.assignment.unfinished == 10
    assert loop.p.metrics.paused._value.get() == 1
    loop.steps(0.1)
    assert loop.p.assignment.unfinished == 10, "nothing is fetched while paused"
    loop.erp.hold.set()
    loop.until(lambda: loop.consumer.resume_calls != [], what="a resume")
    loop.until(lambda: loop.consumer.committed_offsets().get((TOPIC, 0)) == 60)
    assert len(loop.erp.received) == 60


def test_shutdown_deadline_holds_with_a_hung_erp(make: Callable[..., Loop]) -> None:
    loop = make(ERP_SYNC_SHUTDOWN_TIMEOUT_SECONDS="1", ERP_SYNC_ERP_TIMEOUT_SECONDS="60")
    loop.cluster.append(TOPIC, 0, event(400), key=b"a")
    loop.cluster.append(TOPIC, 0, event(401), key=b"b")
    loop.erp.delay_s = lambda iid: 30.0 if iid == 401 else 0.0
    loop.consumer.assign([(TOPIC, 0)])
    loop.until(lambda: loop.erp.answered == [400] and loop.erp.in_flight == 1)
    loop.p.stop("test")
    started = time.monotonic()
    loop.p.shutdown()
    took = time.monotonic() - started
    assert took < 2.5, f"shutdown took {took:.1f} s with a 1 s bound"
    assert loop.consumer.committed_offsets() == {(TOPIC, 0): 1}, "only the answered record is committed"
    assert loop.consumer.closed


def test_undecodable_and_rejected_records_are_dead_lettered_and_committed_after_confirmation(
        make: Callable[..., Loop]) -> None:
    loop = make()
    loop.cluster.append(TOPIC, 0, b"\xff\xfe not avro", key=b"k0")
    loop.cluster.append(TOPIC, 0, event(500), key=b"k1")
    loop.erp.answer = lambda iid: (200, "InvalidParameter.StartUser")
    loop.producer.fail_with = 29  # the DLQ cannot be written for now (TOPIC_AUTHORIZATION_FAILED)
    loop.consumer.assign([(TOPIC, 0)])
    loop.until(lambda: loop.producer.attempts >= 2, what="two dead-letter attempts")
    loop.steps(0.1)
    assert loop.consumer.committed_offsets().get((TOPIC, 0), 0) == 0, "nothing committed before the DLQ confirms"
    loop.producer.fail_with = None  # the writer tries again after its 1 s backoff
    loop.until(lambda: loop.consumer.committed_offsets().get((TOPIC, 0)) == 2)
    headers = [dict(letter["headers"]) for letter in loop.producer.written]
    assert [(h[H_CLASS], h[H_CODE], h[H_OFFSET]) for h in headers] == [
        (b"decode", b"InvalidAvro", b"0"), (b"erp", b"InvalidParameter.StartUser", b"1")]
    assert headers[1][H_REQUEST_ID] == b"req-500"
    assert [letter["value"] for letter in loop.producer.written] == [b"\xff\xfe not avro", event(500)]
    assert loop.p.stats.dead_lettered == 2


def test_the_loop_can_be_built_twice_in_one_process(make: Callable[..., Loop]) -> None:
    first, second = make(), make()
    assert first.p.metrics.registry is not second.p.metrics.registry


def test_kafka_errors_are_logged_and_a_fatal_one_ends_the_run_with_exit_code_1(
        make: Callable[..., Loop], caplog: pytest.LogCaptureFixture) -> None:
    from confluent_kafka import KafkaError

    loop = make(start=False)
    transient = KafkaError(KafkaError._TRANSPORT, "broker connection reset")
    loop.consumer.conf["error_cb"](transient)
    loop.consumer.conf["error_cb"](transient)  # the same error again within 30 s: not logged twice
    lines = [r for r in caplog.records if getattr(r, "event", None) == "kafka_error"]
    assert [r.getMessage() for r in lines] == ["Kafka: _TRANSPORT: broker connection reset"]
    assert not loop.p._stop.is_set()
    loop.consumer.conf["error_cb"](KafkaError(KafkaError._FATAL, "fenced", fatal=True))
    assert loop.p.run() == 1  # stopped at once; shutdown commits and closes
    assert loop.consumer.closed
    assert [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "fatal"] == [
        "exiting after a fatal error: _FATAL: fenced"]


def test_the_rejoin_watchdog_recreates_a_consumer_left_without_assignment(make: Callable[..., Loop]) -> None:
    loop = make(ERP_SYNC_REJOIN_TIMEOUT_SECONDS="0.2")
    first = loop.consumer
    loop.steps(0.1)
    assert len(loop.consumers) == 1
    loop.until(lambda: len(loop.consumers) == 2, timeout_s=3, what="a new Kafka consumer")
    assert loop.consumer is not first and loop.consumer.topics == [TOPIC], "the new client is subscribed"
    first.assign([(TOPIC, 0)])  # callbacks of the discarded client are ignored
    first.consume()
    assert loop.p.assignment.tps == []
    loop.cluster.append(TOPIC, 0, event(600))
    loop.consumer.assign([(TOPIC, 0)])
    loop.until(lambda: loop.consumer.committed_offsets().get((TOPIC, 0)) == 1)
    loop.steps(0.4)
    assert len(loop.consumers) == 2, "no recreation while a partition is assigned"


def test_one_record_answered_retry_forever_slows_no_other_record_and_logs_at_most_once_per_10_s(
        make: Callable[..., Loop], caplog: pytest.LogCaptureFixture) -> None:
    """Issue "on-call defects" 10: one body the ERP keeps answering InternalError for, among healthy traffic."""
    loop = make(ERP_SYNC_RETRY_BACKOFF_INITIAL_SECONDS="0.05", ERP_SYNC_RETRY_BACKOFF_MAX_SECONDS="0.2")
    poison = 800
    loop.erp.answer = lambda iid: (200, "InternalError") if iid == poison else (200, None)
    loop.cluster.append(TOPIC, 0, event(poison), key=b"poison")
    for i in range(1, 200):
        loop.cluster.append(TOPIC, 0, event(poison + i), key=str(i % 50).encode())
    loop.consumer.assign([(TOPIC, 0)])
    started = time.monotonic()
    loop.until(lambda: loop.p.stats.pushed == 199, what="the 199 other records accepted")
    others_took = time.monotonic() - started
    loop.steps(2.0)  # the poison record keeps retrying on its own
    poison_tries = sum(1 for r in loop.erp.received if r["instance_id"] == poison)
    assert poison_tries >= 8, poison_tries
    assert others_took < 3.0, f"the others took {others_took:.1f} s"
    assert loop.p.endpoints["default"].backoff.failures == 0, "one record's retries must not open the shared backoff"
    assert loop.p.metrics.registry.get_sample_value("erp_sync_retry_backoff_seconds", {"route": "default"}) == 0
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("erp_retry") == 1, "one line per 10 s for the record that waits alone"
    assert events.count("erp_backoff") == events.count("erp_recovered") == 0
    assert loop.consumer.committed_offsets().get((TOPIC, 0), 0) == 0, "nothing committed past the record"
    loop.p.stop("SIGTERM")
    started = time.monotonic()
    loop.p.shutdown()
    assert time.monotonic() - started < 1.0, "stopping gives the record up at once (it is read again later)"


def test_backoff_lines_are_at_most_one_per_10_s_whatever_the_episodes() -> None:
    """Issue "on-call defects" 10: answers for other records ending and restarting the backoff flooded the log."""
    import logging

    from prometheus_client import CollectorRegistry

    from consumer.delivery.push import PushLog
    from consumer.erp.verdict import Outcome, Verdict
    from consumer.metrics import Metrics

    now = [0.0]
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("test.pushlog")
    logger.addHandler(Keep())
    logger.propagate = False
    logger.setLevel(logging.INFO)
    push_log = PushLog(Metrics("t", CollectorRegistry()), logger, clock=lambda: now[0])
    retry = Verdict(Outcome.RETRY, "InternalError", "boom")
    for step in range(100):  # 100 s: a new episode every second (failure 1, then recovered)
        now[0] = float(step)
        push_log.backing_off(retry, 0.5, 1, None)
        push_log.recovered(1, 0.5)
        push_log.retrying(retry, 0.5, step + 1, None)
    by_event: dict[str, list[float]] = {}
    for r in records:
        by_event.setdefault(r.event, []).append(r.created)  # type: ignore[attr-defined]
    assert {e: len(v) for e, v in by_event.items()} == {"erp_backoff": 10, "erp_recovered": 10, "erp_retry": 10}
    held = [getattr(r, "suppressed", 0) for r in records if r.event == "erp_backoff"]  # type: ignore[attr-defined]
    assert held == [0] + [9] * 9


def test_shutdown_reports_every_unfinished_record(make: Callable[..., Loop], caplog: pytest.LogCaptureFixture) -> None:
    """Issue "on-call defects" 7: SIGTERM while the ERP hangs logged "stopped: 92 pushed" and no abandoned line."""
    caplog.set_level("INFO")
    loop = make(ERP_SYNC_MAX_IN_FLIGHT="4", ERP_SYNC_SHUTDOWN_TIMEOUT_SECONDS="0.5",
                ERP_SYNC_ERP_TIMEOUT_SECONDS="60")
    for i in range(10):
        loop.cluster.append(TOPIC, 0, event(900 + i), key=str(i).encode())
    for i in range(10, 30):
        loop.cluster.append(TOPIC, 0, event(900 + i), key=str(i).encode())
    loop.erp.delay_s = lambda iid: 30.0 if iid >= 910 else 0.0
    loop.consumer.assign([(TOPIC, 0)])
    loop.until(lambda: loop.p.stats.pushed == 10 and loop.erp.in_flight == 4, what="10 accepted, 4 hanging")
    loop.p.stop("SIGTERM")
    loop.p.shutdown()
    (line,) = [r for r in caplog.records if getattr(r, "event", None) == "shutdown_abandoned"]
    assert line.getMessage() == ("shutdown: 20 records unfinished (0 pushes given up, 4 in a request, 16 queued, "
                                 "0 dead letters unconfirmed); the next owner reads them again from wf[0]@10")
    (stopped,) = [r for r in caplog.records if getattr(r, "event", None) == "stopped"]
    commits = loop.p.stats.commits
    assert stopped.getMessage() == "stopped: 10 pushed, 0 duplicates, 0 skipped, 0 dead-lettered, " \
        f"{commits} commit{'' if commits == 1 else 's'}, 20 unfinished"
    assert loop.consumer.committed_offsets() == {(TOPIC, 0): 10}


def test_lag_is_not_exported_before_the_high_watermark_is_known(make: Callable[..., Loop]) -> None:
    """Issue "on-call defects" 11: a partition with 10 records waiting showed lag 0 until the first read."""
    loop = make()
    loop.consumer.assign([(TOPIC, 0)])
    loop.p.step()
    loop.p.lag.update()
    registry = loop.p.metrics.registry
    labels = {"topic": TOPIC, "partition": "0"}
    assert registry.get_sample_value("erp_sync_consumer_lag", labels) is None, "unknown is not zero"
    assert registry.get_sample_value("erp_sync_consumer_lag_seconds", labels) is None
    loop.p.watermarks.high[(TOPIC, 0)] = 10  # the first read answers
    loop.p.lag.update()
    assert registry.get_sample_value("erp_sync_consumer_lag", labels) == 10
    lag_s = registry.get_sample_value("erp_sync_consumer_lag_seconds", labels)
    assert lag_s is not None and 0 <= lag_s < 1.0  # since it reached its end (EOF), with 10 records not read
    assert registry.get_sample_value("erp_sync_committed_offset", labels) is None  # nothing committed yet


def test_readiness_says_the_broker_is_unreachable_and_never_ready_after_losing_the_group(
        make: Callable[..., Loop]) -> None:
    """Issue "on-call defects" 3: /readyz said ready ("member of the group, 0 partitions") with the broker down."""
    loop = make()
    health = loop.p.health
    assert health.readiness() == (False, "broker not reachable: connecting to the Kafka broker")
    loop.consumer.assign([(TOPIC, 0)])
    loop.p.step()
    assert health.readiness() == (True, "ok: 1 partition assigned")
    watermarks = loop.p.watermarks
    watermarks.failures, watermarks.error = 1, "no answer from 127.0.0.1:9 (Metadata request: timed out)"
    loop.p.lag.update()
    assert health.readiness()[0] is True, "one failed query is not an outage"
    watermarks.failures = 2
    loop.p.lag.update()
    assert health.readiness() == (False, "broker not reachable: no answer from 127.0.0.1:9 (Metadata request: "
                                         "timed out)")
    assert loop.p.metrics.registry.get_sample_value("erp_sync_broker_up") == 0
    loop.consumer.lose()  # the session timed out while the broker was away
    loop.p.step()
    watermarks.failures, watermarks.ok = 0, True  # the broker answers again
    loop.p.lag.update()
    assert health.readiness() == (False, "waiting for a partition assignment (joining the consumer group)")
    loop.consumer.assign([(TOPIC, 0)])
    loop.p.step()
    assert health.readiness() == (True, "ok: 1 partition assigned")
    assert loop.p.metrics.registry.get_sample_value("erp_sync_broker_up") == 1


def test_a_partition_without_committed_offset_is_announced_with_its_start_offset(
        make: Callable[..., Loop], caplog: pytest.LogCaptureFixture) -> None:
    """Issue "on-call defects" 12: expired group offsets re-pushed everything with only "assigned" in the log."""
    loop = make()
    for i in range(3):
        loop.cluster.append(TOPIC, 0, event(1000 + i))
        loop.cluster.append(TOPIC, 1, event(1100 + i))
    loop.cluster.committed[(TOPIC, 1)] = 2  # partition 1 has a committed offset, partition 0 has none
    loop.consumer.assign([(TOPIC, 0), (TOPIC, 1)])
    loop.until(lambda: loop.consumer.committed_offsets() == {(TOPIC, 0): 3, (TOPIC, 1): 3})
    lines = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "no_committed_offset"]
    assert lines == ["wf[0] had no committed offset for group apaas-erp-sync: reading from offset 0 "
                     "(auto.offset.reset=earliest); if the group had committed before, its offsets expired or were "
                     "deleted and records are read again (or skipped)"]
    counter = loop.p.metrics.registry.get_sample_value("erp_sync_partitions_without_committed_offset_total",
                                                       {"topic": TOPIC})
    assert counter == 1


def test_a_dead_letter_the_topic_refuses_for_its_size_is_written_without_its_value(
        make: Callable[..., Loop], caplog: pytest.LogCaptureFixture) -> None:
    """Issue "on-call defects" 1: MSG_SIZE_TOO_LARGE every 30 s stalled the partition for good."""
    loop = make()
    big = b"\xff" * 5000
    loop.cluster.append(TOPIC, 0, big, key=b"big")
    loop.cluster.append(TOPIC, 0, event(1200), key=b"next")
    loop.producer.max_value_bytes = 1000  # the dead-letter topic's max.message.bytes
    loop.consumer.assign([(TOPIC, 0)])
    loop.until(lambda: loop.consumer.committed_offsets().get((TOPIC, 0)) == 2, what="the partition moves on")
    (letter,) = loop.producer.written
    headers = dict(letter["headers"])
    assert letter["value"] is None and letter["key"] == b"big"
    assert headers[H_CLASS] == b"decode" and headers[H_OFFSET] == b"0"
    assert headers["erp_sync.value.omitted"] == b"5000 bytes: MSG_SIZE_TOO_LARGE: Broker: Message size too large"
    assert loop.p.metrics.registry.get_sample_value("erp_sync_dead_letter_values_omitted_total") == 1
    assert [r.levelname for r in caplog.records if getattr(r, "event", None) == "dead_letter_value_omitted"] == [
        "ERROR"]


def test_the_next_owner_skips_what_the_last_one_finished_beyond_its_commit(make: Callable[..., Loop]) -> None:
    """Issue "faster than the Java peer": finished offsets in the commit's metadata; after a kill -9 or a
    rebalance, only the records that were not finished are pushed again."""
    first = make(ERP_SYNC_MAX_IN_FLIGHT="8", ERP_SYNC_SHUTDOWN_TIMEOUT_SECONDS="0.5")
    for i in range(10):
        first.cluster.append(TOPIC, 0, event(1300 + i), key=str(i).encode())
    first.erp.delay_s = lambda iid: 60.0 if iid == 1302 else 0.0  # offset 2 hangs
    first.consumer.assign([(TOPIC, 0)])
    first.until(lambda: first.p.stats.pushed == 9, what="9 of 10 accepted")
    first.until(lambda: first.cluster.metadata.get((TOPIC, 0)) not in (None, "", "erpsync1:2:AAE"),
                what="a commit naming the finished offsets beyond 2")
    assert first.cluster.committed[(TOPIC, 0)] == 2
    assert first.cluster.metadata[(TOPIC, 0)] == "erpsync1:2:AAc"  # offsets 3..9 (gap 0, run 7)
    first.consumer.lose()  # as good as a kill -9: nothing more is committed
    first.p.step()
    second = make()
    second.cluster = first.cluster
    second.consumers.clear()
    second.p = Pipeline(second.p.settings, consumer_factory=second._consumer, producer=second.producer,
                        erp_transport=second.erp.transport())
    second.p.start()
    second.consumer.assign([(TOPIC, 0)])
    second.until(lambda: second.consumer.committed_offsets().get((TOPIC, 0)) == 10)
    assert [r["instance_id"] for r in second.erp.received] == [1302], "only the unfinished record is pushed again"
    assert (second.p.stats.pushed, second.p.stats.already_done) == (1, 7)
    assert second.p.metrics.registry.get_sample_value(
        "erp_sync_messages_total", {"topic": TOPIC, "outcome": "already_done"}) == 7
