"""Real-broker helpers for the integration tests: the local KRaft broker, topics, records, offsets.

Nothing here mocks Kafka: every call goes to a real Apache Kafka broker, either the one named by
``KAFKA_BOOTSTRAP_SERVERS`` or a single-node KRaft broker started from the Maven jars by
``deploy/local/kafka.sh``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = ROOT / "deploy" / "local" / "kafka.sh"
VENV_BIN = Path(sys.executable).parent
ERP_SYNC = str(VENV_BIN / "erp-sync")


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    """A Kafka broker for the tests. ``managed`` brokers can be stopped and started again."""

    bootstrap: str
    managed: bool
    port: int = 0
    data_dir: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def _sh(self, *args: str, timeout: float = 180) -> None:
        subprocess.run(["bash", str(KAFKA_SH), *args], check=True, env=self.env, timeout=timeout,
                       stdout=sys.stderr, stderr=sys.stderr)

    def start(self) -> None:
        """Start (or restart after :meth:`stop`) the managed broker; data is kept."""
        assert self.managed, "cannot start a broker the tests did not start"
        self._sh("start")

    def stop(self) -> None:
        """Stop the managed broker (controlled shutdown; data kept)."""
        assert self.managed, "cannot stop a broker the tests did not start"
        self._sh("stop")

    def wipe(self) -> None:
        """Stop the broker and delete its data."""
        if self.managed:
            self._sh("wipe")

    def admin(self) -> AdminClient:
        """An admin client."""
        return AdminClient({"bootstrap.servers": self.bootstrap})


def start_broker(tmp_root: Path) -> Broker:
    """Use ``KAFKA_BOOTSTRAP_SERVERS`` if set, else start a fresh local broker."""
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        return Broker(given, managed=False)
    port = int(os.environ.get("ERP_SYNC_TEST_KAFKA_PORT") or free_port())
    data_dir = str(tmp_root / f"kafka-{port}")
    env = {**os.environ, "KAFKA_PORT": str(port), "KAFKA_CONTROLLER_PORT": str(free_port()),
           "KAFKA_DATA_DIR": data_dir}
    broker = Broker(f"127.0.0.1:{port}", managed=True, port=port, data_dir=data_dir, env=env)
    broker.start()
    return broker


def unique(prefix: str) -> str:
    """A unique topic or group name."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_topic(broker: Broker, name: str, partitions: int = 1, config: dict[str, str] | None = None) -> str:
    """Create a topic and wait until its metadata is visible."""
    admin = broker.admin()  # keep a reference: the future fails if the client is destroyed
    futures = admin.create_topics([NewTopic(name, partitions, 1, config=config or {})])
    futures[name].result(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        md = admin.list_topics(name, timeout=5)
        t = md.topics.get(name)
        if t is not None and t.error is None and len(t.partitions) == partitions:
            return name
        time.sleep(0.1)
    raise TimeoutError(f"topic {name} not visible")


def produce(broker: Broker, topic: str, records: Iterable[tuple[bytes | None, bytes | None]],
            partition: int | None = None, headers: list[tuple[str, bytes]] | None = None) -> list[tuple[int, int]]:
    """Write ``(key, value)`` records; return ``(partition, offset)`` of each, in order."""
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5, "enable.idempotence": True})
    out: list[tuple[int, int] | None] = []
    errors: list[str] = []

    def cb(index: int) -> Any:
        def done(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                out[index] = (msg.partition(), msg.offset())
        return done

    for i, (key, value) in enumerate(records):
        out.append(None)
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": cb(i)}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = headers
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(60)
    assert remaining == 0 and not errors, f"produce failed: {errors[:3]} remaining={remaining}"
    return [o for o in out if o is not None]


def read_all(broker: Broker, topic: str, timeout_s: float = 20.0) -> list[Any]:
    """Every record of a topic (all partitions) from the beginning to the current end."""
    md = broker.admin().list_topics(topic, timeout=10).topics[topic]
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique("reader"),
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "isolation.level": "read_committed"})
    parts = [TopicPartition(topic, p, 0) for p in md.partitions]
    ends = {}
    for tp in parts:
        _low, high = consumer.get_watermark_offsets(tp, timeout=10)
        ends[tp.partition] = high
    todo = {p for p, h in ends.items() if h > 0}
    consumer.assign(parts)
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while todo and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                todo.discard(msg.partition())
            continue
        out.append(msg)
        if msg.offset() + 1 >= ends[msg.partition()]:
            todo.discard(msg.partition())
    consumer.close()
    assert not todo, f"could not read {topic} to its end: partitions {todo} unfinished"
    return out


def committed(broker: Broker, group: str, topic: str, partitions: int = 1) -> dict[int, int]:
    """The group's committed offsets by partition (-1001 when none)."""
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        consumer.close()


def high_watermarks(broker: Broker, topic: str, partitions: int = 1) -> dict[int, int]:
    """High watermark of each partition."""
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique("hw")})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
    finally:
        consumer.close()


def header_map(msg: Any) -> dict[str, str]:
    """A record's headers as ``{name: text}``."""
    return {k: (v or b"").decode() for k, v in (msg.headers() or [])}


@dataclass
class ConsumerProcess:
    """``erp-sync run`` in a subprocess."""

    proc: subprocess.Popen[str]
    log_path: Path
    metrics_port: int

    def wait(self, timeout: float = 120) -> int:
        """Wait for exit; return the exit code."""
        return self.proc.wait(timeout=timeout)

    def log(self) -> str:
        """Everything the process logged so far."""
        return self.log_path.read_text(errors="replace")


def consumer_env(broker: Broker, topic: str, group: str, erp_url: str, **extra: str) -> dict[str, str]:
    """Environment for ``erp-sync run`` against the test broker and ERP."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERP_SYNC_")}
    env.update({
        "ERP_SYNC_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "ERP_SYNC_TOPIC": topic,
        "ERP_SYNC_GROUP_ID": group,
        "ERP_SYNC_ERP_URL": erp_url,
        "ERP_SYNC_METRICS_PORT": str(free_port()),
        "ERP_SYNC_LOG_FORMAT": "json",
        "ERP_SYNC_RETRY_BACKOFF_INITIAL_SECONDS": "0.05",
        "ERP_SYNC_RETRY_BACKOFF_MAX_SECONDS": "0.5",
        "ERP_SYNC_ERP_TIMEOUT_SECONDS": "5",
        "ERP_SYNC_KAFKA_CONSUMER_SESSION_TIMEOUT_MS": "6000",
        "ERP_SYNC_KAFKA_CONSUMER_HEARTBEAT_INTERVAL_MS": "500",
    })
    env.update(extra)
    return env


def start_consumer(env: dict[str, str], log_path: Path, args: Sequence[str] = ("run",)) -> ConsumerProcess:
    """Start ``erp-sync <args>`` with ``env``, logging to ``log_path``."""
    log_file = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([ERP_SYNC, *args], env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True)
    return ConsumerProcess(proc, log_path, int(env.get("ERP_SYNC_METRICS_PORT", "0")))


def run_until_idle(env: dict[str, str], log_path: Path, idle_s: float = 1.0, timeout: float = 120) -> ConsumerProcess:
    """Run ``erp-sync run --exit-when-idle`` to completion; assert it exited 0."""
    cp = start_consumer(env, log_path, ("run", "--exit-when-idle", str(idle_s)))
    code = cp.wait(timeout)
    assert code == 0, f"erp-sync run exited {code}; log:\n{cp.log()[-4000:]}"
    return cp
