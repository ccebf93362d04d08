"""``erp-sync replay``: re-push a time window without touching the group's offsets; the tools' push."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    Message,
)

from .. import decode as events
from .. import transform
from ..delivery.push import Pusher
from ..delivery.retry import RateLimiter, SharedBackoff
from ..erp.client import ErpClient
from ..erp.verdict import Outcome, Verdict
from ..errors import RecordError, ToolError, UsageError
from ..settings import Settings
from .cluster import Cluster, reader_config, tool_settings
from .console import Progress, time_arg
from .reading import Step, ToolRun, read_into_summary

log = logging.getLogger(__name__)

class _ProgressNotes:
    """The tools' push observer: a note above the progress bar on every backoff."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def answered(self, verdict: Verdict, duration_s: float) -> None:
        """Nothing: the summary counts the results."""

    def backing_off(self, verdict: Verdict, delay_s: float, failures: int, context: object) -> None:
        """Say that the ERP answered retry and when the next attempt goes."""
        self.progress.note(f"ERP answered retry ({verdict.code}: {verdict.message or 'no message'}); "
                           f"retrying in {delay_s:.1f} s")

    def retrying(self, verdict: Verdict, delay_s: float, retries: int, context: object) -> None:
        """The same note: this record waits before its next attempt."""
        self.backing_off(verdict, delay_s, retries, context)

    def recovered(self, failures: int, failing_for_s: float) -> None:
        """Nothing: the next result says it."""


class ToolPusher:
    """The push of one tool run, one record at a time.

    It is the consumer's push routine (:class:`~consumer.delivery.push.Pusher`), with a backoff and a
    rate limit of its own, on an event loop of its own.

    Args:
        settings: the ERP settings, backoff and rate limit.
    """

    def __init__(self, settings: Settings) -> None:
        self._runner = asyncio.Runner()
        self._pusher = Pusher(ErpClient(settings, max_connections=1),
                              SharedBackoff(settings.retry_backoff_initial_seconds, settings.retry_backoff_max_seconds,
                                            settings.retry_after_max_seconds),
                              RateLimiter(settings.erp_max_requests_per_second)
                              if settings.erp_max_requests_per_second else None)

    def push(self, body: bytes, key: str, progress: Progress) -> tuple[Verdict, int]:
        """Push until the ERP accepts or rejects; retry answers back off (a note on the progress bar).

        Returns:
            ``(final verdict, attempts)``; the verdict is accepted or reject, never retry.
        """
        self._pusher.observer = _ProgressNotes(progress)
        result = self._runner.run(self._pusher.push(body, key, _never))
        assert result.verdict is not None  # never cancelled: only accepted or reject end it
        return result.verdict, result.attempts

    def close(self) -> None:
        """Close the connection pool and the event loop."""
        try:
            self._runner.run(self._pusher.erp.aclose())
        finally:
            self._runner.close()


def _never() -> bool:
    return False


@contextmanager
def open_pusher(settings: Settings, dry_run: bool) -> Iterator[ToolPusher | None]:
    """The pusher of one tool run (None in a dry run), closed at the end."""
    pusher = None if dry_run else ToolPusher(settings)
    try:
        yield pusher
    finally:
        if pusher is not None:
            pusher.close()


def instance_of(event: Mapping[str, Any] | None) -> str:
    """The event's InstanceId as text, ``?`` when unknown."""
    if event is None or event.get("instance_id") is None:
        return "?"
    return str(event["instance_id"])


# ------------------------------------------------------------------------------------------------ replay


@dataclass(frozen=True, slots=True)
class Failure:
    """A record a replay could not deliver.

    Attributes:
        partition, offset: where the record is.
        instance_id: its InstanceId (``?`` when it does not decode).
        error_class: ``decode`` | ``validation`` | ``erp``.
        code: the error code.
        message: the reason.
    """

    partition: int
    offset: int
    instance_id: str
    error_class: str
    code: str
    message: str


