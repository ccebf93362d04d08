"""The v1 ``WorkflowCompleted`` schema, and the names every stage shares (EVENT-CONTRACT.md).

* :data:`Event`: a decoded event, the Avro record as a dict with the ``.avsc``'s field names.
* :data:`STATUSES` and :data:`VARIABLE_TYPES`: the schema's enum symbols, as the compiled reader
  (:mod:`consumer.decode.avro_v1`) defines them; a unit test checks them against the ``.avsc``.
* :data:`READER_SCHEMA`: the v1 schema parsed by fastavro with its ``timestamp-millis`` logical
  types removed, so that every ``long`` stays an exact ``int`` (the spec's own example times are
  19-digit Longs that are not plausible epoch milliseconds).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import fastavro
from fastavro.types import Schema

from .avro_v1 import STATUSES, VARIABLE_TYPES

__all__ = ["Event", "READER_SCHEMA", "SCHEMA_FILE", "SCHEMA_JSON", "STATUSES", "VARIABLE_TYPES",
           "load_schema_json", "parse_plain_schema", "schema_path"]

SCHEMA_FILE = "workflow_completed.v1.avsc"

Event = dict[str, Any]
"""A decoded event: the Avro record as a dict, field names as in the .avsc."""


def schema_path() -> Path:
    """Return the path of the v1 ``.avsc``: bundled in the wheel, or ``schemas/`` of a checkout."""
    bundled = resources.files("consumer").joinpath("_schemas").joinpath(SCHEMA_FILE)
    if bundled.is_file():
        return Path(str(bundled))
    return Path(__file__).resolve().parent.parent.parent / "schemas" / SCHEMA_FILE


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
