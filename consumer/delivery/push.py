"""The one push routine: a body to the ERP until it is accepted or rejected, or the push is given up.

Used by ``erp-sync run`` (one coroutine per record, key-ordered by :mod:`.dispatch`) and by the
replay tools (:mod:`consumer.ops`). Every attempt waits for the shared backoff (:mod:`.retry`: one
probe at a time while the ERP fails) and the rate limit, then sends through the
:class:`~consumer.erp.client.ErpClient`; a *retry* verdict (ERP-INTERFACE.md decision 6) escalates
the backoff and tries again; *accepted* and *reject* end the push. The routine never raises for
a failed request: the verdict says what happened.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..erp.client import ErpClient
from ..erp.verdict import Outcome, Verdict
from ..logs import Throttle
from ..metrics import Metrics
from .retry import RateLimiter, SharedBackoff


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
                   context: object = None) -> PushResult:
        """Push one body until the ERP accepts or rejects it, or ``cancelled()`` becomes True.

        Args:
            body: the encoded ERP body.
            idempotency_key: ``"<FlowCode>-<InstanceId>"``.
            cancelled: checked while waiting for the backoff or the rate limit (never during a
                request): True gives the push up.
            context: handed to the observer's :meth:`PushObserver.backing_off`.

        Returns:
            The :class:`PushResult`.
        """
        backoff, rate, observer = self.backoff, self.rate, self.observer
        attempts = 0
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
            delay = backoff.failure(permit, result.retry_after_s)
            if delay is not None and observer is not None:
                observer.backing_off(result, delay, backoff.failures, context)


BACKOFF_LOG_EVERY_S = 10.0
"""While the ERP keeps failing, one backoff log line per this many seconds (plus the first)."""


class PushLog:
    """The consumer's :class:`PushObserver`: ERP request metrics, and the backoff and recovery log lines.

    While the ERP fails: an ``erp_backoff`` warning when a backoff starts and at most one per
    :data:`BACKOFF_LOG_EVERY_S` after that; one ``erp_recovered`` line when a probe is answered.

    Args:
        metrics: ``erp_sync_erp_requests_total`` and ``erp_sync_erp_request_duration_seconds``.
        logger: where the lines go.
    """

    def __init__(self, metrics: Metrics, logger: logging.Logger) -> None:
        self.metrics = metrics
        self.log = logger
        self._throttle = Throttle(BACKOFF_LOG_EVERY_S)

    def answered(self, verdict: Verdict, duration_s: float) -> None:
        """Count the request."""
        self.metrics.erp_request(verdict.outcome.value, verdict.code, duration_s)

    def backing_off(self, verdict: Verdict, delay_s: float, failures: int, context: object) -> None:
        """Log the backoff (first of a run of failures, then throttled)."""
        if failures == 1:
            self._throttle.reset("erp_backoff")
        if self._throttle.allow("erp_backoff") is None:
            return
        self.log.warning("ERP push failed, will retry (%s: %s); all pushes back off %.1f s (failure %d in a row)",
                         verdict.code, verdict.message, delay_s, failures,
                         extra={"event": "erp_backoff", "erp_code": verdict.code, "request_id": verdict.request_id,
                                "instance_id": getattr(context, "instance_id", None),
                                "backoff_s": round(delay_s, 3)})

    def recovered(self, failures: int, failing_for_s: float) -> None:
        """Log that pushes resume."""
        self.log.info("ERP answers again after %d failed attempts in a row (%.1f s): pushes resume",
                      failures, failing_for_s, extra={"event": "erp_recovered", "failures": failures})
