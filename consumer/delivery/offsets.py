"""Offset tracking: which offset of each partition may be committed.

Records of a partition finish in any order (pushes run concurrently, dead letters wait for the
broker). The committable offset is always one past the end of the contiguous run of finished
records, never past an unfinished one (issue "main job", Behaviour). Offsets need not be
contiguous: transactional control records and compaction leave gaps, so the tracker follows the
offsets it was given, and :meth:`PartitionOffsets.advance_to` lets the consumer's fetch position
carry the commit over trailing gaps once every tracked record is finished.

The committed offset never moves backwards. Not thread-safe: only the poll loop touches it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(slots=True)
class _Entry:
    offset: int
    timestamp_ms: int
    done: bool = False


class PartitionOffsets:
    """Finished/unfinished state of the records of one assigned partition.

    Args:
        committed: the group's committed offset at assignment (next offset to read), or None.
    """

    def __init__(self, committed: int | None = None) -> None:
        self._entries: deque[_Entry] = deque()
        self._by_offset: dict[int, _Entry] = {}
        self._floor: int | None = committed  # everything below is finished
        self.committed: int | None = committed  # last offset acknowledged by the broker
        self.last_tracked: int | None = None

    def track(self, offset: int, timestamp_ms: int = 0) -> bool:
        """Register a fetched record as unfinished.

        Returns:
            False (and ignores it) when the offset is not above every offset seen so far or is
            below the committed offset: a re-fetch of a record already handled.
        """
        if (self.last_tracked is not None and offset <= self.last_tracked) or (
            self._floor is not None and offset < self._floor
        ):
            return False
        entry = _Entry(offset, timestamp_ms)
        self._entries.append(entry)
        self._by_offset[offset] = entry
        self.last_tracked = offset
        return True

    def done(self, offset: int) -> None:
        """Mark a tracked record finished (accepted, skipped or dead-lettered).

        Unknown offsets are ignored: the partition may have been revoked and re-assigned.
        """
        entry = self._by_offset.pop(offset, None)
        if entry is None:
            return
        entry.done = True
        entries = self._entries
        while entries and entries[0].done:
            self._floor = entries.popleft().offset + 1

    def advance_to(self, position: int) -> None:
        """Let the commit move up to ``position`` (the fetch position) when nothing is unfinished.

        This steps over offsets that never reach the application: control records of
        transactions, aborted records, compacted-away offsets.
        """
        if not self._entries and (self._floor is None or position > self._floor):
            if self.last_tracked is None or position > self.last_tracked:
                self._floor = position

    def committable(self) -> int | None:
        """The offset to commit now (next offset to read), or None if nothing new to commit."""
        floor = self._floor
        if floor is None or (self.committed is not None and floor <= self.committed):
            return None
        return floor

    def mark_committed(self, offset: int) -> None:
        """Record that the broker acknowledged a commit of ``offset``; never moves backwards."""
        if self.committed is None or offset > self.committed:
            self.committed = offset

    @property
    def unfinished(self) -> int:
        """Number of tracked records not yet finished."""
        return len(self._by_offset)

    @property
    def tracked(self) -> int:
        """Records held: unfinished ones and finished ones waiting behind an unfinished one."""
        return len(self._entries)

    @property
    def floor(self) -> int | None:
        """Offset below which every record is finished (what would be committed)."""
        return self._floor

    def oldest_unfinished_timestamp_ms(self) -> int | None:
        """Kafka timestamp (ms) of the oldest unfinished record, or None when all are finished."""
        for entry in self._entries:
            if not entry.done:
                return entry.timestamp_ms
        return None
