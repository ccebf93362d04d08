"""Per-record CPU cost of the record path without Kafka or HTTP: decode + filter + transform + encode.

The events come from :func:`consumer.devstack.samples.generate_events` (the benchmark's mix: about 300
bytes, half approved) and are Avro-encoded first (not timed). Then, single thread, measured with
``time.process_time`` (best of ``--repeat`` passes):

* ``decode``: a :class:`consumer.decode.Decoder` (as the pipeline builds it) called on every value;
* ``decode+filter``: plus :func:`consumer.transform.is_pushed`;
* ``full_all``: the pipeline's path: :meth:`consumer.decode.Decoder.approved` (builds the event only
  for APPROVED records, checks the others without building them), then for approved events
  :func:`consumer.transform.erp_request` (the ERP body: mapping, variable checks, orjson encoding,
  Idempotency-Key) — averaged over ALL records (the issue's "decode + filter + transform + encode"
  per record);
* ``full_approved``: the same pass divided by the approved records only (cost per push);
* ``transform_only``: ``erp_request`` alone on pre-decoded approved events, per approved record.

    python -m bench.cpu_cost [--events 100000] [--repeat 3]   # prints one JSON line
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from consumer import decode as events
from consumer import transform
from consumer.decode import avro_v1
from consumer.devstack import samples
from consumer.devstack.events import encode


def _best(fn: Callable[[], None], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def measure(count: int = 100_000, repeat: int = 3, seed: int = 1) -> dict[str, Any]:
    """Return the per-record CPU costs in µs (see the module docstring)."""
    evs = list(samples.generate_events(count, seed=seed, approved_ratio=0.5, distinct_instances=10_000,
                                       target_bytes=300))
    values = [encode(e) for e in evs]
    approved_events = [e for e in evs if transform.is_pushed(e)]
    n_approved = len(approved_events)
    del evs
    decoder = events.Decoder(1_048_576)  # as the pipeline builds it (consumer.decode.decoder_for)
    decode, is_pushed, erp_request = decoder, transform.is_pushed, transform.erp_request
    decode_approved = decoder.approved

    def decode_only() -> None:
        for v in values:
            decode(v)

    def decode_filter() -> None:
        for v in values:
            is_pushed(decode(v))

    def full() -> None:
        for v in values:
            event = decode_approved(v)
            if type(event) is not str:  # a str is the status of a record to skip
                erp_request(event)

    def transform_only() -> None:
        for e in approved_events:
            erp_request(e)

    # Avro encoding on the producer side (not part of the consumer's path; for reference).
    sample_events = approved_events[: min(len(approved_events), 20_000)]

    def avro_encode() -> None:
        for e in sample_events:
            encode(e)

    full_s = _best(full, repeat)
    return {
        "events": count,
        "avro_reader": "compiled (mypyc)" if avro_v1.COMPILED else "interpreted",
        "transform": "compiled (mypyc)" if not transform.__file__.endswith(".py") else "interpreted",
        "approved": n_approved,
        "repeat": repeat,
        "avg_value_bytes": round(sum(map(len, values)) / len(values), 1),
        "decode_us": _best(decode_only, repeat) / count * 1e6,
        "decode_filter_us": _best(decode_filter, repeat) / count * 1e6,
        "full_all_us": full_s / count * 1e6,
        "full_approved_us": full_s / max(1, n_approved) * 1e6,
        "transform_only_us": _best(transform_only, repeat) / max(1, n_approved) * 1e6,
        "avro_encode_us": _best(avro_encode, repeat) / max(1, len(sample_events)) * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.events, args.repeat)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
