"""Security tests (issue 3, "Security"): TLS to the ERP, ERP authentication, secrets never shown.

* TLS is verified by default (untrusted certificate or wrong host → a *retry* verdict, never a dead
  letter); ``ERP_SYNC_ERP_CA_BUNDLE`` trusts a private CA; ``ERP_SYNC_ERP_CLIENT_CERT``/``…_KEY`` give
  a client certificate (mTLS). Tested against a real HTTPS server (stdlib ``http.server`` + ``ssl``,
  certificates from ``trustme``), with the ERP client directly and end to end through ``erp-sync run``.
* Plain ``http://`` works but logs a warning at start.
* The static auth header (value from the environment or from a ``*_FILE``, stripped) and the
  HMAC-SHA256 signature header (``t=<unix>,v1=<hex HMAC(secret, "<t>." + body)>``) arrive at the ERP and
  verify against the raw body.
* Secrets never appear in the consumer's log, ``check-config`` output, error messages or dead-letter
  headers.

``trustme`` (and its dependency ``cryptography``) is a test-only dependency.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import ssl
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from consumer import transform
from consumer.devstack.erp_stub import ErpStub, StubClient
from consumer.devstack.events import encode
from consumer.erp.client import ErpClient
from consumer.erp.verdict import Outcome
from consumer.errors import ConfigError
from consumer.settings import load_settings
from dev.harness import (
    ERP_SYNC,
    BlockingErp,
    Broker,
    committed,
    consumer_env,
    create_topic,
    free_port,
    high_watermarks,
    log_events,
    produce,
    read_all,
    run_until_idle,
    start_consumer,
    stop_consumer,
    unique,
    wait_until,
)

OFFSET_INVALID = -1001
TRANSPORT_CODES = {"ConnectError", "ReadError", "WriteError", "RemoteProtocolError", "SSLError", "Timeout"}
Event = dict[str, Any]


# ------------------------------------------------------------------------------------------ helpers


def event(instance_id: int) -> Event:
    """A valid APPROVED v1 event with a non-ASCII variable (the signature covers UTF-8 bytes)."""
    return {
        "event_id": str(uuid.UUID(int=instance_id % 2**128)),
        "event_time": 1732886400000,
        "flow_code": 1425737370216521773,
        "instance_id": instance_id,
        "status": "APPROVED",
        "start_time": 1732886000000,
        "end_time": 1732886399000,
        "start_user": {"source_uid": f"wecom-{instance_id}", "tenant_uid": "t-1"},
        "variables": {"Reason": {"type": "string", "value": '"家里有事"'}, "Days": {"type": "integer", "value": "3"}},
        "approvals": [],
    }


def record(ev: Event) -> tuple[bytes, bytes]:
    return str(ev["instance_id"]).encode(), encode(ev)


def base_env() -> dict[str, str]:
    """The inherited environment without any ERP_SYNC_* variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ERP_SYNC_")}


def erp_client(url: str, **env: str) -> BlockingErp:
    return BlockingErp(ErpClient(load_settings({"ERP_SYNC_ERP_URL": url, "ERP_SYNC_ERP_TIMEOUT_SECONDS": "5", **env}),
                                 max_connections=4))


def push_one(client: BlockingErp, instance_id: int) -> Any:
    body, key = transform.erp_request(event(instance_id))
    return client.post(body, key)


def verify_signature(headers: dict[str, str], body: bytes, secret: bytes, header: str = "x-erp-sync-signature"
                     ) -> int:
    """Check ``t=<unix>,v1=<hex>`` like an ERP would; return the timestamp."""
    value = headers.get(header)
    assert value, f"no {header} header in {sorted(headers)}"
    parts = dict(p.split("=", 1) for p in value.split(","))
    assert set(parts) == {"t", "v1"}, value
    t = int(parts["t"])
    expected = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(parts["v1"], expected), f"signature {value} does not verify over the body"
    assert abs(time.time() - t) <= 60, f"signature timestamp {t} is {time.time() - t:.0f} s from now"
    return t


# ------------------------------------------------------------------------------------------ PKI and HTTPS ERP


