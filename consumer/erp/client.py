"""The ERP HTTP client: one POST per approved record, the verdict read from status and body.

* Body: compact UTF-8 JSON; headers ``Content-Type: application/json; charset=utf-8`` and
  ``Idempotency-Key: <FlowCode>-<InstanceId>`` (ERP-INTERFACE.md decision 5).
* Authentication: an optional static header (``ERP_SYNC_ERP_AUTH_HEADER_NAME`` /
  ``…_VALUE`` or ``…_VALUE_FILE``) and an optional HMAC-SHA256 signature header
  ``X-Erp-Sync-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``.
* TLS is verified by default; ``ERP_SYNC_ERP_CA_BUNDLE`` adds a CA bundle and
  ``ERP_SYNC_ERP_CLIENT_CERT``/``…_KEY`` a client certificate (mTLS).
* Every push (``erp-sync run`` and the replay tools) is :meth:`ErpClient.post_async`: an
  ``httpx.Request`` sent through an httpx transport on an event loop. The transport is the seam:
  by default the aiohttp-backed ``httpx-aiohttp`` transport (chosen by measurement), in unit tests
  an ``httpx.MockTransport``. ``httpx.AsyncClient`` is not in that path: its per-request work
  (header and URL merging, cookie extraction into a jar, auth and redirect flows) serves none of a
  single-endpoint POST that sets its own headers and never follows redirects, and it was about a
  third of the consumer's CPU. Transports compared in ``bench/http_ceiling.py``.
* OAuth2 client credentials (``ERP_SYNC_ERP_OAUTH2_*``): the token comes from
  :class:`~.auth.OAuth2Bearer` (Authlib) and goes into ``Authorization: Bearer …``; a 401 answer gets
  one token refresh and one re-send, then the verdict rules as usual. A token endpoint that fails is
  a *retry* verdict ``AuthFailure.OAuth2Token`` (the whole endpoint waits; ErpSyncErpAuthFailure).
* A request that fails on a pooled connection the ERP already closed is re-sent once at once on a
  fresh connection; keep-alive connections idle for more than ``KEEPALIVE_EXPIRY_S`` are dropped
  before the ERP's idle timeout can race us.
"""

from __future__ import annotations

import logging
import time

import httpx

from .. import __version__
from ..errors import ConfigError
from ..settings import Settings, redact_url
from .auth import OAuth2Bearer, sign, tls_context
from .verdict import MAX_MESSAGE_CHARS, Outcome, Verdict, transport_verdict, verdict

log = logging.getLogger(__name__)

KEEPALIVE_EXPIRY_S = 4.0
"""Idle pooled connections are closed after this many seconds (below common 5 s server timeouts)."""

_STALE_CONNECTION_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


def _stale_connection(exc: BaseException) -> bool:
    """True when a request failed because the ERP had closed the pooled connection we used."""
    import aiohttp

    cause = exc.__cause__
    return isinstance(exc, _STALE_CONNECTION_ERRORS) or isinstance(
        cause, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError)


def _aiohttp_error(exc: httpx.HTTPError) -> httpx.HTTPError:
    """Undo a misnaming of httpx-aiohttp: it maps every connection error to ``ConnectTimeout``.

    Its exception map sends any ``aiohttp.ClientConnectionError`` that is not a timeout (a refused
    connection, a server that closed the connection without answering, a reset) to
    ``httpx.ConnectTimeout``. The code an operator sees (logs, the ``code`` label of
    ``erp_sync_erp_requests_total``) must name what happened, as httpx's own transport does:
    ``ConnectError``, ``RemoteProtocolError`` (closed without a response) or ``ReadError`` (reset).
    """
    import aiohttp

    cause = exc.__cause__
    if not isinstance(exc, httpx.ConnectTimeout) or not isinstance(cause, aiohttp.ClientConnectionError):
        return exc
    if isinstance(cause, aiohttp.ServerTimeoutError | TimeoutError):
        return exc
    if isinstance(cause, aiohttp.ClientConnectorError):
        return httpx.ConnectError(str(exc))
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(str(exc))
    return httpx.ReadError(str(exc))


