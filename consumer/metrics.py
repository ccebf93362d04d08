"""Prometheus metrics and the health endpoints (/metrics, /healthz, /readyz).

Metric names and labels are an interface: the Grafana dashboard and the alert rules in
``deploy/`` depend on them. Label sets are bounded: ERP codes are capped at
:data:`MAX_DISTINCT_CODES` distinct values per metric, the rest fold into ``other``.
Hot-path children are pre-bound (a ``.labels()`` lookup costs about 2 µs, a bound ``.inc()`` 0.6).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import REGISTRY

from . import __version__
from .decode import avro_v1
from .decode.schema import STATUSES

KNOWN_STATUSES = frozenset(STATUSES)

log = logging.getLogger(__name__)

MAX_DISTINCT_CODES = 50
"""Distinct ``code`` label values kept per metric; further codes are counted as ``other``."""

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""ERP request duration buckets, seconds."""


class _CodeCap:
    """Keeps the set of code label values bounded."""

    def __init__(self, limit: int = MAX_DISTINCT_CODES) -> None:
        self.limit = limit
        self.seen: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, code: str) -> str:
        if code in self.seen:
            return code
        with self.lock:
            if code in self.seen:
                return code
            if len(self.seen) >= self.limit:
                return "other"
            self.seen.add(code)
            return code


