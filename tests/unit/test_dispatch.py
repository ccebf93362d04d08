"""KeyedDispatcher (consumer/delivery/dispatch.py): per-key order, bounded concurrency, errors reported.

Handlers are coroutines on the dispatcher's event-loop thread; blocking waits go through
``asyncio.to_thread`` so the loop keeps running."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import defaultdict

import pytest

from consumer.delivery.dispatch import KeyedDispatcher


class Recorder:
    """A handler that sleeps, records (key, seq) and checks overlap per key and overall."""

    def __init__(self, seed: int, max_sleep_s: float = 0.003) -> None:
        self.rng = random.Random(seed)
        self.max_sleep_s = max_sleep_s
        self.lock = threading.Lock()
        self.order: dict[str, list[int]] = defaultdict(list)
        self.active_keys: set[str] = set()
        self.overlaps: list[tuple[str, int]] = []
        self.running = 0
        self.max_running = 0
        self.total = 0
        self.done = threading.Event()
        self.expected = 0

    async def __call__(self, task: tuple[str, int]) -> None:
        key, seq = task
        with self.lock:
            if key in self.active_keys:
                self.overlaps.append(task)
            self.active_keys.add(key)
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            delay = self.rng.uniform(0, self.max_sleep_s)
        await asyncio.sleep(delay)
        with self.lock:
            self.order[key].append(seq)
            self.active_keys.discard(key)
            self.running -= 1
            self.total += 1
            if self.total == self.expected:
                self.done.set()


def no_error(task: object, exc: BaseException) -> None:
    raise AssertionError(f"unexpected error for {task!r}: {exc!r}")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_per_key_order_and_no_overlap(seed: int) -> None:
    rec = Recorder(seed)
    keys = [f"k{i}" for i in range(20)]
    tasks = [(k, s) for s in range(30) for k in keys]
    random.Random(seed).shuffle(tasks)
    # keep per-key submission order = seq order while interleaving keys at random
    next_seq = dict.fromkeys(keys, 0)
    ordered = []
    for k, _ in tasks:
        ordered.append((k, next_seq[k]))
        next_seq[k] += 1
    rec.expected = len(ordered)
    d: KeyedDispatcher[tuple[str, int]] = KeyedDispatcher(8, rec, no_error)
    d.start()
    try:
        for task in ordered:
            d.submit(task[0], task)
        assert rec.done.wait(timeout=20)
    finally:
        d.shutdown(wait=True)
    assert rec.overlaps == []
    assert dict(rec.order) == {k: list(range(30)) for k in keys}
    assert rec.max_running <= 8
    assert d.running == 0
    assert d.busy_keys == 0


def test_concurrency_bounded_and_reached() -> None:
    rec = Recorder(seed=9, max_sleep_s=0.0)
    barrier_hold = threading.Event()
    peak = {"running": 0}

    async def handler(task: tuple[str, int]) -> None:
        with rec.lock:
            rec.running += 1
            peak["running"] = max(peak["running"], rec.running)
        await asyncio.to_thread(barrier_hold.wait, 5)
        await asyncio.sleep(0.002)
        with rec.lock:
            rec.running -= 1
            rec.total += 1
            if rec.total == rec.expected:
                rec.done.set()

    rec.expected = 200
    d: KeyedDispatcher[tuple[str, int]] = KeyedDispatcher(4, handler, no_error)
    d.start()
    try:
        for i in range(200):
            d.submit(f"k{i % 50}", (f"k{i % 50}", i))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and d.running < 4:
            time.sleep(0.001)
        time.sleep(0.05)  # give a fifth worker every chance to (wrongly) start
        assert d.running == 4
        assert peak["running"] == 4
        assert d.busy_keys == 50
        barrier_hold.set()
        assert rec.done.wait(timeout=20)
    finally:
        barrier_hold.set()
        d.shutdown(wait=True)
    assert peak["running"] == 4
    assert d.running == 0
    assert d.busy_keys == 0


def test_single_key_runs_serially() -> None:
    rec = Recorder(seed=5)
    rec.expected = 50
    d: KeyedDispatcher[tuple[str, int]] = KeyedDispatcher(16, rec, no_error)
    d.start()
    try:
        for i in range(50):
            d.submit("only", ("only", i))
        assert rec.done.wait(timeout=10)
    finally:
        d.shutdown(wait=True)
    assert rec.max_running == 1
    assert rec.order["only"] == list(range(50))


def test_handler_exception_goes_to_on_error_and_key_continues() -> None:
    seen: list[int] = []
    errors: list[tuple[int, str]] = []
    gate = threading.Event()
    started = threading.Event()
    finished = threading.Event()

    async def handler(task: int) -> None:
        if task == 0:
            started.set()
            await asyncio.to_thread(gate.wait, 5)  # keep the key busy so 1..4 queue behind 0
        seen.append(task)
        if task in (1, 3):
            raise ValueError(f"boom {task}")
        if task == 4:
            finished.set()

    def on_error(task: int, exc: BaseException) -> None:
        errors.append((task, str(exc)))

    d: KeyedDispatcher[int] = KeyedDispatcher(2, handler, on_error)

    d.start()
    try:
        for t in range(5):
            d.submit("k", t)
        assert started.wait(timeout=5)
        assert d.busy_keys == 1
        gate.set()
        assert finished.wait(timeout=5)
    finally:
        gate.set()
        d.shutdown(wait=True)
    assert seen == [0, 1, 2, 3, 4]
    assert errors == [(1, "boom 1"), (3, "boom 3")]
    assert d.busy_keys == 0
    assert d.running == 0


def test_base_exception_is_reported_too() -> None:
    errors: list[tuple[int, type[BaseException]]] = []
    done = threading.Event()

    async def handler(task: int) -> None:
        if task == 0:
            raise KeyboardInterrupt
        done.set()

    d: KeyedDispatcher[int] = KeyedDispatcher(1, handler, lambda t, e: errors.append((t, type(e))))

    d.start()
    try:
        d.submit("k", 0)
        d.submit("k", 1)
        assert done.wait(timeout=5)
    finally:
        d.shutdown(wait=True)
    assert errors == [(0, KeyboardInterrupt)]


def test_tasks_done_at_their_turn_take_no_slot_and_keep_their_key_order() -> None:
    """Every slot held by hung tasks: the tasks ``at_turn`` settles still finish, in their key's order."""
    gate = threading.Event()
    ran: list[str] = []
    at_turn_seen: list[str] = []
    errors: list[tuple[str, str]] = []

    async def handler(task: str) -> None:
        if task.startswith("hung"):
            await asyncio.to_thread(gate.wait, 10)
        ran.append(task)

    def at_turn(task: str) -> bool:
        at_turn_seen.append(task)
        if task == "bad":
            raise ValueError("no decision")
        return task.startswith("park")

    d: KeyedDispatcher[str] = KeyedDispatcher(2, handler, lambda t, e: errors.append((t, str(e))), at_turn=at_turn)
    d.start()
    try:
        d.submit("h1", "hung-1")
        d.submit("h2", "hung-2")
        for task in ("park-a1", "park-a2", "bad"):
            d.submit("a", task)
        d.submit("b", "park-b1")
        deadline = time.monotonic() + 5
        while len(at_turn_seen) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert d.running == 2 and ran == []  # both slots still held by the hung tasks
        assert [t for t in at_turn_seen if t.endswith(("a1", "a2")) or t == "bad"] == ["park-a1", "park-a2", "bad"]
        assert errors == [("bad", "no decision")]
        gate.set()
        deadline = time.monotonic() + 5
        while len(ran) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        gate.set()
        d.shutdown(wait=True)
    assert sorted(ran) == ["hung-1", "hung-2"] and d.busy_keys == 0


