"""Logging: JSON lines (python-json-logger) by default, plain text on a terminal.

Context travels in ``extra=`` fields (``topic``, ``partition``, ``offset``, ``instance_id``,
``erp_code``, ``request_id``, ``event``), never in f-strings. Secrets are never passed to a logger.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

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
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
