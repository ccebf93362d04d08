"""``scripts/bootstrap.sh`` against fakes: Debian's prometheus package is installed with no service started
(a policy-rc.d of its own while apt-get runs, an existing one left alone) and nothing is killed afterwards.

The script and ``scripts/uv.sh`` are copied into a temporary tree; ``PATH`` holds only fakes (``apt-get``,
``id``, ``java``, ``mvn``, ``pkill``, ``killall``, which record their calls) and the few real tools the
scripts use, so the host's promtool is not found and nothing is installed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.script_tree import write_executable

REPO_ROOT = Path(__file__).resolve().parents[2]
UV_VERSION = "0.0.1"
REAL_TOOLS = ("basename", "bash", "cat", "chmod", "cut", "date", "dirname", "flock", "mkdir", "rm", "sed", "sha256sum",
              "sleep")

FAKE_APT_GET = """#!/usr/bin/env bash
echo "apt-get $*" >>"$FAKE_CALLS"
if [[ "$1" == install ]]; then
  if [[ -x "$ERP_SYNC_POLICY_RC_D" ]]; then
    rc=0; "$ERP_SYNC_POLICY_RC_D" prometheus start || rc=$?
    echo "policy-rc.d prometheus start: $rc" >>"$FAKE_CALLS"
  else
    echo "policy-rc.d: none" >>"$FAKE_CALLS"
  fi
  if [[ "${FAKE_FAIL:-}" == install ]]; then exit 100; fi
  printf '#!/bin/sh\\n' >"$FAKE_BIN/promtool"; printf '#!/bin/sh\\n' >"$FAKE_BIN/prometheus"
  chmod +x "$FAKE_BIN/promtool" "$FAKE_BIN/prometheus"
fi
"""
FAKE_RECORDER = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >>"$FAKE_CALLS"
"""


@dataclass
class Tree:
    root: Path
    bin: Path
    policy: Path
    env: dict[str, str]

    def calls(self) -> list[str]:
        path = self.bin.parent / "calls"
        return path.read_text().splitlines() if path.exists() else []

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(self.root / "scripts" / "bootstrap.sh"), *args],
                              env={**self.env, **env}, capture_output=True, text=True, timeout=30)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    """A repository copy whose venv is installed already (warm), with fakes on PATH."""
    root, fake_bin, cache = tmp_path / "repo", tmp_path / "bin", tmp_path / "cache"
    for name in ("bootstrap.sh", "uv.sh"):
        write_executable(root / "scripts" / name, (REPO_ROOT / "scripts" / name).read_text())
    for name in ("pyproject.toml", "uv.lock", "consumer/decode/avro_v1.py"):
        write_executable(root / name, f"stand-in for {name}\n")
    write_executable(root / "requirements" / "uv.txt", f"uv=={UV_VERSION} \\\n    --hash=sha256:00\n")
    write_executable(cache / f"uv-{UV_VERSION}" / "bin" / "uv", FAKE_RECORDER)
    write_executable(root / ".venv" / "bin" / "python", "#!/bin/sh\n")
    want = hashlib.sha256(b"".join((root / n).read_bytes()
                                   for n in ("pyproject.toml", "uv.lock", "consumer/decode/avro_v1.py"))).hexdigest()
    (root / ".venv" / ".erp-sync-installed").write_text(want + "\n")
    for tool in REAL_TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (fake_bin.parent / "tools").mkdir(exist_ok=True)
        (fake_bin.parent / "tools" / tool).symlink_to(found)
    write_executable(fake_bin / "apt-get", FAKE_APT_GET)
    write_executable(fake_bin / "id", '#!/usr/bin/env bash\necho "id $*" >>"$FAKE_CALLS"; echo 0\n')
    for name in ("java", "mvn", "pkill", "killall"):
        write_executable(fake_bin / name, FAKE_RECORDER)
    env = {"PATH": f"{fake_bin}:{fake_bin.parent / 'tools'}", "HOME": str(tmp_path), "ERP_SYNC_CACHE_DIR": str(cache),
           "FAKE_CALLS": str(tmp_path / "calls"), "FAKE_BIN": str(fake_bin),
           "ERP_SYNC_POLICY_RC_D": str(tmp_path / "policy-rc.d")}
    return Tree(root, fake_bin, tmp_path / "policy-rc.d", env)


