"""Pushes in flight: records handed to the push event loop, and their results handed back.

The loop submits an approved record (:meth:`InFlight.submit`); :mod:`.dispatch` runs the one push
routine (:mod:`.push`) for it on the push event loop, one record at a time per key; the result
comes back through a queue, and :meth:`InFlight.settle_results` (on the loop's thread) turns each
into its disposition (:func:`~.settle.disposition_of`) and settles it.

A push is given up (``RETRY`` or ``ABANDONED``, never a dead letter) when its partition is being
revoked or is gone, once the shutdown deadline passed (:meth:`InFlight.abandon`), or when stopping
while the ERP fails (the shared backoff is open, or this record was answered *retry*). At
shutdown, buffered records are still delivered while the ERP answers, so that few finished records
sit behind an abandoned one (each would be pushed again).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable

from .dispatch import KeyedDispatcher
from .endpoints import Endpoints
from .parking import Parking
from .push import NO_BUDGET, PARK, Budget, PushResult
from .settle import Record, Settler, disposition_of

log = logging.getLogger(__name__)


class InFlight:
    """The push side of the loop.

    Args:
        max_in_flight: pushes running at once for records without an endpoint's limiter.
        endpoints: the routes' endpoints (each record carries its own).
        settler: where results are settled.
        stopping: True once the loop is stopping.
        parking: the parking rules (None: parking off).
    """

    def __init__(self, max_in_flight: int, endpoints: Endpoints, settler: Settler, stopping: Callable[[], bool],
                 parking: Parking | None = None) -> None:
        self.endpoints = endpoints
        self.settler = settler
        self.parking = parking
        self._stopping = stopping
        self._abandon = threading.Event()
        self._results: queue.SimpleQueue[tuple[Record, PushResult]] = queue.SimpleQueue()
        self.dispatcher: KeyedDispatcher[Record] = KeyedDispatcher(
            max_in_flight, self._push, self._crashed, at_turn=self._parked_at_turn if parking is not None else None)
        for endpoint in endpoints:  # the adaptive limits do not judge windows in which this loop stalled
            endpoint.limiter.stall = self.dispatcher.stall_since
            endpoint.limiter.loop_lag = self.dispatcher.loop_lag

    @property
    def running(self) -> int:
        """Pushes running now (sending, or waiting out a backoff)."""
        return self.dispatcher.running

    def start(self) -> None:
        """Start the push event loop."""
        self.dispatcher.start()

    def submit(self, record: Record, key: Hashable) -> None:
        """Push ``record`` after the earlier records of ``key``, under its route's concurrency.

        It is outstanding until settled.
        """
        self.settler.submitted(record)
        self.dispatcher.submit(key, record, record.endpoint.limiter if record.endpoint is not None else None)

    def settle_results(self, block_s: float = 0.0) -> None:
        """Settle every result handed back (waiting up to ``block_s`` seconds for the first)."""
        try:
            record, result = self._results.get(timeout=block_s) if block_s else self._results.get_nowait()
        except queue.Empty:
            return
        while True:
            disposition, error = disposition_of(result)
            self.settler.settle(record, disposition, error=error, attempts=result.attempts, pushed=True,
                                first_failure_ms=result.first_failure_ms)
            try:
                record, result = self._results.get_nowait()
            except queue.Empty:
                return

    def abandon(self) -> None:
        """The shutdown deadline passed: every push still waiting gives up."""
        self._abandon.set()

    def close(self) -> None:
        """Close the ERP connection pools and stop the push event loop (without waiting for hung requests)."""
        try:
            self.dispatcher.call(self.endpoints.aclose(), timeout_s=2.0)
        except Exception:  # noqa: BLE001 - hung requests: the process exits anyway
            pass
        self.dispatcher.shutdown(wait=False, timeout_s=1.0)

    def _cancelled(self, record: Record) -> bool:
        if record.partition.cancelled or self._abandon.is_set():
            return True
        return self._stopping() and record.endpoint is not None and record.endpoint.backoff.failures > 0

    def _parked_at_turn(self, record: Record) -> bool:
        """Park a source record at its turn in its key's order, without a push slot, when it must be.

        Decided at its turn, so later records of its key follow it into the retry topic; without a slot,
        so it never waits behind the pushes that hold every slot of its route while its ERP is down
        (parked records retrying in place). Asked again once it holds a slot (:meth:`_push`): the
        route may have parked records by then. Returns True when the record was parked.
        """
        parking, endpoint = self.parking, record.endpoint
        if parking is None or endpoint is None or record.parked_from is not None:
            return False
        index = parking.index_of(record.partition)
        if index is None:
            return False
        reason = parking.reason(record.partition, record.key, endpoint)
        if not reason:
            return False
        record.park_reason = reason
        now_ms = int(time.time() * 1000)
        index.add(record.key, endpoint.name, now_ms)
        self._results.put((record, PushResult(None, 0, None, PARK, now_ms)))
        return True

    async def _push(self, record: Record) -> None:
        endpoint = record.endpoint
        assert endpoint is not None
        budget = NO_BUDGET
        parking = self.parking
        index = parking.index_of(record.partition) if parking is not None else None
        if index is not None and parking is not None:
            if record.parked_from is not None:  # a parked record: tried until its deadline
                budget = Budget(first_failure_ms=record.first_failure_ms or None, deadline_s=endpoint.retry_deadline_s)
            else:  # pushed, and parked if its route stops being ready while it waits
                if self._parked_at_turn(record):  # while it waited for a slot, its route parked records
                    return

                def park_now() -> bool:  # its route stopped being ready while it waited
                    record.park_reason = parking.route_reason(endpoint)
                    return bool(record.park_reason)

                budget = Budget(park_after_s=endpoint.park_after_s, park_now=park_now)
        result = await endpoint.pusher.push(record.body, record.idempotency_key, lambda: self._cancelled(record),
                                            record, stop_retrying=self._stopping, budget=budget)
        if result.ended == PARK and index is not None:
            index.add(record.key, endpoint.name, result.first_failure_ms or int(time.time() * 1000))
        self._results.put((record, result))

    def _crashed(self, record: Record, exc: BaseException) -> None:
        log.error("push worker failed: %r", exc, exc_info=exc, extra={"event": "worker_bug"})
        self._results.put((record, PushResult(None, 0)))
