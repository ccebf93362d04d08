"""Key-ordered concurrency: many keys at once, one record at a time per key, in offset order.

The shape of Confluent's Parallel Consumer (key ordering): records of different keys run
concurrently, up to ``max_in_flight`` at a time; records of one key wait in a FIFO and run one
after another, so per-key order holds whatever the latencies.

All pushes run as asyncio tasks on ONE event-loop thread: measured on a 2-core machine, 32
concurrent requests cost about 1,000 µs of CPU each through an aiohttp transport against about
2,700 µs through 32 threads sharing a synchronous ``httpx.Client`` (``bench/``), and throughput
followed. The poll loop stays on its own thread and talks to this one with :meth:`submit`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Hashable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Generic, TypeVar

from .concurrency import ConcurrencyLimit

T = TypeVar("T")

HEARTBEAT_S = 0.005
"""The push loop's heartbeat: its lateness measures stalls of this process (see :meth:`stall_since`)."""

try:  # libuv's event loop: about a tenth less CPU per push than asyncio's own (bench/, issue 14)
    import uvloop

    def new_event_loop() -> asyncio.AbstractEventLoop:
        """An event loop of libuv (uvloop)."""
        return uvloop.new_event_loop()

    EVENT_LOOP = "uvloop"
except ImportError:  # pragma: no cover - a platform without uvloop wheels
    new_event_loop = asyncio.new_event_loop
    EVENT_LOOP = "asyncio"
R = TypeVar("R")

log = logging.getLogger(__name__)


class Slot:
    """The push slot a running task holds: a place in its limiter (a route's concurrency, or the dispatcher's).

    ``held`` is False while the task has given it back (:func:`slot_given_back`).
    """

    __slots__ = ("limiter", "held")

    def __init__(self, limiter: ConcurrencyLimit) -> None:
        self.limiter = limiter
        self.held = False

    async def acquire(self) -> None:
        """Wait for a place in the limiter (first come, first served)."""
        await self.limiter.__aenter__()
        self.held = True

    async def release(self) -> None:
        """Give the place back (nothing when not held)."""
        if self.held:
            self.held = False
            await self.limiter.__aexit__(None, None, None)


_SLOT: contextvars.ContextVar[Slot | None] = contextvars.ContextVar("push_slot", default=None)
"""The slot of the task running on this asyncio task (set by :meth:`KeyedDispatcher._run_chain`)."""


@asynccontextmanager
async def slot_given_back() -> AsyncIterator[None]:
    """Give the running task's push slot back for the block, and wait for one again after it.

    For a wait that concerns one record only (its own backoff after a *retry* answer): the slot
    goes to the next record of another key meanwhile, so one record the ERP cannot take never
    holds a route's concurrency (with a limit of 1, it would hold the whole route). The key's later
    records still wait: they run on this task, after it. Outside a dispatcher task: no effect.
    """
    slot = _SLOT.get()
    if slot is None or not slot.held:
        yield
        return
    await slot.release()
    yield  # raised out of (cancelled at shutdown): the task ends without a slot, nothing to give back
    await slot.acquire()


