"""Kafka queries of the tools: metadata, watermarks, committed offsets, the group, reading ranges.

No tool joins the consumer group: records are read with ``assign()`` by a client whose group id is
never committed to (``dlq replay`` commits to its own group).
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from .. import logs
from ..errors import ConfigError, ToolError, UsageError
from ..kafka import admin_client, error_text
from ..settings import Settings, load_settings, validate_kafka_config

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 15.0
"""Timeout of one metadata, offsets or group request to Kafka, seconds."""
READ_STALL_TIMEOUT_S = 15.0
"""Reading a range gives up when no record arrives for this many seconds."""
LAG_PROBE_TIMEOUT_S = 5.0
"""How long ``status`` waits for the record at a committed offset (its timestamp), seconds."""
_STATE_NAMES = {
    "STABLE": "Stable",
    "EMPTY": "Empty",
    "DEAD": "Dead",
    "PREPARING_REBALANCING": "PreparingRebalance",
    "COMPLETING_REBALANCING": "CompletingRebalance",
}
_RESET_LATEST = frozenset({"latest", "largest", "end"})

# ------------------------------------------------------------------------------------------------ Kafka


def reader_config(settings: Settings, purpose: str, group_id: str | None = None) -> dict[str, Any]:
    """Configuration of a consumer that reads with ``assign()`` and never joins the group.

    Args:
        settings: the configuration (security pass-through, isolation level…).
        purpose: appended to the client id (``lag``, ``replay``…).
        group_id: the group to commit to (``dlq replay``); None for a throw-away id that is never
            committed to (confluent-kafka requires one).

    Returns:
        A librdkafka configuration.
    """
    conf = settings.consumer_config()
    conf.update({
        "group.id": group_id or f"{settings.group_id}.tools-{uuid.uuid4().hex[:12]}",
        "client.id": f"{conf.get('client.id', 'apaas-erp-sync')}-{purpose}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "logger": logging.getLogger("librdkafka.tools"),
    })
    return conf


@dataclass(frozen=True, slots=True)
class Member:
    """One member of the consumer group.

    Attributes:
        member_id: the member id the coordinator gave it.
        client_id: the client's ``client.id``.
        host: the host it connected from (``/10.0.0.7``).
        group_instance_id: its static membership id, if any.
        partitions: its assigned partitions of the configured topic.
        other: its assigned partitions of other topics, as ``topic[partition]``.
    """

    member_id: str
    client_id: str
    host: str
    group_instance_id: str | None
    partitions: tuple[int, ...]
    other: tuple[str, ...] = ()

    def partitions_of(self, topic: str) -> tuple[int, ...]:
        """Its assigned partitions of another topic than the one it was described for (a retry topic).

        Read from :attr:`other` (``topic[partition]``: a topic name never holds ``[``).
        """
        prefix = topic + "["
        return tuple(sorted(int(name[len(prefix):-1]) for name in self.other if name.startswith(prefix)))

    def describe(self) -> str:
        """One line naming the member: member id, client id, host and partitions."""
        parts = ",".join(map(str, self.partitions)) or "none"
        return f"member {self.member_id} (client {self.client_id}, host {self.host}, partitions {parts})"

    def to_json(self) -> dict[str, Any]:
        """The member as JSON."""
        return {"member_id": self.member_id, "client_id": self.client_id, "host": self.host,
                "group_instance_id": self.group_instance_id, "partitions": list(self.partitions),
                "other_assignments": list(self.other)}


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """The consumer group as the coordinator describes it.

    Attributes:
        state: ``Stable``, ``Empty``, ``Dead`` (unknown to the broker), ``PreparingRebalance``,
            ``CompletingRebalance`` or ``Unknown``.
        members: the active members.
    """

    state: str
    members: tuple[Member, ...]


class Cluster:
    """Admin and metadata queries for the tools; close it (or use it as a context manager).

    Args:
        settings: the configuration.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.admin: AdminClient = admin_client(settings)  # kept: futures fail once it is destroyed
        self._reader: Consumer | None = None

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the metadata consumer."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    @property
    def reader(self) -> Consumer:
        """A group-less consumer for watermarks and ``offsets_for_times``."""
        if self._reader is None:
            self._reader = Consumer(reader_config(self.settings, "meta"))
        return self._reader

    def partitions(self, topic: str, env_name: str = "ERP_SYNC_TOPIC") -> list[int] | None:
        """The topic's partition ids, sorted; None when the topic does not exist.

        Raises:
            ToolError: the metadata request failed (broker unreachable, no permission).
        """
        try:
            md = self.admin.list_topics(topic=topic, timeout=REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            raise ToolError(f"cannot read the metadata of topic {topic!r} from "
                            f"{self.settings.kafka_bootstrap_servers}: {error_text(exc)}") from None
        meta = md.topics.get(topic)
        if meta is None or (meta.error is not None and meta.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
            return None
        if meta.error is not None:
            raise ToolError(f"topic {topic!r} ({env_name}): {meta.error.str()}")
        return sorted(meta.partitions)

    def require_partitions(self, topic: str, env_name: str = "ERP_SYNC_TOPIC") -> list[int]:
        """Like :meth:`partitions`, but a missing topic is a usage error (exit code 2)."""
        parts = self.partitions(topic, env_name)
        if parts is None:
            raise UsageError(f"topic {topic!r} does not exist (check {env_name} and "
                             f"ERP_SYNC_KAFKA_BOOTSTRAP_SERVERS={self.settings.kafka_bootstrap_servers})")
        return parts

    def watermarks(self, topic: str, partitions: Sequence[int]) -> dict[int, tuple[int, int]]:
        """``{partition: (low, high)}``: the first offset still stored and the next offset to be written."""
        out = {}
        for p in partitions:
            try:
                out[p] = self.reader.get_watermark_offsets(TopicPartition(topic, p), timeout=REQUEST_TIMEOUT_S)
            except KafkaException as exc:
                raise ToolError(f"cannot read the watermarks of {topic}[{p}]: {error_text(exc)}") from None
        return out

    def committed(self, group: str, topic: str, partitions: Sequence[int]) -> dict[int, int | None]:
        """The group's committed offsets (next offset to read) by partition; None where it has none."""
        request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in partitions])
        try:
            future = self.admin.list_consumer_group_offsets([request], request_timeout=REQUEST_TIMEOUT_S)[group]
            result = future.result(timeout=REQUEST_TIMEOUT_S + 5)
        except KafkaException as exc:
            raise ToolError(f"cannot read the committed offsets of group {group!r}: {error_text(exc)}") from None
        out: dict[int, int | None] = {p: None for p in partitions}
        for tp in result.topic_partitions or []:
            if tp.error is not None:
                raise ToolError(f"cannot read the committed offset of group {group!r} on "
                                f"{topic}[{tp.partition}]: {tp.error.str()}")
            out[tp.partition] = tp.offset if tp.offset >= 0 else None
        return out

    def committed_with_metadata(self, group: str, topic: str,
                                partitions: Sequence[int]) -> dict[int, tuple[int | None, str]]:
        """The group's committed offsets and their metadata by partition (``(None, "")`` where it has none)."""
        consumer = Consumer(reader_config(self.settings, "offsets", group_id=group))
        try:
            found = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            raise ToolError(f"cannot read the committed offsets of group {group!r} on {topic}: "
                            f"{error_text(exc)}") from None
        finally:
            consumer.close()
        out: dict[int, tuple[int | None, str]] = {p: (None, "") for p in partitions}
        for tp in found:
            if tp.error is not None:
                raise ToolError(f"cannot read the committed offset of group {group!r} on {topic}[{tp.partition}]: "
                                f"{tp.error.str()}")
            out[tp.partition] = (tp.offset if tp.offset >= 0 else None, tp.metadata or "")
        return out

    def group(self, group: str, topic: str) -> GroupInfo:
        """Describe the consumer group: state and active members with their assignments."""
        try:
            future = self.admin.describe_consumer_groups([group], request_timeout=REQUEST_TIMEOUT_S)[group]
            desc = future.result(timeout=REQUEST_TIMEOUT_S + 5)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.GROUP_ID_NOT_FOUND:
                return GroupInfo("Dead", ())
            raise ToolError(f"cannot describe group {group!r}: {error_text(exc)}") from None
        members = []
        for m in desc.members or []:
            tps = list(m.assignment.topic_partitions or []) if m.assignment is not None else []
            mine = tuple(sorted(tp.partition for tp in tps if tp.topic == topic))
            other = tuple(sorted(f"{tp.topic}[{tp.partition}]" for tp in tps if tp.topic != topic))
            members.append(Member(m.member_id, m.client_id, m.host, m.group_instance_id, mine, other))
        state = getattr(desc, "state", None)
        state_name = getattr(state, "name", str(state))
        return GroupInfo(_STATE_NAMES.get(state_name, "Unknown"), tuple(members))

    def offsets_for_time(self, topic: str, partitions: Sequence[int], when_ms: int) -> dict[int, int | None]:
        """Per partition, the first offset whose timestamp is at or after ``when_ms`` (ms since the epoch).

        Returns:
            ``{partition: offset}``; None where no record is that recent.
        """
        try:
            found = self.reader.offsets_for_times([TopicPartition(topic, p, when_ms) for p in partitions],
                                                  timeout=REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            raise ToolError(f"cannot look up offsets by time on {topic}: {error_text(exc)}") from None
        out: dict[int, int | None] = {}
        for tp in found:
            if tp.error is not None:
                raise ToolError(f"cannot look up offsets by time on {topic}[{tp.partition}]: {tp.error.str()}")
            out[tp.partition] = tp.offset if tp.offset >= 0 else None
        return out


def resume_position(committed: int | None, low: int, high: int, settings: Settings) -> int:
    """Where the group's consumer resumes a partition (an offset).

    That is the committed offset when it is still in the log, else the ``auto.offset.reset`` position:
    the low watermark, or the high one for ``latest``.
    """
    if committed is not None and low <= committed <= high:
        return committed
    policy = str(settings.consumer_config().get("auto.offset.reset", "earliest")).lower()
    return high if policy in _RESET_LATEST else low


def tool_settings(needs_erp: bool = False) -> Settings:
    """Load and check the configuration of a tool (as ``run`` does); set up logging.

    Raises:
        ConfigError: a bad setting, or no ERP URL when ``needs_erp``.
    """
    settings = load_settings()
    logs.setup(settings.log_format, settings.log_level)
    for warning in settings.unknown_variables:
        print(f"warning: {warning}", file=sys.stderr)
    validate_kafka_config(settings)
    if needs_erp and not settings.erp_url:
        raise ConfigError("ERP_SYNC_ERP_URL: required to push (the ERP endpoint, e.g. "
                          "https://erp.example.com/apaas/push); --dry-run works without it")
    return settings


def for_source_topic(settings: Settings, chosen: str | None) -> Settings:
    """The settings of a tool that works on one source topic: ``ERP_SYNC_TOPIC`` narrowed to it.

    The dead-letter topic stays the one ``run`` writes to.

    Raises:
        UsageError: as :func:`source_topic`.
    """
    topic = source_topic(settings, chosen)
    if topic == settings.topic:
        return settings
    return settings.model_copy(update={"topic": topic, "dlq_topic": settings.dead_letter_topic})


def source_topic(settings: Settings, chosen: str | None) -> str:
    """The source topic a tool works on: ``--topic``, or the one ``ERP_SYNC_TOPIC`` names.

    Raises:
        UsageError: ``--topic`` is not one of ``ERP_SYNC_TOPIC``, or it lists several and none is chosen.
    """
    topics = settings.topics
    if chosen is not None:
        if chosen not in topics:
            raise UsageError(f"--topic {chosen}: not a source topic of ERP_SYNC_TOPIC ({', '.join(topics)})")
        return chosen
    if len(topics) > 1:
        raise UsageError(f"ERP_SYNC_TOPIC lists {len(topics)} topics ({', '.join(topics)}): name one with --topic")
    return topics[0]
