"""Operations tools: ``status``, ``reset-offsets``, ``replay`` and ``dlq replay`` (issue 4).

``status``          per partition of the topic: the group's committed offset, the high watermark, the
                    lag (messages) and lag seconds, the owner; the group's state and members
``reset-offsets``   move the group's committed offsets (a dry run unless ``--execute``): the topic replay
``replay``          re-push a time window (or chosen instances) without touching the group's offsets
``dlq replay``      re-push dead letters; those that fail again go back to the dead-letter topic

No tool joins the consumer group. Records are read with ``assign()`` by a client whose group id is
never committed to; only ``dlq replay`` commits, to its own group ``<group>.dlq-replay``, to remember
which dead letters it already replayed. Every tool reads the same configuration as ``erp-sync run``
(``ERP_SYNC_*`` variables, ``ERP_SYNC_CONFIG_FILE``).

Exit codes: 0 success; 1 runtime failure (Kafka unreachable, a record that could not be delivered);
2 usage or configuration error (bad option, unknown partition or topic, group still active).
"""

from __future__ import annotations

import argparse
import enum
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from . import events, logs, transform
from .dead_letters import (
    H_ATTEMPTS,
    H_CLASS,
    H_CODE,
    H_MESSAGE,
    H_OFFSET,
    H_PARTITION,
    H_REQUEST_ID,
    H_TOPIC,
)
from .erp import ErpClient
from .errors import ConfigError, ErpRejectError, RecordError
from .kafka import admin_client
from .retry import RateLimiter, SharedBackoff
from .settings import Settings, load_settings, validate_kafka_config
from .verdict import Outcome, Verdict

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 15.0
"""Timeout of one metadata, offsets or group request to Kafka, seconds."""
READ_STALL_TIMEOUT_S = 15.0
"""Reading a range gives up when no record arrives for this many seconds."""
LAG_PROBE_TIMEOUT_S = 5.0
"""How long ``status`` waits for the record at a committed offset (its timestamp), seconds."""
H_REPLAYS = "erp_sync.replays"
"""Dead-letter header added by ``dlq replay``: how many times the dead letter was replayed."""
DLQ_REPLAY_GROUP_SUFFIX = ".dlq-replay"
_ERROR_HEADERS = frozenset({H_CLASS, H_CODE, H_MESSAGE, H_ATTEMPTS, H_REQUEST_ID, H_REPLAYS})
_STATE_NAMES = {
    "STABLE": "Stable",
    "EMPTY": "Empty",
    "DEAD": "Dead",
    "PREPARING_REBALANCING": "PreparingRebalance",
    "COMPLETING_REBALANCING": "CompletingRebalance",
}
_RESET_LATEST = frozenset({"latest", "largest", "end"})


# ------------------------------------------------------------------------------------------------ errors


class ToolError(Exception):
    """A runtime failure of a tool (exit code 1); the message says what failed and what to do."""

    exit_code = 1


class UsageError(ToolError):
    """A bad option, or a state of the cluster that forbids the operation (exit code 2)."""

    exit_code = 2


