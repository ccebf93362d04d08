"""How many pushes of a route run at once: a fixed number, or found from what the ERP answers.

``ERP_SYNC_MAX_IN_FLIGHT=auto`` (the default) lets each route find the concurrency its ERP sustains,
in the manner of Vector's adaptive request concurrency and Netflix's concurrency-limits (TCP
congestion control applied to requests): a feedback loop over windows of about one round trip.

* **Slow start**: while the ERP answers at its usual latency and every slot is used, the limit
  doubles each window, from :data:`INITIAL_LIMIT` up to ``ERP_SYNC_MAX_IN_FLIGHT_CEILING``.
* **Additive increase** after the first congestion: +1 per window in which the slots were all used
  and the latency stayed near its floor; none for :data:`HOLD_WINDOWS` windows after a cut, so an
  ERP at its capacity is probed past it rarely (an FIFO queue at the ERP makes only the pushes beyond
  its capacity wait, and they wait a whole service time: the ERP's p99 latency is what a probe costs).
* **Decrease** when the ERP says it is overloaded (HTTP 429, 502, 503, 504, ``RequestLimitExceeded``,
  ``ServiceUnavailable``, ``ResourceUnavailable``…, timeouts, refused or reset connections): ×
  :data:`DECREASE_RATIO`; or when the window's mean latency rose above the floor by more than
  :data:`LATENCY_TOLERANCE` (and :data:`LATENCY_SLACK_S`): a queue building at the ERP shows as
  latency before it shows as errors. The limit is cut to the ERP's capacity as Little's law gives it:
  the window's answers per second × the floor latency (at least half the limit, at most one less).

One congestion event cuts once: answers to pushes sent before the last cut, or within one floor
latency after it (while the queue it left drains), are not counted (TCP's fast recovery does the
same with losses within a round trip of the cut).

The floor is the lowest window mean of the last :data:`FLOOR_WINDOWS` windows (a percentile would
drift up while the limit sits one or two above the ERP's capacity), so it follows an ERP that
became slower for good. A number instead of ``auto`` keeps a fixed limit (the old behaviour).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType

from ..erp.verdict import Verdict, speaks_for_endpoint

INITIAL_LIMIT = 8
MIN_LIMIT = 1
DECREASE_RATIO = 0.75
LATENCY_TOLERANCE = 1.02
"""A window whose mean latency is above floor × this is congestion."""
LATENCY_SLACK_S = 0.001
"""…and above the floor by at least this (a 0 ms ERP's 1 ms jitter on this host is no queue)."""
FLOOR_WINDOWS = 200
MAX_LATENCY_CUT = 0.5
"""A latency cut keeps at least this share of the limit."""
HOLD_WINDOWS = 10
"""Windows without increase after a cut; doubled (up to :data:`MAX_HOLD_WINDOWS`) while cuts keep
landing at the same limit (the ERP's capacity is found: probe past it ever more rarely)."""
MAX_HOLD_WINDOWS = 160
MIN_WINDOW_S = 0.02


class ConcurrencyLimit:
    """Slots for the pushes of one route: ``async with limit:`` around each push.

    Args:
        limit: the fixed limit, or the starting one when ``adaptive``.
        adaptive: find the limit from the answers (``ERP_SYNC_MAX_IN_FLIGHT=auto``).
        ceiling: the highest limit ``adaptive`` may reach.
        clock: monotonic seconds (tests pass a fake one).
        on_change: told the new limit (a gauge).
    """

    def __init__(self, limit: int, adaptive: bool = False, ceiling: int = 256,
                 clock: Callable[[], float] = time.monotonic, on_change: Callable[[int], None] | None = None) -> None:
        self.adaptive = adaptive
        self.ceiling = max(1, ceiling)
        self.limit = float(min(limit, self.ceiling) if adaptive else limit)
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._clock = clock
        self._on_change = on_change
        self._slow_start = True
        self._window_start = clock()
        self._window_answers = 0
        self._window_rtt = 0.0
        self._window_peak = 0
        self._window_overloaded = False
        self._means: deque[float] = deque(maxlen=FLOOR_WINDOWS)
        self.floor_s: float | None = None
        self._last_decrease = float("-inf")
        self._hold = 0
        self._hold_windows = HOLD_WINDOWS
        self._last_cut: int | None = None
        if on_change is not None:
            on_change(int(self.limit))

    @property
    def slots(self) -> int:
        """The current limit as a whole number of pushes (at least 1)."""
        return max(MIN_LIMIT, int(self.limit))

    async def __aenter__(self) -> None:
        if self.in_flight >= self.slots or self._waiters:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._release()  # the slot it was handed goes to the next one
                else:
                    self._waiters.remove(waiter)
                raise
        else:
            self.in_flight += 1
        if self.in_flight > self._window_peak:
            self._window_peak = self.in_flight

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._release()

    def _release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.slots:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    def answered(self, verdict: Verdict, rtt_s: float) -> None:
        """One answer of the ERP (or a failed request) took ``rtt_s`` seconds: feed the controller."""
        if not self.adaptive:
            return
        now = self._clock()
        if now - rtt_s < self._last_decrease + (self.floor_s or 0.0):
            return  # sent before the last cut, or while the queue it left drained: already acted on
        self._window_answers += 1
        self._window_rtt += rtt_s
        if verdict.outcome.value == "retry" and speaks_for_endpoint(verdict) and not verdict.code.startswith(
                ("AuthFailure", "UnauthorizedOperation", "IpNotInWhitelist", "HTTP_401", "HTTP_403")):
            self._window_overloaded = True
        length = max(MIN_WINDOW_S, self.floor_s or 0.0)
        enough = self.slots if self._slow_start else min(self.slots, 8)  # slow start: a whole round at the limit
        if now - self._window_start >= length and self._window_answers >= enough:
            self._end_window(now)

    def _cut(self, limit: float, now: float) -> None:
        self.limit = max(float(MIN_LIMIT), limit)
        self._slow_start = False
        self._last_decrease = now
        same = self._last_cut is not None and abs(int(self.limit) - self._last_cut) <= 1
        self._hold_windows = min(MAX_HOLD_WINDOWS, self._hold_windows * 2) if same else HOLD_WINDOWS
        self._last_cut = int(self.limit)
        self._hold = self._hold_windows

    def _end_window(self, now: float) -> None:
        mean = self._window_rtt / self._window_answers
        saturated = self._window_peak >= self.slots
        if self._window_overloaded:
            self._cut(self.limit * DECREASE_RATIO, now)
        else:
            self._means.append(mean)
            floor = min(self._means)
            self.floor_s = floor
            if mean > floor * LATENCY_TOLERANCE and mean - floor > LATENCY_SLACK_S:
                rate = self._window_answers / max(1e-9, now - self._window_start)  # answers per second
                self._cut(min(self.limit - 1, max(self.limit * MAX_LATENCY_CUT, rate * floor)), now)
            elif self._hold > 0:
                self._hold -= 1
            elif saturated:
                self.limit = min(self.ceiling, self.limit * 2 if self._slow_start else self.limit + 1)
        self._window_start = now
        self._window_answers = 0
        self._window_rtt = 0.0
        self._window_peak = self.in_flight
        self._window_overloaded = False
        self._wake()
        if self._on_change is not None:
            self._on_change(self.slots)
