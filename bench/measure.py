"""Measurement: process watching (CPU, RSS, VmHWM), metrics scraping, the consumer's log, the machine."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import ROOT, log

try:
    import psutil
except ImportError:  # pragma: no cover - told to the user
    sys.exit("the benchmark needs psutil: .venv/bin/pip install -r bench/requirements.txt")

SAMPLE_S = 0.1
SCRAPE_S = 0.5
RSS_SAMPLE_S = 0.2


def _read_hwm_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """User+sys CPU seconds a live process has used so far (0 when it is gone)."""
    try:
        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return 0.0


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


def reap(proc: subprocess.Popen[bytes], watch: Watch, started: float, timed_out: bool = False) -> Exited | None:
    """The child's exit if it has exited, reaped with wait4 (exact user+sys CPU and max RSS); else None."""
    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    if not pid:
        return None
    ended = time.time()
    proc.returncode = os.waitstatus_to_exitcode(status)
    watch.stop()
    return Exited(proc.returncode, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, started, ended, watch,
                  timed_out)


def wait_exact(proc: subprocess.Popen[bytes], watch: Watch, started: float, timeout_s: float) -> Exited:
    """Wait for the child and reap it (SIGTERM after ``timeout_s``, SIGKILL 30 s later)."""
    deadline = time.monotonic() + timeout_s
    timed_out = False
    while (exited := reap(proc, watch, started, timed_out)) is None:
        if time.monotonic() > deadline and not timed_out:
            timed_out = True
            log(f"process {proc.pid} ({' '.join(proc.args[:3])}…) timed out after {timeout_s:.0f} s: SIGTERM")
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
        elif time.monotonic() > deadline and timed_out:
            proc.kill()
        time.sleep(0.02)
    return exited


def first_at_least(timeline: list[tuple[float, float]], value: float) -> float | None:
    """The first time a (time, value) series reaches ``value``."""
    return next((t for t, v in timeline if v >= value), None)


def value_at(timeline: list[tuple[float, float]], when: float) -> float:
    """The last value of a (time, value) series sampled at or before ``when`` (0 before the first)."""
    out = 0.0
    for t, v in timeline:
        if t > when:
            break
        out = v
    return out


_STOPPED = re.compile(r"stopped: (\d+) pushed, (\d+) duplicates?, (\d+) skipped, (\d+) dead-lettered, (\d+) commits?")


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
    for dist in ("apaas-erp-sync", "confluent-kafka", "httpx", "httpcore", "h11", "aiohttp", "uvloop", "httpx-aiohttp",
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
