"""SIGTERM while the broker is down: the pod stops within its grace period.

Before: the shutdown's synchronous commit waited for the group coordinator without limit; with the
broker gone it returned only when the session timed out (45 s by default), past Kubernetes'
terminationGracePeriodSeconds (40 s in deploy/), so the pod was SIGKILLed. Now the last commit is
asynchronous and its answer is awaited for at most ``FINAL_COMMIT_TIMEOUT_S``; then the revoke
does not commit synchronously and leaving the group (librdkafka's close, which waits for the
coordinator too) is given ``CLOSE_TIMEOUT_S``.
"""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

import pytest

from consumer.delivery.pipeline import FINAL_COMMIT_TIMEOUT_S
from consumer.devstack.erp_stub import ErpStub
from dev.harness import consumer_env, log_events, produce, start_consumer, start_dedicated_broker
from tests.faults.test_faults_process import approved, new_topics, record, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SHUTDOWN_S = 2.0
GRACE_S = 40.0  # deploy/k8s/base/deployment.yaml terminationGracePeriodSeconds


def test_sigterm_while_the_broker_is_down_exits_within_the_grace_period(tmp_path: Path) -> None:
    broker = start_dedicated_broker(tmp_path)
    with contextlib.ExitStack() as stack:
        stack.callback(broker.wipe)
        erp = stack.enter_context(ErpStub())
        stub = stack.enter_context(erp.client())
        n = 200
        topic, _dlq, group = new_topics(broker, "sigterm-broker-down", 2)
        evs = approved(n, seed=1403)
        produce(broker, topic, [record(e) for e in evs])
        stub.behaviour(latency_ms=20)
        env = consumer_env(broker, topic, group, erp.url, ERP_SYNC_SHUTDOWN_TIMEOUT_SECONDS=str(SHUTDOWN_S),
                           ERP_SYNC_MAX_IN_FLIGHT="4", ERP_SYNC_KAFKA_CONSUMER_SESSION_TIMEOUT_MS="45000")
        cp = start_consumer(env, tmp_path / "first.log")
        stack.callback(lambda: cp.proc.poll() is None and cp.proc.kill())
        wait_until("50 pushes", lambda: int(stub.stats()["received"]) >= 50, 60, proc=cp)

        broker.stop()
        time.sleep(1.0)
        t_term = time.monotonic()
        cp.proc.send_signal(signal.SIGTERM)
        rc = cp.proc.wait(GRACE_S + 20)
        exit_s = time.monotonic() - t_term
        log = cp.log()
        assert rc == 0, log[-3000:]
        assert exit_s < SHUTDOWN_S + FINAL_COMMIT_TIMEOUT_S + 15 < GRACE_S, f"exit took {exit_s:.1f} s"
        events = [e.get("event") for e in log_events(log)]
        assert "commit_unanswered" in events and "close_timeout" in events and events[-1] == "stopped", events[-10:]

        print(f"\n[fault figures] SIGTERM with the broker down: exit {exit_s:.1f} s (grace {GRACE_S:.0f} s), "
              f"shutdown timeout {SHUTDOWN_S:.0f} s")