def _guarded(name: str, func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command: print tool and Kafka errors as one clear line and return their exit code.

    :class:`~consumer.errors.ConfigError` is left to ``erp-sync``'s ``main`` (exit code 2).
    """

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except ToolError as exc:
            print(f"erp-sync {name}: error: {exc}", file=sys.stderr)
            return exc.exit_code
        except KafkaException as exc:
            print(f"erp-sync {name}: Kafka error: {_kafka_text(exc)}", file=sys.stderr)
            return 1

    return run


def _kafka_text(exc: BaseException) -> str:
    arg = exc.args[0] if exc.args else exc
    if isinstance(arg, KafkaError):
        return f"{arg.name()}: {arg.str()}"
    return str(arg)


def _load_settings(needs_erp: bool = False) -> Settings:
    settings = load_settings()
    logs.setup(settings.log_format, settings.log_level)
    validate_kafka_config(settings)
    if needs_erp and not settings.erp_url:
        raise ConfigError("ERP_SYNC_ERP_URL: required to push (the ERP endpoint, e.g. "
                          "https://erp.example.com/apaas/push); --dry-run works without it")
    return settings


# ------------------------------------------------------------------------------------------------ Kafka


def reader_config(settings: Settings, purpose: str, group_id: str | None = None) -> dict[str, Any]:
    """Configuration of a consumer that reads with ``assign()`` and never joins the group.

    Args:
        settings: the configuration (security pass-through, isolation level…).
        purpose: appended to the client id (``lag``, ``replay``…).
        group_id: the group to commit to (``dlq replay``); None for a throw-away id that is never
            committed to (confluent-kafka requires one).

    Returns:
        A librdkafka configuration.
    """
    conf = settings.consumer_config()
    conf.update({
        "group.id": group_id or f"{settings.group_id}.tools-{uuid.uuid4().hex[:12]}",
        "client.id": f"{conf.get('client.id', 'apaas-erp-sync')}-{purpose}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "logger": logging.getLogger("librdkafka.tools"),
    })
    return conf


@dataclass(frozen=True, slots=True)
class Member:
    """One member of the consumer group.

    Attributes:
        member_id: the member id the coordinator gave it.
        client_id: the client's ``client.id``.
        host: the host it connected from (``/10.0.0.7``).
        group_instance_id: its static membership id, if any.
        partitions: its assigned partitions of the configured topic.
        other: its assigned partitions of other topics, as ``topic[partition]``.
    """

    member_id: str
    client_id: str
    host: str
    group_instance_id: str | None
    partitions: tuple[int, ...]
    other: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line naming the member: member id, client id, host and partitions."""
        parts = ",".join(map(str, self.partitions)) or "none"
        return f"member {self.member_id} (client {self.client_id}, host {self.host}, partitions {parts})"

    def to_json(self) -> dict[str, Any]:
        """The member as JSON."""
        return {"member_id": self.member_id, "client_id": self.client_id, "host": self.host,
                "group_instance_id": self.group_instance_id, "partitions": list(self.partitions),
                "other_assignments": list(self.other)}


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """The consumer group as the coordinator describes it.

    Attributes:
        state: ``Stable``, ``Empty``, ``Dead`` (unknown to the broker), ``PreparingRebalance``,
            ``CompletingRebalance`` or ``Unknown``.
        members: the active members.
    """

    state: str
    members: tuple[Member, ...]


class Cluster:
    """Admin and metadata queries for the tools; close it (or use it as a context manager).

    Args:
        settings: the configuration.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.admin: AdminClient = admin_client(settings)  # kept: futures fail once it is destroyed
        self._reader: Consumer | None = None

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the metadata consumer."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    @property
    def reader(self) -> Consumer:
        """A group-less consumer for watermarks and ``offsets_for_times``."""
        if self._reader is None:
            self._reader = Consumer(reader_config(self.settings, "meta"))
        return self._reader

    def partitions(self, topic: str, env_name: str = "ERP_SYNC_TOPIC") -> list[int] | None:
        """The topic's partition ids, sorted; None when the topic does not exist.

        Raises:
            ToolError: the metadata request failed (broker unreachable, no permission).
        """
        try:
            md = self.admin.list_topics(topic=topic, timeout=REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            raise ToolError(f"cannot read the metadata of topic {topic!r} from "
                            f"{self.settings.kafka_bootstrap_servers}: {_kafka_text(exc)}") from None
        meta = md.topics.get(topic)
        if meta is None or (meta.error is not None and meta.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
            return None
        if meta.error is not None:
            raise ToolError(f"topic {topic!r} ({env_name}): {meta.error.str()}")
        return sorted(meta.partitions)

    def require_partitions(self, topic: str, env_name: str = "ERP_SYNC_TOPIC") -> list[int]:
        """Like :meth:`partitions`, but a missing topic is a usage error (exit code 2)."""
        parts = self.partitions(topic, env_name)
        if parts is None:
            raise UsageError(f"topic {topic!r} does not exist (check {env_name} and "
                             f"ERP_SYNC_KAFKA_BOOTSTRAP_SERVERS={self.settings.kafka_bootstrap_servers})")
        return parts

    def watermarks(self, topic: str, partitions: Sequence[int]) -> dict[int, tuple[int, int]]:
        """``{partition: (low, high)}``: the first offset still stored and the next offset to be written."""
        out = {}
        for p in partitions:
            try:
                out[p] = self.reader.get_watermark_offsets(TopicPartition(topic, p), timeout=REQUEST_TIMEOUT_S)
            except KafkaException as exc:
                raise ToolError(f"cannot read the watermarks of {topic}[{p}]: {_kafka_text(exc)}") from None
        return out

    def committed(self, group: str, topic: str, partitions: Sequence[int]) -> dict[int, int | None]:
        """The group's committed offsets (next offset to read) by partition; None where it has none."""
        request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in partitions])
        try:
            future = self.admin.list_consumer_group_offsets([request], request_timeout=REQUEST_TIMEOUT_S)[group]
            result = future.result(timeout=REQUEST_TIMEOUT_S + 5)
        except KafkaException as exc:
            raise ToolError(f"cannot read the committed offsets of group {group!r}: {_kafka_text(exc)}") from None
        out: dict[int, int | None] = {p: None for p in partitions}
        for tp in result.topic_partitions or []:
            if tp.error is not None:
                raise ToolError(f"cannot read the committed offset of group {group!r} on "
                                f"{topic}[{tp.partition}]: {tp.error.str()}")
            out[tp.partition] = tp.offset if tp.offset >= 0 else None
        return out

    def group(self, group: str, topic: str) -> GroupInfo:
        """Describe the consumer group: state and active members with their assignments."""
        try:
            future = self.admin.describe_consumer_groups([group], request_timeout=REQUEST_TIMEOUT_S)[group]
            desc = future.result(timeout=REQUEST_TIMEOUT_S + 5)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.GROUP_ID_NOT_FOUND:
                return GroupInfo("Dead", ())
            raise ToolError(f"cannot describe group {group!r}: {_kafka_text(exc)}") from None
        members = []
        for m in desc.members or []:
            tps = list(m.assignment.topic_partitions or []) if m.assignment is not None else []
            mine = tuple(sorted(tp.partition for tp in tps if tp.topic == topic))
            other = tuple(sorted(f"{tp.topic}[{tp.partition}]" for tp in tps if tp.topic != topic))
            members.append(Member(m.member_id, m.client_id, m.host, m.group_instance_id, mine, other))
        state = getattr(desc, "state", None)
        state_name = getattr(state, "name", str(state))
        return GroupInfo(_STATE_NAMES.get(state_name, "Unknown"), tuple(members))

    def offsets_for_time(self, topic: str, partitions: Sequence[int], when_ms: int) -> dict[int, int | None]:
        """Per partition, the first offset whose timestamp is at or after ``when_ms`` (ms since the epoch).

        Returns:
            ``{partition: offset}``; None where no record is that recent.
        """
        try:
            found = self.reader.offsets_for_times([TopicPartition(topic, p, when_ms) for p in partitions],
                                                  timeout=REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            raise ToolError(f"cannot look up offsets by time on {topic}: {_kafka_text(exc)}") from None
        out: dict[int, int | None] = {}
        for tp in found:
            if tp.error is not None:
                raise ToolError(f"cannot look up offsets by time on {topic}[{tp.partition}]: {tp.error.str()}")
            out[tp.partition] = tp.offset if tp.offset >= 0 else None
        return out


def resume_position(committed: int | None, low: int, high: int, settings: Settings) -> int:
    """Where the group's consumer resumes a partition (an offset).

    That is the committed offset when it is still in the log, else the ``auto.offset.reset`` position:
    the low watermark, or the high one for ``latest``.
    """
    if committed is not None and low <= committed <= high:
        return committed
    policy = str(settings.consumer_config().get("auto.offset.reset", "earliest")).lower()
    return high if policy in _RESET_LATEST else low


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


# ------------------------------------------------------------------------------------------------ status


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    """One partition's line of ``status``.

    Attributes:
        partition: the partition id.
        committed: the group's committed offset (next offset to read); None when it has none.
        low: the low watermark (first offset still stored).
        high: the high watermark (next offset to be written).
        lag: messages not yet finished by the group: ``high - committed`` (``high - low`` without a
            committed offset).
        lag_seconds: age in seconds of the record at the committed offset; 0 when caught up; None when
            that record could not be read.
        owner: the member id of the member the partition is assigned to, if any.
    """

    partition: int
    committed: int | None
    low: int
    high: int
    lag: int
    lag_seconds: float | None
    owner: str | None


@dataclass(frozen=True, slots=True)
class StatusReport:
    """Everything ``status`` shows."""

    topic: str
    group: str
    group_info: GroupInfo
    partitions: tuple[PartitionStatus, ...]
    time: datetime

    @property
    def total_lag(self) -> int:
        """Sum of the partitions' lag, messages."""
        return sum(p.lag for p in self.partitions)

    @property
    def max_lag_seconds(self) -> float | None:
        """Largest lag in seconds over the partitions (None when none is known)."""
        known = [p.lag_seconds for p in self.partitions if p.lag_seconds is not None]
        return max(known) if known else None

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON document."""
        return {
            "topic": self.topic,
            "group": self.group,
            "time": self.time.isoformat(),
            "state": self.group_info.state,
            "members": [m.to_json() for m in self.group_info.members],
            "partitions": [
                {"partition": p.partition, "committed": p.committed, "low": p.low, "high": p.high,
                 "lag": p.lag, "lag_seconds": p.lag_seconds, "owner": p.owner}
                for p in self.partitions
            ],
            "total_lag": self.total_lag,
            "max_lag_seconds": self.max_lag_seconds,
        }


def status_report(settings: Settings) -> StatusReport:
    """Collect the status of the configured group on the configured topic.

    Raises:
        UsageError: the topic does not exist.
        ToolError: Kafka could not be queried.
    """
    topic, group = settings.topic, settings.group_id
    with Cluster(settings) as cluster:
        parts = cluster.require_partitions(topic)
        info = cluster.group(group, topic)
        marks = cluster.watermarks(topic, parts)
        committed = cluster.committed(group, topic, parts)
    positions = {p: resume_position(committed[p], *marks[p], settings) for p in parts}
    stamps = first_timestamps(settings, topic, {p: (positions[p], marks[p][1]) for p in parts})
    now = datetime.now(UTC)
    now_ms = _epoch_ms(now)
    owners = {p: m.member_id for m in info.members for p in m.partitions}
    rows = []
    for p in parts:
        low, high = marks[p]
        done = committed[p]
        lag = max(0, high - done) if done is not None else max(0, high - low)
        if positions[p] >= high:
            lag_s: float | None = 0.0
        else:
            ts = stamps[p]
            lag_s = round(max(0, now_ms - ts) / 1000, 3) if ts is not None else None
        rows.append(PartitionStatus(p, committed[p], low, high, lag, lag_s, owners.get(p)))
    return StatusReport(topic, group, info, tuple(rows), now)


def format_status(report: StatusReport) -> str:
    """Render a :class:`StatusReport` as aligned tables (partitions, then members)."""
    info = report.group_info
    count = len(info.members)
    state = info.state + (" (unknown to the broker: no member, no committed offset)" if info.state == "Dead" else "")
    lines = [f"Topic {report.topic}, group {report.group}: state {state}, "
             f"{count} active member{'s' if count != 1 else ''}", ""]
    clients = {m.member_id: f"{m.client_id} ({m.host})" for m in info.members}
    rows = [[str(p.partition), "-" if p.committed is None else str(p.committed), str(p.high), str(p.lag),
             "?" if p.lag_seconds is None else f"{p.lag_seconds:.1f}", clients.get(p.owner or "", "-")]
            for p in report.partitions]
    max_s = report.max_lag_seconds
    rows.append(["total", "", "", str(report.total_lag), "?" if max_s is None else f"{max_s:.1f}", ""])
    lines += _table(["PARTITION", "COMMITTED", "HIGH", "LAG", "LAG SECONDS", "OWNER"], rows, right={0, 1, 2, 3, 4})
    if any(p.committed is None for p in report.partitions):
        lines.append("(COMMITTED -: the group has no committed offset there; lag counts from where it would "
                     "start)")
    if any(p.lag_seconds is None for p in report.partitions):
        lines.append("(LAG SECONDS ?: the record at the committed offset could not be read within "
                     f"{LAG_PROBE_TIMEOUT_S:.0f} s, e.g. an open transaction)")
    lines.append("")
    if info.members:
        lines += _table(["MEMBER ID", "CLIENT ID", "HOST", "PARTITIONS"],
                        [[m.member_id, m.client_id, m.host, ",".join(map(str, m.partitions)) or "-"]
                         for m in info.members], right=set())
    else:
        lines.append("No active members.")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    """``erp-sync status [--json]``."""
    report = status_report(_load_settings())
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_status(report))
    return 0


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


def parse_time(text: str, option: str) -> tuple[datetime, bool]:
    """Parse an ISO 8601 date-time; one without a time zone is read as UTC.

    Returns:
        ``(aware datetime, was_naive)``.

    Raises:
        UsageError: not an ISO 8601 date-time.
    """
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{option} {text!r}: not an ISO 8601 date-time "
                         "(e.g. 2024-05-01T10:00:00+02:00 or 2024-05-01T08:00:00Z)") from None
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC), True
    return when, False


def _epoch_ms(when: datetime) -> int:
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _time_arg(text: str, option: str) -> tuple[datetime, int]:
    when, naive = parse_time(text, option)
    if naive:
        print(f"note: {option} {text} has no time zone: read as UTC ({when.isoformat()})", file=sys.stderr)
    return when, _epoch_ms(when)


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
        when, when_ms = _time_arg(args.to_datetime, "--to-datetime")
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


def _active_members_error(group: str, info: GroupInfo) -> UsageError:
    count = len(info.members)
    names = "\n".join(f"  {m.describe()}" for m in info.members)
    return UsageError(
        f"group {group} has {count} active member{'s' if count != 1 else ''} (state {info.state}); offsets "
        f"can only be reset while the group is empty: stop every `erp-sync run` of the group first, then "
        f"run this again.\n{names}")


def format_reset(settings: Settings, what: str, rows: Sequence[ResetRow], execute: bool) -> str:
    """Render a reset plan: per partition ``current → new`` and what it means."""
    mode = "" if execute else " (dry run)"
    lines = [f"Reset of group {settings.group_id} on topic {settings.topic} to {what}{mode}:"]
    table = []
    for r in rows:
        if r.reread:
            change = f"{_plural(r.reread, 'record')} will be re-read (approved ones pushed again)"
        elif r.skipped:
            change = f"{_plural(r.skipped, 'record')} will be skipped (never pushed)"
        else:
            change = "unchanged"
        if r.committed is None:
            change += f"; no committed offset: the group would start at {r.current}"
        if r.note:
            change += f" ({r.note})"
        table.append([str(r.partition), "-" if r.committed is None else str(r.committed), "→", str(r.new), change])
    lines += _table(["PARTITION", "CURRENT", "", "NEW", "CHANGE"], table, right={0, 1, 3})
    reread, skipped = sum(r.reread for r in rows), sum(r.skipped for r in rows)
    lines.append(f"Total: {_plural(reread, 'record')} will be re-read, {skipped} skipped.")
    if not execute:
        lines.append("Dry run: nothing was changed. Add --execute to apply.")
    return "\n".join(lines)


def cmd_reset_offsets(args: argparse.Namespace) -> int:
    """``erp-sync reset-offsets``: plan (and with ``--execute`` apply) new committed offsets."""
    if args.to_offset is not None and args.to_offset < 0:
        raise UsageError(f"--to-offset {args.to_offset}: an offset is >= 0")
    settings = _load_settings()
    topic, group = settings.topic, settings.group_id
    with Cluster(settings) as cluster:
        partitions = parse_partitions(args.partitions, cluster.require_partitions(topic), topic)
        info = cluster.group(group, topic)
        if info.members:
            raise _active_members_error(group, info)
        what, rows = plan_reset(args, settings, cluster, partitions)
        print(format_reset(settings, what, rows, args.execute))
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
            raise ToolError(f"the broker refused the new offsets of group {group}: {_kafka_text(exc)} "
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


# ------------------------------------------------------------------------------------------------ shared


class Progress:
    """A one-line progress bar on stderr: redrawn in place on a terminal, else a line every few seconds.

    Args:
        label: what is progressing (``replay``).
        total: the expected number of steps (records).
        stream: where to write; ``sys.stderr`` by default.
        interval_s: minimum seconds between two draws (0.1 on a terminal, 5 otherwise).
    """

    WIDTH = 30

    def __init__(self, label: str, total: int, stream: TextIO | None = None,
                 interval_s: float | None = None) -> None:
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.interval_s = interval_s if interval_s is not None else (0.1 if self.tty else 5.0)
        self.done = 0
        self.detail = ""
        self._last = time.monotonic()
        self._open = False

    def advance(self, steps: int = 1, detail: str | None = None) -> None:
        """Count ``steps`` more and redraw when due."""
        self.done += steps
        if detail is not None:
            self.detail = detail
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self._draw()

    def note(self, text: str) -> None:
        """Print a line of text above the bar."""
        if self._open:
            self.stream.write("\r\033[K")
            self._open = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line."""
        self._draw()
        if self._open:
            self.stream.write("\n")
            self._open = False
        self.stream.flush()

    def _line(self) -> str:
        frac = min(1.0, self.done / self.total) if self.total else 1.0
        filled = int(frac * self.WIDTH)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        return f"{self.label} [{bar}] {frac:4.0%} {self.done}/{self.total} {self.detail}".rstrip()

    def _draw(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + self._line())
            self._open = True
        else:
            self.stream.write(self._line() + "\n")
        self.stream.flush()


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


def deliver(erp: ErpClient, backoff: SharedBackoff, rate: RateLimiter | None, body: bytes, key: str,
            on_retry: Callable[[Verdict, float], None] | None = None) -> tuple[Verdict, int]:
    """Push one body until the ERP accepts or rejects it, backing off on *retry* answers.

    Args:
        erp: the ERP client.
        backoff: the shared exponential backoff (delays in seconds, from the settings).
        rate: the request-rate limit, if configured.
        body: the encoded ERP body.
        key: the ``Idempotency-Key``.
        on_retry: called with the *retry* verdict and the new backoff delay (seconds).

    Returns:
        ``(final verdict, attempts)``; the verdict is accepted or reject, never retry.
    """
    attempts = 0

    def never() -> bool:
        return False

    while True:
        permit = backoff.acquire(never)
        if permit is None:  # pragma: no cover - never() is never true
            raise AssertionError("backoff stopped")
        if rate is not None:
            rate.acquire(never)
        attempts += 1
        result = erp.post(body, key)
        if result.outcome is not Outcome.RETRY:
            backoff.success(permit)
            return result, attempts
        delay = backoff.failure(permit, result.retry_after_s)
        if on_retry is not None and delay is not None:
            on_retry(result, delay)


@dataclass
class _Pusher:
    """The ERP client, backoff and rate limit of one tool run (None in a dry run)."""

    erp: ErpClient
    backoff: SharedBackoff
    rate: RateLimiter | None

    @classmethod
    def create(cls, settings: Settings) -> _Pusher:
        return cls(ErpClient(settings, max_connections=1),
                   SharedBackoff(settings.retry_backoff_initial_seconds, settings.retry_backoff_max_seconds,
                                 settings.retry_after_max_seconds),
                   RateLimiter(settings.erp_max_requests_per_second) if settings.erp_max_requests_per_second
                   else None)

    def push(self, body: bytes, key: str, progress: Progress) -> tuple[Verdict, int]:
        def retrying(result: Verdict, delay: float) -> None:
            progress.note(f"ERP answered retry ({result.code}: {result.message or 'no message'}); "
                          f"retrying in {delay:.1f} s")

        return deliver(self.erp, self.backoff, self.rate, body, key, retrying)

    def close(self) -> None:
        self.erp.close()


@contextmanager
def _pusher(settings: Settings, dry_run: bool) -> Iterator[_Pusher | None]:
    pusher = None if dry_run else _Pusher.create(settings)
    try:
        yield pusher
    finally:
        if pusher is not None:
            pusher.close()


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    """Align columns (two spaces apart); columns in ``right`` are right-aligned."""
    all_rows = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header))]
    out = []
    for row in all_rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
    return out


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _instance_of(event: Mapping[str, Any] | None) -> str:
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
class ReplaySummary:
    """Counters of one ``replay``."""

    scanned: int = 0
    outside_window: int = 0
    not_selected: int = 0
    skipped: int = 0
    pushed: int = 0
    duplicates: int = 0
    would_push: int = 0
    failed: list[Failure] = field(default_factory=list)
    error: str | None = None
    interrupted: bool = False


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

    with _pusher(settings, dry_run) as pusher:
        def handle(msg: Message) -> Step:
            summary.scanned += 1
            p, offset = int(msg.partition() or 0), int(msg.offset() or 0)
            try:
                ts_type, ts = msg.timestamp()
                if ts_type == TIMESTAMP_NOT_AVAILABLE or not start_ms <= ts < end_ms:
                    summary.outside_window += 1
                    return Step.NEXT
                event: dict[str, Any] | None = None
                try:
                    event = events.decode(msg.value(), max_bytes=settings.max_value_bytes)
                    if instance_ids is not None and event.get("instance_id") not in instance_ids:
                        summary.not_selected += 1
                        return Step.NEXT
                    if not transform.is_pushed(event):
                        summary.skipped += 1
                        return Step.NEXT
                    body, key = transform.erp_request(event)
                except RecordError as exc:
                    summary.failed.append(Failure(p, offset, _instance_of(event), exc.error_class, exc.code,
                                                  exc.message))
                    return Step.NEXT
                if pusher is None:
                    summary.would_push += 1
                    print(f"would push: partition {p} offset {offset} instance {event['instance_id']} "
                          f"Idempotency-Key {key}", file=out)
                    return Step.NEXT
                result, attempts = pusher.push(body, key, progress)
                if result.outcome is Outcome.ACCEPTED:
                    if result.duplicate:
                        summary.duplicates += 1
                    else:
                        summary.pushed += 1
                else:
                    summary.failed.append(Failure(p, offset, str(event["instance_id"]), "erp", result.code,
                                                  f"{result.message or result.code} (after {attempts} attempts"
                                                  f"{', request ' + result.request_id if result.request_id else ''})"))
                return Step.NEXT
            finally:
                progress.advance(detail=_replay_detail(summary, dry_run))

        consumer = Consumer(reader_config(settings, "replay"))
        try:
            _read_into_summary(summary, consumer, topic, ranges, handle)
        finally:
            consumer.close()
            progress.close()
    return summary


