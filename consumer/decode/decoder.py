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

Schema evolution (registry writers; README "Schema evolution"), decided once per schema id:

* a writer that adds fields is read as v1 (the new fields are dropped);
* a writer that changes a v1 field's meaning (type, logical type: :mod:`.compat`) is refused,
  ``IncompatibleSchema`` naming the field, unless ``ERP_SYNC_SCHEMA_REGISTRY_ALLOW_INCOMPATIBLE``
  allows its id;
* an id the registry does not know is ``UnknownSchemaId`` (not remembered: replayable later);
* the status is the writer's symbol, whatever v1's enum says (fastavro alone would turn a new symbol
  into v1's default ``UNKNOWN``). A symbol outside v1 is logged once per symbol and process and, by
  ``ERP_SYNC_UNKNOWN_STATUS``, refused (``validation``/``UnknownStatus``, the default) or skipped.

:class:`Decoder` is the configured callable the consumer and the replay tools use, in the shape of
confluent-kafka's ``Deserializer``: built once from the settings (:func:`.factory.decoder_for`),
called per value.
"""

from __future__ import annotations

import copy
import io
import logging
from dataclasses import dataclass
from typing import Any, Literal

import fastavro
from fastavro.types import Schema

from ..errors import DecodeError, RegistryUnavailable, ValidationError
from . import avro_v1
from .compat import STATUS_FIELD, incompatibilities, writer_status_symbols
from .registry import WriterSchemaLookup
from .schema import READER_SCHEMA, SCHEMA_JSON, STATUSES, Event, parse_plain_schema
from .walker import Walker, check_indexes, writer_walker

log = logging.getLogger(__name__)

CONFLUENT_MAGIC = 0
"""First byte of the Confluent wire format (then a 4-byte big-endian schema id)."""

KNOWN_STATUSES = frozenset(STATUSES)
"""The v1 ``WorkflowStatus`` symbols."""

UnknownStatusPolicy = Literal["dead-letter", "skip"]

_warned_statuses: set[str] = set()
"""Status symbols outside v1 already logged by this process (one warning per symbol)."""


@dataclass(frozen=True, slots=True)
class _Writer:
    """What the decoder needs to read values of one registry schema id (built once per id)."""

    writer: Schema | None
    reader: Schema
    walker: Walker | None
    refused: str | None
    """Why values of this id are refused (``IncompatibleSchema``), or None."""


class Decoder:
    """Decodes Kafka values into events with one configuration.

    Args:
        max_value_bytes: values longer than this many bytes are refused (``ValueTooLarge``); None: no limit.
        writer_schema_lookup: resolves the schema id of a Confluent-framed value (a schema registry),
            or None when none is configured (framed values are then ``ConfluentFramed`` errors).
        unknown_status: what a status outside v1 gets: ``dead-letter`` (``validation``/``UnknownStatus``)
            or ``skip``.
        allow_incompatible: registry schema ids read although they change a v1 field's meaning; None:
            every id.
    """

    __slots__ = ("allow_incompatible", "max_value_bytes", "unknown_status", "writer_schema_lookup", "_writers")

    def __init__(self, max_value_bytes: int | None = None,
                 writer_schema_lookup: WriterSchemaLookup | None = None, *,
                 unknown_status: UnknownStatusPolicy = "dead-letter",
                 allow_incompatible: frozenset[int] | None = frozenset()) -> None:
        self.max_value_bytes = max_value_bytes
        self.writer_schema_lookup = writer_schema_lookup
        self.unknown_status = unknown_status
        self.allow_incompatible = allow_incompatible
        self._writers: dict[int, _Writer] = {}

    def __call__(self, value: bytes | None) -> Event:
        """The whole event, whatever its status (see :func:`decode`). Raises :class:`~consumer.errors.RecordError`.

        A status outside v1 is refused (``UnknownStatus``) under ``unknown_status="dead-letter"``; under
        ``skip`` the event carries the writer's symbol.
        """
        event = self._decode(value, approved_only=False)
        assert not isinstance(event, str)  # approved_only=False always builds the event
        return event

    def approved(self, value: bytes | None) -> Event | str:
        """The event when it is ``APPROVED``, else the writer's status symbol (a record to skip).

        Same checks and errors as :meth:`__call__`: a corrupt record raises whatever its status. A
        valid record that is not ``APPROVED`` is checked without building its fields (the pipeline's
        path: about half the decoding cost of a topic where half the instances are not approved).
        """
        return self._decode(value, approved_only=True)

    def _decode(self, value: bytes | None, approved_only: bool) -> Event | str:
        if value is None or len(value) == 0:
            raise DecodeError("MissingValue", "the record has no value (empty or tombstone)")
        if self.max_value_bytes is not None and len(value) > self.max_value_bytes:
            raise DecodeError(
                "ValueTooLarge", f"value is {len(value)} bytes, above the limit of {self.max_value_bytes} bytes"
            )
        # A bare v1 record starts with event_id's length; 0x00 would be an empty event_id, which the
        # contract never produces (it is a UUID), so a leading 0x00 means the Confluent wire format.
        if value[0] == CONFLUENT_MAGIC and len(value) >= 5:
            return self._decode_framed(bytes(value), approved_only)
        return _decode_bare(value, approved_only)

    def _decode_framed(self, value: bytes, approved_only: bool) -> Event | str:
        """A Confluent-framed value: its writer schema from the registry, resolved to v1 by fastavro."""
        schema_id = int.from_bytes(value[1:5], "big")
        plan = self._writers.get(schema_id)
        if plan is None:
            plan = self._plan(schema_id)
        if plan.refused is not None:
            raise DecodeError("IncompatibleSchema", plan.refused)
        assert plan.writer is not None  # a writer that does not parse is refused
        body = io.BytesIO(value)
        body.seek(5)
        try:
            event = fastavro.schemaless_reader(body, plan.writer, plan.reader)
        except UnicodeDecodeError as exc:
            raise DecodeError("InvalidUtf8", f"a string field is not valid UTF-8: {exc.reason}") from exc
        except Exception as exc:  # fastavro raises EOFError, IndexError, ValueError, SchemaResolutionError…
            raise DecodeError("InvalidAvro", f"not a v1 WorkflowCompleted record: {type(exc).__name__}: {exc}") \
                from exc
        if body.tell() != len(value):
            raise DecodeError(
                "TrailingBytes",
                f"{len(value) - body.tell()} bytes after the end of the record (wrong schema or framing)",
            )
        if not isinstance(event, dict):
            raise DecodeError("InvalidAvro", "decoded value is not a record")
        check_indexes(value, 5, plan.walker)
        status = event.get(STATUS_FIELD)
        if status not in KNOWN_STATUSES:
            self._unknown_status(str(status), schema_id)
        if approved_only and status != "APPROVED":
            return str(status)
        return event

    def _plan(self, schema_id: int) -> _Writer:
        """Look up a schema id, check what its writer means, and remember the verdict (ids are immutable)."""
        if self.writer_schema_lookup is None:
            raise DecodeError(
                "ConfluentFramed",
                f"value is in the Confluent wire format (schema id {schema_id}) but no schema "
                "registry is configured (set ERP_SYNC_SCHEMA_REGISTRY_URL)",
            )
        try:
            writer_json = self.writer_schema_lookup(schema_id)
        except RegistryUnavailable:
            raise  # not the record's fault: never a dead letter
        except Exception as exc:  # the registry does not know the id (not remembered: replayable later)
            raise DecodeError("UnknownSchemaId", f"schema id {schema_id}: {exc}") from exc
        problems = incompatibilities(writer_json, SCHEMA_JSON)
        refused = None
        if problems:
            text = "; ".join(problems)
            if self.allow_incompatible is None or schema_id in self.allow_incompatible:
                log.warning("writer schema id %d changes the meaning of v1 fields, read anyway "
                            "(ERP_SYNC_SCHEMA_REGISTRY_ALLOW_INCOMPATIBLE): %s", schema_id, text,
                            extra={"event": "incompatible_schema_allowed", "schema_id": schema_id})
            else:
                refused = (f"writer schema id {schema_id} changes the meaning of v1 fields: {text} (read it only "
                           f"once the ERP side is ready: ERP_SYNC_SCHEMA_REGISTRY_ALLOW_INCOMPATIBLE={schema_id})")
                log.warning("%s; its records are dead-lettered (IncompatibleSchema)", refused,
                            extra={"event": "incompatible_schema", "schema_id": schema_id})
        try:
            writer: Schema | None = parse_plain_schema(writer_json)
            reader = _reader_for(writer_status_symbols(writer_json))
            walker: Walker | None = writer_walker(writer) if writer is not None else None
        except Exception as exc:  # noqa: BLE001 - fastavro's parse errors are many: none is readable
            writer, reader, walker = None, READER_SCHEMA, None
            refused = refused or f"writer schema id {schema_id} is not a valid Avro schema: {type(exc).__name__}: {exc}"
        plan = _Writer(writer, reader, walker, refused)
        self._writers[schema_id] = plan
        return plan

    def _unknown_status(self, symbol: str, schema_id: int) -> None:
        """A status outside v1: warn once per symbol, then refuse it or let it be skipped (and counted)."""
        if symbol not in _warned_statuses:
            _warned_statuses.add(symbol)
            log.warning("status %s (writer schema id %d) is not a v1 status (%s): its records are %s "
                        "(ERP_SYNC_UNKNOWN_STATUS=%s); this is logged once per status", symbol, schema_id,
                        ", ".join(STATUSES), "dead-lettered" if self.unknown_status == "dead-letter" else "skipped",
                        self.unknown_status,
                        extra={"event": "unknown_status", "status": symbol, "schema_id": schema_id,
                               "policy": self.unknown_status})
        if self.unknown_status == "dead-letter":
            raise ValidationError(
                "UnknownStatus", f"status {symbol} (writer schema id {schema_id}) is not one of v1's "
                f"({', '.join(STATUSES)}): kept here until someone decides what it means (then "
                "`erp-sync dlq replay`, with ERP_SYNC_UNKNOWN_STATUS=skip or a consumer that knows it)")


_readers: dict[tuple[str, ...], Schema] = {(): READER_SCHEMA}


def _reader_for(writer_symbols: list[str]) -> Schema:
    """The v1 reader schema whose status enum also has the writer's symbols that v1 lacks.

    So fastavro reports the writer's symbol instead of v1's default ``UNKNOWN``.
    """
    extra = tuple(s for s in writer_symbols if s not in KNOWN_STATUSES)
    reader = _readers.get(extra)
    if reader is None:
        schema: dict[str, Any] = copy.deepcopy(SCHEMA_JSON)
        for field in schema["fields"]:
            if field["name"] == STATUS_FIELD:
                field["type"]["symbols"] = [*STATUSES, *extra]
        reader = _readers[extra] = parse_plain_schema(schema)
    return reader


def _decode_bare(value: bytes, approved_only: bool) -> Event | str:
    """A bare v1 value, read by the compiled reader."""
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


def decode(
    value: bytes | None,
    *,
    max_bytes: int | None = None,
    writer_schema_lookup: WriterSchemaLookup | None = None,
) -> Event:
    """Decode one Kafka value into an event (a :class:`Decoder` with these settings and the defaults).

    Args:
        value: the record's value bytes (``None`` for a tombstone / missing value).
        max_bytes: values longer than this many bytes are refused (``ValueTooLarge``).
        writer_schema_lookup: when a schema registry is configured, resolves the schema id of a
            Confluent-framed value; the record is then resolved to the v1 reader schema.

    Returns:
        The event as a dict with the v1 field names; longs as ``int``, ``status`` as its symbol.

    Raises:
        DecodeError: code ``MissingValue``, ``ValueTooLarge``, ``ConfluentFramed``, ``UnknownSchemaId``,
            ``IncompatibleSchema``, ``InvalidAvro``, ``InvalidUtf8`` or ``TrailingBytes``.
        ValidationError: ``UnknownStatus``.
    """
    return Decoder(max_bytes, writer_schema_lookup)(value)


def decode_approved(
    value: bytes | None,
    *,
    max_bytes: int | None = None,
    writer_schema_lookup: WriterSchemaLookup | None = None,
) -> Event | str:
    """Decode one Kafka value, building the event only when it will be pushed (see :meth:`Decoder.approved`).

    Returns:
        The event when it is ``APPROVED``, else its status symbol.
    """
    if writer_schema_lookup is None and value:  # the common case without a Decoder object
        if max_bytes is not None and len(value) > max_bytes:
            raise DecodeError("ValueTooLarge", f"value is {len(value)} bytes, above the limit of {max_bytes} bytes")
        if not (value[0] == CONFLUENT_MAGIC and len(value) >= 5):
            return _decode_bare(value, True)
    return Decoder(max_bytes, writer_schema_lookup).approved(value)
