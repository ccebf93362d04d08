"""``erp-sync status``: per partition offsets, lag and owner; the group's members; the dead-letter topic.

With several source topics (``ERP_SYNC_TOPIC=a,b``) the partitions shown are the first topic's, as
for every tool.

The owner of a partition is the member id the group coordinator gave the consumer (two consumers on
one host share a client id and a host, never a member id). Members are as the coordinator sees them:
a consumer that died without leaving stays a member until its session times out, and ``status``
says so. The dead-letter topic is shown with its growth (letters written in the last hour and day)
and what ``dlq replay`` has not replayed yet (its group's position and commit metadata).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..delivery.offsets import decode_finished
from ..settings import Settings
from .cluster import LAG_PROBE_TIMEOUT_S, Cluster, GroupInfo, resume_position, tool_settings
from .console import epoch_ms, plural, table
from .dlq_replay import DLQ_REPLAY_GROUP_SUFFIX
from .reading import first_timestamps

LIBRDKAFKA_SESSION_TIMEOUT_MS = 45_000
"""librdkafka's default ``session.timeout.ms`` (when the configuration does not set it)."""
HOUR_MS = 3_600_000

log = logging.getLogger(__name__)

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
class DlqPartitionStatus:
    """One partition of the dead-letter topic.

    Attributes:
        partition: the partition id.
        low, high: its watermarks (letters stored: ``high - low``).
        last_hour, last_day: letters written in the last hour and the last 24 hours.
        replay_position: the ``dlq replay`` group's committed offset (the first letter not done), or None.
        not_replayed: letters stored that ``dlq replay`` has not done yet.
    """

    partition: int
    low: int
    high: int
    last_hour: int
    last_day: int
    replay_position: int | None
    not_replayed: int

    def to_json(self) -> dict[str, Any]:
        """The partition as JSON."""
        return {"partition": self.partition, "low": self.low, "high": self.high, "letters": self.high - self.low,
                "last_hour": self.last_hour, "last_24h": self.last_day, "replay_position": self.replay_position,
                "not_replayed": self.not_replayed}


@dataclass(frozen=True, slots=True)
class DlqStatus:
    """The dead-letter topic: its letters, its growth, and what ``dlq replay`` has not done yet."""

    topic: str
    replay_group: str
    partitions: tuple[DlqPartitionStatus, ...]

    def total(self, name: str) -> int:
        """The sum of a count over the partitions (``letters``, ``last_hour``, ``last_24h``, ``not_replayed``)."""
        return sum(int(p.to_json()[name]) for p in self.partitions)

    def to_json(self) -> dict[str, Any]:
        """The dead-letter topic as JSON."""
        return {"topic": self.topic, "replay_group": self.replay_group,
                **{name: self.total(name) for name in ("letters", "last_hour", "last_24h", "not_replayed")},
                "partitions": [p.to_json() for p in self.partitions]}


@dataclass(frozen=True, slots=True)
class StatusReport:
    """Everything ``status`` shows.

    Attributes:
        dead_letters: the dead-letter topic, None when it does not exist.
        dlq_topic: its name (configured).
        session_timeout_ms: how long a consumer that died stays a member.
    """

    topic: str
    group: str
    group_info: GroupInfo
    partitions: tuple[PartitionStatus, ...]
    time: datetime
    dead_letters: DlqStatus | None = None
    dlq_topic: str = ""
    session_timeout_ms: int = LIBRDKAFKA_SESSION_TIMEOUT_MS

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
            "session_timeout_ms": self.session_timeout_ms,
            "partitions": [
                {"partition": p.partition, "committed": p.committed, "low": p.low, "high": p.high,
                 "lag": p.lag, "lag_seconds": p.lag_seconds, "owner": p.owner}
                for p in self.partitions
            ],
            "total_lag": self.total_lag,
            "max_lag_seconds": self.max_lag_seconds,
            "dead_letters": self.dead_letters.to_json() if self.dead_letters is not None else None,
        }


def session_timeout_ms(settings: Settings) -> int:
    """The consumers' ``session.timeout.ms`` (``ERP_SYNC_KAFKA_CONSUMER_SESSION_TIMEOUT_MS``…)."""
    try:
        return int(settings.consumer_config().get("session.timeout.ms", LIBRDKAFKA_SESSION_TIMEOUT_MS))
    except (TypeError, ValueError):
        return LIBRDKAFKA_SESSION_TIMEOUT_MS


def dlq_status(settings: Settings, cluster: Cluster, now_ms: int) -> DlqStatus | None:
    """The dead-letter topic's letters, growth and replay position; None when it does not exist."""
    topic = settings.dead_letter_topic
    parts = cluster.partitions(topic, "ERP_SYNC_DLQ_TOPIC")
    if parts is None:
        return None
    group = settings.group_id + DLQ_REPLAY_GROUP_SUFFIX
    marks = cluster.watermarks(topic, parts)
    hour = cluster.offsets_for_time(topic, parts, now_ms - HOUR_MS)
    day = cluster.offsets_for_time(topic, parts, now_ms - 24 * HOUR_MS)
    replay = cluster.committed_with_metadata(group, topic, parts)
    rows = []
    for p in parts:
        low, high = marks[p]
        position, metadata = replay[p]
        start = low if position is None else min(high, max(low, position))
        done = sum(max(0, min(end, high) - max(begin, start)) for begin, end in
                   (decode_finished(metadata, position) if position is not None else []))
        since_hour, since_day = hour[p], day[p]
        rows.append(DlqPartitionStatus(p, low, high, 0 if since_hour is None else max(0, high - since_hour),
                                       0 if since_day is None else max(0, high - since_day), position,
                                       max(0, high - start - done)))
    return DlqStatus(topic, group, tuple(rows))


