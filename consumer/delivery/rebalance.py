"""Rebalances: partitions assigned, revoked or lost, and the rejoin watchdog.

* **assign**: read the group's committed offsets and create one
  :class:`~.partitions.PartitionState` per partition.
* **revoke** (the group rebalances; this member leaves): queued and retrying pushes of those
  partitions give up at once; pushes already sent get up to ``REVOKE_GRACE_MAX_S`` (and never past
  the shutdown deadline) to finish, because their verdicts are still ours to commit; confirmed dead
  letters are flushed; the finished offsets are committed synchronously; then the partitions are
  released.
* **lost** (our session timed out: another member may own them already): released at once,
  nothing committed.
* **rejoin watchdog**: librdkafka can stay out of its group after a broker restart (its JoinGroup
  waits forever on a coordinator connection that never comes back; librdkafka issues #3082,
  #3396). Without an assignment for ``ERP_SYNC_REJOIN_TIMEOUT_SECONDS`` the Kafka client is
  recreated; holding no partition, there is nothing to commit or lose.

Callbacks from a discarded client (closing on another thread) are ignored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import KafkaException, TopicPartition

from ..metrics import Health, Metrics
from .flow import Backpressure, WatermarkSource
from .offsets import Ranges, decode_finished
from .parking import Parking
from .partitions import TP, Assignment

log = logging.getLogger(__name__)

REVOKE_GRACE_MAX_S = 5.0
"""Longest wait for in-flight pushes of revoked partitions, seconds."""


class RebalanceHost(Protocol):
    """What the rebalance handling needs from the loop that owns it."""

    consumer: Any
    stopping: bool
    shutdown_deadline: float | None

    def wait_for_pushes(self, done: Callable[[], bool], deadline: float) -> None:
        """Settle push results until ``done()`` or the deadline (monotonic seconds)."""

    def commit_now(self, only: list[TP]) -> None:
        """Commit these partitions' finished offsets synchronously."""

    def flush_dead_letters(self, timeout_s: float) -> int:
        """Wait for the dead letters' confirmations (they finish offsets); return how many remain."""

    def recreate_consumer(self, waited_s: float) -> None:
        """Replace the Kafka client with a new one, subscribed with the same listener."""


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "(none)"


@dataclass
class Rebalancer:
    """Handles librdkafka's ``on_assign``, ``on_revoke`` and ``on_lost`` (the rebalance listener).

    Attributes:
        host: the loop (consumer, stopping flag, waits and commits).
        assignment: the owned partitions.
        backpressure: flow control (pause flags are cleared on release).
        watermarks: told which partitions to watch.
        metrics: rebalance counters, assigned partitions, lag series.
        health: readiness.
        shutdown_timeout_s: ``ERP_SYNC_SHUTDOWN_TIMEOUT_SECONDS`` (caps the revoke grace).
        rejoin_timeout_s: ``ERP_SYNC_REJOIN_TIMEOUT_SECONDS``.
        parking: what is parked (retry partitions are scanned at assignment; their partitions held meanwhile).
        unassigned_since: monotonic time (s) since which no partition is assigned; None while assigned.
        last_assigned: monotonic time (s) of the last assignment.
    """

    host: RebalanceHost
    assignment: Assignment
    backpressure: Backpressure
    watermarks: WatermarkSource
    metrics: Metrics
    health: Health
    shutdown_timeout_s: float
    rejoin_timeout_s: float
    parking: Parking | None = None
    unassigned_since: float | None = field(default_factory=time.monotonic)
    last_assigned: float | None = None

    @property
    def revoke_grace_s(self) -> float:
        """How long in-flight pushes of revoked partitions may take, seconds."""
        return min(REVOKE_GRACE_MAX_S, self.shutdown_timeout_s)

    def on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Own the partitions from the group's committed offsets."""
        if consumer is not self.host.consumer:
            return
        self.metrics.rebalances.labels("assign").inc()
        self.unassigned_since = None
        self.health.joined = True
        self.health.broker_up = True  # the group coordinator just answered
        committed: dict[TP, tuple[int, Ranges]] = {}
        try:
            for tp in consumer.committed(partitions, timeout=10):
                if tp.offset >= 0:
                    committed[(tp.topic, tp.partition)] = (tp.offset, decode_finished(tp.metadata, tp.offset))
        except KafkaException as exc:
            log.warning("cannot read committed offsets at assignment: %s", exc)
        states = []
        for tp in partitions:
            offset, finished = committed.get((tp.topic, tp.partition), (None, []))
            states.append(self.assignment.assign(tp.topic, tp.partition, offset, finished))
        self._changed()
        held = self.parking.assigned(states, committed) if self.parking is not None else []
        if held:  # assign now, so that the pause of the held partitions applies to them
            consumer.assign(partitions)
            self.backpressure.hold(consumer, held, "scan")
        self.last_assigned = time.monotonic()
        log.info("assigned %s", _names(partitions), extra={"event": "assigned"})

    def on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Finish what was sent (within the grace), commit, then let the partitions go."""
        if consumer is not self.host.consumer:
            return
        self.metrics.rebalances.labels("revoke").inc()
        self.backpressure.release(consumer, partitions, self.host.stopping)
        revoked = [(tp.topic, tp.partition) for tp in partitions]
        states = self.assignment.states(revoked)
        for state in states:  # queued and retrying pushes give up; in-flight ones finish
            state.cancelled = True
        deadline = time.monotonic() + self.revoke_grace_s
        if self.host.shutdown_deadline is not None:  # closing: the shutdown bound wins
            deadline = min(deadline, self.host.shutdown_deadline)
        self.host.wait_for_pushes(lambda: not any(s.outstanding for s in states), deadline)
        self.host.flush_dead_letters(max(0.0, deadline - time.monotonic()))  # confirmed letters commit now
        self.host.commit_now(revoked)
        self._release(revoked)
        log.info("revoked %s", _names(partitions), extra={"event": "revoked"})

    def on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Let the partitions go at once, committing nothing: another member may own them already."""
        if consumer is not self.host.consumer:
            return
        self.metrics.rebalances.labels("lost").inc()
        self.health.joined = False  # out of the group until it joins again
        self.backpressure.release(consumer, partitions, self.host.stopping)
        self._release([(tp.topic, tp.partition) for tp in partitions])
        log.warning("partitions lost (session timed out): %s", _names(partitions), extra={"event": "lost"})

    def release_loaded(self) -> None:
        """Let partitions held for their parked-records scan move once it is done."""
        if self.parking is None or not self.backpressure.held:
            return
        done = [tp for tp in self.backpressure.held_for("scan") if self.parking.loaded(tp)]
        if done:
            self.backpressure.unhold(self.host.consumer, done, "scan")

    def _release(self, tps: list[TP]) -> None:
        if self.parking is not None:
            self.parking.released(tps)
        for state in self.assignment.release(tps):
            self.metrics.drop_partition(state.topic, state.partition)
        self._changed()
        self.unassigned_since = time.monotonic()

    def _changed(self) -> None:
        count = len(self.assignment)
        self.health.assigned = count
        self.metrics.assigned.set(count)
        self.watermarks.set_partitions(self.assignment.tps)
        self.backpressure.reset()

    def check_rejoin(self, now: float) -> bool:
        """The rejoin watchdog: recreate the client after ``rejoin_timeout_s`` without an assignment.

        Returns:
            True when the client was recreated.
        """
        since = self.unassigned_since
        if since is None or self.host.stopping or now - since < self.rejoin_timeout_s:
            return False
        self.host.recreate_consumer(now - since)
        self.unassigned_since = time.monotonic()
        return True
