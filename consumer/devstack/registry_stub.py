"""A schema registry for the local stack: the Confluent REST calls confluent-kafka's client and serializers make.

The real registry of the local stack and the tests is Apicurio Registry (``dev/registry.sh``; see
dev/README.md, "Schema registry"). This stub serves what that one cannot without an OpenID Connect
server: TLS with client certificates and HTTP Basic auth. It answers, over real HTTP, the subset of
the Confluent Schema Registry API that confluent-kafka's ``SchemaRegistryClient``, ``AvroSerializer``
and ``AvroDeserializer`` call, with Confluent's status codes and error bodies:

=======================================================  ==============================================
``POST /subjects/{subject}/versions``                    register (the same schema text: the same id)
``POST /subjects/{subject}``                             look a schema up under a subject
``GET /subjects``                                        the subjects
``GET /subjects/{subject}/versions``                     the versions of a subject
``GET /subjects/{subject}/versions/{n|latest}``          one version
``GET /schemas/ids/{id}``                                a schema by id (``?subject=`` accepted)
``GET /schemas/ids/{id}/versions``                       the subject-versions of an id
``GET /schemas/types``                                   ``["AVRO"]``
``GET|PUT /config``, ``GET|PUT /config/{subject}``       compatibility level (stored, not enforced)
=======================================================  ==============================================

Errors: 404 ``{"error_code": 40401|40402|40403, "message": …}`` (subject, version, schema not found),
422 ``42201`` (not a valid Avro schema: parsed with fastavro), 401 without the configured credentials.
Schema ids are global and start at 1, as in Confluent's registry. ``calls`` records every request line.

    python -m consumer.devstack.registry_stub --port 8081
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class _Store:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.schemas: list[tuple[str, str]] = []  # id - 1 → (schema text, type)
        self.subjects: dict[str, list[int]] = {}  # subject → schema ids by version - 1
        self.compatibility: dict[str, str] = {"": "BACKWARD"}

    def register(self, subject: str, text: str, schema_type: str) -> tuple[int, int]:
        with self.lock:
            canonical = _canonical(text)
            schema_id = next((i + 1 for i, (t, k) in enumerate(self.schemas)
                              if _canonical(t) == canonical and k == schema_type), None)
            if schema_id is None:
                self.schemas.append((text, schema_type))
                schema_id = len(self.schemas)
            versions = self.subjects.setdefault(subject, [])
            if schema_id not in versions:
                versions.append(schema_id)
            return schema_id, versions.index(schema_id) + 1


def _canonical(text: str) -> str:
    try:
        return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return text


class RegistryStub:
    """The registry in a background thread.

    Args:
        user_info: ``user:password`` every request must carry (HTTP Basic); None: no auth.
        tls: a server SSL context (HTTPS); None: plain HTTP.
    """

    def __init__(self, user_info: str | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.user_info = user_info
        self.tls = tls
        self.store = _Store()
        self.calls: list[str] = []
        self.unavailable = False
        """True: every request is answered 503 (a registry outage), the schemas kept."""
        self._server: ThreadingHTTPServer | None = None

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve in a background thread; return the base URL."""
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                self._serve("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._serve("POST")

            def do_PUT(self) -> None:  # noqa: N802
                self._serve("PUT")

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                stub.calls.append(f"{method} {self.path}")
                if stub.unavailable:
                    self._send(503, {"error_code": 50301, "message": "Service Unavailable (stub.unavailable)"})
                    return
                if stub.user_info is not None and not _authorized(self.headers.get("Authorization"), stub.user_info):
                    self._send(401, {"error_code": 401, "message": "Unauthorized"})
                    return
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    self._send(400, {"error_code": 400, "message": "body is not JSON"})
                    return
                status, doc = stub.answer(method, self.path, body)
                self._send(status, doc)

            def _send(self, status: int, doc: Any) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, name="registry-stub", daemon=True).start()
        self._server = server
        return self.url

    @property
    def url(self) -> str:
        """``http(s)://127.0.0.1:PORT``."""
        assert self._server is not None, "not started"
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> RegistryStub:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------------ the API

    def answer(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """The status and JSON document of one request."""
        parts = urlsplit(path)
        route = unquote(parts.path).rstrip("/")
        query = parse_qs(parts.query)
        for pattern, verb, handler in self._routes():
            match = re.fullmatch(pattern, route)
            if match and verb == method:
                return handler(*match.groups(), body=body, query=query)
        return 404, {"error_code": 404, "message": f"HTTP 404 Not Found: {method} {route}"}

    def _routes(self) -> list[tuple[str, str, Callable[..., tuple[int, Any]]]]:
        return [
            (r"/subjects/(.+)/versions", "POST", self._register),
            (r"/subjects/(.+)/versions", "GET", self._versions),
            (r"/subjects/(.+)/versions/(latest|-?\d+)", "GET", self._version),
            (r"/subjects/(.+)", "POST", self._lookup),
            (r"/subjects", "GET", self._subjects),
            (r"/schemas/ids/(\d+)", "GET", self._by_id),
            (r"/schemas/ids/(\d+)/versions", "GET", self._id_versions),
            (r"/schemas/types", "GET", lambda **_: (200, ["AVRO"])),
            (r"/config", "GET", lambda **_: (200, {"compatibilityLevel": self.store.compatibility[""]})),
            (r"/config", "PUT", lambda body, **_: self._set_config("", body)),
            (r"/config/(.+)", "GET", self._config),
            (r"/config/(.+)", "PUT", lambda subject, body, **_: self._set_config(subject, body)),
        ]

    def _schema_of(self, body: dict[str, Any]) -> tuple[int, Any] | tuple[str, str]:
        text, schema_type = body.get("schema"), body.get("schemaType") or "AVRO"
        if not isinstance(text, str) or schema_type != "AVRO":
            return 422, {"error_code": 42201, "message": "Either the input schema or one of its references is invalid"}
        import fastavro

        try:
            fastavro.parse_schema(json.loads(text))
        except Exception as exc:  # noqa: BLE001 - any parse failure is Confluent's 42201
            return 422, {"error_code": 42201, "message": f"Invalid schema: {exc}"}
        return text, schema_type

    def _register(self, subject: str, body: dict[str, Any], **_: Any) -> tuple[int, Any]:
        checked = self._schema_of(body)
        if isinstance(checked[0], int):
            return checked
        text, schema_type = checked
        schema_id, version = self.store.register(subject, str(text), str(schema_type))
        return 200, {"id": schema_id, "subject": subject, "version": version, "schema": text}

    def _lookup(self, subject: str, body: dict[str, Any], **_: Any) -> tuple[int, Any]:
        versions = self.store.subjects.get(subject)
        if versions is None:
            return 404, {"error_code": 40401, "message": f"Subject '{subject}' not found."}
        canonical = _canonical(str(body.get("schema")))
        for version, schema_id in enumerate(versions, 1):
            if _canonical(self.store.schemas[schema_id - 1][0]) == canonical:
                return 200, self._version_doc(subject, version, schema_id)
        return 404, {"error_code": 40403, "message": "Schema not found"}

    def _version_doc(self, subject: str, version: int, schema_id: int) -> dict[str, Any]:
        return {"subject": subject, "version": version, "id": schema_id, "schema": self.store.schemas[schema_id - 1][0]}

    def _subjects(self, **_: Any) -> tuple[int, Any]:
        return 200, sorted(self.store.subjects)

    def _versions(self, subject: str, **_: Any) -> tuple[int, Any]:
        versions = self.store.subjects.get(subject)
        if versions is None:
            return 404, {"error_code": 40401, "message": f"Subject '{subject}' not found."}
        return 200, list(range(1, len(versions) + 1))

    def _version(self, subject: str, version: str, **_: Any) -> tuple[int, Any]:
        versions = self.store.subjects.get(subject)
        if versions is None:
            return 404, {"error_code": 40401, "message": f"Subject '{subject}' not found."}
        n = len(versions) if version in ("latest", "-1") else int(version)
        if not 1 <= n <= len(versions):
            return 404, {"error_code": 40402, "message": f"Version {version} not found."}
        return 200, self._version_doc(subject, n, versions[n - 1])

    def _by_id(self, schema_id: str, **_: Any) -> tuple[int, Any]:
        n = int(schema_id)
        if not 1 <= n <= len(self.store.schemas):
            return 404, {"error_code": 40403, "message": f"Schema {n} not found"}
        return 200, {"schema": self.store.schemas[n - 1][0]}  # AVRO: no schemaType, as Confluent answers

    def _id_versions(self, schema_id: str, **_: Any) -> tuple[int, Any]:
        n = int(schema_id)
        found = [{"subject": s, "version": v} for s, ids in sorted(self.store.subjects.items())
                 for v, i in enumerate(ids, 1) if i == n]
        if not found:
            return 404, {"error_code": 40403, "message": f"Schema {n} not found"}
        return 200, found

    def _config(self, subject: str, **_: Any) -> tuple[int, Any]:
        level = self.store.compatibility.get(subject)
        if level is None:
            return 404, {"error_code": 40408, "message": f"Subject '{subject}' does not have subject-level compatibility configured"}  # noqa: E501
        return 200, {"compatibilityLevel": level}

    def _set_config(self, subject: str, body: dict[str, Any]) -> tuple[int, Any]:
        level = str(body.get("compatibility", "")).upper()
        self.store.compatibility[subject] = level
        return 200, {"compatibility": level}


def _authorized(header: str | None, user_info: str) -> bool:
    if not header or not header.lower().startswith("basic "):
        return False
    try:
        return base64.b64decode(header[6:].strip()).decode("utf-8") == user_info
    except (ValueError, UnicodeDecodeError):
        return False


def main(argv: list[str] | None = None) -> None:
    """``python -m consumer.devstack.registry_stub [--port N]``: serve until interrupted."""
    parser = argparse.ArgumentParser(description="A Confluent-API schema registry stub (in memory).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args(argv)
    stub = RegistryStub()
    print(stub.start(args.host, args.port), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        stub.stop()


if __name__ == "__main__":
    main()
