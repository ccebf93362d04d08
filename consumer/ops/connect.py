"""``erp-sync check-config --connect``: can this configuration reach what it names?

Three checks, each a line: the Kafka broker (a metadata request; the source and dead-letter topics
exist), the schema registry when one is configured (its subject list), and the ERP endpoint (a TCP
connection and, for ``https://``, the TLS handshake with the configured CA and client certificate;
no HTTP request is sent, so nothing is pushed). The exit code says whether all answered.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..erp.auth import tls_context
from ..kafka import admin_client, error_text
from ..logs import plural
from ..settings import Settings, redact_url

TIMEOUT_S = 10.0
"""Longest wait of one check, seconds (``--connect-timeout``)."""


@dataclass(frozen=True, slots=True)
class Check:
    """One thing checked: what, whether it answered as needed, and the detail."""

    what: str
    ok: bool
    detail: str

    def line(self) -> str:
        """``ok      kafka 127.0.0.1:9092: …`` or ``FAILED  …``."""
        return f"{'ok' if self.ok else 'FAILED':<7} {self.what}: {self.detail}"


def check_broker(settings: Settings, timeout_s: float = TIMEOUT_S) -> Check:
    """A metadata request to the bootstrap brokers; the source and dead-letter topics must exist."""
    what = f"Kafka {settings.kafka_bootstrap_servers}"
    try:
        metadata = admin_client(settings).list_topics(timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - KafkaException, timeouts: say it
        return Check(what, False, f"unreachable ({error_text(exc)})")
    missing = [t for t in (*settings.topics, settings.dead_letter_topic) if t not in metadata.topics]
    brokers = plural(len(metadata.brokers), "broker")
    if missing:
        return Check(what, False, f"reachable ({brokers}), but topic {', '.join(missing)} does not exist "
                                  "(erp-sync create-topics creates it)")
    sources = "; ".join(f"{t}: {plural(len(metadata.topics[t].partitions), 'partition')}" for t in settings.topics)
    return Check(what, True, f"reachable ({brokers}); {sources}; {settings.dead_letter_topic} exists")


def check_registry(settings: Settings, timeout_s: float = TIMEOUT_S) -> Check | None:
    """The schema registry's subject list (None when no registry is configured)."""
    if not settings.schema_registry_url:
        return None
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from ..decode import registry_client_config

    what = f"schema registry {redact_url(settings.schema_registry_url)}"
    try:
        client = SchemaRegistryClient({**registry_client_config(settings), "timeout": max(1, int(timeout_s))})
        subjects = client.get_subjects()
    except Exception as exc:  # noqa: BLE001 - transport and HTTP errors alike
        return Check(what, False, f"unreachable ({type(exc).__name__}: {exc})")
    return Check(what, True, f"reachable ({plural(len(subjects), 'subject')})")


def check_erp(settings: Settings, timeout_s: float = TIMEOUT_S) -> Check:
    """A TCP connection to the ERP, and the TLS handshake for ``https://`` (no request is sent)."""
    url = settings.erp_url or ""
    what = f"ERP {redact_url(url)}"
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    timeout = min(timeout_s, settings.erp_timeout_seconds)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if parts.scheme != "https":
                return Check(what, True, f"reachable (TCP {host}:{port}; plain http)")
            context = tls_context(settings)
            if context is False:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            assert isinstance(context, ssl.SSLContext)
            with context.wrap_socket(sock, server_hostname=host) as tls:
                return Check(what, True, f"reachable (TLS {tls.version()}, certificate "
                                         f"{'verified' if settings.erp_tls_verify else 'NOT verified'})")
    except (OSError, ssl.SSLError) as exc:
        return Check(what, False, f"unreachable ({type(exc).__name__}: {exc})")


def check_connections(settings: Settings, timeout_s: float = TIMEOUT_S) -> list[Check]:
    """Every check that applies to this configuration, in order: Kafka, registry, ERP."""
    checks = [check_broker(settings, timeout_s), check_registry(settings, timeout_s), check_erp(settings, timeout_s)]
    return [c for c in checks if c is not None]
