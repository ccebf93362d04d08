"""The naive baseline: what a user writes first, one record at a time.

``poll()`` one record → decode → filter → transform → ``httpx.Client.post`` → read the verdict →
synchronous commit of that record. No concurrency, no batching. It uses the project's own decode,
filter, transform and verdict functions, so the only difference to ``erp-sync run`` is the
delivery loop.

The loop itself (``deliver``) is what the user writes; ``main`` only adds the measurement (clock
and CPU at the first record and after the last commit, counts) and prints one JSON line.

    python -m bench.naive_consumer --bootstrap 127.0.0.1:9092 --topic T --group G \
        --url http://127.0.0.1:8080/erp/push --max-records 2000
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any

import httpx
from confluent_kafka import Consumer

from consumer import decode as events
from consumer import transform
from consumer.erp.verdict import Outcome, verdict


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def deliver(bootstrap: str, topic: str, group: str, url: str, max_records: int, idle_timeout_s: float,
            stats: dict[str, Any]) -> None:
    """The naive consumer loop (fills ``stats`` as it goes)."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
    })
    consumer.subscribe([topic])
    http = httpx.Client(timeout=10.0, headers={"Content-Type": "application/json; charset=utf-8"})
    last_record = time.monotonic()
    try:
        while stats["records"] < max_records:
            msg = consumer.poll(1.0)
            if msg is None:
                if stats["records"] and time.monotonic() - last_record > idle_timeout_s:
                    break  # the topic holds fewer records than asked for
                continue
            if msg.error():
                continue
            if not stats["records"]:
                stats["t_first_record"] = time.time()
                stats["cpu_first_record"] = _cpu_s()
            last_record = time.monotonic()
            stats["records"] += 1

            event = events.decode(msg.value())
            if transform.is_pushed(event):
                body, key = transform.erp_request(event)
                stats["approved"] += 1
                while True:  # the ERP stub accepts everything; retry what it would ask to retry
                    response = http.post(url, content=body, headers={"Idempotency-Key": key})
                    stats["requests"] += 1
                    result = verdict(response.status_code, response.headers, response.content)
                    if result.outcome is not Outcome.RETRY:
                        break
                    time.sleep(0.5)
                stats["accepted" if result.outcome is Outcome.ACCEPTED else "rejected"] += 1
            else:
                stats["skipped"] += 1

            consumer.commit(message=msg, asynchronous=False)
            stats["commits"] += 1
            stats["t_last_commit"] = time.time()
            stats["cpu_last_commit"] = _cpu_s()
    finally:
        http.close()
        consumer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--url", required=True, help="the ERP push URL")
    parser.add_argument("--max-records", type=int, required=True, help="stop after this many records")
    parser.add_argument("--idle-timeout", type=float, default=10.0,
                        help="stop when no record arrived for this many seconds")
    args = parser.parse_args(argv)
    stats: dict[str, Any] = {"records": 0, "approved": 0, "skipped": 0, "requests": 0, "accepted": 0,
                             "rejected": 0, "commits": 0, "t_first_record": None, "t_last_commit": None,
                             "cpu_first_record": None, "cpu_last_commit": None}
    started = time.time()
    deliver(args.bootstrap, args.topic, args.group, args.url, args.max_records, args.idle_timeout, stats)
    stats["t_started"] = started
    stats["cpu_total"] = _cpu_s()
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
