"""The schema-registry client: Confluent schema id → writer schema (confluent-kafka's client).

Kept apart from the decoder (as confluent-kafka keeps ``schema_registry/`` apart from its serdes):
the decoder only needs a :data:`WriterSchemaLookup`, a callable from schema id to the writer
schema in its JSON form (logical types included: the decoder checks them against v1's).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, RegistryUnavailable

if TYPE_CHECKING:
    from ..settings import Settings

WriterSchemaLookup = Callable[[int], Any]
"""Resolves a Confluent schema id to its writer schema, as JSON (``json.loads`` of the registry's text)."""


def registry_client_config(settings: Settings) -> dict[str, Any]:
    """confluent-kafka ``SchemaRegistryClient`` configuration from the ``ERP_SYNC_SCHEMA_REGISTRY_*`` settings.

    ``url``; ``basic.auth.user.info`` (from ``…_BASIC_AUTH_USER_INFO`` or its ``_FILE``); ``ssl.ca.location``
    (``…_CA_BUNDLE``); ``ssl.certificate.location`` / ``ssl.key.location`` (``…_CLIENT_CERT`` / ``…_CLIENT_KEY``).
    The run, the replay tools and ``check-config --connect`` all use it.

    Raises:
        ConfigError: the user-info file, the CA bundle, the client certificate or its key cannot be read
            (checked here, not left to the client: some confluent-kafka versions open them only at the
            first request, which would make a configuration mistake a stream of dead letters).
    """
    conf: dict[str, Any] = {"url": settings.schema_registry_url}
    user_info = settings.schema_registry_user_info()
    if user_info:
        conf["basic.auth.user.info"] = user_info
    for variable, key, path in (("CA_BUNDLE", "ssl.ca.location", settings.schema_registry_ca_bundle),
                                ("CLIENT_CERT", "ssl.certificate.location", settings.schema_registry_client_cert),
                                ("CLIENT_KEY", "ssl.key.location", settings.schema_registry_client_key)):
        if path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ConfigError(f"ERP_SYNC_SCHEMA_REGISTRY_{variable}: cannot read {path}: "
                                  f"{exc.strerror or exc}") from None
            conf[key] = str(path)
    return conf


def registry_lookup(url: str, extra_config: Mapping[str, Any] | None = None) -> WriterSchemaLookup:
    """A schema-id → writer-schema resolver backed by a Confluent-compatible schema registry.

    Uses confluent-kafka's ``SchemaRegistryClient`` (which caches schemas by id, so the registry is
    asked once per known schema id). An unknown id (404) fails at once and is not remembered: once
    the registry knows it, the next record (or ``erp-sync dlq replay``) resolves it. A registry that
    does not answer (or answers 5xx, 429, 401, 403) raises :class:`~consumer.errors.RegistryUnavailable`
    at once, without waiting: ``run`` holds the partition and asks again later, nothing is dead-lettered.

    Args:
        url: the registry URL (``ERP_SYNC_SCHEMA_REGISTRY_URL``).
        extra_config: more client settings (``basic.auth.user.info``, ``ssl.ca.location``…; see
            :func:`registry_client_config`).

    Raises:
        ConfigError: the client refuses its settings (a CA or certificate file that does not load…).
    """
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    conf = {**(extra_config or {}), "url": url}
    try:
        try:  # no retries inside the client: each would block the poll loop (the partition hold retries)
            client = SchemaRegistryClient({**conf, "max.retries": 0})
        except ValueError as exc:
            if "max.retries" not in str(exc):
                raise
            client = SchemaRegistryClient(conf)  # confluent-kafka before 2.7: it has no retries of its own
    except (ValueError, TypeError, OSError) as exc:  # ssl.SSLError is an OSError: CA or certificate files
        raise ConfigError(f"ERP_SYNC_SCHEMA_REGISTRY_*: the schema registry client refuses its settings: "
                          f"{type(exc).__name__}: {exc}") from None

    def fetch(schema_id: int) -> Any:
        try:
            return client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code in (400, 404, 422):  # the id itself: not known (yet), or not a valid id
                raise
            raise RegistryUnavailable(f"the schema registry answered HTTP {exc.http_status_code} for schema id "
                                      f"{schema_id}: {exc.error_message}") from None
        except Exception as exc:  # noqa: BLE001 - transport errors, timeouts: the registry may be restarting
            raise RegistryUnavailable(f"the schema registry did not answer for schema id {schema_id}: "
                                      f"{type(exc).__name__}: {exc}") from None

    def lookup(schema_id: int) -> Any:
        registered = fetch(schema_id)
        if registered.schema_type not in (None, "AVRO"):
            raise ValueError(f"schema {schema_id} is {registered.schema_type}, not AVRO")
        return json.loads(registered.schema_str or "null")

    return lookup
