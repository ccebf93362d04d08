"""Kafka value → event: the decoding rules (EVENT-CONTRACT.md "Messages"; issue "main job" Decode).

* The value is bare Avro binary written with the v1 schema, read by :mod:`.avro_v1`, a reader
  specialised to that schema (compiled by mypyc at install). A Confluent-framed value (magic byte
  ``0x00`` + 4-byte schema id) is resolved from its registry writer schema to v1 by fastavro, and its
  enum and union indexes checked by :mod:`.walker`.
* Every ``long`` stays a Python ``int`` exactly as written (logical types are not applied).
* An enum or union index outside the schema is an error (fastavro would wrap a negative one
  around: a corrupt ``REJECTED`` could read as ``APPROVED``), so is a number beyond 64 bits.
* A value that is empty, missing, too large, truncated, longer than one record, not valid UTF-8 in a
  string, or Confluent-framed while no schema registry is configured raises
  :class:`~consumer.errors.DecodeError`, whose code becomes the dead letter's ``erp_sync.error.code``.

:class:`Decoder` is the configured callable the consumer and the replay tools use, in the shape of
confluent-kafka's ``Deserializer``: built once from the settings, called per value.
"""

from __future__ import annotations

import io

import fastavro

from ..errors import DecodeError
from . import avro_v1
from .registry import WriterSchemaLookup
from .schema import READER_SCHEMA, Event
from .walker import check_indexes, writer_walker

CONFLUENT_MAGIC = 0
"""First byte of the Confluent wire format (then a 4-byte big-endian schema id)."""


class Decoder:
    """Decodes Kafka values into events with one configuration.

    Args:
        max_value_bytes: values longer than this many bytes are refused (``ValueTooLarge``); None: no limit.
        writer_schema_lookup: resolves the schema id of a Confluent-framed value (a schema registry),
            or None when none is configured (framed values are then ``ConfluentFramed`` errors).
    """

    __slots__ = ("max_value_bytes", "writer_schema_lookup")

    def __init__(self, max_value_bytes: int | None = None,
                 writer_schema_lookup: WriterSchemaLookup | None = None) -> None:
        self.max_value_bytes = max_value_bytes
        self.writer_schema_lookup = writer_schema_lookup

    def __call__(self, value: bytes | None) -> Event:
        """The whole event (see :func:`decode`). Raises :class:`~consumer.errors.DecodeError`."""
        return decode(value, max_bytes=self.max_value_bytes, writer_schema_lookup=self.writer_schema_lookup)

    def approved(self, value: bytes | None) -> Event | None:
        """The event when it is ``APPROVED``, else None, with the same checks (see :func:`decode_approved`)."""
        return _decode(value, self.max_value_bytes, self.writer_schema_lookup, approved_only=True)


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
    check_indexes(value, 5, writer_walker(writer))
    return event
