"""``erp-sync status``: per partition offsets, lag and owner; the group's members."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..settings import Settings
from .cluster import LAG_PROBE_TIMEOUT_S, Cluster, GroupInfo, resume_position, tool_settings
from .console import epoch_ms, table
from .reading import first_timestamps

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
    now_ms = epoch_ms(now)
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
    lines += table(["PARTITION", "COMMITTED", "HIGH", "LAG", "LAG SECONDS", "OWNER"], rows, right={0, 1, 2, 3, 4})
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
    else:
        lines.append("No active members.")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    """``erp-sync status [--json]``."""
    report = status_report(tool_settings())
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_status(report))
    return 0


STATUS_HELP = """\
Per partition of ERP_SYNC_TOPIC, for the group ERP_SYNC_GROUP_ID: the committed offset, the high
watermark, the lag (messages) and the lag in seconds (age of the record at the committed offset; 0
when caught up), and who owns the partition; then the group's state and active members (member id,
client id, host, partitions). Reads only: it never joins the group."""

