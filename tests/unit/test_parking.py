"""Routes and parking in the delivery loop, with doubles at its seams (no broker, no socket).

The same behaviours are proven against a real broker and real HTTP servers in
tests/faults/test_parking.py; these pin the decisions down quickly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from consumer.delivery.dead_letters import H_CLASS, H_CODE, H_FIRST_FAILURE, H_OFFSET, H_ROUTE
from consumer.delivery.pipeline import Pipeline
from consumer.devstack.events import encode, spec_example_event
from tests.unit.test_pipeline_loop import TOPIC, Loop

RETRY = TOPIC + ".retry"
HR, FIN = 1_000_000_000_000_000_001, 2_000_000_000_000_000_002
ROUTES = f"""
routes:
  - name: hr
    match: {{flow_codes: [{HR}]}}
    url: http://hr.test/push
  - name: finance
    url: http://fin.test/push
"""


def event(instance_id: int, flow_code: int = FIN) -> bytes:
    return encode({**spec_example_event(), "instance_id": instance_id, "flow_code": flow_code})


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., Loop]]:
    loops: list[Loop] = []
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES, encoding="utf-8")

    def build(cluster: object = None, **env: str | None) -> Loop:
        settings = {"ERP_SYNC_ROUTES_FILE": str(routes), "ERP_SYNC_PARK_AFTER_SECONDS": "0.3",
                    "ERP_SYNC_RETRY_BACKOFF_INITIAL_SECONDS": "0.05", "ERP_SYNC_RETRY_BACKOFF_MAX_SECONDS": "0.2",
                    "ERP_SYNC_SHUTDOWN_TIMEOUT_SECONDS": "1", **env}
        loop = Loop(start=False, **settings)
        if cluster is not None:  # a restart: the same broker
            loop.cluster = cluster  # type: ignore[assignment]
            loop.producer.cluster = cluster  # type: ignore[assignment]
        loop.cluster.topics.update({TOPIC: 1, RETRY: 1})
        loop.p = Pipeline(loop.p.settings, consumer_factory=loop._consumer, producer=loop.producer,
                          erp_transport=loop.erp.transport())
        loop.consumers[:] = loop.consumers[-1:]
        loop.p.start()
        loops.append(loop)
        return loop

    yield build
    for loop in loops:
        if not loop.p.stopping:
            loop.close()


def parked(loop: Loop) -> list[dict[str, object]]:
    return [w for w in loop.producer.written if w["topic"] == RETRY]


def test_one_route_down_holds_back_no_record_of_the_other(make: Callable[..., Loop]) -> None:
    loop = make()
    assert loop.p.parking.retry_of == {TOPIC: RETRY}
    loop.erp.down_hosts.add("hr.test")
    for i in range(60):  # hr and finance records share the partition; each instance its own key
        loop.cluster.append(TOPIC, 0, event(10_000 + i, HR if i % 2 else FIN), key=str(i).encode())
    loop.consumer.assign([(TOPIC, 0), (RETRY, 0)])
    started = time.monotonic()
    loop.until(lambda: sorted(loop.erp.accepted) == [10_000 + i for i in range(0, 60, 2)], what="finance delivered")
    finance_took = time.monotonic() - started
    loop.until(lambda: loop.consumer.committed_offsets().get((TOPIC, 0)) == 60, what="the source committed to its end")
    assert finance_took < 1.0, f"finance waited {finance_took:.1f} s behind hr"
    hr_parked = parked(loop)
    assert len(hr_parked) == 30 and {dict(w["headers"])[H_ROUTE] for w in hr_parked} == {b"hr"}  # type: ignore[arg-type]
    assert sorted(int(dict(w["headers"])[H_OFFSET]) for w in hr_parked) == list(range(1, 60, 2))  # type: ignore[arg-type]
    assert loop.p.metrics.registry.get_sample_value("erp_sync_route_circuit_open", {"route": "hr"}) == 1
    assert loop.p.metrics.registry.get_sample_value("erp_sync_route_circuit_open", {"route": "finance"}) == 0

    loop.erp.down_hosts.clear()  # hr comes back: the parked records are delivered from the retry topic
    loop.until(lambda: sorted(loop.erp.accepted) == list(range(10_000, 10_060)), timeout_s=15, what="hr delivered")
    loop.until(lambda: loop.consumer.committed_offsets().get((RETRY, 0)) == 30, what="the retry topic committed")
    assert (loop.p.stats.pushed, loop.p.stats.parked, loop.p.stats.dead_lettered) == (60, 30, 0)
    loop.p.lag.update()
    loop.p._report()
    assert loop.p.metrics.registry.get_sample_value("erp_sync_parked_records", {"route": "hr"}) == 0


def test_a_record_answered_retry_forever_is_parked_its_key_follows_it_and_its_deadline_dead_letters_it(
        make: Callable[..., Loop]) -> None:
    loop = make(ERP_SYNC_RETRY_DEADLINE_SECONDS="1.5")
    poison, after, other = 20_001, 20_002, 20_003
    loop.erp.answer = lambda iid: (200, "InternalError") if iid == poison else (200, None)
    loop.cluster.append(TOPIC, 0, event(poison), key=b"k")
    loop.cluster.append(TOPIC, 0, event(after), key=b"k")  # the same key: must not overtake it
    loop.cluster.append(TOPIC, 0, event(other), key=b"x")
    loop.consumer.assign([(TOPIC, 0), (RETRY, 0)])
    loop.until(lambda: loop.consumer.committed_offsets().get((TOPIC, 0)) == 3, what="the source moves on")
    assert other in loop.erp.accepted
    assert after not in [r["instance_id"] for r in loop.erp.received], "it must not overtake its parked key"
    assert [dict(w["headers"])[H_OFFSET] for w in parked(loop)] == [b"0", b"1"]  # type: ignore[arg-type]
    loop.until(lambda: any(w["topic"] == TOPIC + ".dlq" for w in loop.producer.written), timeout_s=10,
               what="the deadline passed: dead letter")
    (letter,) = [w for w in loop.producer.written if w["topic"] == TOPIC + ".dlq"]
    headers = dict(letter["headers"])  # type: ignore[arg-type]
    assert (headers[H_CLASS], headers[H_CODE], headers[H_OFFSET], headers[H_ROUTE]) == (
        b"erp", b"RetryDeadlineExceeded", b"0", b"finance")
    assert b"last answer InternalError" in headers["erp_sync.error.message"]
    assert int(headers[H_FIRST_FAILURE]) > 0
    assert letter["value"] == event(poison)  # the original bytes
    loop.until(lambda: after in loop.erp.accepted, what="the next record of the key, after its dead letter")
    tries = [r["instance_id"] for r in loop.erp.received]
    assert tries.index(after) > max(i for i, iid in enumerate(tries) if iid == poison)
    loop.until(lambda: loop.consumer.committed_offsets().get((RETRY, 0)) == 2)


def test_a_restart_rebuilds_what_is_parked_from_the_retry_topic(make: Callable[..., Loop]) -> None:
    first = make()
    first.erp.answer = lambda iid: (200, "InternalError") if iid == 30_001 else (200, None)
    first.cluster.append(TOPIC, 0, event(30_001), key=b"k")
    first.consumer.assign([(TOPIC, 0), (RETRY, 0)])
    first.until(lambda: len(parked(first)) == 1 and first.consumer.committed_offsets().get((TOPIC, 0)) == 1)
    first.consumer.lose()  # as good as kill -9
    first.p.step()
    first.close()

    second = make(cluster=first.cluster)
    second.erp.answer = first.erp.answer
    second.cluster.append(TOPIC, 0, event(30_002), key=b"k")  # a later record of the parked key
    second.consumer.assign([(TOPIC, 0), (RETRY, 0)])
    second.until(lambda: second.consumer.committed_offsets().get((TOPIC, 0)) == 2, what="the new record parked")
    assert 30_002 not in [r["instance_id"] for r in second.erp.received], "it waits behind its parked key"
    assert [dict(w["headers"])[H_OFFSET] for w in parked(second)] == [b"1"]  # type: ignore[arg-type]


def test_a_record_that_cannot_be_parked_holds_the_commit(make: Callable[..., Loop]) -> None:
    loop = make()
    loop.producer.fail_topics.add(RETRY)  # the retry topic cannot be written
    loop.erp.answer = lambda iid: (200, "InternalError") if iid == 40_001 else (200, None)
    loop.cluster.append(TOPIC, 0, event(40_000), key=b"a")
    loop.cluster.append(TOPIC, 0, event(40_001), key=b"k")
    loop.cluster.append(TOPIC, 0, event(40_002), key=b"b")
    loop.consumer.assign([(TOPIC, 0), (RETRY, 0)])
    loop.until(lambda: sorted(loop.erp.accepted) == [40_000, 40_002])
    loop.steps(1.0)  # past the park delay: it tries to park, and cannot
    assert loop.consumer.committed_offsets().get((TOPIC, 0)) == 1, "never past a record it could not park"
    assert loop.producer.attempts >= 1 and parked(loop) == []
    loop.producer.fail_topics.clear()
    loop.until(lambda: loop.consumer.committed_offsets().get((TOPIC, 0)) == 3, timeout_s=10,
               what="parked once the retry topic takes it")


def test_credentials_refused_park_the_route_at_once_without_dead_letters(make: Callable[..., Loop]) -> None:
    loop = make(ERP_SYNC_PARK_AFTER_SECONDS="60")
    loop.erp.answer = lambda iid: (200, "AuthFailure.SignatureExpire")
    for i in range(5):
        loop.cluster.append(TOPIC, 0, event(50_000 + i), key=str(i).encode())
    loop.consumer.assign([(TOPIC, 0), (RETRY, 0)])
    loop.until(lambda: loop.consumer.committed_offsets().get((TOPIC, 0)) == 5, timeout_s=5,
               what="all parked long before the 60 s park delay")
    assert len(parked(loop)) == 5
    assert not [w for w in loop.producer.written if w["topic"] == TOPIC + ".dlq"]
    assert len(loop.erp.received) <= 2, "one probe per backoff period, never a stream of retries"


def test_a_record_matching_no_route_is_dead_lettered_no_route(make: Callable[..., Loop], tmp_path: Path) -> None:
    only_hr = tmp_path / "only-hr.yaml"
    only_hr.write_text(f"routes:\n  - name: hr\n    match: {{flow_codes: [{HR}]}}\n    url: http://hr.test/push\n")
    loop = make(ERP_SYNC_ROUTES_FILE=str(only_hr), ERP_SYNC_ERP_URL=None)  # no default route
    loop.cluster.append(TOPIC, 0, event(60_001, FIN))
    loop.consumer.assign([(TOPIC, 0), (RETRY, 0)])
    loop.until(lambda: loop.consumer.committed_offsets().get((TOPIC, 0)) == 1)
    (letter,) = [w for w in loop.producer.written if w["topic"] == TOPIC + ".dlq"]
    headers = dict(letter["headers"])  # type: ignore[arg-type]
    assert (headers[H_CLASS], headers[H_CODE]) == (b"validation", b"NoRoute")
    assert loop.erp.received == []


def test_parked_records_retrying_in_place_do_not_hold_back_the_parking_of_the_source(
        make: Callable[..., Loop]) -> None:
    """A restart while the route is still down: the parked records retry holding the route's slots, and the
    source records that are to be parked (their route has parked records) go to the retry topic without a slot.

    Found by tests/faults/test_parking.py (kill -9 after parking, before the source commit): the source never
    committed while the ERP stayed down, its records waiting for slots the parked records never gave back.
    """
    first = make(ERP_SYNC_MAX_IN_FLIGHT="2")
    first.erp.down_hosts.add("hr.test")
    for i in range(6):
        first.cluster.append(TOPIC, 0, event(50_000 + i, HR), key=f"k{i}".encode())
    first.consumer.assign([(TOPIC, 0), (RETRY, 0)])
    first.until(lambda: len(parked(first)) == 6 and first.consumer.committed_offsets().get((TOPIC, 0)) == 6,
                what="the first six parked")
    first.consumer.lose()
    first.p.step()
    first.close()

    second = make(cluster=first.cluster, ERP_SYNC_MAX_IN_FLIGHT="2")
    second.erp.down_hosts.add("hr.test")  # still down
    second.consumer.assign([(RETRY, 0), (TOPIC, 0)])
    second.until(lambda: len(second.erp.received) >= 4, what="the parked records retrying, holding both slots")
    for i in range(20):  # later records, some of them of the parked keys
        second.cluster.append(TOPIC, 0, event(60_000 + i, HR), key=f"k{i}".encode())
    second.until(lambda: second.consumer.committed_offsets().get((TOPIC, 0)) == 26, timeout_s=5,
                 what="the new records parked while the parked ones retry")
    assert sorted(int(dict(w["headers"])[H_OFFSET]) for w in parked(second)) == list(range(6, 26))  # type: ignore[arg-type]
    assert second.consumer.committed_offsets().get((RETRY, 0)) in (None, 0)  # the parked ones still wait
    assert second.erp.accepted == []


def test_parking_turns_on_once_the_retry_topics_metadata_can_be_read(make: Callable[..., Loop],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker did not answer at start: parking was off for the life of the process (a trial's finding)."""
    from confluent_kafka import KafkaError, KafkaException

    from consumer.delivery import parking as parking_module
    from tests.unit.doubles import FakeConsumer

    real = FakeConsumer.list_topics
    broker_down = [True]

    def list_topics(self: FakeConsumer, topic: str | None = None, timeout: float = -1) -> object:
        if broker_down[0]:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        return real(self, topic, timeout)

    monkeypatch.setattr(FakeConsumer, "list_topics", list_topics)
    monkeypatch.setattr(parking_module, "RETRY_TOPICS_RECHECK_S", 0.2)
    loop = make()
    assert loop.p.parking.retry_of == {} and loop.consumer.topics == [TOPIC]
    loop.steps(0.5)
    assert loop.p.parking.retry_of == {}  # still down: still off, asked again
    broker_down[0] = False
    loop.until(lambda: loop.consumer.topics == [TOPIC, RETRY], timeout_s=3, what="the retry topic subscribed")
    assert loop.p.parking.retry_of == {TOPIC: RETRY}
    loop.erp.down_hosts.add("hr.test")
    loop.cluster.append(TOPIC, 0, event(70_001, HR), key=b"k")
    loop.consumer.assign([(TOPIC, 0), (RETRY, 0)])
    loop.until(lambda: len(parked(loop)) == 1 and loop.consumer.committed_offsets().get((TOPIC, 0)) == 1,
               what="parked")
