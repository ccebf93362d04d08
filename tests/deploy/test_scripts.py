"""What every script of scripts/, dev/ and .ci/ must not do."""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT_DIRS = ("scripts", "dev", ".ci")


def _files() -> list[Path]:
    files = [p for d in SCRIPT_DIRS for p in sorted((REPO_ROOT / d).rglob("*")) if p.is_file()]
    assert len(files) > 10
    return files


def _lines_matching(pattern: str) -> list[str]:
    found = []
    for path in _files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if re.search(pattern, line):
                found.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    return found


def test_no_script_kills_processes_by_name() -> None:
    """By name means every process of that name on the host, not only the script's: end them by pid."""
    assert _lines_matching(r"\b(pkill|killall)\b") == []


# Not on a fresh Debian or Ubuntu with python3 and a JDK (they are not Essential or priority required): the
# scripts use the venv's python instead (README: what the two commands need).
NOT_ON_A_FRESH_DEBIAN = ("curl", "wget", "jq", "lsof", "netstat", "nc", "netcat", "pgrep", "pidof", "xxd", "unzip")


def _without_comment(line: str) -> str:
    return re.split(r"(?:^|\s)#", line, maxsplit=1)[0]


def test_no_script_needs_a_tool_a_fresh_debian_lacks() -> None:
    pattern = re.compile(r"\b(" + "|".join(NOT_ON_A_FRESH_DEBIAN) + r")\b")
    found = []
    for path in _files():
        if path.suffix not in (".sh", ".py", "") or path.name == "Dockerfile":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(_without_comment(line)):
                found.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert found == []
