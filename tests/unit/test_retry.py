"""SharedBackoff and RateLimiter (consumer/delivery/retry.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from consumer.delivery.retry import Permit, RateLimiter, SharedBackoff


class FakeClock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def never() -> bool:
    return False


def always() -> bool:
    return True


def make(rng: float = 1.0, initial: float = 1.0, max_s: float = 8.0, ra_max: float = 30.0
         ) -> tuple[SharedBackoff, FakeClock, list[float]]:
    clock = FakeClock()
    changes: list[float] = []
    b = SharedBackoff(initial, max_s, ra_max, on_change=changes.append, rng=lambda: rng, clock=clock)
    return b, clock, changes


def acq(limiter: SharedBackoff | RateLimiter, *args: Any, **kwargs: Any) -> Any:
    """Run one ``acquire`` coroutine to its end (every test owns its event loop)."""
    return asyncio.run(limiter.acquire(*args, **kwargs))


def probe(b: SharedBackoff, clock: FakeClock) -> Permit:
    """Move the fake clock to the deadline and take the probe permit."""
    clock.t = max(clock.t, b._not_before)
    p = acq(b, never)
    assert p is not None and p.probe is True
    return p


@pytest.mark.parametrize(("rng", "expected"), [(1.0, [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]),
                                               (0.0, [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]),
                                               (0.5, [0.75, 1.5, 3.0, 6.0, 6.0, 6.0])])
def test_delays_double_to_max(rng: float, expected: list[float]) -> None:
    b, clock, changes = make(rng)
    p = acq(b, never)
    assert p == Permit(0, False)
    delays = [b.failure(p)]
    for _ in range(5):
        delays.append(b.failure(probe(b, clock)))
    assert delays == expected
    assert changes == expected
    assert b.failures == 6
    assert b.delay_s == expected[-1]


def test_deadline_is_clock_plus_delay() -> None:
    b, clock, _ = make(1.0)
    clock.t = 100.0
    b.failure(acq(b, never))
    assert b._not_before == 101.0

    def tick() -> bool:
        clock.t += 0.25
        return False

    p = acq(b, tick, poll_s=0.001)
    # the probe was only handed out once the clock reached 101.0
    assert p == Permit(1, True)
    assert clock.t == 101.0


def test_stale_permit_failure_does_not_escalate() -> None:
    b, clock, changes = make(1.0)
    p1 = acq(b, never)
    p2 = acq(b, never)
    assert p1 == p2 == Permit(0, False)
    assert b.failure(p1) == 1.0
    assert b.failure(p2) is None  # the same period, already escalated
    assert (b.failures, b.epoch, b.delay_s, changes) == (1, 1, 1.0, [1.0])
    pr = probe(b, clock)
    assert b.failure(Permit(0, False)) is None
    assert b.failure(pr) == 2.0
    assert changes == [1.0, 2.0]


def test_retry_after_wins_when_larger_and_is_capped() -> None:
    b, clock, changes = make(1.0, initial=1.0, max_s=8.0, ra_max=30.0)
    assert b.failure(acq(b, never), retry_after_s=5.0) == 5.0
    assert b.failure(probe(b, clock), retry_after_s=0.5) == 2.0  # step wins
    assert b.failure(probe(b, clock), retry_after_s=1000.0) == 30.0  # capped
    assert b.failure(probe(b, clock), retry_after_s=float("inf")) == 30.0
    assert b.failure(probe(b, clock), retry_after_s=None) == 8.0
    assert changes == [5.0, 2.0, 30.0, 30.0, 8.0]


def test_success_resets() -> None:
    b, clock, changes = make(1.0)
    b.failure(acq(b, never))
    b.failure(probe(b, clock))
    pr = probe(b, clock)
    b.success(pr)
    assert (b.failures, b.delay_s) == (0, 0.0)
    assert changes == [1.0, 2.0, 0.0]
    p = acq(b, never)
    assert p == Permit(b.epoch, False)
    b.success(p)  # healthy already: no change reported
    assert changes == [1.0, 2.0, 0.0]
    # the next failure starts from the initial delay again
    assert b.failure(p) == 1.0


def test_a_stale_success_does_not_end_the_backoff() -> None:
    """An answer to a request sent before the failure (an ERP going down still answers those) changes
    nothing; only the probe's answer ends the backoff."""
    b, clock, changes = make(1.0)
    old, other = acq(b, never), acq(b, never)
    clock.t = 5.0
    assert b.failure(old) == 1.0
    assert b.success(other) == 0
    assert (b.failures, b.delay_s, changes) == (1, 1.0, [1.0])
    assert isinstance(b._try_acquire(), float)  # still backing off: nobody may send before the deadline
    p = probe(b, clock)
    assert b.success(p) == 1
    assert (b.failures, b.delay_s, changes) == (0, 0.0, [1.0, 0.0])
    assert (clock.t, b.failing_since) == (6.0, 5.0)  # when the backoff began, kept after it ended


