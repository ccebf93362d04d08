"""Every record's fate: a small enum decided once, applied in one place (:meth:`Settler.settle`).

=================  ===============================================  ======================
disposition        when                                             offset
=================  ===============================================  ======================
``ACCEPTED``       the ERP accepted the push                        finished
``DUPLICATE``      the ERP answered a code of the duplicate list    finished
``SKIPPED``        status not ``APPROVED`` (spec "推送条件")          finished
``ALREADY_DONE``   an earlier owner finished it (the commit's       finished, not decoded
                   metadata says so): after a rebalance or restart
``PARKED``         its ERP cannot take it now (:mod:`.parking`):    finished once the broker
                   written to the retry topic                       confirmed the write
``DEAD_LETTER``    undecodable, invalid, no route, rejected by the  finished once the broker
                   ERP, or parked past its retry deadline           confirmed the dead letter
``RETRY``          the ERP kept answering *retry* and the push      unfinished: read again
                   was given up (stopping while the ERP fails)      by the next owner
``ABANDONED``      given up without an answer (partition revoked,   unfinished: read again
                   shutdown deadline, a push worker bug)            by the next owner
=================  ===============================================  ======================

Whatever the disposition, :meth:`Settler.settle` applies it the same way: offsets, counters
(:class:`RunStats` and the Prometheus metrics), the log line, the dead letter or the parked record,
and what is known to be parked. Completions of a partition that was released in the meantime
change no offset (its next owner reads it again), and an ERP reject of such a record is not
dead-lettered (its next owner pushes it again).
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from confluent_kafka import Message

from ..erp.verdict import Outcome
from ..errors import ErpRejectError, RecordError
from ..logs import Throttle
from ..metrics import Metrics
from .dead_letters import DeadLetter, DeadLetterWriter, dead_letter_headers_of_parked, parked_headers
from .partitions import PartitionState
from .push import EXPIRED, PARK, PushResult

if TYPE_CHECKING:
    from .endpoints import Endpoint
    from .parking import Parking

log = logging.getLogger(__name__)

PARK_LOG_EVERY_S = 10.0


class Disposition(enum.Enum):
    """What happens to a record (see the module's table)."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    SKIPPED = "skipped"
    ALREADY_DONE = "already_done"
    PARKED = "parked"
    DEAD_LETTER = "dead_letter"
    RETRY = "retry"
    ABANDONED = "abandoned"


@dataclass(slots=True)
class Record:
    """A fetched record of an owned partition, and once it is approved, what is pushed.

    Attributes:
        partition: its partition's state (the one of the assignment it was fetched under).
        msg: the Kafka message.
        offset: its offset.
        body: the ERP body (approved records).
        idempotency_key: ``<FlowCode>-<InstanceId>`` (approved records).
        instance_id: the InstanceId (approved records).
        key: what its order is kept by: the Kafka key, or the instance id when there is none.
        endpoint: its route's endpoint (approved records).
        parked_from: for a record read from a retry topic, its source topic; None for a source record.
        first_failure_ms: a parked record's first failure (Unix ms), from its headers.
        attempts_before: ERP attempts made before it was parked (from its headers).
        park_reason: why it is parked, when it is.
    """

    partition: PartitionState
    msg: Message
    offset: int
    body: bytes = b""
    idempotency_key: str = ""
    instance_id: int | None = None
    key: bytes = b""
    endpoint: Endpoint | None = None
    parked_from: str | None = None
    first_failure_ms: int = 0
    attempts_before: int = 0
    park_reason: str = ""


def disposition_of(result: PushResult) -> tuple[Disposition, RecordError | None]:
    """The disposition of a finished push, and its dead letter's error (decision 6; the retry deadline)."""
    verdict = result.verdict
    if verdict is None:
        if result.ended == PARK:
            last = result.last_retry
            return Disposition.PARKED, (ErpRejectError(last.code, last.message or last.code, last.request_id)
                                        if last is not None else None)
        if result.ended == EXPIRED:
            last = result.last_retry
            answer = f"{last.code}: {last.message or last.code}" if last is not None else "no answer"
            return Disposition.DEAD_LETTER, ErpRejectError(
                "RetryDeadlineExceeded", f"still not delivered past its retry deadline; last answer {answer}",
                last.request_id if last is not None else None)
        return (Disposition.RETRY if result.last_retry is not None else Disposition.ABANDONED), None
    if verdict.outcome is Outcome.ACCEPTED:
        return (Disposition.DUPLICATE if verdict.duplicate else Disposition.ACCEPTED), None
    return Disposition.DEAD_LETTER, ErpRejectError(verdict.code, verdict.message or verdict.code, verdict.request_id)


@dataclass
class RunStats:
    """Counters of one run (also logged at exit)."""

    pushed: int = 0
    duplicates: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    commits: int = 0
    given_up: int = 0
    already_done: int = 0
    parked: int = 0
    by_class: dict[str, int] = field(default_factory=dict)


class Settler:
    """Applies dispositions. Poll-loop thread only.

    Args:
        metrics: where to count.
        dead_letters: the dead-letter writer (its confirmations are counted here).
        stats: the run's counters.
        parker: the writer of parked records (the retry topics); None when parking is off everywhere.
        parking: what is parked (None: parking off).
    """

    def __init__(self, metrics: Metrics, dead_letters: DeadLetterWriter, stats: RunStats,
                 parker: DeadLetterWriter | None = None, parking: Parking | None = None) -> None:
        self.metrics = metrics
        self.dead_letters = dead_letters
        self.stats = stats
        self.parker = parker
        self.parking = parking
        self.outstanding = 0
        """Pushes submitted and not settled yet, over every partition (owned or not)."""
        self._park_log = Throttle(PARK_LOG_EVERY_S)
        dead_letters.on_confirmed = self._confirmed

    def submitted(self, record: Record) -> None:
        """A record was handed to the push routine: it is outstanding until settled."""
        record.partition.outstanding += 1
        self.outstanding += 1

    def settle(self, record: Record, disposition: Disposition, *, error: RecordError | None = None,
               attempts: int = 0, pushed: bool = False, first_failure_ms: int | None = None,
               status: str = "") -> None:
        """Apply ``disposition`` to ``record``.

        Args:
            record: the record.
            disposition: its fate.
            error: why, for ``DEAD_LETTER``; the last *retry* answer for ``PARKED``.
            attempts: ERP requests made for it (this time).
            status: the writer's status symbol, for ``SKIPPED`` (counted by status).
            pushed: it came back from the push routine (it was outstanding).
            first_failure_ms: when it first failed (``PARKED``), Unix ms.
        """
        part = record.partition
        topic = part.topic
        if pushed:
            part.outstanding -= 1
            self.outstanding -= 1
        if disposition is Disposition.ACCEPTED or disposition is Disposition.DUPLICATE:
            self.metrics.last_accepted.set(time.time())
            if disposition is Disposition.DUPLICATE:
                self.stats.duplicates += 1
                self.metrics.outcome(topic, "duplicate").inc()
            else:
                self.stats.pushed += 1
                self.metrics.outcome(topic, "pushed").inc()
            part.finish(record.offset)
            self._unpark(record)
        elif disposition is Disposition.SKIPPED or disposition is Disposition.ALREADY_DONE:
            if disposition is Disposition.SKIPPED:
                self.stats.skipped += 1
                self.metrics.skip(topic, status)
            else:
                self.stats.already_done += 1
                self.metrics.outcome(topic, disposition.value).inc()
            part.finish(record.offset)
            self._unpark(record)
        elif disposition is Disposition.PARKED:
            if not part.released:
                self._park(record, error, attempts, first_failure_ms or int(time.time() * 1000))
        elif disposition is Disposition.DEAD_LETTER:
            assert error is not None, "a dead letter needs its error"
            if not part.released:
                self._dead_letter(record, error, attempts)
                self._unpark(record)
        else:  # RETRY, ABANDONED: unfinished, read again by whoever owns the partition next
            self.stats.given_up += 1

    def _unpark(self, record: Record) -> None:
        """A record read from a retry topic is done: its key and route have one parked record less."""
        if record.parked_from is None or self.parking is None:
            return
        index = self.parking.index_of(record.partition)
        if index is not None and record.endpoint is not None:
            index.remove(record.key, record.endpoint.name, record.first_failure_ms)

    def _park(self, record: Record, last: RecordError | None, attempts: int, first_failure_ms: int) -> None:
        msg, part, offset = record.msg, record.partition, record.offset
        assert self.parker is not None and self.parking is not None and record.endpoint is not None
        route = record.endpoint.name
        held = self._park_log.allow(route)
        if held is not None:
            log.warning("parking records of route %s in %s (%s)%s", route, self.parking.retry_of[part.topic],
                        record.park_reason or f"answered retry for {record.endpoint.park_after_s:.0f} s",
                        f"; {held} more parked since the last line" if held else "",
                        extra={"event": "parked", "route": route, "topic": msg.topic(), "partition": msg.partition(),
                               "offset": offset, "instance_id": record.instance_id})

        def done(_letter: DeadLetter) -> None:
            part.finish(offset)  # a no-op once the partition was released
            self.stats.parked += 1
            self.metrics.outcome(part.topic, "parked").inc()

        self.parker.send(msg, last or ErpRejectError("Parked", record.park_reason or "parked"), attempts, done,
                         cancelled=lambda: part.released,
                         headers=parked_headers(msg, route, attempts, first_failure_ms, last),
                         topic=self.parking.retry_of[part.topic], partition=part.partition)

    def _dead_letter(self, record: Record, error: RecordError, attempts: int) -> None:
        msg, part, offset = record.msg, record.partition, record.offset
        log.warning("dead-lettering record: %s %s", error.error_class, error.message,
                    extra={"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
                           "event": "dead_letter", "error_class": error.error_class, "error_code": error.code,
                           "request_id": getattr(error, "request_id", None),
                           "route": record.endpoint.name if record.endpoint is not None else None})

        def done(_letter: DeadLetter) -> None:
            part.finish(offset)  # a no-op once the partition was released

        total = record.attempts_before + attempts
        headers = dead_letter_headers_of_parked(msg, error, total) if record.parked_from is not None else None
        self.dead_letters.send(msg, error, total, done, cancelled=lambda: part.released, headers=headers)
        self.metrics.dlq_pending.set(self.dead_letters.pending)

    def _confirmed(self, letter: DeadLetter) -> None:
        self.stats.dead_lettered += 1
        self.stats.by_class[letter.error.error_class] = self.stats.by_class.get(letter.error.error_class, 0) + 1
        self.metrics.dead_letter(letter.error.error_class, letter.error.code)
        if letter.value_omitted is not None:
            self.metrics.dead_letter_values_omitted.inc()
        self.metrics.dlq_pending.set(self.dead_letters.pending)
