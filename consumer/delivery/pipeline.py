"""The delivery loop: poll → handle → settle, then one call each for commit, flow control and rejoin.

intake (:mod:`.intake`: decode, filter, transform, route) → push
(:mod:`.push`, key-ordered by :mod:`.dispatch`) → verdict (:mod:`consumer.erp.verdict`) → settle
(:mod:`.settle`) → commit (:mod:`.commit`), with dead letters (:mod:`.dead_letters`) for what can
never be delivered.

Threads: the loop owns the Kafka consumer, the partitions (:mod:`.partitions`) and the dead-letter
producer; the pushes run as coroutines on one event-loop thread (:mod:`.dispatch`), only talk HTTP
and hand their results back through a queue, which the loop drains and settles.

Seams: the loop is given its Kafka consumer (a factory: the rejoin watchdog makes a new one), its
dead-letter producer and its ERP transport; :mod:`consumer.app` builds the real ones, the unit
tests (``tests/unit/test_pipeline_*.py``) pass doubles.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException, Message
from prometheus_client import CollectorRegistry

from ..decode import Decoder, avro_v1, decoder_for
from ..logs import Throttle, plural
from ..metrics import Health, Metrics
from ..routes import load_routes
from ..settings import Settings, redact_url
from .commit import Committer
from .dead_letters import DeadLetterProducer, DeadLetterWriter
from .dispatch import EVENT_LOOP
from .endpoints import Endpoints
from .flow import Backpressure, LagReporter, StaticWatermarks, WatermarkSource, idle_for
from .inflight import InFlight
from .intake import Intake
from .parking import Parking
from .partitions import TP, Assignment
from .rebalance import Rebalancer
from .settle import RunStats, Settler

if TYPE_CHECKING:  # httpx only when a transport is given (unit tests): not loaded by `run`
    import httpx

log = logging.getLogger(__name__)

POLL_TIMEOUT_S = 0.05
FINAL_COMMIT_TIMEOUT_S = 10.0
"""How long shutdown waits for the broker's answer to its last commit."""
CLOSE_TIMEOUT_S = 5.0
"""How long shutdown waits to leave the group once the broker did not answer that commit."""
CONSUME_BATCH = 500
KAFKA_ERROR_LOG_EVERY_S = 30.0

ConsumerFactory = Callable[[dict[str, Any]], Any]
"""Builds a Kafka consumer from a librdkafka configuration (``confluent_kafka.Consumer``, or a double)."""


