"""The Java peer (issue 14): Confluent Parallel Consumer doing erp-sync's job, side by side with it.

The peer is ``bench/peers/parallel-consumer`` (one Java class, built with Maven into a shaded
jar): Parallel Consumer 0.5.3.3, key order, ``maxConcurrency`` 32, its default commit mode
(periodic asynchronous consumer commits), Apache Avro's generic reader, Jackson for the ERP body,
``java.net.http`` for the POST, the verdict read from the body. See its class comment.

* :func:`build` runs ``mvn -q -f bench/peers/parallel-consumer/pom.xml package`` once; the jar is
  kept in the (git-ignored) ``target/`` with the digest of the pom and the sources beside it, so a
  second run does not rebuild.
* :func:`self_check` runs the jar's ``--transform`` mode on the specification's example, the
  samples and the first records of the benchmark's topic and compares every body, byte for byte,
  with erp-sync's (``consumer.transform.erp_request``).
* :func:`run_peer` runs it against the benchmark's broker, topic and stub as its own group, with
  the same measurements as ``erp-sync run`` (window, CPU of the java process from /proc, VmHWM) and
  the same delivery checks.
* :func:`side_by_side` runs both per latency (``--peer-rounds`` times, alternating) and keeps the
  medians.

``python -m bench.peer --build`` builds (or finds) the jar and runs the self-check alone.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import statistics
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from bench import BENCH, ROOT, log
from bench.checks import check_delivery
from bench.measure import peak_rss_mb, rss_timeline, run_watched, wait_exact
from bench.scenarios import RunResult, run_erp_sync
from bench.stack import Dataset, Stub
from dev.harness import Broker

PEER_DIR = BENCH / "peers" / "parallel-consumer"
POM = PEER_DIR / "pom.xml"
JAR = PEER_DIR / "target" / "parallel-consumer-peer-1-all.jar"
STAMP = PEER_DIR / "target" / ".built-from"
SCHEMA = ROOT / "schemas" / "workflow_completed.v1.avsc"
PEER_NAME = "Parallel Consumer"
VERSIONS = {"parallel-consumer-core": "0.5.3.3", "kafka-clients": "3.9.1", "avro": "1.12.0",
            "jackson": "2.19.0", "slf4j-simple": "2.0.13"}
"""What the pom pins (kafka-clients comes with Parallel Consumer), for the report."""
IDLE_EXIT_S = 2.0


def _digest() -> str:
    h = hashlib.sha256(POM.read_bytes())
    for path in sorted((PEER_DIR / "src").rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(PEER_DIR)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def build(force: bool = False) -> Path:
    """The peer's shaded jar: built by Maven unless the jar of these sources is there already."""
    want = _digest()
    if not force and JAR.is_file() and STAMP.is_file() and STAMP.read_text().strip() == want:
        log(f"peer: {JAR.relative_to(ROOT)} is up to date (no rebuild)")
        return JAR
    log(f"peer: building {JAR.relative_to(ROOT)} with Maven (mvn -q -f {POM.relative_to(ROOT)} package)")
    done = subprocess.run(["mvn", "-q", "-B", "-f", str(POM), "package"], cwd=ROOT, capture_output=True,
                          text=True, timeout=1200)
    if done.returncode != 0 or not JAR.is_file():
        raise RuntimeError(f"building the peer failed (exit {done.returncode}):\n{done.stdout[-3000:]}"
                           f"{done.stderr[-3000:]}")
    STAMP.write_text(want + "\n")
    return JAR


def java_version() -> str:
    done = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=60)
    first = (done.stderr or done.stdout).splitlines()
    return first[0] if first else "?"


