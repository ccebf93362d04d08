"""The process entry of ``erp-sync run``: build the real parts, serve metrics, install signals, run.

The delivery loop (:class:`~consumer.delivery.pipeline.Pipeline`) only receives its parts; this
module is where the real ones are made.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from .delivery.pipeline import Pipeline
from .errors import ConfigError
from .metrics import serve
from .settings import Settings


def run(settings: Settings, exit_when_idle_s: float | None = None,
        on_ready: Callable[[Pipeline], None] | None = None) -> int:
    """Build a :class:`Pipeline`, serve metrics, install signal handlers and run it.

    Returns:
        The process exit code.
    """
    pipeline = Pipeline(settings)
    try:
        server = serve(settings.metrics_host, settings.metrics_port, pipeline.health) if settings.metrics_port else None
    except OSError as exc:
        raise ConfigError(str(exc)) from None
    pipeline.install_signal_handlers()
    if on_ready is not None:
        on_ready(pipeline)
    try:
        return pipeline.run(exit_when_idle_s)
    finally:
        if server is not None:
            server.shutdown()


def exit_now(code: int) -> None:
    """Exit at once with ``code``, without waiting for worker threads.

    A push abandoned at shutdown may still sit in an HTTP read until its timeout; the interpreter
    would join that thread at exit and overrun the shutdown bound. Everything that matters
    (commit, dead letters, group leave) is done before this is called.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
