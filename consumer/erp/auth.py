"""How a push proves who sends it, and checks whom it talks to: HMAC signature, OAuth2 and TLS.

* HMAC-SHA256 signature header ``X-Erp-Sync-Signature: t=<unix seconds>,v1=<hex>`` where
  ``hex = HMAC_SHA256(secret, "<t>." + raw body)`` (README "Security").
* OAuth2 client credentials (RFC 6749 §4.4): :class:`OAuth2Bearer` keeps an access token fetched by
  Authlib's httpx client from ``ERP_SYNC_ERP_OAUTH2_TOKEN_URL``, refreshed before it expires and once
  more when the ERP answers 401; the push adds it as ``Authorization: Bearer …``.
* TLS: verified by default; ``ERP_SYNC_ERP_CA_BUNDLE`` adds a CA bundle and
  ``ERP_SYNC_ERP_CLIENT_CERT``/``…_KEY`` a client certificate (mTLS).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ssl
from typing import Any

from ..errors import ConfigError
from ..settings import Settings

OAUTH2_LEEWAY_S = 60
"""A token is fetched again when it expires within this many seconds (before the ERP refuses it)."""


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """Return the signature header value ``t=<timestamp>,v1=<hex>`` for a body.

    The ERP verifies it by computing HMAC-SHA256 with the shared secret over
    ``f"{t}.".encode() + body`` and comparing in constant time; it should refuse old timestamps.
    """
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def tls_context(settings: Settings) -> ssl.SSLContext | bool:
    """The TLS setting of the ERP connection: False (not verified) or an SSL context.

    Raises:
        ConfigError: a CA bundle or client certificate cannot be loaded (naming its variable).
    """
    if not settings.erp_tls_verify:
        return False
    try:
        ctx = ssl.create_default_context(cafile=str(settings.erp_ca_bundle) if settings.erp_ca_bundle else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"ERP_SYNC_ERP_CA_BUNDLE: cannot load {settings.erp_ca_bundle}: {exc}") from None
    if settings.erp_client_cert:
        try:
            ctx.load_cert_chain(str(settings.erp_client_cert),
                                str(settings.erp_client_key) if settings.erp_client_key else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"ERP_SYNC_ERP_CLIENT_CERT/ERP_SYNC_ERP_CLIENT_KEY: cannot load the client certificate: {exc}"
            ) from None
    return ctx


class OAuth2Bearer:
    """The ``Authorization: Bearer`` value of OAuth2 client credentials toward the ERP.

    Authlib's ``AsyncOAuth2Client`` (an ``httpx.AsyncClient`` for the token endpoint only) fetches the
    token: client authentication (``client_secret_basic``, or ``client_secret_post``), the form, the
    error responses (``invalid_client``…) and the expiry bookkeeping are the library's. The pushes
    go through the ERP client's own sender (:mod:`.http`); this class only gives them the header.
    Concurrent pushes share one token and one fetch (a lock); a token is fetched again when it
    expires within :data:`OAUTH2_LEEWAY_S` s, or when the ERP answered 401 to it (:meth:`refresh`).

    Args:
        settings: ``ERP_SYNC_ERP_OAUTH2_*`` (URL, client id and secret or their files, scope) and the
            ERP timeout.
        verify: the TLS setting of the token endpoint (the ERP's: CA bundle, client certificate).

    Raises:
        ConfigError: the client id or secret file cannot be read.
    """

    def __init__(self, settings: Settings, verify: ssl.SSLContext | bool) -> None:
        assert settings.erp_oauth2_token_url is not None
        self.token_url = settings.erp_oauth2_token_url
        self._client_args: dict[str, Any] = {
            "client_id": settings.oauth2_client_id(), "client_secret": settings.oauth2_client_secret(),
            "scope": settings.erp_oauth2_scope, "token_endpoint": self.token_url,
            "token_endpoint_auth_method": settings.erp_oauth2_client_auth, "grant_type": "client_credentials",
            "leeway": OAUTH2_LEEWAY_S, "timeout": settings.erp_timeout_seconds, "verify": verify, "trust_env": False,
        }
        self._client: Any = None
        self._lock: asyncio.Lock | None = None
        self._header: str | None = None
        self.fetched = 0
        """Tokens fetched so far."""

    def _ensure(self) -> tuple[Any, asyncio.Lock]:
        if self._client is None or self._lock is None:
            from authlib.integrations.httpx_client import AsyncOAuth2Client

            self._client = AsyncOAuth2Client(**self._client_args)
            self._lock = asyncio.Lock()
        return self._client, self._lock

    def _current(self) -> str | None:
        token = self._client.token if self._client is not None else None
        if self._header is None or token is None or token.is_expired(leeway=OAUTH2_LEEWAY_S):
            return None
        return self._header

    async def authorization(self) -> str:
        """The header value of a token that is not about to expire (fetched when needed).

        Raises:
            Exception: the token endpoint failed (an ``authlib`` ``OAuthError``, an ``httpx.HTTPError``…).
        """
        return self._current() or await self._fetch(None)

    async def refresh(self, refused: str) -> str:
        """A new token after the ERP answered 401 to ``refused`` (unless another push already got one)."""
        return await self._fetch(refused)

    async def _fetch(self, refused: str | None) -> str:
        client, lock = self._ensure()
        async with lock:
            current = self._current()
            if current is not None and current != refused:
                return current  # another push fetched one meanwhile
            token = await client.fetch_token(self.token_url, grant_type="client_credentials")
            self.fetched += 1
            self._header = f"Bearer {token['access_token']}"
            return self._header

    async def aclose(self) -> None:
        """Close the token endpoint's connection pool."""
        if self._client is not None:
            await self._client.aclose()