class KeyedDispatcher(Generic[T]):
    """Runs ``await handler(task)`` for submitted tasks with per-key serial order.

    A task runs holding a slot of its limiter: the one given to :meth:`submit` (a route's own
    concurrency, so one route's waiting pushes never hold another's slots), else the dispatcher's.
    A task that ``at_turn`` settles when its turn in its key's order comes takes no slot: a record
    parked at its turn does not wait behind pushes that hold every slot while their ERP is down.
    A running task can give its slot back while it waits alone (:func:`slot_given_back`).

    Args:
        max_in_flight: tasks running at once when no limiter is given (one fixed limit over all keys).
        handler: a coroutine function running one task; it should not raise (exceptions are
            passed to ``on_error``, and the key's next task still runs).
        on_error: called with ``(task, exception)`` if ``handler`` or ``at_turn`` raised.
        at_turn: called (on the loop thread) when a task's turn comes, before it waits for a slot;
            True: the task is done without running ``handler``.
    """

    def __init__(self, max_in_flight: int, handler: Callable[[T], Awaitable[None]],
                 on_error: Callable[[T, BaseException], None], at_turn: Callable[[T], bool] | None = None) -> None:
        self._handler = handler
        self._on_error = on_error
        self._at_turn = at_turn
        self._queues: dict[Hashable, deque[tuple[T, ConcurrencyLimit | None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._incoming: list[tuple[Hashable, T, ConcurrencyLimit | None]] = []
        self._incoming_lock = threading.Lock()
        self._wakeup_pending = False
        self._lags: deque[tuple[float, float]] = deque(maxlen=256)
        self._lag_total = 0.0
        self._lag_samples = 0
        self.loop = new_event_loop()
        self._limit = ConcurrencyLimit(max_in_flight)
        self._thread = threading.Thread(target=self._run_loop, name="erp-push-loop", daemon=True)
        self._started = threading.Event()
        self.running = 0
        self._closing = False
        """Set by :meth:`shutdown` before running tasks are cancelled: no waiting key starts any more."""
        self._queued_on: set[ConcurrencyLimit] = set()
        """The limits keys have waited at (their lines are emptied at shutdown)."""

    def stall_since(self, since: float) -> float:
        """The longest delay (s) of the loop's heartbeat since ``since`` (monotonic s).

        The heartbeat is a callback every :data:`HEARTBEAT_S`; how late it runs is how long the loop
        could not run anything (the GIL held by the poll thread, a GC pause, a long callback).
        """
        return max((lag for at, lag in self._lags if at >= since), default=0.0)

    def loop_lag(self) -> tuple[float, int]:
        """The heartbeat's lateness so far: (total in s, heartbeats); a difference of two is a mean."""
        return self._lag_total, self._lag_samples

    def _heartbeat(self, expected: float) -> None:
        now = time.monotonic()
        lag = now - expected
        self._lag_total += max(0.0, lag)
        self._lag_samples += 1
        if lag > 0.001:  # beyond the timers' granularity
            self._lags.append((now, lag))
        self.loop.call_at(self.loop.time() + HEARTBEAT_S, self._heartbeat, now + HEARTBEAT_S)

    def start(self) -> None:
        """Start the event-loop thread."""
        self._thread.start()
        self._started.wait(10)

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self.loop.call_soon(self._heartbeat, time.monotonic())
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, R], timeout_s: float = 30.0) -> R:
        """Run a coroutine on the loop thread and wait for its result (setup and teardown)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def submit(self, key: Hashable, task: T, limiter: ConcurrencyLimit | None = None) -> None:
        """Queue ``task`` behind earlier tasks of ``key`` (thread-safe; returns at once).

        ``limiter``: the concurrency it runs under (None: the dispatcher's ``max_in_flight``).
        Submissions made while the loop has not picked up the earlier ones yet travel together: one
        wake-up of the loop thread per batch, not per record.
        """
        with self._incoming_lock:
            self._incoming.append((key, task, limiter))
            if self._wakeup_pending:
                return
            self._wakeup_pending = True
        self.loop.call_soon_threadsafe(self._take_incoming)

    def _take_incoming(self) -> None:
        with self._incoming_lock:
            incoming, self._incoming = self._incoming, []
            self._wakeup_pending = False
        if self._closing:  # submitted while shutting down: left unfinished, like the keys waiting
            return
        for key, task, limiter in incoming:
            self._enqueue(key, task, limiter)

    def _enqueue(self, key: Hashable, task: T, limiter: ConcurrencyLimit | None) -> None:
        queue = self._queues.get(key)
        if queue is not None:
            queue.append((task, limiter))
            return
        self._queues[key] = deque()
        self._turn(key, task, limiter)

    def _turn(self, key: Hashable, task: T, limiter: ConcurrencyLimit | None) -> None:
        """The key's next task has its turn: done at once, started holding a slot, or queued at its limiter."""
        ready = self._claim(key, task, limiter)
        if ready is not None:
            self._start(key, *ready)

    def _claim(self, key: Hashable, task: T, limiter: ConcurrencyLimit | None) -> tuple[T, ConcurrencyLimit] | None:
        """The key's first task from ``task`` on that ``at_turn`` does not settle, holding a slot of its limit.

        None: the key has nothing left, or its task waits in its limit's line (no asyncio task, no
        coroutine frame: with thousands of records held, a waiting key costs a few hundred bytes) and
        is started when a slot is given back.
        """
        while self._done_at_turn(task):
            following = self._following(key)
            if following is None:
                return None
            task, limiter = following
        limit = limiter or self._limit
        if limit.try_acquire():
            return task, limit
        self._queued_on.add(limit)
        limit.queue(partial(self._start, key, task, limit))
        return None

    def _following(self, key: Hashable) -> tuple[T, ConcurrencyLimit | None] | None:
        """The key's next task (None: the key has nothing left, and is forgotten)."""
        queue = self._queues[key]
        if not queue:
            del self._queues[key]
            return None
        return queue.popleft()

    def _start(self, key: Hashable, task: T, limit: ConcurrencyLimit) -> None:
        """Run ``task`` (holding a slot of ``limit``) and the key's tasks after it, as one asyncio task."""
        chain = self.loop.create_task(self._run_chain(key, task, limit))
        self._tasks.add(chain)
        chain.add_done_callback(self._tasks.discard)

    async def _run_chain(self, key: Hashable, task: T, limit: ConcurrencyLimit) -> None:
        """Run the key's tasks while each finds a slot free at once; a key that must wait leaves the loop's tasks."""
        while True:
            slot = Slot(limit)
            slot.held = True
            token = _SLOT.set(slot)  # this asyncio task's own context: see slot_given_back()
            self.running += 1
            try:
                await self._handler(task)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - reported, never lost
                self._report(task, exc)
            finally:
                self.running -= 1
                _SLOT.reset(token)
                await slot.release()
            if self._closing:
                return
            following = self._following(key)
            ready = self._claim(key, *following) if following is not None else None
            if ready is None:  # nothing left, or in line behind the keys waiting for a slot
                return
            task, limit = ready

    def _done_at_turn(self, task: T) -> bool:
        if self._at_turn is None:
            return False
        try:
            return self._at_turn(task)
        except Exception as exc:  # noqa: BLE001 - reported like the handler's: on_error settles the task
            self._report(task, exc)
            return True

    def _report(self, task: T, exc: BaseException) -> None:
        try:
            self._on_error(task, exc)
        except BaseException:  # noqa: BLE001 - the key must not be stranded
            log.exception("error handler failed")

    @property
    def busy_keys(self) -> int:
        """Keys with a task running or queued."""
        return len(self._queues)

    def shutdown(self, wait: bool, timeout_s: float = 5.0) -> None:
        """Stop the loop; with ``wait``, first let running tasks finish (up to ``timeout_s``)."""
        if not self._thread.is_alive():
            return

        async def drain() -> None:
            deadline = self.loop.time() + timeout_s
            while wait and self._tasks and (left := deadline - self.loop.time()) > 0:
                await asyncio.wait(list(self._tasks), timeout=left)  # a key granted a slot meanwhile: a new task
            self._closing = True
            for limit in self._queued_on:  # the slots the cancelled tasks give back start nothing
                limit.forget_queued()
            pending = list(self._tasks)
            for task in pending:
                task.cancel()
            if pending:  # let the cancellations run, so no task is destroyed while pending
                await asyncio.wait(pending, timeout=1.0)

        try:
            self.call(drain(), timeout_s + 1.0)
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout_s)
