"""Rendering: the table, the lines below it and the targets, from the results document."""

from __future__ import annotations

from typing import Any

from bench.http_ceiling import CEILING_TRANSPORT, DESCRIPTIONS, TRANSPORTS
from bench.measure import RSS_SAMPLE_S


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[list[str]], header: list[str], left: tuple[int, ...] = (0,)) -> str:
    """Columns as wide as their widest cell, flush left for the columns in ``left``, right for the others."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i in left else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()

    head = line(header)
    return "\n".join([head, "-" * len(head), *(line(r) for r in rows)])


def transport_table(transports: list[dict[str, Any]], max_in_flight: int) -> str:
    """One row per transport: requests/s and client CPU per request at concurrency 1 and MAX_IN_FLIGHT."""
    by: dict[tuple[str, int], dict[str, Any]] = {(t["transport"], t["concurrency"]): t for t in transports}
    names = [name for name in TRANSPORTS if any(n == name for n, _c in by)]

    def cells(t: dict[str, Any] | None) -> list[str]:
        if t is None:
            return ["-", "-"]
        if t.get("skipped"):
            return ["not installed", "-"]
        if "error" in t:
            return ["error", "-"]
        return [f"{t['requests_per_s']:,.0f}", f"{t['client_cpu_us_per_request']:,.0f}"]

    rows = []
    for name in names:
        label = name + (" (ceiling)" if name == CEILING_TRANSPORT else "")
        rows.append([label, *cells(by.get((name, 1))), *cells(by.get((name, max_in_flight))), DESCRIPTIONS[name]])
    header = ["transport", "c=1 req/s", "c=1 µs CPU/req", f"c={max_in_flight} req/s",
              f"c={max_in_flight} µs CPU/req", "what"]
    return ("Transports at ERP latency 0 (bench/http_ceiling.py, no Kafka; CPU: the client process, per request):\n"
            + table(rows, header, left=(0, 5)))


def rss_lines(rss: dict[str, Any]) -> list[str]:
    """The RSS run, in words."""
    d = rss["delivery"]
    status = "OK" if d["all_delivered"] else "FAIL"
    dups = "-" if d.get("duplicates") is None else f"{d['duplicates']:,}"
    peak99 = (f"VmHWM reached 99% of its peak {rss['t_peak99_s']:g} s after start, with "
              f"{rss['finished_at_peak99']:,} records consumed" if rss.get("t_peak99_s") is not None else "")
    return [
        f"RSS run: {rss['records']:,}-record backlog at 0 ms, erp-sync run for {rss['seconds']:g} s then SIGTERM "
        f"(exit {rss['exit_code']}, shutdown {rss['shutdown_s']:g} s): peak RSS (VmHWM, sampled every "
        f"{RSS_SAMPLE_S:g} s) {rss['peak_rss_mb']:.0f} MB",
        f"  {rss['finished_at_sigterm']:,} records consumed by SIGTERM ({rss['records_per_s']:,.0f} records/s after "
        f"the first push at {fmt(rss['startup_s'], '.1f')} s), {rss['committed']:,} committed at exit; {peak99}; "
        f"VmHWM at SIGTERM {rss['vmhwm_at_sigterm_mb']:.0f} MB",
        f"  delivered: {status} (all {d['must_have']:,} approved records below the committed offsets at the stub, "
        f"nothing else; duplicates {dups})",
    ]


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"x{value:.2f}"


def _erp_p99(run: dict[str, Any]) -> float | None:
    p99: float | None = ((run.get("delivery") or {}).get("erp_latency_ms") or {}).get("p99")
    return p99


def peer_lines(results: dict[str, Any]) -> list[str]:
    """The side-by-side table with the Java peer, then the same in the issue's Markdown shape."""
    info, args = results["peer"], results["args"]
    v = info["versions"]
    check = info["self_check"]
    capacity = args.get("stub_capacity")
    rounds = args.get("peer_rounds", 1)
    lines = [
        f"Side by side with the Java peer (bench/peers/parallel-consumer): Confluent Parallel Consumer "
        f"{v['parallel-consumer-core']} (kafka-clients {v['kafka-clients']}), KEY order, maxConcurrency "
        f"{args['peer_concurrency']}, commit mode {args['peer_commit_mode']}; Apache Avro {v['avro']} generic reader, "
        f"Jackson {v['jackson']}, java.net.http (HTTP/1.1); {info['java']}, JVM options "
        f"{' '.join(args['peer_java_opts']) or 'none (defaults)'}. Same broker, topic and ERP stub"
        + (f" (capacity {capacity})" if capacity else "") + f"; each its own group; medians of {rounds} round(s).",
        f"Peer bodies against erp-sync's transform, byte for byte: {check['events']:,} events "
        f"({check['bodies']:,} bodies): {check['differences']} differences",
        "",
    ]
    header = ["latency", "records", "erp-sync rec/s", "PC rec/s", "ours/PC", "CPU s/1k ours", "CPU s/1k PC",
              "CPU ours/PC", "cores ours", "cores PC", "peak RSS MB ours / PC", "RSS ours/PC"]
    if capacity:
        header.append("ERP p99 ms ours / PC")
    header += ["delivered ours / PC", "load"]
    rows = []
    for row in info["rows"]:
        o, p = row["ours"], row["peer"]

        def ok(side: dict[str, Any]) -> str:
            text = "OK" if side["all_delivered"] else "FAIL"
            return text + (f" ({side['order_violations']} order)" if side["order_violations"] else "")

        cells = [f"{row['latency_ms']:g} ms", f"{row['records']:,}", fmt(o["records_per_s"]), fmt(p["records_per_s"]),
                 _ratio(row["records_per_s_ratio"]), fmt(o["cpu_s_per_1k_records"], ".3f"),
                 fmt(p["cpu_s_per_1k_records"], ".3f"), _ratio(row["cpu_per_record_ratio"]),
                 fmt(o["cores_busy"], ".2f"), fmt(p["cores_busy"], ".2f"),
                 f"{o['peak_rss_mb']:.0f} / {p['peak_rss_mb']:.0f}", _ratio(row["peak_rss_ratio"])]
        if capacity:
            cells.append(f"{fmt(o['erp_p99_ms'], '.1f')} / {fmt(p['erp_p99_ms'], '.1f')}")
        load = [x for x in o["loadavg_1m_after"] + p["loadavg_1m_after"] if x is not None]
        cells += [f"{ok(o)} / {ok(p)}", f"{min(load):.1f}-{max(load):.1f}" if load else "-"]
        rows.append(cells)
    lines.append(table(rows, header))
    lines.append("rec/s: records / window (first push at the stub → last verdict); CPU: user+sys of the process "
                 "(the JVM: all its threads, from /proc) in that window; cores: CPU s / window s; peak RSS: VmHWM")
    if rounds > 1:
        lines.append("single rounds, records/s: " + "; ".join(
            f"{r['latency_ms']:g} ms erp-sync {fmt(r['ours']['records_per_s_range'][0])}–"
            f"{fmt(r['ours']['records_per_s_range'][1])}, PC {fmt(r['peer']['records_per_s_range'][0])}–"
            f"{fmt(r['peer']['records_per_s_range'][1])}" for r in info["rows"]))
    lines.append("")
    lines.append("| ERP latency | events | erp-sync records/s | Parallel Consumer records/s "
                 "| CPU per record, ours / PC | peak RSS, ours / PC |")
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for row in info["rows"]:
        o, p = row["ours"], row["peer"]
        lines.append(f"| {row['latency_ms']:g} ms | {row['records']:,} | {fmt(o['records_per_s'])} | "
                     f"{fmt(p['records_per_s'])} | ×{fmt(row['cpu_per_record_ratio'], '.2f')} | "
                     f"{o['peak_rss_mb']:.0f} / {p['peak_rss_mb']:.0f} MB |")
    return lines


