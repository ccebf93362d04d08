"""The test harness itself: a consumer that does not finish in time is not left running."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import dev.harness as harness
from dev.harness import Broker, consumer_env, free_port, run_until_idle


def test_a_run_that_does_not_go_idle_in_time_is_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nowhere = Broker(f"127.0.0.1:{free_port()}", managed=False)  # no broker: it never goes idle
    env = consumer_env(nowhere, "wf", "g", "http://127.0.0.1:1/push")
    started: list[int] = []
    real = harness.start_consumer

    def spy(*args: Any, **kwargs: Any) -> harness.ConsumerProcess:
        cp = real(*args, **kwargs)
        started.append(cp.proc.pid)
        return cp

    monkeypatch.setattr(harness, "start_consumer", spy)
    with pytest.raises(AssertionError, match=r"^erp-sync run did not exit within 3 s \(killed\)"):
        run_until_idle(env, tmp_path / "run.log", timeout=3)
    (pid,) = started
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone, and reaped
