"""Checks: what the stub received against what it must have received, and the targets of bounds.json."""

from __future__ import annotations

from typing import Any

import orjson

from bench.stack import Dataset, Stub


def _not_ok(stats: dict[str, Any]) -> int:
    """Answers of the stub other than OK."""
    return sum(n for code, n in stats["by_code"].items() if code != "OK")


def _recorded_all(stats: dict[str, Any]) -> bool:
    """The stub kept every push it received (not more than its max_records), so they can be checked one by one."""
    return bool(stats["recorded"] == int(stats["received"]) and not stats["dropped"])


def _erp_side(stats: dict[str, Any]) -> dict[str, Any]:
    """What the ERP saw (the stub's capacity model): server-side latency, peak pushes served and queued."""
    return {"erp_capacity": stats.get("capacity"), "erp_latency_ms": stats.get("latency_ms"),
            "erp_queue_ms": stats.get("queue_ms"), "erp_max_serving": stats.get("max_serving"),
            "erp_max_queue": stats.get("max_queue")}


def _order_violations(pairs: list[tuple[str, int]]) -> int:
    """How many first arrivals of a key came before an earlier record of that key (offset = EndTime order)."""
    seen: set[tuple[str, int]] = set()
    last: dict[str, int] = {}
    violations = 0
    for key, end in pairs:
        if (key, end) in seen:
            continue
        seen.add((key, end))
        if key in last and end < last[key]:
            violations += 1
        last[key] = end
    return violations


def _per_record(stub: Stub, universe: set[tuple[str, int]]) -> tuple[set[tuple[str, int]], dict[str, Any]]:
    """The (Idempotency-Key, EndTime) pushes the stub recorded, and what they say against ``universe``."""
    records = stub.records()
    pairs = [(r["idempotency_key"], orjson.loads(r["body"])["EndTime"]) for r in records]
    unique = set(pairs)
    return unique, {"unique": len(unique), "duplicates": len(pairs) - len(unique),
                    "unexpected": len(unique - universe), "order_violations": _order_violations(pairs),
                    "method": "per-record", "t_first_push": records[0]["time"] if records else None,
                    "t_last_push": records[-1]["time"] if records else None}


def _clean(found: dict[str, Any], not_ok: int) -> bool:
    """Nothing missing, nothing unexpected, per-key order kept, every answer OK."""
    return bool(found["missing"] == 0 and found["unexpected"] == 0 and found["order_violations"] == 0
                and not not_ok)


def check_delivery(stub: Stub, universe: set[tuple[str, int]] | None, expected_count: int,
                   require_all: bool) -> dict[str, Any]:
    """Compare what the stub received with what it must have received.

    Every push is identified by (Idempotency-Key, EndTime): EndTime differs for every generated
    event, so several events of one instance (same key) are still told apart.

    Args:
        universe: every approved (key, EndTime) of the topic; None when not kept (large backlogs).
        expected_count: how many distinct approved records must have arrived.
        require_all: True: exactly the universe; False (a baseline prefix): a subset of it of
            ``expected_count`` records.
    """
    stats = stub.client.stats()
    received = int(stats["received"])
    out: dict[str, Any] = {"received": received, "expected": expected_count, "by_code": stats["by_code"],
                           "max_concurrency_at_stub": stats["max_concurrency"], **_erp_side(stats)}
    not_ok = _not_ok(stats)
    if universe is not None and _recorded_all(stats):
        unique, found = _per_record(stub, universe)
        found["missing"] = len(universe - unique) if require_all else max(0, expected_count - len(unique & universe))
        out.update(found)
        ok = _clean(found, not_ok)
        if not require_all:
            ok = ok and len(unique) == expected_count
    else:
        first = stub.first_record()
        out.update(duplicates=received - expected_count, missing=max(0, expected_count - received),
                   method="count", order_violations=None,
                   t_first_push=first["time"] if first else None, t_last_push=None)
        ok = received >= expected_count and not not_ok
    out["all_delivered"] = ok
    return out


