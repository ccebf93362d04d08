"""The tests' Kafka from a container engine, through testcontainers.

:func:`engine_answers` says whether a Docker-compatible engine answers (``DOCKER_HOST``, else the
default socket): it pings it, a socket file alone is not enough. :func:`start_kafka_container` starts
a single-node KRaft broker in a container and returns it as an unmanaged :class:`dev.harness.Broker`
whose :meth:`~dev.harness.Broker.wipe` removes the container.

The image is ``ERP_SYNC_TEST_KAFKA_IMAGE``, by default the one ``dev/kafka-image.sh`` builds from the
cached Kafka jars (no registry needed). It is configured the way the official ``apache/kafka`` image is
(``KAFKA_*`` variables), so that image can stand in for it (not tried here: no registry). The broker
listens on a free port P of the host and advertises ``127.0.0.1:P``, published as P:P, so the tests
and the ``erp-sync`` processes they start reach it as they reach the local one.

Ryuk, testcontainers' reaper container, comes from a registry: it is off unless
``TESTCONTAINERS_RYUK_DISABLED`` says otherwise, and the session removes its container itself;
every container carries the labels ``apaas-erp-sync.test=kafka`` and
``apaas-erp-sync.test.session=$ERP_SYNC_TEST_SESSION`` (else the pid) for a clean-up after a killed
session (``scripts/test-testcontainers.sh`` does it).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dev.harness import Broker, free_port

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGE = "localhost/apaas-erp-sync-kafka:" + os.environ.get("KAFKA_VERSION", "4.1.1")
LABEL = "apaas-erp-sync.test"
START_TIMEOUT_S = 120.0


def engine_answers(timeout_s: float = 3.0) -> bool:
    """True when a Docker-compatible engine answers a ping at ``DOCKER_HOST`` or the default socket."""
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        import docker  # testcontainers' client (test extra)
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=int(max(1, timeout_s)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure means "no engine to use"
        return False


def default_image_missing() -> bool:
    """True when the default (locally built) image is not in the engine: dev/kafka-image.sh makes it."""
    if os.environ.get("ERP_SYNC_TEST_KAFKA_IMAGE"):
        return False  # a named image may come from a registry
    import docker

    client = docker.from_env(timeout=10)
    try:
        client.images.get(DEFAULT_IMAGE)
        return False
    except docker.errors.ImageNotFound:
        return True
    finally:
        client.close()


def _ulimits() -> list[Any]:
    """Explicit limits: an engine that cannot raise its own (podman inside a container) refuses its
    defaults. Open files up to this process's hard limit (a broker with many partitions needs more
    than 1024), 4096 processes (higher values were refused here even below `ulimit -Hu`)."""
    from docker.types import Ulimit

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    return [Ulimit(name="nofile", soft=nofile, hard=nofile), Ulimit(name="nproc", soft=4096, hard=4096)]


def kafka_env(port: int) -> dict[str, str]:
    """The broker's configuration, as apache/kafka takes it: like dev/kafka.sh's server.properties."""
    return {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENERS": f"PLAINTEXT://0.0.0.0:{port},CONTROLLER://localhost:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{port}",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "PLAINTEXT",
        "KAFKA_NUM_PARTITIONS": "1",
        "KAFKA_DEFAULT_REPLICATION_FACTOR": "1",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_MIN_INSYNC_REPLICAS": "1",
        "KAFKA_DELETE_TOPIC_ENABLE": "true",
    }


def _ready(port: int) -> bool:
    """The broker answers a Metadata request and lists itself (dev/kafka_ready.py, as dev/kafka.sh uses)."""
    proc = subprocess.run([sys.executable, str(ROOT / "dev" / "kafka_ready.py"), "127.0.0.1", str(port), "1"],
                          capture_output=True, timeout=30)
    return proc.returncode == 0


def start_kafka_container(image: str | None = None) -> Broker:
    """Start the broker container; return it as an unmanaged Broker that removes the container on wipe()."""
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # read when testcontainers is imported
    from testcontainers.core.container import DockerContainer

    image = image or os.environ.get("ERP_SYNC_TEST_KAFKA_IMAGE") or DEFAULT_IMAGE
    port = free_port()
    container = DockerContainer(image).with_bind_ports(port, port)
    for key, value in kafka_env(port).items():
        container.with_env(key, value)
    session = os.environ.get("ERP_SYNC_TEST_SESSION") or str(os.getpid())
    container.with_kwargs(labels={LABEL: "kafka", f"{LABEL}.session": session}, ulimits=_ulimits())
    try:
        container.start()
    except BaseException:
        container.stop()  # a container created but not started is removed too
        raise
    broker = Broker(f"127.0.0.1:{port}", managed=False, port=port, on_wipe=container.stop)
    started = time.monotonic()
    try:
        while not _ready(port):
            wrapped = container.get_wrapped_container()
            wrapped.reload()
            if wrapped.status not in ("created", "running"):
                raise RuntimeError(f"the Kafka container exited ({wrapped.status})")
            if time.monotonic() - started > START_TIMEOUT_S:
                raise TimeoutError(f"the Kafka container did not answer on 127.0.0.1:{port} in {START_TIMEOUT_S:.0f} s")
            time.sleep(0.5)
        print(f"[containers] Kafka from {image} in container {container.get_wrapped_container().short_id} on "
              f"{broker.bootstrap}, ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
    except BaseException:
        stdout, stderr = container.get_logs()
        print((stdout + stderr).decode(errors="replace")[-4000:], file=sys.stderr)
        broker.wipe()
        raise
    return broker