def status_report(settings: Settings) -> StatusReport:
    """Collect the status of the configured group on the configured topic.

    Raises:
        UsageError: the topic does not exist.
        ToolError: Kafka could not be queried.
    """
    topic, group = settings.primary_topic, settings.group_id  # ERP_SYNC_TOPIC may list several: the first
    now = datetime.now(UTC)
    now_ms = epoch_ms(now)
    with Cluster(settings) as cluster:
        parts = cluster.require_partitions(topic)
        info = cluster.group(group, topic)
        marks = cluster.watermarks(topic, parts)
        committed = cluster.committed(group, topic, parts)
        dead_letters = dlq_status(settings, cluster, now_ms)
    positions = {p: resume_position(committed[p], *marks[p], settings) for p in parts}
    stamps = first_timestamps(settings, topic, {p: (positions[p], marks[p][1]) for p in parts})
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
    return StatusReport(topic, group, info, tuple(rows), now, dead_letters, settings.dead_letter_topic,
                        session_timeout_ms(settings))


def format_status(report: StatusReport) -> str:
    """Render a :class:`StatusReport` as aligned tables (partitions, members, dead letters)."""
    info = report.group_info
    state = info.state + (" (unknown to the broker: no member, no committed offset)" if info.state == "Dead" else "")
    lines = [f"Topic {report.topic}, group {report.group}: state {state}, "
             f"{plural(len(info.members), 'active member')}", ""]
    rows = [[str(p.partition), "-" if p.committed is None else str(p.committed), str(p.high), str(p.lag),
             "?" if p.lag_seconds is None else f"{p.lag_seconds:.1f}", p.owner or "-"]
            for p in report.partitions]
    max_s = report.max_lag_seconds
    rows.append(["total", "", "", str(report.total_lag), "?" if max_s is None else f"{max_s:.1f}", ""])
    lines += table(["PARTITION", "COMMITTED", "HIGH", "LAG", "LAG SECONDS", "OWNER (MEMBER ID)"], rows,
                   right={0, 1, 2, 3, 4})
    if any(p.committed is None for p in report.partitions):
        lines.append("(COMMITTED -: the group has no committed offset there; lag counts from where it would "
                     "start)")
    if any(p.lag_seconds is None for p in report.partitions):
        lines.append("(LAG SECONDS ?: the record at the committed offset could not be read within "
                     f"{LAG_PROBE_TIMEOUT_S:.0f} s, e.g. an open transaction)")
    lines.append("")
    if info.members:
        lines += table(["MEMBER ID", "CLIENT ID", "HOST", "PARTITIONS"],
                        [[m.member_id, m.client_id, m.host, ",".join(map(str, m.partitions)) or "-"]
                         for m in info.members], right=set())
        lines.append(f"(Members as the group coordinator sees them: a consumer that died without leaving (kill -9, a "
                     f"lost node) is still shown as active, and keeps its partitions, until its session times out: "
                     f"session.timeout.ms {report.session_timeout_ms} here.)")
    else:
        lines.append("No active members.")
    lines.append("")
    lines += format_dead_letters(report)
    return "\n".join(lines)


def format_dead_letters(report: StatusReport) -> list[str]:
    """The dead-letter topic's lines of ``status``."""
    dlq = report.dead_letters
    if dlq is None:
        return [f"Dead-letter topic {report.dlq_topic}: does not exist (nothing was ever dead-lettered, or "
                "ERP_SYNC_DLQ_TOPIC names another topic)."]
    lines = [f"Dead-letter topic {dlq.topic}: {plural(dlq.total('letters'), 'letter')}, "
             f"{dlq.total('last_hour')} written in the last hour, {dlq.total('last_24h')} in the last 24 h; "
             f"{dlq.total('not_replayed')} not replayed yet by `erp-sync dlq replay` (group {dlq.replay_group})", ""]
    rows = [[str(p.partition), str(p.low), str(p.high), str(p.last_hour), str(p.last_day),
             "-" if p.replay_position is None else str(p.replay_position), str(p.not_replayed)]
            for p in dlq.partitions]
    lines += table(["DLQ PARTITION", "LOW", "HIGH", "LAST HOUR", "LAST 24 H", "REPLAY POSITION", "NOT REPLAYED"],
                   rows, right=set(range(7)))
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    """``erp-sync status [--json]``."""
    report = status_report(tool_settings())
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_status(report))
    return 0


STATUS_HELP = """\
Per partition of ERP_SYNC_TOPIC (the first one when it lists several), for the group
ERP_SYNC_GROUP_ID: the committed offset, the high watermark, the lag (messages) and the lag in
seconds (age of the record at the committed offset; 0 when caught up), and the member that owns the
partition (its member id: consumers on one host share a client id); then the group's state and
active members (member id, client id, host, partitions). A consumer that died without leaving is
still listed until its session times out (session.timeout.ms). Then the dead-letter topic: letters
stored, written in the last hour and 24 h, and not replayed yet by `erp-sync dlq replay` (its
group's position). Reads only: it never joins the group."""
