"""Parking: a record its ERP cannot take now waits in a retry topic, so its partition moves on.

Issue "no head-of-line blocking". A record is parked (written to the retry topic of its source
topic, with its original bytes and ``erp_sync.*`` headers: route, original topic/partition/offset/
timestamp, attempts, first failure and last answer) when, at its turn in its key's order:

1. an earlier record of its key is parked (per-key order: it waits behind it);
2. its route has parked records not delivered yet (the backlog drains first);
3. its route's ERP is not ready for anyone (the route's shared backoff is open) and that since
   ``park_after_seconds``, or because the ERP refuses our credentials, or because the buffer of
   unfinished records is half full (the others would soon stop being fetched);
4. it was itself answered *retry* for ``park_after_seconds`` (its in-place budget).

Its source offset counts as finished once the broker confirmed the parked record (as for a dead
letter); a retry topic that cannot be written holds the source's commit there, nothing is lost.

**Where parked records live.** A record of source partition ``p`` is written to partition ``p`` of
its retry topic, which has as many partitions as the source; the consumer reads sources and retry
topics in one group with the range assignor, so the member that owns source partition ``p`` owns
retry partition ``p`` too: what is parked for a key is known where that key's later records
arrive, across rebalances and restarts, with no state on local disk. At assignment, the retry
partition is scanned from its committed offset to its end (:class:`ParkedIndex`: parked records by
key and route); both partitions are held (paused) until the scan is done.

**Delivering parked records.** The retry partition is consumed like a source, with the same push,
verdict and dead-letter rules, key-ordered and committed after the verdict; a parked record waits
for its route's ERP (its shared backoff: one probe at a time) and is never parked again. One still
failing ``retry_deadline_seconds`` after its first failure is dead-lettered (class ``erp``, code
``RetryDeadlineExceeded``, its last answer in the message).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from ..kafka import error_text
from ..settings import Settings
from .dead_letters import H_FIRST_FAILURE, H_ROUTE, headers_of
from .endpoints import Endpoint, Endpoints
from .offsets import Ranges, in_ranges
from .partitions import TP, PartitionState

log = logging.getLogger("consumer.delivery.pipeline")

RETRY_TOPICS_RECHECK_S = 10.0
"""Parking off because the broker did not answer at start: asked again this often (seconds)."""
RETRY_TOPICS_MISSING_RECHECK_S = 60.0
"""Parking off because a retry topic is missing or has another partition count: asked again this often (s)."""
SCAN_TIMEOUT_S = 60.0
"""Longest scan of a retry partition at assignment before its partitions are released anyway."""


class ParkedIndex:
    """What is parked for one source partition (in its retry partition), not delivered yet.

    Thread-safe: the push event loop adds (park decisions), the poll loop removes (deliveries).

    Attributes:
        loaded: set once the retry partition was scanned (until then nothing of the partition moves).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.keys: Counter[bytes] = Counter()
        self.routes: Counter[str] = Counter()
        self.first_failures: dict[str, Counter[int]] = {}
        self.loaded = threading.Event()

    def add(self, key: bytes, route: str, first_failure_ms: int) -> None:
        """A record of ``key`` and ``route`` is parked."""
        with self._lock:
            self.keys[key] += 1
            self.routes[route] += 1
            self.first_failures.setdefault(route, Counter())[first_failure_ms] += 1

    def remove(self, key: bytes, route: str, first_failure_ms: int) -> None:
        """A parked record was delivered (or dead-lettered)."""
        with self._lock:
            _decrement(self.keys, key)
            _decrement(self.routes, route)
            _decrement(self.first_failures.get(route, Counter()), first_failure_ms)

    def has_key(self, key: bytes) -> bool:
        """Whether a record of ``key`` is parked."""
        return key in self.keys

    def replace(self, other: ParkedIndex) -> None:
        """Take the counts of a scan (and keep what was added since it started)."""
        with self._lock:
            self.keys.update(other.keys)
            self.routes.update(other.routes)
            for route, failures in other.first_failures.items():
                self.first_failures.setdefault(route, Counter()).update(failures)
        self.loaded.set()


def _decrement(counter: Counter[Any], item: Any) -> None:
    if counter[item] <= 1:
        counter.pop(item, None)
    else:
        counter[item] -= 1


def parked_identity(msg: Any) -> tuple[str, int]:
    """A parked record's route and first failure (Unix ms) from its headers (``""``, 0 when missing)."""
    headers = {k: v for k, v in headers_of(msg) if k in (H_ROUTE, H_FIRST_FAILURE)}
    route = (headers.get(H_ROUTE) or b"").decode("utf-8", "replace")
    try:
        first = int(headers.get(H_FIRST_FAILURE) or b"0")
    except ValueError:
        first = 0
    return route, first


