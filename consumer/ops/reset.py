"""``erp-sync reset-offsets``: the topic replay by consumer-group offset reset (dry run unless ``--execute``)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from confluent_kafka import (
    ConsumerGroupTopicPartitions,
    KafkaException,
    TopicPartition,
)

from ..errors import ToolError, UsageError
from ..kafka import error_text
from ..settings import Settings
from .cluster import REQUEST_TIMEOUT_S, Cluster, GroupInfo, for_source_topic, resume_position, tool_settings
from .console import plural, table, time_arg

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------ reset


@dataclass(frozen=True, slots=True)
class ResetRow:
    """One partition of a reset plan.

    Attributes:
        partition: the partition id.
        committed: the committed offset before the reset (None when the group has none).
        current: where the group would resume now (the committed offset or the reset position).
        new: the offset to commit.
        note: why ``new`` is not simply what was asked (clamped, no record after the time…).
    """

    partition: int
    committed: int | None
    current: int
    new: int
    note: str = ""

    @property
    def reread(self) -> int:
        """Records read again (and pushed again when approved) after the reset."""
        return max(0, self.current - self.new)

    @property
    def skipped(self) -> int:
        """Records that will never be read by the group after the reset."""
        return max(0, self.new - self.current)


def parse_partitions(text: str | None, existing: Sequence[int], topic: str) -> list[int]:
    """Parse ``--partitions 0,2`` against the topic's partitions.

    Raises:
        UsageError: not a comma-separated list of integers, or a partition the topic lacks.
    """
    if text is None:
        return list(existing)
    try:
        chosen = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UsageError(f"--partitions {text!r}: expected partition ids separated by commas, e.g. 0,2") from None
    if not chosen:
        raise UsageError("--partitions: no partition given")
    unknown = [p for p in chosen if p not in existing]
    if unknown:
        raise UsageError(f"--partitions: topic {topic} has no partition {','.join(map(str, unknown))} "
                         f"(it has {','.join(map(str, existing))})")
    return chosen


def _clamp(value: int, low: int, high: int) -> tuple[int, str]:
    if value < low:
        return low, f"{value} is below the low watermark: clamped to {low}"
    if value > high:
        return high, f"{value} is above the high watermark: clamped to {high}"
    return value, ""


def plan_reset(args: argparse.Namespace, settings: Settings, cluster: Cluster,
               partitions: Sequence[int]) -> tuple[str, list[ResetRow]]:
    """Compute the new offset of each chosen partition.

    Returns:
        ``(description of the target, rows)``.
    """
    topic = settings.topic
    marks = cluster.watermarks(topic, partitions)
    committed = cluster.committed(settings.group_id, topic, partitions)
    by_time: dict[int, int | None] = {}
    if args.to_earliest:
        what = "the earliest offsets (low watermarks)"
    elif args.to_latest:
        what = "the latest offsets (high watermarks)"
    elif args.to_offset is not None:
        what = f"offset {args.to_offset}"
    elif args.shift_by is not None:
        what = f"the current offsets shifted by {args.shift_by:+d}"
    else:
        when, when_ms = time_arg(args.to_datetime, "--to-datetime")
        what = f"the first record at or after {when.isoformat()} ({when_ms} ms)"
        by_time = cluster.offsets_for_time(topic, partitions, when_ms)
    rows = []
    for p in partitions:
        low, high = marks[p]
        current = resume_position(committed[p], low, high, settings)
        note = ""
        if args.to_earliest:
            wanted = low
        elif args.to_latest:
            wanted = high
        elif args.to_offset is not None:
            wanted = args.to_offset
        elif args.shift_by is not None:
            wanted = current + args.shift_by
        elif by_time.get(p) is None:
            wanted, note = high, "no record at or after that time: the end"
        else:
            wanted = int(by_time[p])  # type: ignore[arg-type]
        new, clamp_note = _clamp(wanted, low, high)
        rows.append(ResetRow(p, committed[p], current, new, clamp_note or note))
    return what, rows


def _members_lines(info: GroupInfo) -> str:
    return "\n".join(f"  {m.describe()}" for m in info.members)


def _active_members_error(group: str, info: GroupInfo) -> UsageError:
    count = len(info.members)
    return UsageError(
        f"group {group} has {plural(count, 'active member')} (state {info.state}); offsets can only be reset "
        f"while the group is empty: stop every `erp-sync run` of the group first, then run this again (the "
        f"dry run works at any time).\n{_members_lines(info)}")


def active_members_note(group: str, info: GroupInfo) -> str:
    """What a dry run says while the group has members: the plan moves, and ``--execute`` is refused."""
    return (f"Note: group {group} has {plural(len(info.members), 'active member')} (state {info.state}): CURRENT is "
            f"the committed offset now, and it moves while they run. --execute is refused until every "
            f"`erp-sync run` of the group is stopped.\n{_members_lines(info)}")


def dead_letter_warning(settings: Settings, rows: Sequence[ResetRow], dlq_letters: int | None) -> str | None:
    """The warning of a reset that re-reads records: those dead-lettered before are dead-lettered again."""
    if not any(r.reread for r in rows):
        return None
    held = "" if dlq_letters is None else f" ({settings.dead_letter_topic} holds {plural(dlq_letters, 'letter')} now)"
    return (f"Warning: records re-read that were dead-lettered before (undecodable, invalid, or rejected by the ERP) "
            f"will be dead-lettered again: {settings.dead_letter_topic} gets a second copy of each{held}, and "
            "`erp-sync dlq replay` handles each copy as a letter of its own.")


def format_reset(settings: Settings, what: str, rows: Sequence[ResetRow], execute: bool) -> str:
    """Render a reset plan: per partition ``current → new`` and what it means."""
    mode = "" if execute else " (dry run)"
    lines = [f"Reset of group {settings.group_id} on topic {settings.topic} to {what}{mode}:"]
    cells = []
    for r in rows:
        if r.reread:
            change = f"{plural(r.reread, 'record')} will be re-read (approved ones pushed again)"
        elif r.skipped:
            change = f"{plural(r.skipped, 'record')} will be skipped (never pushed)"
        else:
            change = "unchanged"
        if r.committed is None:
            change += f"; no committed offset: the group would start at {r.current}"
        if r.note:
            change += f" ({r.note})"
        cells.append([str(r.partition), "-" if r.committed is None else str(r.committed), "→", str(r.new), change])
    lines += table(["PARTITION", "CURRENT", "", "NEW", "CHANGE"], cells, right={0, 1, 3})
    reread, skipped = sum(r.reread for r in rows), sum(r.skipped for r in rows)
    lines.append(f"Total: {plural(reread, 'record')} will be re-read, {skipped} skipped.")
    if not execute:
        lines.append("Dry run: nothing was changed. Add --execute to apply.")
    return "\n".join(lines)


def cmd_reset_offsets(args: argparse.Namespace) -> int:
    """``erp-sync reset-offsets``: plan (and with ``--execute`` apply) new committed offsets.

    The plan (the dry run) works at any time; ``--execute`` requires the group to be empty.
    """
    if args.to_offset is not None and args.to_offset < 0:
        raise UsageError(f"--to-offset {args.to_offset}: an offset is >= 0")
    settings = for_source_topic(tool_settings(), getattr(args, "topic", None))
    topic, group = settings.topic, settings.group_id
    with Cluster(settings) as cluster:
        partitions = parse_partitions(args.partitions, cluster.require_partitions(topic), topic)
        info = cluster.group(group, topic)
        if info.members and args.execute:
            raise _active_members_error(group, info)
        what, rows = plan_reset(args, settings, cluster, partitions)
        print(format_reset(settings, what, rows, args.execute))
        warning = dead_letter_warning(settings, rows, _dlq_letters(cluster, settings))
        if warning:
            print(warning)
        if info.members:
            print(active_members_note(group, info))
        if not args.execute:
            return 0
        info = cluster.group(group, topic)  # a consumer may have started while we planned
        if info.members:
            raise _active_members_error(group, info)
        request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, r.partition, r.new) for r in rows])
        try:
            future = cluster.admin.alter_consumer_group_offsets([request], request_timeout=REQUEST_TIMEOUT_S)[group]
            result = future.result(timeout=REQUEST_TIMEOUT_S + 5)
        except KafkaException as exc:
            raise ToolError(f"the broker refused the new offsets of group {group}: {error_text(exc)} "
                            "(did a consumer of the group start? check `erp-sync status`)") from None
        failed = [f"{topic}[{tp.partition}]: {tp.error.str()}" for tp in result.topic_partitions or []
                  if tp.error is not None]
        if failed:
            raise ToolError("some offsets were not changed: " + "; ".join(failed))
        now = cluster.committed(group, topic, partitions)
    applied = ", ".join(f"{p}:{now[p]}" for p in partitions)
    print(f"Applied: group {group} now has committed offsets {applied} (partition:offset). "
          "The next `erp-sync run` resumes there.")
    return 0


def _dlq_letters(cluster: Cluster, settings: Settings) -> int | None:
    """How many letters the dead-letter topic holds (None when it does not exist or cannot be read)."""
    try:
        parts = cluster.partitions(settings.dead_letter_topic, "ERP_SYNC_DLQ_TOPIC")
        if not parts:
            return None
        return sum(high - low for low, high in cluster.watermarks(settings.dead_letter_topic, parts).values())
    except ToolError:
        return None