class ErpClient:
    """Posts bodies to the ERP and returns verdicts; never raises for a failed request.

    Args:
        settings: ``erp_url`` (required), timeouts, TLS, auth, retry and duplicate code lists.
        max_connections: size of the connection pool (the pushes in flight).
        transport: the httpx transport requests go through; None builds the aiohttp-backed one on
            the first push (aiohttp's session belongs to the event loop that makes every call).

    Raises:
        ConfigError: no ERP URL, or a TLS file or secret file cannot be read.
    """

    def __init__(self, settings: Settings, max_connections: int = 32,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not settings.erp_url:
            raise ConfigError("ERP_SYNC_ERP_URL: required (the ERP endpoint, e.g. https://erp.example.com/apaas/push)")
        self.url = settings.erp_url
        self.retry_codes = settings.erp_retry_codes
        self.duplicate_codes = settings.erp_duplicate_codes
        self.retry_statuses = settings.retry_http_statuses
        self._hmac_secret = settings.hmac_secret()
        self._signature_header = settings.erp_signature_header
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Accept": "application/json",
            "User-Agent": f"apaas-erp-sync/{__version__}",
        }
        auth = settings.auth_header_value()
        if auth:
            headers[settings.erp_auth_header_name] = auth
        if self.url.startswith("http://"):
            log.warning("ERP_SYNC_ERP_URL uses plain http://: bodies and credentials travel unencrypted",
                        extra={"event": "insecure_erp_url"})
        if not settings.erp_tls_verify:
            log.warning("ERP_SYNC_ERP_TLS_VERIFY=false: the ERP's certificate is NOT verified",
                        extra={"event": "tls_verify_off"})
        self._headers = headers
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections,
                                    keepalive_expiry=KEEPALIVE_EXPIRY_S)
        self._verify = tls_context(settings)
        self._url = httpx.URL(self.url)
        self._transport = transport
        self._timeout = httpx.Timeout(settings.erp_timeout_seconds).as_dict()
        self.oauth2 = OAuth2Bearer(settings, self._verify) if settings.erp_oauth2_token_url else None

    def _request_headers(self, body: bytes, idempotency_key: str) -> dict[str, str]:
        headers = {**self._headers, "Idempotency-Key": idempotency_key}
        if self._hmac_secret is not None:
            headers[self._signature_header] = sign(self._hmac_secret, int(time.time()), body)
        return headers

    async def post_async(self, body: bytes, idempotency_key: str) -> Verdict:
        """Send one push (one attempt, plus one immediate re-send on a stale pooled connection).

        Args:
            body: the encoded ERP body.
            idempotency_key: ``"<FlowCode>-<InstanceId>"``.

        Returns:
            The verdict; transport failures are *retry* verdicts named after the error.
        """
        if self._transport is None:
            from httpx_aiohttp import AiohttpTransport

            self._transport = AiohttpTransport(verify=self._verify, limits=self._limits, trust_env=False)
        headers = self._request_headers(body, idempotency_key)
        oauth2 = self.oauth2
        if oauth2 is not None:
            try:
                headers["Authorization"] = await oauth2.authorization()
            except Exception as exc:  # noqa: BLE001 - the token endpoint's failures are many
                return self._token_failure(exc)
        fresh_connection_left = True
        token_refresh_left = oauth2 is not None
        while True:
            try:
                request = httpx.Request("POST", self._url, headers=headers, content=body,
                                        extensions={"timeout": self._timeout})
                response = await self._transport.handle_async_request(request)
                try:
                    await response.aread()
                finally:
                    await response.aclose()
            except httpx.HTTPError as exc:
                if fresh_connection_left and _stale_connection(exc):
                    fresh_connection_left = False
                    continue  # the ERP closed a pooled keep-alive connection: once more, fresh
                return transport_verdict(_aiohttp_error(exc))
            except Exception as exc:  # aiohttp/ssl oddities must never escape a push
                return transport_verdict(exc)
            if response.status_code == 401 and token_refresh_left and oauth2 is not None:
                token_refresh_left = False  # one refresh and one re-send, then the verdict as usual
                try:
                    headers["Authorization"] = await oauth2.refresh(headers["Authorization"])
                except Exception as exc:  # noqa: BLE001
                    return self._token_failure(exc)
                continue
            return verdict(response.status_code, response.headers, response.content,
                           retry_codes=self.retry_codes, duplicate_codes=self.duplicate_codes,
                           retry_statuses=self.retry_statuses)

    def _token_failure(self, exc: BaseException) -> Verdict:
        """A token endpoint that refused or did not answer: retry (the whole endpoint waits), an auth code."""
        assert self.oauth2 is not None
        message = f"OAuth2 token endpoint {redact_url(self.oauth2.token_url)}: {type(exc).__name__}: {exc}"
        return Verdict(Outcome.RETRY, "AuthFailure.OAuth2Token", message[:MAX_MESSAGE_CHARS])

    async def aclose(self) -> None:
        """Close the connection pool (on the event loop that pushed)."""
        if self._transport is not None:
            await self._transport.aclose()
        if self.oauth2 is not None:
            await self.oauth2.aclose()
