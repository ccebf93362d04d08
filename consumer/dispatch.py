"""Key-ordered concurrency: many keys at once, one record at a time per key, in offset order.

The shape of Confluent's Parallel Consumer (key ordering): records of different keys run on up to
``max_in_flight`` worker threads; records of one key wait in a FIFO and run one after another on
the same thread, so per-key order holds whatever the latencies.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")


class KeyedDispatcher(Generic[T]):
    """Runs ``handler(task)`` for submitted tasks with per-key serial order.

    Args:
        max_in_flight: worker threads, i.e. tasks running at once.
        handler: runs one task; must not raise (exceptions are passed to ``on_error``).
        on_error: called with ``(task, exception)`` if ``handler`` raised.
    """

    def __init__(self, max_in_flight: int, handler: Callable[[T], None],
                 on_error: Callable[[T, BaseException], None]) -> None:
        self._handler = handler
        self._on_error = on_error
        self._lock = threading.Lock()
        self._queues: dict[Hashable, deque[T]] = {}
        self._executor = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="erp-push")
        self.running = 0

    def submit(self, key: Hashable, task: T) -> None:
        """Queue ``task`` behind earlier tasks of ``key``; start it now if the key is idle."""
        with self._lock:
            queue = self._queues.get(key)
            if queue is not None:
                queue.append(task)
                return
            self._queues[key] = deque()
        self._executor.submit(self._run, key, task)

    def _run(self, key: Hashable, task: T) -> None:
        while True:
            with self._lock:
                self.running += 1
            try:
                self._handler(task)
            except BaseException as exc:  # noqa: BLE001 - reported, never lost
                try:
                    self._on_error(task, exc)
                except BaseException:  # noqa: BLE001 - the key must not be stranded
                    logging.getLogger(__name__).exception("error handler failed")
            finally:
                with self._lock:
                    self.running -= 1
            with self._lock:
                queue = self._queues[key]
                if not queue:
                    del self._queues[key]
                    return
                task = queue.popleft()

    @property
    def busy_keys(self) -> int:
        """Keys with a task running or queued."""
        return len(self._queues)

    def shutdown(self, wait: bool) -> None:
        """Stop the workers (queued tasks still run their handler, which should abandon them)."""
        self._executor.shutdown(wait=wait, cancel_futures=False)
