"""Real-broker helpers for the integration tests: the local KRaft broker, topics, records, offsets.

Nothing here mocks Kafka: every call goes to a real Apache Kafka broker, either the one named by
``KAFKA_BOOTSTRAP_SERVERS`` or a single-node KRaft broker started from the Maven jars by
``dev/kafka.sh``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.erp.client import ErpClient
from consumer.erp.verdict import Verdict

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = ROOT / "dev" / "kafka.sh"
REGISTRY_SH = ROOT / "dev" / "registry.sh"
VENV_BIN = Path(sys.executable).parent
ERP_SYNC = str(VENV_BIN / "erp-sync")


class BlockingErp:
    """An :class:`~consumer.erp.client.ErpClient` driven from synchronous test code.

    Every call runs on the same event loop (``asyncio.Runner``), so the connection pool lives across
    calls as it does in ``erp-sync run``.
    """

    def __init__(self, client: ErpClient) -> None:
        self.client = client
        self._runner = asyncio.Runner()

    def post(self, body: bytes, key: str) -> Verdict:
        """One push through ``post_async``."""
        return self._runner.run(self.client.post_async(body, key))

    def post_many(self, items: Sequence[tuple[bytes, str]]) -> list[Verdict]:
        """Pushes sent concurrently (one connection each, up to the pool size); verdicts in order."""
        async def many() -> list[Verdict]:
            return list(await asyncio.gather(*(self.client.post_async(b, k) for b, k in items)))
        return self._runner.run(many())

    def close(self) -> None:
        """Close the pool and the event loop."""
        try:
            self._runner.run(self.client.aclose())
        finally:
            self._runner.close()


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    """A Kafka broker for the tests. ``managed`` brokers can be stopped and started again.

    ``on_wipe`` ends an unmanaged broker the session started itself (a testcontainers container).
    """

    bootstrap: str
    managed: bool
    port: int = 0
    data_dir: str = ""
    env: dict[str, str] = field(default_factory=dict)
    on_wipe: Callable[[], None] | None = None

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
        """Stop the broker and delete its data (a container: remove it)."""
        if self.managed:
            self._sh("wipe")
        elif self.on_wipe is not None:
            on_wipe, self.on_wipe = self.on_wipe, None
            on_wipe()

    def admin(self) -> AdminClient:
        """An admin client."""
        return AdminClient({"bootstrap.servers": self.bootstrap})


def start_broker(tmp_root: Path) -> Broker:
    """The session's broker: ``KAFKA_BOOTSTRAP_SERVERS`` if set; else a container through testcontainers
    when a Docker-compatible engine answers (``DOCKER_HOST`` or the default socket; see dev/containers.py);
    else a fresh local broker from the jars.

    ``ERP_SYNC_TEST_KAFKA=container`` or ``=jars`` forces one of the last two (default ``auto``). In
    ``auto``, an engine without the locally built default image falls back to the jars, saying so.
    """
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        return Broker(given, managed=False)
    mode = os.environ.get("ERP_SYNC_TEST_KAFKA", "auto")
    if mode not in ("auto", "container", "jars"):
        raise ValueError(f"ERP_SYNC_TEST_KAFKA must be auto, container or jars, not {mode!r}")
    if mode != "jars":
        from dev import containers

        if mode == "container" or containers.engine_answers():
            if mode == "auto" and containers.default_image_missing():
                print(f"[harness] a container engine answers, but {containers.DEFAULT_IMAGE} is not built "
                      "(dev/kafka-image.sh): Kafka from the local jars", file=sys.stderr)
            else:
                return containers.start_kafka_container()
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
    """Run ``erp-sync run --exit-when-idle`` to completion; assert it exited 0.

    Raises:
        AssertionError: it exited otherwise, or did not exit within ``timeout`` s (then it is killed:
            a failed test leaves no consumer running behind it).
    """
    cp = start_consumer(env, log_path, ("run", "--exit-when-idle", str(idle_s)))
    try:
        code = cp.wait(timeout)
    except subprocess.TimeoutExpired:
        cp.proc.kill()
        cp.proc.wait(10)
        tail = cp.log()[-4000:]
        raise AssertionError(f"erp-sync run did not exit within {timeout} s (killed); log:\n{tail}") from None
    assert code == 0, f"erp-sync run exited {code}; log:\n{cp.log()[-4000:]}"
    return cp


# ------------------------------------------------------------------ fault-test helpers (tests/test_faults_process.py)


def group_state(broker: Broker, group: str, timeout_s: float = 15.0) -> tuple[str, int]:
    """The consumer group's state name (``EMPTY``, ``STABLE``, …) and its number of active members."""
    admin = broker.admin()
    desc = admin.describe_consumer_groups([group], request_timeout=timeout_s)[group].result(timeout=timeout_s + 5)
    return desc.state.name, len(desc.members)


