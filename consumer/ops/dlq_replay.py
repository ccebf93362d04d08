"""``erp-sync dlq replay``: re-push dead letters; those that fail for a new reason go back to the DLQ.

The replay position (issue "on-call defects", Operations tools) is kept by the group
``<group>.dlq-replay`` as the consumer keeps its own: per partition of the dead-letter topic, the
committed offset is the first letter not done, and the letters done beyond it travel in the commit's
metadata (:func:`~consumer.delivery.offsets.encode_finished`, tracked by
:class:`~consumer.delivery.offsets.PartitionOffsets`). A letter is done once it is accepted by the
ERP, skipped (not APPROVED), or failed for a new reason and written back with fresh headers
(confirmed by the broker). Everything else stays in place and is read again by the next run:

* letters of another class than ``--class`` (a later run without ``--class`` replays them);
* letters that fail again for the same reason (same ``erp_sync.error.class`` and ``.code``):
  "still failing: same reason", never written back, so a permanently invalid letter is never
  copied again, however often the replay runs;
* letters whose push was given up (Ctrl-C) or not reached (``--limit``, an error).

Letters are pushed as ``run`` pushes records (:mod:`.pushing`): concurrently, one at a time per key.
A dry run pushes, writes and commits nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from .. import decode as events
from .. import transform
from ..delivery.dead_letters import (
    H_ATTEMPTS,
    H_CLASS,
    H_CODE,
    H_OFFSET,
    H_PARTITION,
    H_REPLAYS,
    H_TOPIC,
    H_VALUE_OMITTED,
    int_header,
    read_headers,
    rewritten_headers,
)
from ..delivery.offsets import MAX_METADATA_BYTES, PartitionOffsets, decode_finished, encode_finished
from ..delivery.push import PushResult
from ..erp.verdict import Outcome
from ..errors import DecodeError, ErpRejectError, RecordError, ToolError, UsageError
from ..kafka import error_text
from ..settings import Settings
from .cluster import REQUEST_TIMEOUT_S, Cluster, reader_config, tool_settings
from .console import Progress, plural, table
from .pushing import ToolPushes
from .reading import Step, ToolRun, read_into_summary, read_record
from .replay import PushOptions, finish_pushes, instance_of, kafka_key, open_pushes

log = logging.getLogger(__name__)

DLQ_REPLAY_GROUP_SUFFIX = ".dlq-replay"
COMMIT_INTERVAL_S = 1.0
"""The replay position is committed this often while letters finish (and at the end)."""
RANGE_CHARS = 14
"""Most characters one more range of finished letters can add to the commit metadata."""
ROOM_CHECK_EVERY = 32
"""Letters handled per partition between two exact measures of the commit metadata."""

DONE_RESULTS = frozenset({"accepted", "duplicate", "skipped", "failed again"})
"""The results that make a letter done (the replay position may pass it)."""


@dataclass(frozen=True, slots=True)
class LetterResult:
    """What ``dlq replay`` did with one dead letter.

    Attributes:
        dlq_partition, dlq_offset: where the dead letter is.
        topic, partition, offset: where the original record was (``erp_sync.original.*``).
        instance_id: its InstanceId (``?`` when it does not decode).
        before: its error before the replay (``class code``).
        result: ``accepted``, ``duplicate``, ``skipped``, ``failed again`` (written back),
            ``still failing`` (same reason: left in place), ``given up`` (interrupted), or in a dry
            run ``would push``, ``would fail again``, ``would still fail``.
        detail: the new error, or why it was skipped.
    """

    dlq_partition: int
    dlq_offset: int
    topic: str
    partition: str
    offset: str
    instance_id: str
    before: str
    result: str
    detail: str = ""

    @property
    def failed(self) -> bool:
        """True when the dead letter is still not delivered (written back, or left in place failing)."""
        return self.result in ("failed again", "still failing")

    @property
    def done(self) -> bool:
        """True when the replay position may pass the letter."""
        return self.result in DONE_RESULTS


@dataclass
class DlqSummary(ToolRun):
    """The results of one ``dlq replay``.

    Attributes:
        topic: the dead-letter topic.
        group: the group that keeps the replay position.
        letters: what happened to each dead letter handled, in DLQ order.
        not_selected: letters of other classes left in place by ``--class``, by class.
        already_done: letters read again that an earlier run had finished (the commit metadata).
        full: partitions whose reading stopped because the replay position could not remember more
            letters left in place (why).
        positions: the replay position committed at the end, by partition.
        limited: stopped by ``--limit``.
        missing: the dead-letter topic does not exist.
    """

    topic: str = ""
    group: str = ""
    letters: list[LetterResult] = field(default_factory=list)
    not_selected: Counter[str] = field(default_factory=Counter)
    already_done: int = 0
    full: list[str] = field(default_factory=list)
    positions: dict[int, int] = field(default_factory=dict)
    limited: bool = False
    missing: bool = False

    def count(self, result: str) -> int:
        """How many dead letters ended with ``result``."""
        return sum(1 for letter in self.letters if letter.result == result)


def letter_value(settings: Settings, letter: Message, headers: dict[str, str]) -> bytes | None:
    """A dead letter's value; read from the source topic when the letter was written without it.

    Raises:
        DecodeError: ``ValueOmitted``: the letter has no value and the original record is gone.
    """
    if letter.value() is not None or H_VALUE_OMITTED not in headers:
        return letter.value()
    topic, partition, offset = headers.get(H_TOPIC, ""), int_header(headers, H_PARTITION), int_header(headers, H_OFFSET)
    original = read_record(settings, topic, partition, offset)
    if original is None:
        raise DecodeError("ValueOmitted", f"the dead letter was written without its value "
                                          f"({headers[H_VALUE_OMITTED]}) and the original at {topic}[{partition}]"
                                          f"@{offset} is no longer in the topic (retention)")
    return original.value()


def same_reason(error: RecordError, headers: dict[str, str]) -> bool:
    """Whether ``error`` is the failure the dead letter already records (same class and code)."""
    return error.error_class == headers.get(H_CLASS) and error.code == headers.get(H_CODE)


class ReplayPositions:
    """The replay group's position on each partition of the dead-letter topic.

    Per partition a :class:`~consumer.delivery.offsets.PartitionOffsets` from the group's committed
    offset and the letters its metadata says are done beyond it. :meth:`commit` writes the first
    letter not done with the done ones beyond it (:func:`~consumer.delivery.offsets.encode_finished`).

    Args:
        consumer: the reader, whose group is the replay group (commits go through it).
        topic: the dead-letter topic.
        group: the replay group (for messages).
        partitions: the partitions of the topic.
        marks: ``{partition: (low, high)}`` watermarks at start.
        dry_run: read the position, never commit.
    """

    def __init__(self, consumer: Consumer, topic: str, group: str, partitions: list[int],
                 marks: dict[int, tuple[int, int]], dry_run: bool) -> None:
        self.consumer, self.topic, self.group, self.dry_run = consumer, topic, group, dry_run
        try:
            committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            raise ToolError(f"cannot read the replay position of group {group} on {topic}: "
                            f"{error_text(exc)}") from None
        self.offsets: dict[int, PartitionOffsets] = {}
        self.ranges: dict[int, tuple[int, int]] = {}
        self.held: Counter[int] = Counter()
        self.outstanding: Counter[int] = Counter()
        self._handled: Counter[int] = Counter()
        self._room_chars: dict[int, int] = {}
        for tp in committed:
            if tp.error is not None:
                raise ToolError(f"cannot read the replay position of group {group} on {topic}[{tp.partition}]: "
                                f"{tp.error.str()}")
            p = tp.partition
            low, high = marks[p]
            if tp.offset >= 0:
                start = min(high, max(low, tp.offset))
                known = decode_finished(tp.metadata, tp.offset)
            else:
                start, known = low, []
            offsets = PartitionOffsets(start, known)
            if tp.offset == start:
                offsets.committed_metadata = tp.metadata or ""
            self.offsets[p] = offsets
            self.ranges[p] = (start, high)
        self._next_commit = time.monotonic() + COMMIT_INTERVAL_S

    def room(self, p: int) -> bool:
        """Whether the commit metadata can remember one more letter handled on ``p``, with those in flight.

        Measured exactly every :data:`ROOM_CHECK_EVERY` letters; between two measures each letter is
        counted at its largest (:data:`RANGE_CHARS`).
        """
        self._handled[p] += 1
        offsets = self.offsets[p]
        if p not in self._room_chars or self._handled[p] % ROOM_CHECK_EVERY == 0:
            floor = offsets.floor if offsets.floor is not None else 0
            self._room_chars[p] = len(encode_finished(floor, offsets.finished_ranges(), limit=1 << 30))
        margin = RANGE_CHARS * (self.outstanding[p] + ROOM_CHECK_EVERY + 1) + 32
        return self._room_chars[p] + margin <= MAX_METADATA_BYTES

    def maybe_commit(self) -> None:
        """Commit when :data:`COMMIT_INTERVAL_S` passed since the last commit."""
        if time.monotonic() >= self._next_commit:
            self.commit()

    def commit(self) -> None:
        """Commit each partition's first letter not done, with the done letters beyond it, where either moved.

        Raises:
            ToolError: the broker refused the commit (the next run handles those letters again).
        """
        self._next_commit = time.monotonic() + COMMIT_INTERVAL_S
        if self.dry_run:
            return
        sent: dict[int, str] = {}
        tps = []
        for p, offsets in self.offsets.items():
            floor = offsets.floor
            if floor is None:
                continue
            metadata = encode_finished(floor, offsets.finished_ranges())
            if offsets.committable() is None and metadata == offsets.committed_metadata:
                continue
            sent[p] = metadata
            tps.append(TopicPartition(self.topic, p, floor, metadata=metadata))
        if not tps:
            return
        where = ", ".join(f"{self.topic}[{tp.partition}]@{tp.offset}" for tp in tps)
        try:
            result = self.consumer.commit(offsets=tps, asynchronous=False) or []
        except KafkaException as exc:
            raise ToolError(f"cannot commit the replay position ({where}) for group {self.group}: "
                            f"{error_text(exc)}; the next `dlq replay` handles those letters again") from None
        for r in result:
            if r.error is not None:
                raise ToolError(f"cannot commit the replay position of {self.topic}[{r.partition}] for group "
                                f"{self.group}: {r.error.str()}")
            offsets = self.offsets[r.partition]
            offsets.mark_committed(r.offset)
            offsets.committed_metadata = sent.get(r.partition, "")


class _WriteBack:
    """Writes letters that failed for a new reason back to the dead-letter topic (confirmed by the broker)."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self.settings = settings
        self._producer: Producer | None = None
        self.pending = 0
        self.error: str | None = None

    @property
    def producer(self) -> Producer:
        """The producer, made on the first letter written back (a run that writes nothing connects nothing)."""
        if self._producer is None:
            self._producer = Producer({**self.settings.producer_config(),
                                       "logger": logging.getLogger("librdkafka.producer")})
        return self._producer

    def send(self, letter: Message, error: RecordError, attempts: int, replays: int, done: Any) -> None:
        """Produce the letter with fresh headers; ``done()`` runs (in :meth:`poll`) once the broker confirmed it."""
        where = f"{self.topic}[{letter.partition()}]@{letter.offset()}"

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            self.pending -= 1
            if err is None:
                done()
            elif self.error is None:
                self.error = (f"cannot write the dead letter at {where} back to {self.topic} ({err.name()}: "
                              f"{err.str()}); it stays in place: the next `dlq replay` handles it again")

        try:
            headers: list[Any] = rewritten_headers(letter, error, attempts, replays)
            self.producer.produce(self.topic, key=letter.key(), value=letter.value(), headers=headers,
                                  on_delivery=delivered)
        except (BufferError, KafkaException) as exc:
            if self.error is None:
                self.error = (f"cannot write the dead letter at {where} back to {self.topic} ({error_text(exc)}); "
                              "it stays in place: the next `dlq replay` handles it again")
            return
        self.pending += 1
        self.producer.poll(0)

    def poll(self) -> None:
        """Serve delivery reports."""
        if self._producer is not None:
            self._producer.poll(0)

    def flush(self, timeout_s: float = REQUEST_TIMEOUT_S * 3) -> None:
        """Wait for every letter written back; those unconfirmed stay not done."""
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            self.producer.flush(min(1.0, max(0.0, deadline - time.monotonic())))
        if self.pending and self.error is None:
            self.error = (f"{plural(self.pending, 'dead letter')} written back to {self.topic} not confirmed within "
                          f"{timeout_s:.0f} s; they stay in place: the next `dlq replay` handles them again")