@dataclass
class ReplaySummary(ToolRun):
    """The results of one ``replay``.

    Attributes:
        counts: records by result: ``scanned``, ``outside_window``, ``not_selected`` (``--instance-id``),
            ``skipped`` (not APPROVED), ``pushed``, ``duplicates``, ``would_push`` (dry run).
        failed: the records that could not be delivered.
    """

    counts: Counter[str] = field(default_factory=Counter)
    failed: list[Failure] = field(default_factory=list)


def replay_window(settings: Settings, start_ms: int, end_ms: int, instance_ids: set[int] | None,
                  dry_run: bool, out: TextIO) -> ReplaySummary:
    """Re-push the approved records of the topic whose timestamp is in ``[start_ms, end_ms)``.

    The start offset of each partition is the first record at or after ``start_ms`` and the end offset
    the first record at or after ``end_ms`` (``offsets_for_times``); records in that range whose
    timestamp is outside the window (producers may set any CreateTime) are not pushed. Nothing is
    committed and nothing is written to the dead-letter topic.

    Args:
        settings: the configuration.
        start_ms: window start, ms since the epoch (included).
        end_ms: window end, ms since the epoch (excluded).
        instance_ids: push only these InstanceIds; None for all.
        dry_run: print what would be pushed instead of pushing.
        out: where the dry run's lines go.

    Returns:
        The counters and the failures.
    """
    topic = settings.topic
    with Cluster(settings) as cluster:
        parts = cluster.require_partitions(topic)
        marks = cluster.watermarks(topic, parts)
        starts = cluster.offsets_for_time(topic, parts, start_ms)
        ends = cluster.offsets_for_time(topic, parts, end_ms)
    ranges = {}
    for p in parts:
        high = marks[p][1]
        start = high if starts[p] is None else int(starts[p])  # type: ignore[arg-type]
        end = high if ends[p] is None else min(high, int(ends[p]))  # type: ignore[arg-type]
        ranges[p] = (start, max(start, end))
    summary = ReplaySummary()
    progress = Progress("replay", sum(end - start for start, end in ranges.values()))

    decoder = events.decoder_for(settings)  # the run's decoder: same registry, same rules
    with open_pusher(settings, dry_run) as pusher:
        def handle(msg: Message) -> Step:
            summary.counts["scanned"] += 1
            p, offset = int(msg.partition() or 0), int(msg.offset() or 0)
            try:
                ts_type, ts = msg.timestamp()
                if ts_type == TIMESTAMP_NOT_AVAILABLE or not start_ms <= ts < end_ms:
                    summary.counts["outside_window"] += 1
                    return Step.NEXT
                event: dict[str, Any] | None = None
                try:
                    event = decoder(msg.value())
                    if instance_ids is not None and event.get("instance_id") not in instance_ids:
                        summary.counts["not_selected"] += 1
                        return Step.NEXT
                    if not transform.is_pushed(event):
                        summary.counts["skipped"] += 1
                        return Step.NEXT
                    body, key = transform.erp_request(event)
                except RecordError as exc:
                    summary.failed.append(Failure(p, offset, instance_of(event), exc.error_class, exc.code,
                                                  exc.message))
                    return Step.NEXT
                if pusher is None:
                    summary.counts["would_push"] += 1
                    print(f"would push: partition {p} offset {offset} instance {event['instance_id']} "
                          f"Idempotency-Key {key}", file=out)
                    return Step.NEXT
                result, attempts = pusher.push(body, key, progress)
                if result.outcome is Outcome.ACCEPTED:
                    if result.duplicate:
                        summary.counts["duplicates"] += 1
                    else:
                        summary.counts["pushed"] += 1
                else:
                    summary.failed.append(Failure(p, offset, str(event["instance_id"]), "erp", result.code,
                                                  f"{result.message or result.code} (after {attempts} attempts"
                                                  f"{', request ' + result.request_id if result.request_id else ''})"))
                return Step.NEXT
            finally:
                progress.advance(detail=_replay_detail(summary, dry_run))

        consumer = Consumer(reader_config(settings, "replay"))
        try:
            read_into_summary(summary, consumer, topic, ranges, handle)
        finally:
            consumer.close()
            progress.close()
    return summary