@dataclass
class Pki:
    """Certificates (trustme) and their PEM files."""

    ca: Any
    ca_file: Path
    server: Any  # issued for 127.0.0.1 and localhost
    wrong_host: Any  # issued for erp.example.test only
    client_cert: Path
    client_key: Path
    client_combined: Path  # certificate and key in one PEM file
    rogue_cert: Path  # a client certificate from another CA
    rogue_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    try:
        import trustme
    except ImportError:  # pragma: no cover - a missing test dependency must be loud, not a skip
        pytest.fail("the TLS tests need `trustme` (pip install trustme; test extra in pyproject.toml)")
    d = tmp_path_factory.mktemp("pki")
    ca, rogue_ca = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    client = ca.issue_cert("erp-sync-client@example.test", common_name="erp-sync-client")
    client.cert_chain_pems[0].write_to_path(str(d / "client.pem"))
    client.private_key_pem.write_to_path(str(d / "client.key"))
    client.private_key_and_cert_chain_pem.write_to_path(str(d / "client-combined.pem"))
    rogue = rogue_ca.issue_cert("rogue@example.test", common_name="rogue")
    rogue.cert_chain_pems[0].write_to_path(str(d / "rogue.pem"))
    rogue.private_key_pem.write_to_path(str(d / "rogue.key"))
    return Pki(ca, d / "ca.pem", ca.issue_cert("127.0.0.1", "localhost"), ca.issue_cert("erp.example.test"),
               d / "client.pem", d / "client.key", d / "client-combined.pem", d / "rogue.pem", d / "rogue.key")


