"""Every record's fate: a small enum decided once, applied in one place (:meth:`Settler.settle`).

=================  ===============================================  ======================
disposition        when                                             offset
=================  ===============================================  ======================
``ACCEPTED``       the ERP accepted the push                        finished
``DUPLICATE``      the ERP answered a code of the duplicate list    finished
``SKIPPED``        status not ``APPROVED`` (spec "推送条件")          finished
``ALREADY_DONE``   an earlier owner finished it (the commit's       finished, not decoded
                   metadata says so): after a rebalance or restart
``DEAD_LETTER``    undecodable, invalid, or rejected by the ERP     finished once the broker
                                                                    confirmed the dead letter
``RETRY``          the ERP kept answering *retry* and the push      unfinished: read again
                   was given up (stopping while the ERP fails)      by the next owner
``ABANDONED``      given up without an answer (partition revoked,   unfinished: read again
                   shutdown deadline, a push worker bug)            by the next owner
=================  ===============================================  ======================

Whatever the disposition, :meth:`Settler.settle` applies it the same way: offsets, counters
(:class:`RunStats` and the Prometheus metrics), the log line and the dead letter. Completions of a
partition that was released in the meantime change no offset (its next owner reads it again), and
an ERP reject of such a record is not dead-lettered (its next owner pushes it again).
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, field

from confluent_kafka import Message

from ..erp.verdict import Outcome
from ..errors import ErpRejectError, RecordError
from ..metrics import Metrics
from .dead_letters import DeadLetter, DeadLetterWriter
from .partitions import PartitionState
from .push import PushResult

log = logging.getLogger(__name__)


class Disposition(enum.Enum):
    """What happens to a record (see the module's table)."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    SKIPPED = "skipped"
    ALREADY_DONE = "already_done"
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
    """

    partition: PartitionState
    msg: Message
    offset: int
    body: bytes = b""
    idempotency_key: str = ""
    instance_id: int | None = None


def disposition_of(result: PushResult) -> tuple[Disposition, RecordError | None]:
    """The disposition of a finished push, and the dead letter's error for a reject (decision 6)."""
    verdict = result.verdict
    if verdict is None:
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
    by_class: dict[str, int] = field(default_factory=dict)


class Settler:
    """Applies dispositions. Poll-loop thread only.

    Args:
        metrics: where to count.
        dead_letters: the dead-letter writer (its confirmations are counted here).
        stats: the run's counters.
    """

    def __init__(self, metrics: Metrics, dead_letters: DeadLetterWriter, stats: RunStats) -> None:
        self.metrics = metrics
        self.dead_letters = dead_letters
        self.stats = stats
        self.outstanding = 0
        """Pushes submitted and not settled yet, over every partition (owned or not)."""
        dead_letters.on_confirmed = self._confirmed

    def submitted(self, record: Record) -> None:
        """A record was handed to the push routine: it is outstanding until settled."""
        record.partition.outstanding += 1
        self.outstanding += 1

    def settle(self, record: Record, disposition: Disposition, *, error: RecordError | None = None,
               attempts: int = 0, pushed: bool = False, status: str = "") -> None:
        """Apply ``disposition`` to ``record``.

        Args:
            record: the record.
            disposition: its fate.
            error: why, for ``DEAD_LETTER``.
            status: the writer's status symbol, for ``SKIPPED`` (counted by status).
            attempts: ERP requests made for it.
            pushed: it came back from the push routine (it was outstanding).
        """
        part = record.partition
        if pushed:
            part.outstanding -= 1
            self.outstanding -= 1
        if disposition is Disposition.ACCEPTED or disposition is Disposition.DUPLICATE:
            self.metrics.last_accepted.set(time.time())
            if disposition is Disposition.DUPLICATE:
                self.stats.duplicates += 1
                self.metrics.duplicate.inc()
            else:
                self.stats.pushed += 1
                self.metrics.pushed.inc()
            part.finish(record.offset)
        elif disposition is Disposition.SKIPPED:
            self.stats.skipped += 1
            self.metrics.skip(status)
            part.finish(record.offset)
        elif disposition is Disposition.ALREADY_DONE:
            self.stats.already_done += 1
            self.metrics.already_done.inc()
            part.finish(record.offset)
        elif disposition is Disposition.DEAD_LETTER:
            assert error is not None, "a dead letter needs its error"
            if not part.released:
                self._dead_letter(record, error, attempts)
        else:  # RETRY, ABANDONED: unfinished, read again by whoever owns the partition next
            self.stats.given_up += 1

    def _dead_letter(self, record: Record, error: RecordError, attempts: int) -> None:
        msg, part, offset = record.msg, record.partition, record.offset
        log.warning("dead-lettering record: %s %s", error.error_class, error.message,
                    extra={"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
                           "event": "dead_letter", "error_class": error.error_class, "error_code": error.code,
                           "request_id": getattr(error, "request_id", None)})

        def done(_letter: DeadLetter) -> None:
            part.finish(offset)  # a no-op once the partition was released

        self.dead_letters.send(msg, error, attempts, done, cancelled=lambda: part.released)
        self.metrics.dlq_pending.set(self.dead_letters.pending)

    def _confirmed(self, letter: DeadLetter) -> None:
        self.stats.dead_lettered += 1
        self.stats.by_class[letter.error.error_class] = self.stats.by_class.get(letter.error.error_class, 0) + 1
        self.metrics.dead_letter(letter.error.error_class, letter.error.code)
        if letter.value_omitted is not None:
            self.metrics.dead_letter_values_omitted.inc()
        self.metrics.dlq_pending.set(self.dead_letters.pending)
