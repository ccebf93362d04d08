"""The routes part of ``erp-sync status`` (consumer/ops/parked.py): counting parked records, route states.

No broker: the retry topic is a :class:`~tests.unit.doubles.FakeCluster`, its records carry the
headers ``erp-sync run`` writes (``parked_headers``). The same is proven against a real broker in
tests/integration/test_tools.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from consumer.delivery.dead_letters import parked_headers
from consumer.errors import ErpRejectError
from consumer.ops.cluster import GroupInfo, Member
from consumer.ops.console import span
from consumer.ops.parked import (
    ParkedTally,
    RouteStatus,
    ScanResult,
    format_routes,
    route_statuses,
    scan_parked,
)
from consumer.ops.status import (
    PartitionStatus,
    RetryTopicRead,
    RetryTopicStatus,
    StatusReport,
    format_retry_topics,
    load_status_routes,
    parking_off_reason,
)
from consumer.routes import load_routes
from consumer.settings import load_settings
from tests.unit.doubles import FakeCluster, FakeConsumer, FakeMessage

SOURCE, RETRY = "approvals", "approvals.retry"
NOW = 1_780_000_000_000
HOUR, MINUTE = 3_600_000, 60_000
CIRCUIT_NOTE = ("(The circuit state lives in the consumers: metric erp_sync_route_circuit_open{route}. status sees "
                "only what is in Kafka: a route with nothing parked may be failing right now, and one with parked "
                "records may be delivering them.)")


def parked(partition: int, offset: int, route: str, first_failure: int, parked_at: int | None = None) -> FakeMessage:
    """A record of the retry topic, with the headers ``erp-sync run`` gives a parked record."""
    source = FakeMessage(SOURCE, partition, offset + 100, b"value", b"key", timestamp_ms=first_failure - MINUTE)
    headers = parked_headers(source, route, 4, first_failure, ErpRejectError("InternalError", "boom"))
    return FakeMessage(RETRY, partition, offset, b"value", b"key",
                       timestamp_ms=parked_at if parked_at is not None else first_failure + MINUTE, headers=headers)


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (59.9, "59s"), (60, "1m 0s"), (3599, "59m 59s"), (3600, "1h 0m"), (75_600, "21h 0m"),
    (86_399, "23h 59m"), (86_400, "1d 0h"), (511_200, "5d 22h"), (-600, "10m 0s"),
])
def test_span_gives_the_two_largest_units_rounded_down(seconds: float, text: str) -> None:
    assert span(seconds) == text


def test_the_tally_counts_by_route_skips_finished_offsets_and_keeps_the_oldest_failure_and_first_expiry() -> None:
    tally = ParkedTally(finished={(RETRY, 0): [(2, 3)]}, retention_ms={RETRY: 48 * HOUR})
    records = [parked(0, 1, "hr", NOW - 3 * HOUR, parked_at=NOW - HOUR),  # retried in place for 2 h, then parked
               parked(0, 2, "hr", NOW - 9 * HOUR),  # 0@2 finished: not counted
               parked(0, 3, "hr", NOW - 2 * HOUR),  # parked before 0@1: retention deletes it first
               parked(1, 0, "finance", NOW - 26 * HOUR),
               FakeMessage(RETRY, 1, 1, b"v", b"k", timestamp_ms=NOW, headers=[])]  # no parking headers at all
    assert [tally.add(m) for m in records] == [True, False, True, True, True]
    assert tally.read == 5
    assert {name: (t.count, t.oldest_first_failure_ms, t.first_expiry_ms) for name, t in tally.routes.items()} == {
        "hr": (2, NOW - 3 * HOUR, NOW - 2 * HOUR + MINUTE + 48 * HOUR),
        "finance": (1, NOW - 26 * HOUR, NOW - 26 * HOUR + MINUTE + 48 * HOUR),
        "": (1, None, NOW + 48 * HOUR),
    }


def test_without_a_known_retention_nothing_expires() -> None:
    tally = ParkedTally(retention_ms={RETRY: None})
    tally.add(parked(0, 0, "hr", NOW - HOUR))
    assert tally.routes["hr"].first_expiry_ms is None


def cluster_with(records: list[FakeMessage]) -> FakeCluster:
    cluster = FakeCluster()
    for msg in records:
        cluster.logs.setdefault((msg.topic(), msg.partition()), []).append(msg)
    return cluster


def test_the_scan_reads_from_the_committed_offset_to_the_end_and_no_further_than_its_bound() -> None:
    records = [parked(0, i, "hr", NOW - HOUR) for i in range(5)] + [parked(1, i, "finance", NOW - HOUR)
                                                                    for i in range(2)]
    consumer = FakeConsumer(cluster_with(records), {})
    scan = scan_parked(consumer, {(RETRY, 0): (1, 5), (RETRY, 1): (0, 2)}, ParkedTally())
    assert scan.complete and scan.unread == 0 and scan.tally.read == 6
    assert {name: t.count for name, t in scan.tally.routes.items()} == {"hr": 4, "finance": 2}

    consumer = FakeConsumer(cluster_with(records), {})
    scan = scan_parked(consumer, {(RETRY, 0): (1, 5), (RETRY, 1): (0, 2), (RETRY, 2): (3, 3)}, ParkedTally(),
                       max_records=2, timeout_s=5.0)
    assert (scan.complete, scan.unread, scan.tally.read) == (False, 2, 4)
    assert {name: t.count for name, t in scan.tally.routes.items()} == {"hr": 2, "finance": 2}
    assert (scan.max_records, scan.timeout_s) == (2, 5.0)


def test_a_partition_whose_end_is_not_readable_stops_at_its_end_of_partition_event() -> None:
    # the high watermark says 4, but only 2 records can be read (an open transaction): no wait, nothing unread
    consumer = FakeConsumer(cluster_with([parked(0, 0, "hr", NOW), parked(0, 1, "hr", NOW)]), {})
    scan = scan_parked(consumer, {(RETRY, 0): (0, 4)}, ParkedTally(), timeout_s=5.0)
    assert (scan.complete, scan.tally.read) == (True, 2)


def route(name: str, parked_count: int, oldest: int | None, deadline_s: float | None, expiry: int | None,
          complete: bool = True, configured: bool = True) -> RouteStatus:
    return RouteStatus(name, "https://erp.example.com/push" if configured else None, configured, parked_count,
                       complete, oldest, deadline_s, expiry, NOW)


@pytest.mark.parametrize(("status", "state"), [
    (route("a", 0, None, 604_800, None), "delivering"),
    (route("a", 0, None, 604_800, None, complete=False), "delivering (as far as read)"),
    (route("a", 3, NOW - 2 * HOUR - 5 * MINUTE, 604_800, None),
     "parked (3 records, oldest 2h 5m ago, deadline in 6d 21h)"),
    (route("a", 1, NOW - 2 * HOUR, 604_800, NOW + 10 * 24 * HOUR),
     "parked (1 record, oldest 2h 0m ago, deadline in 6d 22h)"),
    (route("a", 2, NOW - 2 * HOUR, 604_800, NOW + 26 * HOUR),
     "parked (2 records, oldest 2h 0m ago, retention in 1d 2h, before the deadline)"),
    (route("a", 2, NOW - 25 * HOUR, 86_400, None),
     "parked (2 records, oldest 1d 1h ago, deadline passed 1h 0m ago)"),
    (route("a", 2, NOW - HOUR, 86_400, NOW - MINUTE),
     "parked (2 records, oldest 1h 0m ago, retention passed 1m 0s ago)"),
    (route("a", 5, NOW - HOUR, 86_400, None, complete=False),
     "parked (at least 5 records, oldest 1h 0m ago, deadline in 23h 0m)"),
    (route("a", 1, None, 86_400, None), "parked (1 record)"),
    (route("old", 1, NOW - HOUR, None, NOW + HOUR, configured=False),
     "parked (1 record, oldest 1h 0m ago, retention in 1h 0m)"),
])
def test_the_state_of_a_route(status: RouteStatus, state: str) -> None:
    assert status.state == state


def test_the_json_of_a_parked_route() -> None:
    assert route("hr", 2, NOW - 3 * HOUR, 86_400, NOW + 45 * HOUR).to_json() == {
        "name": "hr", "url": "https://erp.example.com/push", "configured": True, "state": "parked", "parked": 2,
        "parked_complete": True, "oldest_first_failure": "2026-05-28T17:26:40.000+00:00",
        "oldest_age_seconds": 10800.0, "retry_deadline_seconds": 86400, "deadline_in_seconds": 75600.0,
        "retention_in_seconds": 162000.0, "summary": "parked (2 records, oldest 3h 0m ago, deadline in 21h 0m)"}


def test_the_routes_in_file_order_then_those_only_parked_records_name_with_urls_masked(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text("""routes:
  - name: hr
    match: {flow_codes: [1]}
    url: https://hr.example.com/push?token=secret
    retry_deadline_seconds: 86400
  - name: finance
    url: https://finance.example.com/push
