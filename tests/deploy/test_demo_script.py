"""``scripts/demo.sh`` against fakes: every failing step stops it with one line naming the step and its
log, KEEP_RUNNING=1 prints the exports that point the tools at the stack, colour only on a terminal.

The script is copied into a temporary tree whose ``scripts/bootstrap.sh`` and ``dev/kafka.sh`` are fakes,
and ``ERP_SYNC_VENV`` is a fake venv: ``erp-sync`` records its arguments (the stub is a real HTTP server
answering ``/_stub/health``) and ``python`` fakes the report. ``FAKE_FAIL=<step>`` makes that step fail.
No broker, no real stub: about a second per run.
"""

from __future__ import annotations

import os
import pty
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.script_tree import write_executable

REPO_ROOT = Path(__file__).resolve().parents[2]

FAKE_BOOTSTRAP = """#!/usr/bin/env bash
echo bootstrap >>"$FAKE_CALLS"
if [[ "${FAKE_FAIL:-}" == bootstrap ]]; then echo "bootstrap: boom" >&2; exit 4; fi
"""

FAKE_KAFKA = """#!/usr/bin/env bash
echo "kafka.sh $*" >>"$FAKE_CALLS"
case "$1" in
  start)
    if [[ "${FAKE_FAIL:-}" == kafka ]]; then echo "[kafka.sh:$KAFKA_PORT] ERROR: port in use" >&2; exit 1; fi
    echo "127.0.0.1:$KAFKA_PORT" ;;
  status) echo "running pid 4242 on 127.0.0.1:$KAFKA_PORT" ;;
esac
"""

FAKE_ERP_SYNC = """#!/usr/bin/env bash
echo "erp-sync $*" >>"$FAKE_CALLS"
if [[ "${FAKE_FAIL:-}" == "$1" ]]; then echo "$1: boom" >&2; exit 3; fi
case "$1" in
  erp-stub)
    echo $$ >"$FAKE_DIR/stub.pid"
    exec "$FAKE_PYTHON" -m http.server "$3" --bind 127.0.0.1 --directory "$FAKE_DIR/www" ;;
  *) echo "$1: done" ;;
esac
"""

FAKE_PYTHON = """#!/usr/bin/env bash
if [[ "$1 $2" == "-m consumer.devstack.report" ]]; then
  shift 2
  echo "report $*" >>"$FAKE_CALLS"
  echo "spec example body arrived byte-exact: yes"
  if [[ "${FAKE_FAIL:-}" == report ]]; then exit 1; fi
  exit 0
fi
exec "$FAKE_PYTHON" "$@"
"""


@dataclass
class Demo:
    root: Path
    fake: Path
    cache: Path
    venv: Path
    env: dict[str, str]

    def calls(self) -> list[str]:
        path = self.fake / "calls"
        return path.read_text().splitlines() if path.exists() else []

    def run_dir(self) -> Path:
        (found,) = (self.fake / "tmp").glob("erp-sync-demo.*")
        return found

    def stub_pid(self) -> int:
        return int((self.fake / "stub.pid").read_text())


