"""``erp-sync create-topics``: the source, dead-letter and retry topics, sized to fit.

A dead letter carries its record's value plus the ``erp_sync.*`` headers (under 64 KiB), so the
dead-letter topic's ``max.message.bytes`` must be at least the source topic's plus 64 KiB (issue
"on-call defects", 2): a value the source accepts must never be refused as a dead letter. The
source's limit is its own ``max.message.bytes`` when it exists, else the broker's
``message.max.bytes`` (what a new topic gets). An existing dead-letter topic below that is raised.

Each source topic's retry topic (``<topic>.retry``, where parked records wait: issue "no head-of-line
blocking") gets exactly as many partitions as its source (parked records keep their partition
number) and the same size limit as the dead-letter topic.
"""

from __future__ import annotations

import argparse

from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from ..errors import ToolError
from ..kafka import admin_client, error_text
from .cluster import REQUEST_TIMEOUT_S, tool_settings

HEADERS_ALLOWANCE = 65_536
"""Bytes a dead letter may add to its record (the ``erp_sync.*`` headers)."""
BROKER_DEFAULT_MESSAGE_MAX_BYTES = 1_048_588
"""Kafka's default ``message.max.bytes`` (when the broker's own cannot be read)."""


def _config(admin: AdminClient, resource: ConfigResource, name: str) -> str | None:
    try:
        entries = admin.describe_configs([resource], request_timeout=REQUEST_TIMEOUT_S)[resource].result(
            timeout=REQUEST_TIMEOUT_S + 5)
    except Exception:  # noqa: BLE001 - unreadable (ACLs, old broker): the caller falls back
        return None
    entry = entries.get(name)
    return entry.value if entry is not None else None


def source_message_max_bytes(admin: AdminClient, topic: str, exists: bool, broker_id: int | None) -> int:
    """The largest record the source topic accepts, bytes (its ``max.message.bytes``, else the broker's)."""
    value = _config(admin, ConfigResource(ResourceType.TOPIC, topic), "max.message.bytes") if exists else None
    if value is None and broker_id is not None:
        value = _config(admin, ConfigResource(ResourceType.BROKER, str(broker_id)), "message.max.bytes")
    return int(value) if value else BROKER_DEFAULT_MESSAGE_MAX_BYTES


def cmd_create_topics(args: argparse.Namespace) -> int:
    """``erp-sync create-topics``: create the source and dead-letter topics if missing; size the dead letters."""
    settings = tool_settings()
    admin = admin_client(settings)
    try:
        metadata = admin.list_topics(timeout=15)
    except Exception as exc:  # noqa: BLE001
        raise ToolError(f"cannot reach {settings.kafka_bootstrap_servers}: {error_text(exc)}") from None
    existing = metadata.topics
    broker_id = next(iter(metadata.brokers), None)
    dlq = settings.dead_letter_topic
    dlq_bytes = max(source_message_max_bytes(admin, source, source in existing, broker_id)
                    for source in settings.topics) + HEADERS_ALLOWANCE
    sized = {"max.message.bytes": str(dlq_bytes)}
    wanted = [NewTopic(source, args.partitions, args.replication_factor) for source in settings.topics]
    wanted.append(NewTopic(dlq, args.dlq_partitions, args.replication_factor, config=sized))
    for source in settings.topics:
        retry = settings.retry_topic_of(source)
        if retry is not None:
            partitions = len(existing[source].partitions) if source in existing else args.partitions
            wanted.append(NewTopic(retry, partitions, args.replication_factor, config=sized))
    for topic in wanted:
        if topic.topic in existing:
            print(f"{topic.topic}: exists ({len(existing[topic.topic].partitions)} partitions)")
    missing = [t for t in wanted if t.topic not in existing]
    if missing:
        for name, future in admin.create_topics(missing, request_timeout=30).items():
            future.result(timeout=60)
            extra = f", max.message.bytes {dlq_bytes}" if name not in settings.topics else ""
            print(f"{name}: created{extra}")
    for source in settings.topics:
        retry = settings.retry_topic_of(source)
        if retry in existing and source in existing and \
                len(existing[retry].partitions) != len(existing[source].partitions):
            print(f"{retry}: has {len(existing[retry].partitions)} partitions, its source {source} "
                  f"{len(existing[source].partitions)}: parking stays off for {source} until they match "
                  f"(delete {retry} while nothing is parked, then run create-topics again)")
    if dlq in existing:
        resource = ConfigResource(ResourceType.TOPIC, dlq)
        current = _config(admin, resource, "max.message.bytes")
        if current is not None and int(current) < dlq_bytes:
            resource.add_incremental_config(ConfigEntry("max.message.bytes", str(dlq_bytes),
                                                        incremental_operation=AlterConfigOpType.SET))
            admin.incremental_alter_configs([resource])[resource].result(timeout=60)
            print(f"{dlq}: max.message.bytes raised from {current} to {dlq_bytes} (the source's limit + 64 KiB "
                  "of headers), so every record of the source fits in its dead letter")
    return 0