def replay_dead_letters(settings: Settings, dry_run: bool, error_class: str | None, limit: int | None,
                        out: TextIO, options: PushOptions | None = None) -> DlqSummary:
    """Re-push the dead letters not done yet; write those that fail for a new reason back to the DLQ.

    Reads each partition of the dead-letter topic from the replay group's position (the beginning the
    first time) up to its end when the run starts, so letters written back by this run wait for the
    next one; letters an earlier run finished beyond the position (the commit metadata) are passed
    over. See the module's docstring for what is done and what stays in place.

    Args:
        settings: the configuration.
        dry_run: print what would be pushed; push, write and commit nothing.
        error_class: replay only dead letters of this class (``decode``, ``validation`` or ``erp``);
            the others stay in place for a later run.
        limit: replay at most this many dead letters.
        out: where the dry run's lines go.
        options: concurrency and rate limit (default: the settings').

    Returns:
        The result of each dead letter handled.
    """
    options = options or PushOptions.of(settings)
    dlq = settings.dead_letter_topic
    group = settings.group_id + DLQ_REPLAY_GROUP_SUFFIX
    summary = DlqSummary(topic=dlq, group=group)
    with Cluster(settings) as cluster:
        parts = cluster.partitions(dlq, "ERP_SYNC_DLQ_TOPIC")
        if parts is None:
            summary.missing = True
            return summary
        marks = cluster.watermarks(dlq, parts)
    consumer = Consumer(reader_config(settings, "dlq-replay", group_id=group))
    try:
        positions = ReplayPositions(consumer, dlq, group, parts, marks, dry_run)
    except BaseException:
        consumer.close()
        raise
    progress = Progress("dlq replay", sum(end - start for start, end in positions.ranges.values()))
    writer = None if dry_run else _WriteBack(settings, dlq)
    handled = 0
    decoder = events.decoder_for(settings)  # the run's decoder: same registry, same rules

    def bar() -> str:
        if dry_run:
            return (f"would push {summary.count('would push')}, would fail again {summary.count('would fail again')}, "
                    f"would still fail {summary.count('would still fail')}")
        return (f"accepted {summary.count('accepted') + summary.count('duplicate')}, "
                f"failed again {summary.count('failed again')}, still failing {summary.count('still failing')}")

    def record(msg: Message, h: dict[str, str], instance: str, result: str, detail: str = "") -> None:
        p, offset = int(msg.partition() or 0), int(msg.offset() or 0)
        letter = LetterResult(p, offset, h.get(H_TOPIC, "?"), h.get(H_PARTITION, "?"), h.get(H_OFFSET, "?"),
                              instance, f"{h.get(H_CLASS) or '?'} {h.get(H_CODE, '?')}", result, detail)
        summary.letters.append(letter)
        if letter.done:
            positions.offsets[p].done(offset)
        elif result in ("still failing", "given up"):
            positions.held[p] += 1
        progress.advance(detail=bar())

    def failed(msg: Message, h: dict[str, str], instance: str, error: RecordError, attempts: int) -> None:
        reason = f"{error.error_class} {error.code}: {error.message}"
        if same_reason(error, h):
            record(msg, h, instance, "would still fail" if dry_run else "still failing",
                   f"same reason ({reason}); left in place")
        elif writer is None:
            record(msg, h, instance, "would fail again", reason)
        else:
            replays = int_header(h, H_REPLAYS) + 1
            writer.send(msg, error, attempts, replays, lambda: record(
                msg, h, instance, "failed again",
                f"{reason}; back on the DLQ (attempts {attempts}, replays {replays})"))

    def pushed(msg: Message, h: dict[str, str], instance: str, attempts: int) -> Any:
        def done(result: PushResult) -> None:
            p = int(msg.partition() or 0)
            positions.outstanding[p] -= 1
            verdict = result.verdict
            tries = attempts + result.attempts
            if verdict is None:
                record(msg, h, instance, "given up", "interrupted before the ERP answered" if pushes_cancelled()
                       else "the push failed unexpectedly (see the log)")
            elif verdict.outcome is Outcome.ACCEPTED:
                record(msg, h, instance, "duplicate" if verdict.duplicate else "accepted",
                       verdict.code if verdict.duplicate else "")
            else:
                failed(msg, h, instance, ErpRejectError(verdict.code, verdict.message or verdict.code,
                                                        verdict.request_id), tries)
        return done

    pushes: ToolPushes | None = None

    def pushes_cancelled() -> bool:
        return pushes is not None and pushes.cancelled

    def tick() -> None:
        if writer is not None:
            writer.poll()
        positions.maybe_commit()

    def handle(msg: Message) -> Step:
        nonlocal handled
        p, offset = int(msg.partition() or 0), int(msg.offset() or 0)
        offsets = positions.offsets[p]
        tick()
        if not offsets.track(offset):
            return Step.NEXT  # read again after a fetch error: already handled
        if offsets.already_finished(offset):
            offsets.done(offset)
            summary.already_done += 1
            progress.advance()
            return Step.NEXT
        if writer is not None and writer.error is not None:
            return Step.STOP_ALL
        h = read_headers(msg)
        cls = h.get(H_CLASS, "")
        if error_class is not None and cls != error_class:
            summary.not_selected[cls or "unclassified"] += 1
            positions.held[p] += 1
            progress.advance()
            return Step.NEXT
        if not dry_run and not positions.room(p):
            summary.full.append(f"partition {p} stopped at offset {offset}: the replay position cannot remember more "
                                f"letters done beyond {plural(positions.held[p], 'letter')} left in place; "
                                "run again once those are replayed (without --class)")
            return Step.STOP_PARTITION
        handled += 1
        event: dict[str, Any] | None = None
        attempts = int_header(h, H_ATTEMPTS)
        try:
            event = decoder(letter_value(settings, msg, h))
            if not transform.is_pushed(event):
                record(msg, h, instance_of(event), "skipped", f"status {event.get('status')} is not pushed")
            else:
                body, idempotency_key = transform.erp_request(event)
                if pushes is None:
                    record(msg, h, instance_of(event), "would push", f"Idempotency-Key {idempotency_key}")
                    print(f"would push: dead letter {dlq}[{p}]@{offset} (from {h.get(H_TOPIC, '?')}"
                          f"[{h.get(H_PARTITION, '?')}]@{h.get(H_OFFSET, '?')}) instance {instance_of(event)} "
                          f"Idempotency-Key {idempotency_key}", file=out)
                else:
                    route = pushes.route_of(msg, event["flow_code"], h.get(H_TOPIC))
                    positions.outstanding[p] += 1
                    pushes.submit(kafka_key(msg, event), body, idempotency_key,
                                  pushed(msg, h, instance_of(event), attempts), route)
        except RecordError as exc:
            failed(msg, h, instance_of(event), exc, attempts)
        if limit is not None and handled >= limit:
            summary.limited = True
            return Step.STOP_ALL
        return Step.NEXT

    try:
        with open_pushes(settings, progress, options, dry_run) as pushes:
            if pushes is not None:
                pushes.tick = tick
            read_into_summary(summary, consumer, dlq, positions.ranges, handle)
            finish_pushes(pushes, summary)
        if writer is not None:
            writer.flush()
            if writer.error is not None and summary.error is None:
                summary.error = writer.error
        positions.commit()
    except ToolError as exc:
        summary.error = summary.error or str(exc)
    finally:
        consumer.close()
        progress.close()
    summary.positions = {p: o.floor for p, o in positions.offsets.items() if o.floor is not None}
    summary.letters.sort(key=lambda r: (r.dlq_partition, r.dlq_offset))
    return summary