@pytest.fixture
def demo(tmp_path: Path) -> Demo:
    root, fake, cache, venv = tmp_path / "repo", tmp_path / "fake", tmp_path / "cache", tmp_path / "venv"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "scripts" / "demo.sh", root / "scripts" / "demo.sh")
    write_executable(root / "scripts" / "bootstrap.sh", FAKE_BOOTSTRAP)
    write_executable(root / "dev" / "kafka.sh", FAKE_KAFKA)
    write_executable(venv / "bin" / "erp-sync", FAKE_ERP_SYNC)
    write_executable(venv / "bin" / "python", FAKE_PYTHON)
    (fake / "www" / "_stub").mkdir(parents=True)
    (fake / "www" / "_stub" / "health").write_text("ok\n")
    (fake / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ERP_SYNC_", "KAFKA_")) and k not in ("NO_COLOR", "KEEP_RUNNING", "DEMO_COUNT")}
    env.update({"ERP_SYNC_VENV": str(venv), "ERP_SYNC_CACHE_DIR": str(cache), "TMPDIR": str(fake / "tmp"),
                "FAKE_CALLS": str(fake / "calls"), "FAKE_DIR": str(fake), "FAKE_PYTHON": sys.executable})
    return Demo(root, fake, cache, venv, env)


def _run(demo: Demo, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(demo.root / "scripts" / "demo.sh")], env={**demo.env, **env},
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def _alive(pid: int) -> bool:
    """``pid`` runs (a zombie waiting for its reaper has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited, within 5 s."""
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def _stub_port(stdout: str) -> int:
    match = re.search(r"^== 3/6 ERP stub on 127\.0\.0\.1:(\d+)$", stdout, flags=re.M)
    assert match, stdout
    return int(match.group(1))


def test_success_runs_every_step_in_order_and_stops_what_it_started(demo: Demo) -> None:
    run = _run(demo)
    assert run.returncode == 0, run.stdout + run.stderr
    port = _stub_port(run.stdout)
    assert demo.calls() == [
        "bootstrap",
        "kafka.sh wipe",
        "kafka.sh start",
        "erp-sync create-topics --partitions 3",
        f"erp-sync erp-stub --port {port}",
        "erp-sync produce-sample --count 20",
        "erp-sync run --exit-when-idle 3",
        f"report --stub http://127.0.0.1:{port}",
        "kafka.sh stop",
    ]
    assert f"push URL: http://127.0.0.1:{port}/erp/push\n" in run.stdout
    assert run.stdout.endswith(f"spec example body arrived byte-exact: yes\n\nlogs: {demo.run_dir()}   "
                               "(KEEP_RUNNING=1 scripts/demo.sh leaves Kafka on :9092 and the stub up)\n")
    assert run.stderr == ""
    assert _gone(demo.stub_pid())
    assert sorted(p.name for p in demo.run_dir().iterdir()) == [
        "bootstrap.log", "consumer.log", "create-topics.log", "erp-stub.log", "kafka.log", "produce-sample.log",
        "report.log"]
    assert (demo.run_dir() / "consumer.log").read_text() == "run: done\n"


# (FAKE_FAIL, the calls after which the demo stops, what the last line says after "demo stopped: ")
FAILURES = [
    ("bootstrap", [], "installing (scripts/bootstrap.sh) failed (exit 4); log: {run}/bootstrap.log"),
    ("kafka", [],
     "Kafka did not start on 127.0.0.1:9092 (dev/kafka.sh start exited 1); log: {run}/kafka.log, the broker's: "
     "{cache}/demo-kafka-9092/server.log"),
    ("create-topics", ["erp-sync create-topics --partitions 3"],
     "erp-sync create-topics failed (exit 3); log: {run}/create-topics.log"),
    ("erp-stub", ["erp-sync create-topics --partitions 3", "erp-sync erp-stub --port {port}"],
     "the ERP stub (erp-sync erp-stub) did not answer http://127.0.0.1:{port}/_stub/health (it exited 3); "
     "log: {run}/erp-stub.log"),
    ("produce-sample", ["erp-sync create-topics --partitions 3", "erp-sync erp-stub --port {port}",
                        "erp-sync produce-sample --count 20"],
     "erp-sync produce-sample failed (exit 3); log: {run}/produce-sample.log"),
    ("run", ["erp-sync create-topics --partitions 3", "erp-sync erp-stub --port {port}",
             "erp-sync produce-sample --count 20", "erp-sync run --exit-when-idle 3"],
     "erp-sync run failed (exit 3); log: {run}/consumer.log"),
    ("report", ["erp-sync create-topics --partitions 3", "erp-sync erp-stub --port {port}",
                "erp-sync produce-sample --count 20", "erp-sync run --exit-when-idle 3",
                "report --stub http://127.0.0.1:{port}"],
     "the report found records not accounted for, or the spec example's body differs (exit 1); "
     "log: {run}/report.log"),
]


@pytest.mark.parametrize(("step", "steps", "message"), FAILURES, ids=[f[0] for f in FAILURES])
def test_a_failing_step_stops_the_demo_with_one_line_naming_it_and_its_log(
        demo: Demo, step: str, steps: list[str], message: str) -> None:
    run = _run(demo, FAKE_FAIL=step)
    assert run.returncode == 1, run.stdout + run.stderr
    port = _stub_port(run.stdout) if "3/6" in run.stdout else 0
    fill = {"run": demo.run_dir(), "cache": demo.cache, "port": port}
    started_kafka = step not in ("bootstrap", "kafka")
    expected = ["bootstrap"]
    if step != "bootstrap":
        expected += ["kafka.sh wipe", "kafka.sh start"]
    expected += [s.format(**fill) for s in steps]
    if started_kafka:
        expected.append("kafka.sh stop")
    assert demo.calls() == expected
    assert run.stderr.splitlines()[-1] == "demo stopped: " + message.format(**fill)
    if step not in ("bootstrap", "kafka", "create-topics", "erp-stub"):
        assert _gone(demo.stub_pid())


def test_keep_running_prints_the_exports_and_how_to_stop_what_it_left(demo: Demo) -> None:
    run = _run(demo, KEEP_RUNNING="1", ERP_SYNC_TOPIC="orders.completed", ERP_SYNC_GROUP_ID="demo group")
    try:
        assert run.returncode == 0, run.stdout + run.stderr
        port, stub = _stub_port(run.stdout), demo.stub_pid()
        assert _alive(stub)
        assert demo.calls()[-2:] == [f"report --stub http://127.0.0.1:{port}", "kafka.sh status"]  # nothing stopped
        tail = run.stdout[run.stdout.index("spec example body arrived byte-exact: yes\n"):]
        assert tail == (
            "spec example body arrived byte-exact: yes\n"
            "\n"
            f"logs: {demo.run_dir()}\n"
            "\n"
            "KEEP_RUNNING=1: left running:\n"
            f"  Kafka on 127.0.0.1:9092 (pid 4242, data in {demo.cache}/demo-kafka-9092)\n"
            f"  the ERP stub on 127.0.0.1:{port} (pid {stub})\n"
            "point erp-sync status, replay, dlq replay, reset-offsets at them (paste into a shell):\n"
            f'export PATH={demo.venv}/bin:"$PATH"\n'
            "export ERP_SYNC_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092\n"
            "export ERP_SYNC_TOPIC=orders.completed\n"
            "export ERP_SYNC_GROUP_ID=demo\\ group\n"
            "export ERP_SYNC_DLQ_TOPIC=orders.completed.dlq\n"
            f"export ERP_SYNC_ERP_URL=http://127.0.0.1:{port}/erp/push\n"
            "stop them:\n"
            f"  kill {stub}\n"
            f"  KAFKA_PORT=9092 KAFKA_DATA_DIR={demo.cache}/demo-kafka-9092 {demo.root}/dev/kafka.sh stop\n"
        )
        exports = "\n".join(line for line in tail.splitlines() if line.startswith("export ERP_SYNC_"))
        pasted = subprocess.run(["bash", "-c", exports + '\nenv | grep "^ERP_SYNC_" | sort'], env={},
                                capture_output=True, text=True, timeout=10)
        assert pasted.stdout.splitlines() == [
            "ERP_SYNC_DLQ_TOPIC=orders.completed.dlq", f"ERP_SYNC_ERP_URL=http://127.0.0.1:{port}/erp/push",
            "ERP_SYNC_GROUP_ID=demo group", "ERP_SYNC_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092",
            "ERP_SYNC_TOPIC=orders.completed"]
    finally:
        if (demo.fake / "stub.pid").exists():
            try:
                os.kill(demo.stub_pid(), 15)
            except ProcessLookupError:
                pass


def test_no_escape_codes_when_stdout_is_not_a_terminal(demo: Demo) -> None:
    run = _run(demo, ERP_SYNC_METRICS_PORT="18001")
    assert run.returncode == 0, run.stderr
    assert "\x1b" not in run.stdout + run.stderr
    headings = [line for line in run.stdout.splitlines() if line.startswith("==")]
    assert headings == [
        "== 1/6 Kafka (single-node KRaft on 127.0.0.1:9092, fresh data)",
        "== 2/6 topics",
        f"== 3/6 ERP stub on 127.0.0.1:{_stub_port(run.stdout)}",
        "== 4/6 sample events",
        "== 5/6 erp-sync run (exits once caught up and idle for 3 s; metrics on :18001)",
        "== 6/6 what happened",
    ]


def _run_on_a_terminal(demo: Demo, **env: str) -> bytes:
    main, sub = pty.openpty()
    proc = subprocess.Popen(["bash", str(demo.root / "scripts" / "demo.sh")], env={**demo.env, **env},
                            stdin=subprocess.DEVNULL, stdout=sub, stderr=subprocess.DEVNULL)
    os.close(sub)
    out = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    assert proc.wait(timeout=60) == 0, out
    return out


def test_bold_headings_on_a_terminal_unless_no_color(demo: Demo) -> None:
    assert b"\x1b[1m== 2/6 topics\x1b[0m" in _run_on_a_terminal(demo)
    plain = _run_on_a_terminal(demo, NO_COLOR="1")
    assert b"\x1b" not in plain
    assert b"\r\n== 2/6 topics\r\n" in plain