def erp_side_lines(results: dict[str, Any]) -> list[str]:
    """What the ERP saw in every run when the stub had a capacity: server-side latency against the base latency."""
    lines: list[str] = []
    capacity = results["args"].get("stub_capacity")

    def describe(name: str, run: dict[str, Any], base: float) -> str:
        d = run["delivery"]
        lat = d.get("erp_latency_ms") or {}
        p50, p99 = lat.get("p50"), lat.get("p99")
        ratio = f" = x{p99 / base:.2f} base" if p99 is not None and base > 0 else ""
        return (f"{name} p50 {fmt(p50, '.1f')} / p99 {fmt(p99, '.1f')} ms{ratio}, peak served "
                f"{d.get('erp_max_serving')}, peak queue {d.get('erp_max_queue')}")

    if capacity:
        parts = []
        for row in results["latencies"]:
            if row.get("erp_sync"):
                parts.append(f"{row['latency_ms']:g} ms: " + describe("erp-sync", row["erp_sync"], row["latency_ms"]))
        lines.append(f"ERP side (stub capacity {capacity}; server-side latency, arrival → answer, queue included): "
                     + "; ".join(parts))
    check = results.get("capacity_check")
    if check:
        lat = check["latency_ms"]
        runs = [describe(label, check[key], lat) + f", {check[key]['records_per_s']:,.0f} records/s"
                for key, label in (("erp_sync", "erp-sync"), ("peer", "Parallel Consumer")) if check.get(key)]
        lines.append(f"Capacity check: stub capacity {check['capacity']} at {lat:g} ms, MAX_IN_FLIGHT "
                     f"{results['args']['max_in_flight']}"
                     + (f", erp-sync env {results['args']['erp_sync_env']}" if results["args"]["erp_sync_env"] else "")
                     + ": " + "; ".join(runs))
    return lines


