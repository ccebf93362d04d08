"""Flow control and what the loop reports about it: backpressure, lag, idleness.

* :class:`Backpressure` pauses every assigned partition at ``ERP_SYNC_MAX_BUFFERED_RECORDS``
  unfinished records and resumes them at half of it; finished records held behind an unfinished
  one (a key stuck in retries) count too, at ``TRACKED_FACTOR`` to one, so memory stays bounded
  whatever is stuck. Polling goes on while paused (no ``max.poll.interval.ms`` eviction). Three
  named operations, as quix-streams names them: :meth:`~Backpressure.update` (trigger or resume),
  :meth:`~Backpressure.release` (clear the pause of partitions that leave: librdkafka keeps the
  flag across re-assignment) and :meth:`~Backpressure.reset` (after an assignment change).
* :class:`LagReporter` sets ``erp_sync_consumer_lag`` (high watermark − committed offset) and
  ``erp_sync_consumer_lag_seconds`` (age of the oldest unfinished record; while caught up with
  records still uncommitted, the time since the partition reached its end) per partition.
* :func:`idle_for` tells ``--exit-when-idle`` how long the consumer has had nothing to do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from confluent_kafka import KafkaException, TopicPartition

from ..logs import Throttle, plural
from ..metrics import Health, Metrics
from .partitions import TP, Assignment

log = logging.getLogger(__name__)

BROKER_DOWN_AFTER_FAILURES = 2
"""Broker queries in a row without an answer before readiness says the broker is not reachable."""
TRACKED_FACTOR = 10
"""Finished-but-uncommittable records held, per unit of ERP_SYNC_MAX_BUFFERED_RECORDS."""


class PausingConsumer(Protocol):
    """What flow control needs of the Kafka consumer."""

    def assignment(self) -> list[TopicPartition]:
        """As ``confluent_kafka``'s ``assignment``."""

    def pause(self, partitions: list[TopicPartition]) -> None:
        """As ``confluent_kafka``'s ``pause``."""

    def resume(self, partitions: list[TopicPartition]) -> None:
        """As ``confluent_kafka``'s ``resume``."""


