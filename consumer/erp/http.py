"""What carries a push: one POST, its answer as status, headers and body, or a named failure.

Two senders, one shape (:class:`Sender`):

* :class:`AiohttpSender`, the production one: an ``aiohttp.ClientSession`` used directly, one
  connection pool per ERP endpoint. Chosen by measurement (``bench/http_ceiling.py``, issue 14): the
  same push costs about 90 µs of client CPU this way against about 185 µs as an ``httpx.Request``
  through the ``httpx-aiohttp`` transport (request and response objects built twice, header
  conversion, a response stream read chunk by chunk), on a 2-core machine at 0 ms ERP latency.
* :class:`HttpxSender`: any ``httpx.AsyncBaseTransport``. Unit tests pass an
  ``httpx.MockTransport``; ``httpx.AsyncHTTPTransport`` works too.

A failure without an HTTP answer raises :class:`TransportFailure` whose ``code`` is the name an
operator sees (the ``code`` label of ``erp_sync_erp_requests_total``, logs, dead-letter headers):

==========================  ===================================================================
``ConnectError``            no connection: refused, unreachable, DNS failure
``SSLError``                the TLS handshake failed (certificate not trusted, wrong host name,
                            client certificate refused)
``Timeout``                 no connection, no answer or no complete answer within
                            ``ERP_SYNC_ERP_TIMEOUT_SECONDS``
``RemoteProtocolError``     the ERP closed the connection without answering, or answered
                            something that is not HTTP
``ReadError``               the connection broke (reset) or the answer's body was cut
``WriteError``              the request could not be sent whole
==========================  ===================================================================
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # loaded only with a transport (unit tests): `run` does not need it
    import httpx


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer: status code, headers (case-insensitive ``get``), the whole body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class TransportFailure(Exception):
    """A push got no HTTP answer.

    Attributes:
        code: ``ConnectError`` | ``SSLError`` | ``Timeout`` | ``RemoteProtocolError`` | ``ReadError`` |
            ``WriteError``, or the exception's class name for anything else.
        message: one line saying what happened.
        stale: the failure may come from a pooled keep-alive connection the ERP had closed (worth one
            immediate re-send on a fresh connection).
    """

    def __init__(self, code: str, message: str, stale: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message or code
        self.stale = stale


class Sender(Protocol):
    """Sends one POST to the ERP endpoint."""

    async def post(self, headers: Mapping[str, str], body: bytes) -> Answer:
        """The answer. Raises :class:`TransportFailure` when there is none."""

    async def aclose(self) -> None:
        """Close the connection pool."""


def aiohttp_failure(exc: BaseException) -> TransportFailure:
    """The :class:`TransportFailure` of an exception raised by aiohttp during one request."""
    import aiohttp

    text = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):  # certificate and handshake errors
        return TransportFailure("SSLError", text)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return TransportFailure("Timeout", text or "no answer in time")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return TransportFailure("ConnectError", text)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return TransportFailure("RemoteProtocolError", f"the ERP closed the connection without answering ({text})",
                                stale=True)
    if isinstance(exc, aiohttp.ClientResponseError):  # a status line or headers that are not HTTP
        return TransportFailure("RemoteProtocolError", text)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return TransportFailure("ReadError", text)
    if isinstance(exc, aiohttp.ClientOSError | OSError):  # reset, broken pipe
        return TransportFailure("ReadError", text, stale=True)
    return TransportFailure(type(exc).__name__, text)


class AiohttpSender:
    """POSTs to one URL through an aiohttp session (made on the first post, on the event loop that posts).

    Args:
        url: the ERP endpoint.
        tls: an SSL context, or False for an unverified connection (``ERP_SYNC_ERP_TLS_VERIFY=false``).
        max_connections: the connection pool's size (pushes in flight).
        timeout_s: connect, pool wait and read timeout each (``ERP_SYNC_ERP_TIMEOUT_SECONDS``).
        keepalive_s: idle pooled connections are closed after this many seconds.
    """

    def __init__(self, url: str, tls: ssl.SSLContext | bool, max_connections: int, timeout_s: float,
                 keepalive_s: float) -> None:
        self._url = url
        self._tls = tls
        self._max_connections = max_connections
        self._timeout_s = timeout_s
        self._keepalive_s = keepalive_s
        self._session: object | None = None

    def _open(self) -> object:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=self._keepalive_s,
                                         ssl=self._tls)
        t = self._timeout_s
        timeout = aiohttp.ClientTimeout(total=None, connect=t, sock_connect=t, sock_read=t)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False,
                                              auto_decompress=True, skip_auto_headers=("User-Agent",))
        return self._session

    async def post(self, headers: Mapping[str, str], body: bytes) -> Answer:
        """The answer; raises :class:`TransportFailure` when there is none."""
        session: Any = self._session or self._open()  # no import here: this runs for every push
        try:
            async with session.post(self._url, data=body, headers=headers, allow_redirects=False) as response:
                content = await response.read()
                return Answer(response.status, response.headers, content)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a named verdict
            raise aiohttp_failure(exc) from exc

    async def aclose(self) -> None:
        """Close the pool."""
        import aiohttp

        if isinstance(self._session, aiohttp.ClientSession):
            await self._session.close()


class HttpxSender:
    """POSTs to one URL through an httpx transport (``httpx.MockTransport`` in unit tests)."""

    def __init__(self, url: str, transport: httpx.AsyncBaseTransport, timeout_s: float) -> None:
        import httpx

        self._url = httpx.URL(url)
        self._transport = transport
        self._timeout = httpx.Timeout(timeout_s).as_dict()

    async def post(self, headers: Mapping[str, str], body: bytes) -> Answer:
        """The answer; raises :class:`TransportFailure` when there is none."""
        import httpx

        request = httpx.Request("POST", self._url, headers=dict(headers), content=body,
                                extensions={"timeout": self._timeout})
        try:
            response = await self._transport.handle_async_request(request)
            try:
                await response.aread()
            finally:
                await response.aclose()
        except httpx.TimeoutException as exc:
            raise TransportFailure("Timeout", str(exc) or "no answer in time") from exc
        except httpx.HTTPError as exc:
            stale = isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError)
            raise TransportFailure(type(exc).__name__, str(exc), stale=stale) from exc
        except Exception as exc:  # noqa: BLE001 - whatever a transport raises becomes a named verdict
            raise TransportFailure(type(exc).__name__, str(exc)) from exc
        return Answer(response.status_code, response.headers, response.content)

    async def aclose(self) -> None:
        """Close the transport."""
        await self._transport.aclose()
