"""``erp-sync status``: per partition offsets, lag and owner; retry topics; members; dead letters; routes.

The owner of a partition is the member id the group coordinator gave the consumer (two consumers on
one host share a client id and a host, never a member id). Members are as the coordinator sees them:
a consumer that died without leaving stays a member until its session times out, and ``status``
says so. The dead-letter topic is shown with its growth (letters written in the last hour and day)
and what ``dlq replay`` has not replayed yet (its group's position and commit metadata).

With several source topics (``ERP_SYNC_TOPIC=a,b``) the partitions shown are the first topic's, as
for every tool. Each source topic's retry topic (``ERP_SYNC_RETRY_TOPIC``, ``<topic>.retry``) is read
by the same group, so it gets the same lines per partition (its lag in seconds counts from when the
record at the committed offset was parked); a retry topic that does not exist is one line
(``erp-sync create-topics`` makes it). Then each route of the routes file (or the default route of
``ERP_SYNC_ERP_URL``): its URL (credentials and query masked), the records parked for it (the retry
topics' records from the group's committed offsets to their ends, less those the commit's metadata
names as finished, whose ``erp_sync.route`` header names it), the oldest one's first failure
(``erp_sync.first_failure``) and the time left to its retry deadline or, when sooner, to the retry
topic's retention: ``delivering`` or ``parked (N records, oldest X ago, deadline in Y)``. Reading
the retry topics is bounded (:mod:`.parked`: 100,000 records per partition, 10 s): beyond that the
counts are lower bounds ("at least"). Without a routes file and without ``ERP_SYNC_ERP_URL`` (or
with a routes file that does not load) the routes are left out with a one-line note: ``status``
needs no ERP settings.

``status`` sees only what is in Kafka. The circuit state of a route (its ERP not ready for anyone)
lives in the consumers: metric ``erp_sync_route_circuit_open{route}``. A route with nothing parked
may be failing right now, and a route with parked records may be delivering them.

``--json`` prints one document; its keys are stable:

- ``topic``, ``group``, ``time`` (ISO 8601), ``state`` (the group's), ``members`` (``member_id``,
  ``client_id``, ``host``, ``group_instance_id``, ``partitions``, ``other_assignments``),
  ``session_timeout_ms``;
- ``partitions``: per partition of the source topic ``partition``, ``committed`` (null: none),
  ``low``, ``high``, ``lag``, ``lag_seconds`` (null: unknown), ``owner`` (member id or null);
  ``total_lag``, ``max_lag_seconds``;
- ``dead_letters``: null when the topic does not exist, else ``topic``, ``replay_group``,
  ``letters``, ``last_hour``, ``last_24h``, ``not_replayed`` and ``partitions``;
- ``retry_topics``: one per source topic (``[]`` when ``ERP_SYNC_RETRY_TOPIC=none``): ``source``,
  ``topic``, ``exists``, ``parking`` (whether the consumers park into it and read it),
  ``parking_off`` (why not, although it exists; else null), ``retention_seconds`` (-1 unlimited,
  null unknown), ``partitions`` (as the source's; ``[]`` when it does not exist), ``total_lag``,
  ``max_lag_seconds``;
- ``routes``: null when not shown (then ``routes_note`` says why), else per route ``name``, ``url``
  (masked; null for a route only parked records name), ``configured`` (false: not in the routes,
  only named by parked records), ``state`` (``delivering`` | ``parked``), ``parked``,
  ``parked_complete`` (false: ``parked`` is a lower bound), ``oldest_first_failure`` (ISO 8601 or
  null), ``oldest_age_seconds``, ``retry_deadline_seconds``, ``deadline_in_seconds`` (negative: past
  it), ``retention_in_seconds`` (null: unlimited or unknown), ``summary`` (the text of the state);
- ``routes_note``: null, or why the routes are not shown;
- ``parked_scan``: null when no retry topic was read, else ``complete``, ``records_read``,
  ``unread``, ``max_records_per_partition``, ``timeout_seconds``.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..delivery.offsets import Ranges, decode_finished
from ..errors import ConfigError
from ..kafka import topic_retention_seconds
from ..routes import RouteTable, load_routes
from ..settings import Settings
from .cluster import LAG_PROBE_TIMEOUT_S, Cluster, GroupInfo, resume_position, tool_settings
from .console import epoch_ms, plural, span, table
from .dlq_replay import DLQ_REPLAY_GROUP_SUFFIX
from .parked import (
    ParkedTally,
    RouteStatus,
    ScanResult,
    format_routes,
    read_parked,
    route_statuses,
)
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

    def to_json(self) -> dict[str, Any]:
        """The partition as JSON."""
        return {"partition": self.partition, "committed": self.committed, "low": self.low, "high": self.high,
                "lag": self.lag, "lag_seconds": self.lag_seconds, "owner": self.owner}


def total_lag(partitions: tuple[PartitionStatus, ...]) -> int:
    """Sum of the partitions' lag, messages."""
    return sum(p.lag for p in partitions)


