"""The lock and what installs from it: uv.lock matches pyproject.toml, requirements/ is exported from it,
and the `build` group pins everything that builds the wheel."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
HATCH_EDITABLES = "editables>=0.3"  # what hatchling asks for to build an editable install (editables~=0.3)


def _by_name(requirements: list[str]) -> dict[str, str]:
    out = {}
    for requirement in requirements:
        match = re.match(r"([A-Za-z0-9_.-]+)(\[[^]]*\])?(.*)", requirement)
        assert match, requirement
        out[match.group(1).lower().replace("_", "-")] = match.group(3).strip()
    return out


def test_build_group_pins_what_builds_the_wheel() -> None:
    hook = PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["mypyc"]
    wanted = [*PYPROJECT["build-system"]["requires"], *hook["dependencies"], HATCH_EDITABLES]
    assert _by_name(PYPROJECT["dependency-groups"]["build"]) == _by_name(wanted)


def test_the_type_checker_is_the_compiler() -> None:
    """The dev install compiles the hot path with the test extra's mypy: one lower bound for both."""
    test_extra = _by_name(PYPROJECT["project"]["optional-dependencies"]["test"])
    build = _by_name(PYPROJECT["dependency-groups"]["build"])
    assert test_extra["mypy"] == build["mypy"]


def test_uv_is_pinned_exactly() -> None:
    (tool,) = PYPROJECT["dependency-groups"]["tools"]
    assert re.fullmatch(r"uv==[0-9.]+", tool), tool


def test_lock_and_requirements_are_current() -> None:
    """`uv lock --check`, and requirements/*.txt equal to a fresh export (scripts/lock.sh --check)."""
    proc = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "lock.sh"), "--check"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_requirements_are_hashed() -> None:
    for name in ("runtime.txt", "build.txt", "uv.txt"):
        text = (REPO_ROOT / "requirements" / name).read_text(encoding="utf-8")
        pins = re.findall(r"^([A-Za-z0-9_.-]+)==\S+ \\$", text, flags=re.M)
        assert pins, name
        assert text.count("--hash=sha256:") >= len(pins), name
