"""In-memory doubles at the delivery loop's seams: a Kafka consumer, a dead-letter producer, an ERP.

They behave as librdkafka does where the loop depends on it: rebalance callbacks and ``on_commit``
fire inside ``consume()``; a partition at its end yields one ``_PARTITION_EOF`` event; ``pause``
stops fetching a partition until ``resume``; ``position`` is the next offset to fetch; commits are
recorded in the order they were made. The ERP is an ``httpx.MockTransport`` whose handler the test
writes. Nothing here talks to a network: the real broker and real HTTP servers are proven by
``tests/integration`` and ``tests/faults``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
from confluent_kafka import OFFSET_INVALID, TIMESTAMP_CREATE_TIME, KafkaError, KafkaException, TopicPartition

TP = tuple[str, int]


class FakeMessage:
    """A record (or an event, when ``err`` is set) as ``confluent_kafka.Message`` shows it."""

    def __init__(self, topic: str, partition: int, offset: int, value: bytes | None = None, key: bytes | None = None,
                 timestamp_ms: int = 1_732_886_400_000, headers: list[tuple[str, bytes | None]] | None = None,
                 err: KafkaError | None = None) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._value, self._key, self._ts, self._headers, self._err = value, key, timestamp_ms, headers, err

    def error(self) -> KafkaError | None:
        return self._err

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return TIMESTAMP_CREATE_TIME, self._ts

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        return self._headers


@dataclass
class Commit:
    """One commit call: the offsets, whether it was asynchronous, and the metadata sent with each."""

    offsets: dict[TP, int]
    asynchronous: bool
    metadata: dict[TP, str | None] = field(default_factory=dict)


@dataclass
class FakeCluster:
    """What the broker holds: the records of each partition and the group's committed offsets."""

    logs: dict[TP, list[FakeMessage]] = field(default_factory=dict)
    committed: dict[TP, int] = field(default_factory=dict)
    metadata: dict[TP, str | None] = field(default_factory=dict)
    topics: dict[str, int] = field(default_factory=dict)
    """Topics that exist (name → partitions), records or not."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def append(self, topic: str, partition: int, value: bytes | None, key: bytes | None = None) -> int:
        """Write a record; return its offset."""
        with self.lock:
            log = self.logs.setdefault((topic, partition), [])
            offset = len(log)
            log.append(FakeMessage(topic, partition, offset, value, key))
            return offset


class FakeConsumer:
    """A ``confluent_kafka.Consumer`` over a :class:`FakeCluster`, driven by the test.

    The test calls :meth:`assign`, :meth:`revoke` and :meth:`lose`; the callbacks run inside the
    next ``consume()`` as librdkafka runs them inside ``poll``.
    """

    def __init__(self, cluster: FakeCluster, conf: dict[str, Any]) -> None:
        self.cluster = cluster
        self.conf = conf
        self.on_commit: Callable[[KafkaError | None, list[TopicPartition]], None] | None = conf.get("on_commit")
        self.listener: dict[str, Callable[..., None]] = {}
        self.topics: list[str] = []
        self.assigned: list[TP] = []
        self.paused: set[TP] = set()
        self.positions: dict[TP, int] = {}
        self.eof_sent: set[TP] = set()
        self.commits: list[Commit] = []
        self.pause_calls: list[list[TP]] = []
        self.resume_calls: list[list[TP]] = []
        self.closed = False
        self._events: deque[tuple[str, list[TP]]] = deque()
        self._commit_answers: deque[list[TopicPartition]] = deque()

    # --- what the test does

    def assign(self, tps: list[TP] | list[TopicPartition]) -> None:
        """The test: assign these partitions at the next consume(). An on_assign callback calling the real
        API (TopicPartition objects, before it pauses partitions) changes nothing here."""
        if tps and isinstance(tps[0], TopicPartition):
            for tp in tps:  # a group-less reader's assign(): read from the given offsets
                if isinstance(tp, TopicPartition) and tp.offset >= 0:
                    self.positions[(tp.topic, tp.partition)] = tp.offset
                    if (tp.topic, tp.partition) not in self.assigned:
                        self.assigned.append((tp.topic, tp.partition))
            return
        self._events.append(("assign", list(tps)))  # type: ignore[arg-type]

    def revoke(self, tps: list[TP] | None = None) -> None:
        self._events.append(("revoke", list(self.assigned) if tps is None else tps))

    def lose(self, tps: list[TP] | None = None) -> None:
        self._events.append(("lost", list(self.assigned) if tps is None else tps))

    def committed_offsets(self) -> dict[TP, int]:
        """The last offset committed per partition (in commit order)."""
        out: dict[TP, int] = {}
        for c in self.commits:
            out.update(c.offsets)
        return out

    # --- the confluent_kafka.Consumer API the loop uses

    def subscribe(self, topics: list[str], on_assign: Callable[..., None], on_revoke: Callable[..., None],
                  on_lost: Callable[..., None]) -> None:
        self.topics = list(topics)
        self.listener = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        while self._commit_answers:
            answered = self._commit_answers.popleft()
            if self.on_commit is not None:
                self.on_commit(None, answered)
        while self._events:
            kind, tps = self._events.popleft()
            self._rebalance(kind, tps)
        out: list[FakeMessage] = []
        with self.cluster.lock:
            for tp in self.assigned:
                if tp in self.paused:
                    continue
                log = self.cluster.logs.get(tp, [])
                pos = self.positions.get(tp, 0)
                while pos < len(log) and len(out) < num_messages:
                    out.append(log[pos])
                    pos += 1
                    self.eof_sent.discard(tp)
                self.positions[tp] = pos
                if pos >= len(log) and tp not in self.eof_sent and len(out) < num_messages:
                    self.eof_sent.add(tp)
                    out.append(FakeMessage(tp[0], tp[1], pos, err=KafkaError(KafkaError._PARTITION_EOF)))
        if not out and timeout > 0:
            threading.Event().wait(min(timeout, 0.005))
        return out

    def _rebalance(self, kind: str, tps: list[TP]) -> None:
        parts = [TopicPartition(t, p) for t, p in tps]
        if kind == "assign":
            for tp in tps:
                start = self.cluster.committed.get(tp, 0)
                self.positions[tp] = start
                self.eof_sent.discard(tp)
            self.assigned = sorted(set(self.assigned) | set(tps))
            self.listener["assign"](self, parts)
        else:
            self.listener[kind](self, parts)
            self.assigned = [tp for tp in self.assigned if tp not in tps]
            self.paused -= set(tps)

    def poll(self, timeout: float = -1) -> FakeMessage | None:
        out = self.consume(1, timeout)
        return out[0] if out else None

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float = -1) -> tuple[int, int]:
        with self.cluster.lock:
            return 0, len(self.cluster.logs.get((partition.topic, partition.partition), []))

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        """The topics the cluster holds, with their partitions (as ``ClusterMetadata``)."""
        with self.cluster.lock:
            partitions: dict[str, set[int]] = {}
            for t, p in self.cluster.logs:
                partitions.setdefault(t, set()).add(p)
            for t, count in self.cluster.topics.items():
                partitions.setdefault(t, set()).update(range(count))
        return SimpleNamespace(topics={t: SimpleNamespace(partitions={p: None for p in ps}, error=None)
                                       for t, ps in partitions.items()})

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.assigned]

    def pause(self, partitions: list[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        self.pause_calls.append(tps)
        self.paused |= set(tps)

    def seek(self, partition: TopicPartition) -> None:
        """Fetch ``partition`` from its offset next (what was fetched before is not delivered again)."""
        tp = (partition.topic, partition.partition)
        if tp not in self.assigned:
            raise KafkaException(KafkaError(KafkaError._STATE, "Erroneous state"))
        self.positions[tp] = partition.offset
        self.eof_sent.discard(tp)

    def resume(self, partitions: list[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        self.resume_calls.append(tps)
        self.paused -= set(tps)

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.positions.get((tp.topic, tp.partition), OFFSET_INVALID))
                for tp in partitions]

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[TopicPartition]:
        out = []
        for tp in partitions:
            key = (tp.topic, tp.partition)
            meta = self.cluster.metadata.get(key)
            offset = self.cluster.committed.get(key, OFFSET_INVALID)
            out.append(TopicPartition(tp.topic, tp.partition, offset, metadata=meta) if meta is not None
                       else TopicPartition(tp.topic, tp.partition, offset))
        return out

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool = True) -> list[TopicPartition] | None:
        assert not self.closed, "commit after close"
        done = {(tp.topic, tp.partition): tp.offset for tp in offsets}
        metadata = {(tp.topic, tp.partition): tp.metadata for tp in offsets}
        self.commits.append(Commit(done, asynchronous, metadata))
        with self.cluster.lock:
            self.cluster.committed.update(done)
            self.cluster.metadata.update(metadata)
        answer = [TopicPartition(tp.topic, tp.partition, tp.offset) for tp in offsets]
        if asynchronous:
            self._commit_answers.append(answer)
            return None
        return answer

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    """The dead-letter producer: keeps what it was given; the broker's answer comes with ``poll``.

    ``fail_with`` set to a KafkaError code makes every delivery fail with it (the DLQ cannot be written);
    ``max_value_bytes`` makes the "broker" refuse larger values with ``MSG_SIZE_TOO_LARGE``;
    ``fail_topics`` fails only the writes to those topics. With a ``cluster``, what is written is
    appended to its topics (so a consumer reads it back: parked records).
    """

    def __init__(self, cluster: FakeCluster | None = None) -> None:
        self.cluster = cluster
        self.fail_topics: set[str] = set()
        self.written: list[dict[str, Any]] = []
        self.attempts = 0
        self.fail_with: int | None = None
        self.max_value_bytes: int | None = None
        self._pending: deque[tuple[Callable[..., None], dict[str, Any]]] = deque()

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None, **kwargs: Any) -> None:
        self.attempts += 1
        letter = {"topic": topic, "key": key, "value": value, "headers": kwargs.get("headers") or [],
                  "partition": kwargs.get("partition", 0)}
        self._pending.append((kwargs["on_delivery"], letter))

    def poll(self, timeout: float = 0) -> int:
        served = 0
        while self._pending:
            callback, letter = self._pending.popleft()
            too_large = self.max_value_bytes is not None and len(letter["value"] or b"") > self.max_value_bytes
            if letter["topic"] in self.fail_topics:
                callback(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "not allowed"), None)
            elif self.fail_with is not None:
                callback(KafkaError(self.fail_with), None)
            elif too_large:
                callback(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large"), None)
            else:
                self.written.append(letter)
                if self.cluster is not None:
                    with self.cluster.lock:
                        log = self.cluster.logs.setdefault((letter["topic"], letter["partition"]), [])
                        log.append(FakeMessage(letter["topic"], letter["partition"], len(log), letter["value"],
                                               letter["key"], headers=letter["headers"]))
                callback(None, None)
            served += 1
        return served

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0


Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


class FakeErp:
    """An ERP behind ``httpx.MockTransport``: answers by InstanceId, records what it received.

    ``answer(instance_id) -> (status, code or None)`` decides; ``delay_s(instance_id)`` sleeps first;
    ``gate`` (an asyncio.Event created on the push loop) holds every request until set.
    """

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.answered: list[int] = []
        self.accepted: list[int] = []
        self.answer: Callable[[int], tuple[int, str | None]] = lambda _iid: (200, None)
        self.delay_s: Callable[[int], float] = lambda _iid: 0.0
        self.hold = threading.Event()
        self.hold.set()
        self.down_hosts: set[str] = set()
        """Hosts that answer 503 (an ERP down), whatever ``answer`` says."""
        self.in_flight = 0
        self.lock = threading.Lock()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = request.content
        doc = orjson.loads(body)
        iid = int(doc["InstanceId"])
        with self.lock:
            self.received.append({"body": body, "headers": dict(request.headers), "instance_id": iid,
                                  "host": request.url.host, "time": time.monotonic()})
            self.in_flight += 1
        try:
            delay = self.delay_s(iid)
            if delay:
                await asyncio.sleep(delay)
            while not self.hold.is_set():
                await asyncio.sleep(0.005)
            status, code = (503, None) if request.url.host in self.down_hosts else self.answer(iid)
        finally:
            with self.lock:
                self.in_flight -= 1
        with self.lock:
            self.answered.append(iid)
            if 200 <= status < 300 and code is None:
                self.accepted.append(iid)
        if status >= 300:
            return httpx.Response(status, content=b"down")
        response: dict[str, Any] = {"RequestId": f"req-{iid}"}
        if code is not None:
            response["Error"] = {"Code": code, "Message": f"{code} for {iid}"}
        return httpx.Response(status, content=orjson.dumps({"Response": response}))

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)
