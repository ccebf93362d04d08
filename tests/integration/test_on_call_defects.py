"""Defects an on-call engineer hit (issue "on-call defects"), reproduced on the real broker and a real ERP.

1. A dead letter larger than the dead-letter topic allows stalled its partition for good.
2. ``create-topics`` gave the dead-letter topic the same size limit as the source.
5. ``check-config --connect`` says which of broker, registry and ERP does not answer.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import ConfigResource, ResourceType

from consumer.devstack.erp_stub import ErpStub, StubClient
from consumer.devstack.events import encode, spec_example_event
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
    unique,
)

pytestmark = pytest.mark.kafka
MIB = 1_048_576


def topic_config(broker: Broker, topic: str, name: str) -> str:
    admin = broker.admin()
    resource = ConfigResource(ResourceType.TOPIC, topic)
    return admin.describe_configs([resource])[resource].result(timeout=30)[name].value


def produce_large(broker: Broker, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": broker.bootstrap, "message.max.bytes": 8 * MIB})
    errors: list[object] = []
    for key, value in records:
        producer.produce(topic, key=key, value=value, on_delivery=lambda err, _m: err and errors.append(err))
    producer.flush(30)
    assert errors == []


def erp_sync(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ERP_SYNC, *args], env=env, capture_output=True, text=True, timeout=120)


def test_create_topics_sizes_the_dead_letter_topic_above_the_source(broker: Broker) -> None:
    source = create_topic(broker, unique("big-source"), config={"max.message.bytes": str(3 * MIB)})
    env = consumer_env(broker, source, unique("g"), "http://127.0.0.1:9/none")
    done = erp_sync(env, "create-topics", "--partitions", "1")
    assert done.returncode == 0, done.stderr
    dlq = source + ".dlq"
    assert done.stdout.splitlines() == [f"{source}: exists (1 partitions)",
                                        f"{dlq}: created, max.message.bytes {3 * MIB + 65_536}",
                                        f"{source}.retry: created, max.message.bytes {3 * MIB + 65_536}"]
    assert topic_config(broker, source + ".retry", "max.message.bytes") == str(3 * MIB + 65_536)
    assert topic_config(broker, dlq, "max.message.bytes") == str(3 * MIB + 65_536)

    # a dead-letter topic made before (1 MB, the broker's default) is raised
    other = create_topic(broker, unique("big-source"), config={"max.message.bytes": str(2 * MIB)})
    create_topic(broker, other + ".dlq")
    done = erp_sync(consumer_env(broker, other, unique("g"), "http://127.0.0.1:9/none"), "create-topics")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == (
        f"{other}.dlq: max.message.bytes raised from 1048588 to {2 * MIB + 65_536} (the source's limit + 64 KiB "
        "of headers), so every record of the source fits in its dead letter")
    assert topic_config(broker, other + ".dlq", "max.message.bytes") == str(2 * MIB + 65_536)


def test_a_two_megabyte_value_is_dead_lettered_and_its_partition_moves_on(
        broker: Broker, erp: ErpStub, stub: StubClient, tmp_path: Path) -> None:
    """2,000,000 bytes on a source that allows 3 MiB: whole in a DLQ sized by create-topics, without its value
    (header erp_sync.value.omitted) in a DLQ that only allows 1 MB; either way the partition moves on."""
    for sized in (True, False):
        source = create_topic(broker, unique("big"), config={"max.message.bytes": str(3 * MIB)})
        group = unique("g-big")
        env = consumer_env(broker, source, group, erp.url, ERP_SYNC_COMMIT_INTERVAL_SECONDS="0.2")
        if sized:
            assert erp_sync(env, "create-topics").returncode == 0
        else:
            create_topic(broker, source + ".dlq")  # 1 MB: the broker's default
        big = b"\x02" * 2_000_000
        produce_large(broker, source, [(b"big", big), (b"spec", encode(spec_example_event()))])
        cp = run_until_idle(env, tmp_path / f"run-{sized}.log", idle_s=1.0, timeout=90)
        assert committed(broker, group, source) == high_watermarks(broker, source) == {0: 2}, cp.log()[-3000:]
        (letter,) = read_all(broker, source + ".dlq")
        headers = header_map(letter)
        assert (headers["erp_sync.error.class"], headers["erp_sync.error.code"]) == ("decode", "ValueTooLarge")
        assert headers["erp_sync.original.offset"] == "0"
        if sized:
            assert letter.value() == big and "erp_sync.value.omitted" not in headers
        else:
            assert letter.value() is None
            assert headers["erp_sync.value.omitted"].startswith("2000000 bytes: MSG_SIZE_TOO_LARGE")
            assert '"event": "dead_letter_value_omitted"' in cp.log()
        assert len(stub.requests()) == (1 if sized else 2)  # the spec example arrived each time


def test_check_config_connect_says_what_does_not_answer(broker: Broker, erp: ErpStub) -> None:
    topic = create_topic(broker, unique("connect"))
    create_topic(broker, topic + ".dlq")
    env = consumer_env(broker, topic, unique("g"), erp.url)
    ok = erp_sync(env, "check-config", "--connect", "--connect-timeout", "5")
    assert ok.returncode == 0, ok.stderr
    lines = [line for line in ok.stderr.splitlines() if line.startswith(("ok ", "FAILED "))]
    assert len(lines) == 2, ok.stderr
    assert lines[0].startswith(f"ok      Kafka {broker.bootstrap}: reachable (1 broker); {topic}: 1 partitions")
    assert lines[1] == f"ok      ERP {erp.url}: reachable (TCP 127.0.0.1:{erp.port}; plain http)"

    dead = free_port()
    down = erp_sync({**env, "ERP_SYNC_ERP_URL": f"http://127.0.0.1:{dead}/push"}, "check-config", "--connect")
    assert down.returncode == 1
    assert down.stderr.splitlines()[-1].startswith(f"FAILED  ERP http://127.0.0.1:{dead}/push: unreachable "
                                                   "(ConnectionRefusedError")
    missing = erp_sync({**env, "ERP_SYNC_TOPIC": unique("nope")}, "check-config", "--connect")
    assert missing.returncode == 1 and "does not exist (erp-sync create-topics creates it)" in missing.stderr
    no_broker = erp_sync({**env, "ERP_SYNC_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"},
                         "check-config", "--connect", "--connect-timeout", "2")
    assert no_broker.returncode == 1
    assert "FAILED  Kafka 127.0.0.1:" in no_broker.stderr and "unreachable" in no_broker.stderr