class CommitWatcher:
    """Polls a group's committed offsets every ``interval_s`` on a background thread.

    ``samples`` holds ``(t_before, t_after, {partition: offset})`` with ``time.time()`` taken just
    before and just after each query (-1001 when the group has no commit for a partition). The
    watcher never joins the group: ``committed()`` is a plain OffsetFetch.
    """

    def __init__(self, broker: Broker, group: str, topic: str, partitions: int, interval_s: float = 0.1) -> None:
        import threading

        self._consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                                   "enable.auto.commit": False})
        self._tps = [TopicPartition(topic, p) for p in range(partitions)]
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.samples: list[tuple[float, float, dict[int, int]]] = []
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._loop, name="commit-watcher", daemon=True)

    def start(self) -> CommitWatcher:
        """Start polling; returns self."""
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            before = time.time()
            try:
                tps = self._consumer.committed(self._tps, timeout=5)
                self.samples.append((before, time.time(), {tp.partition: tp.offset for tp in tps}))
            except Exception as exc:  # noqa: BLE001 - a busy broker may time out a query: keep polling
                self.errors.append(repr(exc))
            self._stop.wait(self._interval_s)

    def stop(self) -> None:
        """Stop polling and close the client (idempotent)."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(15)
            self._consumer.close()

    def decreases(self) -> list[tuple[int, int, int]]:
        """``(partition, earlier, later)`` for every time a partition's committed offset moved backwards."""
        out: list[tuple[int, int, int]] = []
        last: dict[int, int] = {}
        for _b, _a, offsets in self.samples:
            for p, off in offsets.items():
                if off >= 0 and p in last and off < last[p]:
                    out.append((p, last[p], off))
                if off >= 0:
                    last[p] = max(off, last.get(p, off))
        return out


def produce_transactions(broker: Broker, topic: str,
                         transactions: Sequence[tuple[bool, Sequence[tuple[bytes | None, bytes | None]]]],
                         transactional_id: str | None = None) -> list[list[tuple[int, int]]]:
    """Write each ``(commit, records)`` as one transaction of a transactional producer (aborted when
    ``commit`` is False); return the ``(partition, offset)`` of each record, per transaction."""
    producer = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": transactional_id or unique("tx"),
                         "linger.ms": 5})
    producer.init_transactions(30)
    out: list[list[tuple[int, int]]] = []
    for commit, records in transactions:
        placed: list[tuple[int, int] | None] = [None] * len(records)
        errors: list[str] = []

        def cb(index: int, placed: list[tuple[int, int] | None] = placed, errors: list[str] = errors) -> Any:
            def done(err: KafkaError | None, msg: Any) -> None:
                if err is not None:
                    errors.append(str(err))
                else:
                    placed[index] = (msg.partition(), msg.offset())
            return done

        producer.begin_transaction()
        for i, (key, value) in enumerate(records):
            producer.produce(topic, key=key, value=value, on_delivery=cb(i))
        producer.flush(30)  # delivery reports (offsets) before the end of the transaction
        assert not errors and all(p is not None for p in placed), f"transactional produce failed: {errors[:3]}"
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)
        out.append([p for p in placed if p is not None])
    producer.flush(10)
    return out


def log_events(text: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``erp-sync run`` (``ERP_SYNC_LOG_FORMAT=json``), non-JSON lines skipped."""
    import json

    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# ------------------------------------------------------------- helpers of test_faults_infra.py and test_security.py


def start_dedicated_broker(tmp_root: Path) -> Broker:
    """A fresh *managed* local broker on free ports, for a test that stops and restarts it.

    Unlike :func:`start_broker` it ignores ``KAFKA_BOOTSTRAP_SERVERS`` and
    ``ERP_SYNC_TEST_KAFKA_PORT`` (those name the session's broker, which must keep running).
    Call :meth:`Broker.wipe` when done.
    """
    port = free_port()
    data_dir = str(tmp_root / f"kafka-dedicated-{port}")
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "ERP_SYNC_TEST_KAFKA_PORT")}
    env.update({"KAFKA_PORT": str(port), "KAFKA_CONTROLLER_PORT": str(free_port()), "KAFKA_DATA_DIR": data_dir})
    broker = Broker(f"127.0.0.1:{port}", managed=True, port=port, data_dir=data_dir, env=env)
    try:
        broker.start()
    except BaseException:
        broker.wipe()  # a half-started JVM must not outlive the test
        raise
    return broker


class Registry:
    """A real schema registry (Apicurio Registry, Confluent API) started by ``dev/registry.sh`` on a free port.

    In-memory: a new one knows no schema (its first schema id is 1). Use as a context manager; the
    process ends (by its pid) on exit.
    """

    def __init__(self, run_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/apis/ccompat/v7"
        self._env = {**os.environ, "REGISTRY_PORT": str(self.port), "REGISTRY_RUN_DIR": str(run_dir)}

    def _sh(self, command: str) -> None:
        subprocess.run(["bash", str(REGISTRY_SH), command], check=True, env=self._env, timeout=600,
                       stdout=sys.stderr, stderr=sys.stderr)

    def __enter__(self) -> Registry:
        try:
            self._sh("start")
        except BaseException:
            self._sh("stop")  # a half-started JVM must not outlive the test
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._sh("stop")


def http_status(url: str, timeout_s: float = 2.0) -> int:
    """The HTTP status of a GET (0 when nothing answers)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def scrape(metrics_port: int, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The value of one sample of a running ``erp-sync run``'s /metrics (None: not exported or no answer)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2.0) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                return float(sample.value)
    return None


def wait_until(predicate: Any, timeout_s: float, what: str, poll_s: float = 0.2) -> float:
    """Poll ``predicate()`` until it is truthy; return the seconds waited (TimeoutError naming ``what``)."""
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not within {timeout_s} s: {what}")
        time.sleep(poll_s)


def stop_consumer(cp: ConsumerProcess, timeout: float = 40) -> int:
    """SIGTERM a running ``erp-sync run`` (if still running) and return its exit code."""
    if cp.proc.poll() is None:
        cp.proc.terminate()
    try:
        return cp.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        cp.proc.kill()
        cp.proc.wait(timeout=10)
        raise

