"""The routes part of ``erp-sync status``: what each route has parked, read from the retry topics.

A parked record waits in the retry topic of its source topic (``<topic>.retry``), which the consumer
group reads like its source. Those still to be delivered are the records from the group's committed
offset of each retry partition to its high watermark, less the offsets the commit's metadata names
as finished (:func:`~consumer.delivery.offsets.decode_finished`), exactly as the consumer's own scan
at assignment counts them (:mod:`consumer.delivery.parking`). Each is counted for the route its
``erp_sync.route`` header names; ``erp_sync.first_failure`` (Unix ms) says when it first failed, and
its retry deadline counts from there; its timestamp is when it was parked, and the retry topic's
``retention.ms`` counts from there.

The scan is bounded so that ``status`` stays fast on a big backlog: at most
:data:`MAX_SCAN_RECORDS` records per partition and :data:`SCAN_TIMEOUT_S` seconds in all; beyond
that, counts are lower bounds ("at least").

Only Kafka is read. The circuit state (whether a route's ERP answers now) lives in the consumers
(metric ``erp_sync_route_circuit_open{route}``): a route with nothing parked may be failing right
now, and a route with parked records may be delivering them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, TopicPartition

from ..delivery.offsets import Ranges, in_ranges
from ..delivery.parking import parked_identity
from ..routes import RouteTable
from ..settings import redact_url
from .cluster import reader_config
from .console import plural, span, table

MAX_SCAN_RECORDS = 100_000
"""The most records ``status`` reads per retry partition."""
SCAN_TIMEOUT_S = 10.0
"""The longest ``status`` reads the retry topics, seconds."""
CIRCUIT_NOTE = ("(The circuit state lives in the consumers: metric erp_sync_route_circuit_open{route}. status sees "
                "only what is in Kafka: a route with nothing parked may be failing right now, and one with parked "
                "records may be delivering them.)")

TP = tuple[str, int]


@dataclass(slots=True)
class RouteTally:
    """What one route has parked, counted so far.

    Attributes:
        count: parked records not finished by the group.
        oldest_first_failure_ms: the earliest ``erp_sync.first_failure`` among them (Unix ms); None
            when none has one.
        first_expiry_ms: when the retry topic's retention deletes the first of them (its timestamp +
            ``retention.ms``, Unix ms); None when the retention is unlimited or unknown.
    """

    count: int = 0
    oldest_first_failure_ms: int | None = None
    first_expiry_ms: int | None = None


@dataclass
class ParkedTally:
    """Parked records counted by route, as the consumer's scan counts them.

    Attributes:
        finished: per retry partition, the offsets beyond the committed one the group has already
            finished (from the commit's metadata): not counted.
        retention_ms: per retry topic, its ``retention.ms``; None (or absent) when unlimited or unknown.
        routes: route name (``erp_sync.route``, ``""`` when missing) → its tally.
        read: records read.
    """

    finished: Mapping[TP, Ranges] = field(default_factory=dict)
    retention_ms: Mapping[str, int | None] = field(default_factory=dict)
    routes: dict[str, RouteTally] = field(default_factory=dict)
    read: int = 0

    def add(self, msg: Any) -> bool:
        """Count one record of a retry topic; False when the group already finished it."""
        self.read += 1
        topic, partition, offset = str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0)
        if in_ranges(list(self.finished.get((topic, partition), [])), offset):
            return False
        route, first_failure_ms = parked_identity(msg)
        tally = self.routes.setdefault(route, RouteTally())
        tally.count += 1
        if first_failure_ms > 0 and (tally.oldest_first_failure_ms is None
                                     or first_failure_ms < tally.oldest_first_failure_ms):
            tally.oldest_first_failure_ms = first_failure_ms
        retention = self.retention_ms.get(topic)
        ts_type, ts = msg.timestamp()
        if retention is not None and retention >= 0 and ts_type != TIMESTAMP_NOT_AVAILABLE and ts >= 0:
            expiry = ts + retention
            if tally.first_expiry_ms is None or expiry < tally.first_expiry_ms:
                tally.first_expiry_ms = expiry
        return True


@dataclass(frozen=True, slots=True)
class ScanResult:
    """How far the scan of the retry topics went.

    Attributes:
        tally: what was counted.
        unread: records between the committed offsets and the high watermarks that were not read
            (beyond ``max_records`` per partition, or past the timeout); 0: the counts are exact.
        max_records: the most records read per partition.
        timeout_s: the longest the read could take, seconds.
    """

    tally: ParkedTally
    unread: int
    max_records: int = MAX_SCAN_RECORDS
    timeout_s: float = SCAN_TIMEOUT_S

    @property
    def complete(self) -> bool:
        """Whether every parked record was read (the counts are exact, not lower bounds)."""
        return self.unread == 0


def scan_parked(consumer: Consumer, ranges: Mapping[TP, tuple[int, int]], tally: ParkedTally,
                max_records: int = MAX_SCAN_RECORDS, timeout_s: float = SCAN_TIMEOUT_S) -> ScanResult:
    """Read each retry partition's ``[start, end)`` (at most ``max_records`` of it) and count what is parked.

    Args:
        consumer: a group-less consumer, not assigned yet (closed by the caller).
        ranges: per retry partition, the group's resume position and the high watermark.
        tally: counts into it.
        max_records: the most offsets read per partition.
        timeout_s: the longest the whole read takes.

    Returns:
        The tally and how many records were left unread.
    """
    bounded = {tp: (start, min(end, start + max_records)) for tp, (start, end) in ranges.items()}
    beyond = sum(end - bounded[tp][1] for tp, (_start, end) in ranges.items() if end > bounded[tp][1])
    todo = {tp: end for tp, (start, end) in bounded.items() if start < end}
    positions = {tp: bounded[tp][0] for tp in todo}
    if not todo:
        return ScanResult(tally, beyond, max_records, timeout_s)

    def done(tp: TP) -> None:
        todo.pop(tp, None)
        consumer.pause([TopicPartition(*tp)])

    consumer.assign([TopicPartition(t, p, positions[(t, p)]) for t, p in sorted(todo)])
    deadline = time.monotonic() + timeout_s
    while todo and (left := deadline - time.monotonic()) > 0:
        for msg in consumer.consume(1000, min(0.5, left)):
            tp = (str(msg.topic()), int(msg.partition() or 0))
            if tp not in todo:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:  # the rest is invisible (an open transaction)
                    done(tp)
                continue
            offset = int(msg.offset() or 0)
            if offset >= todo[tp]:
                done(tp)
                continue
            positions[tp] = offset + 1
            tally.add(msg)
            if offset + 1 >= todo[tp]:
                done(tp)
    return ScanResult(tally, beyond + sum(end - positions[tp] for tp, end in todo.items()), max_records, timeout_s)


def read_parked(settings: Any, ranges: Mapping[TP, tuple[int, int]], tally: ParkedTally) -> ScanResult:
    """:func:`scan_parked` with a group-less consumer of the configuration."""
    consumer = Consumer(reader_config(settings, "parked"))
    try:
        return scan_parked(consumer, ranges, tally, MAX_SCAN_RECORDS, SCAN_TIMEOUT_S)
    finally:
        consumer.close()


# ------------------------------------------------------------------------------------------------ routes


@dataclass(frozen=True, slots=True)
class RouteStatus:
    """One route's line of ``status``.

    Attributes:
        name: the route's name (``""``: parked records without an ``erp_sync.route`` header).
        url: its ERP URL with any credentials and query masked; None for a route not configured.
        configured: whether the route is in the routes file (or is the default route); a route only
            named by parked records is delivered through the route its records match now.
        parked: parked records not finished by the group (a lower bound when not ``complete``).
        complete: whether every parked record was read.
        oldest_first_failure_ms: the oldest parked record's first failure, Unix ms (None: none known).
        retry_deadline_seconds: the route's ``retry_deadline_seconds`` (None for a route not configured).
        first_expiry_ms: when retention deletes the first of its parked records, Unix ms (None: never, unknown).
        now_ms: when ``status`` looked, Unix ms.
    """

    name: str
    url: str | None
    configured: bool
    parked: int
    complete: bool
    oldest_first_failure_ms: int | None
    retry_deadline_seconds: float | None
    first_expiry_ms: int | None
    now_ms: int

    @property
    def oldest_age_seconds(self) -> float | None:
        """How long ago the oldest parked record first failed, seconds."""
        if self.oldest_first_failure_ms is None:
            return None
        return round((self.now_ms - self.oldest_first_failure_ms) / 1000, 3)

    @property
    def deadline_in_seconds(self) -> float | None:
        """Time left until the oldest parked record reaches its retry deadline (negative: past it), seconds."""
        if self.oldest_first_failure_ms is None or self.retry_deadline_seconds is None:
            return None
        return round((self.oldest_first_failure_ms - self.now_ms) / 1000 + self.retry_deadline_seconds, 3)

    @property
    def retention_in_seconds(self) -> float | None:
        """Time left until the retry topic's retention deletes the first parked record, seconds."""
        return None if self.first_expiry_ms is None else round((self.first_expiry_ms - self.now_ms) / 1000, 3)

    @property
    def state(self) -> str:
        """``delivering`` or ``parked (N records, oldest X ago, deadline in Y)``."""
        if self.parked == 0:
            return "delivering" if self.complete else "delivering (as far as read)"
        parts = [("at least " if not self.complete else "") + plural(self.parked, "record")]
        age = self.oldest_age_seconds
        if age is not None:
            parts.append(f"oldest {span(age)} ago")
        deadline, retention = self.deadline_in_seconds, self.retention_in_seconds
        if retention is not None and (deadline is None or retention < deadline):
            parts.append(f"retention in {span(retention)}" + (", before the deadline" if deadline is not None else "")
                         if retention > 0 else f"retention passed {span(retention)} ago")
        elif deadline is not None:
            parts.append(f"deadline in {span(deadline)}" if deadline > 0 else f"deadline passed {span(deadline)} ago")
        return f"parked ({', '.join(parts)})"

    def to_json(self) -> dict[str, Any]:
        """The route as JSON (see :mod:`consumer.ops.status` for the keys)."""
        oldest = self.oldest_first_failure_ms
        return {
            "name": self.name,
            "url": self.url,
            "configured": self.configured,
            "state": "parked" if self.parked else "delivering",
            "parked": self.parked,
            "parked_complete": self.complete,
            "oldest_first_failure": None if oldest is None else
            datetime.fromtimestamp(oldest / 1000, UTC).isoformat(timespec="milliseconds"),
            "oldest_age_seconds": self.oldest_age_seconds,
            "retry_deadline_seconds": self.retry_deadline_seconds,
            "deadline_in_seconds": self.deadline_in_seconds,
            "retention_in_seconds": self.retention_in_seconds,
            "summary": self.state,
        }


def route_statuses(routes: RouteTable, scan: ScanResult | None, now_ms: int) -> tuple[RouteStatus, ...]:
    """Every route of the table in order, then the routes only parked records name (sorted).

    Args:
        routes: the routes.
        scan: what the retry topics hold; None when there is none to read (parking off, no retry topic).
        now_ms: the time of the status, Unix ms.
    """
    tallies = scan.tally.routes if scan is not None else {}
    complete = scan.complete if scan is not None else True
    out = []
    for route in routes.routes:
        tally = tallies.get(route.name, RouteTally())
        out.append(RouteStatus(route.name, redact_url(route.settings.erp_url), True, tally.count, complete,
                               tally.oldest_first_failure_ms, route.settings.retry_deadline_seconds,
                               tally.first_expiry_ms, now_ms))
    for name in sorted(set(tallies) - set(routes.by_name)):
        tally = tallies[name]
        out.append(RouteStatus(name, None, False, tally.count, complete, tally.oldest_first_failure_ms, None,
                               tally.first_expiry_ms, now_ms))
    return tuple(out)


def format_routes(routes: tuple[RouteStatus, ...], where: str, scan: ScanResult | None) -> list[str]:
    """The routes' lines of ``status``: a table (route, URL, state) and what the states mean.

    Args:
        routes: the routes' states.
        where: where the routes come from (``ERP_SYNC_ROUTES_FILE /etc/routes.yaml``…).
        scan: the scan of the retry topics, None when there was none.
    """
    lines = [f"Routes ({where}); parked: records in the retry topics from the group's committed offsets to "
             "their ends", ""]
    rows = [[route.name or "(no route header)", route.url or "- (not in the routes)", route.state] for route in routes]
    lines += table(["ROUTE", "URL", "STATE"], rows, right=set())
    if any(not route.configured for route in routes):
        lines.append("(A route not in the routes: its parked records are delivered through the route they match "
                     "now.)")
    if scan is not None and not scan.complete:
        lines.append(f"(At least: {plural(scan.unread, 'record')} not read; status reads at most "
                     f"{scan.max_records:,} records per retry partition, for {scan.timeout_s:.0f} s in all.)")
    lines.append(CIRCUIT_NOTE)
    return lines
