"""The tools' pushes: ``run``'s push routine under ``run``'s key-ordered dispatcher.

``replay`` and ``dlq replay`` deliver the way ``erp-sync run`` does (issue "on-call defects",
Operations tools): every record goes through the one push routine
(:class:`~consumer.delivery.push.Pusher`: shared backoff, rate limit, verdict), run as coroutines
on one event-loop thread by :class:`~consumer.delivery.dispatch.KeyedDispatcher`: up to
``max_in_flight`` records at once, one at a time per key, in the order they were submitted. The
reading thread submits records and settles their results (:meth:`ToolPushes.settle`), as ``run``'s
poll loop does; nothing here retries on its own.

Each record goes to its route's endpoint (``ERP_SYNC_ROUTES_FILE``, as ``run`` routes it: the
record's topic, FlowCode and headers; :meth:`consumer.routes.RouteTable.require`); each route has its
own ERP client and its own shared backoff, so a failing route does not hold the others back.

The reader never gets more than ``max_outstanding`` records ahead of the ERP: :meth:`ToolPushes.submit`
settles results until there is room, so a window of millions of records is never held in memory.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import httpx
from confluent_kafka import Message

from ..delivery.dead_letters import H_ROUTE, headers_of
from ..delivery.dispatch import KeyedDispatcher
from ..delivery.push import Pusher, PushResult
from ..delivery.retry import RateLimiter, SharedBackoff
from ..erp.client import ErpClient
from ..erp.verdict import Verdict
from ..routes import Route, RouteTable, load_routes
from ..settings import Settings
from .console import Progress

log = logging.getLogger(__name__)

OUTSTANDING_PER_PUSH = 4
"""Records the reader may hold per push in flight (submitted and not settled yet)."""


class ProgressNotes:
    """The tools' push observer: a note above the progress bar on every backoff (at most one per second)."""

    def __init__(self, progress: Progress, every_s: float = 1.0) -> None:
        self.progress = progress
        self.every_s = every_s
        self._last = -every_s
        self._lock = threading.Lock()

    def answered(self, verdict: Verdict, duration_s: float) -> None:
        """Nothing: the summary counts the results."""

    def backing_off(self, verdict: Verdict, delay_s: float, failures: int, context: object) -> None:
        """Say that the ERP answered retry and when the next attempt goes."""
        self._note(f"ERP answered retry ({verdict.code}: {verdict.message or 'no message'}); every push waits "
                   f"{delay_s:.1f} s (failure {failures} in a row)")

    def retrying(self, verdict: Verdict, delay_s: float, retries: int, context: object) -> None:
        """One record waits before its next attempt."""
        self._note(f"ERP answered retry for one record ({verdict.code}: {verdict.message or 'no message'}); "
                   f"it waits {delay_s:.1f} s, the others go on")

    def recovered(self, failures: int, failing_for_s: float) -> None:
        """Say that pushes resume."""
        self._note(f"ERP answers again after {failures} failed attempt{'s' if failures != 1 else ''} in a row "
                   f"({failing_for_s:.1f} s)")

    def _note(self, text: str) -> None:
        with self._lock:  # notes come from the push thread; one per period
            now = time.monotonic()
            if now - self._last < self.every_s:
                return
            self._last = now
        self.progress.note(text)


@dataclass(slots=True)
class _Job:
    body: bytes
    idempotency_key: str
    done: Callable[[PushResult], None]
    pusher: Pusher


