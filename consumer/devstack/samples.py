"""Realistic sample events for the demo and the tests, a fast generator for benchmarks, a producer.

* :func:`sample_events` — a small deterministic mix of leave requests, expense claims and purchase
  orders; the first is the specification's example; when ``count >= 10`` it contains exactly one
  approved event that fails validation and one that the ERP rejects (empty ``SourceUid``).
* :func:`expected_outcome` — what the consumer must do with an event: ``pushed``, ``skipped``,
  ``validation`` (dead letter) or ``erp`` (dead letter after the ERP's reject).
* :func:`generate_events` — millions of valid events of about a given Avro size, fast.
* :func:`produce` — writes events to the topic (bare Avro, key = instance id text).

Run ``python -m consumer.devstack.samples --count 20 --seed 7`` to write the samples to the configured topic.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import string
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .. import decode as avro_events
from ..decode import Event
from ..errors import ValidationError
from ..logs import plural
from ..transform import erp_request, is_pushed
from . import events as dev_events

if TYPE_CHECKING:
    from ..settings import Settings

logger = logging.getLogger(__name__)


OUTCOMES = ("pushed", "skipped", "validation", "erp")
"""The four outcomes of :func:`expected_outcome`, in display order."""

BASE_EVENT_TIME_MS = 1732886400000
"""2024-11-29T13:20:00Z in epoch ms: the spec example's ``event_time``; samples follow it."""

FLOW_CODES: dict[str, int] = {
    "leave": 1425737370216521773,  # the specification's FlowCode
    "expense": 1425737370216587301,
    "purchase": 1425737370216613459,
}
"""Workflow definition ids (19-digit Longs) by kind of workflow."""

_NON_APPROVED = tuple(s for s in avro_events.STATUSES if s != "APPROVED")
_INSTANCE_LOW, _INSTANCE_HIGH = 1427810976874430515, 1428999999999999999
_NODES = {
    "leave": ("team_lead", "manager", "hr"),
    "expense": ("manager", "finance", "cfo"),
    "purchase": ("manager", "procurement", "director"),
}
_WECOM_IDS = ("ZhangWei", "LiNa", "WangFang", "liu.yang", "ChenJing", "zhao_lei", "SunLi", "ZhouMin")
_LEAVE_TYPES = ("年假", "病假", "事假", "调休", "annual", "sick")
_REASONS = ("家里有事", "看病复诊", "Family trip to Chengdu", "搬家", "Wedding of a friend", "陪产假")
_CATEGORIES = ("Travel", "Hotel", "Meals", "Taxi", "Office supplies", "差旅", "招待")
_CURRENCIES = ("CNY", "CNY", "CNY", "USD", "EUR", "HKD")
_COMMENTS = (None, None, "同意", "OK", "请补充发票", "Approved, thanks", "预算内")
_ITEMS = (("SKU-10023", "ThinkPad T14"), ("SKU-20417", "显示器 27寸"), ("SKU-30005", "A4 paper, 5 reams"),
          ("SKU-40990", "Server rack 42U"), ("SKU-51234", "办公椅"))
_SUPPLIERS = (("SUP-0012", "联想(北京)有限公司"), ("SUP-0456", "Dell China"), ("SUP-0789", "得力集团"))


def _uuid4(rng: random.Random) -> str:
    """A version-4 UUID text drawn from ``rng`` (deterministic, unlike :func:`uuid.uuid4`)."""
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:32]}"


def _id19(rng: random.Random) -> str:
    """A 19-digit id as text, like aPaaS user and record ids."""
    return str(rng.randrange(10**18, 10**19))


def _money(cents: int) -> str:
    """Cents as a JSON number text with exactly two decimals (``1230`` → ``12.30``)."""
    return f"{cents // 100}.{cents % 100:02d}"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _var(var_type: str, text: str) -> dict[str, str]:
    return {"type": var_type, "value": text}


def _date(rng: random.Random) -> str:
    return f"2024-{rng.randint(10, 12):02d}-{rng.randint(1, 28):02d}"


def _leave_variables(rng: random.Random) -> dict[str, dict[str, str]]:
    days = rng.randint(1, 10)
    return {
        "LevelInfo": _var("object", _dumps({"Name": _id19(rng), "Days": days})),
        "LeaveType": _var("string", _dumps(rng.choice(_LEAVE_TYPES))),
        "Days": _var("integer", str(days)),
        "HalfDay": _var("boolean", _dumps(rng.random() < 0.3)),
        # An empty form field is JSON null (ERP-INTERFACE.md decision 3).
        "Reason": _var("string", "null" if rng.random() < 0.25 else _dumps(rng.choice(_REASONS))),
        "StartDate": _var("string", _dumps(_date(rng))),
    }


