"""Console output of the tools: a progress bar on stderr, aligned tables, plurals."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TextIO

from ..errors import UsageError
from ..logs import plural

__all__ = ["Progress", "duration", "epoch_ms", "is_terminal", "parse_time", "plural", "span", "table", "time_arg"]

log = logging.getLogger(__name__)


class Progress:
    """A one-line progress bar on stderr, with the rate and the time left.

    On a terminal the line is redrawn in place (cut to the terminal's width); anywhere else (a pipe,
    a file, a CI log, ``TERM=dumb``) a plain line is written every few seconds, never a control
    sequence.

    Args:
        label: what is progressing (``replay``).
        total: the expected number of steps (records).
        stream: where to write; ``sys.stderr`` by default.
        interval_s: minimum seconds between two draws (0.1 on a terminal, 5 otherwise).
        clock: monotonic seconds (tests pass a fake one).
    """

    WIDTH = 30
    RATE_WINDOW_S = 10.0
    """The rate is measured over about the last this many seconds (the time left follows it)."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None,
                 interval_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = is_terminal(self.stream)
        self.interval_s = interval_s if interval_s is not None else (0.1 if self.tty else 5.0)
        self.done = 0
        self.detail = ""
        self._clock = clock
        self.started = clock()
        self._last = self.started
        self._samples: deque[tuple[float, int]] = deque([(self.started, 0)])
        self._open = False
        self._closed = False
        self._lock = threading.Lock()  # notes come from the push thread

    def advance(self, steps: int = 1, detail: str | None = None) -> None:
        """Count ``steps`` more and redraw when due."""
        self.done += steps
        if detail is not None:
            self.detail = detail
        now = self._clock()
        if now - self._last >= self.interval_s:
            self._last = now
            with self._lock:
                self._draw()

    def note(self, text: str) -> None:
        """Print a line of text above the bar (from any thread)."""
        with self._lock:
            if self._open:
                self.stream.write("\r\033[K")
                self._open = False
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Draw the final state (average rate and time taken) and end the line."""
        with self._lock:
            self._closed = True
            self._draw()
            if self._open:
                self.stream.write("\n")
                self._open = False
            self.stream.flush()

    def rate(self) -> float | None:
        """Steps per second over about the last :data:`RATE_WINDOW_S` seconds (the whole run once closed)."""
        now = self._clock()
        samples = self._samples
        if self._closed:
            elapsed = now - self.started
            return self.done / elapsed if elapsed > 0 else None
        samples.append((now, self.done))
        while len(samples) > 2 and now - samples[1][0] >= self.RATE_WINDOW_S:
            samples.popleft()
        t0, d0 = samples[0]
        if now - t0 < 0.5:  # too soon to say
            return None
        return (self.done - d0) / (now - t0)

    def _speed(self) -> str:
        rate = self.rate()
        if self._closed:
            took = f"in {duration(self._clock() - self.started)}"
            return took if rate is None else f"{rate:.1f}/s {took}"
        if rate is None:
            return "?/s ETA ?"
        left = max(0, self.total - self.done)
        eta = "?" if rate <= 0 else duration(left / rate)
        return f"{rate:.1f}/s ETA {eta}"

    def _line(self) -> str:
        frac = min(1.0, self.done / self.total) if self.total else 1.0
        filled = int(frac * self.WIDTH)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        return f"{self.label} [{bar}] {frac:4.0%} {self.done}/{self.total} {self._speed()} {self.detail}".rstrip()

    def _draw(self) -> None:
        if self.tty:
            width = shutil.get_terminal_size().columns
            self.stream.write("\r\033[K" + self._line()[: max(20, width - 1)])
            self._open = True
        else:
            self.stream.write(self._line() + "\n")
        self.stream.flush()


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal that can redraw a line in place (not ``TERM=dumb``)."""
    isatty = getattr(stream, "isatty", None)
    try:
        tty = bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


def duration(seconds: float) -> str:
    """``0:07``, ``12:30``, ``1:02:03`` (hours:minutes:seconds)."""
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def span(seconds: float) -> str:
    """A length of time in its two largest units, rounded down: ``45s``, ``5m 3s``, ``2h 5m``, ``6d 21h``.

    For ages and time left (``status``); a negative length is shown as its absolute value.
    """
    total = int(abs(seconds))
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    """Align columns (two spaces apart); columns in ``right`` are right-aligned."""
    all_rows = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header))]
    out = []
    for row in all_rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
    return out


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
