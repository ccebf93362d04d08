"""The benchmark's command line: erp-sync run vs the naive consumer, the HTTP ceiling, CPU cost, RSS, scale.

    .venv/bin/python -m bench.run [--records 50000] [--latencies 0,5,50] [--partitions 6]
                                   [--backlog 1000000] [--baseline-records 50=2000] [--quick]
                                   [--peer [--peer-records 0=250000] [--peer-rounds 3]]
                                   [--stub-capacity N] [--capacity-check 32]

See bench/README.md for what is measured and how. Exit status: 0 when every correctness check
passed (whatever the performance), 1 when one failed (an approved record missing at the stub,
per-key order broken, a consumer crashed), 2 for a setup error.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench import BENCH, log, peer, scenarios
from bench.checks import evaluate, evaluate_peer
from bench.http_ceiling import CEILING_TRANSPORT, TRANSPORTS
from bench.measure import machine_info
from bench.render import render
from bench.scenarios import (
    IDLE_S,
    RunResult,
    cpu_cost,
    http_measure,
    run_baseline,
    run_erp_sync,
    run_profiles,
    run_rss,
    run_scale,
)
from bench.stack import Stub, make_dataset
from dev.harness import Broker, start_broker


def parse_baseline_spec(spec: str, latencies: Iterable[float], records: int) -> dict[float, int]:
    """``"50=2000"`` or ``"1000"`` or ``"0=2000,5=1000,50=300"`` → records per latency (default: all)."""
    out = {lat: records for lat in latencies}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if "=" in part:
            lat, _, count = part.partition("=")
            if float(lat) in out:
                out[float(lat)] = min(records, int(count))
        else:
            out = {lat: min(records, int(part)) for lat in out}
    return out


def parse_peer_records(spec: str, latencies: Iterable[float], records: int) -> dict[float, int]:
    """``"0=250000"`` or ``"100000"`` → the topic size of the side-by-side run per latency (default: the topic's)."""
    out = {lat: records for lat in latencies}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if "=" in part:
            lat, _, count = part.partition("=")
            if float(lat) in out:
                out[float(lat)] = int(count)
        else:
            out = dict.fromkeys(out, int(part))
    return out


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run",
                                     description="Benchmark erp-sync run against the naive consumer (issue 5).")
    parser.add_argument("--records", type=int, default=None, help="events in the topic (default 50000; quick 10000)")
    parser.add_argument("--latencies", default="0,5,50", help="ERP stub latencies in ms (default 0,5,50)")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--max-in-flight", type=int, default=32,
                        help="the HTTP ceiling's and the naive baseline's concurrency, and the fixed concurrency the "
                             "50 ms target is computed from (default 32)")
    parser.add_argument("--erp-sync-in-flight", default="auto",
                        help="ERP_SYNC_MAX_IN_FLIGHT of every erp-sync run: auto (default: adaptive, up to "
                             "ERP_SYNC_MAX_IN_FLIGHT_CEILING) or a number")
    parser.add_argument("--baseline-records", default=None,
                        help="records the naive baseline consumes, per latency: '50=2000' (default; others all), "
                             "'0=2000,5=1000,50=300' (quick), or one number for every latency")
    parser.add_argument("--backlog", type=int, default=None,
                        help="records of the RSS run (default 1000000; quick 100000; 0 skips it)")
    parser.add_argument("--rss-seconds", type=float, default=None,
                        help="how long the RSS run consumes the backlog before SIGTERM (default 120; quick 60)")
    parser.add_argument("--no-scale", action="store_true", help="skip the two-process scale run")
    parser.add_argument("--no-transports", action="store_true", help="skip the transport comparison")
    parser.add_argument("--no-baseline", action="store_true", help="skip the naive baseline")
    parser.add_argument("--profile", nargs="?", const="first", default=None, metavar="LATENCIES",
                        help="also profile erp-sync run with py-spy (extra, unmeasured runs) at these latencies "
                             "(default: the first one); the collapsed stacks go to bench/results/")
    parser.add_argument("--ceiling-seconds", type=float, default=None, help="seconds per HTTP ceiling measurement")
    parser.add_argument("--erp-sync-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment of every erp-sync run (repeatable), e.g. "
                             "ERP_SYNC_KAFKA_CONSUMER_PARTITION_ASSIGNMENT_STRATEGY=cooperative-sticky")
    peer_opts = parser.add_argument_group("the Java peer (issue 14)")
    peer_opts.add_argument("--peer", action="store_true",
                           help="also run the Parallel Consumer peer (bench/peers/parallel-consumer, built with Maven) "
                                "on the same topic and stub at every latency, and print the side-by-side table")
    peer_opts.add_argument("--peer-records", default="", metavar="SPEC",
                           help="topic size of the side-by-side run per latency, e.g. '0=250000' (a topic of its own, "
                                "erp-sync run again on it); default: the benchmark's topic")
    peer_opts.add_argument("--peer-rounds", type=positive_int, default=1,
                           help="side-by-side rounds per latency, alternating erp-sync and the peer; medians shown")
    peer_opts.add_argument("--peer-concurrency", type=positive_int, default=32,
                           help="the peer's maxConcurrency (default 32)")
    peer_opts.add_argument("--peer-commit-mode", default="PERIODIC_CONSUMER_ASYNCHRONOUS",
                           choices=["PERIODIC_CONSUMER_ASYNCHRONOUS", "PERIODIC_CONSUMER_SYNC"],
                           help="the peer's commit mode (default: Parallel Consumer's default, asynchronous)")
    peer_opts.add_argument("--peer-java-opts", default="",
                           help="JVM options of the peer, one string: --peer-java-opts='-Xmx256m' "
                                "(default none: the JVM's defaults)")
    peer_opts.add_argument("--stub-capacity", type=positive_int, default=None,
                           help="the ERP stub serves this many pushes at once, the rest queue (default: unlimited); "
                                "prints the ERP-side latency p99 / base latency of every run")
    peer_opts.add_argument("--capacity-check", type=positive_int, default=None, metavar="N",
                           help="one more erp-sync run (and peer run with --peer) at the largest latency against "
                                "a stub of capacity N: the ERP-side p99 must stay near the base latency")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="10,000 records, short baseline prefixes, 100,000-record RSS run, shorter measurements")
    parser.add_argument("--results-dir", default=str(BENCH / "results"))
    args = parser.parse_args(argv)
    extra_env: dict[str, str] = {}
    for item in args.erp_sync_env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("ERP_SYNC_"):
            parser.error(f"--erp-sync-env wants ERP_SYNC_NAME=VALUE, got {item!r}")
        extra_env[name] = value
    args.erp_sync_env = extra_env
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    scenarios.EXTRA_ENV.update({"ERP_SYNC_MAX_IN_FLIGHT": args.erp_sync_in_flight, **args.erp_sync_env})
    quick = args.quick
    records = args.records or (10_000 if quick else 50_000)
    latencies = [float(x) for x in args.latencies.split(",") if x.strip()]
    baseline_spec = args.baseline_records or ("0=2000,5=1000,50=300" if quick else "50=2000")
    baseline_records = parse_baseline_spec(baseline_spec, latencies, records)
    backlog = args.backlog if args.backlog is not None else (100_000 if quick else 1_000_000)
    rss_seconds = args.rss_seconds or (60.0 if quick else 120.0)
    ceiling_s = args.ceiling_seconds or (3.0 if quick else 5.0)
    transport_s = 2.0 if quick else 5.0
    cpu_repeat = 1 if quick else 3
    mif = args.max_in_flight

    bounds = json.loads((BENCH / "bounds.json").read_text())
    out_dir = Path(args.results_dir)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S") + ("-quick" if quick else "")
    results: dict[str, Any] = {
        "args": {"records": records, "latencies": latencies, "partitions": args.partitions, "max_in_flight": mif,
                 "erp_sync_in_flight": args.erp_sync_in_flight,
                 "baseline_records": {f"{k:g}": v for k, v in baseline_records.items()}, "backlog": backlog,
                 "rss_seconds": rss_seconds, "ceiling_transport": CEILING_TRANSPORT,
                 "quick": quick, "seed": args.seed, "idle_s": IDLE_S, "erp_sync_env": dict(scenarios.EXTRA_ENV),
                 "stub_capacity": args.stub_capacity, "capacity_check": args.capacity_check},
        "machine": machine_info(),
        "latencies": [],
    }
    peer_records = parse_peer_records(args.peer_records, latencies, records) if args.peer else {}
    java_opts = args.peer_java_opts.split()
    if args.peer:
        results["args"].update(peer=True, peer_records={f"{k:g}": v for k, v in peer_records.items()},
                               peer_rounds=args.peer_rounds, peer_concurrency=args.peer_concurrency,
                               peer_commit_mode=args.peer_commit_mode, peer_java_opts=java_opts)
    correctness_ok = True
    workdir = Path(tempfile.mkdtemp(prefix="erp-sync-bench-"))
    log(f"work dir {workdir}")
    broker: Broker | None = None
    stub: Stub | None = None
    try:
        broker = start_broker(workdir)
        log(f"broker {broker.bootstrap} ({'started' if broker.managed else 'KAFKA_BOOTSTRAP_SERVERS'})")
        if args.peer:
            peer.build()
            check = peer.self_check(peer.default_check_events(records, args.seed))
            results["peer"] = {"versions": peer.VERSIONS, "java": peer.java_version(), "self_check": check,
                               "rows": []}
            log(f"peer bodies against erp-sync's: {check['events']} events, {check['differences']} differences")
            correctness_ok &= check["differences"] == 0
        data = make_dataset(broker, "bench", args.partitions, records, args.seed, keep_expected=True)
        results["dataset_approved"] = data.approved
        results["produce_records_per_s"] = records / data.produce_s
        stub = Stub(workdir, capacity=args.stub_capacity)
        log(f"ERP stub {stub.url}" + (f", capacity {args.stub_capacity}" if args.stub_capacity else ""))

        for lat in latencies:
            row: dict[str, Any] = {"latency_ms": lat}
            stub.prepare(lat)
            row["ceiling"] = http_measure(stub.url, CEILING_TRANSPORT, mif, ceiling_s)
            log(f"HTTP ceiling at {lat:g} ms: {row['ceiling'].get('requests_per_s', 0):,.0f} req/s")
            if not args.no_baseline:
                naive = run_baseline(broker, stub, data, lat, baseline_records[lat], workdir)
                row["naive"] = naive.as_json()
                correctness_ok &= naive.delivery["all_delivered"]
                log(f"  naive: {naive.records_per_s:,.1f} records/s, delivered "
                    f"{'OK' if naive.delivery['all_delivered'] else 'FAIL'}")
            ours = run_erp_sync(broker, stub, data, lat, mif, workdir)
            row["erp_sync"] = ours.as_json()
            correctness_ok &= ours.delivery["all_delivered"]
            ceiling = row["ceiling"].get("requests_per_s")
            row["ceiling_fraction"] = ours.pushes_per_s / ceiling if ceiling else None
            log(f"  erp-sync: {ours.records_per_s:,.1f} records/s, {ours.pushes_per_s:,.1f} pushes/s, delivered "
                f"{'OK' if ours.delivery['all_delivered'] else 'FAIL'} {ours.delivery.get('missing')} missing")
            results["latencies"].append(row)
            if args.peer and peer_records[lat] == records:
                summary, ok = peer.side_by_side(broker, stub, data, lat, mif, args.peer_concurrency, args.peer_rounds,
                                                workdir, java_opts, args.peer_commit_mode, ours_done=row["erp_sync"])
                results["peer"]["rows"].append(summary)
                correctness_ok &= ok

        if args.peer:
            for count in sorted({n for n in peer_records.values() if n != records}):
                peer_data = make_dataset(broker, "bench-peer", args.partitions, count, args.seed, keep_expected=True)
                for lat in (lat for lat in latencies if peer_records[lat] == count):
                    summary, ok = peer.side_by_side(broker, stub, peer_data, lat, mif, args.peer_concurrency,
                                                    args.peer_rounds, workdir, java_opts, args.peer_commit_mode)
                    results["peer"]["rows"].append(summary)
                    correctness_ok &= ok
            results["peer"]["rows"].sort(key=lambda r: r["latency_ms"])

        if args.capacity_check:
            lat = max(latencies) or 50.0
            check_runs: dict[str, Any] = {"latency_ms": lat, "capacity": args.capacity_check}
            with stub.capacity_as(args.capacity_check):
                runs: list[tuple[str, RunResult]] = [
                    ("erp_sync", run_erp_sync(broker, stub, data, lat, mif, workdir,
                                              label=f"capacity-{args.capacity_check}"))]
                if args.peer:
                    runs.append(("peer", peer.run_peer(broker, stub, data, lat, args.peer_concurrency, workdir,
                                                       java_opts, args.peer_commit_mode,
                                                       label=f"parallel-consumer-capacity-{args.capacity_check}")))
            for name, run in runs:
                check_runs[name] = run.as_json()
                correctness_ok &= run.delivery["all_delivered"]
                p99 = (run.delivery.get("erp_latency_ms") or {}).get("p99")
                log(f"  capacity check ({name}): ERP-side p99 {p99} ms at base {lat:g} ms, "
                    f"{run.records_per_s:,.0f} records/s")
            results["capacity_check"] = check_runs

        if not args.no_transports:
            stub.prepare(0)
            results["transports"] = []
            for transport in TRANSPORTS:
                for conc in (1, mif):
                    res = http_measure(stub.url, transport, conc, transport_s)
                    results["transports"].append(res)
                    log(f"transport {transport} c={conc}: {res.get('requests_per_s', 0):,.0f} req/s")
                    stub.client.clear()

        log("CPU cost of decode + filter + transform + encode (100,000 events)")
        results["cpu_cost"] = cpu_cost(100_000, cpu_repeat)

        if not args.no_scale:
            lat = float(bounds.get("scale_latency_ms", 50))
            results["scale"], ok = run_scale(broker, stub, data, lat, mif, workdir)
            correctness_ok &= ok

        if args.profile:
            prof_lats = latencies[:1] if args.profile == "first" else [float(x) for x in args.profile.split(",")]
            results["profiles"] = run_profiles(broker, stub, data, prof_lats, mif, workdir, out_dir, stamp)

        if backlog:
            rss_data = make_dataset(broker, "bench-rss", args.partitions, backlog, args.seed + 1, keep_expected=False,
                                    keep_offsets=True)
            rss = run_rss(broker, stub, rss_data, mif, args.partitions, workdir, rss_seconds)
            correctness_ok &= rss["delivery"]["all_delivered"]
            results["rss"] = rss
    except Exception as exc:
        log(f"benchmark aborted: {type(exc).__name__}: {exc}")
        results["aborted"] = f"{type(exc).__name__}: {exc}"
        correctness_ok = False
    finally:
        if stub is not None:
            stub.close()
        if broker is not None and broker.managed:
            with contextlib.suppress(Exception):
                broker.wipe()
        results["machine"]["loadavg_end"] = os.getloadavg()

    checks = evaluate(results, bounds, mif) if "aborted" not in results else []
    results["checks"] = checks
    if (args.peer or args.capacity_check) and "aborted" not in results:
        results["peer_checks"] = evaluate_peer(results, json.loads((BENCH / "bounds_peer.json").read_text()))
    results["correctness_ok"] = correctness_ok
    text = render(results, checks) if results["latencies"] else "(no results)"
    results["report"] = text
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / f"{stamp}.json"
    out_path.write_text(json.dumps(results, indent=2, default=str))
    if correctness_ok:
        shutil.rmtree(workdir, ignore_errors=True)
    print(text)
    print(f"\nresults: {out_path}" + ("" if correctness_ok else f"\nlogs kept in {workdir}"))
    if not correctness_ok:
        print("CORRECTNESS CHECK FAILED: not every approved record reached the stub exactly as expected "
              "(or a consumer failed); see the JSON", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