def _read_into_summary(summary: ReplaySummary | DlqSummary, consumer: Consumer, topic: str,
                       ranges: Mapping[int, tuple[int, int]], handle: Callable[[Message], Step]) -> None:
    """:func:`read_ranges`, recording a ToolError or Ctrl-C in the summary instead of raising it."""
    try:
        read_ranges(consumer, topic, ranges, handle)
    except ToolError as exc:
        summary.error = str(exc)
    except KeyboardInterrupt:
        summary.interrupted = True


def _replay_detail(s: ReplaySummary, dry_run: bool) -> str:
    done = f"would push {s.would_push}" if dry_run else f"pushed {s.pushed + s.duplicates}"
    return f"{done}, skipped {s.skipped}, failed {len(s.failed)}"


def format_replay_summary(summary: ReplaySummary, topic: str, start: datetime, end: datetime,
                          instance_ids: set[int] | None, dry_run: bool) -> str:
    """Render the summary of a ``replay``."""
    only = f", only InstanceId {','.join(map(str, sorted(instance_ids)))}" if instance_ids else ""
    lines = [f"Replay of {topic} from {start.isoformat()} to {end.isoformat()} (record timestamps, end "
             f"excluded{only}){' (dry run: nothing sent)' if dry_run else ''}:",
             f"  records scanned: {summary.scanned}",
             f"  outside the window: {summary.outside_window}"]
    if instance_ids is not None:
        lines.append(f"  not selected (--instance-id): {summary.not_selected}")
    lines.append(f"  skipped (status not APPROVED): {summary.skipped}")
    if dry_run:
        lines.append(f"  would push: {summary.would_push}")
    else:
        lines.append(f"  pushed: {summary.pushed}")
        lines.append(f"  duplicates (ERP said already done): {summary.duplicates}")
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
    start, start_ms = _time_arg(args.from_, "--from")
    end, end_ms = _time_arg(args.to, "--to")
    if start_ms >= end_ms:
        raise UsageError(f"--from ({start.isoformat()}) must be before --to ({end.isoformat()})")
    settings = _load_settings(needs_erp=not args.dry_run)
    instance_ids = set(args.instance_id) if args.instance_id else None
    summary = replay_window(settings, start_ms, end_ms, instance_ids, args.dry_run, sys.stdout)
    print(format_replay_summary(summary, settings.topic, start, end, instance_ids, args.dry_run))
    if summary.interrupted:
        return 130
    if summary.error:
        raise ToolError(summary.error)
    return 1 if summary.failed else 0


