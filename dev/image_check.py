"""Checks of the built container images, run by ``scripts/image-check.sh`` after it built them.

Against a real local broker (``dev/kafka.sh`` on free ports, stopped and deleted at the end) and the ERP
stub (``erp-sync erp-stub`` from the devstack image), all on the host's network:

- the production image runs as uid/gid 10001, and so does its PID 1;
- ``erp-sync check-config`` with a bad setting exits 2 and names the variable;
- ``erp-sync erp-stub`` in the production image exits 2 saying the devstack target has it;
- ``erp-sync run`` (the image's default command) delivers the specification's example byte for byte,
  with its Idempotency-Key, and commits it;
- SIGTERM to PID 1 while a push is in flight: the push finishes, is committed, and the process exits 0
  within ``ERP_SYNC_SHUTDOWN_TIMEOUT_SECONDS`` (default 20 s);
- neither image holds a C compiler;
- the sizes of the images.

usage: python dev/image_check.py --image IMG --devstack-image IMG [--base-image IMG]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from consumer.devstack.events import encode, spec_example_event  # noqa: E402
from dev.harness import committed, free_port, produce, start_dedicated_broker, wait_until  # noqa: E402

PODMAN = shlex.split(os.environ.get("ERP_SYNC_PODMAN", "podman --runtime runc"))
# podman run on these hosts needs explicit limits (within `ulimit -Hn` / `-Hu`)
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
UID = 10001
SHUTDOWN_BOUND_S = 20.0  # ERP_SYNC_SHUTDOWN_TIMEOUT_SECONDS' default, which the check leaves in force

# The specification's example (docs/spec/ERP-INTERFACE.md; README "Two commands"): the body the ERP must
# receive, byte for byte, for consumer.devstack.events.spec_example_event().
SPEC_BODY = (
    '{"FlowCode":1425737370216521773,"InstanceId":1427810976874430514,'
    '"StartTime":1427811121259155459,"EndTime":1427811121259155459,'
    '"StartUser":{"SourceUid":"1427811121259155459","TenantUid":"1427811121259155459"},'
    '"VariableInfos":{"LevelInfo":{"Type":"object","Value":{"Name":"1425736144334716972","Days":3}}}}'
)
SPEC_KEY = b"1427810976874430514"
SPEC_IDEMPOTENCY_KEY = "1425737370216521773-1427810976874430514"

COMPILER_PROBE = """
import glob, shutil
names = ["gcc", "cc", "c89", "c99", "c++", "g++", "cpp", "clang", "tcc", "x86_64-linux-gnu-gcc", "as", "ld"]
found = [shutil.which(n) for n in names if shutil.which(n)]
found += glob.glob("/usr/bin/*-gcc*") + glob.glob("/usr/lib/gcc/*/*/cc1") + glob.glob("/usr/libexec/gcc/*/*/cc1")
print(" ".join(sorted(set(found))))
"""


class CheckFailed(Exception):
    """One check did not hold."""


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run podman; raise CheckFailed with its output when ``check`` and it fails."""
    proc = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise CheckFailed(f"podman {' '.join(args[:3])}… exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc


def run_image(image: str, args: Sequence[str], env: dict[str, str] | None = None,
              entrypoint: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``podman run --rm`` on the host's network; never raises on the exit code."""
    cmd = ["run", "--rm", *LIMITS, "--network", "host"]
    for k, v in (env or {}).items():
        cmd += ["-e", f"{k}={v}"]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    return podman(*cmd, image, *args, timeout=timeout, check=False)


def http_json(url: str, data: Any = None, timeout: float = 5) -> Any:
    """GET (or POST ``data`` as JSON) and decode the JSON answer."""
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - a local stub
        return json.loads(resp.read() or b"null")


def size_mb(image: str) -> str:
    """The image's size as podman reports it."""
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())
    return f"{size / 1e6:.0f} MB"


class Checks:
    """Runs the checks in order, printing one line each; remembers failures."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def run(self, name: str, fn: Callable[[], str]) -> None:
        t0 = time.monotonic()
        try:
            detail = fn()
        except Exception as exc:  # noqa: BLE001 - any failure of a check is reported, and the next runs
            self.failed.append(name)
            print(f"FAIL  {name}: {type(exc).__name__}: {exc}", flush=True)
            return
        print(f"ok    {name}: {detail} ({time.monotonic() - t0:.1f} s)", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True, help="the production image")
    parser.add_argument("--devstack-image", required=True, help="the devstack image (ERP stub)")
    parser.add_argument("--base-image", help="the base image, for its size")
    args = parser.parse_args(argv)
    image, devstack = args.image, args.devstack_image
    checks = Checks()
    tag = uuid.uuid4().hex[:8]
    started: list[str] = []  # containers this script started (removed by name at the end)

    def user() -> str:
        configured = podman("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip()
        assert configured == f"{UID}:{UID}", f"image USER is {configured!r}"
        proc = run_image(image, ["-c", "import os; print(os.getuid(), os.getgid())"], entrypoint="python3")
        assert proc.stdout.split() == [str(UID), str(UID)], proc.stdout + proc.stderr
        return f"USER {configured}; a process in it runs as uid/gid {proc.stdout.strip()}"

    def bad_setting() -> str:
        proc = run_image(image, ["check-config"], env={"ERP_SYNC_MAX_IN_FLIGHT": "many"})
        assert proc.returncode == 2, f"exit {proc.returncode}: {proc.stderr}"
        assert "ERP_SYNC_MAX_IN_FLIGHT" in proc.stderr, proc.stderr
        return f"exit 2, stderr: {proc.stderr.strip()}"

    def no_devstack() -> str:
        proc = run_image(image, ["erp-stub", "--port", str(free_port())])
        assert proc.returncode == 2 and "devstack" in proc.stderr, f"exit {proc.returncode}: {proc.stderr}"
        probe = run_image(image, ["-c", "import importlib.util as u; print(u.find_spec('consumer.devstack'))"],
                          entrypoint="python3")
        assert probe.stdout.strip() == "None", probe.stdout + probe.stderr
        return f"exit 2, stderr: {proc.stderr.strip()[:90]}…"

    def no_compiler() -> str:
        out = []
        for img in (image, devstack):
            proc = run_image(img, ["-c", COMPILER_PROBE], entrypoint="python3")
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.strip() == "", f"{img} holds {proc.stdout.strip()}"
            out.append(img.rsplit("/", 1)[-1])
        return "no gcc, cc, c++, clang, cc1, as, ld in " + " or ".join(out)

    checks.run("runs as uid 10001", user)
    checks.run("check-config with a bad setting", bad_setting)
    checks.run("production image has no devstack", no_devstack)
    checks.run("no compiler in the images", no_compiler)

    tmp = Path(tempfile.mkdtemp(prefix="erp-sync-image-check-"))
    broker = None
    try:
        broker = start_dedicated_broker(tmp)
        print(f"      (broker {broker.bootstrap}, data in {broker.data_dir})", flush=True)
        stub_port = free_port()
        stub_url = f"http://127.0.0.1:{stub_port}"
        topic = f"image-check-{tag}"
        env = {
            "ERP_SYNC_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "ERP_SYNC_TOPIC": topic,
            "ERP_SYNC_GROUP_ID": f"image-check-{tag}",
            "ERP_SYNC_ERP_URL": f"{stub_url}/erp/push",
            "ERP_SYNC_METRICS_PORT": str(free_port()),
            "ERP_SYNC_LOG_FORMAT": "json",
        }

        def received() -> list[dict[str, Any]]:
            records: list[dict[str, Any]] = http_json(f"{stub_url}/_stub/requests")["requests"]
            return records

        def stub() -> str:
            name = f"erp-sync-check-stub-{tag}"
            started.append(name)  # before the run: a container created but not started is removed too
            podman("run", "-d", "--name", name, *LIMITS, "--network", "host", devstack,
                   "erp-stub", "--host", "127.0.0.1", "--port", str(stub_port))
            wait_until(lambda: _answers(f"{stub_url}/_stub/health"), 30, "the ERP stub answers")
            return f"erp-sync erp-stub from the devstack image on {stub_url}"

        def topics() -> str:
            proc = run_image(image, ["create-topics", "--partitions", "1"], env=env)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            return " / ".join(line for line in proc.stdout.splitlines())

        checks.run("ERP stub (devstack image)", stub)
        checks.run("create-topics", topics)
        if checks.failed:
            return _finish(checks, image, devstack, args.base_image)

        name = f"erp-sync-check-run-{tag}"

        def deliver() -> str:
            produce(broker, topic, [(SPEC_KEY, encode(spec_example_event()))])
            cmd = ["run", "-d", "--name", name, *LIMITS, "--network", "host"]
            for k, v in env.items():
                cmd += ["-e", f"{k}={v}"]
            started.append(name)
            podman(*cmd, image)  # the image's own ENTRYPOINT/CMD: erp-sync run
            wait_until(lambda: received(), 90, "the spec example reaches the stub")
            time.sleep(1)  # a second push of the same record would show now
            reqs = received()
            assert len(reqs) == 1, f"{len(reqs)} pushes: {[r['body'] for r in reqs]}"
            (req,) = reqs
            assert req["body"] == SPEC_BODY, f"body differs:\n  got  {req['body']}\n  want {SPEC_BODY}"
            assert req["headers"]["idempotency-key"] == SPEC_IDEMPOTENCY_KEY, req["headers"]
            wait_until(lambda: committed(broker, env["ERP_SYNC_GROUP_ID"], topic) == {0: 1}, 30,
                       "offset 1 committed")
            return f"{len(SPEC_BODY)} bytes, byte-exact; Idempotency-Key {SPEC_IDEMPOTENCY_KEY}; offset 1 committed"

        def pid1() -> str:
            cmdline = podman("exec", name, "cat", "/proc/1/cmdline").stdout.split("\0")
            status = podman("exec", name, "cat", "/proc/1/status").stdout
            uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
            assert any(part.endswith("erp-sync") for part in cmdline[:2]) and "run" in cmdline, cmdline
            assert set(uids) == {str(UID)}, uids
            return f"PID 1 is {' '.join(p.rsplit('/', 1)[-1] for p in cmdline if p)}, uid {uids[0]}"

        def sigterm() -> str:
            # a push in flight when SIGTERM arrives: the stub answers the next push after 3 s
            http_json(f"{stub_url}/_stub/behaviour", {"latency_ms": 3000})
            second = {**spec_example_event(), "instance_id": 1427810976874430515}
            produce(broker, topic, [(b"1427810976874430515", encode(second))])
            wait_until(lambda: len(received()) == 2, 30, "the second push arrives")
            t0 = time.monotonic()
            podman("kill", "--signal", "TERM", name)
            code = int(podman("wait", name, timeout=SHUTDOWN_BOUND_S + 30).stdout.strip())
            elapsed = time.monotonic() - t0
            assert code == 0, f"exit {code}; log:\n{podman('logs', name, check=False).stderr[-3000:]}"
            assert elapsed < SHUTDOWN_BOUND_S, f"{elapsed:.1f} s"
            offsets = committed(broker, env["ERP_SYNC_GROUP_ID"], topic)
            assert offsets == {0: 2}, f"committed {offsets}: the in-flight push was not finished and committed"
            return (f"exit 0 after {elapsed:.1f} s (bound {SHUTDOWN_BOUND_S:.0f} s), the push in flight "
                    "(3 s ERP latency) finished and offset 2 committed")

        checks.run("erp-sync run delivers the spec example", deliver)
        if "erp-sync run delivers the spec example" not in checks.failed:
            checks.run("PID 1", pid1)
            checks.run("SIGTERM to PID 1", sigterm)
        if checks.failed and name in started:
            print(podman("logs", "--tail", "40", name, check=False).stderr[-4000:], file=sys.stderr)
    finally:
        for container in started:
            podman("rm", "-f", "-t", "0", container, check=False)
        if broker is not None:
            broker.wipe()
        shutil.rmtree(tmp, ignore_errors=True)
    return _finish(checks, image, devstack, args.base_image)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()  # noqa: S310 - a local stub
        return True
    except OSError:
        return False


def _finish(checks: Checks, image: str, devstack: str, base: str | None) -> int:
    sizes = [f"{image} {size_mb(image)}", f"{devstack} {size_mb(devstack)}"]
    if base:
        sizes.append(f"base {base} {size_mb(base)}")
    print("size  " + "; ".join(sizes), flush=True)
    if checks.failed:
        print(f"image checks: {len(checks.failed)} failed: {', '.join(checks.failed)}", flush=True)
        return 1
    print("image checks: all passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
