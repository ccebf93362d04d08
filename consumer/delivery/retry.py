"""The shared retry backoff and the request-rate limit: how the consumer protects a failing ERP.

One :class:`SharedBackoff` serves every push of the process (issue "reliability", fault 4): when
the ERP is not ready (it answers *retry* for everyone), every push waits for the same deadline, and
once it passes a single probe request goes first; the others follow only when the probe succeeds.
So a down ERP sees one request per backoff period, not one per in-flight record. Delays grow
exponentially from ``initial_s`` to ``max_s`` with jitter (each delay is drawn in [50 %, 100 %] of
the step), and a ``Retry-After`` longer than the step wins (capped at ``retry_after_max_s``).

What opens it: an answer that speaks for the endpoint (no answer at all, a ``Retry-After``, a
limit or outage code: :func:`consumer.erp.verdict.speaks_for_endpoint`), or *retry* answers for
:data:`STREAK_TO_OPEN` different records in a row with no success between them. One record that the
ERP keeps answering ``InternalError`` does not open it, whether or not other records flow (issue
"on-call defects", 10): that record backs off on its own (:func:`record_delay`), and nobody else
waits, now or when the next burst comes.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

STREAK_TO_OPEN = 3
"""Records answered *retry* in a row (no success between them) that open the shared backoff."""


def record_delay(retries: int, initial_s: float, max_s: float, rng: Callable[[], float] = random.random) -> float:
    """The wait of one record after its ``retries``-th retry answer that did not open the shared backoff.

    Exponential from ``initial_s`` to ``max_s`` seconds, with jitter (drawn in [50 %, 100 %] of the step).
    """
    return min(max_s, initial_s * (2 ** min(retries - 1, 62))) * (0.5 + 0.5 * rng())


@dataclass(frozen=True, slots=True)
class Permit:
    """Permission to send one request. ``epoch`` identifies the backoff state it was granted in."""

    epoch: int
    probe: bool


class SharedBackoff:
    """Exponential backoff with jitter, shared by all pushes of one event loop; thread-safe to read.

    Args:
        initial_s: first delay, seconds.
        max_s: delay cap, seconds.
        retry_after_max_s: cap on an honoured ``Retry-After``, seconds.
        on_change: called with the current delay in seconds (0 when healthy) on every change.
    """

    def __init__(self, initial_s: float, max_s: float, retry_after_max_s: float = 900.0,
                 on_change: Callable[[float], None] | None = None,
                 rng: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.retry_after_max_s = retry_after_max_s
        self._on_change = on_change
        self._rng = rng
        self._clock = clock
        self._lock = threading.Lock()
        self.failures = 0
        self.failing_since = 0.0
        """Clock time (s) of the first failure of the current backoff, or of the last one once it ended."""
        self.epoch = 0
        self.delay_s = 0.0
        self.streak: set[object] = set()
        """Records answered *retry* in a row while healthy (any success clears it)."""
        self._not_before = 0.0
        self._probing = False

    def _try_acquire(self) -> Permit | float:
        """A permit, or how long to wait (seconds) before asking again. Holds the lock."""
        if self.failures == 0:
            return Permit(self.epoch, False)
        now = self._clock()
        if now >= self._not_before and not self._probing:
            self._probing = True
            return Permit(self.epoch, True)
        return self._not_before - now if now < self._not_before else float("inf")

    async def acquire(self, should_stop: Callable[[], bool], poll_s: float = 0.05) -> Permit | None:
        """Wait until a request may be sent (a coroutine on the push event loop: sleeps, never blocks).

        Args:
            should_stop: checked at least every ``poll_s`` seconds; when it returns True the wait
                ends and None is returned (shutdown, or the partition was revoked).
            poll_s: longest single wait between checks, seconds.

        Returns:
            A :class:`Permit` to pass to :meth:`success` / :meth:`failure`, or None when stopped.
        """
        while True:
            with self._lock:
                if should_stop():
                    return None
                got = self._try_acquire()
            if isinstance(got, Permit):
                return got
            await asyncio.sleep(min(max(got, 0.001), poll_s))

    def release(self, permit: Permit) -> None:
        """Give a permit back unused (the push was abandoned before sending)."""
        if permit.probe:
            with self._lock:
                self._probing = False

    def success(self, permit: Permit) -> int:
        """The ERP answered (accepted or reject) the request sent under ``permit``.

        While backing off, only the probe's answer ends the backoff (a circuit breaker's half-open
        rule): an answer to a request sent before the failure says nothing about the ERP since,
        and an ERP that is going down still answers the requests it had already accepted.

        Returns:
            How many failures in a row this answer cleared (0 when it changed nothing).
        """
        with self._lock:
            if permit.probe:
                self._probing = False
            if not self.failures:
                self.streak.clear()
                return 0
            if permit.epoch != self.epoch:
                return 0
            cleared = self.failures
            self.failures = 0
            self.delay_s = 0.0
            self.epoch += 1
            self._changed()
            return cleared

    def failure(self, permit: Permit, retry_after_s: float | None = None, endpoint_wide: bool = True,
                record: object = None) -> float | None:
        """The ERP answered *retry*. Opens or escalates the backoff once per period, whoever reports it.

        Args:
            permit: the permit the request was sent under.
            retry_after_s: the answer's ``Retry-After``, seconds.
            endpoint_wide: the answer speaks for the whole endpoint. When False and the backoff is
                not open, it opens only once :data:`STREAK_TO_OPEN` different records were answered
                so in a row.
            record: what identifies the record (its Idempotency-Key), for that count.

        Returns:
            The new delay in seconds when this call opened or escalated the backoff, else None:
            another request already escalated it for this period (``failures > 0``), or the
            answer concerns this record only (``failures == 0``: the caller waits on its own).
        """
        with self._lock:
            if permit.probe:
                self._probing = False
            if permit.epoch != self.epoch:
                return None
            if not self.failures and not endpoint_wide:
                self.streak.add(record)
                if len(self.streak) < STREAK_TO_OPEN:
                    return None
            self.streak.clear()
            self.failures += 1
            if self.failures == 1:
                self.failing_since = self._clock()
            self.epoch += 1
            step = min(self.max_s, self.initial_s * (2 ** min(self.failures - 1, 62)))
            delay = step * (0.5 + 0.5 * self._rng())
            if retry_after_s is not None:
                delay = max(delay, min(retry_after_s, self.retry_after_max_s))
            self.delay_s = delay
            self._not_before = self._clock() + delay
            self._changed()
            return delay

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.delay_s)


class RateLimiter:
    """Token bucket shared by all pushes (``ERP_SYNC_ERP_MAX_REQUESTS_PER_SECOND``); thread-safe.

    Args:
        rate_per_s: sustained requests per second.
        burst: bucket size (requests); defaults to one second's worth, at least 1.
    """

    def __init__(self, rate_per_s: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate_per_s
        self.capacity = burst if burst is not None else max(1.0, rate_per_s)
        self._tokens = self.capacity
        self._clock = clock
        self._last = clock()
        self._lock = threading.Lock()

    def _try_take(self) -> float:
        """Take a token and return 0, or return the seconds until one is available."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            return (1 - self._tokens) / self.rate

    async def acquire(self, should_stop: Callable[[], bool]) -> bool:
        """Take one token, sleeping as needed. Returns False if ``should_stop()`` became True."""
        while True:
            wait = self._try_take()
            if wait == 0.0:
                return True
            if should_stop():
                return False
            await asyncio.sleep(min(wait, 0.1))