def test_only_one_probe_while_failing_fake_clock() -> None:
    b, clock, _ = make(1.0)
    b.failure(acq(b, never))
    first = probe(b, clock)
    calls = 0

    def stop_after_three() -> bool:
        nonlocal calls
        calls += 1
        return calls > 3

    assert acq(b, stop_after_three, poll_s=0.001) is None
    assert calls == 4
    b.failure(first)
    assert probe(b, clock) == Permit(2, True)


def test_acquire_returns_none_when_stopped() -> None:
    b, clock, _ = make(1.0)
    assert acq(b, always) is None
    b.failure(acq(b, never))
    assert acq(b, always) is None
    clock.t = 10.0
    assert acq(b, always) is None


def test_one_probe_at_a_time_among_concurrent_pushes() -> None:
    async def scenario() -> None:
        b = SharedBackoff(0.001, 0.002, rng=lambda: 1.0)
        stopped = False
        got: asyncio.Queue[Permit | None] = asyncio.Queue()

        async def worker() -> None:
            await got.put(await b.acquire(lambda: stopped, poll_s=0.002))

        assert b.failure(await b.acquire(never)) == 0.001
        tasks = [asyncio.create_task(worker()) for _ in range(8)]
        p1 = await asyncio.wait_for(got.get(), 5)
        assert p1 is not None and p1.probe is True and p1.epoch == 1
        await asyncio.sleep(0.15)  # the deadline passed long ago; nobody else may have a permit
        assert got.empty()
        assert b.failure(p1) == 0.002
        p2 = await asyncio.wait_for(got.get(), 5)
        assert p2 is not None and p2.probe is True and p2.epoch == 2
        await asyncio.sleep(0.15)
        assert got.empty()
        b.success(p2)
        rest = [await asyncio.wait_for(got.get(), 5) for _ in range(6)]
        assert rest == [Permit(3, False)] * 6
        stopped = True
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert got.empty()

    asyncio.run(scenario())


def test_waiting_pushes_stop_when_asked() -> None:
    async def scenario() -> list[Permit | None]:
        b = SharedBackoff(60.0, 60.0, rng=lambda: 1.0)
        b.failure(await b.acquire(never))
        stop = asyncio.Event()
        waiting = asyncio.create_task(b.acquire(stop.is_set, poll_s=0.01))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        stop.set()
        return [await asyncio.wait_for(waiting, 2)]

    assert asyncio.run(scenario()) == [None]


# --- RateLimiter ----------------------------------------------------------------------------


def test_rate_limiter_tokens_per_second() -> None:
    clock = FakeClock()
    r = RateLimiter(5, clock=clock)
    assert r.capacity == 5
    assert [acq(r, always) for _ in range(6)] == [True] * 5 + [False]
    clock.t = 0.2
    assert [acq(r, always) for _ in range(2)] == [True, False]
    clock.t = 1.2
    assert [acq(r, always) for _ in range(6)] == [True] * 5 + [False]
    clock.t = 101.2  # idle for long: the bucket holds at most one second's worth
    assert [acq(r, always) for _ in range(6)] == [True] * 5 + [False]


def test_rate_limiter_burst_and_slow_rates() -> None:
    clock = FakeClock()
    r = RateLimiter(10, burst=2, clock=clock)
    assert [acq(r, always) for _ in range(3)] == [True, True, False]
    slow = RateLimiter(0.5, clock=clock)
    assert slow.capacity == 1.0
    assert [acq(slow, always) for _ in range(2)] == [True, False]
    clock.t += 1.0
    assert acq(slow, always) is False
    clock.t += 1.0
    assert acq(slow, always) is True


def test_rate_limiter_waits_for_a_token() -> None:
    clock = FakeClock()
    r = RateLimiter(64, burst=1, clock=clock)
    assert acq(r, never) is True
    calls = 0

    def tick() -> bool:
        nonlocal calls
        calls += 1
        clock.t += 1 / 128  # half a token per check
        return False

    assert acq(r, tick) is True
    assert calls == 2
    assert clock.t == 2 / 128
