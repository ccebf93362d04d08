"""Console output of the tools: a progress bar on stderr, aligned tables, plurals."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TextIO

from ..errors import UsageError

log = logging.getLogger(__name__)

class Progress:
    """A one-line progress bar on stderr: redrawn in place on a terminal, else a line every few seconds.

    Args:
        label: what is progressing (``replay``).
        total: the expected number of steps (records).
        stream: where to write; ``sys.stderr`` by default.
        interval_s: minimum seconds between two draws (0.1 on a terminal, 5 otherwise).
    """

    WIDTH = 30

    def __init__(self, label: str, total: int, stream: TextIO | None = None,
                 interval_s: float | None = None) -> None:
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.interval_s = interval_s if interval_s is not None else (0.1 if self.tty else 5.0)
        self.done = 0
        self.detail = ""
        self._last = time.monotonic()
        self._open = False

    def advance(self, steps: int = 1, detail: str | None = None) -> None:
        """Count ``steps`` more and redraw when due."""
        self.done += steps
        if detail is not None:
            self.detail = detail
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self._draw()

    def note(self, text: str) -> None:
        """Print a line of text above the bar."""
        if self._open:
            self.stream.write("\r\033[K")
            self._open = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line."""
        self._draw()
        if self._open:
            self.stream.write("\n")
            self._open = False
        self.stream.flush()

    def _line(self) -> str:
        frac = min(1.0, self.done / self.total) if self.total else 1.0
        filled = int(frac * self.WIDTH)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        return f"{self.label} [{bar}] {frac:4.0%} {self.done}/{self.total} {self.detail}".rstrip()

    def _draw(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + self._line())
            self._open = True
        else:
            self.stream.write(self._line() + "\n")
        self.stream.flush()


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    """Align columns (two spaces apart); columns in ``right`` are right-aligned."""
    all_rows = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header))]
    out = []
    for row in all_rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
    return out


def plural(count: int, noun: str) -> str:
    """``1 record``, ``2 records``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def parse_time(text: str, option: str) -> tuple[datetime, bool]:
    """Parse an ISO 8601 date-time; one without a time zone is read as UTC.

    Returns:
        ``(aware datetime, was_naive)``.

    Raises:
        UsageError: not an ISO 8601 date-time.
    """
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{option} {text!r}: not an ISO 8601 date-time "
                         "(e.g. 2024-05-01T10:00:00+02:00 or 2024-05-01T08:00:00Z)") from None
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC), True
    return when, False


def epoch_ms(when: datetime) -> int:
    """Milliseconds since the Unix epoch of an aware date-time."""
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def time_arg(text: str, option: str) -> tuple[datetime, int]:
    """A time option: ``(aware datetime, ms since the epoch)``; a note on stderr when read as UTC.

    Raises:
        UsageError: not an ISO 8601 date-time.
    """
    when, naive = parse_time(text, option)
    if naive:
        print(f"note: {option} {text} has no time zone: read as UTC ({when.isoformat()})", file=sys.stderr)
    return when, epoch_ms(when)
