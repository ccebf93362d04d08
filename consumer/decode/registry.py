"""The schema-registry client: Confluent schema id → parsed writer schema (confluent-kafka's client).

Kept apart from the decoder (as confluent-kafka keeps ``schema_registry/`` apart from its serdes):
the decoder only needs a :data:`WriterSchemaLookup`, a callable from schema id to parsed schema.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from fastavro.types import Schema

from .schema import parse_plain_schema

WriterSchemaLookup = Callable[[int], Schema]
"""Resolves a Confluent schema id to a parsed writer schema (a schema-registry client)."""


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

