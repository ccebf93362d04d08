"""How many pushes of a route run at once: a fixed number, or found from what the ERP answers.

``ERP_SYNC_MAX_IN_FLIGHT=auto`` (the default) lets each route find the concurrency its ERP sustains,
in the manner of Vector's adaptive request concurrency and Netflix's concurrency-limits (TCP
congestion control applied to requests): a feedback loop over windows of about one round trip.

* **Slow start**: while the ERP answers at its usual latency and every slot is used, the limit
  doubles each window, from :data:`INITIAL_LIMIT` up to ``ERP_SYNC_MAX_IN_FLIGHT_CEILING``.
* **Additive increase** after the first congestion: +1 per window in which the slots were all used
  and the latency stayed at its usual level; none for :data:`HOLD_WINDOWS` windows after a cut, so an
  ERP at its capacity is probed past it rarely (an FIFO queue at the ERP makes only the pushes beyond
  its capacity wait, and they wait a whole service time: the ERP's p99 latency is what a probe costs).
* **Decrease** when the ERP says it is overloaded (HTTP 429, 502, 503, 504, ``RequestLimitExceeded``,
  ``ServiceUnavailable``, ``ResourceUnavailable``…, timeouts, refused or reset connections): ×
  :data:`DECREASE_RATIO`; or when a window's mean latency rose above the usual one by more than the
  noise (:data:`LATENCY_TOLERANCE`, :data:`LATENCY_SLACK_S`, :data:`DEVIATION_SCALE` × the usual
  deviation of uncongested windows, as Vector's adaptive request concurrency compares against its RTT
  deviation): a queue building at the ERP shows as latency before it shows as errors. The limit is
  then cut to what the usual latency carries, by Little's law: limit × usual / mean, less
  :data:`LATENCY_TOLERANCE` (at least half).

One congestion event cuts once: answers to pushes sent before the last cut, or within one usual
latency after it (while the queue it left drains), are not counted (TCP's fast recovery does the
same with losses within a round trip of the cut).

The usual latency is a low percentile (:data:`USUAL_PERCENTILE`) of the last :data:`USUAL_WINDOWS`
window means measured at or below the limit of the last cut (probes above it are what is judged,
never what judges: a limit one or two above the ERP's capacity would otherwise drag the usual
latency up with it): not fooled by one lucky window, and it follows an ERP that became slower for
good (the cuts bring the limit back where it learns).

A number instead of ``auto`` keeps a fixed limit (the old behaviour).
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
"""The cut on an overload answer."""
MAX_LATENCY_CUT = 0.5
"""A latency cut keeps at least this share of the limit."""
LATENCY_TOLERANCE = 0.02
"""A window's mean latency more than this share above the usual latency is a queue…"""
LATENCY_SLACK_S = 0.0005
"""…and more than this many seconds above it…"""
DEVIATION_SCALE = 4.0
"""…and more than this many times the median deviation of the learned windows from it (noise is not
a queue)."""
MIN_LEARNED_WINDOWS = 5
"""The first windows are learned whatever their latency (the baseline); they are judged all the same."""
WINDOW_ANSWERS = 8
"""Answers a window needs before it is judged (at a limit below it, a window spans several round trips)."""
USUAL_WINDOWS = 200
USUAL_PERCENTILE = 0.1
"""The usual latency: this percentile of the last :data:`USUAL_WINDOWS` window means."""
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
        on_cut: told ``(before, after, why)`` on every cut (a log line).
        stall: the longest delay of this process's event loop (s) since a monotonic time: a window
            in which the loop itself was held up (the GIL, a GC pause) measures this process, not
            the ERP, and is not judged.
    """

    def __init__(self, limit: int, adaptive: bool = False, ceiling: int = 256,
                 clock: Callable[[], float] = time.monotonic, on_change: Callable[[int], None] | None = None,
                 on_cut: Callable[[int, int, str], None] | None = None,
                 stall: Callable[[float], float] | None = None) -> None:
        self.adaptive = adaptive
        self.ceiling = max(1, ceiling)
        self.limit = float(min(limit, self.ceiling) if adaptive else limit)
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._clock = clock
        self._on_change = on_change
        self._on_cut = on_cut
        self.stall = stall
        self._overload_code = ""
        self._slow_start = True
        self._window_start = clock()
        self._window_answers = 0
        self._window_rtt = 0.0
        self._window_peak = 0
        self._window_overloaded = False
        self.usual_s: float | None = None
        """The usual window mean latency (s): a low percentile of the recent window means."""
        self._means: deque[float] = deque(maxlen=USUAL_WINDOWS)
        self._deviation_s = 0.0
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
        if now - rtt_s < self._last_decrease + (self.usual_s or 0.0):
            return  # sent before the last cut, or while the queue it left drained: already acted on
        self._window_answers += 1
        self._window_rtt += rtt_s
        if verdict.outcome.value == "retry" and speaks_for_endpoint(verdict) and not verdict.code.startswith(
                ("AuthFailure", "UnauthorizedOperation", "IpNotInWhitelist", "HTTP_401", "HTTP_403")):
            self._window_overloaded = True
            self._overload_code = verdict.code
        length = max(MIN_WINDOW_S, self.usual_s or 0.0)
        enough = max(self.slots, WINDOW_ANSWERS) if self._slow_start else WINDOW_ANSWERS  # slow start: a whole round
        if now - self._window_start >= length and self._window_answers >= enough:
            self._end_window(now)

    def _cut(self, limit: float, now: float, why: str) -> None:
        before = self.slots
        self.limit = max(float(MIN_LIMIT), limit)
        if self._on_cut is not None:
            self._on_cut(before, self.slots, why)
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
            self._cut(self.limit * DECREASE_RATIO, now, f"the ERP answered {self._overload_code} (overloaded)")
        elif self.stall is not None and self.stall(self._window_start) > max(
                LATENCY_SLACK_S, (self.usual_s or 0.0) * LATENCY_TOLERANCE):
            pass  # this process was held up during the window: its latencies say nothing of the ERP
        else:
            usual = self.usual_s
            congested = usual is not None and mean - usual > max(
                usual * LATENCY_TOLERANCE, LATENCY_SLACK_S, self._deviation_s * DEVIATION_SCALE)
            # learn the first windows whatever they say (a baseline is needed), then only those without a
            # queue at or below the limit of the last cut (probes above it are judged, never judges)
            if len(self._means) < MIN_LEARNED_WINDOWS or not congested and (
                    self._last_cut is None or self.limit <= self._last_cut):
                self._learn(mean)
            if congested and usual is not None:  # a queue: cut to what the usual latency carries (Little's law)
                # the window saw the limit of a round trip ago: a margin lands the cut below the capacity
                target = self.limit * usual / mean * (1 - LATENCY_TOLERANCE)
                self._cut(min(self.limit - 1, max(self.limit * MAX_LATENCY_CUT, target)), now,
                          f"latency {mean * 1000:.1f} ms against a usual {usual * 1000:.1f} ms (a queue at the ERP)")
                return self._next_window(now)
            if self._hold > 0:
                self._hold -= 1
            elif saturated:
                self.limit = min(self.ceiling, self.limit * 2 if self._slow_start else self.limit + 1)
        self._next_window(now)

    def _learn(self, mean: float) -> None:
        self._means.append(mean)
        ordered = sorted(self._means)
        usual = self.usual_s = ordered[int(len(ordered) * USUAL_PERCENTILE)]
        deviations = sorted(abs(m - usual) for m in ordered)
        self._deviation_s = deviations[len(deviations) // 2]  # the median: a few odd windows do not count

    def _next_window(self, now: float) -> None:
        self._window_start = now
        self._window_answers = 0
        self._window_rtt = 0.0
        self._window_peak = self.in_flight
        self._window_overloaded = False
        self._wake()
        if self._on_change is not None:
            self._on_change(self.slots)
