"""The ERP client and the one push routine, through ``httpx.MockTransport`` (no socket).

The real HTTP path (aiohttp transport, TLS, stale keep-alive connections) is proven against real
servers in tests/integration/test_security.py and tests/faults/test_faults_infra.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ssl
import time
from types import SimpleNamespace
from typing import Any

import aiohttp
import httpx
import orjson
import pytest

from consumer.delivery.push import EXPIRED, PARK, Budget, Pusher, PushResult
from consumer.delivery.retry import SharedBackoff
from consumer.erp.client import ErpClient
from consumer.erp.http import aiohttp_failure
from consumer.erp.verdict import Outcome, Verdict
from consumer.settings import load_settings

URL = "https://erp.test/apaas/push"
CONNECTION_KEY: Any = SimpleNamespace(host="erp.test", port=443, ssl=True, is_ssl=True)


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


@pytest.mark.parametrize(("exc", "code", "stale"), [
    (aiohttp.ServerDisconnectedError(), "RemoteProtocolError", True),
    (aiohttp.ClientOSError(104, "Connection reset by peer"), "ReadError", True),
    (ConnectionResetError(104, "Connection reset by peer"), "ReadError", True),
    (aiohttp.ServerTimeoutError("Timeout on reading data from socket"), "Timeout", False),
    (TimeoutError(), "Timeout", False),
    (aiohttp.ClientConnectorError(CONNECTION_KEY, ConnectionRefusedError(111, "Connection refused")),
     "ConnectError", False),
    (aiohttp.ClientConnectorCertificateError(CONNECTION_KEY, ssl.SSLCertVerificationError("self-signed")),
     "SSLError", False),
    (aiohttp.ClientConnectorSSLError(CONNECTION_KEY, ssl.SSLError("handshake failure")), "SSLError", False),
    (aiohttp.ClientPayloadError("Response payload is not completed"), "ReadError", False),
    (aiohttp.ClientResponseError(SimpleNamespace(real_url=URL), (), status=400, message="Invalid status line"),  # type: ignore[arg-type]
     "RemoteProtocolError", False),
    (RuntimeError("odd"), "RuntimeError", False),
])
def test_every_aiohttp_failure_has_the_name_an_operator_reads(exc: Exception, code: str, stale: bool) -> None:
    failure = aiohttp_failure(exc)
    assert (failure.code, failure.stale) == (code, stale)
    assert failure.message


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


def test_a_record_waiting_alone_gives_its_push_slot_to_the_other_keys() -> None:
    """One push slot (ERP_SYNC_MAX_IN_FLIGHT=1, or an adaptive limit cut to 1) and an ERP that answers
    InternalError to one record for good while it accepts the others: while that record waits out its
    own backoff, the other keys are pushed. (Found by a new user's trial: the record kept its slot
    through every wait, and 0 of 20 records behind it were pushed in 2 minutes.)"""
    import threading

    from consumer.delivery.dispatch import KeyedDispatcher

    accepted: list[bytes] = []
    bad_tries: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.content == b"bad":
            bad_tries.append(time.monotonic())
            return error("InternalError")
        accepted.append(request.content)
        return ok(request)

    pusher = Pusher(client(handler), SharedBackoff(0.3, 0.3))
    stopping = threading.Event()
    ended: dict[bytes, str | None] = {}

    async def push(body: bytes) -> None:
        result = await pusher.push(body, body.decode(), stopping.is_set)
        ended[body] = result.verdict.code if result.verdict is not None else None

    def crashed(body: bytes, exc: BaseException) -> None:
        ended[body] = repr(exc)

    dispatcher: KeyedDispatcher[bytes] = KeyedDispatcher(1, push, crashed)
    dispatcher.start()
    others = [f"ok-{i}".encode() for i in range(20)]
    for body in [b"bad", *others]:
        dispatcher.submit(body, body)  # each its own key
    deadline = time.monotonic() + 5.0
    while len(accepted) < len(others) and time.monotonic() < deadline:
        time.sleep(0.01)
    stopping.set()
    dispatcher.shutdown(wait=True, timeout_s=3.0)
    assert accepted == others  # in submission order: one slot, handed on first come, first served
    assert {body: ended[body] for body in others} == dict.fromkeys(others, "OK")
    assert ended[b"bad"] is None  # given up at the stop, never accepted
    assert len(bad_tries) >= 1
