"""The ``WorkflowCompleted`` event: the v1 Avro schema, decoding and encoding.

Rules implemented here (EVENT-CONTRACT.md "Messages", issue "main job" Decode):

* The value is bare Avro binary written with the v1 schema. It is read by
  :mod:`consumer.avro_v1`, a reader specialised to that schema (compiled by mypyc at install);
  a Confluent-framed value with a registry writer schema is resolved by fastavro, with the schema
  parsed once and cached.
* Every ``long`` stays a Python ``int`` exactly as written. The schema's ``timestamp-millis``
  logical types are removed before parsing, so fastavro never turns a time into a ``datetime``
  (the spec's own example times are 19-digit Longs that are not plausible epoch milliseconds).
* An enum or union index outside the schema is an error (fastavro would wrap a negative one
  around: a corrupt ``REJECTED`` could read as ``APPROVED``), so is a number beyond 64 bits.
* A value that is empty, missing, truncated, longer than one record, not valid UTF-8 in a string,
  or Confluent-framed (magic byte ``0x00`` + 4-byte schema id) while no schema registry is
  configured raises :class:`~consumer.errors.DecodeError`.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import fastavro
from fastavro.types import Schema

from . import avro_v1
from .errors import DecodeError

SCHEMA_FILE = "workflow_completed.v1.avsc"
CONFLUENT_MAGIC = 0
"""First byte of the Confluent wire format (then a 4-byte big-endian schema id)."""

Event = dict[str, Any]
"""A decoded event: the Avro record as a dict, field names as in the .avsc."""


def schema_path() -> Path:
    """Return the path of the v1 ``.avsc``: bundled in the wheel, or ``schemas/`` of a checkout."""
    bundled = resources.files("consumer").joinpath("_schemas").joinpath(SCHEMA_FILE)
    if bundled.is_file():
        return Path(str(bundled))
    return Path(__file__).resolve().parent.parent / "schemas" / SCHEMA_FILE


def _strip_logical_types(node: Any) -> Any:
    """Return a copy of a schema (JSON form) without ``logicalType`` keys.

    Logical types do not change the binary encoding; removing them keeps longs as ints.
    """
    if isinstance(node, dict):
        return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


def load_schema_json(path: Path | None = None) -> dict[str, Any]:
    """Load the v1 schema as JSON (unchanged, logical types included)."""
    with open(path or schema_path(), encoding="utf-8") as f:
        loaded: dict[str, Any] = json.load(f)
    return loaded


def parse_plain_schema(schema_json: Mapping[str, Any]) -> Schema:
    """Parse an Avro schema for decoding with logical types removed (so longs stay ``int``)."""
    return fastavro.parse_schema(_strip_logical_types(dict(schema_json)))


SCHEMA_JSON = load_schema_json()
READER_SCHEMA = parse_plain_schema(SCHEMA_JSON)
STATUSES: tuple[str, ...] = tuple(
    next(f for f in SCHEMA_JSON["fields"] if f["name"] == "status")["type"]["symbols"]
)

WriterSchemaLookup = Callable[[int], Schema]
"""Resolves a Confluent schema id to a parsed writer schema (a schema-registry client)."""


def decode(
    value: bytes | None,
    *,
    max_bytes: int | None = None,
    writer_schema_lookup: WriterSchemaLookup | None = None,
) -> Event:
    """Decode one Kafka value into an event.

    Args:
        value: the record's value bytes (``None`` for a tombstone / missing value).
        max_bytes: values longer than this many bytes are refused (``ValueTooLarge``).
        writer_schema_lookup: when a schema registry is configured, resolves the schema id of a
            Confluent-framed value; the record is then resolved to the v1 reader schema.

    Returns:
        The event as a dict with the v1 field names; longs as ``int``, ``status`` as its symbol.

    Raises:
        DecodeError: code ``MissingValue``, ``ValueTooLarge``, ``ConfluentFramed``,
            ``UnknownSchemaId``, ``InvalidAvro``, ``InvalidUtf8`` or ``TrailingBytes``.
    """
    event = _decode(value, max_bytes, writer_schema_lookup, approved_only=False)
    assert event is not None  # approved_only=False always builds the event
    return event


def decode_approved(
    value: bytes | None,
    *,
    max_bytes: int | None = None,
    writer_schema_lookup: WriterSchemaLookup | None = None,
) -> Event | None:
    """Decode one Kafka value, building the event only when it will be pushed (the pipeline's path).

    Same checks and errors as :func:`decode`: a corrupt record raises whatever its status. A valid
    record whose status is not ``APPROVED`` returns ``None`` (to be skipped) without building its
    fields, which halves the decoding cost of a topic where half the instances are not approved.
    """
    return _decode(value, max_bytes, writer_schema_lookup, approved_only=True)


def _decode(
    value: bytes | None, max_bytes: int | None, writer_schema_lookup: WriterSchemaLookup | None, approved_only: bool
) -> Event | None:
    if value is None or len(value) == 0:
        raise DecodeError("MissingValue", "the record has no value (empty or tombstone)")
    if max_bytes is not None and len(value) > max_bytes:
        raise DecodeError(
            "ValueTooLarge", f"value is {len(value)} bytes, above the limit of {max_bytes} bytes"
        )
    # A bare v1 record starts with event_id's length; 0x00 would be an empty event_id, which the
    # contract never produces (it is a UUID), so a leading 0x00 means the Confluent wire format.
    if value[0] == CONFLUENT_MAGIC and len(value) >= 5:
        event = _decode_framed(value, writer_schema_lookup)
        return None if approved_only and event.get("status") != "APPROVED" else event
    if type(value) is not bytes:  # the compiled reader takes exactly bytes (bytearray, memoryview: copied)
        value = bytes(value)
    try:
        result, end = avro_v1.read_event(value, 0, approved_only)
    except UnicodeDecodeError as exc:
        raise DecodeError("InvalidUtf8", f"a string field is not valid UTF-8: {exc.reason}") from exc
    except ValueError as exc:
        raise DecodeError("InvalidAvro", f"not a v1 WorkflowCompleted record: {exc}") from exc
    if end != len(value):
        raise DecodeError(
            "TrailingBytes",
            f"{len(value) - end} bytes after the end of the record (wrong schema or framing)",
        )
    return result


def _decode_framed(value: bytes, writer_schema_lookup: WriterSchemaLookup | None) -> Event:
    """A Confluent-framed value: its writer schema from the registry, resolved to v1 by fastavro."""
    schema_id = int.from_bytes(value[1:5], "big")
    if writer_schema_lookup is None:
        raise DecodeError(
            "ConfluentFramed",
            f"value is in the Confluent wire format (schema id {schema_id}) but no schema "
            "registry is configured (set ERP_SYNC_SCHEMA_REGISTRY_URL)",
        )
    try:
        writer = writer_schema_lookup(schema_id)
    except Exception as exc:  # registry client errors are many; all mean "cannot resolve"
        raise DecodeError("UnknownSchemaId", f"schema id {schema_id}: {exc}") from exc
    body = io.BytesIO(value)
    body.seek(5)
    try:
        event = fastavro.schemaless_reader(body, writer, READER_SCHEMA)
    except UnicodeDecodeError as exc:
        raise DecodeError("InvalidUtf8", f"a string field is not valid UTF-8: {exc.reason}") from exc
    except Exception as exc:  # fastavro raises EOFError, IndexError, ValueError, SchemaResolutionError…
        raise DecodeError("InvalidAvro", f"not a v1 WorkflowCompleted record: {type(exc).__name__}: {exc}") from exc
    if body.tell() != len(value):
        raise DecodeError(
            "TrailingBytes",
            f"{len(value) - body.tell()} bytes after the end of the record (wrong schema or framing)",
        )
    if not isinstance(event, dict):
        raise DecodeError("InvalidAvro", "decoded value is not a record")
    _check_indexes(value, 5, _writer_walker(writer))
    return event


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """Read one zig-zag varint at ``pos``; return ``(value, next position)``."""
    shift = raw = 0
    while True:
        byte = data[pos]
        pos += 1
        raw |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (raw >> 1) ^ -(raw & 1), pos
        shift += 7


Walker = Callable[[bytes, int], int]
"""Walks one Avro value at a position and returns the position after it."""


def _compile_walker(schema: Any, named: dict[str, Any], namespace: str = "") -> Walker:
    """Compile an Avro schema (JSON form, or fastavro-parsed) into a walker over a value's bytes.

    The walker raises ``ValueError`` on an enum or union index outside the schema (fastavro's
    reader wraps negative ones around) or a negative length. It builds nothing, so it costs a
    fraction of a decode.
    """
    if isinstance(schema, list):
        branches: list[Walker] = []
        walk_branches = [(_compile_walker(b, named, namespace)) for b in schema]
        branches.extend(walk_branches)

        def union(data: bytes, pos: int) -> int:
            index, pos = _varint(data, pos)
            if not 0 <= index < len(branches):
                raise ValueError(f"union index {index} outside [0, {len(branches)})")
            return branches[index](data, pos)
        return union
    if isinstance(schema, str):
        if schema in _PRIMITIVE_WALKERS:
            return _PRIMITIVE_WALKERS[schema]
        full = schema if "." in schema or not namespace else f"{namespace}.{schema}"
        target = named.get(full) or named[schema]
        return lambda data, pos: target[0](data, pos)
    kind = schema["type"]
    if kind in _PRIMITIVE_WALKERS:
        return _PRIMITIVE_WALKERS[kind]
    if kind in ("record", "error", "enum", "fixed"):
        ns = schema.get("namespace", namespace)
        name = schema["name"] if "." in schema["name"] or not ns else f"{ns}.{schema['name']}"
        slot: list[Walker] = []
        named[name] = named[schema["name"]] = slot  # before the fields: recursive types
        if kind == "enum":
            size = len(schema["symbols"])

            def enum(data: bytes, pos: int) -> int:
                index, pos = _varint(data, pos)
                if not 0 <= index < size:
                    raise ValueError(f"enum index {index} outside [0, {size})")
                return pos
            slot.append(enum)
        elif kind == "fixed":
            length = int(schema["size"])
            slot.append(lambda data, pos: pos + length)
        else:
            fields = [_compile_walker(f["type"], named, ns) for f in schema["fields"]]

            def record(data: bytes, pos: int) -> int:
                for field in fields:
                    pos = field(data, pos)
                return pos
            slot.append(record)
        return slot[0]
    if kind in ("array", "map"):
        item = _compile_walker(schema["items" if kind == "array" else "values"], named, namespace)
        is_map = kind == "map"

        def blocks(data: bytes, pos: int) -> int:
            while True:
                count, pos = _varint(data, pos)
                if count == 0:
                    return pos
                if count < 0:
                    count = -count
                    _, pos = _varint(data, pos)  # block size in bytes
                for _ in range(count):
                    if is_map:
                        pos = _skip_bytes(data, pos)
                    pos = item(data, pos)
        return blocks
    raise ValueError(f"unsupported schema type {kind!r}")


def _skip_bytes(data: bytes, pos: int) -> int:
    length, pos = _varint(data, pos)
    if length < 0:
        raise ValueError(f"negative length {length}")
    return pos + length


_PRIMITIVE_WALKERS: dict[str, Walker] = {
    "null": lambda data, pos: pos,
    "boolean": lambda data, pos: pos + 1,
    "int": lambda data, pos: _varint(data, pos)[1],
    "long": lambda data, pos: _varint(data, pos)[1],
    "float": lambda data, pos: pos + 4,
    "double": lambda data, pos: pos + 8,
    "bytes": _skip_bytes,
    "string": _skip_bytes,
}


_WALKERS: dict[int, tuple[Any, Walker]] = {}


def _writer_walker(writer: Schema) -> Walker:
    """The compiled walker of a registry writer schema (cached; the lookup caches schemas)."""
    cached = _WALKERS.get(id(writer))
    if cached is None or cached[0] is not writer:
        cached = (writer, _compile_walker(writer, {}))
        _WALKERS[id(writer)] = cached
    return cached[1]


def _check_indexes(value: bytes, start: int, walker: Walker | None) -> None:
    """Refuse enum/union indexes that fastavro's reader silently wraps around.

    fastavro 1.x indexes ``symbols[i]`` with a negative ``i`` from corrupt bytes, so a corrupt
    REJECTED record would read as APPROVED. A compiled walk over the bytes checks every index.

    Raises:
        DecodeError: ``InvalidAvro``.
    """
    if walker is None:
        return
    try:
        end = walker(value, start)
    except (ValueError, IndexError, KeyError) as exc:
        raise DecodeError("InvalidAvro", f"not a v1 WorkflowCompleted record: {exc}") from exc
    if end != len(value):
        raise DecodeError("InvalidAvro", "not a v1 WorkflowCompleted record: record length mismatch")


def registry_lookup(url: str, extra_config: Mapping[str, str] | None = None) -> WriterSchemaLookup:
    """A schema-id → writer-schema resolver backed by a Confluent-compatible schema registry.

    Uses confluent-kafka's ``SchemaRegistryClient``; parsed schemas are cached here by id, so the
    registry is asked once per schema id. An unknown id (404) fails at once; a registry that does
    not answer is asked 3 times, 1 s apart, then the record is dead-lettered (``UnknownSchemaId``)
    and can be replayed with ``erp-sync dlq replay``.

    Args:
        url: the registry URL (``ERP_SYNC_SCHEMA_REGISTRY_URL``).
        extra_config: more client settings (``basic.auth.user.info``…).
    """
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    client = SchemaRegistryClient({"url": url, **(extra_config or {})})
    parsed: dict[int, Schema] = {}

    def fetch(schema_id: int) -> Any:
        for attempt in range(3):
            try:
                return client.get_schema(schema_id)
            except SchemaRegistryError as exc:
                if exc.http_status_code == 404 or attempt == 2:
                    raise
            except Exception:  # transport errors: the registry may be restarting
                if attempt == 2:
                    raise
            time.sleep(1.0)
        raise AssertionError("unreachable")

    def lookup(schema_id: int) -> Schema:
        schema = parsed.get(schema_id)
        if schema is None:
            registered = fetch(schema_id)
            if registered.schema_type not in (None, "AVRO"):
                raise ValueError(f"schema {schema_id} is {registered.schema_type}, not AVRO")
            schema = parse_plain_schema(json.loads(registered.schema_str or "null"))
            parsed[schema_id] = schema
        return schema

    return lookup


def encode(event: Mapping[str, Any]) -> bytes:
    """Encode an event as bare v1 Avro binary (the producer side; used by samples and tests).

    Args:
        event: a dict with the v1 field names; ``start_time`` may be ``None``.

    Raises:
        ValueError: the dict does not match the schema.
    """
    out = io.BytesIO()
    fastavro.schemaless_writer(out, READER_SCHEMA, dict(event))
    return out.getvalue()


def confluent_frame(schema_id: int, avro_bytes: bytes) -> bytes:
    """Prefix Avro bytes with the Confluent wire-format header (magic byte + schema id)."""
    return bytes([CONFLUENT_MAGIC]) + schema_id.to_bytes(4, "big") + avro_bytes


def spec_example_event() -> Event:
    """The specification's example as an event (EVENT-CONTRACT.md, last section)."""
    return {
        "event_id": "3f1c2a9e-5b7d-4c1e-9a0b-6d2e8f4a1c3b",
        "event_time": 1732886400000,
        "flow_code": 1425737370216521773,
        "instance_id": 1427810976874430514,
        "status": "APPROVED",
        "start_time": 1427811121259155459,
        "end_time": 1427811121259155459,
        "start_user": {"source_uid": "1427811121259155459", "tenant_uid": "1427811121259155459"},
        "variables": {
            "LevelInfo": {"type": "object", "value": '{"Name": "1425736144334716972", "Days": 3}'}
        },
        "approvals": [
            {
                "node_id": "manager",
                "approver": {"source_uid": "u-7", "tenant_uid": "7"},
                "action": "approve",
                "comment": None,
                "acted_at": 1732886300000,
            }
        ],
    }
