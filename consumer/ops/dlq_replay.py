"""``erp-sync dlq replay``: re-push dead letters; those that fail again go back to the dead-letter topic."""

from __future__ import annotations

import argparse
import logging
import sys
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
from ..erp.verdict import Outcome
from ..errors import DecodeError, ErpRejectError, RecordError, ToolError, UsageError
from ..kafka import error_text
from ..settings import Settings
from .cluster import REQUEST_TIMEOUT_S, Cluster, reader_config, tool_settings
from .console import Progress, plural, table
from .reading import Step, ToolRun, read_into_summary, read_record
from .replay import instance_of, open_pusher

log = logging.getLogger(__name__)

DLQ_REPLAY_GROUP_SUFFIX = ".dlq-replay"


@dataclass(frozen=True, slots=True)
class LetterResult:
    """What ``dlq replay`` did with one dead letter.

    Attributes:
        dlq_partition, dlq_offset: where the dead letter is.
        topic, partition, offset: where the original record was (``erp_sync.original.*``).
        instance_id: its InstanceId (``?`` when it does not decode).
        before: its error before the replay (``class code``).
        result: ``accepted``, ``duplicate``, ``skipped``, ``would push``, ``failed again`` or ``held``.
        detail: the new error, or why it was skipped or held.
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
        """True when the dead letter went back to the dead-letter topic."""
        return self.result == "failed again"


@dataclass
class DlqSummary(ToolRun):
    """The results of one ``dlq replay``.

    Attributes:
        topic: the dead-letter topic.
        group: the group that keeps the replay position.
        letters: what happened to each dead letter looked at.
        held: partitions stopped by ``--class`` (why).
        limited: stopped by ``--limit``.
        missing: the dead-letter topic does not exist.
    """

    topic: str = ""
    group: str = ""
    letters: list[LetterResult] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
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


def _write_back(producer: Producer, topic: str, msg: Message, headers: list[Any]) -> None:
    outcome: list[KafkaError | None] = []
    producer.produce(topic, key=msg.key(), value=msg.value(), headers=headers,
                     on_delivery=lambda err, _m: outcome.append(err))
    producer.flush(REQUEST_TIMEOUT_S * 3)
    if not outcome or outcome[0] is not None:
        reason = "no acknowledgement" if not outcome else f"{outcome[0].name()}: {outcome[0].str()}"  # type: ignore[union-attr]
        raise ToolError(f"cannot write the dead letter at {topic}[{msg.partition()}]@{msg.offset()} back to "
                        f"{topic} ({reason}); its replay position was not committed: the next `dlq replay` "
                        "handles it again")


def replay_dead_letters(settings: Settings, dry_run: bool, error_class: str | None, limit: int | None,
                        out: TextIO) -> DlqSummary:
    """Re-push the dead letters not replayed yet; write those that fail again back to the DLQ.

    Reads the dead-letter topic from the committed offsets of the group ``<group>.dlq-replay`` (the
    beginning the first time) up to its end when the run starts, so letters written back by this run
    wait for the next one. After each dead letter is finished (accepted, skipped, or confirmed back on
    the DLQ) that group's offset moves past it. With ``error_class``, a partition stops at its first
    dead letter of another class (so nothing is skipped for good); with ``limit``, the run stops after
    that many dead letters.

    Args:
        settings: the configuration.
        dry_run: print what would be pushed; push, write and commit nothing.
        error_class: replay only dead letters of this class (``decode``, ``validation`` or ``erp``).
        limit: replay at most this many dead letters.
        out: where the dry run's lines go.

    Returns:
        The result of each dead letter looked at.
    """
    dlq = settings.dead_letter_topic
    group = settings.group_id + DLQ_REPLAY_GROUP_SUFFIX
    summary = DlqSummary(topic=dlq, group=group)
    with Cluster(settings) as cluster:
        parts = cluster.partitions(dlq, "ERP_SYNC_DLQ_TOPIC")
        if parts is None:
            summary.missing = True
            return summary
        marks = cluster.watermarks(dlq, parts)
        committed = cluster.committed(group, dlq, parts)
    ranges = {}
    for p in parts:
        low, high = marks[p]
        done = committed[p]
        ranges[p] = (min(high, max(low, done if done is not None else low)), high)
    progress = Progress("dlq replay", sum(end - start for start, end in ranges.values()))
    consumer = Consumer(reader_config(settings, "dlq-replay", group_id=group))
    producer = None if dry_run else Producer({**settings.producer_config(),
                                              "logger": logging.getLogger("librdkafka.producer")})
    handled = 0
    decoder = events.decoder_for(settings)  # the run's decoder: same registry, same rules

    def commit(msg: Message) -> None:
        if dry_run:
            return
        tp = TopicPartition(dlq, int(msg.partition() or 0), int(msg.offset() or 0) + 1)
        try:
            result = consumer.commit(offsets=[tp], asynchronous=False) or []
        except KafkaException as exc:
            raise ToolError(f"cannot commit the replay position {tp.offset} of {dlq}[{tp.partition}] for group "
                            f"{group}: {error_text(exc)}; the next `dlq replay` handles that letter again") from None
        for r in result:
            if r.error is not None:
                raise ToolError(f"cannot commit the replay position of {dlq}[{r.partition}] for group {group}: "
                                f"{r.error.str()}")

    with open_pusher(settings, dry_run) as pusher:
        def handle(msg: Message) -> Step:
            h = read_headers(msg)
            p, offset = int(msg.partition() or 0), int(msg.offset() or 0)
            cls = h.get(H_CLASS, "")
            before = f"{cls or '?'} {h.get(H_CODE, '?')}"
            origin = (h.get(H_TOPIC, "?"), h.get(H_PARTITION, "?"), h.get(H_OFFSET, "?"))

            def record(instance: str, result: str, detail: str = "") -> None:
                summary.letters.append(LetterResult(p, offset, *origin, instance, before, result, detail))
                if dry_run:
                    bar = (f"would push {summary.count('would push')}, "
                           f"would fail again {summary.count('would fail again')}")
                else:
                    bar = (f"accepted {summary.count('accepted') + summary.count('duplicate')}, "
                           f"failed again {summary.count('failed again')}")
                progress.advance(detail=bar)

            if error_class is not None and cls != error_class:
                summary.held.append(f"partition {p} stopped at offset {offset}: a {cls or 'unclassified'} dead "
                                    f"letter, not selected by --class {error_class}")
                return Step.STOP_PARTITION
            event: dict[str, Any] | None = None
            error: RecordError | None = None
            attempts = int_header(h, H_ATTEMPTS)
            try:
                event = decoder(letter_value(settings, msg, h))
                if not transform.is_pushed(event):
                    record(instance_of(event), "skipped", f"status {event.get('status')} is not pushed")
                    commit(msg)
                    return _after(msg)
                body, key = transform.erp_request(event)
            except RecordError as exc:
                error = exc
            if error is None and pusher is None:
                record(instance_of(event), "would push", f"Idempotency-Key {key}")
                print(f"would push: dead letter {dlq}[{p}]@{offset} (from {origin[0]}[{origin[1]}]@{origin[2]}) "
                      f"instance {instance_of(event)} Idempotency-Key {key}", file=out)
                return _after(msg)
            if error is None and pusher is not None:
                result, tries = pusher.push(body, key, progress)
                attempts += tries
                if result.outcome is Outcome.ACCEPTED:
                    record(instance_of(event), "duplicate" if result.duplicate else "accepted",
                           result.code if result.duplicate else "")
                    commit(msg)
                    return _after(msg)
                error = ErpRejectError(result.code, result.message or result.code, result.request_id)
            assert error is not None
            if producer is None:
                record(instance_of(event), "would fail again", f"{error.error_class} {error.code}: {error.message}")
                return _after(msg)
            replays = int_header(h, H_REPLAYS) + 1
            _write_back(producer, dlq, msg, rewritten_headers(msg, error, attempts, replays))
            record(instance_of(event), "failed again",
                   f"{error.error_class} {error.code}: {error.message}; back on the DLQ (attempts {attempts}, "
                   f"replays {replays})")
            commit(msg)
            return _after(msg)

        def _after(_msg: Message) -> Step:
            nonlocal handled
            handled += 1
            if limit is not None and handled >= limit:
                summary.limited = True
                return Step.STOP_ALL
            return Step.NEXT

        try:
            read_into_summary(summary, consumer, dlq, ranges, handle)
        finally:
            consumer.close()
            progress.close()
            if producer is not None:
                producer.flush(5)
    return summary


def format_dlq_summary(summary: DlqSummary, dry_run: bool, limit: int | None) -> str:
    """Render the summary of a ``dlq replay``: one line per dead letter, then the totals."""
    if summary.missing:
        return (f"Nothing to replay: the dead-letter topic {summary.topic} does not exist (no record was ever "
                "dead-lettered, or ERP_SYNC_DLQ_TOPIC names another topic).")
    if not summary.letters and not summary.held:
        return (f"Nothing to replay: {summary.topic} has no dead letter that group {summary.group} has not "
                "replayed yet.")
    lines = [f"Replay of the dead letters of {summary.topic} (position kept by group {summary.group})"
             f"{' (dry run: nothing sent, written or committed)' if dry_run else ''}:"]
    if summary.letters:
        rows = [[f"{r.dlq_partition}@{r.dlq_offset}", r.topic, r.partition, r.offset, r.instance_id, r.before,
                 r.result + (f": {r.detail}" if r.detail else "")] for r in summary.letters]
        lines += table(["DLQ", "ORIGINAL TOPIC", "PARTITION", "OFFSET", "INSTANCE", "ERROR BEFORE", "RESULT"],
                        rows, right={2, 3})
    for held in summary.held:
        lines.append(f"Held: {held}.")
    if summary.limited:
        lines.append(f"Stopped after --limit {limit}; the other dead letters wait for the next run.")
    if summary.interrupted:
        lines.append("Interrupted: the dead letters above are done; the rest wait for the next run.")
    if summary.error:
        lines.append("Stopped early by an error (see stderr): the dead letters above are done; the rest wait for "
                     "the next run.")
    total = f"Total: {plural(len(summary.letters), 'dead letter')}"
    if dry_run:
        lines.append(f"{total}: {summary.count('would push')} would be pushed, "
                     f"{summary.count('would fail again')} would fail again, {summary.count('skipped')} skipped.")
    else:
        lines.append(f"{total}: {summary.count('accepted')} accepted, "
                     f"{summary.count('duplicate')} duplicates, {summary.count('skipped')} skipped, "
                     f"{summary.count('failed again')} failed again (back on {summary.topic}).")
    return "\n".join(lines)


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    """``erp-sync dlq replay``: re-push dead letters; those that fail again go back to the DLQ."""
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: must be at least 1")
    settings = tool_settings(needs_erp=not args.dry_run)
    summary = replay_dead_letters(settings, args.dry_run, args.error_class, args.limit, sys.stdout)
    print(format_dlq_summary(summary, args.dry_run, args.limit))
    if summary.interrupted:
        return 130
    if summary.error:
        raise ToolError(summary.error)
    return 1 if any(r.failed for r in summary.letters) else 0


DLQ_REPLAY_HELP = """\
Re-push the dead letters of the dead-letter topic (ERP_SYNC_DLQ_TOPIC, default <topic>.dlq) once the
cause is fixed. The group <group>.dlq-replay remembers what was replayed: each run reads from its
committed position to the end of the topic at start, and commits past each dead letter once it is
done, so a second run does not push the same ones again. A dead letter that fails again (undecodable,
invalid, or rejected by the ERP) is written back to the dead-letter topic with its original headers
and erp_sync.original.* unchanged, fresh erp_sync.error.* headers, erp_sync.attempts (ERP attempts so
far) and erp_sync.replays (times replayed). The summary lists every dead letter with its original
topic, partition and offset, its InstanceId and the result.

--class: a partition stops at its first dead letter of another class (it is never skipped for good).
Exit codes: 0 all replayed; 1 some failed again (they are back on the DLQ) or Kafka failed; 2 bad
options."""