class Parking:
    """The parking rules and what is parked on the partitions this process owns.

    Args:
        settings: the configuration (source topics, their retry topics).
        endpoints: the routes' endpoints (their health).
        ordering_key: the key a record is ordered by (Kafka key, or its instance id).
        pressure: True when the buffer of unfinished records is half full.
        reader_config: the configuration of the group-less consumer that scans retry partitions.
        consumer_factory: builds that consumer (``confluent_kafka.Consumer``, or a test double).
    """

    def __init__(self, settings: Settings, endpoints: Endpoints, pressure: Callable[[], bool],
                 reader_config: dict[str, Any], consumer_factory: Callable[[dict[str, Any]], Any] = Consumer) -> None:
        self.endpoints = endpoints
        self.pressure = pressure
        self.reader_config = reader_config
        self.consumer_factory = consumer_factory
        self.retry_of: dict[str, str] = {}
        """Source topic → its retry topic, for the topics parking is on for (see :meth:`enable`)."""
        self.source_of: dict[str, str] = {}
        self.indexes: dict[TP, ParkedIndex] = {}
        self._scans: dict[TP, threading.Thread] = {}
        self._wanted = settings.retry_topics
        self._recheck_at: float | None = None
        """When to ask again whether the retry topics can be used (None: nothing left to ask)."""

    @property
    def wanted(self) -> dict[str, str]:
        """Source topic → retry topic the settings ask for (parking on unless ``ERP_SYNC_RETRY_TOPIC=none``)."""
        return dict(self._wanted)

    def enable(self, source: str, retry: str) -> None:
        """Park records of ``source`` into ``retry`` (checked to exist with as many partitions)."""
        self.retry_of[source] = retry
        self.source_of[retry] = source

    def check_topics(self, consumer: Any, strategy: str, timeout_s: float = 10.0, quiet: bool = False) -> bool:
        """Turn parking on for each source topic whose retry topic exists with as many partitions.

        What cannot be decided yet is asked again (:meth:`recheck_due`, from the loop): unreadable
        metadata (the broker not answering at start) after :data:`RETRY_TOPICS_RECHECK_S`, a retry topic
        that does not exist or has another partition count after :data:`RETRY_TOPICS_MISSING_RECHECK_S`.

        Args:
            consumer: the group's consumer (its ``list_topics``).
            strategy: its ``partition.assignment.strategy`` (parking needs ``range``).
            timeout_s: how long the metadata request may take (seconds).
            quiet: a later check: log only what it turns on.

        Returns:
            True when parking was turned on for a topic (the subscription must then include its retry topic).
        """
        wanted = {source: retry for source, retry in self._wanted.items() if source not in self.retry_of}
        if not wanted:
            return False
        if not strategy.startswith("range"):
            log.warning("parking is off: it needs partition.assignment.strategy=range (retry partition p must go "
                        "to the member that owns source partition p), not %s", strategy,
                        extra={"event": "parking_off"})
            return False
        try:
            topics = consumer.list_topics(timeout=timeout_s).topics
        except KafkaException as exc:
            if not quiet:
                log.warning("parking is off until the retry topics' metadata can be read (%s): asked again every "
                            "%.0f s", error_text(exc), RETRY_TOPICS_RECHECK_S, extra={"event": "parking_off"})
            self._recheck_at = time.monotonic() + RETRY_TOPICS_RECHECK_S
            return False
        enabled = False
        for source, retry in wanted.items():
            have, need = topics.get(retry), topics.get(source)
            if have is None or have.error is not None:
                if not quiet:
                    log.warning("parking is off for %s: its retry topic %s does not exist (erp-sync create-topics "
                                "creates it); records its ERP keeps refusing wait in place", source, retry,
                                extra={"event": "parking_off"})
                self._recheck_at = time.monotonic() + RETRY_TOPICS_MISSING_RECHECK_S
            elif need is not None and len(have.partitions) != len(need.partitions):
                if not quiet:
                    log.warning("parking is off for %s: its retry topic %s has %d partitions, the source %d (they "
                                "must match)", source, retry, len(have.partitions), len(need.partitions),
                                extra={"event": "parking_off"})
                self._recheck_at = time.monotonic() + RETRY_TOPICS_MISSING_RECHECK_S
            else:
                self.enable(source, retry)
                enabled = True
                if quiet:
                    log.info("parking is on for %s: records its ERP keeps refusing wait in %s", source, retry,
                             extra={"event": "parking_on"})
        return enabled

    def recheck_due(self, now: float) -> bool:
        """Whether :meth:`check_topics` must ask again now (once per due time)."""
        if self._recheck_at is None or now < self._recheck_at:
            return False
        self._recheck_at = None
        return True

    @property
    def topics(self) -> list[str]:
        """The retry topics to consume."""
        return list(self.source_of)

    def index_of(self, state: PartitionState) -> ParkedIndex | None:
        """The parked index of a source or retry partition (None: parking is off for its topic)."""
        source = self.source_of.get(state.topic, state.topic)
        if source not in self.retry_of:
            return None
        index = self.indexes.get((source, state.partition))
        if index is None:  # not setdefault: an index (a lock and an event) is not built on every push
            index = self.indexes[(source, state.partition)] = ParkedIndex()
        return index

    # ---------------------------------------------------------------- decisions (push event loop)

    def reason(self, state: PartitionState, key: bytes, endpoint: Endpoint) -> str:
        """Why a source record must be parked at its turn, or ``""`` (see the module's rules 1-3)."""
        index = self.index_of(state)
        if index is None:
            return ""
        if index.has_key(key):
            return "an earlier record of its key is parked"
        if any(i.routes.get(endpoint.name) for i in list(self.indexes.values())):
            return f"route {endpoint.name} has parked records"
        return self.route_reason(endpoint)

    def route_reason(self, endpoint: Endpoint) -> str:
        """Why any waiting record of this route must be parked now (rule 3), or ``""``."""
        if endpoint.backoff.failures:
            if endpoint.refuses_credentials:
                return f"the ERP of route {endpoint.name} refuses our credentials"
            if endpoint.failing_for >= endpoint.park_after_s:
                return f"the ERP of route {endpoint.name} has not been ready for {endpoint.failing_for:.0f} s"
            if self.pressure():
                return f"the ERP of route {endpoint.name} is not ready and the buffer is half full"
        return ""

    # ---------------------------------------------------------------- assignment (poll loop)

    def assigned(self, states: list[PartitionState], committed: dict[TP, tuple[int, Ranges]]) -> list[TP]:
        """Start the scans of newly assigned retry partitions; return the partitions to hold until done."""
        held: list[TP] = []
        for state in states:
            source = self.source_of.get(state.topic)
            if source is None:
                continue
            index = ParkedIndex()
            self.indexes[(source, state.partition)] = index
            start, finished = committed.get(state.tp, (0, []))
            thread = threading.Thread(target=self._scan, args=(state.tp, start, finished, index),
                                      name=f"scan-{state.topic}-{state.partition}", daemon=True)
            self._scans[state.tp] = thread
            thread.start()
            held += [state.tp, (source, state.partition)]
        return held

    def loaded(self, tp: TP) -> bool:
        """Whether the partition (source or retry) may move: its parked index is loaded (or not needed)."""
        source = self.source_of.get(tp[0], tp[0])
        if source not in self.retry_of:
            return True
        index = self.indexes.get((source, tp[1]))
        return index is None or index.loaded.is_set()

    def released(self, tps: list[TP]) -> None:
        """Forget the indexes of released retry partitions."""
        for topic, partition in tps:
            source = self.source_of.get(topic)
            if source is not None:
                self.indexes.pop((source, partition), None)
                self._scans.pop((topic, partition), None)

    def _scan(self, tp: TP, start: int, finished: Ranges, target: ParkedIndex) -> None:
        """Read a retry partition from ``start`` to its end; count what is parked (skipping ``finished``)."""
        found = ParkedIndex()
        consumer = self.consumer_factory(self.reader_config)
        began = time.monotonic()
        count = 0
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(*tp), timeout=10)
            start = max(start, low)
            if start < high:
                consumer.assign([TopicPartition(tp[0], tp[1], start)])
                while time.monotonic() - began < SCAN_TIMEOUT_S:
                    msg = consumer.poll(0.5)
                    if msg is None:
                        continue
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            break
                        continue
                    offset = int(msg.offset() or 0)
                    if offset >= high:
                        break
                    if not in_ranges(finished, offset):
                        route, first = parked_identity(msg)
                        found.add(msg.key() or b"", route, first)
                        count += 1
                    if offset + 1 >= high:
                        break
                else:
                    log.error("scan of %s[%d] took over %.0f s: its partitions move on without knowing every "
                              "parked key", tp[0], tp[1], SCAN_TIMEOUT_S, extra={"event": "parked_scan_timeout"})
        except Exception as exc:  # noqa: BLE001 - the partitions must not stay held for good
            log.error("scan of %s[%d] failed (%s): its partitions move on without knowing every parked key",
                      tp[0], tp[1], error_text(exc), extra={"event": "parked_scan_failed"})
        finally:
            consumer.close()
        target.replace(found)
        if count:
            log.info("%s[%d]: %d parked records (routes %s)", tp[0], tp[1], count,
                     ", ".join(f"{r}: {n}" for r, n in sorted(found.routes.items())),
                     extra={"event": "parked_loaded", "topic": tp[0], "partition": tp[1], "parked": count})

    # ---------------------------------------------------------------- metrics

    def by_route(self) -> dict[str, tuple[int, int | None]]:
        """Per route: parked records and the oldest first failure (Unix ms) over every owned partition."""
        out: dict[str, tuple[int, int | None]] = {}
        for index in list(self.indexes.values()):
            for route, count in list(index.routes.items()):
                oldest = min(index.first_failures.get(route, Counter()) or [0]) or None
                total, before = out.get(route, (0, None))
                out[route] = (total + count, oldest if before is None or (oldest and oldest < before) else before)
        return out
