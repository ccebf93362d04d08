"""How many pushes of a route run at once: a fixed number, or found from what the ERP answers.

``ERP_SYNC_MAX_IN_FLIGHT=auto`` (the default) lets each route find the concurrency its ERP sustains,
in the manner of Vector's adaptive request concurrency and Netflix's concurrency-limits (TCP
congestion control applied to requests), judged by what more concurrency buys:

* **Measure.** A *phase* at one limit starts one round trip after the limit changed (until then
  answers still come at the former limit's pace) and lasts :data:`PHASE_ROUNDS` round trips and as
  many times the limit in answers (at least :data:`MIN_PHASE_ANSWERS`; in slow start
  :data:`SLOW_START_ROUNDS` and 16); it gives the rate of answers (per second) and their mean
  latency at that limit.
* **Probe.** From a measured limit, try more: ×2 while in slow start (from :data:`INITIAL_LIMIT`),
  ×:data:`PROBE_FACTOR` after. A probe whose first answers (a quarter of the limit, at least 8) show
  a latency risen by more than half the limit's growth (and :data:`GUARD_SLACK_S`) is given up at
  once: the extra pushes mostly wait. A probe
  is kept when the rate grew by at least
  :data:`PROBE_EFFICIENCY` of the share the limit grew (an ERP that serves more when asked more),
  up to the knee when it grew by less than :data:`KNEE_EFFICIENCY` of it: the rate reached × the
  latency at the limit it was probed from (by Little's law, what that rate needs without the
  probe's queue); and when its answers waited longer than at the measured limit, beyond what this
  process's own event loop got later (``loop_lag``; :data:`QUEUE_RISE`, :data:`GUARD_SLACK_S`,
  :data:`QUEUE_SIGNIFICANCE`), to the probe's limit less the pushes that wait at the ERP (rate ×
  wait), × :data:`KNEE_MARGIN` (an ERP whose capacity lies between two doublings, 24 from 16 to 32,
  serves half more and was kept at 32 before);
  otherwise the limit goes back to where it was measured, and the next probe waits
  :data:`HOLD_PHASES` phases, twice as long each time a probe from the same limit fails (up to
  :data:`MAX_HOLD_PHASES`): an ERP at its capacity is probed past it ever more rarely. Rising
  latency alone proves nothing: this process's own overhead grows with load while the ERP still
  serves more (measured: 256 in flight at 50 ms gave 3,223 pushes/s at 80 ms each).
* **Cut** when the ERP says it is overloaded (HTTP 429, 502, 503, 504, ``RequestLimitExceeded``,
  ``ServiceUnavailable``, ``ResourceUnavailable``…, timeouts, refused or reset connections): back to
  the measured limit during a probe (a failed probe), × :data:`DECREASE_RATIO` otherwise;
  or when, at a measured limit, the latency rose by more than
  :data:`LATENCY_GUARD` (the ERP became slower for everyone): to what its former latency carried,
  by Little's law (limit × former / now).

A number instead of ``auto`` keeps a fixed limit (the old behaviour).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import NamedTuple

from ..erp.verdict import Verdict, speaks_for_endpoint

INITIAL_LIMIT = 8
MIN_LIMIT = 1
DECREASE_RATIO = 0.75
"""The cut on an overload answer."""
PROBE_FACTOR = 1.25
"""A probe after slow start: the limit × this (at least one more)."""
PROBE_EFFICIENCY = 0.25
"""A probe is kept when the rate grew by at least this share of the limit's growth…"""
KNEE_EFFICIENCY = 0.5
"""…and, when the rate grew by less than this share, only up to the knee…"""
QUEUE_RISE = 0.1
"""…or when the latency of its answers rose by this share (and :data:`GUARD_SLACK_S`) more than this
process's own event loop got slower: a queue at the ERP. Then the knee less :data:`KNEE_MARGIN`…"""
QUEUE_SIGNIFICANCE = 4.0
"""…and by this many standard errors of the two mean latencies (an ERP whose latency varies widely)."""
KNEE_MARGIN = 0.9
"""…of it: this process's own share of the latency (a few ms of the round trip) counts in the knee as
slots the ERP does not hold, and they reach it in a burst."""
LATENCY_GUARD = 0.5
"""At a measured limit, a latency this share above the measured one is an ERP that became slower…"""
GUARD_SLACK_S = 0.005
"""…when it is also this many seconds above it (at 1 ms, this process's own jitter is no news)."""
MIN_PHASE_ANSWERS = 64
PHASE_ROUNDS = 4
"""A phase lasts at least this many round trips, and this many times the limit in answers…"""
SLOW_START_ROUNDS = 2
"""…in slow start, this many (a doubling that queues is given up early anyway)."""
RTT_PHASES = 100
"""Phases whose mean latency is remembered (the last one sets how long a change takes to show)."""
HOLD_PHASES = 4
"""Phases at a measured limit before the next probe; doubled (up to :data:`MAX_HOLD_PHASES`) each
time a probe from the same limit fails."""
MAX_HOLD_PHASES = 128