@dataclass
class TlsErp:
    """A small HTTPS ERP (stdlib ``http.server`` + ``ssl``) that accepts every push and records it."""

    context: ssl.SSLContext
    requests: list[dict[str, Any]] = field(default_factory=list)
    handshake_errors: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"https://127.0.0.1:{self.server.server_address[1]}/erp/push"

    def __enter__(self) -> TlsErp:
        erp = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                peer = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
                subject = dict(x[0] for x in peer["subject"]) if peer else None
                erp.requests.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body,
                                     "client_subject": subject, "time": time.time()})
                payload = json.dumps({"Response": {"RequestId": f"tls-{len(erp.requests)}", "Data": {}}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def finish_request(self, request: Any, client_address: Any) -> None:
                # The TLS handshake runs in the connection's own thread, so a failing one is recorded.
                try:
                    tls = erp.context.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    erp.handshake_errors.append(f"{type(exc).__name__}: {exc}")
                    return
                try:
                    self.RequestHandlerClass(tls, client_address, self)
                except (ssl.SSLError, OSError) as exc:
                    erp.handshake_errors.append(f"{type(exc).__name__}: {exc}")
                finally:
                    tls.close()

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, name="tls-erp", daemon=True).start()
        return self

    def saw_failed_handshake(self, timeout_s: float = 5.0) -> bool:
        """True once a failed handshake is recorded (the server thread records it after the client gave up)."""
        deadline = time.monotonic() + timeout_s
        while not self.handshake_errors and time.monotonic() < deadline:
            time.sleep(0.02)
        return bool(self.handshake_errors)

    def __exit__(self, *_exc: Any) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()


def server_context(cert: Any, client_ca: Any | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    if client_ca is not None:  # mTLS: a client certificate from this CA is required
        ctx.verify_mode = ssl.CERT_REQUIRED
        client_ca.configure_trust(ctx)
    return ctx


# ------------------------------------------------------------------------------------------ TLS (ErpClient)


def test_tls_is_verified_by_default_and_a_ca_bundle_makes_it_trusted(pki: Pki) -> None:
    with TlsErp(server_context(pki.server)) as server:
        # No CA bundle: the private CA is not trusted, the push is a retry (never a dead letter).
        client = erp_client(server.url)
        untrusted = push_one(client, 1)
        client.close()
        assert untrusted.outcome is Outcome.RETRY and untrusted.code in TRANSPORT_CODES, untrusted
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted.message, untrusted.message
        assert server.requests == [], "a request reached the ERP over an unverified connection"
        assert server.saw_failed_handshake(), "the client should have aborted the handshake"

        client = erp_client(server.url, ERP_SYNC_ERP_CA_BUNDLE=str(pki.ca_file))
        trusted = push_one(client, 2)
        client.close()
        assert trusted.outcome is Outcome.ACCEPTED, trusted
        assert len(server.requests) == 1

    # The right CA but a certificate for another host: still refused (host name verification).
    with TlsErp(server_context(pki.wrong_host)) as server:
        client = erp_client(server.url, ERP_SYNC_ERP_CA_BUNDLE=str(pki.ca_file))
        wrong_host = push_one(client, 3)
        client.close()
        assert wrong_host.outcome is Outcome.RETRY and wrong_host.code in TRANSPORT_CODES, wrong_host
        assert "mismatch" in wrong_host.message.lower(), wrong_host.message
        assert server.requests == []


def test_tls_verify_off_is_explicit_and_warns(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    with TlsErp(server_context(pki.server)) as server:
        with caplog.at_level(logging.WARNING, logger="consumer.erp"):
            client = erp_client(server.url, ERP_SYNC_ERP_TLS_VERIFY="false")
        verdict = push_one(client, 4)
        client.close()
    assert verdict.outcome is Outcome.ACCEPTED, verdict
    assert [r for r in caplog.records if getattr(r, "event", None) == "tls_verify_off"], caplog.text
    assert not [r for r in caplog.records if getattr(r, "event", None) == "insecure_erp_url"]


def test_mtls_client_certificate_is_sent_and_required(pki: Pki) -> None:
    ca = str(pki.ca_file)
    with TlsErp(server_context(pki.server, client_ca=pki.ca)) as server:
        client = erp_client(server.url, ERP_SYNC_ERP_CA_BUNDLE=ca, ERP_SYNC_ERP_CLIENT_CERT=str(pki.client_cert),
                            ERP_SYNC_ERP_CLIENT_KEY=str(pki.client_key))
        with_cert = push_one(client, 5)
        client.close()
        assert with_cert.outcome is Outcome.ACCEPTED, with_cert
        assert server.requests[-1]["client_subject"]["commonName"] == "erp-sync-client"

        client = erp_client(server.url, ERP_SYNC_ERP_CA_BUNDLE=ca, ERP_SYNC_ERP_CLIENT_CERT=str(pki.client_combined))
        combined = push_one(client, 6)  # certificate and key in one file, no ERP_SYNC_ERP_CLIENT_KEY
        client.close()
        assert combined.outcome is Outcome.ACCEPTED, combined

        accepted = len(server.requests)
        client = erp_client(server.url, ERP_SYNC_ERP_CA_BUNDLE=ca)
        without = push_one(client, 7)
        client.close()
        assert without.outcome is Outcome.RETRY and without.code in TRANSPORT_CODES, without

        client = erp_client(server.url, ERP_SYNC_ERP_CA_BUNDLE=ca, ERP_SYNC_ERP_CLIENT_CERT=str(pki.rogue_cert),
                            ERP_SYNC_ERP_CLIENT_KEY=str(pki.rogue_key))
        rogue = push_one(client, 8)
        client.close()
        assert rogue.outcome is Outcome.RETRY and rogue.code in TRANSPORT_CODES, rogue
        assert len(server.requests) == accepted, "the ERP served a client without a valid certificate"
        assert server.saw_failed_handshake()


def test_unloadable_tls_files_are_configuration_errors(pki: Pki, tmp_path: Path) -> None:
    url = "https://127.0.0.1:9/erp/push"
    with pytest.raises(ConfigError, match="ERP_SYNC_ERP_CA_BUNDLE"):
        erp_client(url, ERP_SYNC_ERP_CA_BUNDLE=str(tmp_path / "missing.pem"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="ERP_SYNC_ERP_CLIENT_CERT"):
        erp_client(url, ERP_SYNC_ERP_CLIENT_CERT=str(garbage))
    with pytest.raises(ConfigError, match="ERP_SYNC_ERP_CLIENT_CERT"):
        erp_client(url, ERP_SYNC_ERP_CLIENT_CERT=str(pki.client_cert), ERP_SYNC_ERP_CLIENT_KEY=str(pki.rogue_key))


# ------------------------------------------------------------------------------------------ TLS (erp-sync run)


@pytest.mark.kafka
def test_tls_and_mtls_end_to_end_through_erp_sync_run(broker: Broker, pki: Pki, tmp_path: Path) -> None:
    topic, group = unique("sec-tls"), unique("group-sec-tls")
    create_topic(broker, topic)
    create_topic(broker, topic + ".dlq")
    evs = [event(6_600_000_000_000_000_001 + i) for i in range(3)]
    produce(broker, topic, [record(e) for e in evs])
    with TlsErp(server_context(pki.server, client_ca=pki.ca)) as server:
        env = consumer_env(broker, topic, group, server.url, ERP_SYNC_COMMIT_INTERVAL_SECONDS="0.2",
                           ERP_SYNC_SHUTDOWN_TIMEOUT_SECONDS="5")
        # 1. Without the CA bundle: every push fails verification; retried, never dead-lettered.
        cp = start_consumer(env, tmp_path / "untrusted.log")
        try:
            wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in cp.log(), 30, "a certificate failure in the log")
            time.sleep(1.0)
        finally:
            code = stop_consumer(cp)
        log1 = cp.log()
        assert code == 0, log1[-3000:]
        assert server.requests == [] and server.saw_failed_handshake()
        assert committed(broker, group, topic) == {0: OFFSET_INVALID}, log1[-3000:]
        assert read_all(broker, topic + ".dlq") == []
        failures = [e for e in log_events(log1) if e.get("event") == "erp_backoff"]
        assert failures and all("CERTIFICATE_VERIFY_FAILED" in e["message"] for e in failures), failures[:2]

        # 2. With the CA bundle and the client certificate: delivered, over verified mTLS.
        env.update(ERP_SYNC_ERP_CA_BUNDLE=str(pki.ca_file), ERP_SYNC_ERP_CLIENT_CERT=str(pki.client_cert),
                   ERP_SYNC_ERP_CLIENT_KEY=str(pki.client_key))
        log2 = run_until_idle(env, tmp_path / "trusted.log", idle_s=1.0, timeout=60).log()
    assert sorted(json.loads(r["body"])["InstanceId"] for r in server.requests) == [e["instance_id"] for e in evs]
    assert {r["client_subject"]["commonName"] for r in server.requests} == {"erp-sync-client"}
    assert committed(broker, group, topic) == high_watermarks(broker, topic), log2[-3000:]
    assert read_all(broker, topic + ".dlq") == []
    names = [e.get("event") for e in log_events(log2)]
    assert "insecure_erp_url" not in names and "tls_verify_off" not in names
    print(f"\n[figures] TLS e2e: untrusted_handshakes={len(server.handshake_errors)}, "
          f"untrusted_retry_log_lines={len(failures)}, delivered={len(server.requests)}", flush=True)


# ------------------------------------------------------------------------------------------ authentication


@pytest.mark.parametrize("source", ["env", "file"])
def test_static_auth_header_and_hmac_signature_arrive_and_verify(erp: ErpStub, stub: StubClient, tmp_path: Path,
                                                                 source: str) -> None:
    if source == "env":
        env = {"ERP_SYNC_ERP_AUTH_HEADER_VALUE": "Bearer env-token-123", "ERP_SYNC_ERP_HMAC_SECRET": "env-hmac-key"}
        header, value, secret = "authorization", "Bearer env-token-123", b"env-hmac-key"
    else:
        token_file, secret_file = tmp_path / "token", tmp_path / "hmac"
        token_file.write_text("  Bearer file-token-456 \n\n")  # a Kubernetes Secret often ends with a newline
        secret_file.write_text("file-hmac-key\n")
        env = {"ERP_SYNC_ERP_AUTH_HEADER_NAME": "X-Api-Key", "ERP_SYNC_ERP_AUTH_HEADER_VALUE_FILE": str(token_file),
               "ERP_SYNC_ERP_HMAC_SECRET_FILE": str(secret_file)}
        header, value, secret = "x-api-key", "Bearer file-token-456", b"file-hmac-key"
    client = erp_client(erp.url, **env)
    try:
        verdicts = [push_one(client, 6_700_000_000_000_000_001 + i) for i in range(3)]
    finally:
        client.close()
    assert [v.outcome for v in verdicts] == [Outcome.ACCEPTED] * 3, verdicts
    reqs = stub.requests()
    assert len(reqs) == 3
    for r in reqs:
        assert r["headers"][header] == value
        body = r["body"].encode("utf-8")
        assert "家里有事".encode() in body  # the signature covers the UTF-8 bytes as sent
        verify_signature(r["headers"], body, secret)
        with pytest.raises(AssertionError):  # and it would not verify over another body
            verify_signature(r["headers"], body.replace(b"3", b"4", 1), secret)


@pytest.mark.kafka
def test_auth_and_signature_end_to_end_and_plain_http_warning(broker: Broker, erp: ErpStub, stub: StubClient,
                                                              tmp_path: Path) -> None:
    topic, group = unique("sec-auth"), unique("group-sec-auth")
    create_topic(broker, topic)
    create_topic(broker, topic + ".dlq")
    evs = [event(6_800_000_000_000_000_001 + i) for i in range(4)]
    produce(broker, topic, [record(e) for e in evs])
    (tmp_path / "token").write_text("Bearer e2e-token-789\n")
    (tmp_path / "hmac").write_text("\ne2e-hmac-key  \n")
    stub.behaviour(script=[{"status": 503}])  # one retry: the re-sent push gets a fresh, valid signature
    env = consumer_env(broker, topic, group, erp.url, ERP_SYNC_COMMIT_INTERVAL_SECONDS="0.2",
                       ERP_SYNC_ERP_AUTH_HEADER_VALUE_FILE=str(tmp_path / "token"),
                       ERP_SYNC_ERP_HMAC_SECRET_FILE=str(tmp_path / "hmac"))
    log = run_until_idle(env, tmp_path / "run.log", idle_s=1.0, timeout=60).log()

    reqs = stub.requests()
    assert len(reqs) == len(evs) + 1 and [r["code"] for r in reqs].count("HTTP_503") == 1, log[-3000:]
    for r in reqs:
        assert r["headers"]["authorization"] == "Bearer e2e-token-789"
        verify_signature(r["headers"], r["body"].encode("utf-8"), b"e2e-hmac-key")
    assert committed(broker, group, topic) == high_watermarks(broker, topic)
    # Plain http:// works, with one warning at start (before consuming begins).
    entries = log_events(log)
    names = [e.get("event") for e in entries]
    assert names.count("insecure_erp_url") == 1, names
    warning = entries[names.index("insecure_erp_url")]
    assert warning["level"] == "WARNING" and "http://" in warning["message"]
    assert names.index("insecure_erp_url") < names.index("started")


# ------------------------------------------------------------------------------------------ secrets never shown

SECRET_AUTH = "s3cr3t-auth-XYZ"
SECRET_HMAC = "s3cr3t-hmac-XYZ"
SECRET_SASL = "s3cr3t-sasl-XYZ"
SECRET_SSL_KEY = "s3cr3t-sslkey-XYZ"
SECRET_URL_PASSWORD = "s3cr3t-url-XYZ"
SECRET_URL_QUERY = "s3cr3t-query-XYZ"
SECRETS = [SECRET_AUTH, SECRET_HMAC, SECRET_SASL, SECRET_SSL_KEY, SECRET_URL_PASSWORD, SECRET_URL_QUERY,
           base64.b64encode(f"erpuser:{SECRET_URL_PASSWORD}".encode()).decode()]


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


@pytest.mark.kafka
def test_secrets_never_appear_in_logs_dead_letters_or_check_config(broker: Broker, erp: ErpStub, stub: StubClient,
                                                                   tmp_path: Path) -> None:
    topic, group = unique("sec-secrets"), unique("group-sec-secrets")
    dlq = topic + ".dlq"
    create_topic(broker, topic)
    create_topic(broker, dlq)
    rejected, retried, dropped = 6_900_000_000_000_000_001, 6_900_000_000_000_000_002, 6_900_000_000_000_000_003
    good = [event(6_900_000_000_000_000_010 + i) for i in range(3)]
    produce(broker, topic, [(b"poison", b"\xff\xfe not avro"), record(event(rejected)), record(event(retried)),
                            record(event(dropped)), *map(record, good)])
    stub.behaviour(rules=[
        {"instance_id": rejected, "response": {"code": "InvalidParameter.FlowCode", "message": "unknown flow"}},
        {"instance_id": retried, "times": 1, "response": {"status": 503}},
        {"instance_id": dropped, "times": 2, "response": {"close": True}},  # transport errors, then accepted
    ])
    port = erp.base_url.rsplit(":", 1)[1]
    # credentials in the URL's userinfo are refused at start; a secret in the query string is allowed
    url = f"http://127.0.0.1:{port}/erp/push?apikey={SECRET_URL_QUERY}"
    env = consumer_env(broker, topic, group, url, ERP_SYNC_COMMIT_INTERVAL_SECONDS="0.2", ERP_SYNC_LOG_LEVEL="DEBUG",
                       ERP_SYNC_ERP_AUTH_HEADER_NAME="X-Erp-Token",
                       ERP_SYNC_ERP_AUTH_HEADER_VALUE=f"Bearer {SECRET_AUTH}",
                       ERP_SYNC_ERP_HMAC_SECRET=SECRET_HMAC,
                       # librdkafka secrets that a PLAINTEXT connection ignores (sasl.* is only used with
                       # SASL, ssl.key.password only with SSL): they reach librdkafka and are redacted.
                       ERP_SYNC_KAFKA_SASL_PASSWORD=SECRET_SASL,
                       ERP_SYNC_KAFKA_PRODUCER_SSL_KEY_PASSWORD=SECRET_SSL_KEY)
    log = run_until_idle(env, tmp_path / "run.log", idle_s=1.0, timeout=60).log()

    # The run did everything that could leak: retries (HTTP and transport), an ERP reject, a decode error.
    reqs = stub.requests()
    codes = [r["code"] for r in reqs]
    assert {"HTTP_503", "CLOSED", "InvalidParameter.FlowCode", "OK"} <= set(codes), codes
    for r in reqs:  # ...with the secrets in use
        assert r["headers"]["x-erp-token"] == f"Bearer {SECRET_AUTH}"
        verify_signature(r["headers"], r["body"].encode("utf-8"), SECRET_HMAC.encode())
        assert "authorization" not in r["headers"]
    letters = read_all(broker, dlq)
    assert sorted(dict(m.headers())["erp_sync.error.class"] for m in letters) == [b"decode", b"erp"]
    assert committed(broker, group, topic) == high_watermarks(broker, topic), log[-3000:]
    names = {e.get("event") for e in log_events(log)}
    assert {"config", "started", "erp_backoff", "dead_letter", "insecure_erp_url"} <= names, names

    assert not leaks(log), f"secrets {leaks(log)} in the consumer log"
    for m in letters:
        text = " ".join(f"{k}={(v or b'').decode('utf-8', 'replace')}" for k, v in m.headers() or [])
        assert not leaks(text), f"secrets {leaks(text)} in dead-letter headers: {text}"

    check = subprocess.run([ERP_SYNC, "check-config"], env=env, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert not leaks(check.stdout + check.stderr), f"secrets {leaks(check.stdout + check.stderr)} in check-config"
    shown = json.loads(check.stdout)
    for name in ("ERP_SYNC_ERP_AUTH_HEADER_VALUE", "ERP_SYNC_ERP_HMAC_SECRET", "ERP_SYNC_KAFKA_SASL_PASSWORD",
                 "ERP_SYNC_KAFKA_PRODUCER_SSL_KEY_PASSWORD"):
        assert shown[name] == "**********", (name, shown.get(name))
    assert shown["ERP_SYNC_ERP_URL"] == f"http://127.0.0.1:{port}/erp/push?****"


def check_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ERP_SYNC, "check-config"], env={**base_env(), **env}, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("variable", [
    "ERP_SYNC_KAFKA_SASL_PASSWORD",
    "ERP_SYNC_KAFKA_SSL_KEY_PASSWORD",
    "ERP_SYNC_KAFKA_SSL_KEYSTORE_PASSWORD",
    "ERP_SYNC_KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET",
    "ERP_SYNC_KAFKA_CONSUMER_SASL_PASSWORD",
    "ERP_SYNC_KAFKA_SASL_OAUTHBEARER_CONFIG",
])
def test_check_config_redacts_librdkafka_secrets(variable: str) -> None:
    secret = "s3cr3t-kafka-XYZ"
    value = f"principal=erp-sync token={secret}" if variable.endswith("OAUTHBEARER_CONFIG") else secret
    result = check_config({"ERP_SYNC_ERP_URL": "https://erp.example.test/push", variable: value})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[variable] == "**********"
    assert secret not in result.stdout + result.stderr


def test_invalid_erp_url_error_does_not_echo_its_credentials() -> None:
    bad = f"htps://erpuser:{SECRET_URL_PASSWORD}@erp.example.test/push?apikey={SECRET_URL_QUERY}"
    for command in ("check-config", "run"):
        result = subprocess.run([ERP_SYNC, command], env={**base_env(), "ERP_SYNC_ERP_URL": bad},
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "ERP_SYNC_ERP_URL" in result.stderr, (command, result.stderr)
        assert not leaks(result.stdout + result.stderr), f"{command}: {result.stderr.strip()}"


def test_token_only_userinfo_is_refused_without_echoing_it() -> None:
    # credentials in the URL are refused (they would end up in logs); the error must not echo them
    result = check_config({"ERP_SYNC_ERP_URL": f"https://{SECRET_URL_PASSWORD}@erp.example.test/push"})
    assert result.returncode == 2, result.stderr
    assert "ERP_SYNC_ERP_AUTH_HEADER_VALUE" in result.stderr
    invalid = check_config({"ERP_SYNC_ERP_URL": f"htps://{SECRET_URL_PASSWORD}@erp.example.test/push"})
    assert invalid.returncode == 2, invalid.stderr
    assert not leaks(result.stdout + result.stderr), result.stderr
    assert not leaks(invalid.stderr), invalid.stderr


def test_redact_url_masks_any_userinfo_and_query() -> None:
    from consumer.settings import redact_url

    assert redact_url("https://tok@h.example/p?k=v") == "https://****@h.example/p?****"
    assert redact_url("https://u:p@h.example/p") == "https://****@h.example/p"
    assert redact_url("https://h.example/p") == "https://h.example/p"


def test_url_userinfo_does_not_silently_replace_the_configured_auth_header(erp: ErpStub, stub: StubClient) -> None:
    port = erp.base_url.rsplit(":", 1)[1]
    url = f"http://erpuser:{SECRET_URL_PASSWORD}@127.0.0.1:{port}/erp/push"
    try:
        client = erp_client(url, ERP_SYNC_ERP_AUTH_HEADER_VALUE="Bearer configured-token")
    except ConfigError as exc:  # refusing the ambiguous configuration is a fix too
        assert "ERP_SYNC_ERP_AUTH_HEADER" in str(exc) and SECRET_URL_PASSWORD not in str(exc)
        return
    try:
        assert push_one(client, 6_950_000_000_000_000_001).outcome is Outcome.ACCEPTED
    finally:
        client.close()
    assert stub.requests()[0]["headers"]["authorization"] == "Bearer configured-token"


def test_refused_connection_is_connect_error() -> None:
    """httpx-aiohttp maps a refused connection to ConnectTimeout; the verdict must say ConnectError."""
    port = free_port()  # nothing listens there
    client = erp_client(f"http://127.0.0.1:{port}/erp/push")
    body, key = transform.erp_request(event(7))
    verdict = client.post(body, key)
    client.close()
    assert (verdict.outcome, verdict.code) == (Outcome.RETRY, "ConnectError"), verdict
    assert f"127.0.0.1:{port}" in verdict.message
