"""What a fetched record needs: skip, dead letter, or a push (issue "architecture": one concern).

:meth:`Intake.handle` takes one message from the poll loop: librdkafka's events (end of partition,
errors) go to the partition and the error log; a record is tracked by its partition's offsets, then
skipped (finished by an earlier owner, per the commit metadata, or not ``APPROVED``), dead-lettered
(it does not decode, breaks a rule of ERP-INTERFACE.md, or matches no route), or given its ERP body,
its ordering key and its route's endpoint and submitted to the pushes in flight (:mod:`.inflight`).

A record whose writer schema cannot be looked up because the schema registry does not answer is
not the record's fault: its partition is held at that record (sought back to it and paused, the
record still unfinished, so the commit stays below it) and the registry is asked again after
:data:`REGISTRY_HOLD_S`; the other partitions go on. Nothing is dead-lettered for a registry outage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message, TopicPartition

from .. import transform
from ..decode import Decoder
from ..errors import RecordError, RegistryUnavailable, ValidationError
from ..logs import Throttle
from ..metrics import Health, Metrics
from ..routes import RouteTable
from ..settings import Settings
from .dead_letters import H_ATTEMPTS, headers_of, int_header, read_headers
from .endpoints import Endpoints
from .flow import Backpressure
from .inflight import InFlight
from .parking import Parking, parked_identity
from .partitions import TP, Assignment, PartitionState
from .settle import Disposition, Record, Settler

log = logging.getLogger("consumer.delivery.pipeline")

REGISTRY_HOLD_S = 5.0
"""A partition held because the schema registry did not answer asks again after this long (seconds)."""


class Intake:
    """Turns fetched messages into settled records or pushes.

    Args:
        settings: the configuration (the group id, for the log).
        assignment: the owned partitions.
        decoder: the value decoder.
        routes, endpoints: the routes and their endpoints.
        parking: the parking rules (which topics are retry topics).
        settler: where records that need no push are settled.
        in_flight: where approved records are submitted.
        metrics, health: counters and the probes' state.
        errors: the throttle of Kafka error lines (shared with the loop).
        offset_reset: the consumer's ``auto.offset.reset`` (for the log).
        on_fatal: called with a fatal Kafka error (the loop stops).
        backpressure: holds a partition while the schema registry does not answer.
        consumer: the loop's current Kafka consumer (it seeks a held partition back).
    """

    def __init__(self, settings: Settings, assignment: Assignment, decoder: Decoder, routes: RouteTable,
                 endpoints: Endpoints, parking: Parking, settler: Settler, in_flight: InFlight, metrics: Metrics,
                 health: Health, errors: Throttle, offset_reset: str, on_fatal: Callable[[KafkaError], None],
                 backpressure: Backpressure, consumer: Callable[[], Any]) -> None:
        self.settings = settings
        self.assignment = assignment
        self.decoder = decoder
        self.routes = routes
        self.endpoints = endpoints
        self.parking = parking
        self.settler = settler
        self.in_flight = in_flight
        self.metrics = metrics
        self.health = health
        self._errors = errors
        self._offset_reset = offset_reset
        self._on_fatal = on_fatal
        self.last_activity = time.monotonic()
        """When the last record was fetched (monotonic s): idleness counts from it."""
        self._backpressure = backpressure
        self._consumer = consumer
        self._registry_holds: dict[TP, tuple[PartitionState, float]] = {}
        """Partitions held for the schema registry (held at ``state.refetch_from``): their state, when to ask again."""
        self._registry_log = Throttle(60.0)

    def handle(self, msg: Message) -> None:
        """Decide what a fetched record needs: skip, dead letter, or a push (settled when it returns)."""
        err = msg.error()
        if err is not None:
            self._event(msg, err)
            return
        state = self.assignment.get(str(msg.topic()), int(msg.partition() or 0))
        if state is None:
            return  # a partition we no longer own: its new owner reads it
        offset = int(msg.offset() or 0)
        again = False
        if state.refetch_from is not None:  # held for the registry, or just released
            if state.tp in self._registry_holds:
                return  # fetched before it was sought back: read again once released
            again = self._released(state, offset)
        if state.without_committed_offset:
            self._started_without_offset(state, offset)
        ts_type, ts = msg.timestamp()
        if not again and not state.offsets.track(offset, ts if ts_type else int(time.time() * 1000)):
            log.debug("ignoring re-fetched offset %d of %s", offset, state)
            return
        state.eof = False
        self.last_activity = time.monotonic()
        self.health.broker_up = True
        record = Record(state, msg, offset)
        if state.offsets.already_finished(offset):  # an earlier owner finished it (commit metadata)
            self.settler.settle(record, Disposition.ALREADY_DONE)
            return
        try:
            event = self.decoder.approved(msg.value())
            if isinstance(event, str):  # valid, not APPROVED: the writer's status
                self.settler.settle(record, Disposition.SKIPPED, status=event)
                return
            record.body, record.idempotency_key = transform.erp_request(event)
            record.instance_id = event["instance_id"]
            self._route(record, event["flow_code"])
        except RegistryUnavailable as exc:
            self._hold_for_registry(record, exc)
            return
        except RecordError as exc:
            if exc.code == "UnknownStatus":
                self.metrics.unknown_status_dead_lettered(state.topic)
            self.settler.settle(record, Disposition.DEAD_LETTER, error=exc)
            return
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the stream: dead-letter it
            log.exception("unexpected error while transforming",
                          extra={"topic": msg.topic(), "partition": msg.partition(), "offset": offset,
                                 "event": "transform_bug"})
            self.settler.settle(record, Disposition.DEAD_LETTER,
                                error=ValidationError("Unexpected", f"{type(exc).__name__}: {exc}"))
            return
        self.in_flight.submit(record, (state.topic, record.key))

    def _hold_for_registry(self, record: Record, exc: RegistryUnavailable) -> None:
        """Hold the record's partition at the record (still unfinished) and ask the registry again later.

        If the partition cannot be sought back, the record stays unfinished (the commit stays below it)
        and its partition's next owner reads it: never lost, never dead-lettered for the registry.
        """
        state, offset = record.partition, record.offset
        consumer = self._consumer()
        try:
            consumer.seek(TopicPartition(state.topic, state.partition, offset))
        except Exception as seek_error:  # noqa: BLE001 - e.g. no longer assigned
            log.warning("%s; cannot seek %s back to offset %d (%s): the record waits for the partition's next "
                        "owner", exc, state, offset, seek_error, extra={"event": "registry_unavailable"})
            self.settler.settle(record, Disposition.RETRY)
            return
        self._backpressure.hold(consumer, [state.tp], "registry")
        state.refetch_from = offset
        self._registry_holds[state.tp] = (state, time.monotonic() + REGISTRY_HOLD_S)
        held = self._registry_log.allow("registry")
        if held is not None:
            log.warning("%s: %s held at offset %d, asked again every %.0f s (nothing is dead-lettered for it)%s",
                        exc, state, offset, REGISTRY_HOLD_S,
                        f"; {held} more holds since the last line" if held else "",
                        extra={"event": "registry_unavailable", "topic": state.topic, "partition": state.partition,
                               "offset": offset})

    def release_registry_holds(self, now: float) -> None:
        """Let partitions held for the schema registry fetch their held record again (poll loop)."""
        for tp, (state, until) in list(self._registry_holds.items()):
            if state.released:  # revoked or lost meanwhile: its next owner reads it
                del self._registry_holds[tp]
            elif now >= until:
                del self._registry_holds[tp]
                self._backpressure.unhold(self._consumer(), [tp], "registry")

    def _released(self, state: PartitionState, offset: int) -> bool:
        """The first record of a partition released from a registry hold: True when it is the held one."""
        held, state.refetch_from = state.refetch_from, None
        assert held is not None
        if offset == held:
            return True  # still tracked as unfinished: decoded again
        if offset > held:  # the held record left the log meanwhile (retention): nothing left to read
            log.error("%s: the record at offset %d held for the schema registry is no longer in the log "
                      "(retention); reading on from %d", state, held, offset, extra={"event": "registry_hold_lost"})
            state.finish(held)
        return False

    def _route(self, record: Record, flow_code: int) -> None:
        """Give an approved record its ordering key and its route's endpoint (and, parked, its history).

        Raises:
            ValidationError: ``NoRoute``: no route matches it and there is no default route.
        """
        msg = record.msg
        record.key = msg.key() or str(record.instance_id).encode()
        source = self.parking.source_of.get(record.partition.topic)
        if source is not None:  # read from a retry topic: it keeps the route it was parked from
            route, record.first_failure_ms = parked_identity(msg)
            record.parked_from = source
            record.attempts_before = int_header(read_headers(msg), H_ATTEMPTS)
            endpoint = self.endpoints.get(route)
            if endpoint is not None:
                record.endpoint = endpoint
                return
        topic = source or record.partition.topic
        headers = dict(headers_of(msg)) if self.routes.needs_headers else None
        matched = self.routes.require(topic, flow_code, headers)
        record.endpoint = self.endpoints[matched.name]

    def _event(self, msg: Message, err: KafkaError) -> None:
        """Errors and events librdkafka reports through poll: never records."""
        if err.code() == KafkaError._PARTITION_EOF:
            state = self.assignment.get(str(msg.topic()), int(msg.partition() or 0))
            if state is not None:
                if state.without_committed_offset:
                    self._started_without_offset(state, int(msg.offset() or 0))
                state.reached_end(int(msg.offset() or 0), time.monotonic())
            self.health.broker_up = True
            return
        if err.fatal():
            self._on_fatal(err)
            return
        self._errors.warning(log, err.name(), "Kafka reports %s: %s (topic %s, partition %s)", err.name(), err.str(),
                             msg.topic(), msg.partition(), event="kafka_error", error_key=err.name())

    def _started_without_offset(self, state: PartitionState, offset: int) -> None:
        """Say where a partition without a committed offset started (warning and counter).

        When the group had committed before, its offsets expired (``offsets.retention.minutes``) or were
        deleted: a replay (or a skip) nobody asked for.
        """
        state.without_committed_offset = False
        policy = self._offset_reset
        log.warning("%s had no committed offset for group %s: reading from offset %d (auto.offset.reset=%s); "
                    "if the group had committed before, its offsets expired or were deleted and records are read "
                    "again (or skipped)", state, self.settings.group_id, offset, policy,
                    extra={"event": "no_committed_offset", "topic": state.topic, "partition": state.partition,
                           "offset": offset})
        self.metrics.started_without_offset.labels(state.topic).inc()
