"""Kafka wiring that is not delivery logic: clients, topic metadata, watermarks for lag.

The consumer itself is driven by :mod:`consumer.delivery.pipeline`; this module builds clients from
:class:`~consumer.settings.Settings` and reads what the lag metrics need without blocking the
poll loop (a separate, group-less client queries high watermarks on its own thread).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import IsolationLevel, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, OffsetSpec, ResourceType

from .settings import Settings

log = logging.getLogger(__name__)


_PRODUCER_ONLY = ("acks", "enable.idempotence", "linger", "message.timeout", "message.max.bytes", "client.id",
                  "topic.metadata.propagation")


def error_text(exc: BaseException, name: bool = True) -> str:
    """One line for an error: ``NAME: description`` for a Kafka error, else ``str(exc)``.

    ``name=False`` leaves out ``NAME: `` (the ``erp-sync`` command's own error lines).
    """
    arg: object = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else exc
    if isinstance(arg, KafkaError):
        return f"{arg.name()}: {arg.str()}" if name else arg.str()
    return str(arg) or type(arg).__name__  # a future's TimeoutError says nothing else


def timed_out(exc: BaseException) -> bool:
    """Whether ``exc`` says the wait ran out: the future's own timeout, or librdkafka's request timeout.

    The two race when they are equal (librdkafka's ``_TIMED_OUT`` came first in CI with an older
    client); both mean the broker did not answer in time.
    """
    arg = exc.args[0] if exc.args else None
    return isinstance(exc, TimeoutError) or (isinstance(arg, KafkaError) and arg.code() == KafkaError._TIMED_OUT)


def broker_answered(exc: BaseException) -> bool:
    """Whether ``exc`` is an answer of the broker (a protocol error code), not a failure to reach it.

    librdkafka's own errors (transport, timeout, all brokers down…) have negative codes; the codes of
    the Kafka protocol, which only a broker that answered can return, are positive.
    """
    arg = exc.args[0] if exc.args else None
    return isinstance(arg, KafkaError) and arg.code() > 0


STALE_METADATA_CODES = frozenset({KafkaError.FENCED_LEADER_EPOCH, KafkaError.UNKNOWN_LEADER_EPOCH,
                                  KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                                  KafkaError.UNKNOWN_TOPIC_OR_PART})
"""Answers that mean the client's view of the cluster is out of date (a broker restarted, a leader moved)."""


def admin_client(settings: Settings) -> AdminClient:
    """An AdminClient with the pass-through security settings, logging through ``logging``."""
    conf: dict[str, Any] = {k: v for k, v in settings.producer_config().items() if not k.startswith(_PRODUCER_ONLY)}
    conf["logger"] = logging.getLogger("librdkafka.admin")
    return AdminClient(conf)


def topic_retention_seconds(settings: Settings, topic: str, timeout_s: float = 5.0) -> float | None:
    """The topic's ``retention.ms`` in seconds (-1 when unlimited), or None if it cannot be read."""
    try:
        resource = ConfigResource(ResourceType.TOPIC, topic)
        admin = admin_client(settings)  # keep a reference until the future is done
        future = admin.describe_configs([resource], request_timeout=timeout_s)[resource]
        entry = future.result(timeout=timeout_s).get("retention.ms")
        if entry is None or entry.value is None:
            return None
        ms = int(entry.value)
        return -1.0 if ms < 0 else ms / 1000.0
    except Exception as exc:  # noqa: BLE001 - optional metric
        why = f"no answer from the broker in {timeout_s:g} s" if timed_out(exc) else error_text(exc)
        log.info("cannot read retention.ms of %s yet: %s", topic, why, extra={"event": "retention_unknown"})
        return None


def metadata_consumer_config(settings: Settings) -> dict[str, Any]:
    """Config for a consumer used only for metadata and watermarks (never joins the group)."""
    conf = settings.consumer_config()
    conf["client.id"] = str(conf.get("client.id", "apaas-erp-sync")) + "-meta"
    conf["enable.partition.eof"] = False
    return conf


class WatermarkWatcher:
    """Queries high watermarks (last stable offsets) of the assigned partitions every ``interval_s``.

    Uses an AdminClient (ListOffsets, read_committed) on its own thread: no group, no fetching. With
    no partition assigned it still asks the broker for metadata, so that "the broker answers" is
    always known first-hand (readiness must not say ready while the broker is down). A change of
    the assigned partitions triggers a query at once, so a new partition's lag is known within
    about a second of its assignment.

    Args:
        settings: for the client configuration.
        interval_s: seconds between refreshes.

    Attributes:
        high: ``{(topic, partition): high watermark}`` from the last successful query.
        ok: whether the last query reached the broker.
        failures: queries in a row that did not reach the broker.
        error: why the last failed query failed.
    """

    REBUILD_AFTER_FAILURES = 3
    """Queries failed in a row after which the client is replaced (its cached metadata may be what fails)."""

    def __init__(self, settings: Settings, interval_s: float,
                 admin_factory: Callable[[dict[str, Any]], Any] = AdminClient) -> None:
        conf = {k: v for k, v in metadata_consumer_config(settings).items()
                if k not in ("group.id", "enable.auto.commit", "enable.auto.offset.store", "auto.offset.reset",
                             "enable.partition.eof", "isolation.level", "queued.max.messages.kbytes",
                             "session.timeout.ms", "heartbeat.interval.ms", "max.poll.interval.ms",
                             "partition.assignment.strategy", "group.instance.id")}
        conf["logger"] = logging.getLogger("librdkafka.watermarks")
        self._admin_conf = conf
        self._admin_factory = admin_factory
        self._admin = admin_factory(conf)
        self.rebuilds = 0
        """Times the client was replaced (stale metadata after a broker restart, or failures in a row)."""
        self._interval_s = interval_s
        self._partitions: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.high: dict[tuple[str, int], int] = {}
        self.ok = False
        self.failures = 0
        self.error = "not asked yet"
        self.retention: dict[str, float] = {}
        """``retention.ms / 1000`` of the source and retry topics (-1 when unlimited), once read."""
        self.retention_topics = [*settings.topics, *settings.retry_topics.values()]
        self._settings = settings
        self._next_retention = 0.0
        self._thread = threading.Thread(target=self._loop, name="watermarks", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def set_partitions(self, partitions: list[tuple[str, int]]) -> None:
        """Replace the set of partitions to watch, and query them at once."""
        with self._lock:
            self._partitions = list(partitions)
            self.high = {tp: hw for tp, hw in self.high.items() if tp in partitions}
        self._wake.set()

    def refresh(self) -> None:
        """Query once now (used by the thread, and by tests).

        ``ok`` says whether the broker answered at all: an error code in its answer (a leader that moved)
        is an answer. Partitions whose query failed keep their last value; the client is replaced when
        an answer says its metadata is stale, or after :attr:`REBUILD_AFTER_FAILURES` failed queries in
        a row (librdkafka's admin client can keep asking with a leader epoch from before a broker restart).
        """
        with self._lock:
            partitions = list(self._partitions)
        high: dict[tuple[str, int], int] = {}
        errors: list[BaseException] = []
        try:
            if partitions:
                request = {TopicPartition(t, p): OffsetSpec.latest() for t, p in partitions}
                futures = self._admin.list_offsets(request, isolation_level=IsolationLevel.READ_COMMITTED,
                                                   request_timeout=2.0)
                for tp, future in futures.items():
                    try:
                        high[(tp.topic, tp.partition)] = future.result(timeout=3.0).offset
                    except Exception as exc:  # noqa: BLE001 - this partition keeps its last value
                        errors.append(exc)
            else:
                self._admin.list_topics(topic=self._settings.primary_topic, timeout=2.0)
        except Exception as exc:  # noqa: BLE001 - KafkaException or a timeout: keep the last values
            errors.append(exc)
        with self._lock:
            self.high.update({tp: hw for tp, hw in high.items() if tp in self._partitions})
        if not errors:
            self.failures = 0
            self.ok = True
            return
        self.failures += 1
        answered = bool(high) or any(broker_answered(exc) for exc in errors)
        self.ok = answered
        self.error = (f"{'an error answered by' if answered else 'no answer from'} "
                      f"{self._settings.kafka_bootstrap_servers} "
                      f"({'ListOffsets' if partitions else 'Metadata'} request: {error_text(errors[0])})")
        stale = any(broker_answered(exc) and exc.args[0].code() in STALE_METADATA_CODES for exc in errors)
        if stale or self.failures % self.REBUILD_AFTER_FAILURES == 0:
            log.info("watermark client replaced: %s", self.error, extra={"event": "watermark_client_replaced"})
            self._admin = self._admin_factory(self._admin_conf)
            self.rebuilds += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
                if time.monotonic() >= self._next_retention:  # until known, then every 10 min
                    known = True
                    for topic in self.retention_topics:
                        value = topic_retention_seconds(self._settings, topic)
                        if value is not None:
                            self.retention[topic] = value
                        known = known and value is not None
                    self._next_retention = time.monotonic() + (600.0 if known else 30.0)
            except Exception:  # noqa: BLE001 - a metrics thread must not die
                log.exception("watermark refresh failed")
            self._wake.wait(self._interval_s)
            self._wake.clear()

    def close(self) -> None:
        """Stop the thread and close the client."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