class Backpressure:
    """Pauses and resumes the assigned partitions on the number of unfinished records.

    Args:
        assignment: the owned partitions.
        limit: ``ERP_SYNC_MAX_BUFFERED_RECORDS``.
        metrics: ``erp_sync_paused_partitions``.
        errors: the throttle of Kafka error lines.
    """

    def __init__(self, assignment: Assignment, limit: int, metrics: Metrics, errors: Throttle) -> None:
        self.assignment = assignment
        self.limit = limit
        self.metrics = metrics
        self._errors = errors
        self.paused = False
        self._holds: dict[TP, set[str]] = {}
        """Partitions held whatever the load, and why: ``scan`` (their parked records are being scanned),
        ``registry`` (the schema registry did not answer for their next record)."""
        self.under_pressure = False
        """Set by :meth:`update` (poll loop) for the push event loop: half the buffer is used."""

    @property
    def held(self) -> set[TP]:
        """Partitions held whatever the load, for any reason."""
        return set(self._holds)

    def held_for(self, reason: str) -> list[TP]:
        """Partitions held for ``reason``."""
        return [tp for tp, reasons in self._holds.items() if reason in reasons]

    def hold(self, consumer: PausingConsumer, tps: list[TP], reason: str = "scan") -> None:
        """Pause these partitions until :meth:`unhold` for the same reason (a resume leaves them paused)."""
        new = [tp for tp in tps if tp not in self._holds]
        for tp in tps:
            self._holds.setdefault(tp, set()).add(reason)
        if new:
            self._call(consumer.pause, new)

    def unhold(self, consumer: PausingConsumer, tps: list[TP], reason: str = "scan") -> None:
        """Let held partitions move again once no reason holds them (unless the backpressure pauses everything)."""
        freed = []
        for tp in tps:
            reasons = self._holds.get(tp)
            if reasons is None:
                continue
            reasons.discard(reason)
            if not reasons:
                del self._holds[tp]
                freed.append(tp)
        if freed and not self.paused:
            self._call(consumer.resume, freed)

    def _call(self, operation: Callable[[list[TopicPartition]], None], tps: list[TP]) -> None:
        try:
            operation([TopicPartition(t, p) for t, p in tps])
        except KafkaException as exc:
            self._errors.warning(log, "pause", "pause/resume failed: %s", exc, event="kafka_error", error_key="pause")

    def pressure(self) -> bool:
        """Whether the unfinished records fill half the buffer (parking of a failing route's records starts).

        Thread-safe: a flag the poll loop sets at each :meth:`update`.
        """
        return self.under_pressure

    def room(self) -> int:
        """How many more records may be fetched before the limit (at least 0)."""
        return max(0, self.limit - self.assignment.unfinished)

    def update(self, consumer: PausingConsumer) -> None:
        """Pause at the limit, resume at half of it (the trigger and the resume)."""
        load = max(self.assignment.unfinished, self.assignment.tracked // TRACKED_FACTOR)
        self.under_pressure = load >= self.limit // 2
        if not self.paused and load >= self.limit:
            self._set(consumer, True)
        elif self.paused and load <= self.limit // 2:
            self._set(consumer, False)

    def release(self, consumer: PausingConsumer, partitions: list[TopicPartition], stopping: bool) -> None:
        """Partitions leave (revoke, loss): clear their pause flag, which librdkafka keeps across re-assignment."""
        held = {(tp.topic, tp.partition) for tp in partitions} & self.held
        for tp in held:
            del self._holds[tp]
        if (self.paused or held) and not stopping:
            try:
                consumer.resume(partitions)
            except KafkaException as exc:
                self._errors.warning(log, "pause", "resume on release failed: %s", exc, event="kafka_error",
                                     error_key="pause")

    def reset(self) -> None:
        """After an assignment change nothing is paused (new partitions start unpaused)."""
        self.paused = False
        self.metrics.paused.set(0)

    def _set(self, consumer: PausingConsumer, paused: bool) -> None:
        try:
            assignment = consumer.assignment()
            if paused:
                consumer.pause(assignment)
            else:
                consumer.resume([tp for tp in assignment if (tp.topic, tp.partition) not in self.held])
        except KafkaException as exc:
            self._errors.warning(log, "pause", "pause/resume failed: %s", exc, event="kafka_error", error_key="pause")
            return
        self.paused = paused
        self.metrics.paused.set(len(assignment) if paused else 0)
        log.info("%s %s (%s unfinished)", "paused" if paused else "resumed", plural(len(assignment), "partition"),
                 plural(self.assignment.unfinished, "record"), extra={"event": "paused" if paused else "resumed"})


class WatermarkSource(Protocol):
    """What the lag metrics read (:class:`consumer.kafka.WatermarkWatcher`, or a test double)."""

    high: dict[TP, int]
    ok: bool
    failures: int
    error: str
    retention: dict[str, float]

    def start(self) -> None:
        """Start reading (on its own thread)."""

    def set_partitions(self, partitions: list[TP]) -> None:
        """Watch these partitions from now on."""

    def close(self) -> None:
        """Stop reading."""


class StaticWatermarks:
    """A :class:`WatermarkSource` that knows nothing (no broker queries): lag from offsets alone."""

    def __init__(self, high: dict[TP, int] | None = None) -> None:
        self.high: dict[TP, int] = dict(high or {})
        self.ok = False
        self.failures = 0
        self.error = ""
        self.retention: dict[str, float] = {}

    def start(self) -> None:
        """Nothing to start."""

    def set_partitions(self, partitions: list[TP]) -> None:
        """Forget the watermarks of partitions no longer watched."""
        self.high = {tp: hw for tp, hw in self.high.items() if tp in partitions}

    def close(self) -> None:
        """Nothing to close."""


@dataclass
class LagReporter:
    """Sets the lag gauges from the watermarks and the assignment (about once a second).

    Attributes:
        assignment: the owned partitions.
        watermarks: the high watermarks, read on their own thread.
        metrics: the gauges.
        health: told the broker answers when a watermark query succeeded.
        every_s: seconds between two updates.
    """

    assignment: Assignment
    watermarks: WatermarkSource
    metrics: Metrics
    health: Health
    every_s: float
    _next: float = 0.0
    _retention: dict[str, float] = field(default_factory=dict)

    def maybe_update(self, now: float) -> bool:
        """Whether an update is due at ``now`` (monotonic seconds); schedules the next one."""
        if now < self._next:
            return False
        self._next = now + self.every_s
        return True

    def update(self) -> None:
        """Set lag, lag seconds and committed offset of every owned partition; broker health; retention.

        A partition whose high watermark was not read yet, and that has no unfinished record, has no
        lag series: unknown is not zero.
        """
        now_ms = time.time() * 1000
        high = self.watermarks.high
        for state in self.assignment:
            hw = high.get(state.tp)
            committed = state.offsets.committed
            lag = max(0, hw - (committed or 0)) if hw is not None else None
            oldest = state.offsets.oldest_unfinished_timestamp_ms()
            lag_s: float | None
            if oldest is not None:
                lag_s = max(0.0, (now_ms - oldest) / 1000)
            elif lag is None:
                lag_s = None
            elif lag > 0 and state.caught_up_at is not None:
                lag_s = time.monotonic() - state.caught_up_at
            else:
                lag_s = 0.0
            self.metrics.set_lag(state.topic, state.partition, lag, lag_s, committed)
        if self.watermarks.ok:
            self.health.broker_up = True
        elif self.watermarks.failures >= BROKER_DOWN_AFTER_FAILURES:
            self.health.broker_up = False
            self.health.reason = self.watermarks.error
        self.metrics.broker_up.set(1 if self.health.broker_up else 0)
        for topic, retention in list(self.watermarks.retention.items()):
            if self._retention.get(topic) != retention:
                self._retention[topic] = retention
                self.metrics.retention.labels(topic).set(retention)


def idle_for(assignment: Assignment, paused: bool, dead_letters_pending: int, outstanding: int,
             last_activity: float, now: float) -> float:
    """Seconds idle: 0 unless assigned, every partition at its end and nothing unfinished or outstanding."""
    if not len(assignment) or paused or assignment.unfinished or dead_letters_pending or outstanding:
        return 0.0
    if any(not state.eof for state in assignment):
        return 0.0
    return now - last_activity
