"""The poll loop: the only module that knows every stage.

decode (:mod:`.events`) → filter and transform (:mod:`.transform`) → push (:mod:`.erp`, on
worker threads, key-ordered by :mod:`.dispatch`) → verdict (:mod:`.verdict`) → commit
(:mod:`.offsets`), with dead letters (:mod:`.dead_letters`) for what can never be delivered.

Threads: the poll loop owns the Kafka consumer, the offset tracker and the dead-letter producer;
the pushes run as coroutines on one event-loop thread (:mod:`.dispatch`), only talk HTTP and report
back through a queue. Offsets are committed from one
place (:meth:`Pipeline._commit`): periodically, on revoke and at shutdown, and never past an
unfinished record.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message, TopicPartition

from .. import decode as events
from .. import transform
from ..decode import avro_v1
from ..erp.client import ErpClient
from ..erp.verdict import Outcome, Verdict
from ..errors import ErpRejectError, RecordError, ValidationError
from ..kafka import WatermarkWatcher
from ..metrics import Health, Metrics
from ..settings import Settings
from .dead_letters import DeadLetter, DeadLetterWriter
from .dispatch import KeyedDispatcher
from .offsets import OffsetTracker, PartitionOffsets
from .retry import RateLimiter, SharedBackoff

log = logging.getLogger(__name__)

TP = tuple[str, int]
POLL_TIMEOUT_S = 0.05
CONSUME_BATCH = 500
REVOKE_GRACE_MAX_S = 5.0
TRACKED_FACTOR = 10
"""Finished-but-uncommittable records held, per unit of ERP_SYNC_MAX_BUFFERED_RECORDS."""
BACKOFF_LOG_EVERY_S = 10.0
"""While the ERP keeps failing, one backoff log line per this many seconds (plus the first)."""


@dataclass(slots=True)
class PushTask:
    """One approved record on its way to the ERP (the worker's input)."""

    tp: TP
    offset: int
    generation: int
    offsets: PartitionOffsets
    msg: Message
    body: bytes
    idempotency_key: str
    instance_id: int


@dataclass(slots=True)
class PushResult:
    """A worker's report: the final verdict, or None when the task was abandoned."""

    task: PushTask
    verdict: Verdict | None
    attempts: int
    error: str = ""


@dataclass
class RunStats:
    """Counters of one run (also logged at exit)."""

    pushed: int = 0
    duplicates: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    commits: int = 0
    by_class: dict[str, int] = field(default_factory=dict)


class Pipeline:
    """One consumer process: subscribe, deliver, commit, until stopped.

    Args:
        settings: the configuration.
        metrics: where to count; a fresh :class:`Metrics` on the default registry if None.
        health: the probes' state; a fresh one if None.
    """

    def __init__(self, settings: Settings, metrics: Metrics | None = None, health: Health | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics(settings.topic)
        self.health = health or Health()
        self.stats = RunStats()
        self.tracker = OffsetTracker()
        self._stop = threading.Event()
        self._abandon = threading.Event()
        self._fatal: str | None = None
        self._results: queue.SimpleQueue[PushResult] = queue.SimpleQueue()
        self._generation: dict[TP, int] = {}
        self._outstanding: dict[TP, int] = {}
        self._eof: set[TP] = set()
        self._paused = False
        self._last_activity = time.monotonic()
        self._caught_up_at: dict[TP, float] = {}
        self._next_commit = 0.0
        self._shutdown_deadline: float | None = None
        self._last_backoff_log = -1e9
        self._retention_s: float | None = None
        self._next_lag = 0.0
        self._last_error_log: dict[str, float] = {}

        self.erp = ErpClient(settings, max_connections=settings.max_in_flight)
        self.backoff = SharedBackoff(settings.retry_backoff_initial_seconds, settings.retry_backoff_max_seconds,
                                     settings.retry_after_max_seconds, on_change=self.metrics.backoff.set)
        self.rate = (RateLimiter(settings.erp_max_requests_per_second)
                     if settings.erp_max_requests_per_second else None)
        self.dispatcher: KeyedDispatcher[PushTask] = KeyedDispatcher(settings.max_in_flight, self._push,
                                                                     self._push_crashed)
        self.dead_letters = DeadLetterWriter({**settings.producer_config(),
                                              "logger": logging.getLogger("librdkafka.producer")},
                                             settings.dead_letter_topic,
                                             on_confirmed=self._dead_letter_confirmed)
        conf = settings.consumer_config()
        conf["error_cb"] = self._on_kafka_error
        conf["on_commit"] = self._on_commit
        conf["logger"] = logging.getLogger("librdkafka.consumer")
        self._consumer_conf = conf
        self.consumer = Consumer(conf)
        self._unassigned_since: float | None = time.monotonic()  # rejoin watchdog, see _check_rejoin
        self.watermarks = WatermarkWatcher(settings, settings.lag_refresh_seconds)
        self._schema_lookup = (events.registry_lookup(settings.schema_registry_url)
                               if settings.schema_registry_url else None)

    # ------------------------------------------------------------------ lifecycle

    def stop(self, reason: str = "requested") -> None:
        """Ask the loop to stop (thread- and signal-safe)."""
        if not self._stop.is_set():
            log.info("stopping: %s", reason, extra={"event": "stopping"})
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the loop cleanly."""
        def handler(signum: int, _frame: FrameType | None) -> None:
            self.stop(signal.Signals(signum).name)
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self, exit_when_idle_s: float | None = None) -> int:
        """Consume until stopped (or idle, with ``exit_when_idle_s``); return the exit code.

        Returns:
            0 after a clean stop; 1 after a fatal Kafka error.
        """
        s = self.settings
        self.watermarks.start()
        self.dispatcher.start()
        self._subscribe()
        log.info("consuming %s as group %s; ERP %s; dead letters to %s; Avro reader %s", s.topic, s.group_id,
                 _redact(s.erp_url), s.dead_letter_topic,
                 "compiled" if avro_v1.COMPILED else "interpreted (slower: built without mypyc)",
                 extra={"event": "started"})
        self.health.started = True
        try:
            while not self._stop.is_set():
                self._iteration()
                if exit_when_idle_s is not None and self._idle_for() >= exit_when_idle_s:
                    log.info("caught up and idle for %.1f s: exiting", exit_when_idle_s, extra={"event": "idle_exit"})
                    break
        finally:
            self._shutdown()
        if self._fatal:
            log.error("exiting after a fatal error: %s", self._fatal, extra={"event": "fatal"})
            return 1
        return 0

    def _subscribe(self) -> None:
        self.consumer.subscribe([self.settings.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)

    def _check_rejoin(self) -> None:
        """Recreate the Kafka consumer when it has had no assignment for ``rejoin_timeout_seconds``.

        librdkafka can stay out of its group after a broker restart (its JoinGroup waits forever on a
        coordinator connection that never comes back; librdkafka issues #3082, #3396). Holding no
        partition, there is nothing to commit or lose: a fresh client joins the group again.
        """
        since = self._unassigned_since
        if since is None or self._stop.is_set():
            return
        waited = time.monotonic() - since
        if waited < self.settings.rejoin_timeout_seconds:
            return
        log.warning("no partition assignment for %.0f s: recreating the Kafka consumer to rejoin group %s",
                    waited, self.settings.group_id, extra={"event": "consumer_recreated"})
        old = self.consumer
        threading.Thread(target=_close_quietly, args=(old,), name="old-consumer-close", daemon=True).start()
        self.consumer = Consumer(self._consumer_conf)
        self._unassigned_since = time.monotonic()
        self._subscribe()

    def _iteration(self) -> None:
        unfinished = self.tracker.unfinished
        timeout = POLL_TIMEOUT_S if unfinished or self.dead_letters.pending else 0.2
        room = self.settings.max_buffered_records - unfinished
        try:
            msgs = self.consumer.consume(num_messages=max(1, min(CONSUME_BATCH, room)), timeout=timeout)
        except KafkaException as exc:
            self._log_throttled("consume", "consume failed: %s", exc)
            msgs = []
        self.health.polled()
        for msg in msgs:
            self._handle(msg)
        self._drain_results()
        self.dead_letters.poll()
        now = time.monotonic()
        if now >= self._next_commit:
            self._commit(asynchronous=True)
            self._next_commit = now + self.settings.commit_interval_seconds
        if now >= self._next_lag:
            self._update_lag()
            self._next_lag = now + min(1.0, self.settings.lag_refresh_seconds)
        self._apply_backpressure()
        self._check_rejoin()

    def _shutdown(self) -> None:
        """Stop fetching, finish or abandon in-flight pushes within the shutdown timeout, commit, close."""
        self.health.stopping = True
        self._stop.set()  # no more fetching; buffered work goes on while the ERP answers
        deadline = time.monotonic() + self.settings.shutdown_timeout_seconds
        self._shutdown_deadline = deadline
        try:
            assignment = self.consumer.assignment()
            if assignment:
                self.consumer.pause(assignment)
        except KafkaException:
            pass
        while sum(self._outstanding.values()) and time.monotonic() < deadline:
            self._drain_results(block_s=0.1)
            self.dead_letters.poll()
        self._abandon.set()  # what is left waits for the next owner
        self._drain_results()
        left = self.dead_letters.flush(max(0.0, min(5.0, deadline - time.monotonic())))
        self._drain_results()
        self._commit(asynchronous=False)
        abandoned = sum(self._outstanding.values())
        if abandoned or left:
            log.warning("shutdown: %d pushes and %d dead letters unfinished; they will be re-read",
                        abandoned, left, extra={"event": "shutdown_abandoned"})
        try:
            self.consumer.close()  # leaves the group
        except Exception as exc:  # noqa: BLE001
            log.warning("consumer close failed: %s", exc)
        try:
            self.dispatcher.call(self.erp.aclose(), timeout_s=2.0)
        except Exception:  # noqa: BLE001 - hung requests: the process exits anyway
            pass
        self.dispatcher.shutdown(wait=False, timeout_s=1.0)
        self.erp.close()
        self.dead_letters.close(1.0)
        self.watermarks.close()
        log.info("stopped: %d pushed, %d duplicates, %d skipped, %d dead-lettered, %d commits",
                 self.stats.pushed, self.stats.duplicates, self.stats.skipped, self.stats.dead_lettered,
                 self.stats.commits, extra={"event": "stopped"})

    # ------------------------------------------------------------------ records

    def _handle(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            self._handle_event(msg, err)
            return
        tp = (str(msg.topic()), int(msg.partition() or 0))
        offsets = self.tracker.get(*tp)
        if offsets is None:
            return  # a partition we no longer own: its new owner reads it
        offset = int(msg.offset() or 0)
        ts_type, ts = msg.timestamp()
        if not offsets.track(offset, ts if ts_type else int(time.time() * 1000)):
            log.debug("ignoring re-fetched offset %d of %s", offset, tp)
            return
        self._eof.discard(tp)
        self._last_activity = time.monotonic()
        self.health.broker_up = True
        try:
            event = events.decode_approved(msg.value(), max_bytes=self.settings.max_value_bytes,
                                           writer_schema_lookup=self._schema_lookup)
            if event is None:  # valid, not APPROVED
                offsets.done(offset)
                self.stats.skipped += 1
                self.metrics.skipped.inc()
                return
            body, key = transform.erp_request(event)
        except RecordError as exc:
            self._dead_letter(msg, exc, attempts=0)
            return
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the stream: dead-letter it
            log.exception("unexpected error while transforming", extra=_msg_fields(msg, event="transform_bug"))
            self._dead_letter(msg, ValidationError("Unexpected", f"{type(exc).__name__}: {exc}"), attempts=0)
            return
        ordering_key = msg.key() or str(event["instance_id"]).encode()
        task = PushTask(tp, offset, self._generation.get(tp, 0), offsets, msg, body, key, event["instance_id"])
        self._outstanding[tp] = self._outstanding.get(tp, 0) + 1
        self.dispatcher.submit((tp[0], ordering_key), task)

    def _handle_event(self, msg: Message, err: KafkaError) -> None:
        """Errors and events librdkafka reports through poll: never records."""
        if err.code() == KafkaError._PARTITION_EOF:
            tp = (str(msg.topic()), int(msg.partition() or 0))
            offsets = self.tracker.get(*tp)
            if offsets is not None:
                offsets.advance_to(int(msg.offset() or 0))
                self._eof.add(tp)
                self._caught_up_at[tp] = time.monotonic()
            self.health.broker_up = True
            return
        if err.fatal():
            self._fatal = f"{err.name()}: {err.str()}"
            self.stop("fatal Kafka error")
            return
        self._log_throttled(err.name(), "Kafka reports %s: %s (topic %s, partition %s)", err.name(), err.str(),
                            msg.topic(), msg.partition())

    def _dead_letter(self, msg: Message, error: RecordError, attempts: int) -> None:
        tp = (str(msg.topic()), int(msg.partition() or 0))
        owner = self.tracker.get(*tp)
        offset = int(msg.offset() or 0)
        log.warning("dead-lettering record: %s %s", error.error_class, error.message,
                    extra=_msg_fields(msg, event="dead_letter", error_class=error.error_class,
                                      error_code=error.code,
                                      request_id=getattr(error, "request_id", None)))

        def done(_letter: DeadLetter) -> None:
            if owner is not None and self.tracker.get(*tp) is owner:  # still ours: same assignment
                owner.done(offset)

        self.dead_letters.send(msg, error, attempts, done, cancelled=lambda: self.tracker.get(*tp) is not owner)
        self.metrics.dlq_pending.set(self.dead_letters.pending)

    def _dead_letter_confirmed(self, letter: DeadLetter) -> None:
        self.stats.dead_lettered += 1
        self.stats.by_class[letter.error.error_class] = self.stats.by_class.get(letter.error.error_class, 0) + 1
        self.metrics.dead_letter(letter.error.error_class, letter.error.code)
        self.metrics.dlq_pending.set(self.dead_letters.pending)

    # ------------------------------------------------------------------ workers

    def _cancelled(self, task: PushTask) -> bool:
        """Whether a push must be given up.

        Yes when its partition is gone, when the shutdown deadline passed, or when stopping while
        the ERP fails. At shutdown, buffered records are still delivered while the ERP answers, so
        that few finished records sit behind an abandoned one (each would be pushed again).
        """
        if self._generation.get(task.tp, 0) != task.generation or self._abandon.is_set():
            return True
        return self._stop.is_set() and self.backoff.failures > 0

    async def _push(self, task: PushTask) -> None:
        """On the push event loop: push one record until accepted or rejected, or abandon it."""
        attempts = 0
        cancelled = lambda: self._cancelled(task)  # noqa: E731
        while True:
            permit = await self.backoff.acquire_async(cancelled)
            if permit is None or (self.rate is not None and not await self.rate.acquire_async(cancelled)):
                if permit is not None:
                    self.backoff.release(permit)
                self._results.put(PushResult(task, None, attempts))
                return
            attempts += 1
            started = time.monotonic()
            result = await self.erp.post_async(task.body, task.idempotency_key)
            self.metrics.erp_request(result.outcome.value, result.code, time.monotonic() - started)
            if result.outcome is not Outcome.RETRY:
                cleared = self.backoff.success(permit)
                if cleared:
                    log.info("ERP answers again after %d failed attempts in a row (%.1f s): pushes resume",
                             cleared, time.monotonic() - self.backoff.failing_since,
                             extra={"event": "erp_recovered", "failures": cleared})
                self._results.put(PushResult(task, result, attempts))
                return
            delay = self.backoff.failure(permit, result.retry_after_s)
            now = time.monotonic()
            first = self.backoff.failures == 1
            if delay is not None and (first or now - self._last_backoff_log >= BACKOFF_LOG_EVERY_S):
                self._last_backoff_log = now
                log.warning("ERP push failed, will retry (%s: %s); all pushes back off %.1f s (failure %d in a row)",
                            result.code, result.message, delay, self.backoff.failures,
                            extra={"event": "erp_backoff", "erp_code": result.code, "request_id": result.request_id,
                                   "instance_id": task.instance_id, "backoff_s": round(delay, 3)})

    def _push_crashed(self, task: PushTask, exc: BaseException) -> None:
        log.error("push worker failed: %r", exc, exc_info=exc, extra={"event": "worker_bug"})
        self._results.put(PushResult(task, None, 0, error=repr(exc)))

    def _drain_results(self, block_s: float = 0.0) -> None:
        try:
            result = self._results.get(timeout=block_s) if block_s else self._results.get_nowait()
        except queue.Empty:
            return
        while True:
            self._apply(result)
            try:
                result = self._results.get_nowait()
            except queue.Empty:
                return

    def _apply(self, result: PushResult) -> None:
        task = result.task
        self._outstanding[task.tp] = self._outstanding.get(task.tp, 1) - 1
        verdict = result.verdict
        if verdict is None:
            return  # abandoned: not committed, re-read by whoever owns the partition next
        owned = self.tracker.get(*task.tp) is task.offsets  # same assignment (not revoked since)
        if verdict.outcome is Outcome.ACCEPTED:
            self.metrics.last_accepted.set(time.time())
            if verdict.duplicate:
                self.stats.duplicates += 1
                self.metrics.duplicate.inc()
            else:
                self.stats.pushed += 1
                self.metrics.pushed.inc()
            if owned:
                task.offsets.done(task.offset)
            return
        # reject: the record is at fault
        if owned:
            self._dead_letter(task.msg, ErpRejectError(verdict.code, verdict.message or verdict.code,
                                                       verdict.request_id), attempts=result.attempts)

    # ------------------------------------------------------------------ offsets

    def _commit(self, asynchronous: bool, only: list[TP] | None = None) -> None:
        """Commit every partition's contiguous finished offset (or those in ``only``)."""
        for tp, offsets in self.tracker.partitions.items():
            if offsets.unfinished == 0 and (only is None or tp in only):
                try:
                    position = self.consumer.position([TopicPartition(*tp)])[0].offset
                except KafkaException:
                    position = OFFSET_INVALID
                if position >= 0:
                    offsets.advance_to(position)
        pending = {tp: off for tp, off in self.tracker.committable().items() if only is None or tp in only}
        if not pending:
            return
        tps = [TopicPartition(t, p, off) for (t, p), off in pending.items()]
        try:
            if asynchronous:
                self.consumer.commit(offsets=tps, asynchronous=True)
            else:
                self._committed(self.consumer.commit(offsets=tps, asynchronous=False))
        except KafkaException as exc:
            self.metrics.commit_error.inc()
            self._log_throttled("commit", "commit failed: %s", exc)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None:
            self.metrics.commit_error.inc()
            self._log_throttled("commit", "commit failed: %s", err)
            return
        self._committed(partitions)

    def _committed(self, partitions: list[TopicPartition]) -> None:
        ok = False
        for tp in partitions:
            if tp.error is not None:
                self.metrics.commit_error.inc()
                self._log_throttled("commit", "commit of %s [%d] failed: %s", tp.topic, tp.partition, tp.error)
                continue
            offsets = self.tracker.get(tp.topic, tp.partition)
            if offsets is not None:
                offsets.mark_committed(tp.offset)
            ok = True
        if ok:
            self.stats.commits += 1
            self.metrics.commit_ok.inc()

    # ------------------------------------------------------------------ rebalance

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is not self.consumer:
            return  # a discarded client (see _check_rejoin) closing on another thread
        self.metrics.rebalances.labels("assign").inc()
        self._unassigned_since = None
        self.health.joined = True
        committed: dict[TP, int | None] = {}
        try:
            for tp in consumer.committed(partitions, timeout=10):
                committed[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else None
        except KafkaException as exc:
            log.warning("cannot read committed offsets at assignment: %s", exc)
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._generation[key] = self._generation.get(key, 0) + 1
            self.tracker.assign(tp.topic, tp.partition, committed.get(key))
            self._caught_up_at.pop(key, None)
        self._after_assignment_change()
        self._last_activity = time.monotonic()
        log.info("assigned %s", _tps(partitions), extra={"event": "assigned"})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is not self.consumer:
            return  # a discarded client (see _check_rejoin) closing on another thread
        self.metrics.rebalances.labels("revoke").inc()
        self._resume_before_release(consumer, partitions)
        revoked = [(tp.topic, tp.partition) for tp in partitions]
        for tp in revoked:  # cancel queued and retrying work of these partitions
            self._generation[tp] = self._generation.get(tp, 0) + 1
        grace = min(REVOKE_GRACE_MAX_S, self.settings.shutdown_timeout_seconds)
        deadline = time.monotonic() + grace
        if self._shutdown_deadline is not None:  # closing: the shutdown bound wins
            deadline = min(deadline, self._shutdown_deadline)
        # In-flight requests finish (their verdicts are still ours to commit), within the grace.
        while any(self._outstanding.get(tp, 0) for tp in revoked) and time.monotonic() < deadline:
            self._drain_results(block_s=0.05)
            self.dead_letters.poll()
        self._drain_results()
        self.dead_letters.flush(max(0.0, deadline - time.monotonic()))  # confirmed letters commit now
        self._commit(asynchronous=False, only=revoked)
        self._drop(revoked)
        self._unassigned_since = time.monotonic()
        log.info("revoked %s", _tps(partitions), extra={"event": "revoked"})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is not self.consumer:
            return  # a discarded client (see _check_rejoin) closing on another thread
        self.metrics.rebalances.labels("lost").inc()
        self._resume_before_release(consumer, partitions)
        lost = [(tp.topic, tp.partition) for tp in partitions]
        for tp in lost:
            self._generation[tp] = self._generation.get(tp, 0) + 1
        self._drop(lost)  # no commit: another member may own them already
        self._unassigned_since = time.monotonic()
        log.warning("partitions lost (session timed out): %s", _tps(partitions), extra={"event": "lost"})

    def _resume_before_release(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Clear the pause flag on release: librdkafka keeps it across re-assignment."""
        if self._paused and not self._stop.is_set():
            try:
                consumer.resume(partitions)
            except KafkaException as exc:
                self._log_throttled("pause", "resume on release failed: %s", exc)

    def _drop(self, tps: list[TP]) -> None:
        for tp in tps:
            self.tracker.revoke(*tp)
            self._eof.discard(tp)
            self._caught_up_at.pop(tp, None)
            self.metrics.drop_partition(tp[1])
        self._after_assignment_change()

    def _after_assignment_change(self) -> None:
        parts = list(self.tracker.partitions)
        self.health.assigned = len(parts)
        self.health.broker_up = True
        self.metrics.assigned.set(len(parts))
        self.watermarks.set_partitions(parts)
        self._paused = False
        self.metrics.paused.set(0)

    # ------------------------------------------------------------------ flow control, lag, idle

    def _apply_backpressure(self) -> None:
        """Pause at ``max_buffered_records`` unfinished records, resume at half of it.

        Finished records held behind an unfinished one (a key stuck in retries) are bounded too,
        at ``TRACKED_FACTOR`` times the limit, so memory stays bounded whatever is stuck.
        """
        limit = self.settings.max_buffered_records
        load = max(self.tracker.unfinished, self.tracker.tracked // TRACKED_FACTOR)
        if not self._paused and load >= limit:
            self._set_paused(True)
        elif self._paused and load <= limit // 2:
            self._set_paused(False)

    def _set_paused(self, paused: bool) -> None:
        try:
            assignment = self.consumer.assignment()
            if paused:
                self.consumer.pause(assignment)
            else:
                self.consumer.resume(assignment)
        except KafkaException as exc:
            self._log_throttled("pause", "pause/resume failed: %s", exc)
            return
        self._paused = paused
        self.metrics.paused.set(len(assignment) if paused else 0)
        log.info("%s %d partitions (%d records unfinished)", "paused" if paused else "resumed", len(assignment),
                 self.tracker.unfinished, extra={"event": "paused" if paused else "resumed"})

    def _update_lag(self) -> None:
        now_ms = time.time() * 1000
        high = self.watermarks.high
        for tp, offsets in self.tracker.partitions.items():
            hw = high.get(tp)
            committed = offsets.committed
            lag = max(0, hw - (committed or 0)) if hw is not None else 0
            oldest = offsets.oldest_unfinished_timestamp_ms()
            if oldest is not None:
                lag_s = max(0.0, (now_ms - oldest) / 1000)
            elif lag > 0 and tp in self._caught_up_at:
                lag_s = time.monotonic() - self._caught_up_at[tp]
            else:
                lag_s = 0.0
            self.metrics.set_lag(tp[1], lag, lag_s)
        self.metrics.dlq_pending.set(self.dead_letters.pending)
        self.metrics.in_flight.set(self.dispatcher.running)
        if self.watermarks.ok:
            self.health.broker_up = True
        retention = self.watermarks.retention_s
        if retention is not None and retention != self._retention_s:
            self._retention_s = retention
            self.metrics.retention.labels(self.settings.topic).set(retention)

    def _idle_for(self) -> float:
        """Seconds idle: 0 unless assigned, every partition at its end and nothing unfinished."""
        parts = self.tracker.partitions
        if not parts or self._paused or self.tracker.unfinished or self.dead_letters.pending:
            return 0.0
        if any(tp not in self._eof for tp in parts) or any(self._outstanding.values()):
            return 0.0
        return time.monotonic() - self._last_activity

    # ------------------------------------------------------------------ Kafka errors

    def _on_kafka_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self.health.broker_up = err.code() != KafkaError._ALL_BROKERS_DOWN and self.health.broker_up
            self.health.reason = err.str()
        if err.fatal():
            self._fatal = f"{err.name()}: {err.str()}"
            self.stop("fatal Kafka error")
            return
        self._log_throttled(err.name(), "Kafka: %s: %s", err.name(), err.str())

    def _log_throttled(self, key: str, fmt: str, *args: Any, every_s: float = 30.0) -> None:
        now = time.monotonic()
        if now - self._last_error_log.get(key, -1e9) >= every_s:
            self._last_error_log[key] = now
            log.warning(fmt, *args, extra={"event": "kafka_error", "error_key": key})


def _close_quietly(consumer: Consumer) -> None:
    try:
        consumer.close()
    except Exception:  # noqa: BLE001 - the old client is being discarded
        pass


def _tps(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "(none)"


def _msg_fields(msg: Message, **extra: Any) -> dict[str, Any]:
    return {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(), **extra}


def _redact(url: str | None) -> str | None:
    from ..settings import redact_url
    return redact_url(url)
