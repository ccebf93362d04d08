"""The per-route concurrency limit (consumer/delivery/concurrency.py): fixed, and adaptive (``auto``).

A fake clock and a simulated ERP (:class:`Erp`: a base latency, a capacity beyond which pushes queue
FIFO, jitter, a refusal threshold) drive the adaptive limit as a discrete-event simulation: every
slot is kept busy (:func:`simulate`), each answer feeds the limit when it comes back.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import statistics

import pytest

from consumer.delivery.concurrency import DECREASE_RATIO, INITIAL_LIMIT, ConcurrencyLimit
from consumer.erp.verdict import Outcome, Verdict

OK = Verdict(Outcome.ACCEPTED, "OK")
OVERLOADED = Verdict(Outcome.RETRY, "HTTP_503")
TIMEOUT = Verdict(Outcome.RETRY, "Timeout", transport=True)
ONE_BODY = Verdict(Outcome.RETRY, "InternalError")  # about one record: not overload
AUTH = Verdict(Outcome.RETRY, "AuthFailure.SignatureFailure")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def adaptive(ceiling: int = 256) -> tuple[ConcurrencyLimit, Clock, list[int]]:
    clock, changes = Clock(), []
    limit = ConcurrencyLimit(INITIAL_LIMIT, adaptive=True, ceiling=ceiling, clock=clock, on_change=changes.append)
    return limit, clock, changes


class Erp:
    """A simulated ERP: serves ``capacity`` pushes at ``base_s`` each (± ``jitter``), queues the rest (FIFO).

    ``refuse_beyond``: answer HTTP 503 at once to a push arriving when that many are already there.
    ``answer``: the verdict of every served push.
    """

    def __init__(self, base_s: float, capacity: int | None = None, refuse_beyond: int | None = None,
                 answer: Verdict = OK, jitter: float = 0.0) -> None:
        self.base_s, self.capacity, self.refuse_beyond, self.answer = base_s, capacity, refuse_beyond, answer
        self.jitter, self.rng = jitter, random.Random(7)
        self.server_free: list[float] = []  # when each of the capacity's servers is next free
        self.present = 0
        self.latencies: list[float] = []

    def arrive(self, now: float) -> tuple[float, Verdict]:
        """When the answer to a push arriving at ``now`` leaves, and what it says."""
        if self.refuse_beyond is not None and self.present >= self.refuse_beyond:
            return now + 0.001, OVERLOADED
        service = self.base_s * (1 + self.rng.uniform(-self.jitter, self.jitter))
        if self.capacity is None:
            done = now + service
        else:
            if len(self.server_free) < self.capacity:
                self.server_free.append(now)
            self.server_free.sort()
            start = max(now, self.server_free[0])
            done = start + service
            self.server_free[0] = done
        self.latencies.append(done - now)
        self.present += 1
        return done, self.answer


def simulate(limit: ConcurrencyLimit, clock: Clock, erp: Erp, seconds: float, work: int | None = None) -> list[int]:
    """Keep every slot busy (or ``work`` pushes at most) for ``seconds``; the limit after each answer."""
    seen: list[int] = []

    async def run() -> None:
        end = clock.now + seconds
        pending: list[tuple[float, int, float, Verdict]] = []
        seq = 0

        async def fill() -> None:
            nonlocal seq
            while limit.in_flight < limit.slots and (work is None or limit.in_flight < work):
                await limit.__aenter__()
                done, verdict = erp.arrive(clock.now)
                seq += 1
                heapq.heappush(pending, (done, seq, clock.now, verdict))

        await fill()
        while pending and clock.now < end:
            done, _, sent, verdict = heapq.heappop(pending)
            clock.now = done
            if verdict is not OVERLOADED:
                erp.present -= 1
            limit.answered(verdict, done - sent)
            await limit.__aexit__(None, None, None)
            seen.append(limit.slots)
            await fill()
        for _ in pending:  # still out at the end: their slots come back unanswered
            await limit.__aexit__(None, None, None)

    asyncio.run(run())
    return seen


def test_slow_start_doubles_each_round_trip_up_to_the_ceiling() -> None:
    limit, clock, changes = adaptive(ceiling=100)
    simulate(limit, clock, Erp(0.05), seconds=2.0)
    assert limit.slots == 100
    assert sorted(set(changes)) == [8, 16, 32, 64, 100]  # doubling, then the ceiling


def test_an_erp_that_is_not_kept_busy_gets_no_more_slots() -> None:
    limit, clock, _ = adaptive()
    simulate(limit, clock, Erp(0.05), seconds=1.0, work=3)
    assert limit.slots == INITIAL_LIMIT


@pytest.mark.parametrize("capacity", [16, 32, 40, 120])
def test_a_queueing_erp_is_not_pushed_past_its_capacity(capacity: int) -> None:
    """The stub's capacity model: beyond ``capacity`` pushes wait, and more in flight buys nothing."""
    limit, clock, _ = adaptive()
    erp = Erp(0.05, capacity=capacity, jitter=0.01)  # 1 %: answers do not come back in lockstep
    seen = simulate(limit, clock, erp, seconds=20.0)
    late = seen[len(seen) // 2:]  # after convergence
    assert 0.9 * capacity <= statistics.mean(late) <= 1.1 * capacity, (capacity, statistics.mean(late))
    tail = sorted(erp.latencies[len(erp.latencies) // 2:])
    assert tail[int(len(tail) * 0.95)] <= 1.2 * 0.05
    if capacity <= 40:  # issue 14: at capacity 32 the ERP-side p99 stays within 1.2 x its base latency
        assert tail[int(len(tail) * 0.99)] <= 1.2 * 0.05
    assert len(erp.latencies) / 20.0 >= 0.9 * capacity / 0.05  # and it is kept busy: 90 % of what it serves


@pytest.mark.parametrize("capacity", [24, 56])
def test_a_capacity_between_two_doublings_of_the_slow_start_is_not_overshot(capacity: int) -> None:
    """16 → 32 against 24 (or 32 → 64 against 56) serves half (or three quarters) more: still a queue."""
    limit, clock, _ = adaptive()
    seen = simulate(limit, clock, Erp(0.05, capacity=capacity, jitter=0.05), seconds=20.0)
    late = seen[len(seen) // 2:]
    assert 0.85 * capacity <= statistics.mean(late) <= capacity, (capacity, statistics.mean(late))


def test_this_process_slowing_down_with_load_is_not_a_queue_at_the_erp() -> None:
    """Latency that grows with this process's own loop lateness (reported by ``loop_lag``) is not the ERP's."""
    limit, clock, changes = adaptive()
    own_s = 0.0001  # this process adds 0.1 ms per push in flight, and its loop is that late
    lateness = [0.0, 0]

    def loop_lag() -> tuple[float, int]:
        lateness[0] += own_s * limit.in_flight
        lateness[1] += 1
        return lateness[0], lateness[1]

    limit.loop_lag = loop_lag
    erp = Erp(0.05)
    arrive = erp.arrive
    erp.arrive = lambda now: (lambda done, verdict: (done + own_s * limit.in_flight, verdict))(*arrive(now))
    simulate(limit, clock, erp, seconds=5.0)
    assert changes == [8, 16, 32, 64, 128, 256]  # slow start all the way: no knee taken for a queue


@pytest.mark.parametrize("jitter", [0.05, 0.2, 0.5])
def test_a_jittery_erp_is_neither_starved_nor_overloaded(jitter: float) -> None:
    """Latency that varies by ±``jitter`` per push is noise, not a queue: no cut spiral to 1."""
    free, clock, _ = adaptive()
    simulate(free, clock, Erp(0.05, jitter=jitter), seconds=20.0)
    assert free.slots >= 0.9 * 256
    limit, clock, _ = adaptive()
    seen = simulate(limit, clock, Erp(0.05, capacity=32, jitter=jitter), seconds=20.0)
    assert 0.6 * 32 <= statistics.mean(seen[len(seen) // 2:]) <= 1.05 * 32


def test_an_erp_that_answers_503_beyond_its_capacity_is_held_near_it() -> None:
    limit, clock, _ = adaptive()
    seen = simulate(limit, clock, Erp(0.05, refuse_beyond=50), seconds=20.0)
    late = seen[len(seen) // 2:]
    assert 30 <= statistics.mean(late) <= 60, statistics.mean(late)


def test_an_erp_that_can_take_more_gets_more() -> None:
    limit, clock, _ = adaptive(ceiling=512)
    simulate(limit, clock, Erp(0.05, capacity=512), seconds=5.0)
    assert limit.slots >= 400


@pytest.mark.parametrize("verdict", [ONE_BODY, AUTH, Verdict(Outcome.REJECT, "InvalidParameter")])
def test_answers_about_one_record_or_credentials_are_not_overload(verdict: Verdict) -> None:
    limit, clock, _ = adaptive(ceiling=64)
    simulate(limit, clock, Erp(0.05, answer=verdict), seconds=1.0)
    assert limit.slots == 64


@pytest.mark.parametrize("verdict", [OVERLOADED, TIMEOUT, Verdict(Outcome.RETRY, "RequestLimitExceeded"),
                                     Verdict(Outcome.RETRY, "InternalError", retry_after_s=2.0)])
def test_overload_answers_cut_the_limit_by_a_quarter(verdict: Verdict) -> None:
    limit, clock, changes = adaptive(ceiling=64)
    simulate(limit, clock, Erp(0.05), seconds=2.0)
    assert limit.slots == 64  # measured at the ceiling, not probing
    changes.clear()
    simulate(limit, clock, Erp(0.05, answer=verdict), seconds=0.05 * 1.01)  # one round trip of overload
    assert changes[0] == int(64 * DECREASE_RATIO) == 48  # once for every answer sent before the cut


def test_an_overloaded_probe_goes_back_to_the_measured_limit_and_waits_longer_each_time() -> None:
    limit, clock, changes = adaptive(ceiling=256)
    seen = simulate(limit, clock, Erp(0.05, refuse_beyond=50), seconds=30.0)
    assert max(seen[len(seen) // 2:]) <= 64 and 35 <= statistics.mean(seen[len(seen) // 2:]) <= 52
    probes = [c for i, c in enumerate(changes) if i and c > changes[i - 1]]
    assert len(probes) < 20  # probes past the capacity get rarer


def test_a_fixed_limit_never_moves_and_holds_the_pushes_beyond_it() -> None:
    limit = ConcurrencyLimit(3)

    async def run() -> tuple[int, int, int]:
        peak = 0
        running = 0

        async def push() -> None:
            nonlocal peak, running
            async with limit:
                running += 1
                peak = max(peak, running)
                await asyncio.sleep(0.001)
                running -= 1
            limit.answered(OVERLOADED, 5.0)

        await asyncio.gather(*(push() for _ in range(20)))
        return peak, limit.slots, limit.in_flight

    assert asyncio.run(run()) == (3, 3, 0)


def test_a_cancelled_waiter_gives_its_slot_to_the_next() -> None:
    limit = ConcurrencyLimit(1)

    async def run() -> tuple[bool, int]:
        await limit.__aenter__()
        first = asyncio.create_task(limit.__aenter__())
        second = asyncio.create_task(limit.__aenter__())
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.sleep(0)
        await limit.__aexit__(None, None, None)
        await asyncio.wait_for(second, 1.0)  # the cancelled waiter did not keep the slot
        done = second.done()
        await limit.__aexit__(None, None, None)
        return done, limit.in_flight

    assert asyncio.run(run()) == (True, 0)


def test_queued_callbacks_and_async_with_share_one_first_come_first_served_line() -> None:
    """A waiter without a coroutine (:meth:`ConcurrencyLimit.queue`) gets its slot in turn with ``async with``."""
    order: list[str] = []

    async def scenario() -> None:
        limit = ConcurrencyLimit(1)
        assert limit.try_acquire()

        async def user(name: str) -> None:
            async with limit:
                order.append(name)
                await asyncio.sleep(0)

        first = asyncio.create_task(user("a"))
        await asyncio.sleep(0)
        limit.queue(lambda: order.append("b"))
        third = asyncio.create_task(user("c"))
        await asyncio.sleep(0)
        assert not limit.try_acquire()  # others wait: no slot taken past them
        limit._release()  # the first holder: "a" is next
        await first
        assert order == ["a", "b"] and limit.in_flight == 1  # "b" was handed the slot "a" gave back
        limit._release()  # "b" is done
        await third
        assert order == ["a", "b", "c"] and limit.in_flight == 0

    asyncio.run(scenario())