def check_partial_delivery(stub: Stub, data: Dataset, committed_offsets: dict[int, int]) -> dict[str, Any]:
    """A run stopped half-way: what it committed must have reached the stub, and nothing else may have.

    Every approved record below a committed offset must be at the stub (at least once across the
    SIGTERM); every push the stub received must be an approved record of the topic; per key, first
    arrivals in offset order; every answer OK.
    """
    assert data.approved_at is not None
    stats = stub.client.stats()
    received = int(stats["received"])
    not_ok = _not_ok(stats)
    must = [(key, end) for part, rows in data.approved_at.items() for off, key, end in rows
            if off < committed_offsets.get(part, 0)]
    out: dict[str, Any] = {"received": received, "by_code": stats["by_code"], "must_have": len(must),
                           "max_concurrency_at_stub": stats["max_concurrency"], **_erp_side(stats)}
    if _recorded_all(stats):
        universe = {(key, end) for rows in data.approved_at.values() for _off, key, end in rows}
        unique, found = _per_record(stub, universe)
        found["missing"] = sum(1 for pair in must if pair not in unique)
        out.update(found)
        ok = _clean(found, not_ok)
    else:  # the stub dropped records (more than its max_records): by count only
        first = stub.first_record()
        out.update(duplicates=None, missing=max(0, len(must) - received), method="count", order_violations=None,
                   t_first_push=first["time"] if first else None)
        ok = received >= len(must) and not not_ok
    out["all_delivered"] = ok
    return out


def evaluate(results: dict[str, Any], bounds: dict[str, Any], max_in_flight: int) -> list[dict[str, Any]]:
    """PASS/FAIL per target of bounds.json (None: not measured in this run)."""
    checks: list[dict[str, Any]] = []

    def add(name: str, value: float | None, op: str, limit: float, note: str = "") -> None:
        ok = None if value is None else (value >= limit if op == ">=" else value <= limit)
        checks.append({"target": name, "value": value, "op": op, "limit": limit, "pass": ok, "note": note})

    by_lat = {row["latency_ms"]: row for row in results["latencies"]}
    for lat, spec_key in ((50.0, "latency_50"), (5.0, "latency_5"), (0.0, "latency_0")):
        spec = bounds.get(spec_key, {})
        row = by_lat.get(lat)
        ours, naive = (row or {}).get("erp_sync"), (row or {}).get("naive")
        prefix = ""
        if naive and naive["records"] < (ours or {}).get("records", 0):
            prefix = f"baseline on a {naive['records']}-record prefix"
        if "pushes_per_s_min_factor" in spec:
            limit = spec["pushes_per_s_min_factor"] * max_in_flight / (lat / 1000)
            add(f"{lat:g} ms: pushes/s >= {spec['pushes_per_s_min_factor']} x MAX_IN_FLIGHT/latency",
                ours["pushes_per_s"] if ours else None, ">=", round(limit, 1))
        if "ratio_to_baseline_min" in spec:
            ratio = ours["records_per_s"] / naive["records_per_s"] if ours and naive else None
            add(f"{lat:g} ms: records/s vs baseline", ratio, ">=", spec["ratio_to_baseline_min"], prefix)
        if "fraction_of_http_ceiling_min" in spec:
            add(f"{lat:g} ms: fraction of the HTTP ceiling", (row or {}).get("ceiling_fraction"), ">=",
                spec["fraction_of_http_ceiling_min"])
    cost = results.get("cpu_cost")
    add("decode+filter+transform+encode µs/record", cost["full_all_us"] if cost else None, "<=",
        bounds["cpu_cost_us_per_record_max"])
    for row in results["latencies"]:
        ours, naive = row.get("erp_sync"), row.get("naive")
        if ours and naive:
            cpu_ratio = ours["cpu_s_per_1k_records"] / naive["cpu_s_per_1k_records"] if naive[
                "cpu_s_per_1k_records"] else None
            add(f"{row['latency_ms']:g} ms: CPU per record vs baseline", cpu_ratio, "<=",
                bounds["cpu_per_record_vs_baseline_max"])
            commit_ratio = ours["commits_per_record"] / naive["commits_per_record"] if naive[
                "commits_per_record"] else None
            add(f"{row['latency_ms']:g} ms: commit requests per record vs baseline", commit_ratio, "<=",
                bounds["commits_per_record_vs_baseline_max"])
    rss = results.get("rss")
    if rss:
        note = (f"{rss['records']:,}-record backlog, {rss['finished_at_sigterm']:,} consumed in {rss['seconds']:g} s, "
                f"then SIGTERM")
        if rss["records"] < bounds["peak_rss_backlog_records"]:
            note += f"; indicative only: backlog < {bounds['peak_rss_backlog_records']:,}"
        add("peak RSS MB with the backlog", rss["peak_rss_mb"], "<=", bounds["peak_rss_mb_max"], note)
    else:
        add("peak RSS MB with the backlog", None, "<=", bounds["peak_rss_mb_max"])
    scale = results.get("scale")
    add(f"two processes vs one at {bounds['scale_latency_ms']} ms", scale["ratio"] if scale else None, ">=",
        bounds["scale_two_processes_min_ratio"])
    return checks


