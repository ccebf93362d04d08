"""A generic Avro walker that checks enum and union indexes, for registry writer schemas.

fastavro 1.x indexes ``symbols[i]`` with a negative ``i`` read from corrupt bytes, so a corrupt
``REJECTED`` record would read as ``APPROVED``. A registry-framed value is decoded by fastavro (its
writer schema is not v1's), so its bytes are walked once more by a walker compiled from the writer
schema: it builds nothing, only follows the encoding, and refuses an enum or union index outside
the schema and a negative length. Bare v1 values never come here: :mod:`.avro_v1` checks them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastavro.types import Schema

from ..errors import DecodeError


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


def writer_walker(writer: Schema) -> Walker:
    """The compiled walker of a registry writer schema (cached; the lookup caches schemas)."""
    cached = _WALKERS.get(id(writer))
    if cached is None or cached[0] is not writer:
        cached = (writer, _compile_walker(writer, {}))
        _WALKERS[id(writer)] = cached
    return cached[1]


def check_indexes(value: bytes, start: int, walker: Walker | None) -> None:
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

