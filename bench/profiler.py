"""``--profile``: py-spy on a running ``erp-sync run``, and where its GIL time went."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from bench import PY, log


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
