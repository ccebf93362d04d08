"""Reading records for the tools: ranges of offsets in order, one record, first timestamps.

Every reader is a group-less consumer (:func:`~.cluster.reader_config`): it never joins the
consumer group and never commits, except ``dlq replay`` to its own group.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException, Message, TopicPartition

from ..errors import ToolError
from ..settings import Settings
from .cluster import LAG_PROBE_TIMEOUT_S, READ_STALL_TIMEOUT_S, REQUEST_TIMEOUT_S, reader_config

log = logging.getLogger(__name__)


def first_timestamps(settings: Settings, topic: str,
                     ranges: Mapping[int, tuple[int, int]],
                     timeout_s: float = LAG_PROBE_TIMEOUT_S) -> dict[int, int | None]:
    """Read the first record of each ``[start, end)`` range (assign at ``start``) and return its timestamp.

    Args:
        settings: the configuration.
        topic: the topic.
        ranges: ``{partition: (start offset, end offset)}``; empty ranges are not read.
        timeout_s: how long to wait for the records, seconds.

    Returns:
        ``{partition: timestamp in ms since the epoch, or None}`` (None: empty range, no timestamp,
        or nothing readable within the timeout, e.g. an open transaction).
    """
    out: dict[int, int | None] = {p: None for p in ranges}
    todo = {p for p, (start, end) in ranges.items() if start < end}
    if not todo:
        return out
    consumer = Consumer(reader_config(settings, "lag"))
    try:
        consumer.assign([TopicPartition(topic, p, ranges[p][0]) for p in sorted(todo)])
        deadline = time.monotonic() + timeout_s
        while todo and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            p = int(msg.partition() or 0)
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    todo.discard(p)
                continue
            if p in todo:
                ts_type, ts = msg.timestamp()
                out[p] = ts if ts_type != TIMESTAMP_NOT_AVAILABLE and int(msg.offset() or 0) < ranges[p][1] else None
                todo.discard(p)
                consumer.pause([TopicPartition(topic, p)])
    finally:
        consumer.close()
    return out


class Step(enum.Enum):
    """What :func:`read_ranges` does after a record."""

    NEXT = "next"
    STOP_PARTITION = "stop_partition"
    STOP_ALL = "stop_all"


def read_ranges(consumer: Consumer, topic: str, ranges: Mapping[int, tuple[int, int]],
                handle: Callable[[Message], Step], stall_timeout_s: float = READ_STALL_TIMEOUT_S) -> None:
    """Read each partition's ``[start, end)`` offsets in offset order, calling ``handle`` per record.

    Args:
        consumer: a consumer that is not subscribed (it is assigned here).
        topic: the topic.
        ranges: ``{partition: (start offset, end offset)}``.
        handle: called with each record; returns what to do next.
        stall_timeout_s: give up when no record arrives for this many seconds.

    Raises:
        ToolError: nothing arrived for ``stall_timeout_s`` seconds while records were expected.
    """
    todo = {p: end for p, (start, end) in ranges.items() if start < end}
    if not todo:
        return
    consumer.assign([TopicPartition(topic, p, ranges[p][0]) for p in sorted(todo)])
    positions = {p: ranges[p][0] for p in todo}

    def finish(p: int) -> None:
        todo.pop(p, None)
        consumer.pause([TopicPartition(topic, p)])

    last = time.monotonic()
    while todo:
        polled = consumer.poll(0.5)  # returns as soon as one record is there (consume() waits for a batch)
        msgs = [polled] if polled is not None else []
        if msgs:
            last = time.monotonic()
        elif time.monotonic() - last > stall_timeout_s:
            where = ", ".join(f"partition {p} at offset {positions[p]} of {end}" for p, end in sorted(todo.items()))
            raise ToolError(f"no record arrived from {topic} for {stall_timeout_s:.0f} s ({where}); is the broker "
                            "reachable? (records of an open transaction stay invisible under read_committed)")
        for msg in msgs:
            p = int(msg.partition() or 0)
            if p not in todo:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    finish(p)
                elif err.fatal():
                    raise KafkaException(err)
                else:
                    log.warning("reading %s[%d]: %s", topic, p, err.str())
                continue
            offset = int(msg.offset() or 0)
            if offset >= todo[p]:
                finish(p)
                continue
            positions[p] = offset + 1
            step = handle(msg)
            last = time.monotonic()
            if step is Step.STOP_ALL:
                return
            if step is Step.STOP_PARTITION or offset + 1 >= todo.get(p, 0):
                finish(p)


def read_record(settings: Settings, topic: str, partition: int, offset: int,
                timeout_s: float = READ_STALL_TIMEOUT_S) -> Message | None:
    """The record at ``topic[partition]@offset``, or None when it is no longer there (retention, compaction)."""
    consumer = Consumer(reader_config(settings, "original"))
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=REQUEST_TIMEOUT_S)
        if not low <= offset < high:
            return None
        consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            return msg if msg.offset() == offset else None
        raise ToolError(f"no record arrived from {topic}[{partition}] at offset {offset} for {timeout_s:.0f} s")
    finally:
        consumer.close()


@dataclass
class ToolRun:
    """How a tool's read of records ended early, if it did.

    Attributes:
        error: a runtime failure that stopped it (the records after those counted were not handled).
        interrupted: Ctrl-C stopped it.
    """

    error: str | None = None
    interrupted: bool = False


def read_into_summary(summary: ToolRun, consumer: Consumer, topic: str,
                       ranges: Mapping[int, tuple[int, int]], handle: Callable[[Message], Step]) -> None:
    """:func:`read_ranges`, recording a ToolError or Ctrl-C in the summary instead of raising it."""
    try:
        read_ranges(consumer, topic, ranges, handle)
    except ToolError as exc:
        summary.error = str(exc)
    except KeyboardInterrupt:
        summary.interrupted = True
