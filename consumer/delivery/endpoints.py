"""One endpoint per route: its ERP client, shared backoff, rate limit, concurrency and push routine.

Route A failing never slows route B by a single request (issue "no head-of-line blocking"): each
route has its own backoff (probing its own ERP), its own rate limit and its own concurrency limit
(:mod:`.concurrency`: slots only its pushes hold, so B's pushes never wait behind A's waiting ones;
fixed, or found from its ERP's answers with ``ERP_SYNC_MAX_IN_FLIGHT=auto``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..erp.client import ErpClient
from ..erp.verdict import code_matches
from ..logs import Throttle, plural
from ..metrics import Metrics
from ..routes import Route, RouteTable
from .concurrency import INITIAL_LIMIT, ConcurrencyLimit
from .push import Pusher, PushLog
from .retry import RateLimiter, SharedBackoff

if TYPE_CHECKING:  # httpx only when a transport is given (unit tests): not loaded by `run`
    import httpx

log = logging.getLogger("consumer.delivery.pipeline")

CUT_LOG_EVERY_S = 60.0
"""At most one line per route about its adaptive in-flight limit being cut, per this many seconds."""

AUTH_CODES = ("AuthFailure", "UnauthorizedOperation", "IpNotInWhitelist", "HTTP_401", "HTTP_403")
"""Answers that say our credentials or address are refused: only an operator can fix them."""


class Endpoint:
    """A route's way to its ERP.

    Args:
        route: the route (its settings carry the endpoint's).
        metrics: request counters by route, the route's backoff and circuit gauges.
        transport: the httpx transport (None: the client's default).
    """

    def __init__(self, route: Route, metrics: Metrics, transport: httpx.AsyncBaseTransport | None = None) -> None:
        s = route.settings
        self.route = route
        self.name = route.name
        self.park_after_s = s.park_after_seconds
        self.retry_deadline_s = s.retry_deadline_seconds
        self.erp = ErpClient(s, max_connections=s.in_flight_limit, transport=transport)
        circuit = metrics.circuit_open.labels(route.name)
        backoff_gauge = metrics.backoff.labels(route.name)

        def changed(delay_s: float) -> None:
            backoff_gauge.set(delay_s)
            circuit.set(1 if delay_s > 0 else 0)

        self.backoff = SharedBackoff(s.retry_backoff_initial_seconds, s.retry_backoff_max_seconds,
                                     s.retry_after_max_seconds, on_change=changed)
        backoff_gauge.set(0)
        circuit.set(0)
        metrics.retry_deadline.labels(route.name).set(s.retry_deadline_seconds)
        self.rate = RateLimiter(s.erp_max_requests_per_second) if s.erp_max_requests_per_second else None
        limit_gauge = metrics.in_flight_limit.labels(route.name)
        cuts = Throttle(CUT_LOG_EVERY_S)

        def cut(before: int, after: int, why: str) -> None:
            held = cuts.allow("cut")
            if held is not None:
                log.info("in-flight limit of route %s cut from %d to %d: %s%s", route.name, before, after, why,
                         f" ({plural(held, 'more cut')} in the last {CUT_LOG_EVERY_S:.0f} s)" if held else "",
                         extra={"event": "in_flight_limit_cut", "route": route.name, "limit": after})

        self.limiter = ConcurrencyLimit(INITIAL_LIMIT if s.adaptive_in_flight else s.in_flight_limit,
                                        s.adaptive_in_flight, s.in_flight_limit, on_change=limit_gauge.set,
                                        on_cut=cut)
        self.log = PushLog(metrics, log, route=route.name, limiter=self.limiter)
        self.pusher = Pusher(self.erp, self.backoff, self.rate, self.log)

    @property
    def failing_for(self) -> float:
        """Seconds its ERP has not been ready for anyone (the shared backoff open), 0 when it is."""
        return time.monotonic() - self.backoff.failing_since if self.backoff.failures else 0.0

    @property
    def refuses_credentials(self) -> bool:
        """Its backoff is open on an authentication or allow-list answer: park at once."""
        return bool(self.backoff.failures) and code_matches(self.log.last_backoff_code, AUTH_CODES)

    async def aclose(self) -> None:
        """Close the connection pool (on the push event loop)."""
        await self.erp.aclose()


class Endpoints:
    """Every route's endpoint, by route name."""

    def __init__(self, table: RouteTable, metrics: Metrics, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.table = table
        self.by_name = {r.name: Endpoint(r, metrics, transport) for r in table.routes}

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self.by_name.values())

    def __getitem__(self, name: str) -> Endpoint:
        return self.by_name[name]

    def get(self, name: str) -> Endpoint | None:
        """The endpoint of a route, or None when no route has that name (any more)."""
        return self.by_name.get(name)

    @property
    def failures(self) -> int:
        """Failures in a row over every route whose backoff is open (0 when all are healthy)."""
        return sum(e.backoff.failures for e in self)

    async def aclose(self) -> None:
        """Close every connection pool."""
        for endpoint in self:
            await endpoint.aclose()
