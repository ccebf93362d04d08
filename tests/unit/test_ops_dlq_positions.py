"""The replay position of ``dlq replay`` (consumer/ops/dlq_replay.py ReplayPositions).

The first letter not done is committed, the letters done beyond it travel in the commit metadata
(consumer.delivery.offsets' codec, as the consumer does). The broker is a double here; the real one
is in tests/integration/test_tools.py.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import TopicPartition

from consumer.delivery.offsets import MAX_METADATA_BYTES, decode_finished, encode_finished
from consumer.errors import ToolError
from consumer.ops.dlq_replay import ReplayPositions

DLQ = "orders.dlq"


class FakeConsumer:
    def __init__(self, committed: dict[int, tuple[int, str]], fail: bool = False) -> None:
        self._committed = committed
        self.commits: list[list[tuple[int, int, str]]] = []
        self.fail = fail

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        out = []
        for tp in tps:
            offset, metadata = self._committed.get(tp.partition, (-1001, ""))
            out.append(TopicPartition(tp.topic, tp.partition, offset, metadata=metadata))
        return out

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        assert not asynchronous
        if self.fail:
            from confluent_kafka import KafkaError, KafkaException
            raise KafkaException(KafkaError(KafkaError.REQUEST_TIMED_OUT))
        self.commits.append([(tp.partition, tp.offset, tp.metadata or "") for tp in offsets])
        for tp in offsets:
            self._committed[tp.partition] = (tp.offset, tp.metadata or "")
        return offsets


def positions(consumer: Any, marks: dict[int, tuple[int, int]], dry_run: bool = False) -> ReplayPositions:
    return ReplayPositions(consumer, DLQ, "g.dlq-replay", sorted(marks), marks, dry_run)


def test_the_first_letter_not_done_is_committed_with_the_done_ones_beyond_it() -> None:
    consumer = FakeConsumer({0: (5, encode_finished(5, [(7, 9)]))})
    pos = positions(consumer, {0: (0, 12)})
    assert pos.ranges == {0: (5, 12)}
    offsets = pos.offsets[0]
    for offset in range(5, 12):
        assert offsets.track(offset)
    assert [o for o in range(5, 12) if offsets.already_finished(o)] == [7, 8]  # an earlier run's
    for offset in (6, 7, 8, 9, 11):  # 5 and 10 stay (still failing, another class…)
        offsets.done(offset)
    pos.commit()
    (partition, committed, metadata), = consumer.commits[-1]
    assert (partition, committed) == (0, 5)
    assert decode_finished(metadata, 5) == [(6, 10), (11, 12)]

    pos.commit()  # nothing moved: nothing sent
    assert len(consumer.commits) == 1
    offsets.done(5)
    pos.commit()
    assert consumer.commits[-1] == [(0, 10, encode_finished(10, [(11, 12)]))]
    offsets.done(10)
    pos.commit()
    assert consumer.commits[-1] == [(0, 12, "")]

    again = positions(consumer, {0: (0, 12)})  # the next run starts at the end: nothing to read
    assert again.ranges == {0: (12, 12)}


def test_a_new_group_starts_at_the_low_watermark_and_retention_moves_the_start() -> None:
    pos = positions(FakeConsumer({1: (2, encode_finished(2, [(5, 6)]))}), {0: (3, 9), 1: (4, 9)})
    assert pos.ranges == {0: (3, 9), 1: (4, 9)}
    offsets = pos.offsets[1]
    offsets.track(4)
    offsets.track(5)
    assert offsets.already_finished(5) and not offsets.already_finished(4)


def test_a_dry_run_commits_nothing() -> None:
    consumer = FakeConsumer({0: (0, "")})
    pos = positions(consumer, {0: (0, 3)}, dry_run=True)
    pos.offsets[0].track(0)
    pos.offsets[0].done(0)
    pos.commit()
    assert consumer.commits == []


def test_a_refused_commit_is_a_tool_error_saying_the_letters_are_handled_again() -> None:
    consumer = FakeConsumer({0: (0, "")}, fail=True)
    pos = positions(consumer, {0: (0, 3)})
    pos.offsets[0].track(0)
    pos.offsets[0].done(0)
    try:
        pos.commit()
    except ToolError as exc:
        assert "the next `dlq replay` handles those letters again" in str(exc)
    else:
        raise AssertionError("no ToolError")


def test_reading_stops_before_the_metadata_could_forget_a_letter_done() -> None:
    consumer = FakeConsumer({})
    pos = positions(consumer, {0: (0, 1_000_000)})
    offsets = pos.offsets[0]
    offset = 0
    while True:  # letters left in place alternate with letters done, the worst case for the metadata
        assert offsets.track(offset)
        if offset % 2 == 0:
            pos.held[0] += 1
        elif not pos.room(0):
            break
        else:
            offsets.done(offset)
        offset += 1
    assert offset > 1000  # hundreds of gaps fit
    finished = offsets.finished_ranges()
    metadata = encode_finished(0, finished)
    assert len(metadata) <= MAX_METADATA_BYTES
    assert decode_finished(metadata, 0) == finished  # nothing forgotten
    pos.commit()
    assert decode_finished(consumer.commits[-1][0][2], 0) == finished