def test_keys_waiting_for_a_slot_hold_no_task_and_start_in_the_order_they_came() -> None:
    """500 keys behind 2 slots: 2 asyncio tasks (not one per waiting key), keys start first come first served."""
    gate = threading.Event()
    started: list[int] = []
    finished = threading.Event()

    async def handler(task: int) -> None:
        started.append(task)
        await asyncio.to_thread(gate.wait, 10)
        if len(started) == 500:
            finished.set()

    async def tasks_on_the_loop() -> int:
        return len(asyncio.all_tasks()) - 1  # less this coroutine's own

    d: KeyedDispatcher[int] = KeyedDispatcher(2, handler, no_error)
    d.start()
    try:
        for i in range(500):
            d.submit(f"k{i}", i)
        deadline = time.monotonic() + 5
        while (d.running < 2 or d.busy_keys < 500) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (d.running, d.busy_keys) == (2, 500)
        assert d.call(tasks_on_the_loop()) == 2
        gate.set()
        assert finished.wait(timeout=10)
    finally:
        gate.set()
        d.shutdown(wait=True)
    assert started == list(range(500))
    assert (d.running, d.busy_keys) == (0, 0)


def test_shutdown_starts_none_of_the_keys_waiting_for_a_slot() -> None:
    """The slot a cancelled task gives back at shutdown goes to nobody: the waiting keys stay unfinished."""
    started: list[str] = []
    running = threading.Event()
    hold = threading.Event()

    async def handler(task: str) -> None:
        started.append(task)
        running.set()
        await asyncio.to_thread(hold.wait, 5)

    d: KeyedDispatcher[str] = KeyedDispatcher(1, handler, no_error)
    d.start()
    try:
        for key in ("a", "b", "c"):
            d.submit(key, key)
        assert running.wait(timeout=5)
        deadline = time.monotonic() + 5
        while d.busy_keys < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        d.shutdown(wait=False, timeout_s=1.0)
    finally:
        hold.set()
    assert started == ["a"]
