"""``erp-sync replay``: re-push a time window without touching the group's offsets."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

import httpx
from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    Message,
)

from .. import decode as events
from .. import transform
from ..delivery.push import PushResult
from ..erp.verdict import Outcome
from ..errors import RecordError, ToolError, UsageError
from ..settings import Settings
from .cluster import Cluster, for_source_topic, reader_config, tool_settings
from .console import Progress, plural, time_arg
from .pushing import ToolPushes
from .reading import Step, ToolRun, read_into_summary

log = logging.getLogger(__name__)


TOOL_IN_FLIGHT = 32
"""Pushes at once of a tool when ``ERP_SYNC_MAX_IN_FLIGHT`` is ``auto`` and no ``--max-in-flight`` is given."""


@dataclass(frozen=True, slots=True)
class PushOptions:
    """How a tool pushes: as ``run`` does unless overridden on the command line.

    Attributes:
        max_in_flight: pushes at once (``--max-in-flight``, else ``ERP_SYNC_MAX_IN_FLIGHT``; when that
            is ``auto``, :data:`TOOL_IN_FLIGHT`: a tool runs a bounded job beside ``run`` and does not probe
            the ERP's capacity).
        max_requests_per_second: the request-rate limit (``--max-requests-per-second``, else
            ``ERP_SYNC_ERP_MAX_REQUESTS_PER_SECOND``); None for none.
        transport: the ERP client's httpx transport (None: the real one; unit tests pass a mock).
    """

    max_in_flight: int
    max_requests_per_second: float | None
    transport: httpx.AsyncBaseTransport | None = None

    @classmethod
    def of(cls, settings: Settings, args: argparse.Namespace | None = None) -> PushOptions:
        """The options of a command line (``--max-in-flight``, ``--max-requests-per-second``) over the settings."""
        in_flight = getattr(args, "max_in_flight", None)
        rate = getattr(args, "max_requests_per_second", None)
        if in_flight is not None and in_flight < 1:
            raise UsageError(f"--max-in-flight {in_flight}: must be at least 1")
        if rate is not None and rate < 0:
            raise UsageError(f"--max-requests-per-second {rate}: must be positive (0: no limit)")
        configured = settings.max_in_flight if isinstance(settings.max_in_flight, int) else TOOL_IN_FLIGHT
        return cls(in_flight or configured,
                   (rate or None) if rate is not None else settings.erp_max_requests_per_second)

    def describe(self) -> str:
        """``32 in flight, no rate limit`` / ``8 in flight, at most 50 requests/s``."""
        limit = ("no rate limit" if self.max_requests_per_second is None
                 else f"at most {self.max_requests_per_second:g} requests/s")
        return f"{self.max_in_flight} in flight, {limit}"


@contextmanager
def open_pushes(settings: Settings, progress: Progress, options: PushOptions,
                dry_run: bool) -> Iterator[ToolPushes | None]:
    """The pushes of one tool run (None in a dry run), closed at the end."""
    if dry_run:
        yield None
        return
    with ToolPushes(settings, progress, options.max_in_flight, options.max_requests_per_second,
                    options.transport) as pushes:
        yield pushes


def finish_pushes(pushes: ToolPushes | None, summary: ToolRun) -> None:
    """After the read: settle every push still running; after Ctrl-C, those waiting give up first."""
    if pushes is None:
        return
    if summary.interrupted:
        pushes.cancel()
    try:
        pushes.finish()
    except KeyboardInterrupt:
        summary.interrupted = True
        pushes.cancel()
        pushes.settle()


def kafka_key(msg: Message, event: Mapping[str, Any]) -> bytes:
    """The key of per-key order, as ``run`` has it: the record's Kafka key, or its InstanceId when it has none."""
    return msg.key() or str(event["instance_id"]).encode()


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
    push_seconds: float = 0.0
    peak_in_flight: int = 0

    @property
    def push_rate(self) -> float | None:
        """ERP answers per second while pushing (None when nothing was pushed)."""
        pushes = self.counts["pushed"] + self.counts["duplicates"] + self.counts["rejected"]
        return pushes / self.push_seconds if pushes and self.push_seconds > 0 else None


def replay_window(settings: Settings, start_ms: int, end_ms: int, instance_ids: set[int] | None,
                  dry_run: bool, out: TextIO, options: PushOptions | None = None) -> ReplaySummary:
    """Re-push the approved records of the topic whose timestamp is in ``[start_ms, end_ms)``.

    The start offset of each partition is the first record at or after ``start_ms`` and the end offset
    the first record at or after ``end_ms`` (``offsets_for_times``); records in that range whose
    timestamp is outside the window (producers may set any CreateTime) are not pushed. Records are
    pushed as ``run`` pushes them (:mod:`.pushing`): concurrently, one at a time per key. Nothing is
    committed and nothing is written to the dead-letter topic.

    Args:
        settings: the configuration.
        start_ms: window start, ms since the epoch (included).
        end_ms: window end, ms since the epoch (excluded).
        instance_ids: push only these InstanceIds; None for all.
        dry_run: print what would be pushed instead of pushing.
        out: where the dry run's lines go.
        options: concurrency and rate limit (default: the settings').

    Returns:
        The counters and the failures.
    """
    options = options or PushOptions.of(settings)
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

    def result_of(p: int, offset: int, instance: str) -> Any:
        def done(result: PushResult) -> None:
            verdict = result.verdict
            if verdict is not None and verdict.outcome is Outcome.ACCEPTED:
                summary.counts["duplicates" if verdict.duplicate else "pushed"] += 1
            elif verdict is not None:
                summary.counts["rejected"] += 1
                summary.failed.append(Failure(p, offset, instance, "erp", verdict.code,
                                              f"{verdict.message or verdict.code} (after "
                                              f"{plural(result.attempts, 'attempt')}"
                                              f"{', request ' + verdict.request_id if verdict.request_id else ''})"))
            elif pushes is not None and pushes.cancelled:
                summary.counts["given_up"] += 1
            else:
                summary.failed.append(Failure(p, offset, instance, "erp", "PushFailed",
                                              "the push failed unexpectedly (see the log)"))
            progress.advance(detail=_replay_detail(summary, dry_run))
        return done

    decoder = events.decoder_for(settings)  # the run's decoder: same registry, same rules
    with open_pushes(settings, progress, options, dry_run) as pushes:
        def handle(msg: Message) -> Step:
            summary.counts["scanned"] += 1
            p, offset = int(msg.partition() or 0), int(msg.offset() or 0)
            ts_type, ts = msg.timestamp()
            if ts_type == TIMESTAMP_NOT_AVAILABLE or not start_ms <= ts < end_ms:
                summary.counts["outside_window"] += 1
                progress.advance(detail=_replay_detail(summary, dry_run))
                return Step.NEXT
            event: dict[str, Any] | None = None
            try:
                event = decoder(msg.value())
                if instance_ids is not None and event.get("instance_id") not in instance_ids:
                    summary.counts["not_selected"] += 1
                elif not transform.is_pushed(event):
                    summary.counts["skipped"] += 1
                else:
                    body, idempotency_key = transform.erp_request(event)
                    if pushes is not None:
                        route = pushes.route_of(msg, event["flow_code"])
                        pushes.submit(kafka_key(msg, event), body, idempotency_key,
                                      result_of(p, offset, instance_of(event)), route)
                        return Step.NEXT
                    summary.counts["would_push"] += 1
                    print(f"would push: partition {p} offset {offset} instance {event['instance_id']} "
                          f"Idempotency-Key {idempotency_key}", file=out)
            except RecordError as exc:
                summary.failed.append(Failure(p, offset, instance_of(event), exc.error_class, exc.code,
                                              exc.message))
            progress.advance(detail=_replay_detail(summary, dry_run))
            return Step.NEXT

        consumer = Consumer(reader_config(settings, "replay"))
        started = time.monotonic()
        try:
            read_into_summary(summary, consumer, topic, ranges, handle)
            finish_pushes(pushes, summary)
        finally:
            summary.push_seconds = time.monotonic() - started
            summary.peak_in_flight = pushes.peak_running if pushes is not None else 0
            consumer.close()
            progress.close()
    summary.failed.sort(key=lambda f: (f.partition, f.offset))
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
    if summary.counts["given_up"]:
        lines.append(f"  given up (interrupted while waiting to be pushed): {summary.counts['given_up']}")
    rate = summary.push_rate
    if rate is not None:
        lines.append(f"  rate: {rate:.1f} pushes/s over {summary.push_seconds:.1f} s "
                     f"(up to {summary.peak_in_flight} in flight)")
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
    settings = for_source_topic(tool_settings(needs_erp=not args.dry_run), getattr(args, "topic", None))
    instance_ids = set(args.instance_id) if args.instance_id else None
    options = PushOptions.of(settings, args)
    summary = replay_window(settings, start_ms, end_ms, instance_ids, args.dry_run, sys.stdout, options)
    print(format_replay_summary(summary, settings.topic, start, end, instance_ids, args.dry_run))
    if summary.interrupted:
        return 130
    if summary.error:
        raise ToolError(summary.error)
    return 1 if summary.failed else 0
