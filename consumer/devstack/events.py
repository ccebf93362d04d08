"""The producer side of the event, for samples, the demo, tests and benchmarks: encode and frame.

The product never encodes events; aPaaS does. These helpers write what aPaaS writes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import fastavro

from ..decode import CONFLUENT_MAGIC, READER_SCHEMA, Event


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
