"""Confluent-framed values resolved through a schema registry (a real HTTP server answering the
registry's REST API for one schema id), with confluent-kafka's SchemaRegistryClient."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from consumer.decode import SCHEMA_JSON, decode, registry_lookup
from consumer.decode.schema import parse_plain_schema
from consumer.devstack.events import confluent_frame, encode, spec_example_event
from consumer.errors import DecodeError

V2 = dict(SCHEMA_JSON)
# a later writer version: one extra optional field; the v1 reader must still decode it
V2["fields"] = [*SCHEMA_JSON["fields"], {"name": "tenant", "type": ["null", "string"], "default": None}]


@pytest.fixture
def registry() -> Iterator[tuple[str, list[str]]]:
    schemas = {7: json.dumps(SCHEMA_JSON), 8: json.dumps(V2)}
    calls: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            calls.append(self.path)
            schema_id = int(self.path.split("/schemas/ids/")[1].split("?")[0]) if "/schemas/ids/" in self.path else -1
            if schema_id in schemas:
                status, doc = 200, {"schema": schemas[schema_id]}
            else:
                status, doc = 404, {"error_code": 40403, "message": "Schema not found"}
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", calls
    finally:
        server.shutdown()


def test_confluent_framed_value_decodes_through_the_registry(registry: tuple[str, list[str]]) -> None:
    url, calls = registry
    lookup = registry_lookup(url)
    value = confluent_frame(7, encode(spec_example_event()))
    assert decode(value, writer_schema_lookup=lookup) == decode(
        encode(spec_example_event()))
    decode(value, writer_schema_lookup=lookup)
    assert len(calls) == 1  # parsed schema cached by id


def test_newer_writer_schema_is_resolved_to_v1(registry: tuple[str, list[str]]) -> None:
    import io

    import fastavro

    url, _ = registry
    event = {**spec_example_event(), "tenant": "acme"}
    out = io.BytesIO()
    fastavro.schemaless_writer(out, parse_plain_schema(V2), event)
    decoded = decode(confluent_frame(8, out.getvalue()), writer_schema_lookup=registry_lookup(url))
    assert "tenant" not in decoded
    assert decoded["instance_id"] == 1427810976874430514
    assert decoded["start_time"] == 1427811121259155459


def test_unknown_schema_id_is_a_decode_error(registry: tuple[str, list[str]]) -> None:
    url, _ = registry
    value = confluent_frame(99, encode(spec_example_event()))
    with pytest.raises(DecodeError) as info:
        decode(value, writer_schema_lookup=registry_lookup(url))
    assert info.value.code == "UnknownSchemaId"
    assert "99" in info.value.message
