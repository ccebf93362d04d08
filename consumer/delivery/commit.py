"""Committing offsets: never past an unfinished record, never backwards (issue "main job", Behaviour).

:meth:`Committer.commit` is the one place offsets are committed, in three steps:

1. for every partition with nothing unfinished, let the commit follow the consumer's fetch
   position (it steps over transaction markers, aborted records and compacted-away offsets that
   never reach the application);
2. take each partition's committable offset: one past the contiguous run of finished records
   (:meth:`~.offsets.PartitionOffsets.committable`), with the offsets finished beyond it in the
   commit's metadata (:func:`~.offsets.encode_finished`, as Parallel Consumer does), so that the next
   owner, after a rebalance or a ``kill -9``, skips them; only where either moved;
3. commit them: asynchronously every ``ERP_SYNC_COMMIT_INTERVAL_SECONDS`` (the broker's answer comes
   back through :meth:`on_commit`) and at shutdown (its answer awaited for a bounded time: a
   synchronous commit waits for the group coordinator without limit, so a broker that is down at
   SIGTERM would hold the pod past its grace period); synchronously on revoke (the coordinator is
   the one asking).

Only an acknowledged commit moves a partition's ``committed`` mark; failures are counted
(``erp_sync_commits_total{result="error"}``) and logged at most once per 30 s.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import OFFSET_INVALID, KafkaError, KafkaException, TopicPartition

from ..logs import Throttle
from ..metrics import Metrics
from .offsets import encode_finished
from .partitions import TP, Assignment, PartitionState
from .settle import RunStats

log = logging.getLogger(__name__)


class CommittingConsumer(Protocol):
    """What committing needs of the Kafka consumer."""

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """As ``confluent_kafka``'s ``position``."""

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool = ...) -> Any:
        """As ``confluent_kafka``'s ``commit``."""


@dataclass
class Committer:
    """Commits the assignment's finished offsets.

    Attributes:
        assignment: the owned partitions.
        metrics: commit counters.
        stats: the run's counters (``commits``).
        interval_s: seconds between periodic commits.
        errors: the throttle of Kafka error lines (shared with the loop).
    """

    assignment: Assignment
    metrics: Metrics
    stats: RunStats
    interval_s: float
    errors: Throttle
    _next: float = 0.0
    awaiting: int = 0
    """Asynchronous commits sent and not answered yet."""

    def maybe_commit(self, consumer: CommittingConsumer, now: float) -> None:
        """Commit asynchronously when the interval has passed (``now``: monotonic seconds)."""
        if now >= self._next:
            self.commit(consumer, asynchronous=True)
            self._next = now + self.interval_s

    def commit(self, consumer: CommittingConsumer, asynchronous: bool, only: Iterable[TP] | None = None) -> None:
        """Commit every owned partition's contiguous finished offset (or those of ``only``)."""
        states = self.assignment.states(only)
        for state in states:
            if state.offsets.unfinished == 0:
                try:
                    position = consumer.position([TopicPartition(*state.tp)])[0].offset
                except KafkaException:
                    position = OFFSET_INVALID
                if position >= 0:
                    state.offsets.advance_to(position)
        tps = [tp for state in states if (tp := self._to_commit(state)) is not None]
        if not tps:
            return
        try:
            if asynchronous:
                consumer.commit(offsets=tps, asynchronous=True)
                self.awaiting += 1
            else:
                self.committed(consumer.commit(offsets=tps, asynchronous=False))
        except KafkaException as exc:
            self.metrics.commit_error.inc()
            self.errors.warning(log, "commit", "commit failed: %s", exc, event="kafka_error", error_key="commit")

    @staticmethod
    def _to_commit(state: PartitionState) -> TopicPartition | None:
        """The partition's commit now: its floor, with the finished offsets beyond it as metadata.

        None when neither moved since the last acknowledged commit.
        """
        offsets = state.offsets
        floor = offsets.floor
        if floor is None:
            return None
        metadata = encode_finished(floor, offsets.finished_ranges())
        if offsets.committable() is None and metadata == offsets.committed_metadata:
            return None
        offsets.sent = (floor, metadata)
        return TopicPartition(state.topic, state.partition, floor, metadata=metadata)

    def on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """Librdkafka's ``on_commit`` callback: the broker's answer to an asynchronous commit."""
        self.awaiting = max(0, self.awaiting - 1)
        if err is not None:
            self.metrics.commit_error.inc()
            self.errors.warning(log, "commit", "commit failed: %s", err, event="kafka_error", error_key="commit")
            return
        self.committed(partitions)

    def committed(self, partitions: list[TopicPartition]) -> None:
        """Record the broker's acknowledgement of committed offsets (never backwards)."""
        ok = False
        for tp in partitions:
            if tp.error is not None:
                self.metrics.commit_error.inc()
                self.errors.warning(log, "commit", "commit of %s [%d] failed: %s", tp.topic, tp.partition, tp.error,
                                     event="kafka_error", error_key="commit")
                continue
            state = self.assignment.get(tp.topic, tp.partition)
            if state is not None:
                state.offsets.mark_committed(tp.offset)
                if state.offsets.sent[0] == tp.offset:
                    state.offsets.committed_metadata = state.offsets.sent[1]
            ok = True
        if ok:
            self.stats.commits += 1
            self.metrics.commit_ok.inc()
