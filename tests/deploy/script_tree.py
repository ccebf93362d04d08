"""Helpers of the tests that run the project's shell scripts in a copied tree with fakes on PATH."""

from __future__ import annotations

from pathlib import Path


def write_executable(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (creating its folder), mode 0755: a copied script or a fake command."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