class Metrics:
    """Every metric of one consumer process.

    Args:
        topic: the (first) source topic: the label of the pre-bound outcome counters.
        registry: where to register; the process default registry by default (which also
            carries the process_* and python_* metrics). Tests pass their own.
    """

    def __init__(self, topic: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else REGISTRY
        r = self.registry
        self.topic = topic
        self.messages = Counter("erp_sync_messages", "Records finished, by outcome.", ["topic", "outcome"], registry=r)
        self.lag = Gauge("erp_sync_consumer_lag",
                         "Messages between the committed offset and the high watermark.",
                         ["topic", "partition"], registry=r)
        self.lag_seconds = Gauge("erp_sync_consumer_lag_seconds",
                                 "Age of the oldest unfinished record in seconds (0 when caught up).",
                                 ["topic", "partition"], registry=r)
        self.erp_requests = Counter("erp_sync_erp_requests", "ERP requests by verdict, code and route.",
                                    ["result", "code", "route"], registry=r)
        self.erp_duration = Histogram("erp_sync_erp_request_duration_seconds",
                                      "ERP request duration in seconds (to the verdict), by route.", ["route"],
                                      buckets=DURATION_BUCKETS, registry=r)
        self.dead_letters = Counter("erp_sync_dead_letters", "Dead letters confirmed by the broker.",
                                    ["class", "code"], registry=r)
        self.in_flight = Gauge("erp_sync_in_flight", "ERP pushes running now (sending, or waiting out a backoff).",
                               registry=r)
        self.backoff = Gauge("erp_sync_retry_backoff_seconds",
                             "Current shared retry backoff of a route's ERP in seconds (0 when it is healthy).",
                             ["route"], registry=r)
        self.in_flight_limit = Gauge("erp_sync_in_flight_limit",
                                     "A route's concurrency limit: fixed, or found from its ERP's answers (auto).",
                                     ["route"], registry=r)
        self.circuit_open = Gauge("erp_sync_route_circuit_open",
                                  "1 while a route's ERP is not ready for anyone (its shared backoff is open).",
                                  ["route"], registry=r)
        self.parked = Gauge("erp_sync_parked_records",
                            "Records of a route waiting in the retry topic (on the partitions this process owns).",
                            ["route"], registry=r)
        self.parked_oldest_age = Gauge("erp_sync_parked_oldest_age_seconds",
                                       "Age of a route's oldest parked record since its first failure, seconds.",
                                       ["route"], registry=r)
        self.retry_deadline = Gauge("erp_sync_retry_deadline_seconds",
                                    "A route's ERP_SYNC_RETRY_DEADLINE_SECONDS: parked records older than this are "
                                    "dead-lettered (RetryDeadlineExceeded).", ["route"], registry=r)
        self.commits = Counter("erp_sync_commits", "Offset commits by result.", ["result"], registry=r)
        self.rebalances = Counter("erp_sync_rebalances", "Rebalance events.", ["event"], registry=r)
        self.last_accepted = Gauge("erp_sync_last_accepted_timestamp_seconds",
                                   "Unix time of the last push the ERP accepted.", registry=r)
        self.retention = Gauge("erp_sync_topic_retention_seconds",
                               "The source topic's retention.ms / 1000 (-1 when unlimited).", ["topic"], registry=r)
        self.assigned = Gauge("erp_sync_partitions_assigned", "Partitions assigned to this consumer.", registry=r)
        self.paused = Gauge("erp_sync_paused_partitions", "Partitions paused for backpressure.", registry=r)
        self.dead_letter_values_omitted = Counter(
            "erp_sync_dead_letter_values_omitted", "Dead letters written without their value: the dead-letter topic "
            "refused them for their size (the original stays in the source topic).", registry=r)
        self.dlq_pending = Gauge("erp_sync_dead_letters_pending",
                                 "Dead letters waiting for broker confirmation or retrying.", registry=r)
        self.broker_up = Gauge("erp_sync_broker_up", "1 while the Kafka broker answers this process's queries, "
                               "0 once it stopped answering.", registry=r)
        self.committed_offset = Gauge("erp_sync_committed_offset",
                                      "The group's committed offset of an owned partition (the first record not "
                                      "finished yet).", ["topic", "partition"], registry=r)
        self.started_without_offset = Counter("erp_sync_partitions_without_committed_offset",
                                              "Partitions this process started reading without a committed offset "
                                              "(auto.offset.reset decided where).", ["topic"], registry=r)
        self.skipped_by_status = Counter("erp_sync_skipped", "Records skipped (not APPROVED), by the writer's "
                                         "status (the v1 symbols, other statuses as other).", ["topic", "status"],
                                         registry=r)
        self.unknown_status = Counter("erp_sync_unknown_status_records", "Records whose status is outside the v1 "
                                      "set, by what ERP_SYNC_UNKNOWN_STATUS did with them (dead-letter or skip).",
                                      ["topic", "policy"], registry=r)
        self.build_info = Gauge("erp_sync_build_info", "Build information: version; avro_reader is compiled "
                                "(mypyc) or interpreted.", ["version", "avro_reader"], registry=r)
        self.build_info.labels(__version__, "compiled" if avro_v1.COMPILED else "interpreted").set(1)

        # pre-bound children for the hot path
        self._outcomes: dict[tuple[str, str], Any] = {}
        self.pushed = self.outcome(topic, "pushed")
        self.skipped = self.outcome(topic, "skipped")
        self.dead_lettered = self.outcome(topic, "dead_lettered")
        self.duplicate = self.outcome(topic, "duplicate")
        self.already_done = self.outcome(topic, "already_done")
        self._skipped_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        for status in (*STATUSES, "other"):  # exported at 0 from the start, as the outcomes are
            self.skipped_by_status.labels(topic, status)
        for policy in ("dead-letter", "skip"):
            self.unknown_status.labels(topic, policy)
        self.commit_ok = self.commits.labels("ok")
        self.commit_error = self.commits.labels("error")
        self._request_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._cap_requests = _CodeCap()
        self._cap_dead = _CodeCap()
        self._lag_children: dict[tuple[Gauge, str, int], Any] = {}

    def outcome(self, topic: str, outcome: str) -> Any:
        """The ``erp_sync_messages_total`` child of a topic and outcome (cached)."""
        child = self._outcomes.get((topic, outcome))
        if child is None:
            child = self._outcomes[(topic, outcome)] = self.messages.labels(topic, outcome)
        return child

    def erp_request(self, result: str, code: str, duration_s: float | None, route: str = "default") -> None:
        """Count one ERP request of a route (thread-safe)."""
        key = (result, code, route)
        children = self._request_children.get(key)
        if children is None:
            children = (self.erp_requests.labels(result, self._cap_requests(code), route),
                        self.erp_duration.labels(route))
            self._request_children[key] = children
        children[0].inc()
        if duration_s is not None:
            children[1].observe(duration_s)

    def skip(self, topic: str, status: str) -> None:
        """Count one skipped record of a topic under its status.

        A status outside v1 is counted as ``other`` (the label stays bounded) and, being skipped by
        ``ERP_SYNC_UNKNOWN_STATUS=skip``, as an unknown status too.
        """
        children = self._skipped_children.get((topic, status))
        if children is None:
            known = status in KNOWN_STATUSES
            children = (self.skipped_by_status.labels(topic, status if known else "other"),
                        None if known else self.unknown_status.labels(topic, "skip"))
            self._skipped_children[(topic, status)] = children
        self.outcome(topic, "skipped").inc()
        children[0].inc()
        if children[1] is not None:
            children[1].inc()

    def unknown_status_dead_lettered(self, topic: str) -> None:
        """Count one record refused for a status outside v1 (``ERP_SYNC_UNKNOWN_STATUS=dead-letter``)."""
        self.unknown_status.labels(topic, "dead-letter").inc()

    def dead_letter(self, error_class: str, code: str) -> None:
        """Count one confirmed dead letter."""
        self.dead_letters.labels(error_class, self._cap_dead(code)).inc()
        self.dead_lettered.inc()

    def set_lag(self, topic: str, partition: int, lag: int | None, lag_seconds: float | None,
                committed: int | None = None) -> None:
        """Set lag (messages), lag seconds and committed offset of one partition; None removes a series.

        Unknown is not zero: a partition whose high watermark was not read yet has no lag series.
        """
        for gauge, value in ((self.lag, lag), (self.lag_seconds, lag_seconds), (self.committed_offset, committed)):
            key = (gauge, topic, partition)
            child = self._lag_children.get(key)
            if value is None:
                if child is not None:
                    del self._lag_children[key]
                    gauge.remove(topic, str(partition))
                continue
            if child is None:
                child = self._lag_children[key] = gauge.labels(topic, str(partition))
            child.set(value)

    def drop_partition(self, topic: str, partition: int) -> None:
        """Remove the per-partition series of a partition this consumer no longer owns."""
        self.set_lag(topic, partition, None, None, None)


class Health:
    """Liveness and readiness, as read by /healthz and /readyz.

    Args:
        max_poll_age_s: /healthz fails when the poll loop has not polled for this many seconds.
    """

    def __init__(self, max_poll_age_s: float = 60.0) -> None:
        self.max_poll_age_s = max_poll_age_s
        self.last_poll = time.monotonic()
        self.assigned = 0
        self.joined = False
        self.broker_up = False
        self.started = False
        self.stopping = False
        self.reason = "connecting to the Kafka broker"

    def polled(self) -> None:
        """Record that the loop polled just now."""
        self.last_poll = time.monotonic()

    def liveness(self) -> tuple[bool, str]:
        """Return ``(ok, reason)`` for /healthz."""
        age = time.monotonic() - self.last_poll
        if age > self.max_poll_age_s:
            return False, f"poll loop stalled: last poll {age:.0f} s ago (limit {self.max_poll_age_s:.0f} s)"
        return True, f"ok: last poll {age:.1f} s ago"

    def readiness(self) -> tuple[bool, str]:
        """Return ``(ok, reason)`` for /readyz: a reachable broker and a group membership.

        A member with no partition (more replicas than partitions) is ready: failing it would stall
        a rolling update whose surge pod gets nothing to do.
        """
        if self.stopping:
            return False, "shutting down"
        if not self.broker_up:
            return False, f"broker not reachable: {self.reason}"
        if not self.joined:
            return False, "waiting for a partition assignment (joining the consumer group)"
        if self.assigned == 0:
            return True, "ok: member of the group, 0 partitions assigned (more consumers than partitions)"
        return True, f"ok: {self.assigned} partition{'' if self.assigned == 1 else 's'} assigned"


def serve(host: str, port: int, health: Health, registry: CollectorRegistry | None = None
          ) -> ThreadingHTTPServer:
    """Serve /metrics, /healthz and /readyz on a daemon thread.

    Returns:
        The server (``server.server_address[1]`` is the bound port; ``shutdown()`` stops it).

    Raises:
        OSError: the port is taken (the message names it).
    """
    reg = registry if registry is not None else REGISTRY

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(reg), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/livez"):
                self._probe(health.liveness)
            elif path == "/readyz":
                self._probe(health.readiness)
            else:
                self._send(404, b"not found: try /metrics, /healthz, /readyz\n", "text/plain")

        def _probe(self, check: Callable[[], tuple[bool, str]]) -> None:
            ok, reason = check()
            self._send(200 if ok else 503, (reason + "\n").encode(), "text/plain; charset=utf-8")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port} for /metrics (ERP_SYNC_METRICS_PORT): {exc}") from exc
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
