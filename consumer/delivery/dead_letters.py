"""The dead-letter topic: records that can never be delivered, with the reason in headers.

A dead letter keeps the original key and value bytes unchanged and the original headers, and adds
(issue "main job", dead letters):

``erp_sync.original.topic`` / ``.partition`` / ``.offset`` / ``.timestamp`` (ms),
``erp_sync.error.class`` (``decode`` | ``validation`` | ``erp``), ``erp_sync.error.code``,
``erp_sync.error.message``, ``erp_sync.attempts``, when the ERP gave one
``erp_sync.erp.request_id``, and once ``erp-sync dlq replay`` wrote it back ``erp_sync.replays``.
Header values are UTF-8 text. This module is the one codec of those headers: the consumer writes
them (:func:`dead_letter_headers`), ``dlq replay`` reads (:func:`read_headers`) and rewrites them
(:func:`rewritten_headers`).

The source offset is committed only after the broker confirmed the dead letter (``acks=all``).
When the dead-letter topic cannot be written (missing with auto-create off, no permission), the
writer logs the broker's error and tries again with exponential backoff (1 s → 60 s), forever:
the source offset stays uncommitted and nothing is lost; ``erp_sync_dead_letters_pending`` and the
``ErpSyncDeadLettersPending`` alert make it visible.

Size: every value the consumer can receive fits in the producer's limit (``message.max.bytes`` follows
the consumer's ``receive.message.max.bytes``), and ``erp-sync create-topics`` gives the dead-letter
topic the source's ``max.message.bytes`` plus 64 KiB. When the dead-letter topic still refuses a
letter for its size, the letter is written without its value, with ``erp_sync.value.omitted``
saying how large it was and why (an ERROR line, ``erp_sync_dead_letter_values_omitted_total``): its
partition moves on, and ``dlq replay`` reads the original value from the source topic
(``erp_sync.original.*``) while the topic's retention keeps it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message

from ..errors import ErpRejectError, RecordError
from ..kafka import error_text
from ..logs import Throttle

log = logging.getLogger(__name__)

H_TOPIC = "erp_sync.original.topic"
H_PARTITION = "erp_sync.original.partition"
H_OFFSET = "erp_sync.original.offset"
H_TIMESTAMP = "erp_sync.original.timestamp"
H_CLASS = "erp_sync.error.class"
H_CODE = "erp_sync.error.code"
H_MESSAGE = "erp_sync.error.message"
H_ATTEMPTS = "erp_sync.attempts"
H_REQUEST_ID = "erp_sync.erp.request_id"
H_REPLAYS = "erp_sync.replays"
"""Added by ``dlq replay``: how many times the dead letter was replayed."""
H_VALUE_OMITTED = "erp_sync.value.omitted"
"""Set when the dead-letter topic refused the letter for its size: ``<bytes> bytes: <broker's reason>``; the
value is left out and ``dlq replay`` reads it from ``erp_sync.original.*`` while retention keeps it."""
H_ROUTE = "erp_sync.route"
"""A parked record's (and its dead letter's) route."""
H_FIRST_FAILURE = "erp_sync.first_failure"
"""When a parked record first failed, Unix ms: its retry deadline counts from there."""
TOO_LARGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})
"""Kafka's answers for a message larger than the topic (or the producer) allows."""
MAX_MESSAGE_HEADER_BYTES = 2000
"""``erp_sync.error.message`` is cut to this many bytes (a dead letter's headers stay small)."""
ERROR_HEADERS = frozenset({H_CLASS, H_CODE, H_MESSAGE, H_ATTEMPTS, H_REQUEST_ID, H_REPLAYS})
"""The headers that describe the failure (replaced when a replayed letter fails again)."""

RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 60.0
FAILURE_LOG_EVERY_S = 30.0

Headers = list[tuple[str, bytes | None]]


# ------------------------------------------------------------------------------------------ header codec