def _replay_detail(s: ReplaySummary, dry_run: bool) -> str:
    c = s.counts
    done = f"would push {c['would_push']}" if dry_run else f"pushed {c['pushed'] + c['duplicates']}"
    return f"{done}, skipped {c['skipped']}, failed {len(s.failed)}"


def format_replay_summary(summary: ReplaySummary, topic: str, start: datetime, end: datetime,
                          instance_ids: set[int] | None, dry_run: bool) -> str:
    """Render the summary of a ``replay``."""
    only = f", only InstanceId {','.join(map(str, sorted(instance_ids)))}" if instance_ids else ""
    lines = [f"Replay of {topic} from {start.isoformat()} to {end.isoformat()} (record timestamps, end "
             f"excluded{only}){' (dry run: nothing sent)' if dry_run else ''}:",
             f"  records scanned: {summary.counts['scanned']}",
             f"  outside the window: {summary.counts['outside_window']}"]
    if instance_ids is not None:
        lines.append(f"  not selected (--instance-id): {summary.counts['not_selected']}")
    lines.append(f"  skipped (status not APPROVED): {summary.counts['skipped']}")
    if dry_run:
        lines.append(f"  would push: {summary.counts['would_push']}")
    else:
        lines.append(f"  pushed: {summary.counts['pushed']}")
        lines.append(f"  duplicates (ERP said already done): {summary.counts['duplicates']}")
    lines.append(f"  failed: {len(summary.failed)}")
    for f in summary.failed:
        lines.append(f"    partition {f.partition} offset {f.offset} instance {f.instance_id}: "
                     f"{f.error_class} {f.code}: {f.message}")
    if summary.failed:
        lines.append("  (failed records were NOT written to the dead-letter topic)")
    if summary.interrupted:
        lines.append("Interrupted: the records after those counted above were not replayed.")
    if summary.error:
        lines.append("Stopped early by an error (see stderr): the records after those counted above were not "
                     "replayed.")
    lines.append("The group's committed offsets were not changed.")
    return "\n".join(lines)


def cmd_replay(args: argparse.Namespace) -> int:
    """``erp-sync replay --from --to``: re-push a time window without touching the group's offsets."""
    start, start_ms = time_arg(args.from_, "--from")
    end, end_ms = time_arg(args.to, "--to")
    if start_ms >= end_ms:
        raise UsageError(f"--from ({start.isoformat()}) must be before --to ({end.isoformat()})")
    settings = tool_settings(needs_erp=not args.dry_run)
    instance_ids = set(args.instance_id) if args.instance_id else None
    summary = replay_window(settings, start_ms, end_ms, instance_ids, args.dry_run, sys.stdout)
    print(format_replay_summary(summary, settings.topic, start, end, instance_ids, args.dry_run))
    if summary.interrupted:
        return 130
    if summary.error:
        raise ToolError(summary.error)
    return 1 if summary.failed else 0


REPLAY_HELP = """\
Re-push the approved records of ERP_SYNC_TOPIC whose Kafka timestamp is in [--from, --to) (for the day
the ERP lost data), or only the chosen InstanceIds in that window. The group's committed offsets are
not touched (a separate, group-less reader), so it can run while `erp-sync run` does. Each record is
pushed with its usual Idempotency-Key until the ERP accepts or rejects it (retry answers back off).
Rejected, undecodable and invalid records are listed in the summary and are NOT written to the
dead-letter topic. A progress bar goes to stderr, the summary to stdout.

Times are ISO 8601 (2024-05-01T08:00:00Z, 2024-05-01T10:00+02:00); without a time zone: UTC.
Exit codes: 0 all delivered; 1 some records failed (listed) or Kafka failed; 2 bad options."""