def _expense_variables(rng: random.Random) -> dict[str, dict[str, str]]:
    items, total = [], 0
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.4:
            cents = rng.choice((1230, 128050, 4500, 99999, 30000))  # 12.30, 1280.50, 45.00, …
        else:
            cents = rng.randint(100, 500000)
        total += cents
        items.append(
            f'{{"Date": {_dumps(_date(rng))}, "Category": {_dumps(rng.choice(_CATEGORIES))}, '
            f'"Amount": {_money(cents)}, "Currency": {_dumps(rng.choice(_CURRENCIES))}}}'
        )
    cost_center = f"CC-{rng.choice(('SH', 'BJ', 'SZ', 'CD'))}-{rng.randint(1000, 1999)}"
    project = {"Code": f"P-2024-{rng.randint(1, 99):03d}", "Billable": rng.random() < 0.5}
    return {
        "Items": _var("objectList", "[" + ", ".join(items) + "]"),
        "Total": _var("double", _money(total)),
        "CostCenter": _var("string", _dumps(cost_center)),
        "Project": _var("object", _dumps(project)),
    }


def _purchase_variables(rng: random.Random) -> dict[str, dict[str, str]]:
    lines = []
    for sku, name in rng.sample(_ITEMS, rng.randint(1, 3)):
        lines.append(
            f'{{"Sku": {_dumps(sku)}, "Name": {_dumps(name)}, "Qty": {rng.randint(1, 50)}, '
            f'"UnitPrice": {_money(rng.choice((1230, 599900, 2550, 100)))}}}'
        )
    # Amount in fen; sometimes beyond 2^53, where a float64 would lose the last digits.
    amount = 2**53 + rng.randint(1, 10**9) if rng.random() < 0.5 else rng.randint(10_000, 50_000_000)
    supplier_id, supplier_name = rng.choice(_SUPPLIERS)
    spec = {
        "type": "object",
        "properties": {"Color": {"type": "string", "enum": ["black", "silver"]},
                       "WarrantyYears": {"type": "integer", "minimum": 1}},
        "required": ["Color"],
    }
    return {
        "PoNumber": _var("string", _dumps(f"PO-2024-{rng.randint(1, 999999):06d}")),
        "Amount": _var("long", str(amount)),
        "Lines": _var("objectList", "[" + ", ".join(lines) + "]"),
        "Spec": _var("jsonSchema", _dumps(spec)),
        "Supplier": _var("object", _dumps({"Id": supplier_id, "Name": supplier_name})),
        "Urgent": _var("boolean", _dumps(rng.random() < 0.2)),
    }


_VARIABLES = {"leave": _leave_variables, "expense": _expense_variables, "purchase": _purchase_variables}


def _user(rng: random.Random) -> dict[str, str]:
    source = rng.choice(_WECOM_IDS) if rng.random() < 0.5 else _id19(rng)
    return {"source_uid": source, "tenant_uid": _id19(rng)}


def _approvals(rng: random.Random, kind: str, status: str, starter: Mapping[str, str],
               start_ms: int, end_ms: int) -> list[dict[str, Any]]:
    steps = rng.randint(1, 3)
    acted = sorted(rng.randint(start_ms, end_ms) for _ in range(steps))
    last_action = {"APPROVED": "approve", "REJECTED": "reject", "WITHDRAWN": "withdraw",
                   "TERMINATED": "terminate", "UNKNOWN": "timeout"}[status]
    out = []
    for i, node in enumerate(_NODES[kind][:steps]):
        last = i == steps - 1
        action = last_action if last else "approve"
        approver = dict(starter) if action == "withdraw" else _user(rng)
        comment = rng.choice(_COMMENTS) if action in ("approve", "reject") else None
        if action == "reject":
            comment = comment or "预算不足"
        out.append({"node_id": node, "approver": approver, "action": action, "comment": comment,
                    "acted_at": acted[i]})
    return out


