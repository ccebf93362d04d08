"""Logging: JSON lines (python-json-logger) by default, plain text on a terminal.

Context travels in ``extra=`` fields (``topic``, ``partition``, ``offset``, ``instance_id``,
``erp_code``, ``request_id``, ``event``), never in f-strings. Secrets are never passed to a logger.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from pythonjsonlogger.json import JsonFormatter

_DIGITS = re.compile(r"\d+")
# librdkafka (before 2.8) counts its own repeats inside the line: "…, 1 identical error(s) suppressed)"
_LIBRDKAFKA_REPEATS = re.compile(r",? \d+ identical error\(s\) suppressed")


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``1 partition``, ``2 partitions`` (``many``: an irregular plural) for log lines and messages."""
    return f"{count} {noun if count == 1 else (many or noun + 's')}"

_TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


class _TextWithContext(logging.Formatter):
    """Plain text, with the record's extra fields appended as ``key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD and v is not None}
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


class Throttle:
    """At most one event per key every ``every_s`` seconds, counting the ones held back.

    The one log throttle of the package: librdkafka's lines (:class:`ThrottleFilter`), the poll
    loop's Kafka errors, the dead-letter writer's failures and the ERP backoff lines all use it.

    Args:
        every_s: seconds between two events of one key.
        clock: a monotonic clock in seconds (tests pass a fake one).
        max_keys: keys remembered; beyond it the memory is cleared (keys may be open-ended).
    """

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic, max_keys: int = 1000) -> None:
        self.every_s = every_s
        self._clock = clock
        self._max_keys = max_keys
        self._last: dict[str, tuple[float, int]] = {}

    def allow(self, key: str) -> int | None:
        """Whether an event of ``key`` may go out now.

        Returns:
            None when it must be held back; else how many were held back since the last one let through.
        """
        now = self._clock()
        last, held = self._last.get(key, (-1e18, 0))
        if now - last < self.every_s:
            self._last[key] = (last, held + 1)
            return None
        if len(self._last) >= self._max_keys:
            self._last.clear()
        self._last[key] = (now, 0)
        return held

    def reset(self, key: str) -> None:
        """Let the next event of ``key`` through whenever it comes (a new episode begins)."""
        self._last.pop(key, None)

    def warning(self, logger: logging.Logger, key: str, msg: str, *args: Any, **extra: Any) -> bool:
        """Log ``msg % args`` as a warning unless held back; ``extra`` fields go with it.

        Returns:
            True when the line was logged.
        """
        held = self.allow(key)
        if held is None:
            return False
        if held:
            extra["suppressed"] = held
        logger.warning(msg, *args, extra=extra)
        return True


class ThrottleFilter(logging.Filter):
    """Lets the same message (digits and librdkafka's own repeat count ignored) through at most once per ``every_s`` s.

    librdkafka logs every failed connection attempt; while a broker is down that is several lines
    a second. The first one of each kind gets through, with a count of the suppressed ones when
    the next one is let through.
    """

    def __init__(self, every_s: float = 30.0) -> None:
        super().__init__()
        self.throttle = Throttle(every_s)

    def filter(self, record: logging.LogRecord) -> bool:
        """Return True when the record may be emitted."""
        held = self.throttle.allow(_DIGITS.sub("#", _LIBRDKAFKA_REPEATS.sub("", record.getMessage()))[:200])
        if held is None:
            return False
        if held:
            record.suppressed = held  # shown as a field: how many were dropped meanwhile
        return True


def setup(fmt: str = "auto", level: str = "INFO") -> None:
    """Configure the root logger.

    Args:
        fmt: ``json``, ``text``, or ``auto`` (text when stderr is a terminal, else JSON).
        level: a logging level name.
    """
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                           rename_fields={"levelname": "level", "asctime": "time"}))
    else:
        handler.setFormatter(_TextWithContext(_TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    librdkafka = logging.getLogger("librdkafka")
    librdkafka.filters[:] = [ThrottleFilter()]
    for child in ("consumer", "producer", "watermarks", "admin"):  # filters do not propagate to children
        logging.getLogger(f"librdkafka.{child}").filters[:] = [ThrottleFilter()]
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
