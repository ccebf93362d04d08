"""The lag and readiness source (consumer/kafka.py WatermarkWatcher) with an admin-client double.

Found by a trial on the local stack: after a broker restart, librdkafka's admin client kept asking
ListOffsets with the leader epoch from before the restart; every answer was FENCED_LEADER_EPOCH, so
/readyz said "broker not reachable" and the lag stayed frozen for as long as the process ran.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from consumer.kafka import WatermarkWatcher, error_text
from consumer.settings import load_settings

SETTINGS = load_settings({"ERP_SYNC_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "ERP_SYNC_TOPIC": "wf",
                          "ERP_SYNC_ERP_URL": "http://erp.test/push"})


class Offsets:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class Admin:
    """An AdminClient double: each instance answers ListOffsets as the script for its generation says."""

    built: list[Admin] = []
    script: list[Any] = []  # per generation: an int (the high watermark) or a KafkaError

    def __init__(self, conf: dict[str, Any]) -> None:
        self.generation = len(Admin.built)
        self.queries = 0
        Admin.built.append(self)

    def list_offsets(self, request: dict[Any, Any], **_: Any) -> dict[Any, Future[Offsets]]:
        self.queries += 1
        answer = Admin.script[min(self.generation, len(Admin.script) - 1)]
        futures = {}
        for tp in request:
            future: Future[Offsets] = Future()
            if isinstance(answer, KafkaError):
                future.set_exception(KafkaException(answer))
            else:
                future.set_result(Offsets(answer))
            futures[tp] = future
        return futures


def watcher(script: list[Any]) -> WatermarkWatcher:
    Admin.built, Admin.script = [], script
    w = WatermarkWatcher(SETTINGS, 30.0, admin_factory=Admin)
    w.set_partitions([("wf", 0), ("wf", 1)])
    return w


def test_a_stale_leader_epoch_is_an_answer_and_a_new_client_asks_again() -> None:
    w = watcher([KafkaError(KafkaError.FENCED_LEADER_EPOCH), 42])
    w.refresh()
    assert w.ok and w.rebuilds == 1 and len(Admin.built) == 2  # the broker answered: ready; the client replaced
    assert w.error.startswith("an error answered by 127.0.0.1:1 (ListOffsets request: FENCED_LEADER_EPOCH")
    assert w.high == {}
    w.refresh()
    assert (w.ok, w.failures, w.high) == (True, 0, {("wf", 0): 42, ("wf", 1): 42})


def test_a_broker_out_of_reach_is_not_ready_and_the_client_is_replaced_every_third_failure() -> None:
    w = watcher([KafkaError(KafkaError._TRANSPORT), KafkaError(KafkaError._TRANSPORT), 7])
    oks = []
    for _ in range(6):
        w.refresh()
        oks.append(w.ok)
    assert oks == [False, False, False, False, False, False] and w.rebuilds == 2 and w.failures == 6
    assert w.error.startswith("no answer from 127.0.0.1:1 (ListOffsets request: _TRANSPORT")
    w.refresh()
    assert (w.ok, w.failures, w.high[("wf", 1)]) == (True, 0, 7)


def test_an_error_without_text_is_named() -> None:
    assert error_text(TimeoutError()) == "TimeoutError"


def test_a_retention_the_broker_does_not_answer_is_logged_with_the_wait(caplog: pytest.LogCaptureFixture) -> None:
    """A new user's trial: with the broker down the line said only "TimeoutError"."""
    from consumer.kafka import topic_retention_seconds

    settings = load_settings({"ERP_SYNC_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    with caplog.at_level(logging.INFO, logger="consumer.kafka"):
        assert topic_retention_seconds(settings, "wf", timeout_s=0.3) is None
    assert [r.getMessage() for r in caplog.records if r.name == "consumer.kafka"] == [
        "cannot read retention.ms of wf yet: no answer from the broker in 0.3 s"]


def test_librdkafkas_request_timeout_reads_as_no_answer_like_the_futures(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """CI with the lowest client versions: librdkafka's _TIMED_OUT beat the future's timeout; same line for both."""
    from concurrent.futures import Future

    from confluent_kafka import KafkaError, KafkaException

    import consumer.kafka as kafka

    class Admin:
        def describe_configs(self, resources: list[Any], request_timeout: float) -> dict[Any, Future[Any]]:
            future: Future[Any] = Future()
            future.set_exception(KafkaException(KafkaError(KafkaError._TIMED_OUT,
                                                           "Failed while waiting for controller: Local: Timed out")))
            return {resources[0]: future}

    monkeypatch.setattr(kafka, "admin_client", lambda settings: Admin())
    settings = load_settings({"ERP_SYNC_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    with caplog.at_level(logging.INFO, logger="consumer.kafka"):
        assert kafka.topic_retention_seconds(settings, "wf", timeout_s=0.3) is None
    assert [r.getMessage() for r in caplog.records if r.name == "consumer.kafka"] == [
        "cannot read retention.ms of wf yet: no answer from the broker in 0.3 s"]
