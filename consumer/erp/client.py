"""The ERP HTTP client: one POST per approved record, the verdict read from status and body.

* Body: compact UTF-8 JSON; headers ``Content-Type: application/json; charset=utf-8`` and
  ``Idempotency-Key: <FlowCode>-<InstanceId>`` (ERP-INTERFACE.md decision 5).
* Authentication: an optional static header (``ERP_SYNC_ERP_AUTH_HEADER_NAME`` /
  ``…_VALUE`` or ``…_VALUE_FILE``) and an optional HMAC-SHA256 signature header
  ``X-Erp-Sync-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``.
* TLS is verified by default; ``ERP_SYNC_ERP_CA_BUNDLE`` adds a CA bundle and
  ``ERP_SYNC_ERP_CLIENT_CERT``/``…_KEY`` a client certificate (mTLS).
* Every push (``erp-sync run`` and the replay tools) is :meth:`ErpClient.post_async` on an event
  loop, carried by a :class:`~consumer.erp.http.Sender`: by default aiohttp's client used directly
  (chosen by measurement, see :mod:`consumer.erp.http`); given an httpx transport (unit tests pass an
  ``httpx.MockTransport``), through it.
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
from typing import TYPE_CHECKING

from .. import __version__
from ..errors import ConfigError
from ..settings import Settings, redact_url
from .auth import OAuth2Bearer, sign, tls_context
from .http import AiohttpSender, HttpxSender, Sender, TransportFailure
from .verdict import MAX_MESSAGE_CHARS, Outcome, Verdict, transport_failure_verdict, verdict

if TYPE_CHECKING:  # httpx only when a transport is given (unit tests): not loaded by `run`
    import httpx

log = logging.getLogger(__name__)

KEEPALIVE_EXPIRY_S = 4.0
"""Idle pooled connections are closed after this many seconds (below common 5 s server timeouts)."""


class ErpClient:
    """Posts bodies to the ERP and returns verdicts; never raises for a failed request.

    Args:
        settings: ``erp_url`` (required), timeouts, TLS, auth, retry and duplicate code lists.
        max_connections: size of the connection pool (the pushes in flight).
        transport: an httpx transport to send through (unit tests: ``httpx.MockTransport``); None:
            aiohttp's client (its session is made on the first push, on the event loop that pushes).

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
        tls = tls_context(settings)
        self._sender: Sender = (
            AiohttpSender(self.url, tls, max_connections, settings.erp_timeout_seconds, KEEPALIVE_EXPIRY_S)
            if transport is None else HttpxSender(self.url, transport, settings.erp_timeout_seconds))
        self.oauth2 = OAuth2Bearer(settings, tls) if settings.erp_oauth2_token_url else None

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
                answer = await self._sender.post(headers, body)
            except TransportFailure as failure:
                if fresh_connection_left and failure.stale:
                    fresh_connection_left = False
                    continue  # the ERP closed a pooled keep-alive connection: once more, on a fresh one
                return transport_failure_verdict(failure.code, failure.message)
            if answer.status == 401 and token_refresh_left and oauth2 is not None:
                token_refresh_left = False  # one refresh and one re-send, then the verdict as usual
                try:
                    headers["Authorization"] = await oauth2.refresh(headers["Authorization"])
                except Exception as exc:  # noqa: BLE001
                    return self._token_failure(exc)
                continue
            return verdict(answer.status, answer.headers, answer.body, retry_codes=self.retry_codes,
                           duplicate_codes=self.duplicate_codes, retry_statuses=self.retry_statuses)

    def _token_failure(self, exc: BaseException) -> Verdict:
        """A token endpoint that refused or did not answer: retry (the whole endpoint waits), an auth code."""
        assert self.oauth2 is not None
        message = f"OAuth2 token endpoint {redact_url(self.oauth2.token_url)}: {type(exc).__name__}: {exc}"
        return Verdict(Outcome.RETRY, "AuthFailure.OAuth2Token", message[:MAX_MESSAGE_CHARS])

    async def aclose(self) -> None:
        """Close the connection pool (on the event loop that pushed)."""
        await self._sender.aclose()
        if self.oauth2 is not None:
            await self.oauth2.aclose()