def format_dlq_summary(summary: DlqSummary, dry_run: bool, limit: int | None,
                       error_class: str | None = None) -> str:
    """Render the summary of a ``dlq replay``: one line per dead letter, then the totals."""
    if summary.missing:
        return (f"Nothing to replay: the dead-letter topic {summary.topic} does not exist (no record was ever "
                "dead-lettered, or ERP_SYNC_DLQ_TOPIC names another topic).")
    if not summary.letters and not summary.not_selected and not summary.full and not summary.error:
        return (f"Nothing to replay: {summary.topic} has no dead letter that group {summary.group} has not "
                "replayed yet.")
    lines = [f"Replay of the dead letters of {summary.topic} (position kept by group {summary.group})"
             f"{' (dry run: nothing sent, written or committed)' if dry_run else ''}:"]
    if summary.letters:
        rows = [[f"{r.dlq_partition}@{r.dlq_offset}", r.topic, r.partition, r.offset, r.instance_id, r.before,
                 r.result + (f": {r.detail}" if r.detail else "")] for r in summary.letters]
        lines += table(["DLQ", "ORIGINAL TOPIC", "PARTITION", "OFFSET", "INSTANCE", "ERROR BEFORE", "RESULT"],
                        rows, right={2, 3})
    if summary.not_selected:
        classes = ", ".join(f"{n} {cls}" for cls, n in sorted(summary.not_selected.items()))
        held = sum(summary.not_selected.values())
        lines.append(f"Not selected by --class {error_class}: {plural(held, 'dead letter')} ({classes}) left in "
                     "place; a run without --class replays them.")
    for full in summary.full:
        lines.append(f"Stopped: {full}.")
    if summary.limited:
        lines.append(f"Stopped after --limit {limit}; the other dead letters wait for the next run.")
    if summary.interrupted:
        lines.append("Interrupted: the dead letters accepted, skipped or written back above are done; the others "
                     "wait for the next run.")
    if summary.error:
        lines.append("Stopped early by an error (see stderr): the dead letters accepted, skipped or written back "
                     "above are done; the others wait for the next run.")
    if summary.already_done:
        lines.append(f"Passed over: {plural(summary.already_done, 'dead letter')} an earlier run already replayed.")
    total = f"Total: {plural(len(summary.letters), 'dead letter')}"
    if dry_run:
        lines.append(f"{total}: {summary.count('would push')} would be pushed, "
                     f"{summary.count('would fail again')} would fail again, "
                     f"{summary.count('would still fail')} would still fail for the same reason, "
                     f"{summary.count('skipped')} skipped.")
    else:
        given_up = summary.count("given up")
        lines.append(f"{total}: {summary.count('accepted')} accepted, "
                     f"{plural(summary.count('duplicate'), 'duplicate')}, {summary.count('skipped')} skipped, "
                     f"{summary.count('failed again')} failed again (back on {summary.topic}), "
                     f"{summary.count('still failing')} still failing for the same reason (left in place)"
                     f"{f', {given_up} given up' if given_up else ''}.")
    return "\n".join(lines)


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    """``erp-sync dlq replay``: re-push dead letters; those that fail for a new reason go back to the DLQ."""
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: must be at least 1")
    settings = tool_settings(needs_erp=not args.dry_run)
    options = PushOptions.of(settings, args)
    summary = replay_dead_letters(settings, args.dry_run, args.error_class, args.limit, sys.stdout, options)
    print(format_dlq_summary(summary, args.dry_run, args.limit, args.error_class))
    if summary.interrupted:
        return 130
    if summary.error:
        raise ToolError(summary.error)
    return 1 if any(r.failed for r in summary.letters) else 0