def _plan_statuses(count: int, rng: random.Random) -> list[str]:
    """About 60 % APPROVED (index 0 always), every other status at least once when count >= 10."""
    if count <= 0:
        return []
    approved = max(1, round(0.6 * count))
    others = list(_NON_APPROVED) if count >= 10 else []
    while len(others) < count - approved:
        others.append(rng.choice(_NON_APPROVED))
    rest = ["APPROVED"] * (approved - 1) + others
    rng.shuffle(rest)
    return ["APPROVED", *rest]


def sample_events(count: int = 20, seed: int = 7) -> list[Event]:
    """Return realistic, deterministic sample events in the v1 Avro shape.

    The first event is exactly :func:`consumer.devstack.events.spec_example_event`. The others are leave
    requests, expense claims and purchase orders, about 60 % ``APPROVED``. When ``count >= 10``,
    every other status occurs at least once, and exactly two approved events are faulty on purpose:
    one variable breaks its type (``Days`` typed ``integer`` with value ``3.5``: a ``validation``
    dead letter) and one has an empty ``StartUser.SourceUid`` (the ERP answers
    ``InvalidParameter.StartUser.SourceUid``: an ``erp`` dead letter).

    Args:
        count: the number of events.
        seed: the seed of the ``random.Random`` that drives everything.

    Returns:
        Event dicts with the field names of the .avsc (``start_time`` None when absent).
    """
    rng = random.Random(seed)
    statuses = _plan_statuses(count, rng)
    if not statuses:
        return []
    approved_slots = [i for i, s in enumerate(statuses) if s == "APPROVED" and i > 0]
    broken_type = broken_uid = -1
    if count >= 10:
        broken_type, broken_uid = rng.sample(approved_slots, 2)
    used_ids = {dev_events.spec_example_event()["instance_id"]}
    out: list[Event] = [dev_events.spec_example_event()]
    event_time = BASE_EVENT_TIME_MS
    for i in range(1, count):
        kind = "leave" if i == broken_type else rng.choice(tuple(_VARIABLES))
        status = statuses[i]
        event_time += rng.randint(1_000, 900_000)
        end_ms = event_time - rng.randint(20, 3_000)
        start_ms = end_ms - rng.randint(10 * 60_000, 5 * 86_400_000)
        instance_id = rng.randrange(_INSTANCE_LOW, _INSTANCE_HIGH)
        while instance_id in used_ids:
            instance_id = rng.randrange(_INSTANCE_LOW, _INSTANCE_HIGH)
        used_ids.add(instance_id)
        starter = _user(rng)
        variables = _VARIABLES[kind](rng)
        if i == broken_type:
            variables["Days"] = _var("integer", "3.5")  # Type integer, Value a fraction: decision 4
        if i == broken_uid:
            starter["source_uid"] = ""
        out.append({
            "event_id": _uuid4(rng),
            "event_time": event_time,
            "flow_code": FLOW_CODES[kind],
            "instance_id": instance_id,
            "status": status,
            "start_time": None if rng.random() < 0.2 else start_ms,
            "end_time": end_ms,
            "start_user": starter,
            "variables": variables,
            "approvals": _approvals(rng, kind, status, starter, start_ms, end_ms),
        })
    return out


def expected_outcome(event: Mapping[str, Any]) -> str:
    """Return what the consumer must do with an event, judged with the transform module.

    Args:
        event: a v1 event dict.

    Returns:
        ``"skipped"`` (not approved), ``"validation"`` (the transform raises ValidationError),
        ``"erp"`` (``StartUser.SourceUid`` is empty: the ERP rejects it) or ``"pushed"``.
    """
    if not is_pushed(event):
        return "skipped"
    try:
        erp_request(event)
    except ValidationError:
        return "validation"
    if event["start_user"]["source_uid"] == "":
        return "erp"
    return "pushed"