class Pipeline:
    """One consumer process: subscribe, deliver, commit, until stopped.

    Args:
        settings: the configuration.
        consumer_factory: builds the Kafka consumer from its configuration (callbacks included).
        producer: the dead-letter producer.
        erp_transport: the httpx transport of the ERP client (None: the aiohttp-backed one).
        watermarks: the high-watermark reader of the lag metrics (None: none, lag from offsets only).
        decoder: the value decoder (None: one from the settings, with the schema registry if set).
        metrics: where to count (None: a fresh registry, so the loop can be built more than once).
        health: the probes' state (None: a fresh one).
    """

    def __init__(self, settings: Settings, *, consumer_factory: ConsumerFactory, producer: DeadLetterProducer,
                 erp_transport: httpx.AsyncBaseTransport | None = None, watermarks: WatermarkSource | None = None,
                 decoder: Decoder | None = None, metrics: Metrics | None = None, health: Health | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics(settings.primary_topic, CollectorRegistry())
        self.health = health or Health()
        self.stats = RunStats()
        self.assignment = Assignment()
        self.stopping = False
        self.shutdown_deadline: float | None = None
        self._final_commit_unanswered = False
        self._stop = threading.Event()
        self._fatal: str | None = None
        self._errors = Throttle(KAFKA_ERROR_LOG_EVERY_S)

        self.decoder = decoder or decoder_for(settings)
        self.routes = load_routes(settings)
        self.endpoints = Endpoints(self.routes, self.metrics, erp_transport)
        self.backpressure = Backpressure(self.assignment, settings.max_buffered_records, self.metrics, self._errors)
        conf = settings.consumer_config()
        self.parking = Parking(settings, self.endpoints, self.backpressure.pressure,
                               {**conf, "group.id": f"{settings.group_id}.parked-scan", "enable.auto.commit": False,
                                "enable.partition.eof": True, "logger": logging.getLogger("librdkafka.consumer")},
                               consumer_factory)
        self.dead_letters = DeadLetterWriter(producer, settings.dead_letter_topic)
        self.parker = DeadLetterWriter(producer, settings.dead_letter_topic, omit_too_large=False,
                                       what="parked record")
        self.settler = Settler(self.metrics, self.dead_letters, self.stats, self.parker, self.parking)
        self.in_flight = InFlight(settings.in_flight_limit, self.endpoints, self.settler, stopping=self._stop.is_set,
                                  parking=self.parking)
        # read when scraped: set at the last lag update it could be seconds old
        self.metrics.in_flight.set_function(lambda: self.in_flight.running)
        self.committer = Committer(self.assignment, self.metrics, self.stats, settings.commit_interval_seconds,
                                   self._errors)
        self.watermarks = watermarks or StaticWatermarks()
        self.lag = LagReporter(self.assignment, self.watermarks, self.metrics, self.health,
                               min(1.0, settings.lag_refresh_seconds))
        self.rebalance = Rebalancer(self, self.assignment, self.backpressure, self.watermarks, self.metrics,
                                    self.health, settings.shutdown_timeout_seconds, settings.rejoin_timeout_seconds,
                                    parking=self.parking)
        conf.update(error_cb=self._on_kafka_error, on_commit=self.committer.on_commit,
                    logger=logging.getLogger("librdkafka.consumer"))
        self._consumer_conf = conf
        self._assignment_strategy = str(conf.get("partition.assignment.strategy", "range,roundrobin"))
        self._consumer_factory = consumer_factory
        self.consumer: Any = consumer_factory(conf)
        self.intake = Intake(settings, self.assignment, self.decoder, self.routes, self.endpoints, self.parking,
                             self.settler, self.in_flight, self.metrics, self.health, self._errors,
                             str(conf.get("auto.offset.reset", "earliest")), on_fatal=self._fatal_error,
                             backpressure=self.backpressure, consumer=lambda: self.consumer)

    # ------------------------------------------------------------------ lifecycle

    def stop(self, reason: str = "requested") -> None:
        """Ask the loop to stop (thread- and signal-safe)."""
        if not self._stop.is_set():
            log.info("stopping: %s", reason, extra={"event": "stopping"})
        self._stop.set()

    def run(self, exit_when_idle_s: float | None = None) -> int:
        """Consume until stopped (or idle, with ``exit_when_idle_s``); return the exit code.

        Returns:
            0 after a clean stop; 1 after a fatal Kafka error.
        """
        self.start()
        try:
            while not self._stop.is_set():
                self.step()
                if exit_when_idle_s is not None and self.idle_for() >= exit_when_idle_s:
                    log.info("caught up and idle for %.1f s: exiting", exit_when_idle_s, extra={"event": "idle_exit"})
                    break
        finally:
            self.shutdown()
        if self._fatal:
            log.error("exiting after a fatal error: %s", self._fatal, extra={"event": "fatal"})
            return 1
        return 0

    def start(self) -> None:
        """Start the watermark reader and the push event loop, and subscribe (``run`` does it first)."""
        s = self.settings
        self.watermarks.start()
        self.in_flight.start()
        self._check_retry_topics()
        self._subscribe()
        routes = "; ".join(f"{r.name} → {redact_url(r.settings.erp_url)}" for r in self.routes.routes)
        parked = ", ".join(f"{t} → {r}" for t, r in self.parking.retry_of.items()) or "off"
        log.info("consuming %s as group %s; routes: %s; dead letters to %s; parking: %s; Avro reader %s; push event "
                 "loop %s", s.topic, s.group_id, routes, s.dead_letter_topic, parked,
                 "compiled" if avro_v1.COMPILED else "interpreted (slower: built without mypyc)", EVENT_LOOP,
                 extra={"event": "started"})
        self.health.started = True

    def step(self) -> None:
        """One turn of the loop: poll and handle a batch, settle push results, then commit, flow, rejoin."""
        for msg in self._poll():
            self.intake.handle(msg)
        self.in_flight.settle_results()
        self.dead_letters.poll()
        self.parker.poll()
        self.rebalance.release_loaded()
        now = time.monotonic()
        self.intake.release_registry_holds(now)
        self.committer.maybe_commit(self.consumer, now)
        if self.lag.maybe_update(now):
            self._report()
        self.backpressure.update(self.consumer)
        self.rebalance.check_rejoin(now)
        self._recheck_retry_topics(now)

    def idle_for(self) -> float:
        """Seconds idle: 0 unless assigned, every partition at its end and nothing unfinished."""
        last = max(self.intake.last_activity, self.rebalance.last_assigned or 0.0)
        return idle_for(self.assignment, self.backpressure.paused, self.dead_letters.pending + self.parker.pending,
                        self.settler.outstanding, last, time.monotonic())

    def _subscribe(self) -> None:
        self.consumer.subscribe([*self.settings.topics, *self.parking.topics], on_assign=self.rebalance.on_assign,
                                on_revoke=self.rebalance.on_revoke, on_lost=self.rebalance.on_lost)

    def _check_retry_topics(self) -> None:
        self.parking.check_topics(self.consumer, self._assignment_strategy)

    def _recheck_retry_topics(self, now: float) -> None:
        if self.parking.recheck_due(now) and self.parking.check_topics(self.consumer, self._assignment_strategy,
                                                                       timeout_s=1.0, quiet=True):
            self._subscribe()  # the retry topic joins the subscription: a rebalance assigns its partitions

    def recreate_consumer(self, waited_s: float) -> None:
        """Replace the Kafka client (the rejoin watchdog's remedy; see :mod:`.rebalance`)."""
        log.warning("no partition assignment for %.0f s: recreating the Kafka consumer to rejoin group %s",
                    waited_s, self.settings.group_id, extra={"event": "consumer_recreated"})
        old = self.consumer
        threading.Thread(target=_close_quietly, args=(old,), name="old-consumer-close", daemon=True).start()
        self.consumer = self._consumer_factory(self._consumer_conf)
        self._subscribe()

    def shutdown(self) -> None:
        """Stop fetching, finish or abandon in-flight pushes within the shutdown timeout, commit, close.

        ``run`` ends with it. In-flight pushes go on while the ERP answers, up to
        ``ERP_SYNC_SHUTDOWN_TIMEOUT_SECONDS``; what is left is abandoned (read again by the next owner).
        """
        self.health.stopping = True
        self.stopping = True
        self._stop.set()  # no more fetching; buffered work goes on while the ERP answers
        deadline = time.monotonic() + self.settings.shutdown_timeout_seconds
        self.shutdown_deadline = deadline
        try:
            assignment = self.consumer.assignment()
            if assignment:
                self.consumer.pause(assignment)
        except KafkaException:
            pass
        self.wait_for_pushes(lambda: self.settler.outstanding == 0, deadline, block_s=0.1)
        self.in_flight.abandon()  # what is left waits for the next owner
        self.in_flight.settle_results()
        left = self.flush_dead_letters(max(0.0, min(5.0, deadline - time.monotonic())))
        self.in_flight.settle_results()
        self.final_commit(FINAL_COMMIT_TIMEOUT_S)
        unfinished = self.assignment.unfinished
        if unfinished or left:
            resume = ", ".join(f"{s}@{s.offsets.floor}" if s.offsets.floor is not None else
                               f"{s} (no committed offset)" for s in self.assignment if s.offsets.unfinished)
            running = self.in_flight.running
            queued = max(0, self.settler.outstanding - running)
            log.warning("shutdown: %s unfinished (%s given up, %d in a request, %d queued, %s unconfirmed); the "
                        "next owner reads them again from %s", plural(unfinished, "record"),
                        plural(self.stats.given_up, "push", "pushes"), running, queued, plural(left, "dead letter"),
                        resume or "the committed offsets",
                        extra={"event": "shutdown_abandoned", "unfinished": unfinished,
                               "given_up": self.stats.given_up, "in_request": running, "queued": queued,
                               "dead_letters_pending": left})
        self._close_consumer()
        self.in_flight.close()
        self.dead_letters.close(1.0)
        self.watermarks.close()
        done_before = (f", {self.stats.already_done} already done (finished by an earlier owner, not pushed again)"
                       if self.stats.already_done else "")
        log.info("stopped: %d pushed, %s, %d skipped, %d dead-lettered, %s, %d unfinished%s",
                 self.stats.pushed, plural(self.stats.duplicates, "duplicate"), self.stats.skipped,
                 self.stats.dead_lettered, plural(self.stats.commits, "commit"), unfinished, done_before,
                 extra={"event": "stopped", "already_done": self.stats.already_done})

    # ------------------------------------------------------------------ what the rebalance handling calls

    def wait_for_pushes(self, done: Callable[[], bool], deadline: float, block_s: float = 0.05) -> None:
        """Settle push results (and serve dead letters) until ``done()`` or ``deadline`` (monotonic s)."""
        while not done() and time.monotonic() < deadline:
            self.in_flight.settle_results(block_s=block_s)
            self.dead_letters.poll()
            self.parker.poll()
        self.in_flight.settle_results()

    def _close_consumer(self) -> None:
        """Leave the group; bounded when the broker does not answer (librdkafka's close is not)."""
        def close() -> None:
            try:
                self.consumer.close()  # leaves the group
            except Exception as exc:  # noqa: BLE001
                log.warning("consumer close failed: %s", exc)

        if not self._final_commit_unanswered:
            close()
            return
        closer = threading.Thread(target=close, name="consumer-close", daemon=True)
        closer.start()
        closer.join(CLOSE_TIMEOUT_S)
        if closer.is_alive():
            log.warning("the consumer did not leave the group within %.0f s (the broker does not answer): exiting "
                        "anyway; the group removes this member once its session times out (session.timeout.ms)",
                        CLOSE_TIMEOUT_S, extra={"event": "close_timeout"})

    def final_commit(self, timeout_s: float) -> bool:
        """Commit every owned partition at shutdown and wait up to ``timeout_s`` s for the answer.

        Returns:
            True when every commit sent was answered (acknowledged or refused) in time.
        """
        self.committer.commit(self.consumer, asynchronous=True)
        deadline = time.monotonic() + timeout_s
        while self.committer.awaiting and time.monotonic() < deadline:
            try:
                self.consumer.poll(0.1)  # serves on_commit; the partitions are paused
            except KafkaException:
                pass
        if self.committer.awaiting:
            self._final_commit_unanswered = True
            log.warning("shutdown: the last commit was not answered within %.0f s (the broker or the group "
                        "coordinator does not answer); the next owner resumes from the last acknowledged commit",
                        timeout_s, extra={"event": "commit_unanswered"})
            return False
        return True

    def commit_now(self, only: list[TP] | None) -> None:
        """Commit the finished offsets synchronously (of ``only``, or of every owned partition).

        Not while the broker is known not to answer (the last shutdown commit went unanswered, or the
        broker is down): a synchronous commit waits for the group coordinator without limit, so the
        commit is sent asynchronously instead and the partitions move on (their next owner reads
        again from the last acknowledged commit).
        """
        if self._final_commit_unanswered or not self.health.broker_up:
            self.committer.commit(self.consumer, asynchronous=True, only=only)
            return
        self.committer.commit(self.consumer, asynchronous=False, only=only)

    def flush_dead_letters(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` s for dead-letter confirmations; return how many remain."""
        deadline = time.monotonic() + timeout_s
        left = self.dead_letters.flush(timeout_s)
        return left + self.parker.flush(max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------ records

    def _poll(self) -> list[Message]:
        outstanding = self.assignment.unfinished or self.dead_letters.pending or self.parker.pending
        try:
            msgs: list[Message] = self.consumer.consume(num_messages=max(1, min(CONSUME_BATCH,
                                                                                self.backpressure.room())),
                                                        timeout=POLL_TIMEOUT_S if outstanding else 0.2)
        except KafkaException as exc:
            self._errors.warning(log, "consume", "consume failed: %s", exc, event="kafka_error", error_key="consume")
            msgs = []
        self.health.polled()
        return msgs

    def _fatal_error(self, err: KafkaError) -> None:
        self._fatal = f"{err.name()}: {err.str()}"
        self.stop("fatal Kafka error")

    def _on_kafka_error(self, err: KafkaError) -> None:
        """Librdkafka's ``error_cb``: broker reachability for /readyz, fatal errors stop the loop."""
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self.health.broker_up = err.code() != KafkaError._ALL_BROKERS_DOWN and self.health.broker_up
            self.health.reason = err.str()
        if err.fatal():
            self._fatal_error(err)
            return
        self._errors.warning(log, err.name(), "Kafka: %s: %s", err.name(), err.str(), event="kafka_error",
                             error_key=err.name())

    def _report(self) -> None:
        self.lag.update()
        self.metrics.dlq_pending.set(self.dead_letters.pending)
        parked = self.parking.by_route()
        now_ms = time.time() * 1000
        for endpoint in self.endpoints:
            count, oldest = parked.get(endpoint.name, (0, None))
            self.metrics.parked.labels(endpoint.name).set(count)
            self.metrics.parked_oldest_age.labels(endpoint.name).set(max(0.0, (now_ms - oldest) / 1000) if oldest
                                                                     else 0)


def _close_quietly(consumer: Any) -> None:
    try:
        consumer.close()
    except Exception:  # noqa: BLE001 - the old client is being discarded
        pass
