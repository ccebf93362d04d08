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

import base64
import bisect
from collections import deque
from collections.abc import Iterable
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
        known_finished: offsets above ``committed`` an earlier owner finished (from the commit's
            metadata, :func:`decode_finished`): they are not pushed again.
    """

    def __init__(self, committed: int | None = None, known_finished: Ranges | None = None) -> None:
        self._entries: deque[_Entry] = deque()
        self._by_offset: dict[int, _Entry] = {}
        self._floor: int | None = committed  # everything below is finished
        self.committed: int | None = committed  # last offset acknowledged by the broker
        self.last_tracked: int | None = None
        self._known: Ranges = list(known_finished or [])
        self.committed_metadata = ""
        """The metadata of the last acknowledged commit."""
        self.sent: tuple[int, str] = (-1, "")
        """The offset and metadata of the last commit sent."""

    def already_finished(self, offset: int) -> bool:
        """Whether an earlier owner finished this offset (the commit metadata says so)."""
        return bool(self._known) and in_ranges(self._known, offset)

    def finished_ranges(self) -> Ranges:
        """Offsets finished above the floor: tracked ones, and those known from the commit metadata."""
        floor = self._floor if self._floor is not None else -1
        done = to_ranges(e.offset for e in self._entries if e.done)
        known = [(max(start, floor + 1), end) for start, end in self._known if end > floor + 1]
        merged: Ranges = []
        for start, end in sorted(done + known):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged

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


# ------------------------------------------------------------------------------------------ commit metadata

METADATA_PREFIX = "erpsync1:"
"""Marks commit metadata written by this codec (format 1)."""
MAX_METADATA_BYTES = 4000
"""Longest metadata written: below the broker's ``offset.metadata.max.bytes`` default of 4,096."""

Ranges = list[tuple[int, int]]
"""Sorted, disjoint ``[start, end)`` ranges of offsets."""


def to_ranges(offsets: Iterable[int]) -> Ranges:
    """Sorted disjoint ``[start, end)`` ranges covering exactly ``offsets``."""
    out: Ranges = []
    for offset in sorted(set(offsets)):
        if out and out[-1][1] == offset:
            out[-1] = (out[-1][0], offset + 1)
        else:
            out.append((offset, offset + 1))
    return out


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_finished(committed: int, finished: Ranges, limit: int = MAX_METADATA_BYTES) -> str:
    """Commit metadata naming the offsets finished beyond the committed one (as Parallel Consumer does).

    Format: ``erpsync1:<committed>:<base64url>`` where the bytes are unsigned varints alternating the
    length of a gap (offsets not finished) and of a run (finished), from ``committed + 1``. When that
    would exceed ``limit`` bytes, the highest runs are left out: fewer offsets are remembered (more
    records are pushed again after a restart), never a wrong one.

    Args:
        committed: the offset committed with it (the first unfinished record); it is never in ``finished``.
        finished: finished offsets above ``committed``, as ranges (others are ignored).
        limit: the most characters to write.

    Returns:
        The metadata; ``""`` when nothing beyond the committed offset is finished.
    """
    head = f"{METADATA_PREFIX}{committed}:"
    chunks: list[bytes] = []
    position = committed + 1
    for start, end in finished:
        start = max(start, position)
        if end <= start:
            continue
        chunks.append(_varint(start - position) + _varint(end - start))
        position = end
    while chunks:
        body = base64.urlsafe_b64encode(b"".join(chunks)).rstrip(b"=").decode()
        if len(head) + len(body) <= limit:
            return head + body
        chunks = chunks[: max(0, len(chunks) - max(1, len(chunks) // 8))]
    return ""


def decode_finished(metadata: str | None, committed: int) -> Ranges:
    """The finished offsets :func:`encode_finished` wrote, if it wrote them for this committed offset.

    Metadata from anything else (another tool, an offset reset, another committed offset, garbage)
    yields no range: nothing is skipped that was not proven finished.
    """
    if not metadata or not metadata.startswith(METADATA_PREFIX):
        return []
    base, _, body = metadata[len(METADATA_PREFIX):].partition(":")
    if base != str(committed):
        return []
    try:
        data = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (ValueError, TypeError):
        return []
    numbers: list[int] = []
    value = shift = 0
    for byte in data:
        value |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
            if shift > 63:
                return []
            continue
        numbers.append(value)
        value = shift = 0
    if shift or len(numbers) % 2:
        return []
    out: Ranges = []
    position = committed + 1
    for gap, run in zip(numbers[::2], numbers[1::2], strict=True):
        if run == 0:
            return []
        start = position + gap
        out.append((start, start + run))
        position = start + run
    return out


def in_ranges(ranges: Ranges, offset: int) -> bool:
    """Whether ``offset`` lies in one of the sorted ``ranges``."""
    i = bisect.bisect_right(ranges, (offset, float("inf"))) - 1
    return i >= 0 and ranges[i][0] <= offset < ranges[i][1]