def headers_of(msg: Message) -> Headers:
    """A record's headers in order, values as bytes (a null value stays ``None``)."""
    raw: Any = msg.headers() or []
    items = raw.items() if isinstance(raw, dict) else raw
    return [(str(k), v.encode() if isinstance(v, str) else v) for k, v in items]


def error_headers(error: RecordError, attempts: int, replays: int | None = None) -> Headers:
    """The ``erp_sync.error.*`` headers, ``erp_sync.attempts``, and ``erp_sync.replays`` when given."""
    headers: Headers = [
        (H_CLASS, error.error_class.encode()),
        (H_CODE, error.code.encode()),
        (H_MESSAGE, error.message.encode("utf-8", "replace")[:MAX_MESSAGE_HEADER_BYTES]),
        (H_ATTEMPTS, str(attempts).encode()),
    ]
    if replays is not None:
        headers.append((H_REPLAYS, str(replays).encode()))
    if isinstance(error, ErpRejectError) and error.request_id:
        headers.append((H_REQUEST_ID, error.request_id.encode("utf-8", "replace")))
    return headers


def dead_letter_headers(msg: Message, error: RecordError, attempts: int) -> Headers:
    """A new dead letter's headers: the original ones, ``erp_sync.original.*``, then the error's."""
    ts_type, ts = msg.timestamp()
    return [
        *headers_of(msg),
        (H_TOPIC, str(msg.topic()).encode()),
        (H_PARTITION, str(msg.partition()).encode()),
        (H_OFFSET, str(msg.offset()).encode()),
        (H_TIMESTAMP, str(ts if ts_type else -1).encode()),
        *error_headers(error, attempts),
    ]


def parked_headers(msg: Message, route: str, attempts: int, first_failure_ms: int, last: RecordError | None) -> Headers:
    """A parked record's headers.

    The original ones, ``erp_sync.original.*``, its route, when it first failed
    (``erp_sync.first_failure``, Unix ms), the attempts so far, and the last *retry* answer as
    ``erp_sync.error.*``.
    """
    ts_type, ts = msg.timestamp()
    headers: Headers = [
        *headers_of(msg),
        (H_TOPIC, str(msg.topic()).encode()),
        (H_PARTITION, str(msg.partition()).encode()),
        (H_OFFSET, str(msg.offset()).encode()),
        (H_TIMESTAMP, str(ts if ts_type else -1).encode()),
        (H_ROUTE, route.encode()),
        (H_FIRST_FAILURE, str(first_failure_ms).encode()),
    ]
    if last is not None:
        return [*headers, *error_headers(last, attempts)]
    return [*headers, (H_ATTEMPTS, str(attempts).encode())]


def dead_letter_headers_of_parked(parked: Message, error: RecordError, attempts: int) -> Headers:
    """The headers of a parked record's dead letter.

    Its original headers, ``erp_sync.original.*``, route and first failure as parked, then the new
    error (``RetryDeadlineExceeded`` or the ERP's reject).
    """
    kept = [(k, v) for k, v in headers_of(parked) if k not in ERROR_HEADERS]
    return [*kept, *error_headers(error, attempts)]


def rewritten_headers(letter: Message, error: RecordError, attempts: int, replays: int) -> Headers:
    """Headers of a dead letter that failed again and goes back to the dead-letter topic.

    Its original headers and ``erp_sync.original.*`` stay unchanged, followed by fresh
    ``erp_sync.error.*``, ``erp_sync.attempts`` (over the first delivery and every replay) and
    ``erp_sync.replays`` (how many times it has now been replayed).
    """
    return [*((k, v) for k, v in headers_of(letter) if k not in ERROR_HEADERS),
            *error_headers(error, attempts, replays)]


def read_headers(letter: Message) -> dict[str, str]:
    """The ``erp_sync.*`` headers of a dead letter as text (the last value of a repeated name wins)."""
    return {k: (v or b"").decode("utf-8", "replace") for k, v in headers_of(letter) if k.startswith("erp_sync.")}


