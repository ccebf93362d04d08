"""Shared fixtures: one real Kafka broker per test session, a real HTTP ERP stub per test.

``KAFKA_BOOTSTRAP_SERVERS`` set → the tests use that cluster. Otherwise, when a Docker-compatible
engine answers (``DOCKER_HOST`` or the default socket), the broker is a container started through
testcontainers (``dev/containers.py``; ``scripts/test-testcontainers.sh`` runs the integration tests
that way through podman); else a single-node KRaft broker from the Apache Kafka jars
(``dev/kafka.sh``) on a free port with a fresh data directory. Either is removed at the end.
``ERP_SYNC_TEST_KAFKA=container|jars`` forces one (dev/harness.py ``start_broker``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumer.devstack.erp_stub import ErpStub, StubClient
from dev.harness import Broker, ConsumerProcess, start_broker


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """The session's Kafka broker."""
    root = Path(tempfile.mkdtemp(prefix="erp-sync-test-kafka-"))
    b = start_broker(root)
    try:
        yield b
    finally:
        b.wipe()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def erp() -> Iterator[ErpStub]:
    """A real HTTP ERP stub on a free port (see consumer/devstack/erp_stub.py)."""
    stub = ErpStub()
    stub.start()
    try:
        yield stub
    finally:
        stub.stop()


@pytest.fixture
def stub(erp: ErpStub) -> Iterator[StubClient]:
    """The control client of this test's ERP stub."""
    with StubClient(erp.base_url) as client:
        yield client


@pytest.fixture
def procs() -> Iterator[list[ConsumerProcess]]:
    """Consumer processes a test started; any still running at the end is killed (by its own pid)."""
    started: list[ConsumerProcess] = []
    yield started
    for cp in started:
        if cp.proc.poll() is None:
            cp.proc.kill()
            cp.proc.wait(10)
