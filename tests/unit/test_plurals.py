"""Counts in printed and logged lines take the right plural: "1 partition", "1 commit", "2 commits"."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError
from prometheus_client import CollectorRegistry

from consumer.delivery.dead_letters import DeadLetterWriter
from consumer.delivery.push import PushLog
from consumer.errors import DecodeError
from consumer.logs import plural
from consumer.metrics import Health, Metrics
from consumer.ops import console
from tests.unit.doubles import FakeMessage, FakeProducer


def test_plural() -> None:
    assert [plural(n, "partition") for n in (0, 1, 2)] == ["0 partitions", "1 partition", "2 partitions"]
    assert [plural(n, "push", "pushes") for n in (1, 3)] == ["1 push", "3 pushes"]
    assert console.plural is plural  # one helper for the tools and the logs


@pytest.mark.parametrize(("assigned", "reason"), [(1, "ok: 1 partition assigned"), (3, "ok: 3 partitions assigned")])
def test_readiness_counts_partitions_in_good_english(assigned: int, reason: str) -> None:
    health = Health()
    health.joined = health.broker_up = True
    health.assigned = assigned
    assert health.readiness() == (True, reason)


def test_the_recovery_line_after_one_failed_attempt(caplog: pytest.LogCaptureFixture) -> None:
    push_log = PushLog(Metrics("wf", CollectorRegistry()), logging.getLogger("test.push"))
    with caplog.at_level(logging.INFO, "test.push"):
        push_log.recovered(1, 0.5)
    assert caplog.records[-1].getMessage() == (
        "ERP of route default answers again after 1 failed attempt in a row (0.5 s): pushes resume")


def test_the_dead_letter_lines_count_in_good_english(caplog: pytest.LogCaptureFixture) -> None:
    producer = FakeProducer()
    writer = DeadLetterWriter(producer, "wf.dlq")
    done: list[object] = []
    producer.fail_with = KafkaError.UNKNOWN_TOPIC_OR_PART
    with caplog.at_level(logging.INFO, "consumer.delivery.dead_letters"):
        letter = writer.send(FakeMessage("wf", 0, 7, b"x"), DecodeError("InvalidAvro", "bad"), 0, done.append)
        writer.poll()
        failed = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "dead_letter_failed"]
        assert failed and "(1 dead letter pending, 0 similar failures not logged)" in failed[0], failed
        assert letter.failures == 1
        producer.fail_with = None
        writer._produce(letter)  # the retry, without waiting for its backoff
        writer.poll()
    recovered = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "dead_letter_recovered"]
    assert recovered == ["dead letter written after 1 failed attempt"]
