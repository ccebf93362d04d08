"""The ERP client and the one push routine, through ``httpx.MockTransport`` (no socket).

The real HTTP path (aiohttp transport, TLS, stale keep-alive connections) is proven against real
servers in tests/integration/test_security.py and tests/faults/test_faults_infra.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from typing import Any

import aiohttp
import httpx
import orjson
import pytest

from consumer.delivery.push import EXPIRED, PARK, Budget, Pusher, PushResult
from consumer.delivery.retry import SharedBackoff
from consumer.erp.client import ErpClient, _aiohttp_error
from consumer.erp.verdict import Outcome, Verdict
from consumer.settings import load_settings

URL = "https://erp.test/apaas/push"


def client(handler: Any, **env: str) -> ErpClient:
    settings = load_settings({"ERP_SYNC_ERP_URL": URL, **env})
    return ErpClient(settings, max_connections=4, transport=httpx.MockTransport(handler))


def ok(_request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=b'{"Response": {"RequestId": "r-1", "Data": {}}}')


def error(code: str, status: int = 200, **headers: str) -> httpx.Response:
    body = {"Response": {"RequestId": "r-2", "Error": {"Code": code, "Message": f"{code}!"}}}
    return httpx.Response(status, content=orjson.dumps(body), headers=headers)


def test_a_push_sends_the_body_and_the_contract_headers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return ok(request)

    erp = client(handler, ERP_SYNC_ERP_AUTH_HEADER_VALUE="Bearer t0k3n", ERP_SYNC_ERP_HMAC_SECRET="s3cret")
    verdict = asyncio.run(erp.post_async(b'{"FlowCode":1}', "1-2"))
    assert verdict == Verdict(Outcome.ACCEPTED, "OK", "", "r-1")
    (request,) = seen
    assert (request.method, str(request.url), request.content) == ("POST", URL, b'{"FlowCode":1}')
    assert request.headers["content-type"] == "application/json; charset=utf-8"
    assert request.headers["idempotency-key"] == "1-2"
    assert request.headers["authorization"] == "Bearer t0k3n"
    t, v1 = (part.split("=", 1)[1] for part in request.headers["x-erp-sync-signature"].split(","))
    assert v1 == hmac.new(b"s3cret", t.encode() + b"." + b'{"FlowCode":1}', hashlib.sha256).hexdigest()


@pytest.mark.parametrize(("answer", "outcome", "code"), [
    (error("InternalError.Db"), Outcome.RETRY, "InternalError.Db"),
    (error("InvalidParameter.FlowCode"), Outcome.REJECT, "InvalidParameter.FlowCode"),
    (httpx.Response(503), Outcome.RETRY, "HTTP_503"),
    (httpx.Response(200, content=b"<html>"), Outcome.RETRY, "InvalidResponse"),
])
def test_the_verdict_comes_from_status_and_body(answer: httpx.Response, outcome: Outcome, code: str) -> None:
    verdict = asyncio.run(client(lambda _r: answer).post_async(b"{}", "k"))
    assert (verdict.outcome, verdict.code) == (outcome, code)


def test_transport_failures_are_retry_verdicts_named_after_the_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    assert asyncio.run(client(refuse).post_async(b"{}", "k")).code == "ConnectError"
    assert asyncio.run(client(slow).post_async(b"{}", "k")).code == "Timeout"


def test_a_request_on_a_stale_connection_is_sent_again_once() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise httpx.RemoteProtocolError("Server disconnected", request=request)
        return ok(request)

    assert asyncio.run(client(handler).post_async(b"{}", "k")).outcome is Outcome.ACCEPTED
    assert len(calls) == 2


@pytest.mark.parametrize(("cause", "expected"), [
    (aiohttp.ServerDisconnectedError(), httpx.RemoteProtocolError),
    (aiohttp.ClientOSError(104, "Connection reset by peer"), httpx.ReadError),
    (aiohttp.ServerTimeoutError("timeout"), httpx.ConnectTimeout),
])
def test_httpx_aiohttp_connect_timeouts_are_renamed_after_their_cause(cause: Exception, expected: type) -> None:
    """httpx-aiohttp maps every aiohttp connection error to ConnectTimeout; the code must say what happened."""
    mapped = httpx.ConnectTimeout("x")
    mapped.__cause__ = cause
    assert type(_aiohttp_error(mapped)) is expected


def fast_backoff() -> SharedBackoff:
    return SharedBackoff(0.001, 0.004, rng=lambda: 1.0)


class Notes:
    def __init__(self) -> None:
        self.answers: list[str] = []
        self.backoffs: list[tuple[str, int]] = []
        self.retries: list[tuple[str, int]] = []
        self.recoveries: list[int] = []

    def answered(self, verdict: Verdict, duration_s: float) -> None:
        self.answers.append(verdict.code)

    def backing_off(self, verdict: Verdict, delay_s: float, failures: int, context: object) -> None:
        self.backoffs.append((verdict.code, failures))

    def retrying(self, verdict: Verdict, delay_s: float, retries: int, context: object) -> None:
        self.retries.append((verdict.code, retries))

    def recovered(self, failures: int, failing_for_s: float) -> None:
        self.recoveries.append(failures)


def test_the_push_routine_retries_until_accepted_and_reports_each_step() -> None:
    answers = iter([error("InternalError"), httpx.Response(503), error("RequestLimitExceeded", **{"Retry-After": "0"}),
                    None])

    def handler(request: httpx.Request) -> httpx.Response:
        return next(answers) or ok(request)

    notes = Notes()
    pusher = Pusher(client(handler), fast_backoff(), observer=notes)
    result = asyncio.run(pusher.push(b"{}", "k", lambda: False))
    assert (result.verdict, result.attempts, result.ended) == (Verdict(Outcome.ACCEPTED, "OK", "", "r-1"), 4, "")
    assert result.first_failure_ms is not None  # it failed before it was accepted
    assert notes.answers == ["InternalError", "HTTP_503", "RequestLimitExceeded", "OK"]
    assert notes.retries == [("InternalError", 1)]  # this record only: it waits alone
    assert notes.backoffs == [("HTTP_503", 1), ("RequestLimitExceeded", 2)]  # the endpoint: everyone waits
    assert notes.recoveries == [2]


def test_the_push_routine_stops_at_a_reject_and_gives_up_when_cancelled() -> None:
    pusher = Pusher(client(lambda _r: error("InvalidParameter")), fast_backoff())
    rejected = asyncio.run(pusher.push(b"{}", "k", lambda: False))
    assert (rejected.verdict.outcome, rejected.attempts) == (Outcome.REJECT, 1)  # type: ignore[union-attr]

    tries: list[int] = []

    def failing(_request: httpx.Request) -> httpx.Response:
        tries.append(1)
        return error("InternalError")

    pusher = Pusher(client(failing), fast_backoff())
    given_up = asyncio.run(pusher.push(b"{}", "k", lambda: len(tries) >= 3))
    assert given_up.verdict is None and given_up.attempts == 3
    assert given_up.last_retry is not None and given_up.last_retry.code == "InternalError"
    never_sent = asyncio.run(Pusher(client(ok), fast_backoff()).push(b"{}", "k", lambda: True))
    assert never_sent == PushResult(None, 0, None)


def test_a_record_answered_retry_past_its_budget_stops_to_be_parked_or_dead_lettered() -> None:
    failing = Pusher(client(lambda _r: error("InternalError")), fast_backoff())
    parked = asyncio.run(failing.push(b"{}", "k", lambda: False, budget=Budget(park_after_s=0.05)))
    assert (parked.verdict, parked.ended) == (None, PARK)
    assert parked.attempts >= 2 and parked.last_retry is not None and parked.first_failure_ms is not None
    old = int(time.time() * 1000) - 10_000  # first failed 10 s ago; deadline 5 s: one more try, then expired
    expired = asyncio.run(failing.push(b"{}", "k", lambda: False,
                                       budget=Budget(first_failure_ms=old, deadline_s=5.0)))
    assert (expired.verdict, expired.ended, expired.attempts, expired.first_failure_ms) == (None, EXPIRED, 1, old)
    healthy = Pusher(client(ok), fast_backoff())
    late = asyncio.run(healthy.push(b"{}", "k", lambda: False, budget=Budget(first_failure_ms=old, deadline_s=5.0)))
    assert late.verdict is not None and late.verdict.outcome is Outcome.ACCEPTED  # tried once: accepted
