"""What is run: the naive baseline, ``erp-sync run`` (one or more processes), the RSS run, the ceiling and CPU cost."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import ERP_SYNC, ROOT, bench_module, log
from bench.checks import check_delivery, check_partial_delivery
from bench.measure import (
    RSS_SAMPLE_S,
    Exited,
    first_at_least,
    metric,
    parse_log,
    peak_rss_mb,
    reap,
    records_finished,
    rss_timeline,
    run_watched,
    value_at,
    wait_exact,
)
from bench.profiler import finish_profiler, start_profiler
from bench.stack import Dataset, Stub
from dev.harness import Broker, committed, free_port

IDLE_S = 2.0
"""``erp-sync run --exit-when-idle`` of the measured runs, in s."""

EXTRA_ENV: dict[str, str] = {}
"""``--erp-sync-env`` settings, applied to every ``erp-sync run`` of this benchmark."""


def erp_sync_env(broker: Broker, topic: str, group: str, url: str, max_in_flight: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERP_SYNC_")}
    env.update({
        "ERP_SYNC_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "ERP_SYNC_TOPIC": topic,
        "ERP_SYNC_GROUP_ID": group,
        "ERP_SYNC_ERP_URL": url,
        "ERP_SYNC_METRICS_PORT": str(free_port()),
        "ERP_SYNC_METRICS_HOST": "127.0.0.1",
        "ERP_SYNC_LOG_FORMAT": "json",
        "ERP_SYNC_MAX_IN_FLIGHT": str(max_in_flight),
    })
    env.update(EXTRA_ENV)
    return env


@dataclass
class RunResult:
    """One measured consumer run (baseline or erp-sync)."""

    name: str
    latency_ms: float
    records: int
    approved: int
    window_s: float
    cpu_window_s: float
    cpu_total_s: float
    peak_rss_mb: float
    vmhwm_mb: float
    commits: int
    delivery: dict[str, Any]
    processes: int = 1
    e2e_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def records_per_s(self) -> float:
        return self.records / self.window_s if self.window_s > 0 else 0.0

    @property
    def pushes_per_s(self) -> float:
        return self.approved / self.window_s if self.window_s > 0 else 0.0

    @property
    def cpu_per_1k(self) -> float:
        return self.cpu_window_s / self.records * 1000 if self.records else 0.0

    @property
    def commits_per_record(self) -> float:
        return self.commits / self.records if self.records else 0.0

    def as_json(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items()}
        d.update(records_per_s=self.records_per_s, pushes_per_s=self.pushes_per_s,
                 cpu_s_per_1k_records=self.cpu_per_1k, commits_per_record=self.commits_per_record)
        return d


def run_baseline(broker: Broker, stub: Stub, data: Dataset, latency_ms: float, max_records: int,
                 workdir: Path) -> RunResult:
    stub.prepare(latency_ms)
    stub_cpu0 = stub.cpu_s()
    group = f"bench-naive-{uuid.uuid4().hex[:8]}"
    log_path = workdir / f"naive-{latency_ms:g}ms.log"
    out_path = workdir / f"naive-{latency_ms:g}ms.json"
    cmd = bench_module("naive_consumer", "--bootstrap", broker.bootstrap, "--topic", data.topic,
                       "--group", group, "--url", stub.url, "--max-records", str(max_records))
    timeout = 180 + max_records * (latency_ms / 1000 + 0.05)
    log(f"naive baseline at {latency_ms:g} ms: {max_records} records (timeout {timeout:.0f} s)")
    with open(out_path, "wb") as stdout:
        proc, watch, started = run_watched(cmd, dict(os.environ), log_path, timeout, stdout=stdout, cwd=ROOT)
        exited = wait_exact(proc, watch, started, timeout)
    try:
        own = json.loads(out_path.read_text().strip().splitlines()[-1])
    except (ValueError, IndexError):
        own = {}
    if exited.code != 0 or not own:
        raise RuntimeError(f"the naive consumer failed (exit {exited.code}); see {log_path}")
    delivery = check_delivery(stub, data.expected, own["approved"], require_all=False)
    t_first = delivery["t_first_push"] or own["t_first_record"]
    window = own["t_last_commit"] - t_first
    cpu_window = own["cpu_last_commit"] - own["cpu_first_record"]
    return RunResult("naive", latency_ms, own["records"], own["approved"], window, cpu_window, exited.cpu_s,
                     peak_rss_mb(exited), watch.hwm_kb / 1024, own["commits"], delivery,
                     e2e_s=own["t_last_commit"] - started,
                     extra={"own": own, "loadavg_1m_after": os.getloadavg()[0], "stub_cpu_s": stub.cpu_s() - stub_cpu0,
                            "ru_maxrss_mb": [round(exited.maxrss_kb / 1024, 1)]})


def run_erp_sync(broker: Broker, stub: Stub, data: Dataset, latency_ms: float, max_in_flight: int,
                 workdir: Path, processes: int = 1, label: str = "erp-sync", profile: str | None = None) -> RunResult:
    stub.prepare(latency_ms)
    stub_cpu0 = stub.cpu_s()
    group = f"bench-erp-sync-{uuid.uuid4().hex[:8]}"
    timeout = 240 + data.records / 40
    log(f"{label} at {latency_ms:g} ms: {data.records} records, {processes} process(es), "
        f"MAX_IN_FLIGHT {EXTRA_ENV.get('ERP_SYNC_MAX_IN_FLIGHT', max_in_flight)} (timeout {timeout:.0f} s)")
    running = []
    for i in range(processes):
        env = erp_sync_env(broker, data.topic, group, stub.url, max_in_flight)
        log_path = workdir / f"{label}-{latency_ms:g}ms-{i}.log"
        log_path.unlink(missing_ok=True)
        cmd = [ERP_SYNC, "run", "--exit-when-idle", str(IDLE_S)]
        proc, watch, started = run_watched(cmd, env, log_path, timeout, int(env["ERP_SYNC_METRICS_PORT"]))
        running.append((proc, watch, started, log_path))
    profiler = None
    if profile:
        profiler = start_profiler(running[0][0].pid, workdir, profile)
    exits = [wait_exact(p, w, s, timeout) for p, w, s, _ in running]
    profile_out = finish_profiler(profiler) if profiler else None
    logs = [parse_log(lp) for _, _, _, lp in running]
    delivery = check_delivery(stub, data.expected, data.approved, require_all=True)
    crashed = [e.code for e in exits if e.code != 0 or e.timed_out]
    if crashed:
        delivery["all_delivered"] = False
        delivery["crashed"] = crashed
    # the window: first push at the stub → last verdict applied by the consumer(s)
    last_accepted = [metric(e.watch.metrics, "erp_sync_last_accepted_timestamp_seconds") or 0.0 for e in exits]
    t_end = max(last_accepted)
    how_end = "erp_sync_last_accepted_timestamp_seconds"
    if t_end <= 0 and delivery.get("t_last_push"):
        t_end = delivery["t_last_push"] + latency_ms / 1000
        how_end = "last push at the stub + latency"
    t_first = delivery.get("t_first_push") or min(e.started for e in exits)
    window = max(1e-6, t_end - t_first)
    cpu_window = 0.0
    for e in exits:
        a, b = e.watch.cpu_at(t_first), e.watch.cpu_at(t_end)
        cpu_window += (b - a) if a is not None and b is not None else e.cpu_s
    commits = 0
    for parsed, e in zip(logs, exits, strict=True):
        if parsed["stopped"] is not None:
            commits += parsed["stopped"]["commits"]
        else:
            commits += int(metric(e.watch.metrics, "erp_sync_commits_total", result="ok") or 0)
        commits += int(metric(e.watch.metrics, "erp_sync_commits_total", result="error") or 0)
    extra = {
        "window_end": how_end,
        "startup_s": [round(t_first - e.started, 3) for e in exits],
        "process_runtime_s": [round(e.ended - e.started, 3) for e in exits],
        "exit_codes": [e.code for e in exits],
        "logs": logs,
        "profile": profile_out,
        "loadavg_1m_after": os.getloadavg()[0],
        "stub_cpu_s": stub.cpu_s() - stub_cpu0,
        "rss_timeline_mb": rss_timeline(exits[0].watch),
    }
    e2e = t_end - min(e.started for e in exits)
    extra["ru_maxrss_mb"] = [round(e.maxrss_kb / 1024, 1) for e in exits]  # see peak_rss_mb()
    return RunResult(label, latency_ms, data.records, data.approved, window, cpu_window,
                     sum(e.cpu_s for e in exits), max(peak_rss_mb(e) for e in exits),
                     max(e.watch.hwm_kb for e in exits) / 1024, commits, delivery, processes, e2e, extra)


def run_scale(broker: Broker, stub: Stub, data: Dataset, latency_ms: float, max_in_flight: int,
              workdir: Path) -> tuple[dict[str, Any], bool]:
    """Two ``erp-sync run`` processes in one group against one.

    Both at the fixed ``max_in_flight`` (``--max-in-flight``, 32), as issue 5 defined the target: what a
    second member adds to a group whose members are bound by their concurrency. With ``auto`` one member
    at 50 ms is bound by this 2-core machine instead (the stub and the broker share it), and a second
    process can add little.

    Returns the scale result and whether every run of it delivered correctly.
    """
    ok = True
    saved = EXTRA_ENV.get("ERP_SYNC_MAX_IN_FLIGHT")
    EXTRA_ENV["ERP_SYNC_MAX_IN_FLIGHT"] = str(max_in_flight)  # what a member adds: its fixed concurrency
    try:
        one = run_erp_sync(broker, stub, data, latency_ms, max_in_flight, workdir, label="scale-one").as_json()
        ok &= one["delivery"]["all_delivered"]
        two = run_erp_sync(broker, stub, data, latency_ms, max_in_flight, workdir, processes=2, label="scale-two")
    finally:
        if saved is None:
            EXTRA_ENV.pop("ERP_SYNC_MAX_IN_FLIGHT", None)
        else:
            EXTRA_ENV["ERP_SYNC_MAX_IN_FLIGHT"] = saved
    ok &= two.delivery["all_delivered"]
    return {"latency_ms": latency_ms, "one_records_per_s": one["records_per_s"],
            "two_records_per_s": two.records_per_s,
            "ratio": two.records_per_s / one["records_per_s"] if one["records_per_s"] else 0.0,
            "all_delivered": two.delivery["all_delivered"], "max_in_flight": max_in_flight, "two": two.as_json()}, ok


def run_profiles(broker: Broker, stub: Stub, data: Dataset, latencies: list[float], max_in_flight: int,
                 workdir: Path, out_dir: Path, stamp: str) -> list[dict[str, Any]]:
    """Extra, unmeasured ``erp-sync run`` under py-spy; the stacks are kept in ``out_dir``."""
    profiles = []
    for lat in latencies:
        prof = run_erp_sync(broker, stub, data, lat, max_in_flight, workdir, label="profiled", profile=f"{lat:g}ms")
        summary = prof.extra.get("profile") or {}
        if summary.get("file"):
            out_dir.mkdir(parents=True, exist_ok=True)
            kept = out_dir / f"{stamp}-profile-{lat:g}ms.collapsed.txt"
            shutil.copyfile(summary["file"], kept)
            summary["file"] = str(kept)
        profiles.append({"latency_ms": lat, "records_per_s": prof.records_per_s, "summary": summary})
    return profiles


def run_rss(broker: Broker, stub: Stub, data: Dataset, max_in_flight: int, partitions: int, workdir: Path,
            seconds: float) -> dict[str, Any]:
    """``erp-sync run`` on a big backlog for ``seconds``, VmHWM every 0.2 s, then SIGTERM (must exit 0).

    Draining 1,000,000 records takes far longer than the memory needs to reach its peak: the
    prefetch queue (``queued.max.messages.kbytes``) and the buffered-records bound
    (``ERP_SYNC_MAX_BUFFERED_RECORDS``) fill within seconds on a backlog, and after that the
    consumer only recycles memory. The result says when VmHWM reached 99% of its peak and how many
    records had been consumed by then, against the whole run.
    """
    stub.prepare(0.0)
    group = f"bench-rss-{uuid.uuid4().hex[:8]}"
    env = erp_sync_env(broker, data.topic, group, stub.url, max_in_flight)
    log_path = workdir / "rss-0ms.log"
    log_path.unlink(missing_ok=True)
    log(f"RSS run: erp-sync run on a {data.records:,}-record backlog for {seconds:g} s, then SIGTERM")
    proc, watch, started = run_watched([ERP_SYNC, "run"], env, log_path, seconds,
                                       int(env["ERP_SYNC_METRICS_PORT"]), sample_s=RSS_SAMPLE_S)
    early: Exited | None = None
    while time.time() < started + seconds:
        early = reap(proc, watch, started)
        if early is not None:  # it must not exit on its own
            log(f"RSS run: erp-sync run exited on its own after {early.ended - started:.0f} s "
                f"(exit {early.code})")
            break
        time.sleep(RSS_SAMPLE_S)
    t_sigterm = time.time()
    hwm_at_sigterm_kb = watch.hwm_kb
    if early is None:
        finished_before = records_finished(watch.metrics)
        proc.send_signal(signal.SIGTERM)
        exited = wait_exact(proc, watch, started, timeout_s=60)
    else:
        finished_before = records_finished(watch.metrics)
        exited = early
    parsed = parse_log(log_path)
    committed_offsets = {p: max(0, o) for p, o in
                         committed(broker, group, data.topic, partitions).items()}
    delivery = check_partial_delivery(stub, data, committed_offsets)
    clean = early is None and exited.code == 0 and not exited.timed_out
    if not clean:
        delivery["all_delivered"] = False
        delivery["crashed"] = [exited.code]
    stopped = parsed["stopped"] or {}
    finished = sum(stopped.get(k, 0) for k in ("pushed", "duplicates", "skipped", "dead_lettered")) or int(
        finished_before)
    peak_kb = watch.hwm_kb or exited.maxrss_kb
    hwm_series = [(t, float(kb)) for t, kb in watch.hwm_timeline]
    t99 = first_at_least(hwm_series, 0.99 * peak_kb)
    t_first = delivery.get("t_first_push")
    active_s = t_sigterm - t_first if t_first else t_sigterm - started
    result = {
        "records": data.records,
        "approved": data.approved,
        "seconds": seconds,
        "exit_code": exited.code,
        "clean_exit": clean,
        "shutdown_s": round(exited.ended - t_sigterm, 2),
        "peak_rss_mb": peak_kb / 1024,
        "vmhwm_at_sigterm_mb": hwm_at_sigterm_kb / 1024,
        "startup_s": round(t_first - started, 2) if t_first else None,
        "t_peak99_s": round(t99 - started, 1) if t99 else None,
        "finished_at_peak99": int(value_at(watch.finished_timeline, t99)) if t99 else None,
        "finished_at_sigterm": int(finished_before),
        "finished": finished,
        "committed": sum(committed_offsets.values()),
        "records_per_s": finished_before / active_s if active_s > 0 else 0.0,
        "cpu_total_s": exited.cpu_s,
        "stopped": parsed["stopped"],
        "log_warnings": parsed["warnings"],
        "log_errors": parsed["errors"],
        "events": parsed["events"],
        "delivery": delivery,
        "ru_maxrss_mb": round(exited.maxrss_kb / 1024, 1),
        "hwm_timeline_mb": [(round(t - started, 1), round(kb / 1024, 1)) for t, kb in watch.hwm_timeline[::5]],
        "finished_timeline": [(round(t - started, 1), int(n)) for t, n in watch.finished_timeline[::2]],
        "rss_timeline_mb": rss_timeline(watch),
        "loadavg_1m_after": os.getloadavg()[0],
    }
    log(f"RSS run: peak {result['peak_rss_mb']:.0f} MB (99% at {result['t_peak99_s']} s, "
        f"{result['finished_at_peak99']} records finished by then); {result['finished_at_sigterm']:,} records "
        f"finished by SIGTERM, exit {exited.code}, delivered {'OK' if delivery['all_delivered'] else 'FAIL'}")
    return result


def http_measure(url: str, transport: str, concurrency: int, seconds: float) -> dict[str, Any]:
    cmd = bench_module("http_ceiling", "--url", url, "--transport", transport, "--concurrency",
                       str(concurrency), "--seconds", str(seconds), "--bodies", "4000")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 4 + 120, cwd=ROOT)
    if done.returncode != 0:
        return {"transport": transport, "concurrency": concurrency, "error": done.stderr[-500:]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def cpu_cost(count: int, repeat: int) -> dict[str, Any]:
    done = subprocess.run(bench_module("cpu_cost", "--events", str(count), "--repeat", str(repeat)),
                          capture_output=True, text=True, timeout=1800, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"bench.cpu_cost failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