def int_header(headers: dict[str, str], name: str) -> int:
    """An integer header of :func:`read_headers`' result; 0 when missing or not a number."""
    try:
        return int(headers.get(name, "0"))
    except ValueError:
        return 0


# ------------------------------------------------------------------------------------------ the writer


DeadLetterProducer = Any
"""A Kafka producer: ``confluent_kafka.Producer``, or a test double with its ``produce(topic, key=,
value=, headers=, on_delivery=)``, ``poll(timeout)`` and ``flush(timeout)``."""


@dataclass(slots=True)
class DeadLetter:
    """One dead letter and what to do once the broker confirmed it.

    Attributes:
        topic, partition, offset, timestamp_ms: where the original record was.
        key, value: the original bytes (None stays None).
        headers: the headers to write (original ones, then ours).
        error: why it is dead.
        attempts: ERP attempts made (0 for decode/validation).
        on_done: called once, in the poll loop's thread, after the broker's acknowledgement.
        cancelled: when it returns True a failed dead letter is not retried (its partition was
            revoked: the new owner writes it).
    """

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    error: RecordError
    attempts: int
    on_done: Callable[[DeadLetter], None]
    cancelled: Callable[[], bool] | None = None
    failures: int = 0
    last_error: str = field(default="")
    value_omitted: int | None = None
    """The size in bytes of the value left out (the dead-letter topic refused it), else None."""
    target_topic: str | None = None
    """Where it is written, when not the writer's topic (a parked record's retry topic)."""
    target_partition: int | None = None
    """The partition it is written to (a parked record goes to its source partition's number)."""


