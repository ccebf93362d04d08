"""How a push proves who sends it, and checks whom it talks to: HMAC signature and TLS.

* HMAC-SHA256 signature header ``X-Erp-Sync-Signature: t=<unix seconds>,v1=<hex>`` where
  ``hex = HMAC_SHA256(secret, "<t>." + raw body)`` (README "Security").
* TLS: verified by default; ``ERP_SYNC_ERP_CA_BUNDLE`` adds a CA bundle and
  ``ERP_SYNC_ERP_CLIENT_CERT``/``…_KEY`` a client certificate (mTLS).
"""

from __future__ import annotations

import hashlib
import hmac
import ssl

from ..errors import ConfigError
from ..settings import Settings


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