class Measured(NamedTuple):
    """A limit's figures over a phase.

    ``rate`` answers per second, ``rtt`` their mean latency (s), ``lag`` this process's mean
    event-loop lateness (s), ``spread`` the squared standard error of that mean latency (s²).
    """

    limit: float
    rate: float
    rtt: float
    lag: float
    spread: float

    def blend(self, phase: Measured) -> Measured:
        """These figures moved a quarter of the way to a later phase's at the same limit."""
        return self._replace(rate=self.rate + 0.25 * (phase.rate - self.rate),
                             rtt=self.rtt + 0.25 * (phase.rtt - self.rtt),
                             lag=self.lag + 0.25 * (phase.lag - self.lag))


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
        loop_lag: the event loop's lateness so far, ``(total s, samples)``: the part of a latency
            rise this process added itself, not a queue at the ERP.
    """

    def __init__(self, limit: int, adaptive: bool = False, ceiling: int = 256,
                 clock: Callable[[], float] = time.monotonic, on_change: Callable[[int], None] | None = None,
                 on_cut: Callable[[int, int, str], None] | None = None,
                 stall: Callable[[float], float] | None = None,
                 loop_lag: Callable[[], tuple[float, int]] | None = None) -> None:
        self.adaptive = adaptive
        self.ceiling = max(1, ceiling)
        self.limit = float(min(limit, self.ceiling) if adaptive else limit)
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None] | Callable[[], None]] = deque()
        """Who waits for a slot, first come first served: a coroutine in ``async with`` (its future),
        or a :meth:`queue` caller (its callback)."""
        self._clock = clock
        self._on_change = on_change
        self._on_cut = on_cut
        self.stall = stall
        self.loop_lag = loop_lag
        self._lag_mark = (0.0, 0)
        self._slow_start = True
        self._probing = False
        self._ref: Measured | None = None
        """The measured limit and its figures."""
        self._hold = 0
        self._hold_phases = HOLD_PHASES
        self._failed_from: float | None = None
        self._rtts: deque[float] = deque(maxlen=RTT_PHASES)
        self._changed = clock()
        self._probe_answers = 0
        self._probe_rtt = 0.0
        self._phase_start = self._changed
        self._phase_answers = 0
        self._phase_rtt = 0.0
        self._phase_rtt2 = 0.0
        self._phase_peak = 0
        if on_change is not None:
            on_change(int(self.limit))

    @property
    def slots(self) -> int:
        """The current limit as a whole number of pushes (at least 1)."""
        return max(MIN_LIMIT, int(self.limit))

    def try_acquire(self) -> bool:
        """Take a slot now if one is free and nobody waits for one (True); else take nothing (False)."""
        if self.in_flight >= self.slots or self._waiters:
            return False
        self._take()
        return True

    def _take(self) -> None:
        """One more slot in use (and the phase's peak of slots in use)."""
        self.in_flight += 1
        if self.in_flight > self._phase_peak:
            self._phase_peak = self.in_flight

    def queue(self, granted: Callable[[], None]) -> None:
        """Wait for a slot without a coroutine: ``granted()`` is called holding it, in turn with ``async with``.

        For a caller that would otherwise keep a task alive only to wait (the dispatcher: one waiting
        key costs a deque entry, not an asyncio task). ``granted`` runs on the event loop inside the
        release that freed the slot; it must not raise, and must release the slot when done.
        """
        self._waiters.append(granted)

    def forget_queued(self) -> int:
        """Drop the :meth:`queue` callbacks still waiting (their owner shuts down); how many were dropped."""
        kept: deque[asyncio.Future[None] | Callable[[], None]] = deque(
            w for w in self._waiters if isinstance(w, asyncio.Future))
        dropped = len(self._waiters) - len(kept)
        self._waiters = kept
        return dropped

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
            self._take()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._release()

    def _release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def answered(self, verdict: Verdict, rtt_s: float) -> None:
        """One answer of the ERP (or a failed request) took ``rtt_s`` seconds: feed the controller."""
        if not self.adaptive:
            return
        now = self._clock()
        if verdict.outcome.value == "retry" and speaks_for_endpoint(verdict) and not verdict.code.startswith(
                ("AuthFailure", "UnauthorizedOperation", "IpNotInWhitelist", "HTTP_401", "HTTP_403")):
            if now - rtt_s >= self._changed:  # sent under this limit: not a cut already made
                self._overloaded(verdict.code, now)
            return
        if self._probing and self._ref is not None and now - rtt_s >= self._changed:
            self._probe_answers += 1  # sent under the probe: does it queue? (judged from its first answers)
            self._probe_rtt += rtt_s
            if self._probe_answers >= max(8, self.slots // 4):
                ref_limit, ref_rtt = self._ref.limit, self._ref.rtt
                rtt = self._probe_rtt / self._probe_answers
                if rtt - ref_rtt > GUARD_SLACK_S and rtt > ref_rtt * (1 + 0.5 * (self.limit / ref_limit - 1)):
                    if self._stalled(rtt):  # blind: back to safety, try again soon
                        return self._retreat(ref_limit, now)
                    return self._probe_failed(ref_limit, now)  # the extra pushes mostly wait: a queue
        if now < self._phase_start:
            return  # the round trip after a change: answers still come at the rate of the former limit
        self._phase_answers += 1
        self._phase_rtt += rtt_s
        self._phase_rtt2 += rtt_s * rtt_s
        rtt = self._phase_rtt / self._phase_answers
        rounds, least = (SLOW_START_ROUNDS, 16) if self._slow_start else (PHASE_ROUNDS, MIN_PHASE_ANSWERS)
        if self._phase_answers >= max(least, rounds * self.slots) and now - self._phase_start >= rounds * rtt:
            self._end_phase(now)

    def _set(self, limit: float, now: float) -> None:
        self.limit = min(float(self.ceiling), max(float(MIN_LIMIT), limit))
        self._changed = now
        self._probe_answers = 0
        self._probe_rtt = 0.0
        self._start_phase(now + (self._rtts[-1] if self._rtts else 0.0))  # counts after one round trip
        if self._on_change is not None:
            self._on_change(self.slots)
        self._wake()

    def _start_phase(self, now: float) -> None:
        if self.loop_lag is not None:
            self._lag_mark = self.loop_lag()
        self._phase_start = now
        self._phase_answers = 0
        self._phase_rtt = 0.0
        self._phase_rtt2 = 0.0
        self._phase_peak = self.in_flight

    def _cut(self, limit: float, now: float, why: str) -> None:
        self._slow_start = self._probing = False
        self._ref = None  # measured again at the new limit
        self._hold = self._hold_phases
        self._set_and_tell(limit, now, why)

    def _set_and_tell(self, limit: float, now: float, why: str | None) -> None:
        """Set the limit; a cut (``why`` given) is told to ``on_cut``."""
        before = self.slots
        self._set(limit, now)
        if why is not None and self._on_cut is not None:
            self._on_cut(before, self.slots, why)

    def _overloaded(self, code: str, now: float) -> None:
        why = f"the ERP answered {code} (overloaded)"
        if self._probing and self._ref is not None:  # the probe overloaded it: back to where it was measured
            return self._probe_failed(self._ref.limit, now, why)
        self._cut(self.limit * DECREASE_RATIO, now, why)

    def _probe_failed(self, ref_limit: float, now: float, why: str | None = None) -> None:
        """A probe from ``ref_limit`` bought nothing: back to it, the next probe later each time it fails.

        ``why``: the probe overloaded the ERP (a cut, told to ``on_cut``).
        """
        self._hold_phases = min(MAX_HOLD_PHASES, self._hold_phases * 2) if self._failed_from == ref_limit \
            else HOLD_PHASES
        self._failed_from = ref_limit
        self._slow_start = self._probing = False
        self._hold = self._hold_phases
        self._set_and_tell(ref_limit, now, why)

    def _phase_lag(self) -> float:
        """The mean lateness (s) of this process's event loop over the phase (0 without ``loop_lag``)."""
        if self.loop_lag is None:
            return 0.0
        total, samples = self.loop_lag()
        return (total - self._lag_mark[0]) / (samples - self._lag_mark[1]) if samples > self._lag_mark[1] else 0.0

    def _end_phase(self, now: float) -> None:
        rtt = self._phase_rtt / self._phase_answers
        spread = max(0.0, self._phase_rtt2 / self._phase_answers - rtt * rtt) / self._phase_answers
        lag = self._phase_lag()
        rate = self._phase_answers / max(1e-9, now - self._phase_start)  # answers per second
        phase = Measured(self.limit, rate, rtt, lag, spread)
        saturated = self._phase_peak >= self.slots
        if self._stalled(rtt):  # this process was held up (the GIL, a GC pause): its figures say nothing of the ERP
            if self._probing and self._ref is not None:
                return self._retreat(self._ref.limit, now)
            return self._start_phase(now)
        self._rtts.append(rtt)
        if self._probing and self._ref is not None:
            ref_limit, ref_rate, ref_rtt = self._ref.limit, self._ref.rate, self._ref.rtt
            if rate >= ref_rate * (1 + PROBE_EFFICIENCY * (self.limit / ref_limit - 1)):
                # it serves more when asked more: keep it, up to the knee (by Little's law, what the rate
                # reached needs at the former latency; past it the extra pushes only wait)
                self._failed_from = None
                self._hold_phases = HOLD_PHASES
                knee = rate * ref_rtt
                efficiency = (rate / ref_rate - 1) / (self.limit / ref_limit - 1)
                # the wait its answers show beyond what this process's own loop added: a queue at the ERP
                wait = rtt - ref_rtt - max(0.0, lag - self._ref.lag)
                noise = QUEUE_SIGNIFICANCE * (spread + self._ref.spread) ** 0.5
                if wait > max(GUARD_SLACK_S, ref_rtt * QUEUE_RISE, noise):
                    knee = (self.slots - self.slots / rtt * wait) * KNEE_MARGIN  # less the pushes waiting there
                elif efficiency >= KNEE_EFFICIENCY:
                    knee = self.limit
                if knee < self.limit - 1:
                    self._probing = self._slow_start = False
                    self._ref = None
                    return self._set(max(ref_limit, knee), now)
                self._ref = phase
                return self._probe(now)
            return self._probe_failed(ref_limit, now)  # no more served: back to the measured limit
        if self._ref is not None and rtt > self._ref.rtt * (1 + LATENCY_GUARD) and rtt - self._ref.rtt > GUARD_SLACK_S:
            ref_rtt = self._ref.rtt
            return self._cut(self.limit * ref_rtt / rtt, now,
                             f"latency {rtt * 1000:.1f} ms against {ref_rtt * 1000:.1f} ms at this limit "
                             "(the ERP became slower)")
        if not saturated:
            return self._start_phase(now)  # the ERP is not kept busy: nothing to learn
        self._ref = phase if self._ref is None else self._ref.blend(phase)
        if self._hold > 0:
            self._hold -= 1
            return self._start_phase(now)
        return self._probe(now)

    def _retreat(self, ref_limit: float, now: float) -> None:
        """A probe that cannot be judged goes back to the measured limit and is tried again soon."""
        self._probing = False
        self._hold = 1
        self._set(ref_limit, now)

    def _stalled(self, rtt: float) -> bool:
        """Whether this process's event loop stalled during the phase by a sizeable part of ``rtt``."""
        return self.stall is not None and self.stall(self._phase_start - rtt) > max(GUARD_SLACK_S, 0.1 * rtt)

    def _probe(self, now: float) -> None:
        if self.limit >= self.ceiling:
            self._probing = False
            return self._start_phase(now)
        self._probing = True
        self._set(max(self.limit + 1, self.limit * (2 if self._slow_start else PROBE_FACTOR)), now)

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.slots:
            waiter = self._waiters.popleft()
            if isinstance(waiter, asyncio.Future):
                if not waiter.done():
                    self._take()
                    waiter.set_result(None)
            else:
                self._take()
                waiter()