class DeadLetterWriter:
    """Writes dead letters (or parked records) and retries them until the broker confirms. Poll-loop thread only.

    Args:
        producer: the Kafka producer (``acks=all`` recommended); the caller builds it.
        topic: the dead-letter topic (a letter may name another: :attr:`DeadLetter.target_topic`).
        on_confirmed: called with each confirmed dead letter (metrics, logs).
        omit_too_large: a letter the topic refuses for its size is written without its value (dead
            letters); when False it is retried like any failure (parked records must keep their value).
        what: what a letter is, in log lines.
    """

    def __init__(self, producer: DeadLetterProducer, topic: str,
                 on_confirmed: Callable[[DeadLetter], None] | None = None, omit_too_large: bool = True,
                 what: str = "dead letter") -> None:
        self.topic = topic
        self._producer = producer
        self.on_confirmed = on_confirmed
        self.omit_too_large = omit_too_large
        self.what = what
        self._retry_heap: list[tuple[float, int, DeadLetter]] = []
        self._seq = itertools.count()
        self._failure_log = Throttle(FAILURE_LOG_EVERY_S)
        self.pending = 0

    def send(self, msg: Message, error: RecordError, attempts: int,
             on_done: Callable[[DeadLetter], None], cancelled: Callable[[], bool] | None = None,
             headers: Headers | None = None, topic: str | None = None, partition: int | None = None) -> DeadLetter:
        """Queue a letter for ``msg``; ``on_done`` runs after the broker confirmed it.

        Args:
            msg: the record (its key and value are written as they are).
            error: why it is dead (or, for a parked record, why it waits).
            attempts: ERP attempts made.
            on_done: called once, after the broker's acknowledgement.
            cancelled: see :attr:`DeadLetter.cancelled`.
            headers: the headers to write (default: :func:`dead_letter_headers`).
            topic: where to write (default: the writer's topic).
            partition: the partition to write to (default: the producer's partitioner).
        """
        ts_type, ts = msg.timestamp()
        letter = DeadLetter(str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0),
                            ts if ts_type else -1, msg.key(), msg.value(),
                            headers if headers is not None else dead_letter_headers(msg, error, attempts), error,
                            attempts, on_done, cancelled, target_topic=topic, target_partition=partition)
        self.pending += 1
        self._produce(letter)
        return letter

    def _produce(self, letter: DeadLetter) -> None:
        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                self.pending -= 1
                if letter.failures:
                    log.info("%s written after %d failed attempts", self.what, letter.failures,
                             extra=_fields(letter, event=self.what.replace(" ", "_") + "_recovered"))
                letter.on_done(letter)
                if self.on_confirmed is not None:
                    self.on_confirmed(letter)
            elif err.code() in TOO_LARGE and letter.value is not None and self.omit_too_large:
                self._omit_value(letter, f"{err.name()}: {err.str()}")
            else:
                self._failed(letter, f"{err.name()}: {err.str()}")

        extra: dict[str, Any] = {} if letter.target_partition is None else {"partition": letter.target_partition}
        try:
            self._producer.produce(letter.target_topic or self.topic, key=letter.key, value=letter.value,
                                   headers=list(letter.headers), on_delivery=delivered, **extra)
        except BufferError:
            self._failed(letter, "local producer queue is full")
        except KafkaException as exc:  # e.g. larger than the producer's message.max.bytes
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if err is not None and err.code() in TOO_LARGE and letter.value is not None and self.omit_too_large:
                self._omit_value(letter, f"{err.name()}: {err.str()}")
            else:
                self._failed(letter, error_text(exc))
        except Exception as exc:  # noqa: BLE001 - whatever it is, the letter is retried
            self._failed(letter, f"{type(exc).__name__}: {exc}")

    def _omit_value(self, letter: DeadLetter, reason: str) -> None:
        """The dead-letter topic refuses the letter for its size: write it without its value."""
        assert letter.value is not None
        letter.value_omitted = len(letter.value)
        log.error("dead letter of %d bytes refused by %s (%s): written without its value; the original stays at "
                  "%s[%d]@%d (dlq replay reads it there while retention keeps it). Raise the topic's "
                  "max.message.bytes to keep whole values", letter.value_omitted, self.topic, reason, letter.topic,
                  letter.partition, letter.offset, extra=_fields(letter, event="dead_letter_value_omitted"))
        letter.headers = [*letter.headers, (H_VALUE_OMITTED, f"{letter.value_omitted} bytes: {reason}".encode())]
        letter.value = None
        self._produce(letter)

    def _failed(self, letter: DeadLetter, reason: str) -> None:
        letter.failures += 1
        letter.last_error = reason
        delay = min(RETRY_MAX_S, RETRY_INITIAL_S * 2 ** min(letter.failures - 1, 10))
        held = self._failure_log.allow(reason)
        if held is not None:  # one line per cause per period, not one per letter
            log.error("cannot write %s to %s (%s); source offset stays uncommitted; retry in %.0f s "
                      "(%d pending, %d similar failures not logged)", self.what, letter.target_topic or self.topic,
                      reason, delay, self.pending, held,
                      extra=_fields(letter, event=self.what.replace(" ", "_") + "_failed"))
        heapq.heappush(self._retry_heap, (time.monotonic() + delay, next(self._seq), letter))

    def poll(self) -> None:
        """Serve delivery callbacks and re-send dead letters whose retry time has come."""
        self._producer.poll(0)
        now = time.monotonic()
        while self._retry_heap and self._retry_heap[0][0] <= now:
            _, _, letter = heapq.heappop(self._retry_heap)
            if letter.cancelled is not None and letter.cancelled():
                self.pending -= 1  # partition revoked: its new owner dead-letters the record
                continue
            self._produce(letter)

    def flush(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` seconds for outstanding dead letters; return how many remain."""
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            self._producer.flush(min(0.2, max(0.0, deadline - time.monotonic())))
            self.poll()
        return self.pending

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush what can be flushed."""
        self._producer.flush(timeout_s)


def _fields(letter: DeadLetter, **extra: Any) -> dict[str, Any]:
    return {"topic": letter.topic, "partition": letter.partition, "offset": letter.offset,
            "error_class": letter.error.error_class, "error_code": letter.error.code, **extra}
