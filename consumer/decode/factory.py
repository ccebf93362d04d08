"""The one place a :class:`~.decoder.Decoder` is built from the settings.

``erp-sync run``, ``replay`` and ``dlq replay`` read values with the same rules and the same registry settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .decoder import Decoder
from .registry import registry_client_config, registry_lookup

if TYPE_CHECKING:
    from ..settings import Settings


def decoder_for(settings: Settings) -> Decoder:
    """The decoder the settings describe.

    ``ERP_SYNC_MAX_VALUE_BYTES``; the schema registry (``ERP_SYNC_SCHEMA_REGISTRY_*``: URL, basic auth,
    CA bundle, client certificate) when a URL is set; ``ERP_SYNC_SCHEMA_REGISTRY_ALLOW_INCOMPATIBLE``;
    ``ERP_SYNC_UNKNOWN_STATUS``.

    Args:
        settings: the configuration.

    Raises:
        ConfigError: a registry secret file cannot be read.
    """
    lookup = None
    if settings.schema_registry_url:
        conf = registry_client_config(settings)
        lookup = registry_lookup(conf.pop("url"), conf)
    return Decoder(settings.max_value_bytes, lookup, unknown_status=settings.unknown_status,
                   allow_incompatible=settings.incompatible_schemas_allowed)