# ------------------------------------------------------------------------------------------------ dlq replay


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
class DlqSummary:
    """The results of one ``dlq replay``."""

    topic: str
    group: str
    letters: list[LetterResult] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    limited: bool = False
    interrupted: bool = False
    missing: bool = False
    error: str | None = None

    def count(self, result: str) -> int:
        """How many dead letters ended with ``result``."""
        return sum(1 for letter in self.letters if letter.result == result)


def raw_headers(msg: Message) -> list[tuple[str, bytes | None]]:
    """A record's headers in order, values as bytes (a null value stays ``None``)."""
    raw: Any = msg.headers() or []
    items = raw.items() if isinstance(raw, dict) else raw
    return [(str(k), v.encode() if isinstance(v, str) else v) for k, v in items]


def letter_headers(msg: Message) -> dict[str, str]:
    """The ``erp_sync.*`` headers of a dead letter as text (the last value of a repeated name wins)."""
    return {k: (v or b"").decode("utf-8", "replace") for k, v in raw_headers(msg) if k.startswith("erp_sync.")}


def rewrite_headers(msg: Message, error: RecordError, attempts: int, replays: int) -> list[tuple[str, bytes | None]]:
    """Headers of a dead letter written back to the dead-letter topic.

    Its original headers and ``erp_sync.original.*`` stay unchanged, followed by fresh
    ``erp_sync.error.*``, ``erp_sync.attempts`` and ``erp_sync.replays``.

    Args:
        msg: the dead letter being replayed.
        error: why it failed again.
        attempts: ERP attempts so far, over the first delivery and every replay.
        replays: how many times it has now been replayed.
    """
    headers = [(k, v) for k, v in raw_headers(msg) if k not in _ERROR_HEADERS]
    headers += [
        (H_CLASS, error.error_class.encode()),
        (H_CODE, error.code.encode()),
        (H_MESSAGE, error.message.encode("utf-8", "replace")),
        (H_ATTEMPTS, str(attempts).encode()),
        (H_REPLAYS, str(replays).encode()),
    ]
    if isinstance(error, ErpRejectError) and error.request_id:
        headers.append((H_REQUEST_ID, error.request_id.encode("utf-8", "replace")))
    return headers