def count_outcomes(events: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Count :func:`expected_outcome` over events; every key of :data:`OUTCOMES` is present.

    Args:
        events: v1 event dicts.
    """
    counts = Counter(expected_outcome(e) for e in events)
    return {name: counts.get(name, 0) for name in OUTCOMES}


_PAD_ALPHABET = string.ascii_letters + string.digits + "      "


def generate_events(
    count: int,
    *,
    seed: int = 1,
    approved_ratio: float = 0.5,
    distinct_instances: int | None = None,
    target_bytes: int = 300,
) -> Iterator[Event]:
    """Generate many valid events fast (well above 50,000 events/s), for benchmarks.

    Every event passes the transform; a fraction ``approved_ratio`` is ``APPROVED``, the rest is
    spread over the other statuses. Dicts are fresh per event (their strings come from small
    pools). A ``Note`` string variable pads each event to about ``target_bytes`` of Avro (±10 %;
    never below the ~200-byte minimum). Event ids are unique within one call.

    Args:
        count: the number of events.
        seed: the seed of the ``random.Random`` used.
        approved_ratio: the probability of ``APPROVED``, in [0, 1].
        distinct_instances: draw instance ids from this many distinct values (several events then
            share an instance id, Kafka key and Idempotency-Key; its flow code stays the same); every
            value occurs once in the first ``distinct_instances`` events, then at random. None: every
            event has its own instance id.
        target_bytes: the wanted size of each encoded event, in bytes.

    Yields:
        Event dicts in the v1 Avro shape.

    Raises:
        ValueError: a negative count, a ratio outside [0, 1] or ``distinct_instances < 1``.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    if not 0.0 <= approved_ratio <= 1.0:
        raise ValueError("approved_ratio must be in [0, 1]")
    if distinct_instances is not None and distinct_instances < 1:
        raise ValueError("distinct_instances must be >= 1 (or None)")
    rng = random.Random(seed)
    rand, getrandbits = rng.random, rng.getrandbits
    flows = tuple(FLOW_CODES.values())
    users = [(source, _id19(rng)) for source in (*_WECOM_IDS, *(_id19(rng) for _ in range(8)))]
    pool: list[int] | None = None
    if distinct_instances is not None:
        pool = rng.sample(range(_INSTANCE_LOW, _INSTANCE_HIGH), distinct_instances)
    pad_source = "".join(rng.choice(_PAD_ALPHABET) for _ in range(4096))
    base_sizes = []
    for k, user in enumerate(users):  # the size without padding, averaged over the users' id lengths
        prototype = _bench_event(k, flows[0], _INSTANCE_HIGH, "APPROVED", BASE_EVENT_TIME_MS, user,
                                 users[(k * 7 + 3) % len(users)], "5", str(2**40), "")
        prototype["event_id"] = "0" * 36
        base_sizes.append(len(dev_events.encode(prototype)))
    pad = max(0, target_bytes - round(sum(base_sizes) / len(base_sizes)))
    spread = min(pad, target_bytes // 10)
    n_users, n_pad = len(users), len(pad_source)
    # Pools of ready-made texts (strings are immutable, so events may share them): per-event work is
    # then a few random draws and the dicts themselves.
    notes = []
    for k in range(512):
        length = pad - spread + (k * (2 * spread + 1)) // 512  # evenly over pad ± spread
        if length <= n_pad:
            offset = int(rand() * (n_pad - length + 1))
            notes.append(f'"{pad_source[offset:offset + length]}"')
        else:
            notes.append('"' + (pad_source * (length // n_pad + 1))[:length] + '"')
    amounts = [str(2**53 + getrandbits(20) if k % 4 == 0 else 100 + getrandbits(23)) for k in range(1024)]
    days_text = tuple(str(d) for d in range(1, 10))
    h = f"{getrandbits(128):032x}"
    id_prefix = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-"
    n_pool = 0 if pool is None else len(pool)
    for i in range(count):
        if pool is None:
            index, instance_id = i, _INSTANCE_LOW + i
        else:
            index = i if i < n_pool else int(rand() * n_pool)
            instance_id = pool[index]
        approved = rand() < approved_ratio
        status = "APPROVED" if approved else _NON_APPROVED[int(rand() * 4)]
        starter, approver = users[index % n_users], users[int(rand() * n_users)]
        event_time = BASE_EVENT_TIME_MS + i * 10
        end = event_time - 250
        yield {
            "event_id": f"{id_prefix}{i:012x}",  # unique within a run, a valid version-4 layout
            "event_time": event_time,
            "flow_code": flows[index % 3],
            "instance_id": instance_id,
            "status": status,
            "start_time": None if i % 8 == 7 else end - 3_600_000,
            "end_time": end,
            "start_user": {"source_uid": starter[0], "tenant_uid": starter[1]},
            "variables": {
                "Days": {"type": "integer", "value": days_text[index % 9]},
                "Amount": {"type": "long", "value": amounts[int(rand() * 1024)]},
                "Note": {"type": "string", "value": notes[int(rand() * 512)]},
            },
            "approvals": [{
                "node_id": "manager",
                "approver": {"source_uid": approver[0], "tenant_uid": approver[1]},
                "action": "approve" if approved else "reject",
                "comment": None,
                "acted_at": end - 1000,
            }],
        }


def _bench_event(i: int, flow_code: int, instance_id: int, status: str, event_time: int,
                 starter: tuple[str, str], approver: tuple[str, str], days: str, amount: str,
                 note: str) -> Event:
    end = event_time - 250
    return {
        "event_id": "",
        "event_time": event_time,
        "flow_code": flow_code,
        "instance_id": instance_id,
        "status": status,
        "start_time": None if i % 8 == 7 else end - 3_600_000,
        "end_time": end,
        "start_user": {"source_uid": starter[0], "tenant_uid": starter[1]},
        "variables": {
            "Days": {"type": "integer", "value": days},
            "Amount": {"type": "long", "value": amount},
            "Note": {"type": "string", "value": f'"{note}"'},
        },
        "approvals": [{
            "node_id": "manager",
            "approver": {"source_uid": approver[0], "tenant_uid": approver[1]},
            "action": "approve" if status == "APPROVED" else "reject",
            "comment": None,
            "acted_at": end - 1000,
        }],
    }


def produce(settings: Settings, events: Iterable[Mapping[str, Any]], *, partitioner_key: bool = True) -> int:
    """Write events to ``settings.topic`` as bare v1 Avro and wait until all are delivered.

    Args:
        settings: the consumer's settings; the producer uses :meth:`Settings.producer_config`.
        events: v1 event dicts.
        partitioner_key: key each record with its instance id as decimal text (the contract's key);
            False writes records without a key.

    Returns:
        The number of events written.

    Raises:
        RuntimeError: a delivery failed, or records were still undelivered after the flush.
    """
    from confluent_kafka import KafkaError, Message, Producer

    config = settings.producer_config()
    # librdkafka's lines go through logging (its format, the throttle of repeated lines), never raw to stderr
    producer = Producer({**config, "logger": logging.getLogger("librdkafka.producer")})
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(str(err))

    written = 0
    for event in events:
        key = str(event["instance_id"]).encode() if partitioner_key else None
        value = dev_events.encode(event)
        while True:
            try:
                producer.produce(settings.topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.1)
        written += 1
        producer.poll(0)
    flush_timeout_s = float(config.get("message.timeout.ms", 30000)) / 1000.0 + 10.0
    remaining = producer.flush(flush_timeout_s)
    if errors:
        raise RuntimeError(
            f"{len(errors)} of {plural(written, 'event')} could not be written to {settings.topic} at "
            f"{settings.kafka_bootstrap_servers}; first error: {errors[0]}"
        )
    if remaining:
        raise RuntimeError(
            f"{remaining} of {plural(written, 'event')} still undelivered to {settings.topic} at "
            f"{settings.kafka_bootstrap_servers} after {flush_timeout_s:.0f} s"
        )
    logger.info("wrote %s to %s", plural(written, "event"), settings.topic)
    return written


def summary_line(count: int, topic: str, outcomes: Mapping[str, int]) -> str:
    """Return the one-line summary printed by :func:`main`.

    Args:
        count: the number of events written.
        topic: the topic name.
        outcomes: counts by outcome, as from :func:`count_outcomes`.
    """
    return (
        f"{plural(count, 'event', 'events')} written to {topic}: {outcomes.get('pushed', 0)} to push, "
        f"{outcomes.get('skipped', 0)} to skip, "
        f"{plural(outcomes.get('validation', 0), 'validation dead letter', 'validation dead letters')}, "
        f"{plural(outcomes.get('erp', 0), 'ERP reject', 'ERP rejects')}"
    )


def main(count: int, seed: int) -> None:
    """Write ``sample_events(count, seed)`` to the configured topic and print a summary line.

    Args:
        count: the number of sample events.
        seed: the sample seed.

    Raises:
        RuntimeError: the events could not be delivered (see :func:`produce`).
        ConfigError: the settings are invalid.
    """
    from ..settings import load_settings

    settings = load_settings()
    samples = sample_events(count, seed)
    written = produce(settings, samples)
    print(summary_line(written, settings.topic, count_outcomes(samples)))


def _cli(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m consumer.devstack.samples",
                                     description="Write sample workflow events to the configured topic.")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    main(args.count, args.seed)


if __name__ == "__main__":
    _cli()
