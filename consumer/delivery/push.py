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
from .retry import RateLimiter, SharedBackoff, record_delay


@dataclass(frozen=True, slots=True)
class PushResult:
    """How one push ended.

    Attributes:
        verdict: the final verdict (accepted or reject), or None when the push was given up.
        attempts: requests sent.
        last_retry: the last *retry* verdict, when the push was given up after one (the ERP kept
            failing); None when it was given up before any answer.
    """

    verdict: Verdict | None
    attempts: int
    last_retry: Verdict | None = None


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
                   context: object = None, stop_retrying: Callable[[], bool] | None = None) -> PushResult:
        """Push one body until the ERP accepts or rejects it, or ``cancelled()`` becomes True.

        Args:
            body: the encoded ERP body.
            idempotency_key: ``"<FlowCode>-<InstanceId>"``.
            cancelled: checked while waiting for the backoff or the rate limit (never during a
                request): True gives the push up.
            context: handed to the observer's :meth:`PushObserver.backing_off`.
            stop_retrying: checked once this record was answered *retry* (before and while it waits
                alone): True gives it up (the consumer stopping while the ERP cannot take it).

        Returns:
            The :class:`PushResult`.
        """
        backoff, rate, observer = self.backoff, self.rate, self.observer
        attempts = own_retries = 0
        last_retry: Verdict | None = None
        while True:
            permit = await backoff.acquire(cancelled)
            if permit is None or (rate is not None and not await rate.acquire(cancelled)):
                if permit is not None:
                    backoff.release(permit)
                return PushResult(None, attempts, last_retry)
            attempts += 1
            started = time.monotonic()
            result = await self.erp.post_async(body, idempotency_key)
            if observer is not None:
                observer.answered(result, time.monotonic() - started)
            if result.outcome is not Outcome.RETRY:
                cleared = backoff.success(permit)
                if cleared and observer is not None:
                    observer.recovered(cleared, time.monotonic() - backoff.failing_since)
                return PushResult(result, attempts)
            last_retry = result
            delay = backoff.failure(permit, result.retry_after_s, speaks_for_endpoint(result), idempotency_key)
            if delay is not None:
                if observer is not None:
                    observer.backing_off(result, delay, backoff.failures, context)
            elif backoff.failures == 0:  # this record only: it waits alone, the others go on
                own_retries += 1
                wait = record_delay(own_retries, backoff.initial_s, backoff.max_s)
                if observer is not None:
                    observer.retrying(result, wait, own_retries, context)
                give_up = cancelled if stop_retrying is None else (lambda: cancelled() or stop_retrying())
                if not await _sleep(wait, give_up):
                    return PushResult(None, attempts, last_retry)


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

    def __init__(self, metrics: Metrics, logger: logging.Logger, clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.log = logger
        self._throttle = Throttle(BACKOFF_LOG_EVERY_S, clock)

    def answered(self, verdict: Verdict, duration_s: float) -> None:
        """Count the request."""
        self.metrics.erp_request(verdict.outcome.value, verdict.code, duration_s)

    def backing_off(self, verdict: Verdict, delay_s: float, failures: int, context: object) -> None:
        """Log that every push backs off (throttled)."""
        self._throttle.warning(
            self.log, "erp_backoff",
            "ERP push failed, will retry (%s: %s); all pushes back off %.1f s (failure %d in a row)",
            verdict.code, verdict.message, delay_s, failures,
            event="erp_backoff", erp_code=verdict.code, request_id=verdict.request_id,
            instance_id=getattr(context, "instance_id", None), backoff_s=round(delay_s, 3))

    def retrying(self, verdict: Verdict, delay_s: float, retries: int, context: object) -> None:
        """Log that one record waits alone (throttled)."""
        self._throttle.warning(
            self.log, "erp_retry",
            "ERP answered retry for one record (%s: %s) while it answers the others; that record waits %.1f s "
            "(retry %d), the others go on", verdict.code, verdict.message, delay_s, retries,
            event="erp_retry", erp_code=verdict.code, request_id=verdict.request_id,
            instance_id=getattr(context, "instance_id", None), retry_in_s=round(delay_s, 3), retries=retries)

    def recovered(self, failures: int, failing_for_s: float) -> None:
        """Log that pushes resume (throttled)."""
        held = self._throttle.allow("erp_recovered")
        if held is None:
            return
        self.log.info("ERP answers again after %s in a row (%.1f s): pushes resume",
                      plural(failures, "failed attempt"), failing_for_s,
                      extra={"event": "erp_recovered", "failures": failures, **({"suppressed": held} if held else {})})
