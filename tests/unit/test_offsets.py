"""Offset tracking (consumer/delivery/offsets.py): commit only past a contiguous run of finished records."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.delivery.offsets import (
    MAX_METADATA_BYTES,
    PartitionOffsets,
    decode_finished,
    encode_finished,
    in_ranges,
    to_ranges,
)
from consumer.delivery.partitions import Assignment


def test_nothing_committable_until_first_record_finishes() -> None:
    p = PartitionOffsets()
    assert p.committable() is None
    assert p.floor is None
    assert p.track(0, 100) is True
    assert p.track(1, 101) is True
    assert p.committable() is None
    p.done(1)
    assert p.committable() is None
    assert p.unfinished == 1
    p.done(0)
    assert p.committable() == 2
    assert p.unfinished == 0


def test_contiguous_run() -> None:
    p = PartitionOffsets()
    for o in range(5):
        p.track(o, 1000 + o)
    p.done(0)
    assert p.committable() == 1
    p.done(2)
    p.done(3)
    assert p.committable() == 1
    assert p.oldest_unfinished_timestamp_ms() == 1001
    p.done(1)
    assert p.committable() == 4
    assert p.oldest_unfinished_timestamp_ms() == 1004
    p.done(4)
    assert p.committable() == 5
    assert p.oldest_unfinished_timestamp_ms() is None


def test_gaps_in_offsets() -> None:
    p = PartitionOffsets()
    for o in (0, 1, 2, 5, 6):
        p.track(o, o * 10)
    for o in (0, 1, 2):
        p.done(o)
    assert p.committable() == 3
    p.mark_committed(3)
    assert p.committable() is None
    p.done(6)
    assert p.committable() is None
    assert p.oldest_unfinished_timestamp_ms() == 50
    p.done(5)
    assert p.committable() == 7


def test_committed_at_assignment() -> None:
    p = PartitionOffsets(committed=10)
    assert p.floor == 10
    assert p.committable() is None  # already committed
    assert p.track(9) is False  # below the committed offset: a re-fetch
    assert p.track(10) is True
    p.done(10)
    assert p.committable() == 11


def test_track_refuses_refetched_or_lower_offsets() -> None:
    p = PartitionOffsets()
    assert p.track(5) is True
    assert p.track(5) is False
    assert p.track(4) is False
    assert p.track(7) is True
    assert p.track(6) is False
    assert p.unfinished == 2
    assert p.last_tracked == 7
    p.done(5)
    p.done(7)
    assert p.committable() == 8


def test_track_refuses_after_everything_finished() -> None:
    p = PartitionOffsets()
    p.track(0)
    p.done(0)
    assert p.track(0) is False
    assert p.committable() == 1


def test_done_unknown_or_twice_is_ignored() -> None:
    p = PartitionOffsets()
    p.track(3)
    p.track(4)
    p.done(99)
    p.done(4)
    p.done(4)
    assert p.committable() is None
    assert p.unfinished == 1
    p.done(3)
    p.done(3)
    assert p.committable() == 5


def test_advance_to_only_over_trailing_gaps() -> None:
    p = PartitionOffsets()
    p.track(0)
    p.track(1)
    p.done(0)
    p.advance_to(10)  # 1 is unfinished: no move
    assert p.committable() == 1
    p.done(1)
    assert p.committable() == 2
    p.advance_to(10)  # nothing unfinished: step over control records 2..9
    assert p.committable() == 10
    p.advance_to(5)  # never backwards
    assert p.committable() == 10
    p.mark_committed(10)
    assert p.committable() is None
    p.advance_to(10)
    assert p.committable() is None
    assert p.track(9) is False
    assert p.track(10) is True


def test_advance_to_not_below_last_tracked() -> None:
    p = PartitionOffsets()
    p.track(5)
    p.done(5)
    assert p.committable() == 6
    p.advance_to(5)
    assert p.committable() == 6
    p.advance_to(6)
    assert p.committable() == 6
    p.advance_to(7)
    assert p.committable() == 7


def test_advance_to_on_a_fresh_partition() -> None:
    p = PartitionOffsets(committed=3)
    p.advance_to(3)
    assert p.committable() is None
    p.advance_to(8)
    assert p.committable() == 8


def test_mark_committed_never_moves_backwards() -> None:
    p = PartitionOffsets()
    p.mark_committed(5)
    assert p.committed == 5
    p.mark_committed(3)
    assert p.committed == 5
    p.mark_committed(5)
    assert p.committed == 5
    p.mark_committed(6)
    assert p.committed == 6


def test_committable_never_at_or_below_committed() -> None:
    p = PartitionOffsets()
    p.track(0)
    p.track(1)
    p.done(0)
    p.mark_committed(5)  # e.g. acknowledged by an earlier owner
    assert p.committable() is None
    p.done(1)
    assert p.committable() is None  # floor 2 <= committed 5


def test_assignment_tracks_each_owned_partition() -> None:
    t = Assignment()
    a = t.assign("t", 0, None)
    b = t.assign("t", 1, 7)
    assert t.get("t", 0) is a and t.get("t", 1) is b and t.get("t", 2) is None
    a.offsets.track(0)
    b.offsets.track(7)
    b.offsets.track(8)
    assert t.unfinished == 3
    assert t.committable() == {}
    a.finish(0)
    b.finish(7)
    assert t.committable() == {("t", 0): 1, ("t", 1): 8}
    assert t.committable(only=[("t", 1), ("t", 9)]) == {("t", 1): 8}
    a.offsets.mark_committed(1)
    assert t.committable() == {("t", 1): 8}
    assert t.release([("t", 1)]) == [b]
    assert b.released and b.cancelled and not a.released
    assert t.release([("t", 1)]) == []
    assert t.committable() == {}
    assert t.unfinished == 0
    b.finish(8)  # a completion after the release changes nothing
    assert b.offsets.unfinished == 1
    # re-assignment starts fresh from the group's committed offset
    c = t.assign("t", 1, 8)
    assert c is not b and c.offsets.committable() is None and c.offsets.track(8) is True


# --- property -------------------------------------------------------------------------------


@st.composite
def scenario(draw: st.DrawFn) -> tuple[int | None, list[int], list[int], list[int]]:
    committed = draw(st.none() | st.integers(0, 50))
    start = (committed or 0) + draw(st.integers(0, 3))
    gaps = draw(st.lists(st.integers(1, 4), min_size=1, max_size=40))
    offsets = []
    o = start
    for g in gaps:
        offsets.append(o)
        o += g
    order = draw(st.permutations(range(len(offsets))))
    # after each completion: 0 = nothing, 1 = committable() and mark_committed, 2 = committable() only
    actions = draw(st.lists(st.integers(0, 2), min_size=len(offsets), max_size=len(offsets)))
    return committed, offsets, list(order), actions


@settings(max_examples=150, deadline=None)
@given(scenario())
def test_random_completion_order(case: tuple[int | None, list[int], list[int], list[int]]) -> None:
    committed0, offsets, order, actions = case
    p = PartitionOffsets(committed0)
    for i, o in enumerate(offsets):
        assert p.track(o, 1_000_000 + i) is True
    finished: set[int] = set()
    last_committed = committed0
    for idx, action in zip(order, actions, strict=True):
        finished.add(offsets[idx])
        p.done(offsets[idx])
        unfinished = [o for o in offsets if o not in finished]
        smallest_unfinished = min(unfinished) if unfinished else offsets[-1] + 1
        ts = p.oldest_unfinished_timestamp_ms()
        assert ts == (1_000_000 + offsets.index(min(unfinished)) if unfinished else None)
        assert p.unfinished == len(unfinished)
        if action:
            c = p.committable()
            if c is not None:
                assert c <= smallest_unfinished
                assert last_committed is None or c > last_committed
                # the committable offset is one past a finished record, or the smallest unfinished
                assert c == smallest_unfinished or c - 1 in finished
                if action == 1:
                    p.mark_committed(c)
                    last_committed = c
        assert p.committed == last_committed
    final = p.committable()
    assert final == offsets[-1] + 1 or (final is None and last_committed == offsets[-1] + 1)
    if final is not None:
        p.mark_committed(final)
    assert p.committed == offsets[-1] + 1
    assert p.committable() is None
    assert p.oldest_unfinished_timestamp_ms() is None


@pytest.mark.parametrize("committed", [None, 0, 4])
def test_committable_none_with_nothing_tracked(committed: int | None) -> None:
    assert PartitionOffsets(committed).committable() is None


# --- finished offsets in the commit metadata ------------------------------------------------


@given(committed=st.integers(0, 2**40), offsets=st.sets(st.integers(1, 5000), max_size=400))
def test_finished_offsets_survive_the_commit_metadata(committed: int, offsets: set[int]) -> None:
    finished = to_ranges(committed + o for o in offsets)
    metadata = encode_finished(committed, finished)
    assert len(metadata) <= MAX_METADATA_BYTES
    assert decode_finished(metadata, committed) == finished
    assert metadata == "" if not offsets else metadata.startswith(f"erpsync1:{committed}:")


@given(offsets=st.sets(st.integers(1, 10**6), min_size=1, max_size=3000), limit=st.integers(20, 600))
def test_metadata_beyond_the_limit_remembers_fewer_offsets_never_a_wrong_one(offsets: set[int], limit: int) -> None:
    finished = to_ranges(offsets)
    metadata = encode_finished(0, finished, limit=limit)
    assert len(metadata) <= limit
    kept = decode_finished(metadata, 0)
    remembered = {o for start, end in kept for o in range(start, end)}
    assert remembered <= offsets
    if remembered:  # what is kept is a prefix: the lowest offsets
        assert max(remembered) < min(offsets - remembered, default=max(remembered) + 1)


@pytest.mark.parametrize("metadata", [
    None, "", "something else", "erpsync1:41:BQM", "erpsync1:42:", "erpsync1:42:!!!", "erpsync1:42:gICAgICAgICAgAE",
    "erpsync1:42:BQ", "erpsync1:42:BQA",
])
def test_metadata_from_elsewhere_or_for_another_offset_skips_nothing(metadata: str | None) -> None:
    assert decode_finished(metadata, 42) == []


def test_metadata_example_and_range_lookup() -> None:
    finished = to_ranges([43, 44, 45, 50, 51, 60])
    assert finished == [(43, 46), (50, 52), (60, 61)]
    metadata = encode_finished(42, finished)
    assert metadata == "erpsync1:42:AAMEAggB"  # gap 0 run 3, gap 4 run 2, gap 8 run 1
    assert decode_finished(metadata, 42) == finished
    assert [o for o in range(40, 62) if in_ranges(finished, o)] == [43, 44, 45, 50, 51, 60]
    assert encode_finished(42, [(10, 42)]) == ""  # nothing above the committed offset
