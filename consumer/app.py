"""The process entry of ``erp-sync run``: build the real parts, serve metrics, install signals, run.

The delivery loop (:class:`~consumer.delivery.pipeline.Pipeline`) only receives its parts; this
module is where the real ones are made: the Kafka consumer (``confluent_kafka.Consumer``), the
dead-letter producer, the high-watermark reader, and the metrics on the process's default
Prometheus registry (with the ``process_*`` and ``python_*`` collectors) served on
``ERP_SYNC_METRICS_PORT``. The ERP transport is the client's default (aiohttp-backed).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType

from confluent_kafka import Consumer, Producer
from prometheus_client.core import REGISTRY

from .delivery.pipeline import Pipeline
from .errors import ConfigError
from .kafka import WatermarkWatcher
from .metrics import Health, Metrics, serve
from .settings import Settings


def build(settings: Settings) -> Pipeline:
    """The delivery loop with its real parts (nothing connects before :meth:`Pipeline.run`).

    Raises:
        ConfigError: a setting the parts refuse (TLS or secret files, the ERP URL).
    """
    producer = Producer({**settings.producer_config(), "logger": logging.getLogger("librdkafka.producer")})
    return Pipeline(settings, consumer_factory=Consumer, producer=producer,
                    watermarks=WatermarkWatcher(settings, settings.lag_refresh_seconds),
                    metrics=Metrics(settings.topic, REGISTRY), health=Health())


def run(settings: Settings, exit_when_idle_s: float | None = None) -> int:
    """Build the loop, serve /metrics, /healthz and /readyz, install signal handlers and run it.

    Returns:
        The process exit code (0 after a clean stop, 1 after a fatal Kafka error).

    Raises:
        ConfigError: a bad setting, or the metrics port is taken (the message names it).
    """
    pipeline = build(settings)
    try:
        server = serve(settings.metrics_host, settings.metrics_port, pipeline.health) if settings.metrics_port else None
    except OSError as exc:
        raise ConfigError(str(exc)) from None
    install_signal_handlers(pipeline)
    try:
        return pipeline.run(exit_when_idle_s)
    finally:
        if server is not None:
            server.shutdown()


def install_signal_handlers(pipeline: Pipeline) -> None:
    """SIGTERM (Kubernetes) and SIGINT (Ctrl-C) stop the loop cleanly: finish, commit, leave the group."""
    def handler(signum: int, _frame: FrameType | None) -> None:
        pipeline.stop(signal.Signals(signum).name)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


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
