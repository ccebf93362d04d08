"""One object per assigned partition, created on assign and dropped on revoke or loss.

Everything the loop knows about a partition it owns lives in its :class:`PartitionState` (the
shape of aiokafka's ``TopicPartitionState``): the offsets of its unfinished and finished records
(:class:`~.offsets.PartitionOffsets`), the pushes and dead letters it has outstanding, whether the
consumer reached its end (EOF) and since when, and two flags that replace generation counters:

* ``cancelled``: the partition is being revoked or was lost: queued and retrying pushes give up
  (a request already sent still finishes, and its verdict still counts while the partition is owned);
* ``released``: the partition is no longer ours: nothing it finishes is committed any more (the
  next owner reads it again). A re-assignment creates a new object, so late completions of the old
  one can never touch the new one.

Poll-loop thread only, except the two flags, which the push event loop reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .offsets import PartitionOffsets, Ranges

TP = tuple[str, int]
"""A partition: ``(topic, partition)``."""


class PartitionState:
    """An assigned partition.

    Args:
        topic: the topic.
        partition: the partition id.
        committed: the group's committed offset at assignment (next offset to read), or None.
        known_finished: offsets above it an earlier owner finished (the commit's metadata).

    Attributes:
        offsets: which of its records are finished; what may be committed.
        outstanding: pushes submitted and not yet settled.
        eof: the consumer is at the partition's end (no unread record).
        caught_up_at: monotonic time (s) it last reached its end; None until then.
        cancelled: revoking or lost: give up queued and retrying pushes.
        released: no longer assigned: completions are ignored.
        without_committed_offset: the group had no committed offset for it at assignment (until the
            first record or EOF says where ``auto.offset.reset`` started it).
        refetch_from: the offset it was sought back to, held for the schema registry (None: not held).
    """

    __slots__ = ("topic", "partition", "tp", "offsets", "outstanding", "eof", "caught_up_at", "cancelled",
                 "released", "without_committed_offset", "refetch_from")

    def __init__(self, topic: str, partition: int, committed: int | None,
                 known_finished: Ranges | None = None) -> None:
        self.topic = topic
        self.partition = partition
        self.tp: TP = (topic, partition)
        self.offsets = PartitionOffsets(committed, known_finished)
        self.outstanding = 0
        self.eof = False
        self.caught_up_at: float | None = None
        self.cancelled = False
        self.released = False
        self.without_committed_offset = committed is None
        self.refetch_from: int | None = None

    def finish(self, offset: int) -> None:
        """Mark a record finished (accepted, skipped or dead-lettered) unless the partition was released."""
        if not self.released:
            self.offsets.done(offset)

    def reached_end(self, position: int, now: float) -> None:
        """The consumer reported EOF at ``position``: trailing gaps may be committed; caught up since ``now``."""
        self.offsets.advance_to(position)
        self.eof = True
        self.caught_up_at = now

    def __repr__(self) -> str:
        return f"{self.topic}[{self.partition}]"


class Assignment:
    """The partitions this consumer owns now, by ``(topic, partition)``."""

    def __init__(self) -> None:
        self._owned: dict[TP, PartitionState] = {}

    def assign(self, topic: str, partition: int, committed: int | None,
               known_finished: Ranges | None = None) -> PartitionState:
        """Own a partition from its committed offset (a fresh state even if it was owned before).

        ``known_finished``: offsets above it an earlier owner finished (from the commit's metadata).
        """
        state = PartitionState(topic, partition, committed, known_finished)
        self._owned[state.tp] = state
        return state

    def release(self, tps: Iterable[TP]) -> list[PartitionState]:
        """Stop owning these partitions; their states are marked released (and cancelled)."""
        out = []
        for tp in tps:
            state = self._owned.pop(tp, None)
            if state is not None:
                state.cancelled = state.released = True
                out.append(state)
        return out

    def get(self, topic: str, partition: int) -> PartitionState | None:
        """The state of an owned partition, or None."""
        return self._owned.get((topic, partition))

    def states(self, tps: Iterable[TP] | None = None) -> list[PartitionState]:
        """The owned states (all, or those of ``tps`` that are owned)."""
        if tps is None:
            return list(self._owned.values())
        return [s for tp in tps if (s := self._owned.get(tp)) is not None]

    def __iter__(self) -> Iterator[PartitionState]:
        return iter(list(self._owned.values()))

    def __len__(self) -> int:
        return len(self._owned)

    @property
    def tps(self) -> list[TP]:
        """The owned partitions."""
        return list(self._owned)

    @property
    def unfinished(self) -> int:
        """Unfinished records over all owned partitions."""
        return sum(s.offsets.unfinished for s in self._owned.values())

    @property
    def tracked(self) -> int:
        """Records held over all owned partitions (see :attr:`PartitionOffsets.tracked`)."""
        return sum(s.offsets.tracked for s in self._owned.values())

    @property
    def outstanding(self) -> int:
        """Pushes submitted and not yet settled, over all owned partitions."""
        return sum(s.outstanding for s in self._owned.values())

    def committable(self, only: Iterable[TP] | None = None) -> dict[TP, int]:
        """Offsets to commit now, by partition (only those that moved; only ``only`` when given)."""
        out: dict[TP, int] = {}
        for state in self.states(only):
            offset = state.offsets.committable()
            if offset is not None:
                out[state.tp] = offset
        return out
