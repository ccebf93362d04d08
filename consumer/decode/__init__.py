"""Decoding: Kafka value bytes → a v1 ``WorkflowCompleted`` event, or a :class:`~consumer.errors.DecodeError`.

``decoder``  the rules and the configured :class:`Decoder` (bare v1 Avro; Confluent framing)
``factory``  :func:`decoder_for`: the one Decoder of the settings (run, replay, dlq replay)
``compat``   does a registry writer schema mean what v1 means (type and logical type per field)
``avro_v1``  the v1 reader of the hot path, compiled by mypyc at install (fastavro is its reference)
``walker``   the enum/union index check for registry writer schemas
``registry`` the schema-registry client (confluent-kafka's) and its settings
``schema``   the v1 schema and the names every stage shares (``Event``, ``STATUSES``…)
"""

from .decoder import CONFLUENT_MAGIC, Decoder, decode, decode_approved
from .factory import decoder_for
from .registry import WriterSchemaLookup, registry_client_config, registry_lookup
from .schema import READER_SCHEMA, SCHEMA_JSON, STATUSES, VARIABLE_TYPES, Event

__all__ = ["CONFLUENT_MAGIC", "READER_SCHEMA", "SCHEMA_JSON", "STATUSES", "VARIABLE_TYPES", "Decoder", "Event",
           "WriterSchemaLookup", "decode", "decode_approved", "decoder_for", "registry_client_config",
           "registry_lookup"]