def evaluate_peer(results: dict[str, Any], bounds: dict[str, Any]) -> list[dict[str, Any]]:
    """PASS/FAIL per target of issue 14 (bounds_peer.json) that this run measured.

    A target measured under other conditions than the issue's (fewer records, another stub
    capacity) is still evaluated, with a note saying so.
    """
    checks: list[dict[str, Any]] = []

    def add(name: str, value: float | None, op: str, limit: float, note: str = "") -> None:
        ok = None if value is None else (value >= limit if op == ">=" else value <= limit)
        checks.append({"target": name, "value": value, "op": op, "limit": limit, "pass": ok, "note": note})

    capacity = results["args"].get("stub_capacity")
    rows = {row["latency_ms"]: row for row in (results.get("peer") or {}).get("rows", [])}
    for lat, key in ((50.0, "latency_50"), (0.0, "latency_0")):
        spec, row = bounds.get(key, {}), rows.get(lat)
        if row is None:
            continue
        notes = [f"{row['records']:,} records, medians of {row['rounds']} round(s)"]
        if "records" in spec and row["records"] < spec["records"]:
            notes.append(f"indicative only: the target is for {spec['records']:,}")
        if "stub_capacity" in spec and capacity != spec["stub_capacity"]:
            notes.append(f"stub capacity {capacity or 'unlimited'}, the target is for {spec['stub_capacity']}")
        note = "; ".join(notes)
        if "records_per_s_vs_peer_min" in spec:
            add(f"{lat:g} ms: records/s vs Parallel Consumer", row["records_per_s_ratio"], ">=",
                spec["records_per_s_vs_peer_min"], note)
        if "cpu_per_record_vs_peer_max" in spec:
            add(f"{lat:g} ms: CPU per record vs Parallel Consumer", row["cpu_per_record_ratio"], "<=",
                spec["cpu_per_record_vs_peer_max"], note)
    if rows:
        worst = max(rows.values(), key=lambda r: r["peak_rss_ratio"] or 0.0)
        add("peak RSS vs Parallel Consumer (the largest ratio)", worst["peak_rss_ratio"], "<=",
            bounds["peak_rss_vs_peer_max"], f"at {worst['latency_ms']:g} ms")
    check = results.get("capacity_check")
    if check:
        spec = bounds["capacity_check"]
        lat = check["latency_ms"]
        p99 = ((check["erp_sync"]["delivery"].get("erp_latency_ms") or {}).get("p99"))
        ratio = p99 / lat if p99 is not None and lat > 0 else None
        note = f"base latency {lat:g} ms"
        if check["capacity"] != spec["capacity"]:
            note += f"; capacity {check['capacity']}, the target is for {spec['capacity']}"
        add(f"stub capacity {check['capacity']}: ERP-side p99 / base latency", ratio, "<=",
            spec["p99_over_base_max"], note)
    return checks
