"""Packaging seams that need no broker: the CLI without consumer/devstack (the production image), and
which Kafka the test session uses (dev/harness.py start_broker)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from consumer import cli
from dev import containers, harness


@pytest.mark.parametrize("argv", [["erp-stub", "--port", "0"], ["produce-sample", "--count", "1"]])
def test_devstack_commands_say_where_to_find_them_when_devstack_is_absent(
        argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "consumer.devstack" else real(name, *args)

    monkeypatch.setattr(cli.importlib.util, "find_spec", find_spec)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"erp-sync {argv[0]}: not in this installation" in err and "--target devstack" in err


class _Chosen(Exception):
    pass


@pytest.fixture
def choice(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """start_broker with the engine probe, the image probe and both starts replaced by recorders."""
    state: dict[str, Any] = {"engine": False, "missing": False}
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("ERP_SYNC_TEST_KAFKA", raising=False)
    monkeypatch.setattr(containers, "engine_answers", lambda: state["engine"])
    monkeypatch.setattr(containers, "default_image_missing", lambda: state["missing"])

    def container() -> None:
        raise _Chosen("container")

    def jars(self: harness.Broker) -> None:
        raise _Chosen("jars")

    monkeypatch.setattr(containers, "start_kafka_container", container)
    monkeypatch.setattr(harness.Broker, "start", jars)
    return state


def _chosen(tmp_path: Path) -> str:
    with pytest.raises(_Chosen) as exc:
        harness.start_broker(tmp_path)
    return str(exc.value)


def test_no_engine_means_the_local_jars(choice: dict[str, Any], tmp_path: Path) -> None:
    assert _chosen(tmp_path) == "jars"


def test_an_engine_that_answers_means_testcontainers(choice: dict[str, Any], tmp_path: Path) -> None:
    choice["engine"] = True
    assert _chosen(tmp_path) == "container"


def test_an_engine_without_the_local_image_falls_back_to_the_jars(choice: dict[str, Any], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    choice.update(engine=True, missing=True)
    assert _chosen(tmp_path) == "jars"
    assert "dev/kafka-image.sh" in capsys.readouterr().err


def test_forced_choices(choice: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERP_SYNC_TEST_KAFKA", "container")
    assert _chosen(tmp_path) == "container"  # no engine probe: a missing engine is an error there
    choice["engine"] = True
    monkeypatch.setenv("ERP_SYNC_TEST_KAFKA", "jars")
    assert _chosen(tmp_path) == "jars"
    monkeypatch.setenv("ERP_SYNC_TEST_KAFKA", "maybe")
    with pytest.raises(ValueError, match="auto, container or jars"):
        harness.start_broker(tmp_path)


def test_a_given_cluster_wins(choice: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    choice["engine"] = True
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9092")
    broker = harness.start_broker(tmp_path)
    assert broker.bootstrap == "kafka.example:9092" and not broker.managed


def test_the_kafka_environment_follows_the_apache_kafka_image() -> None:
    env = containers.kafka_env(40000)
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://127.0.0.1:40000"
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert all(k.startswith("KAFKA_") and k.upper() == k for k in env)