def max_lag_seconds(partitions: tuple[PartitionStatus, ...]) -> float | None:
    """Largest lag in seconds over the partitions (None when none is known)."""
    known = [p.lag_seconds for p in partitions if p.lag_seconds is not None]
    return max(known) if known else None


@dataclass(frozen=True, slots=True)
class RetryTopicStatus:
    """The retry topic of one source topic: where its records are parked, read by the same group.

    Attributes:
        source: the source topic.
        topic: its retry topic (``ERP_SYNC_RETRY_TOPIC``, ``<source>.retry`` by default).
        exists: whether the retry topic exists.
        partitions: its partitions' lines, as the source's (empty when it does not exist).
        retention_seconds: its ``retention.ms`` in seconds; -1 unlimited; None unknown.
        parking_off: why the consumers neither park into it nor read it although it exists (``""``: they do).
    """

    source: str
    topic: str
    exists: bool
    partitions: tuple[PartitionStatus, ...] = ()
    retention_seconds: float | None = None
    parking_off: str = ""

    def to_json(self) -> dict[str, Any]:
        """The retry topic as JSON."""
        return {"source": self.source, "topic": self.topic, "exists": self.exists,
                "parking": self.exists and not self.parking_off, "parking_off": self.parking_off or None,
                "retention_seconds": self.retention_seconds,
                "partitions": [p.to_json() for p in self.partitions],
                "total_lag": total_lag(self.partitions), "max_lag_seconds": max_lag_seconds(self.partitions)}


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
        retry_topics: the retry topic of each source topic (none when ``ERP_SYNC_RETRY_TOPIC=none``).
        routes: each route's state; None when the routes could not be loaded (see ``routes_note``).
        routes_where: where the routes come from (the routes file, or ``ERP_SYNC_ERP_URL``).
        routes_note: why the routes are not shown (``""`` when they are).
        scan: how far the retry topics were read (None: nothing to read).
    """

    topic: str
    group: str
    group_info: GroupInfo
    partitions: tuple[PartitionStatus, ...]
    time: datetime
    dead_letters: DlqStatus | None = None
    dlq_topic: str = ""
    session_timeout_ms: int = LIBRDKAFKA_SESSION_TIMEOUT_MS
    retry_topics: tuple[RetryTopicStatus, ...] = ()
    routes: tuple[RouteStatus, ...] | None = None
    routes_where: str = ""
    routes_note: str = ""
    scan: ScanResult | None = None

    @property
    def total_lag(self) -> int:
        """Sum of the partitions' lag, messages."""
        return total_lag(self.partitions)

    @property
    def max_lag_seconds(self) -> float | None:
        """Largest lag in seconds over the partitions (None when none is known)."""
        return max_lag_seconds(self.partitions)

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON document."""
        return {
            "topic": self.topic,
            "group": self.group,
            "time": self.time.isoformat(),
            "state": self.group_info.state,
            "members": [m.to_json() for m in self.group_info.members],
            "session_timeout_ms": self.session_timeout_ms,
            "partitions": [p.to_json() for p in self.partitions],
            "total_lag": self.total_lag,
            "max_lag_seconds": self.max_lag_seconds,
            "dead_letters": self.dead_letters.to_json() if self.dead_letters is not None else None,
            "retry_topics": [r.to_json() for r in self.retry_topics],
            "routes": None if self.routes is None else [r.to_json() for r in self.routes],
            "routes_note": self.routes_note or None,
            "parked_scan": None if self.scan is None else {
                "complete": self.scan.complete, "records_read": self.scan.tally.read, "unread": self.scan.unread,
                "max_records_per_partition": self.scan.max_records, "timeout_seconds": self.scan.timeout_s},
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


def now_utc() -> datetime:
    """The time a status is taken at (a seam for tests)."""
    return datetime.now(UTC)


def partition_rows(settings: Settings, topic: str, parts: list[int], marks: dict[int, tuple[int, int]],
                   committed: dict[int, int | None], owners: dict[int, str],
                   now_ms: int) -> tuple[PartitionStatus, ...]:
    """The partition lines of a topic the group reads (a source or a retry topic).

    The lag in seconds is the age of the record the group resumes at (its timestamp: when it was
    produced, for a retry topic when it was parked).
    """
    positions = {p: resume_position(committed[p], *marks[p], settings) for p in parts}
    stamps = first_timestamps(settings, topic, {p: (positions[p], marks[p][1]) for p in parts})
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
    return tuple(rows)


@dataclass
class RetryTopicRead:
    """What the cluster said about one retry topic (collected inside the :class:`Cluster` block)."""

    source: str
    topic: str
    parts: list[int] | None
    source_parts: int | None
    marks: dict[int, tuple[int, int]]
    committed: dict[int, tuple[int | None, str]]


def parking_off_reason(settings: Settings, retry: RetryTopicRead) -> str:
    """Why the consumers neither park into an existing retry topic nor read it, or ``""`` (as ``run`` decides)."""
    strategy = str(settings.consumer_config().get("partition.assignment.strategy", "range,roundrobin"))
    if retry.source_parts is None:
        return f"its source topic {retry.source} does not exist"
    if retry.parts is not None and len(retry.parts) != retry.source_parts:
        return (f"it has {plural(len(retry.parts), 'partition')}, its source {retry.source} {retry.source_parts} "
                "(they must match)")
    if not strategy.startswith("range"):
        return f"partition.assignment.strategy is {strategy}; parking needs range"
    return ""


def load_status_routes(settings: Settings) -> tuple[RouteTable | None, str, str]:
    """The routes to show: ``(table, where they come from, why not shown)``; status needs no ERP settings."""
    if settings.routes_file is None and not settings.erp_url:
        return None, "", ("Routes: not shown: ERP_SYNC_ERP_URL is not set and there is no ERP_SYNC_ROUTES_FILE "
                          "(status needs neither).")
    try:
        route_table = load_routes(settings)
    except ConfigError as exc:
        return None, "", f"Routes: not shown: {exc}"
    where = f"ERP_SYNC_ROUTES_FILE {settings.routes_file}" if settings.routes_file is not None else \
        "the default route: ERP_SYNC_ERP_URL"
    return route_table, where, ""


def status_report(settings: Settings) -> StatusReport:
    """Collect the status of the configured group on the configured topic, its retry topics and routes.

    Raises:
        UsageError: the topic does not exist.
        ToolError: Kafka could not be queried.
    """
    topic, group = settings.primary_topic, settings.group_id  # ERP_SYNC_TOPIC may list several: the first
    now = now_utc()
    now_ms = epoch_ms(now)
    retries: list[RetryTopicRead] = []
    with Cluster(settings) as cluster:
        parts = cluster.require_partitions(topic)
        info = cluster.group(group, topic)
        marks = cluster.watermarks(topic, parts)
        committed = cluster.committed(group, topic, parts)
        dead_letters = dlq_status(settings, cluster, now_ms)
        for source in settings.topics:
            retry = settings.retry_topic_of(source)
            if retry is None:
                continue
            retry_parts = cluster.partitions(retry, "ERP_SYNC_RETRY_TOPIC")
            source_parts = parts if source == topic else cluster.partitions(source)
            read = RetryTopicRead(source, retry, retry_parts, None if source_parts is None else len(source_parts),
                                  {}, {})
            if retry_parts is not None:
                read.marks = cluster.watermarks(retry, retry_parts)
                read.committed = cluster.committed_with_metadata(group, retry, retry_parts)
            retries.append(read)
    owners = {p: m.member_id for m in info.members for p in m.partitions}
    rows = partition_rows(settings, topic, parts, marks, committed, owners, now_ms)

    retry_topics = []
    ranges: dict[tuple[str, int], tuple[int, int]] = {}
    finished: dict[tuple[str, int], Ranges] = {}
    retention_ms: dict[str, int | None] = {}
    for read in retries:
        if read.parts is None:
            retry_topics.append(RetryTopicStatus(read.source, read.topic, False))
            continue
        retention = topic_retention_seconds(settings, read.topic)
        retention_ms[read.topic] = None if retention is None or retention < 0 else int(retention * 1000)
        retry_committed = {p: read.committed[p][0] for p in read.parts}
        retry_owners = {p: m.member_id for m in info.members for p in m.partitions_of(read.topic)}
        retry_topics.append(RetryTopicStatus(
            read.source, read.topic, True,
            partition_rows(settings, read.topic, read.parts, read.marks, retry_committed, retry_owners, now_ms),
            retention, parking_off_reason(settings, read)))
        for p in read.parts:
            position, metadata = read.committed[p]
            start = resume_position(position, *read.marks[p], settings)
            ranges[(read.topic, p)] = (start, read.marks[p][1])
            if position is not None and start == position:
                finished[(read.topic, p)] = decode_finished(metadata, position)

    routes_table, where, note = load_status_routes(settings)
    routes = None
    scan = None
    if routes_table is not None:
        if ranges:
            scan = read_parked(settings, ranges, ParkedTally(finished, retention_ms))
        routes = route_statuses(routes_table, scan, now_ms)
    return StatusReport(topic, group, info, rows, now, dead_letters, settings.dead_letter_topic,
                        session_timeout_ms(settings), tuple(retry_topics), routes, where, note, scan)


def format_status(report: StatusReport) -> str:
    """Render a :class:`StatusReport` as aligned tables (partitions, members, dead letters)."""
    info = report.group_info
    state = info.state + (" (unknown to the broker: no member, no committed offset)" if info.state == "Dead" else "")
    lines = [f"Topic {report.topic}, group {report.group}: state {state}, "
             f"{plural(len(info.members), 'active member')}", ""]
    lines += partition_table("PARTITION", report.partitions)
    if any(p.committed is None for p in report.partitions):
        lines.append("(COMMITTED -: the group has no committed offset there; lag counts from where it would "
                     "start)")
    if any(p.lag_seconds is None for p in report.partitions):
        lines.append("(LAG SECONDS ?: the record at the committed offset could not be read within "
                     f"{LAG_PROBE_TIMEOUT_S:.0f} s, e.g. an open transaction)")
    lines.append("")
    lines += format_retry_topics(report)
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
    lines.append("")
    if report.routes is None:
        lines.append(report.routes_note)
    else:
        lines += format_routes(report.routes, report.routes_where, report.scan)
    return "\n".join(lines)


def partition_table(first: str, partitions: tuple[PartitionStatus, ...]) -> list[str]:
    """A table of partition lines (committed, high, lag, lag seconds, owner) with its total line."""
    rows = [[str(p.partition), "-" if p.committed is None else str(p.committed), str(p.high), str(p.lag),
             "?" if p.lag_seconds is None else f"{p.lag_seconds:.1f}", p.owner or "-"]
            for p in partitions]
    max_s = max_lag_seconds(partitions)
    rows.append(["total", "", "", str(total_lag(partitions)), "?" if max_s is None else f"{max_s:.1f}", ""])
    return table([first, "COMMITTED", "HIGH", "LAG", "LAG SECONDS", "OWNER (MEMBER ID)"], rows,
                 right={0, 1, 2, 3, 4})


def retention_text(seconds: float | None) -> str:
    """A topic's retention: ``7d 0h``, ``unlimited`` or ``unknown``."""
    if seconds is None:
        return "unknown"
    return "unlimited" if seconds < 0 else span(seconds)


def format_retry_topics(report: StatusReport) -> list[str]:
    """The retry topics' lines of ``status``: per retry partition as per source partition."""
    if not report.retry_topics:
        return ["Retry topics: none (ERP_SYNC_RETRY_TOPIC=none: parking is off; records their ERP keeps refusing "
                "wait in place).", ""]
    lines: list[str] = []
    for retry in report.retry_topics:
        if not retry.exists:
            lines += [f"Retry topic {retry.topic}: does not exist (`erp-sync create-topics` makes it); until then "
                      f"records of {retry.source} that their ERP keeps refusing wait in place.", ""]
            continue
        lines += [f"Retry topic {retry.topic}: records parked from {retry.source}, read by group {report.group} like "
                  f"its source; retention {retention_text(retry.retention_seconds)}", ""]
        lines += partition_table("RETRY PARTITION", retry.partitions)
        lines.append("(LAG SECONDS of a retry partition: since the record at its committed offset was parked.)")
        if retry.parking_off:
            lines.append(f"(The consumers neither park into it nor read it: {retry.parking_off}.)")
        lines.append("")
    return lines


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
