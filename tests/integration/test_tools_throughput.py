"""Replay throughput (issue "on-call defects", Operations tools): the tools push as ``run`` does.

At 50 ms ERP latency, ``erp-sync replay`` must reach at least 0.7 × in-flight / latency
(32 in flight → 448 records/s; the one-at-a-time replay made 18). The ERP stub runs in its own
process (``erp-sync erp-stub --latency-ms 50``) and so does the replay (``erp-sync replay``), as an
operator runs them; the figure is the rate the replay's summary prints.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from consumer.devstack.erp_stub import StubClient
from consumer.devstack.events import encode, spec_example_event
from dev.harness import ERP_SYNC, Broker, consumer_env, create_topic, free_port, produce, unique

LATENCY_MS = 50
IN_FLIGHT = 32
RECORDS = 4000


def start_stub(tmp_path: Path, latency_ms: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = open(tmp_path / "stub.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([ERP_SYNC, "erp-stub", "--port", str(port), "--latency-ms", str(latency_ms)],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(base + "/_stub/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stub.log").read_text()
        time.sleep(0.1)


@pytest.mark.kafka
def test_replay_at_50_ms_latency_reaches_0_7_of_in_flight_over_latency(broker: Broker, tmp_path: Path) -> None:
    topic = create_topic(broker, unique("throughput"), 6)
    events = []
    for i in range(RECORDS):
        e = spec_example_event()
        e["instance_id"] = 10_000_000 + i
        events.append(e)
    produce(broker, topic, [(str(e["instance_id"]).encode(), encode(e)) for e in events])
    proc, base = start_stub(tmp_path, LATENCY_MS)
    try:
        env = consumer_env(broker, topic, unique("throughput-group"), base + "/erp/push",
                           ERP_SYNC_LOG_LEVEL="WARNING", ERP_SYNC_MAX_IN_FLIGHT=str(IN_FLIGHT))
        run = subprocess.run([ERP_SYNC, "replay", "--from", "2000-01-01T00:00:00Z", "--to", "2100-01-01T00:00:00Z"],
                             env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-3000:]
        assert f"  pushed: {RECORDS}" in run.stdout, run.stdout
        m = re.search(r"  rate: ([0-9.]+) pushes/s over ([0-9.]+) s \(up to (\d+) in flight\)", run.stdout)
        assert m, run.stdout
        rate, peak = float(m.group(1)), int(m.group(3))
        target = 0.7 * IN_FLIGHT / (LATENCY_MS / 1000)
        print(f"\nreplay at {LATENCY_MS} ms ERP latency: {rate:.0f} records/s with {IN_FLIGHT} in flight "
              f"(peak {peak}); {rate / (IN_FLIGHT / (LATENCY_MS / 1000)):.2f} × in-flight/latency, target "
              f"{target:.0f}/s")
        with StubClient(base) as stub:
            stats = stub.stats()
        assert stats["received"] == RECORDS and stats["max_concurrency"] == IN_FLIGHT, stats
        assert peak == IN_FLIGHT
        assert rate >= target, f"{rate:.0f} records/s < {target:.0f}"
    finally:
        proc.terminate()
        proc.wait(10)