class ToolPushes:
    """Concurrent, key-ordered pushes for one tool run; use it as a context manager.

    Args:
        settings: the ERP settings (URL, TLS, auth, timeouts, backoff).
        progress: where backoff notes go.
        max_in_flight: pushes running at once (``ERP_SYNC_MAX_IN_FLIGHT`` or ``--max-in-flight``).
        max_requests_per_second: the request-rate limit (``ERP_SYNC_ERP_MAX_REQUESTS_PER_SECOND`` or
            ``--max-requests-per-second``); None for none.
        transport: the ERP client's httpx transport (None: the aiohttp-backed one; tests pass a mock).
        max_outstanding: records submitted and not settled yet before :meth:`submit` waits
            (default :data:`OUTSTANDING_PER_PUSH` per push in flight).
        routes: the routes (default: :func:`~consumer.routes.load_routes` of ``settings``).

    Raises:
        ConfigError: the routes file cannot be read or breaks a rule.
    """

    def __init__(self, settings: Settings, progress: Progress, max_in_flight: int,
                 max_requests_per_second: float | None, transport: httpx.AsyncBaseTransport | None = None,
                 max_outstanding: int | None = None, routes: RouteTable | None = None) -> None:
        self.max_in_flight = max_in_flight
        self.max_outstanding = max_outstanding or max(1, OUTSTANDING_PER_PUSH * max_in_flight)
        self.routes = routes if routes is not None else load_routes(settings)
        self.transport = transport
        self.rate = RateLimiter(max_requests_per_second) if max_requests_per_second else None
        self.notes = ProgressNotes(progress)
        self._pushers: dict[str, Pusher] = {}
        self.dispatcher: KeyedDispatcher[_Job] = KeyedDispatcher(max_in_flight, self._push, self._crashed)
        self._results: queue.SimpleQueue[tuple[_Job, PushResult]] = queue.SimpleQueue()
        self._cancel = threading.Event()
        self.outstanding = 0
        self.peak_running = 0
        self.tick: Callable[[], None] | None = None
        """Called between waits while :meth:`submit` or :meth:`finish` wait for results (commits, producer polls)."""

    def __enter__(self) -> ToolPushes:
        self.dispatcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pusher(self, route: Route) -> Pusher:
        """The pusher of ``route`` (its own ERP client and backoff; made on first use)."""
        pusher = self._pushers.get(route.name)
        if pusher is None:
            rs = route.settings
            pusher = Pusher(ErpClient(rs, max_connections=self.max_in_flight, transport=self.transport),
                            SharedBackoff(rs.retry_backoff_initial_seconds, rs.retry_backoff_max_seconds,
                                          rs.retry_after_max_seconds),
                            self.rate, self.notes)
            self._pushers[route.name] = pusher
        return pusher

    def route_of(self, msg: Message, flow_code: int, topic: str | None = None) -> Route:
        """The route of a record as ``run`` routes it.

        A dead letter or parked record that names its route (header ``erp_sync.route``) keeps it while
        that route exists; otherwise the first route matching ``topic`` (default: the record's topic),
        ``flow_code`` and the record's headers.

        Raises:
            ValidationError: ``NoRoute``: no route matches and there is no default route.
        """
        headers = dict(headers_of(msg))
        named = headers.get(H_ROUTE)
        if named is not None:
            route = self.routes.by_name.get(named.decode("utf-8", "replace"))
            if route is not None:
                return route
        return self.routes.require(topic or str(msg.topic()), flow_code, headers if self.routes.needs_headers else None)

    def submit(self, key: Hashable, body: bytes, idempotency_key: str, done: Callable[[PushResult], None],
               route: Route | None = None) -> None:
        """Push ``body`` to ``route`` (default: the first route) after the earlier records of ``key``.

        ``done(result)`` runs in :meth:`settle`. Waits (settling results) while :attr:`max_outstanding`
        records are not settled yet.
        """
        pusher = self.pusher(route if route is not None else self.routes.routes[0])
        while self.outstanding >= self.max_outstanding:
            self.settle(block_s=0.05)
            if self.tick is not None:
                self.tick()
        self.outstanding += 1
        self.dispatcher.submit(key, _Job(body, idempotency_key, done, pusher))

    def settle(self, block_s: float = 0.0) -> int:
        """Run ``done`` for every result handed back (waiting up to ``block_s`` s for the first); how many."""
        count = 0
        try:
            job, result = self._results.get(timeout=block_s) if block_s else self._results.get_nowait()
        except queue.Empty:
            return 0
        while True:
            self.outstanding -= 1
            count += 1
            job.done(result)
            try:
                job, result = self._results.get_nowait()
            except queue.Empty:
                return count

    def finish(self, wait_s: float = 0.1) -> None:
        """Settle until nothing is outstanding."""
        while self.outstanding:
            self.settle(block_s=wait_s)
            if self.tick is not None:
                self.tick()

    def cancel(self) -> None:
        """Pushes waiting for the backoff, the rate limit or their own retry give up (Ctrl-C).

        A request already sent still gets its answer (up to the ERP timeout).
        """
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancel.is_set()

    def close(self) -> None:
        """Give up what is left, close the connection pool and stop the event loop."""
        self._cancel.set()
        try:
            for pusher in self._pushers.values():
                self.dispatcher.call(pusher.erp.aclose(), timeout_s=5.0)
        except Exception:  # noqa: BLE001 - a hung request: the tool exits anyway
            pass
        self.dispatcher.shutdown(wait=False, timeout_s=1.0)

    async def _push(self, job: _Job) -> None:
        running = self.dispatcher.running
        if running > self.peak_running:
            self.peak_running = running
        result = await job.pusher.push(job.body, job.idempotency_key, self._cancel.is_set)
        self._results.put((job, result))

    def _crashed(self, job: _Job, exc: BaseException) -> None:
        log.error("push failed: %r", exc, exc_info=exc)
        self._results.put((job, PushResult(None, 0)))
