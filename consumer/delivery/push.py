"""The one push routine: a body to the ERP until it is accepted or rejected, or the push is given up.

Used by ``erp-sync run`` (one coroutine per record, key-ordered by :mod:`.dispatch`) and by the
replay tools (:mod:`consumer.ops`). Every attempt waits for the shared backoff (:mod:`.retry`: one
probe at a time while the ERP is not ready) and the rate limit, then sends through the
:class:`~consumer.erp.client.ErpClient`; *accepted* and *reject* (ERP-INTERFACE.md decision 6) end
the push. A *retry* verdict that speaks for the endpoint opens or escalates the shared backoff; one
that may concern this record only (``InternalError`` for this body while others are accepted)
makes this record wait on its own (:func:`~.retry.record_delay`), so one record the ERP cannot
take never slows the others. The routine never raises for a failed request: the verdict says what
happened.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..erp.client import ErpClient
from ..erp.verdict import Outcome, Verdict, speaks_for_endpoint
from ..logs import Throttle, plural
from ..metrics import Metrics
from .concurrency import ConcurrencyLimit
from .dispatch import slot_given_back
from .retry import RateLimiter, SharedBackoff, record_delay

PARK = "park"
EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Budget:
    """How long a push keeps trying in place (issue "no head-of-line blocking").

    Attributes:
        park_after_s: a source record answered *retry* for this long (seconds, since its first
            failure) stops, to be parked in the retry topic; None: never.
        first_failure_ms: when the record first failed (Unix ms), for a parked record; None: not yet.
        deadline_s: a parked record still failing this long after its first failure stops, to be
            dead-lettered (``RetryDeadlineExceeded``); None: never.
        park_now: True when the record must stop to be parked whatever its own failures (its route's
            ERP refuses our credentials, or has not been ready for the park delay): checked while it waits.
    """

    park_after_s: float | None = None
    first_failure_ms: int | None = None
    deadline_s: float | None = None
    park_now: Callable[[], bool] | None = None

    def over(self, first_failure_ms: int | None) -> str:
        """``PARK`` or ``EXPIRED`` once the budget is spent, else ``""``."""
        if self.park_now is not None and self.park_now():
            return PARK
        if first_failure_ms is None:
            return ""
        age_ms = time.time() * 1000 - first_failure_ms
        if self.deadline_s is not None and age_ms >= self.deadline_s * 1000:
            return EXPIRED
        if self.park_after_s is not None and age_ms >= self.park_after_s * 1000:
            return PARK
        return ""


NO_BUDGET = Budget()


@dataclass(frozen=True, slots=True)
class PushResult:
    """How one push ended.

    Attributes:
        verdict: the final verdict (accepted or reject), or None when the push was given up.
        attempts: requests sent.
        last_retry: the last *retry* verdict, when the push was given up after one (the ERP kept
            failing); None when it was given up before any answer.
        ended: ``PARK`` or ``EXPIRED`` when the push stopped because its :class:`Budget` was spent.
        first_failure_ms: when the record first failed (Unix ms), if it did.
    """

    verdict: Verdict | None
    attempts: int
    last_retry: Verdict | None = None
    ended: str = ""
    first_failure_ms: int | None = None


class PushObserver(Protocol):
    """What a caller learns while a push runs (the consumer logs and counts; the tools print)."""

    def answered(self, verdict: Verdict, duration_s: float) -> None:
        """Every answer (accepted, retry or reject), with its duration in seconds."""

    def backing_off(self, verdict: Verdict, delay_s: float, failures: int, context: object) -> None:
        """A *retry* answer escalated the shared backoff to ``delay_s`` seconds (``failures`` in a row).

        ``context`` is what the caller passed to :meth:`Pusher.push` (the consumer's record).
        """

    def retrying(self, verdict: Verdict, delay_s: float, retries: int, context: object) -> None:
        """A *retry* answer for this record only: it waits ``delay_s`` seconds alone (its ``retries``-th)."""

    def recovered(self, failures: int, failing_for_s: float) -> None:
        """A probe was answered after ``failures`` failed attempts in a row over ``failing_for_s`` seconds."""


class Pusher:
    """Pushes bodies through one ERP client, backoff and rate limit.

    Args:
        erp: the ERP client.
        backoff: the backoff shared by every push of the event loop.
        rate: the request-rate limit, if configured.
        observer: told of answers, backoffs and recoveries (may be None).
    """

    def __init__(self, erp: ErpClient, backoff: SharedBackoff, rate: RateLimiter | None = None,
                 observer: PushObserver | None = None) -> None:
        self.erp = erp
        self.backoff = backoff
        self.rate = rate
        self.observer = observer

    async def push(self, body: bytes, idempotency_key: str, cancelled: Callable[[], bool],
                   context: object = None, stop_retrying: Callable[[], bool] | None = None,
                   budget: Budget = NO_BUDGET) -> PushResult:
        """Push one body until the ERP accepts or rejects it, or ``cancelled()`` becomes True.

        Args:
            body: the encoded ERP body.
            idempotency_key: ``"<FlowCode>-<InstanceId>"``.
            cancelled: checked while waiting for the backoff or the rate limit (never during a
                request): True gives the push up.
            context: handed to the observer's :meth:`PushObserver.backing_off`.
            stop_retrying: checked once this record was answered *retry* (before and while it waits
                alone): True gives it up (the consumer stopping while the ERP cannot take it).
            budget: when to stop trying in place (park a source record; expire a parked one).

        Returns:
            The :class:`PushResult`.
        """
        backoff, rate, observer = self.backoff, self.rate, self.observer
        attempts = own_retries = 0
        last_retry: Verdict | None = None
        first_failure_ms = budget.first_failure_ms

        def stop() -> bool:
            return cancelled() or bool(budget.over(first_failure_ms))

        def stop_first() -> bool:  # before any try: a parked record past its deadline still gets one
            return cancelled() or (budget.park_now is not None and budget.park_now())

        def given_up() -> PushResult:
            ended = budget.over(first_failure_ms)
            first = first_failure_ms if first_failure_ms is not None or not ended else int(time.time() * 1000)
            return PushResult(None, attempts, last_retry, ended, first)

        while True:  # a parked record past its deadline still gets one try when its turn comes
            waiting = stop_first if attempts == 0 else stop
            permit = await backoff.acquire(waiting)
            if permit is None or (rate is not None and not await rate.acquire(waiting)):
                if permit is not None:
                    backoff.release(permit)
                return given_up()
            attempts += 1
            started = time.monotonic()
            result = await self.erp.post_async(body, idempotency_key)
            if observer is not None:
                observer.answered(result, time.monotonic() - started)
            if result.outcome is not Outcome.RETRY:
                cleared = backoff.success(permit)
                if cleared and observer is not None:
                    observer.recovered(cleared, time.monotonic() - backoff.failing_since)
                return PushResult(result, attempts, first_failure_ms=first_failure_ms)
            last_retry = result
            if first_failure_ms is None:
                first_failure_ms = int(time.time() * 1000)
            delay = backoff.failure(permit, result.retry_after_s, speaks_for_endpoint(result), idempotency_key)
            if delay is not None:
                if observer is not None:
                    observer.backing_off(result, delay, backoff.failures, context)
            elif backoff.failures == 0:  # this record only: it waits alone, the others go on
                own_retries += 1
                wait = record_delay(own_retries, backoff.initial_s, backoff.max_s)
                if observer is not None:
                    observer.retrying(result, wait, own_retries, context)
                give_up = stop if stop_retrying is None else (lambda: stop() or stop_retrying())
                async with slot_given_back():  # it waits alone: its push slot goes to the others meanwhile
                    waited = await _sleep(wait, give_up)
                if not waited:
                    return given_up()
            if budget.over(first_failure_ms):
                return given_up()


async def _sleep(seconds: float, cancelled: Callable[[], bool], poll_s: float = 0.05) -> bool:
    """Sleep ``seconds``, checking ``cancelled()`` every ``poll_s``; False when cancelled."""
    deadline = time.monotonic() + seconds
    while True:
        if cancelled():
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        await asyncio.sleep(min(left, poll_s))


BACKOFF_LOG_EVERY_S = 10.0
"""While the ERP keeps failing, one backoff log line per this many seconds (plus the first)."""


class PushLog:
    """The consumer's :class:`PushObserver`: ERP request metrics, and the backoff and recovery log lines.

    Each kind of line at most once per :data:`BACKOFF_LOG_EVERY_S` (with the count of those held
    back): ``erp_backoff`` (the shared backoff opened or grew: the ERP is not ready), ``erp_retry``
    (one record answered *retry* waits alone) and ``erp_recovered`` (a probe was answered again).

    Args:
        metrics: ``erp_sync_erp_requests_total`` and ``erp_sync_erp_request_duration_seconds``.
        logger: where the lines go.
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(self, metrics: Metrics, logger: logging.Logger, clock: Callable[[], float] = time.monotonic,
                 route: str = "default", limiter: ConcurrencyLimit | None = None) -> None:
        self.metrics = metrics
        self.log = logger
        self.route = route
        self.limiter = limiter
        self.last_backoff_code = ""
        """The code of the answer that last opened or escalated the backoff."""
        self._throttle = Throttle(BACKOFF_LOG_EVERY_S, clock)

    def answered(self, verdict: Verdict, duration_s: float) -> None:
        """Count the request; feed the route's adaptive concurrency."""
        self.metrics.erp_request(verdict.outcome.value, verdict.code, duration_s, self.route)
        if self.limiter is not None:
            self.limiter.answered(verdict, duration_s)

    def backing_off(self, verdict: Verdict, delay_s: float, failures: int, context: object) -> None:
        """Log that every push of the route backs off (throttled)."""
        self.last_backoff_code = verdict.code
        self._throttle.warning(
            self.log, "erp_backoff",
            "ERP push failed, will retry (%s: %s); all pushes of route %s back off %.1f s (failure %d in a row)",
            verdict.code, verdict.message, self.route, delay_s, failures,
            event="erp_backoff", route=self.route, erp_code=verdict.code, request_id=verdict.request_id,
            instance_id=getattr(context, "instance_id", None), backoff_s=round(delay_s, 3))

    def retrying(self, verdict: Verdict, delay_s: float, retries: int, context: object) -> None:
        """Log that one record waits alone (throttled)."""
        self._throttle.warning(
            self.log, "erp_retry",
            "ERP answered retry for one record (%s: %s) while it answers the others; that record waits %.1f s "
            "(retry %d), the others go on", verdict.code, verdict.message, delay_s, retries,
            event="erp_retry", route=self.route, erp_code=verdict.code, request_id=verdict.request_id,
            instance_id=getattr(context, "instance_id", None), retry_in_s=round(delay_s, 3), retries=retries)

    def recovered(self, failures: int, failing_for_s: float) -> None:
        """Log that pushes resume (throttled)."""
        held = self._throttle.allow("erp_recovered")
        if held is None:
            return
        self.log.info("ERP of route %s answers again after %s in a row (%.1f s): pushes resume",
                      self.route, plural(failures, "failed attempt"), failing_for_s,
                      extra={"event": "erp_recovered", "route": self.route, "failures": failures,
                             **({"suppressed": held} if held else {})})