def self_check(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The peer's body for each event against erp-sync's, byte for byte (``SKIP`` / ``INVALID <code>`` too)."""
    from consumer.devstack.events import encode
    from consumer.errors import ValidationError
    from consumer.transform import erp_request, is_pushed

    lines = "".join(base64.b64encode(encode(e)).decode() + "\n" for e in events)
    done = subprocess.run(["java", "-jar", str(JAR), "--schema", str(SCHEMA), "--transform"], input=lines.encode(),
                          capture_output=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"the peer's --transform failed: {done.stderr.decode(errors='replace')[-2000:]}")
    got = done.stdout.split(b"\n")
    differences = []
    pushed = 0
    for i, event in enumerate(events):
        if not is_pushed(event):
            want = b"SKIP"
        else:
            try:
                want = erp_request(event)[0]
                pushed += 1
            except ValidationError as exc:
                want = b"INVALID " + exc.code.encode()
        if i >= len(got) or got[i] != want:
            differences.append({"index": i, "erp_sync": want.decode(errors="replace"),
                                "peer": got[i].decode(errors="replace") if i < len(got) else None})
    return {"events": len(events), "bodies": pushed, "differences": len(differences),
            "first_differences": differences[:3]}


def default_check_events(records: int, seed: int) -> list[dict[str, Any]]:
    """The spec's example, the 50 samples and the first records of the benchmark's topic (same generator, seed)."""
    from consumer.devstack.events import spec_example_event
    from consumer.devstack.samples import generate_events, sample_events

    head = list(generate_events(min(records, 3000), seed=seed, approved_ratio=0.5, distinct_instances=10_000,
                                target_bytes=300))
    return [spec_example_event(), *sample_events(50), *head]


def run_peer(broker: Broker, stub: Stub, data: Dataset, latency_ms: float, concurrency: int, workdir: Path,
             java_opts: list[str], commit_mode: str = "PERIODIC_CONSUMER_ASYNCHRONOUS",
             label: str = "parallel-consumer") -> RunResult:
    """The peer on the whole topic as a fresh group; measured like ``erp-sync run`` (see bench/README.md)."""
    stub.prepare(latency_ms)
    stub_cpu0 = stub.cpu_s()
    group = f"bench-peer-{uuid.uuid4().hex[:8]}"
    timeout = 240 + data.records / 40
    log(f"{label} at {latency_ms:g} ms: {data.records} records, maxConcurrency {concurrency} (timeout {timeout:.0f} s)")
    log_path = workdir / f"{label}-{latency_ms:g}ms.log"
    out_path = workdir / f"{label}-{latency_ms:g}ms.json"
    log_path.unlink(missing_ok=True)
    cmd = ["java", *java_opts, "-jar", str(JAR), "--schema", str(SCHEMA), "--bootstrap", broker.bootstrap,
           "--topic", data.topic, "--group", group, "--url", stub.url, "--max-concurrency", str(concurrency),
           "--expect-records", str(data.records), "--idle-exit-s", str(IDLE_EXIT_S), "--commit-mode", commit_mode]
    with open(out_path, "wb") as stdout:
        proc, watch, started = run_watched(cmd, dict(os.environ), log_path, timeout, stdout=stdout, cwd=ROOT)
        exited = wait_exact(proc, watch, started, timeout)
    try:
        own: dict[str, Any] = json.loads(out_path.read_text().strip().splitlines()[-1])
    except (ValueError, IndexError):
        own = {}
    delivery = check_delivery(stub, data.expected, data.approved, require_all=True)
    if exited.code != 0 or exited.timed_out or not own:
        delivery["all_delivered"] = False
        delivery["crashed"] = [exited.code]
        log(f"{label}: exit {exited.code}{' (timed out)' if exited.timed_out else ''}; see {log_path}")
    if own and own.get("records", 0) < data.records:
        delivery["all_delivered"] = False
        delivery["peer_records_short"] = data.records - own.get("records", 0)
    t_first = delivery.get("t_first_push") or own.get("t_first_record") or started
    t_end = own.get("t_last_finished") or exited.ended
    window = max(1e-6, t_end - t_first)
    a, b = watch.cpu_at(t_first), watch.cpu_at(t_end)
    cpu_window = (b - a) if a is not None and b is not None else exited.cpu_s
    extra = {
        "own": own,
        "window_end": "the peer's last finished record (t_last_finished)",
        "startup_s": round(t_first - started, 3),
        "process_runtime_s": round(exited.ended - started, 3),
        "exit_codes": [exited.code],
        "loadavg_1m_after": os.getloadavg()[0],
        "stub_cpu_s": stub.cpu_s() - stub_cpu0,
        "rss_timeline_mb": rss_timeline(watch),
        "ru_maxrss_mb": [round(exited.maxrss_kb / 1024, 1)],
        "cores_busy": round(cpu_window / window, 2),
    }
    return RunResult(label, latency_ms, int(own.get("records") or data.records), data.approved, window, cpu_window,
                     exited.cpu_s, peak_rss_mb(exited), watch.hwm_kb / 1024, int(own.get("commits") or 0), delivery,
                     e2e_s=t_end - started, extra=extra)


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def summarise(latency_ms: float, ours: list[dict[str, Any]], peer: list[dict[str, Any]],
              records: int) -> dict[str, Any]:
    """Medians over the rounds of one latency, and the ratios of the side-by-side table."""
    def med(runs: list[dict[str, Any]]) -> dict[str, Any]:
        lat = [r["delivery"].get("erp_latency_ms") or {} for r in runs]
        p99 = [x["p99"] for x in lat if x.get("p99") is not None]
        return {
            "records_per_s": _median(runs, "records_per_s"),
            "records_per_s_range": [min(r["records_per_s"] for r in runs), max(r["records_per_s"] for r in runs)],
            "cpu_s_per_1k_records": _median(runs, "cpu_s_per_1k_records"),
            "peak_rss_mb": _median(runs, "peak_rss_mb"),
            "cores_busy": statistics.median(r["cpu_window_s"] / r["window_s"] for r in runs),
            "erp_p99_ms": statistics.median(p99) if p99 else None,
            "max_concurrency_at_stub": max(r["delivery"].get("max_concurrency_at_stub") or 0 for r in runs),
            "duplicates": max(r["delivery"].get("duplicates") or 0 for r in runs),
            "all_delivered": all(r["delivery"]["all_delivered"] for r in runs),
            "order_violations": sum(r["delivery"].get("order_violations") or 0 for r in runs),
            "loadavg_1m_after": [r["extra"].get("loadavg_1m_after") for r in runs],
        }

    o, p = med(ours), med(peer)
    return {
        "latency_ms": latency_ms, "records": records, "rounds": len(ours), "ours": o, "peer": p,
        "records_per_s_ratio": o["records_per_s"] / p["records_per_s"] if p["records_per_s"] else None,
        "cpu_per_record_ratio": o["cpu_s_per_1k_records"] / p["cpu_s_per_1k_records"]
        if p["cpu_s_per_1k_records"] else None,
        "peak_rss_ratio": o["peak_rss_mb"] / p["peak_rss_mb"] if p["peak_rss_mb"] else None,
        "runs": {"ours": ours, "peer": peer},
    }


def side_by_side(broker: Broker, stub: Stub, data: Dataset, latency_ms: float, max_in_flight: int, concurrency: int,
                 rounds: int, workdir: Path, java_opts: list[str], commit_mode: str,
                 ours_done: dict[str, Any] | None = None) -> tuple[dict[str, Any], bool]:
    """erp-sync run and the peer on the same topic and stub at one latency, ``rounds`` times each, alternating.

    ``ours_done``: an ``erp-sync run`` of this topic and latency made already (counts as its first round).
    Returns the summary and whether every run delivered correctly.
    """
    ours: list[dict[str, Any]] = [ours_done] if ours_done is not None else []
    peer: list[dict[str, Any]] = []
    for i in range(rounds):
        if len(ours) <= i:
            ours.append(run_erp_sync(broker, stub, data, latency_ms, max_in_flight, workdir,
                                     label=f"erp-sync-r{i + 1}").as_json())
        run = run_peer(broker, stub, data, latency_ms, concurrency, workdir, java_opts, commit_mode,
                       label=f"parallel-consumer-r{i + 1}")
        peer.append(run.as_json())
        log(f"  {PEER_NAME}: {run.records_per_s:,.1f} records/s, CPU {run.cpu_per_1k:.3f} s/1k, peak RSS "
            f"{run.peak_rss_mb:.0f} MB, delivered {'OK' if run.delivery['all_delivered'] else 'FAIL'}")
    summary = summarise(latency_ms, ours, peer, data.records)
    ok = summary["ours"]["all_delivered"] and summary["peer"]["all_delivered"]
    return summary, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__.split("\n")[0])
    parser.add_argument("--build", action="store_true", help="build (or find) the jar and run the self-check")
    parser.add_argument("--force", action="store_true", help="rebuild even when the jar is up to date")
    args = parser.parse_args(argv)
    jar = build(force=args.force)
    print(f"jar: {jar}")
    result = self_check(default_check_events(3000, seed=1))
    print(json.dumps(result, ensure_ascii=False))
    return 0 if result["differences"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