def _int_header(headers: Mapping[str, str], name: str) -> int:
    try:
        return int(headers.get(name, "0"))
    except ValueError:
        return 0


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
    summary = DlqSummary(dlq, group)
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

    def commit(msg: Message) -> None:
        if dry_run:
            return
        tp = TopicPartition(dlq, int(msg.partition() or 0), int(msg.offset() or 0) + 1)
        try:
            result = consumer.commit(offsets=[tp], asynchronous=False) or []
        except KafkaException as exc:
            raise ToolError(f"cannot commit the replay position {tp.offset} of {dlq}[{tp.partition}] for group "
                            f"{group}: {_kafka_text(exc)}; the next `dlq replay` handles that letter again") from None
        for r in result:
            if r.error is not None:
                raise ToolError(f"cannot commit the replay position of {dlq}[{r.partition}] for group {group}: "
                                f"{r.error.str()}")

    with _pusher(settings, dry_run) as pusher:
        def handle(msg: Message) -> Step:
            h = letter_headers(msg)
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
            attempts = _int_header(h, H_ATTEMPTS)
            try:
                event = events.decode(msg.value(), max_bytes=settings.max_value_bytes)
                if not transform.is_pushed(event):
                    record(_instance_of(event), "skipped", f"status {event.get('status')} is not pushed")
                    commit(msg)
                    return _after(msg)
                body, key = transform.erp_request(event)
            except RecordError as exc:
                error = exc
            if error is None and pusher is None:
                record(_instance_of(event), "would push", f"Idempotency-Key {key}")
                print(f"would push: dead letter {dlq}[{p}]@{offset} (from {origin[0]}[{origin[1]}]@{origin[2]}) "
                      f"instance {_instance_of(event)} Idempotency-Key {key}", file=out)
                return _after(msg)
            if error is None and pusher is not None:
                result, tries = pusher.push(body, key, progress)
                attempts += tries
                if result.outcome is Outcome.ACCEPTED:
                    record(_instance_of(event), "duplicate" if result.duplicate else "accepted",
                           result.code if result.duplicate else "")
                    commit(msg)
                    return _after(msg)
                error = ErpRejectError(result.code, result.message or result.code, result.request_id)
            assert error is not None
            if producer is None:
                record(_instance_of(event), "would fail again", f"{error.error_class} {error.code}: {error.message}")
                return _after(msg)
            replays = _int_header(h, H_REPLAYS) + 1
            _write_back(producer, dlq, msg, rewrite_headers(msg, error, attempts, replays))
            record(_instance_of(event), "failed again",
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
            _read_into_summary(summary, consumer, dlq, ranges, handle)
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
        lines += _table(["DLQ", "ORIGINAL TOPIC", "PARTITION", "OFFSET", "INSTANCE", "ERROR BEFORE", "RESULT"],
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
    total = f"Total: {_plural(len(summary.letters), 'dead letter')}"
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
    settings = _load_settings(needs_erp=not args.dry_run)
    summary = replay_dead_letters(settings, args.dry_run, args.error_class, args.limit, sys.stdout)
    print(format_dlq_summary(summary, args.dry_run, args.limit))
    if summary.interrupted:
        return 130
    if summary.error:
        raise ToolError(summary.error)
    return 1 if any(r.failed for r in summary.letters) else 0


# ------------------------------------------------------------------------------------------------ CLI

_STATUS_HELP = """\
Per partition of ERP_SYNC_TOPIC, for the group ERP_SYNC_GROUP_ID: the committed offset, the high
watermark, the lag (messages) and the lag in seconds (age of the record at the committed offset; 0
when caught up), and who owns the partition; then the group's state and active members (member id,
client id, host, partitions). Reads only: it never joins the group."""

_RESET_HELP = """\
Move the committed offsets of ERP_SYNC_GROUP_ID on ERP_SYNC_TOPIC: the topic replay. A dry run by
default: it prints, per partition, current → new offset and how many records will be re-read (new
below current; approved ones are pushed again, with the same Idempotency-Key) or skipped (new above
current). New offsets are clamped to [low, high] watermarks. --execute applies them.

Refused (exit 2) while the group has active members, named in the message: stop every
`erp-sync run` of the group first (scale the Deployment to 0), reset, then start them again."""

_REPLAY_HELP = """\
Re-push the approved records of ERP_SYNC_TOPIC whose Kafka timestamp is in [--from, --to) (for the day
the ERP lost data), or only the chosen InstanceIds in that window. The group's committed offsets are
not touched (a separate, group-less reader), so it can run while `erp-sync run` does. Each record is
pushed with its usual Idempotency-Key until the ERP accepts or rejects it (retry answers back off).
Rejected, undecodable and invalid records are listed in the summary and are NOT written to the
dead-letter topic. A progress bar goes to stderr, the summary to stdout.

Times are ISO 8601 (2024-05-01T08:00:00Z, 2024-05-01T10:00+02:00); without a time zone: UTC.
Exit codes: 0 all delivered; 1 some records failed (listed) or Kafka failed; 2 bad options."""

_DLQ_REPLAY_HELP = """\
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


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``status``, ``reset-offsets``, ``replay`` and ``dlq replay`` to ``erp-sync``'s subcommands.

    Args:
        subparsers: the ``add_subparsers()`` action of the ``erp-sync`` parser.
    """
    raw = argparse.RawDescriptionHelpFormatter

    status = subparsers.add_parser("status", help="per-partition offsets, lag and lag seconds; group members",
                                   description=_STATUS_HELP, formatter_class=raw)
    status.add_argument("--json", action="store_true", help="print a JSON document instead of tables")
    status.set_defaults(func=_guarded("status", cmd_status))

    reset = subparsers.add_parser("reset-offsets", help="move the group's committed offsets (topic replay)",
                                  description=_RESET_HELP, formatter_class=raw)
    target = reset.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-earliest", action="store_true", help="to the low watermark (re-read everything)")
    target.add_argument("--to-latest", action="store_true", help="to the high watermark (skip everything)")
    target.add_argument("--to-datetime", metavar="ISO8601",
                        help="to the first record at or after this time (no time zone: UTC)")
    target.add_argument("--to-offset", type=int, metavar="N", help="to offset N on every chosen partition")
    target.add_argument("--shift-by", type=int, metavar="N",
                        help="move by N records (negative: back, to re-read them)")
    reset.add_argument("--partitions", metavar="0,2", help="only these partitions (default: all)")
    reset.add_argument("--execute", action="store_true", help="apply the new offsets (default: dry run)")
    reset.set_defaults(func=_guarded("reset-offsets", cmd_reset_offsets))

    replay = subparsers.add_parser("replay", help="re-push a time window without touching the group's offsets",
                                   description=_REPLAY_HELP, formatter_class=raw)
    replay.add_argument("--from", dest="from_", required=True, metavar="ISO8601",
                        help="window start, included (Kafka record timestamp)")
    replay.add_argument("--to", required=True, metavar="ISO8601", help="window end, excluded")
    replay.add_argument("--instance-id", type=int, action="append", metavar="N",
                        help="only this InstanceId (repeat for more)")
    replay.add_argument("--dry-run", action="store_true",
                        help="print what would be pushed (InstanceId, Idempotency-Key); send nothing")
    replay.set_defaults(func=_guarded("replay", cmd_replay))

    dlq = subparsers.add_parser("dlq", help="dead-letter topic tools (dlq replay)",
                                description="Tools for the dead-letter topic.")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="{replay}")
    dlq_replay = dlq_sub.add_parser("replay", help="re-push dead letters; failures go back to the DLQ",
                                    description=_DLQ_REPLAY_HELP, formatter_class=raw)
    dlq_replay.add_argument("--dry-run", action="store_true",
                            help="print what would be pushed; push, write and commit nothing")
    dlq_replay.add_argument("--class", dest="error_class", choices=("decode", "validation", "erp"),
                            help="only dead letters of this class (erp_sync.error.class)")
    dlq_replay.add_argument("--limit", type=int, metavar="N", help="replay at most N dead letters")
    dlq_replay.set_defaults(func=_guarded("dlq replay", cmd_dlq_replay))