""", encoding="utf-8")
    table = load_routes(load_settings({"ERP_SYNC_ROUTES_FILE": str(path)}))
    tally = ParkedTally(retention_ms={RETRY: 48 * HOUR})
    for msg in (parked(0, 0, "zeta", NOW - MINUTE), parked(0, 1, "hr", NOW - 3 * HOUR), parked(0, 2, "alpha", NOW)):
        tally.add(msg)
    scan = ScanResult(tally, 0)
    routes = route_statuses(table, scan, NOW)
    assert [(r.name, r.url, r.configured, r.parked) for r in routes] == [
        ("hr", "https://hr.example.com/push?****", True, 1), ("finance", "https://finance.example.com/push", True, 0),
        ("alpha", None, False, 1), ("zeta", None, False, 1)]
    assert format_routes(routes, f"ERP_SYNC_ROUTES_FILE {path}", scan) == [
        f"Routes (ERP_SYNC_ROUTES_FILE {path}); parked: records in the retry topics from the group's committed "
        "offsets to their ends",
        "",
        "ROUTE    URL                               STATE",
        "hr       https://hr.example.com/push?****  parked (1 record, oldest 3h 0m ago, deadline in 21h 0m)",
        "finance  https://finance.example.com/push  delivering",
        "alpha    - (not in the routes)             parked (1 record, oldest 0s ago, retention in 2d 0h)",
        "zeta     - (not in the routes)             parked (1 record, oldest 1m 0s ago, retention in 2d 0h)",
        "(A route not in the routes: its parked records are delivered through the route they match now.)",
        CIRCUIT_NOTE,
    ]
    bounded = ScanResult(tally, 7, max_records=100_000, timeout_s=10.0)
    assert format_routes(route_statuses(table, bounded, NOW)[:2], "x", bounded)[-2:] == [
        "(At least: 7 records not read; status reads at most 100,000 records per retry partition, for 10 s in all.)",
        CIRCUIT_NOTE]
    assert [r.state for r in route_statuses(table, None, NOW)] == ["delivering", "delivering"]


def test_a_member_names_its_partitions_of_a_retry_topic() -> None:
    member = Member("m-1", "c", "/10.0.0.7", None, (0, 2), ("approvals.retry[2]", "approvals.retry[0]",
                                                             "approvals.retry.x[1]", "other[5]"))
    assert member.partitions_of("approvals.retry") == (0, 2)
    assert member.partitions_of("nothing") == ()


def retry_read(parts: int | None, source_parts: int | None) -> RetryTopicRead:
    return RetryTopicRead(SOURCE, RETRY, None if parts is None else list(range(parts)), source_parts, {}, {})


@pytest.mark.parametrize(("env", "read", "reason"), [
    ({}, retry_read(3, 3), ""),
    ({}, retry_read(2, 3), f"it has 2 partitions, its source {SOURCE} 3 (they must match)"),
    ({}, retry_read(3, None), f"its source topic {SOURCE} does not exist"),
    ({"ERP_SYNC_KAFKA_CONSUMER_PARTITION_ASSIGNMENT_STRATEGY": "cooperative-sticky"}, retry_read(3, 3),
     "partition.assignment.strategy is cooperative-sticky; parking needs range"),
])
def test_why_the_consumers_would_not_use_an_existing_retry_topic(env: dict[str, str], read: RetryTopicRead,
                                                                  reason: str) -> None:
    assert parking_off_reason(load_settings({"ERP_SYNC_TOPIC": SOURCE, **env}), read) == reason


def test_the_retry_topic_lines() -> None:
    rows = (PartitionStatus(0, 1, 0, 4, 3, 10740.0, "member-1"), PartitionStatus(1, None, 0, 2, 2, None, None))
    report = StatusReport(SOURCE, "group", GroupInfo("Stable", ()), (), datetime.fromtimestamp(NOW / 1000, UTC),
                          retry_topics=(RetryTopicStatus(SOURCE, RETRY, True, rows, 172_800.0),
                                        RetryTopicStatus("other", "other.retry", True, (), -1, "it has 1 partition, "
                                                         "its source other 2 (they must match)"),
                                        RetryTopicStatus("third", "third.retry", False)))
    assert format_retry_topics(report) == [
        f"Retry topic {RETRY}: records parked from {SOURCE}, read by group group like its source; retention 2d 0h",
        "",
        "RETRY PARTITION  COMMITTED  HIGH  LAG  LAG SECONDS  OWNER (MEMBER ID)",
        "              0          1     4    3      10740.0  member-1",
        "              1          -     2    2            ?  -",
        "          total                     5      10740.0",
        "(LAG SECONDS of a retry partition: since the record at its committed offset was parked.)",
        "",
        "Retry topic other.retry: records parked from other, read by group group like its source; retention "
        "unlimited",
        "",
        "RETRY PARTITION  COMMITTED  HIGH  LAG  LAG SECONDS  OWNER (MEMBER ID)",
        "          total                     0            ?",
        "(LAG SECONDS of a retry partition: since the record at its committed offset was parked.)",
        "(The consumers neither park into it nor read it: it has 1 partition, its source other 2 (they must match).)",
        "",
        "Retry topic third.retry: does not exist (`erp-sync create-topics` makes it); until then records of third "
        "that their ERP keeps refusing wait in place.",
        "",
    ]
    assert format_retry_topics(StatusReport(SOURCE, "group", GroupInfo("Stable", ()), (), report.time)) == [
        "Retry topics: none (ERP_SYNC_RETRY_TOPIC=none: parking is off; records their ERP keeps refusing wait in "
        "place).", ""]


def test_routes_that_cannot_be_loaded_are_left_out_with_the_reason(tmp_path: Path) -> None:
    assert load_status_routes(load_settings({})) == (
        None, "", "Routes: not shown: ERP_SYNC_ERP_URL is not set and there is no ERP_SYNC_ROUTES_FILE (status "
                  "needs neither).")
    path = tmp_path / "routes.yaml"
    path.write_text("routes:\n  - name: hr\n    colour: blue\n    url: https://hr.example.com/push\n", encoding="utf-8")
    table, where, note = load_status_routes(load_settings({"ERP_SYNC_ROUTES_FILE": str(path)}))
    assert (table, where) == (None, "")
    assert note.startswith(f"Routes: not shown: ERP_SYNC_ROUTES_FILE: {path}: route 'hr': colour: unknown field")
    table, where, note = load_status_routes(load_settings({"ERP_SYNC_ERP_URL": "https://erp.example.com/push"}))
    assert table is not None and [r.name for r in table.routes] == ["default"]
    assert (where, note) == ("the default route: ERP_SYNC_ERP_URL", "")
