"""The demo's closing report: what the ERP received, what was skipped, what was dead-lettered.

``python -m consumer.devstack.report --stub http://127.0.0.1:PORT`` reads the source topic, the dead-letter
topic, the group's committed offsets (configuration from the environment, as ``erp-sync run``)
and the ERP stub's record of pushes, and accounts for every source record.
Exit code 0 when every record is accounted for and the spec's example arrived byte-exact, else 1.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import httpx
from confluent_kafka import Consumer, KafkaError, TopicPartition

from .. import decode, transform
from ..delivery.dead_letters import H_CLASS, H_CODE, H_MESSAGE, H_OFFSET, H_PARTITION
from ..errors import RecordError
from ..logs import plural
from ..settings import Settings, load_settings
from .erp_stub import format_summary

SPEC_EXAMPLE_BODY = (
    '{"FlowCode":1425737370216521773,"InstanceId":1427810976874430514,"StartTime":1427811121259155459,'
    '"EndTime":1427811121259155459,"StartUser":{"SourceUid":"1427811121259155459","TenantUid":'
    '"1427811121259155459"},"VariableInfos":{"LevelInfo":{"Type":"object","Value":{"Name":'
    '"1425736144334716972","Days":3}}}}'
)
"""The example body of the specification, compact, in the spec's key order."""


def read_topic(settings: Settings, topic: str) -> list[Any]:
    """Every record of ``topic`` from the beginning to its current end (group-less read)."""
    conf = {**settings.consumer_config(), "group.id": "erp-sync-report", "enable.partition.eof": True}
    consumer = Consumer(conf)
    try:
        md = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None:
            return []
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in md.partitions}
        todo = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, 0) for p in md.partitions])
        out: list[Any] = []
        while todo:
            msg = consumer.poll(5.0)
            if msg is None:
                break
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    todo.discard(msg.partition())
                continue
            out.append(msg)
            if (msg.offset() or 0) + 1 >= ends[msg.partition()]:
                todo.discard(msg.partition())
        return out
    finally:
        consumer.close()


def main(argv: list[str] | None = None) -> int:
    """Print the report; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m consumer.devstack.report")
    parser.add_argument("--stub", required=True, help="base URL of the ERP stub (http://127.0.0.1:PORT)")
    args = parser.parse_args(argv)
    settings = load_settings()
    pushes = httpx.get(f"{args.stub}/_stub/requests", timeout=10).json()["requests"]
    print(format_summary(pushes))
    accepted_ids = {r.get("instance_id") for r in pushes if r.get("code") == "OK"}
    spec_ok = any(r.get("body") == SPEC_EXAMPLE_BODY for r in pushes)
    spec_pushes = [r for r in pushes if r.get("instance_id") == 1427810976874430514]
    if spec_pushes:
        print("\nBody received for the specification's example (InstanceId 1427810976874430514):")
        print(spec_pushes[0].get("body"))
        print(f"Idempotency-Key: {spec_pushes[0].get('idempotency_key')}")

    dead = {}
    for msg in read_topic(settings, settings.dead_letter_topic):
        h = {k: (v or b"").decode() for k, v in (msg.headers() or [])}
        dead[(int(h.get(H_PARTITION, -1)), int(h.get(H_OFFSET, -1)))] = h

    consumer = Consumer({**settings.consumer_config(), "enable.partition.eof": False})
    source = read_topic(settings, settings.topic)
    parts = sorted({m.partition() for m in source})
    committed = {tp.partition: tp.offset for tp in
                 consumer.committed([TopicPartition(settings.topic, p) for p in parts], timeout=10)}
    consumer.close()

    print(f"\nEvery record of {settings.topic}:")
    print(f"  {'part':>4} {'offset':>6}  {'InstanceId':<20} {'status':<10} outcome")
    counts: dict[str, int] = {}
    unaccounted = 0
    for msg in sorted(source, key=lambda m: (m.partition(), m.offset())):
        where = (msg.partition(), msg.offset())
        try:
            event = decode.decode(msg.value())
            instance, status = str(event["instance_id"]), str(event["status"])
        except RecordError:
            event, instance, status = None, "?", "?"
        if where in dead:
            h = dead[where]
            outcome = f"dead-lettered ({h.get(H_CLASS)} {h.get(H_CODE)}: {h.get(H_MESSAGE)})"
            key = "dead-lettered"
        elif event is not None and not transform.is_pushed(event):
            outcome, key = "skipped (not APPROVED)", "skipped"
        elif event is not None and event["instance_id"] in accepted_ids:
            outcome, key = "pushed, accepted by the ERP", "pushed"
        else:
            outcome, key = "NOT ACCOUNTED FOR", "unaccounted"
            unaccounted += 1
        counts[key] = counts.get(key, 0) + 1
        print(f"  {msg.partition():>4} {msg.offset():>6}  {instance:<20} {status:<10} {outcome}")
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    print(f"\n{plural(len(source), 'record')}: {summary}")
    print("committed offsets: " + ", ".join(f"partition {p}: {committed.get(p)}" for p in parts))
    print(f"spec example body arrived byte-exact: {'yes' if spec_ok else 'NO'}")
    return 0 if spec_ok and not unaccounted else 1


if __name__ == "__main__":
    sys.exit(main())
