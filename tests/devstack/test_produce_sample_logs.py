"""``erp-sync produce-sample``: librdkafka's lines go through logging, never raw to stderr.

No broker: the bootstrap is a closed port, so librdkafka complains on every connection attempt.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

from dev.harness import ERP_SYNC, free_port


def test_produce_sample_sends_librdkafka_lines_through_logging_and_its_throttle() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERP_SYNC_")}
    env.update({"ERP_SYNC_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
                "ERP_SYNC_KAFKA_PRODUCER_MESSAGE_TIMEOUT_MS": "1500", "ERP_SYNC_LOG_FORMAT": "json"})
    run = subprocess.run([ERP_SYNC, "produce-sample", "--count", "2"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 1, run.stderr
    lines = run.stderr.splitlines()
    assert not [line for line in lines if re.match(r"^%\d\|", line)], run.stderr  # no raw librdkafka line
    logged = [json.loads(line) for line in lines if line.startswith("{")]
    fails = [e for e in logged if e["name"] == "librdkafka.producer" and e["message"].startswith("FAIL")]
    assert len(fails) == 1, run.stderr  # one line per cause per 30 s, not one per connection attempt
    assert "error: 2 of 2 events could not be written" in run.stderr
