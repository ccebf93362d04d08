"""What the runs run against: a topic filled with generated events, and the ERP stub."""

from __future__ import annotations

import contextlib
import functools
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from bench import ERP_SYNC, log
from bench.measure import cpu_seconds
from consumer.devstack.erp_stub import StubClient
from consumer.devstack.events import encode
from consumer.devstack.samples import generate_events
from dev.harness import Broker, create_topic, free_port


@dataclass
class Dataset:
    """A topic filled with generated events and what the ERP must receive from it."""

    topic: str
    records: int
    approved: int
    expected: set[tuple[str, int]] | None  # (Idempotency-Key, EndTime) of every approved event
    produce_s: float
    # partition → [(offset, Idempotency-Key, EndTime)] of the approved events (the RSS run's check)
    approved_at: dict[int, list[tuple[int, str, int]]] | None = None


def produce_events(broker: Broker, topic: str, count: int, seed: int, keep_expected: bool,
                   keep_offsets: bool = False) -> Dataset:
    """Write ``count`` generated events (bare Avro, key = instance id text) as fast as librdkafka goes.

    ``keep_expected``: keep the set of (Idempotency-Key, EndTime) of the approved events;
    ``keep_offsets``: keep where each approved event landed (partition, offset), to check a run
    stopped half-way against the offsets it committed.
    """
    producer = Producer({
        "bootstrap.servers": broker.bootstrap,
        "linger.ms": 50,
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "acks": "all",
    })
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    approved_at: dict[int, list[tuple[int, str, int]]] | None = {} if keep_offsets else None

    def on_approved_delivery(ident: tuple[str, int], err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        elif approved_at is not None:
            approved_at.setdefault(int(msg.partition()), []).append((int(msg.offset()), *ident))

    expected: set[tuple[str, int]] | None = set() if keep_expected else None
    approved = 0
    started = time.perf_counter()
    for event in generate_events(count, seed=seed, approved_ratio=0.5, distinct_instances=10_000,
                                 target_bytes=300):
        callback = on_delivery
        if event["status"] == "APPROVED":
            approved += 1
            ident = (f"{event['flow_code']}-{event['instance_id']}", event["end_time"])
            if expected is not None:
                expected.add(ident)
            if approved_at is not None:
                callback = functools.partial(on_approved_delivery, ident)
        value = encode(event)
        key = str(event["instance_id"]).encode()
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=callback)
                break
            except BufferError:
                producer.poll(0.05)
    remaining = producer.flush(120)
    elapsed = time.perf_counter() - started
    if errors or remaining:
        raise RuntimeError(f"producing to {topic} failed: {remaining} undelivered, errors {errors[:3]}")
    if expected is not None and len(expected) != approved:
        raise RuntimeError("generated events are not unique by (Idempotency-Key, EndTime)")
    log(f"produced {count} events ({approved} approved) to {topic} in {elapsed:.1f} s "
        f"({count / elapsed:,.0f}/s)")
    return Dataset(topic, count, approved, expected, elapsed, approved_at)


def make_dataset(broker: Broker, prefix: str, partitions: int, count: int, seed: int, keep_expected: bool,
                 keep_offsets: bool = False) -> Dataset:
    """A fresh topic ``<prefix>-<random>`` (its ``.dlq``, and its ``.retry`` as ``create-topics`` makes it,
    so parking is on as in a deployment) filled by :func:`produce_events`."""
    topic = f"{prefix}-{uuid.uuid4().hex[:8]}"
    create_topic(broker, topic, partitions)
    create_topic(broker, f"{topic}.dlq", 1)
    create_topic(broker, f"{topic}.retry", partitions)
    return produce_events(broker, topic, count, seed, keep_expected=keep_expected, keep_offsets=keep_offsets)


class Stub:
    """``erp-sync erp-stub`` in a subprocess, and its control client.

    ``capacity``: the stub's capacity model (pushes served at once, the others queue; None: unlimited),
    set at start (``--capacity``) and again by every :meth:`prepare`.
    """

    def __init__(self, workdir: Path, capacity: int | None = None) -> None:
        self.port = free_port()
        self.capacity = capacity
        self.log_path = workdir / "erp-stub.log"
        cmd = [ERP_SYNC, "erp-stub", "--port", str(self.port), "--latency-ms", "0"]
        if capacity is not None:
            cmd += ["--capacity", str(capacity)]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.base + "/erp/push"
        self.client = StubClient(self.base, timeout_s=60)
        deadline = time.monotonic() + 30
        while not self.client.health():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the ERP stub did not start; see {self.log_path}")
            time.sleep(0.1)

    def prepare(self, latency_ms: float) -> None:
        """Set the latency and the capacity, forget records, seen keys and counters."""
        self.client.behaviour(latency_ms=latency_ms, capacity=self.capacity)
        self.client.clear()
        self.client.reset_stats()

    @contextlib.contextmanager
    def capacity_as(self, capacity: int | None) -> Iterator[None]:
        """Every :meth:`prepare` inside the block sets this capacity (None: unlimited)."""
        saved, self.capacity = self.capacity, capacity
        try:
            yield
        finally:
            self.capacity = saved

    def records(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        since = 0
        while True:
            page = self.client.requests(since=since, limit=5000)
            if not page:
                return out
            out.extend(page)
            since = page[-1]["seq"]

    def cpu_s(self) -> float:
        """User+sys CPU seconds the stub process has used so far."""
        return cpu_seconds(self.proc.pid)

    def first_record(self) -> dict[str, Any] | None:
        page = self.client.requests(since=0, limit=1)
        return page[0] if page else None

    def close(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