def test_prometheus_is_installed_with_no_service_started_and_nothing_killed(tree: Tree) -> None:
    run = tree.run("--with-tools")
    assert run.returncode == 0, run.stderr
    assert tree.calls() == [
        "id -u",
        "apt-get update -qq",
        "apt-get install -y -qq prometheus",
        "policy-rc.d prometheus start: 101",  # while apt-get installs, no service may start
    ]
    assert not tree.policy.exists()  # it created it, it removed it
    assert run.stderr == "[bootstrap] installing Debian package prometheus (promtool, prometheus)\n"


def test_an_existing_policy_rc_d_is_left_as_it_is(tree: Tree) -> None:
    admins = "#!/bin/sh\n# the administrator's\nexit 0\n"
    write_executable(tree.policy, admins)
    run = tree.run("--with-tools")
    assert run.returncode == 0, run.stderr
    assert tree.calls()[2:] == ["apt-get install -y -qq prometheus", "policy-rc.d prometheus start: 0"]
    assert tree.policy.read_text() == admins
    assert os.access(tree.policy, os.X_OK)


def test_the_policy_is_removed_when_apt_get_fails(tree: Tree) -> None:
    run = tree.run("--with-tools", FAKE_FAIL="install")
    assert run.returncode == 100
    assert tree.calls()[2:] == ["apt-get install -y -qq prometheus", "policy-rc.d prometheus start: 101"]
    assert not tree.policy.exists()


def test_nothing_to_install_nothing_called(tree: Tree) -> None:
    for tool in ("promtool", "prometheus"):
        write_executable(tree.bin / tool, "#!/bin/sh\n")
    run = tree.run("--with-tools")
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")
    assert tree.calls() == []
    assert not tree.policy.exists()


FAKE_PYTHON3 = """#!/usr/bin/env bash
if [[ "$1" == -c ]]; then  # the preflight's checks; FAKE_MISSING="venv dev" fails two of them
  case "$2" in
    *ensurepip*) [[ "${FAKE_MISSING:-}" != *venv* ]] ;;
    *Python.h*) [[ "${FAKE_MISSING:-}" != *dev* ]] ;;
  esac
  exit
fi
echo "python3 $*" >>"$FAKE_CALLS"
if [[ "$1 $2" == "-m venv" ]]; then
  mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && chmod +x "$3/bin/python"
elif [[ "$1 $2 $3" == "-m pip install" ]]; then
  printf '#!/usr/bin/env bash\\necho "uv $*" >>"$FAKE_CALLS"\\n' >"$(dirname "$0")/uv"
  chmod +x "$(dirname "$0")/uv"
fi
"""