def target_lines(checks: list[dict[str, Any]]) -> list[str]:
    lines = []
    for c in checks:
        status = "n/a " if c["pass"] is None else ("PASS" if c["pass"] else "FAIL")
        value = "-" if c["value"] is None else f"{c['value']:,.3g}"
        note = f"  [{c['note']}]" if c["note"] else ""
        lines.append(f"  {status}  {c['target']}: {value} (target {c['op']} {c['limit']:,}){note}")
    return lines


def render(results: dict[str, Any], checks: list[dict[str, Any]]) -> str:
    m = results["machine"]
    v = m["versions"]
    lines = [
        f"apaas-erp-sync benchmark — {m['date']} — {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gb']} GB, "
        f"load avg at start {m['loadavg_start'][0]:.1f}, at end {m.get('loadavg_end', [0])[0]:.1f}",
        f"Python {m['python']}; confluent-kafka {v['confluent-kafka']} (librdkafka {v['librdkafka']}), "
        f"httpx {v['httpx']}, aiohttp {v['aiohttp']}, uvloop {v.get('uvloop')}, fastavro {v['fastavro']}, "
        f"orjson {v['orjson']}; code {m['code']['head']}"
        + (f" + uncommitted {', '.join(m['code']['changed'])}" if m["code"]["changed"] else ""),
        f"{results['args']['records']:,} records, {results['args']['partitions']} partitions, "
        f"{results['dataset_approved']:,} approved, 10,000 keys; erp-sync MAX_IN_FLIGHT "
        f"{results['args'].get('erp_sync_in_flight', results['args']['max_in_flight'])}, ceiling and baseline "
        f"{results['args']['max_in_flight']}; "
        f"rates over the active window (first push → last verdict)",
        "",
    ]
    header = ["latency", "consumer", "records", "window s", "records/s", "pushes/s", "x baseline", "of ceiling",
              "CPU s/1k rec", "peak RSS MB", "commits", "duplicates", "delivered", "load"]
    rows = []
    for row in results["latencies"]:
        for key in ("naive", "erp_sync"):
            r = row.get(key)
            if not r:
                continue
            naive = row.get("naive")
            ratio = r["records_per_s"] / naive["records_per_s"] if key == "erp_sync" and naive else None
            frac = row.get("ceiling_fraction") if key == "erp_sync" else None
            d = r["delivery"]
            delivered = "OK" if d["all_delivered"] else "FAIL"
            if d.get("order_violations"):
                delivered += f" ({d['order_violations']} order)"
            records = f"{r['records']:,}" + ("*" if key == "naive" and row.get("erp_sync")
                                            and r["records"] < row["erp_sync"]["records"] else "")
            rows.append([f"{row['latency_ms']:g} ms", "naive" if key == "naive" else "erp-sync run", records,
                         fmt(r["window_s"], ".1f"), fmt(r["records_per_s"]), fmt(r["pushes_per_s"]),
                         fmt(ratio, ".1f"), "-" if frac is None else f"{frac:.0%}",
                         fmt(r["cpu_s_per_1k_records"], ".3f"), fmt(r["peak_rss_mb"], ".0f"), f"{r['commits']:,}",
                         f"{d['duplicates']:,}", delivered, fmt(r["extra"].get("loadavg_1m_after"), ".1f")])
    lines.append(table(rows, header))
    if any(row.get("naive") and row.get("erp_sync") and row["naive"]["records"] < row["erp_sync"]["records"]
           for row in results["latencies"]):
        lines.append("* the baseline ran on a prefix of the topic (its rate is measured on that prefix)")
    lines.append("window: first push at the stub → last verdict (erp-sync: erp_sync_last_accepted_timestamp_seconds; "
                 "naive: its last commit); CPU: user+sys of the process in that window; load: 1-min load average "
                 "after the run")
    lines.append("")
    ceil = [f"{row['latency_ms']:g} ms {row['ceiling']['requests_per_s']:,.0f} req/s"
            for row in results["latencies"] if row.get("ceiling") and "requests_per_s" in row["ceiling"]]
    if ceil:
        lines.append(f"HTTP ceiling ({CEILING_TRANSPORT}: one event loop, one ErpClient, await post_async under "
                     f"asyncio.Semaphore({results['args']['max_in_flight']}), aiohttp's client directly, no Kafka): "
                     + "; ".join(ceil))
    cost = results.get("cpu_cost")
    if cost:
        lines.append(
            f"CPU cost per record ({cost['events']:,} events, {cost['avg_value_bytes']:.0f} B, single thread, "
            f"Avro reader {cost.get('avro_reader', '?')}): "
            f"decode {cost['decode_us']:.1f} µs; decode+filter {cost['decode_filter_us']:.1f} µs; "
            f"decode+filter+transform+encode {cost['full_all_us']:.1f} µs per record "
            f"({1e6 / cost['full_all_us']:,.0f} records/s/core), {cost['full_approved_us']:.1f} µs per approved "
            f"record; transform+encode alone {cost['transform_only_us']:.1f} µs per approved record")
    if results.get("transports"):
        lines.append("")
        lines.append(transport_table(results["transports"], results["args"]["max_in_flight"]))
    scale = results.get("scale")
    if scale:
        lines.append(f"Scale at {scale['latency_ms']:g} ms, MAX_IN_FLIGHT {scale.get('max_in_flight', '?')} fixed: "
                     f"one process {scale['one_records_per_s']:,.0f} records/s, "
                     f"two processes in one group {scale['two_records_per_s']:,.0f} records/s: "
                     f"x{scale['ratio']:.2f} (delivered: {'OK' if scale['all_delivered'] else 'FAIL'})")
    rss = results.get("rss")
    if rss:
        lines.append("")
        lines.extend(rss_lines(rss))
    for prof in results.get("profiles", []):
        summ = prof.get("summary") or {}
        if "self_pct" not in summ:
            lines.append(f"Profile at {prof['latency_ms']:g} ms: {summ.get('error', 'none')}")
            continue
        threads = ", ".join(f"{name.replace('thread (N): ', '')} {pct}%" for name, pct in summ["threads_pct"][:3])
        hot = "; ".join(f"{name} {pct}%" for name, pct in summ["inclusive_pct"][:8])
        lines.append(f"Profile at {prof['latency_ms']:g} ms (py-spy --gil, {summ['samples']} samples of the GIL "
                     f"holder): threads {threads}")
        lines.append(f"  inclusive: {hot}")
        lines.append("  self: " + "; ".join(f"{name} {pct}%" for name, pct in summ["self_pct"][:6]))
        lines.append(f"  stacks: {summ['file']} (collapsed format: speedscope.app or flamegraph.pl)")
    erp_side = erp_side_lines(results)
    if erp_side:
        lines.append("")
        lines.extend(erp_side)
    if results.get("peer"):
        lines.append("")
        lines.extend(peer_lines(results))
    lines.append("")
    lines.append("Targets (bench/bounds.json):")
    lines.extend(target_lines(checks))
    if results.get("peer_checks"):
        lines.append("")
        lines.append("Targets of issue 14 (bench/bounds_peer.json; printed only: the exit status is about "
                     "correctness):")
        lines.extend(target_lines(results["peer_checks"]))
    return "\n".join(lines)
