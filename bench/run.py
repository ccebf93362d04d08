"""The benchmark of issue 5: erp-sync run vs the naive consumer, the HTTP ceiling, CPU cost, RSS, scale.

    .venv/bin/python -m bench.run [--records 50000] [--latencies 0,5,50] [--partitions 6]
                                   [--backlog 1000000] [--baseline-records 50=2000] [--quick]

See bench/README.md for what is measured and how. Exit status: 0 when every correctness check
passed (whatever the performance), 1 when one failed (an approved record missing at the stub,
per-key order broken, a consumer crashed), 2 for a setup error.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer

from bench.http_ceiling import CEILING_TRANSPORT, DESCRIPTIONS, TRANSPORTS
from consumer.devstack.erp_stub import StubClient
from consumer.devstack.events import encode
from consumer.devstack.samples import generate_events
from dev.harness import Broker, committed, create_topic, free_port, start_broker

try:
    import psutil
except ImportError:  # pragma: no cover - told to the user
    sys.exit("the benchmark needs psutil: .venv/bin/pip install -r bench/requirements.txt")

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
ERP_SYNC = str(Path(PY).parent / "erp-sync")
IDLE_S = 2.0
SAMPLE_S = 0.1
SCRAPE_S = 0.5
RSS_SAMPLE_S = 0.2


def bench_module(name: str, *args: str) -> list[str]:
    """The command that runs ``bench/<name>.py`` as a module (run it with ``cwd=ROOT``)."""
    return [PY, "-m", f"bench.{name}", *args]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- data


@dataclass
class Dataset:
    """A topic filled with generated events and what the ERP must receive from it."""

    topic: str
    records: int
    approved: int
    expected: set[tuple[str, int]] | None  # (Idempotency-Key, EndTime) of every approved event
    produce_s: float
    # partition → [(offset, Idempotency-Key, EndTime)] of the approved events (the RSS run's check)
    approved_at: dict[int, list[tuple[int, str, int]]] | None = None


def produce_events(broker: Broker, topic: str, count: int, seed: int, keep_expected: bool,
                   keep_offsets: bool = False) -> Dataset:
    """Write ``count`` generated events (bare Avro, key = instance id text) as fast as librdkafka goes.

    ``keep_expected``: keep the set of (Idempotency-Key, EndTime) of the approved events;
    ``keep_offsets``: keep where each approved event landed (partition, offset), to check a run
    stopped half-way against the offsets it committed.
    """
    producer = Producer({
        "bootstrap.servers": broker.bootstrap,
        "linger.ms": 50,
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "acks": "all",
    })
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    approved_at: dict[int, list[tuple[int, str, int]]] | None = {} if keep_offsets else None

    def on_approved_delivery(ident: tuple[str, int], err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        elif approved_at is not None:
            approved_at.setdefault(int(msg.partition()), []).append((int(msg.offset()), *ident))

    expected: set[tuple[str, int]] | None = set() if keep_expected else None
    approved = 0
    started = time.perf_counter()
    for event in generate_events(count, seed=seed, approved_ratio=0.5, distinct_instances=10_000,
                                 target_bytes=300):
        callback = on_delivery
        if event["status"] == "APPROVED":
            approved += 1
            ident = (f"{event['flow_code']}-{event['instance_id']}", event["end_time"])
            if expected is not None:
                expected.add(ident)
            if approved_at is not None:
                callback = functools.partial(on_approved_delivery, ident)
        value = encode(event)
        key = str(event["instance_id"]).encode()
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=callback)
                break
            except BufferError:
                producer.poll(0.05)
    remaining = producer.flush(120)
    elapsed = time.perf_counter() - started
    if errors or remaining:
        raise RuntimeError(f"producing to {topic} failed: {remaining} undelivered, errors {errors[:3]}")
    if expected is not None and len(expected) != approved:
        raise RuntimeError("generated events are not unique by (Idempotency-Key, EndTime)")
    log(f"produced {count} events ({approved} approved) to {topic} in {elapsed:.1f} s "
        f"({count / elapsed:,.0f}/s)")
    return Dataset(topic, count, approved, expected, elapsed, approved_at)


# ------------------------------------------------------------------------------------ process watch


def _read_hwm_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text → ``{"name{labels}": value}`` for the erp_sync_* series."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("erp_sync_"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def metric(metrics: dict[str, float], name: str, **labels: str) -> float | None:
    """The value of one series (labels matched as a subset)."""
    for key, value in metrics.items():
        base, _, rest = key.partition("{")
        if base == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            return value
    return None


def records_finished(metrics: dict[str, float]) -> float:
    """Records the consumer has finished (pushed, duplicate, skipped, dead-lettered): erp_sync_messages_total."""
    return sum(v for k, v in metrics.items() if k.partition("{")[0] == "erp_sync_messages_total")


class Watch(threading.Thread):
    """Samples a process every ``sample_s`` (CPU user+sys, RSS, VmHWM) and scrapes its /metrics."""

    def __init__(self, pid: int, metrics_port: int | None = None, sample_s: float = SAMPLE_S) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.metrics_port = metrics_port
        self.sample_s = sample_s
        self.samples: list[tuple[float, float, int]] = []  # (unix time, cpu s, rss bytes)
        self.hwm_kb = 0
        self.hwm_timeline: list[tuple[float, int]] = []  # (unix time, VmHWM kB)
        self.metrics: dict[str, float] = {}
        self.metrics_at = 0.0
        self.finished_timeline: list[tuple[float, float]] = []  # (unix time, records finished so far)
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            proc = psutil.Process(self.pid)
        except psutil.Error:
            return
        next_scrape = 0.0
        while not self._stop_event.is_set():
            now = time.time()
            try:
                with proc.oneshot():
                    cpu = proc.cpu_times()
                    rss = proc.memory_info().rss
                self.samples.append((now, cpu.user + cpu.system, rss))
            except psutil.Error:
                break
            hwm = _read_hwm_kb(self.pid)
            if hwm:
                self.hwm_kb = max(self.hwm_kb, hwm)
                self.hwm_timeline.append((now, hwm))
            if self.metrics_port and now >= next_scrape:
                next_scrape = now + SCRAPE_S
                with contextlib.suppress(OSError, ValueError):
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=1) as r:
                        self.metrics = parse_metrics(r.read().decode())
                        self.metrics_at = time.time()
                        self.finished_timeline.append((self.metrics_at, records_finished(self.metrics)))
            self._stop_event.wait(self.sample_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)

    def cpu_at(self, when: float) -> float | None:
        """CPU seconds used by ``when`` (linear between samples)."""
        s = self.samples
        if not s or when < s[0][0]:
            return 0.0 if s else None
        for (t0, c0, _), (t1, c1, _) in zip(s, s[1:], strict=False):
            if t0 <= when <= t1:
                return c0 + (c1 - c0) * ((when - t0) / (t1 - t0) if t1 > t0 else 0.0)
        return s[-1][1]


def rss_timeline(watch: Watch, every_s: float = 1.0) -> list[tuple[float, float]]:
    """(seconds since the first sample, RSS MB) about every ``every_s``: does memory plateau?"""
    out: list[tuple[float, float]] = []
    if not watch.samples:
        return out
    t0 = watch.samples[0][0]
    for t, _cpu, rss in watch.samples:
        if not out or t - t0 - out[-1][0] >= every_s:
            out.append((round(t - t0, 1), round(rss / 2**20, 1)))
    return out


@dataclass
class Exited:
    """A finished child: exit code, exact rusage, the watch."""

    code: int
    cpu_s: float
    maxrss_kb: int
    started: float
    ended: float
    watch: Watch
    timed_out: bool = False


def peak_rss_mb(exited: Exited) -> float:
    """The child's peak RSS: the largest VmHWM sampled (the kernel's high-water mark of its memory).

    Not ``ru_maxrss`` from ``wait4``: Python spawns children with vfork, and at exec the kernel
    folds the high-water mark of the memory the child shared until then — this benchmark's own —
    into the child's ``ru_maxrss``. VmHWM is sampled every 100 ms and only grows, so at most the
    growth of the last 100 ms before exit (idle wait and shutdown) can be missed.
    """
    if exited.watch.hwm_kb:
        return exited.watch.hwm_kb / 1024
    return exited.maxrss_kb / 1024


def run_watched(cmd: Sequence[str], env: dict[str, str], log_path: Path, timeout_s: float,
                metrics_port: int | None = None, stdout: Any = None,
                sample_s: float = SAMPLE_S, cwd: Path | None = None) -> tuple[subprocess.Popen[bytes], Watch, float]:
    """Start a child with a :class:`Watch`; returns (process, watch, start time)."""
    out = open(log_path, "ab")  # noqa: SIM115 - owned by the child
    started = time.time()
    proc = subprocess.Popen(list(cmd), env=env, stdout=stdout if stdout is not None else out,
                            stderr=out if stdout is not None else subprocess.STDOUT, cwd=cwd)
    out.close()
    watch = Watch(proc.pid, metrics_port, sample_s)
    watch.start()
    return proc, watch, started


def wait_exact(proc: subprocess.Popen[bytes], watch: Watch, started: float, timeout_s: float) -> Exited:
    """Reap the child with wait4 (exact user+sys CPU and max RSS of the whole process)."""
    deadline = time.monotonic() + timeout_s
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline and not timed_out:
            timed_out = True
            log(f"process {proc.pid} ({' '.join(proc.args[:3])}…) timed out after {timeout_s:.0f} s: SIGTERM")
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
        elif time.monotonic() > deadline and timed_out:
            proc.kill()
        time.sleep(0.02)
    ended = time.time()
    proc.returncode = os.waitstatus_to_exitcode(status)
    watch.stop()
    return Exited(proc.returncode, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, started, ended, watch,
                  timed_out)


# ------------------------------------------------------------------------------------------ the stub


class Stub:
    """``erp-sync erp-stub`` in a subprocess, and its control client."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log_path = workdir / "erp-stub.log"
        self.proc = subprocess.Popen([ERP_SYNC, "erp-stub", "--port", str(self.port), "--latency-ms", "0"],
                                     stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.base + "/erp/push"
        self.client = StubClient(self.base, timeout_s=60)
        deadline = time.monotonic() + 30
        while not self.client.health():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the ERP stub did not start; see {self.log_path}")
            time.sleep(0.1)

    def prepare(self, latency_ms: float) -> None:
        """Set the latency and forget records, seen keys and counters."""
        self.client.behaviour(latency_ms=latency_ms)
        self.client.clear()
        self.client.reset_stats()

    def records(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        since = 0
        while True:
            page = self.client.requests(since=since, limit=5000)
            if not page:
                return out
            out.extend(page)
            since = page[-1]["seq"]

    def cpu_s(self) -> float:
        """User+sys CPU seconds the stub process has used so far."""
        try:
            t = psutil.Process(self.proc.pid).cpu_times()
            return float(t.user + t.system)
        except psutil.Error:
            return 0.0

    def first_record(self) -> dict[str, Any] | None:
        page = self.client.requests(since=0, limit=1)
        return page[0] if page else None

    def close(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


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
                           "max_concurrency_at_stub": stats["max_concurrency"]}
    not_ok = sum(n for code, n in stats["by_code"].items() if code != "OK")
    if universe is not None and stats["recorded"] == received and not stats["dropped"]:
        records = stub.records()
        pairs = [(r["idempotency_key"], orjson.loads(r["body"])["EndTime"]) for r in records]
        unique = set(pairs)
        missing = len(universe - unique) if require_all else max(0, expected_count - len(unique & universe))
        unexpected = len(unique - universe)
        seen: set[tuple[str, int]] = set()
        last: dict[str, int] = {}
        violations = 0
        for key, end in pairs:  # per key, first arrivals must come in offset (= EndTime) order
            if (key, end) in seen:
                continue
            seen.add((key, end))
            if key in last and end < last[key]:
                violations += 1
            last[key] = end
        out.update(unique=len(unique), duplicates=len(pairs) - len(unique), missing=missing,
                   unexpected=unexpected, order_violations=violations, method="per-record",
                   t_first_push=records[0]["time"] if records else None,
                   t_last_push=records[-1]["time"] if records else None)
        ok = missing == 0 and unexpected == 0 and violations == 0 and not not_ok
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


# ----------------------------------------------------------------------------------------- consumers


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


_STOPPED = re.compile(r"stopped: (\d+) pushed, (\d+) duplicates, (\d+) skipped, (\d+) dead-lettered, (\d+) commits")


def parse_log(path: Path) -> dict[str, Any]:
    """Counts from a JSON log: the stopped line, events, warnings and errors."""
    out: dict[str, Any] = {"events": {}, "warnings": 0, "errors": 0, "stopped": None}
    for line in path.read_text(errors="replace").splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if not isinstance(doc, dict):
            continue
        event = doc.get("event")
        if event:
            out["events"][event] = out["events"].get(event, 0) + 1
        level = doc.get("level")
        if level == "WARNING" and event not in ("insecure_erp_url",):
            out["warnings"] += 1
        elif level in ("ERROR", "CRITICAL"):
            out["errors"] += 1
        m = _STOPPED.search(str(doc.get("message", "")))
        if m:
            pushed, dups, skipped, dead, commits = map(int, m.groups())
            out["stopped"] = {"pushed": pushed, "duplicates": dups, "skipped": skipped, "dead_lettered": dead,
                              "commits": commits}
    return out


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
                 workdir: Path, processes: int = 1, label: str = "erp-sync",
                 clear_stub_every_s: float | None = None, profile: str | None = None) -> RunResult:
    stub.prepare(latency_ms)
    stub_cpu0 = stub.cpu_s()
    group = f"bench-erp-sync-{uuid.uuid4().hex[:8]}"
    timeout = 240 + data.records / 40
    log(f"{label} at {latency_ms:g} ms: {data.records} records, {processes} process(es), "
        f"MAX_IN_FLIGHT {max_in_flight} (timeout {timeout:.0f} s)")
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
    clearer_stop = threading.Event()
    first_push: list[float] = []
    clearer = None
    if clear_stub_every_s:
        def clear_loop() -> None:  # bounded stub memory on huge backlogs; counters keep counting
            while not clearer_stop.wait(clear_stub_every_s):
                with contextlib.suppress(Exception):
                    if not first_push:  # never clear before the first push is known
                        first = stub.first_record()
                        if first is None:
                            continue
                        first_push.append(first["time"])
                    stub.client.clear()
        clearer = threading.Thread(target=clear_loop, daemon=True)
        clearer.start()
    exits = [wait_exact(p, w, s, timeout) for p, w, s, _ in running]
    clearer_stop.set()
    if clearer is not None:
        clearer.join(30)
    profile_out = finish_profiler(profiler) if profiler else None
    logs = [parse_log(lp) for _, _, _, lp in running]
    delivery = check_delivery(stub, data.expected, data.approved, require_all=True)
    if first_push:
        delivery["t_first_push"] = first_push[0]
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


def _first_at_least(timeline: list[tuple[float, float]], value: float) -> float | None:
    """The first time a (time, value) series reaches ``value``."""
    return next((t for t, v in timeline if v >= value), None)


def _value_at(timeline: list[tuple[float, float]], when: float) -> float:
    """The last value of a (time, value) series sampled at or before ``when`` (0 before the first)."""
    out = 0.0
    for t, v in timeline:
        if t > when:
            break
        out = v
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
    not_ok = sum(n for code, n in stats["by_code"].items() if code != "OK")
    must = [(key, end) for part, rows in data.approved_at.items() for off, key, end in rows
            if off < committed_offsets.get(part, 0)]
    out: dict[str, Any] = {"received": received, "by_code": stats["by_code"], "must_have": len(must),
                           "max_concurrency_at_stub": stats["max_concurrency"]}
    if stats["recorded"] == received and not stats["dropped"]:
        records = stub.records()
        pairs = [(r["idempotency_key"], orjson.loads(r["body"])["EndTime"]) for r in records]
        unique = set(pairs)
        universe = {(key, end) for rows in data.approved_at.values() for _off, key, end in rows}
        missing = sum(1 for pair in must if pair not in unique)
        unexpected = len(unique - universe)
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
        out.update(unique=len(unique), duplicates=len(pairs) - len(unique), missing=missing, unexpected=unexpected,
                   order_violations=violations, method="per-record",
                   t_first_push=records[0]["time"] if records else None)
        ok = missing == 0 and unexpected == 0 and violations == 0 and not not_ok
    else:  # the stub dropped records (more than its max_records): by count only
        first = stub.first_record()
        out.update(duplicates=None, missing=max(0, len(must) - received), method="count", order_violations=None,
                   t_first_push=first["time"] if first else None)
        ok = received >= len(must) and not not_ok
    out["all_delivered"] = ok
    return out


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
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:  # it must not exit on its own
            proc.returncode = os.waitstatus_to_exitcode(status)
            watch.stop()
            early = Exited(proc.returncode, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, started, time.time(),
                           watch)
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
    t99 = _first_at_least(hwm_series, 0.99 * peak_kb)
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
        "finished_at_peak99": int(_value_at(watch.finished_timeline, t99)) if t99 else None,
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


# ------------------------------------------------------------------------------------------ profiling


def start_profiler(pid: int, workdir: Path, name: str) -> tuple[subprocess.Popen[bytes], Path] | None:
    py_spy = shutil.which("py-spy", path=str(Path(PY).parent)) or shutil.which("py-spy")
    if not py_spy:
        log("py-spy not installed: no profile (pip install py-spy)")
        return None
    out = workdir / f"profile-{name}.txt"
    cmd = [py_spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "--threads", "--gil",
           "--output", str(out), "--nonblocking"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(workdir / f"py-spy-{name}.log", "ab"))  # noqa: SIM115
    return proc, out


def finish_profiler(profiler: tuple[subprocess.Popen[bytes], Path] | None) -> dict[str, Any] | None:
    if profiler is None:
        return None
    proc, out = profiler
    try:
        proc.wait(30)  # py-spy stops by itself when the target exits
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
    if not out.exists():
        return {"error": "py-spy wrote no profile (ptrace not permitted?)"}
    return summarize_collapsed(out)


_GENERIC_FRAME = re.compile(r"\((threading\.py|concurrent/futures/thread\.py|erp-sync|<frozen [^)]*>)\)$|"
                            r"^<module> |^main \(consumer/cli\.py\)|^cmd_run ")


def summarize_collapsed(path: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per function, and per thread, from py-spy's raw output."""
    self_count: dict[str, int] = {}
    incl_count: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = stack.split(";")
        total += count
        thread = re.sub(r"\d+", "N", frames[0]) if frames else "?"
        threads[thread] = threads.get(thread, 0) + count
        funcs = [re.sub(r" \(([^)]*?)(?::\d+)?\)$", r" (\1)", f) for f in frames[1:]]
        if funcs:
            self_count[funcs[-1]] = self_count.get(funcs[-1], 0) + count
        for f in set(funcs):
            if not _GENERIC_FRAME.search(f):
                incl_count[f] = incl_count.get(f, 0) + count

    def share(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, round(v / total * 100, 1)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {"file": str(path), "samples": total, "threads_pct": share(threads), "self_pct": share(self_count),
            "inclusive_pct": share(incl_count)}


# ---------------------------------------------------------------------------------- ceiling and CPU


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


# ------------------------------------------------------------------------------------------ reporting


def code_state() -> dict[str, Any]:
    """The commit measured and the files changed on top of it (the working tree is what runs)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [line[3:] for line in git("status", "--porcelain", "--", "consumer", "pyproject.toml").splitlines()]
    return {"head": git("rev-parse", "--short", "HEAD").strip(), "changed": changed}


def machine_info() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str | None] = {}
    for dist in ("apaas-erp-sync", "confluent-kafka", "httpx", "httpcore", "h11", "aiohttp", "httpx-aiohttp",
                 "fastavro", "orjson", "prometheus-client", "pydantic", "psutil", "py-spy"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    import confluent_kafka

    versions["librdkafka"] = confluent_kafka.libversion()[0]
    return {
        "code": code_state(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "loadavg_start": os.getloadavg(),
    }


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True)))
    out = [line, "-" * len(line)]
    for r in rows:
        out.append("  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                             for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(out)


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
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i in (0, 5) else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()

    out = ["Transports at ERP latency 0 (bench/http_ceiling.py, no Kafka; CPU: the client process, per request):",
           line(header), "-" * len(line(header))]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


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


def render(results: dict[str, Any], checks: list[dict[str, Any]]) -> str:
    m = results["machine"]
    v = m["versions"]
    lines = [
        f"apaas-erp-sync benchmark — {m['date']} — {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gb']} GB, "
        f"load avg at start {m['loadavg_start'][0]:.1f}, at end {m.get('loadavg_end', [0])[0]:.1f}",
        f"Python {m['python']}; confluent-kafka {v['confluent-kafka']} (librdkafka {v['librdkafka']}), "
        f"httpx {v['httpx']}, httpcore {v['httpcore']}, aiohttp {v['aiohttp']}, httpx-aiohttp "
        f"{v['httpx-aiohttp']}, fastavro {v['fastavro']}, orjson {v['orjson']}; code {m['code']['head']}"
        + (f" + uncommitted {', '.join(m['code']['changed'])}" if m["code"]["changed"] else ""),
        f"{results['args']['records']:,} records, {results['args']['partitions']} partitions, "
        f"{results['dataset_approved']:,} approved, 10,000 keys; MAX_IN_FLIGHT {results['args']['max_in_flight']}; "
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
                     f"asyncio.Semaphore({results['args']['max_in_flight']}), httpx.Request through the httpx-aiohttp "
                     f"transport, no Kafka): " + "; ".join(ceil))
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
        lines.append(f"Scale at {scale['latency_ms']:g} ms: one process {scale['one_records_per_s']:,.0f} records/s, "
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
    lines.append("")
    lines.append("Targets (bench/bounds.json):")
    for c in checks:
        status = "n/a " if c["pass"] is None else ("PASS" if c["pass"] else "FAIL")
        value = "-" if c["value"] is None else f"{c['value']:,.3g}"
        note = f"  [{c['note']}]" if c["note"] else ""
        lines.append(f"  {status}  {c['target']}: {value} (target {c['op']} {c['limit']:,}){note}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- main


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run",
                                     description="Benchmark erp-sync run against the naive consumer (issue 5).")
    parser.add_argument("--records", type=int, default=None, help="events in the topic (default 50000; quick 10000)")
    parser.add_argument("--latencies", default="0,5,50", help="ERP stub latencies in ms (default 0,5,50)")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--max-in-flight", type=int, default=32, help="ERP_SYNC_MAX_IN_FLIGHT (default 32)")
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
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="10,000 records, short baseline prefixes, 100,000-record RSS run, shorter measurements")
    parser.add_argument("--results-dir", default=str(BENCH / "results"))
    args = parser.parse_args(argv)

    for item in args.erp_sync_env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("ERP_SYNC_"):
            parser.error(f"--erp-sync-env wants ERP_SYNC_NAME=VALUE, got {item!r}")
        EXTRA_ENV[name] = value
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
                 "baseline_records": {f"{k:g}": v for k, v in baseline_records.items()}, "backlog": backlog,
                 "rss_seconds": rss_seconds, "ceiling_transport": CEILING_TRANSPORT,
                 "quick": quick, "seed": args.seed, "idle_s": IDLE_S, "erp_sync_env": dict(EXTRA_ENV)},
        "machine": machine_info(),
        "latencies": [],
    }
    correctness_ok = True
    workdir = Path(tempfile.mkdtemp(prefix="erp-sync-bench-"))
    log(f"work dir {workdir}")
    broker: Broker | None = None
    stub: Stub | None = None
    try:
        broker = start_broker(workdir)
        log(f"broker {broker.bootstrap} ({'started' if broker.managed else 'KAFKA_BOOTSTRAP_SERVERS'})")
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        create_topic(broker, topic, args.partitions)
        create_topic(broker, f"{topic}.dlq", 1)
        data = produce_events(broker, topic, records, args.seed, keep_expected=True)
        results["dataset_approved"] = data.approved
        results["produce_records_per_s"] = records / data.produce_s
        stub = Stub(workdir)
        log(f"ERP stub {stub.url}")

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
            one_row = next((r for r in results["latencies"] if r["latency_ms"] == lat), None)
            if one_row is not None:
                one = one_row["erp_sync"]
            else:
                one = run_erp_sync(broker, stub, data, lat, mif, workdir, label="scale-one").as_json()
                correctness_ok &= one["delivery"]["all_delivered"]
            two = run_erp_sync(broker, stub, data, lat, mif, workdir, processes=2, label="scale-two")
            correctness_ok &= two.delivery["all_delivered"]
            results["scale"] = {"latency_ms": lat, "one_records_per_s": one["records_per_s"],
                                "two_records_per_s": two.records_per_s,
                                "ratio": two.records_per_s / one["records_per_s"] if one["records_per_s"] else 0.0,
                                "all_delivered": two.delivery["all_delivered"], "two": two.as_json()}

        if args.profile:
            results["profiles"] = []
            prof_lats = latencies[:1] if args.profile == "first" else [float(x) for x in args.profile.split(",")]
            for lat in prof_lats:
                prof = run_erp_sync(broker, stub, data, lat, mif, workdir, label="profiled", profile=f"{lat:g}ms")
                summary = prof.extra.get("profile") or {}
                if summary.get("file"):
                    out_dir.mkdir(parents=True, exist_ok=True)
                    kept = out_dir / f"{stamp}-profile-{lat:g}ms.collapsed.txt"
                    shutil.copyfile(summary["file"], kept)
                    summary["file"] = str(kept)
                results["profiles"].append({"latency_ms": lat, "records_per_s": prof.records_per_s,
                                            "summary": summary})

        if backlog:
            rss_topic = f"bench-rss-{uuid.uuid4().hex[:8]}"
            create_topic(broker, rss_topic, args.partitions)
            create_topic(broker, f"{rss_topic}.dlq", 1)
            rss_data = produce_events(broker, rss_topic, backlog, args.seed + 1, keep_expected=False,
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