def test_a_first_run_says_what_it_installs_phase_by_phase_and_a_warm_run_nothing(tree: Tree) -> None:
    cache = Path(tree.env["ERP_SYNC_CACHE_DIR"])
    shutil.rmtree(tree.root / ".venv")
    shutil.rmtree(cache / f"uv-{UV_VERSION}")
    write_executable(tree.bin / "python3", FAKE_PYTHON3)
    tree.env["PATH"] = f"{tree.bin}:{os.environ['PATH']}"
    cold = tree.run()
    assert cold.returncode == 0, cold.stderr
    assert cold.stderr.splitlines() == [
        f"[uv.sh] installing uv {UV_VERSION}, the installer, into {cache}/uv-{UV_VERSION} "
        "(first run, a few seconds)...",
        f"[bootstrap] creating the virtual environment {tree.root}/.venv...",
        "[bootstrap] installing the dependencies from uv.lock (first run, up to a minute)...",
        "[bootstrap] building apaas-erp-sync: mypyc compiles its hot path (up to a minute)...",
        f"[bootstrap] installed into {tree.root}/.venv",
    ]
    assert [c.split(" --")[0] for c in tree.calls() if c.startswith("uv ")] == ["uv sync", "uv sync"]
    warm = tree.run()
    assert (warm.returncode, warm.stdout, warm.stderr) == (0, "", "")

    (tree.root / "uv.lock").write_text("locked again\n")
    changed = tree.run()
    assert changed.stderr.splitlines() == [
        "[bootstrap] updating the dependencies from uv.lock (pyproject.toml, uv.lock or consumer/decode/avro_v1.py "
        "changed)...",
        "[bootstrap] building apaas-erp-sync: mypyc compiles its hot path (up to a minute)...",
        f"[bootstrap] installed into {tree.root}/.venv",
    ]


FAKE_MVN = """#!/usr/bin/env bash
echo "mvn $*" >>"$FAKE_CALLS"
for arg; do
  case "$arg" in -DoutputDirectory=*) out="${arg#-DoutputDirectory=}" ;; esac
done
touch "$out/kafka_2.13-4.1.1.jar" "$out/kafka-clients-4.1.1.jar"
"""


def test_the_kafka_jars_download_says_so_once(tree: Tree) -> None:
    cache = Path(tree.env["ERP_SYNC_CACHE_DIR"])
    for name in ("kafka.sh", "java.sh"):  # kafka.sh sources java.sh
        write_executable(tree.root / "dev" / name, (REPO_ROOT / "dev" / name).read_text())
    (tree.root / "dev" / "pom.xml").write_text((REPO_ROOT / "dev" / "pom.xml").read_text())
    write_executable(tree.bin / "mvn", FAKE_MVN)
    env = {**tree.env, "PATH": f"{tree.bin}:{os.environ['PATH']}", "KAFKA_VERSION": "4.1.1", "KAFKA_PORT": "9092"}

    def fetch() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(tree.root / "dev" / "kafka.sh"), "fetch"], env=env, capture_output=True,
                              text=True, timeout=30)

    cold = fetch()
    assert cold.returncode == 0, cold.stderr
    libs = cache / "kafka-4.1.1" / "libs"
    assert cold.stdout == f"{libs}\n"
    first, second = cold.stderr.splitlines()
    assert first == (f"[kafka.sh:9092] downloading the Kafka 4.1.1 jars from Maven Central into {libs} "
                     "(first run, up to a minute)...")
    assert re.fullmatch(r"\[kafka\.sh:9092\] downloaded 2 jars in \d+ s", second), second
    warm = fetch()
    assert (warm.returncode, warm.stdout, warm.stderr) == (0, f"{libs}\n", "")


def test_what_a_fresh_debian_lacks_is_named_with_its_packages_before_anything_is_installed(tree: Tree) -> None:
    shutil.rmtree(tree.root / ".venv")
    write_executable(tree.bin / "python3", FAKE_PYTHON3)
    tree.env["PATH"] = f"{tree.bin}:{os.environ['PATH']}"
    run = tree.run(FAKE_MISSING="venv dev", CC="no-such-gcc -pthread")
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        "[bootstrap] cannot install: missing the venv module (python3 -m venv), Python's C headers (Python.h), "
        "a C compiler (no-such-gcc)",
        "[bootstrap] on Debian or Ubuntu: sudo apt-get install python3-venv python3-dev gcc",
    ]
    assert tree.calls() == []  # no venv made, no uv installed
    assert not (tree.root / ".venv").exists()

    interpreted = tree.run(FAKE_MISSING="dev", CC="no-such-gcc", HATCH_BUILD_NO_HOOKS="true")  # nothing compiled
    assert interpreted.returncode == 0, interpreted.stderr
    assert (tree.root / ".venv" / ".erp-sync-installed").exists()
