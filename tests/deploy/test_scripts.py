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
