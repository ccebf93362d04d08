"""Schema evolution end to end (issue 12): Confluent-framed values written by confluent-kafka's own
``AvroSerializer`` through a schema registry's REST API, read by ``erp-sync run``, ``replay`` and
``dlq replay`` against a real broker and the real ERP stub.

The registry is a real one: Apicurio Registry (its Confluent API), built from Maven Central and started by
``dev/registry.sh`` (dev/README.md, "Schema registry"), one per module, in memory. The TLS, client
certificate and Basic auth pass-through is checked against consumer/devstack/registry_stub.py (real HTTP
answering the same REST calls): Apicurio's own authentication needs an OpenID Connect server.

v1 is schemas/workflow_completed.v1.avsc; v2 adds an optional field and the status AUTO_APPROVED; a
"micros" writer changes ``end_time`` to ``timestamp-micros``; v3 (registered only after the run) adds
another optional field.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from consumer import transform
from consumer.decode import SCHEMA_JSON, Decoder, registry_lookup
from consumer.delivery.dead_letters import H_CLASS, H_CODE
from consumer.devstack.events import confluent_frame, encode, spec_example_event
from consumer.devstack.registry_stub import RegistryStub
from consumer.errors import DecodeError
from dev.harness import (
    ERP_SYNC,
    Broker,
    Registry,
    committed,
    consumer_env,
    create_topic,
    header_map,
    high_watermarks,
    log_events,
    produce,
    read_all,
    run_until_idle,
    start_consumer,
    stop_consumer,
    unique,
    wait_until,
)
from tests.unit.test_schema_evolution import micros_schema, v2_schema

SPEC = spec_example_event()


def v3_schema() -> dict[str, Any]:
    schema = v2_schema()
    schema["fields"].append({"name": "region", "type": ["null", "string"], "default": None})
    return schema


def serializer(client: SchemaRegistryClient, schema: dict[str, Any]) -> AvroSerializer:
    """confluent-kafka's serializer: registers the schema under ``<topic>-value`` on first use."""
    return AvroSerializer(client, json.dumps(schema))


def serialize(ser: AvroSerializer, topic: str, event: dict[str, Any]) -> bytes:
    value = ser(event, SerializationContext(topic, MessageField.VALUE))
    assert value is not None
    return value


def body_of(instance_id: int) -> bytes:
    """The ERP body of the v1 spec example with this InstanceId: what every version must produce."""
    return transform.erp_request({**SPEC, "instance_id": instance_id})[0]


@pytest.fixture(scope="module")
def apicurio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with Registry(tmp_path_factory.mktemp("registry")) as registry:
        yield registry


@pytest.fixture(params=["apicurio", "stub"])
def registry(request: pytest.FixtureRequest) -> Iterator[Registry | RegistryStub]:
    if request.param == "apicurio":
        yield request.getfixturevalue("apicurio")
    else:
        with RegistryStub() as stub:
            yield stub


def schema_id(framed: bytes) -> int:
    """The schema id of a Confluent-framed value."""
    assert framed[0] == 0, framed[:5]
    return int.from_bytes(framed[1:5], "big")


def test_the_serializers_rest_calls_are_answered_and_decode_through_the_registry(
        registry: Registry | RegistryStub) -> None:
    client = SchemaRegistryClient({"url": registry.url})
    topic = unique("wf")
    v1 = serializer(client, SCHEMA_JSON)
    v2 = serializer(client, v2_schema())
    framed_v1 = serialize(v1, topic, {**SPEC, "instance_id": 1})
    framed_v2 = serialize(v2, topic, {**SPEC, "instance_id": 2, "tenant_name": "acme"})
    id1, id2 = schema_id(framed_v1), schema_id(framed_v2)
    assert id1 != id2 and framed_v1[:5] == confluent_frame(id1, b"") and framed_v2[:5] == confluent_frame(id2, b"")
    assert serialize(v1, topic, SPEC)[:5] == confluent_frame(id1, b"")  # the same schema keeps its id
    assert f"{topic}-value" in client.get_subjects()
    assert client.get_latest_version(f"{topic}-value").schema_id == id2
    assert client.get_versions(f"{topic}-value") == [1, 2]
    decoder = Decoder(writer_schema_lookup=registry_lookup(registry.url))
    for value, iid in ((framed_v1, 1), (framed_v2, 2)):
        event = decoder.approved(value)
        assert not isinstance(event, str) and transform.erp_request(event)[0] == body_of(iid)
    if isinstance(registry, RegistryStub):  # the stub sees the calls: once per schema id
        gets = [c for c in registry.calls if c.startswith("GET /schemas/ids/")]
        assert sorted(gets) == [f"GET /schemas/ids/{id1}", f"GET /schemas/ids/{id2}"]
    # confluent-kafka's own deserializer reads v2 through the same REST calls with v1 as its reader (it
    # applies the logical types: plausible milliseconds here, the spec example's 19-digit times overflow)
    plausible = {**SPEC, "instance_id": 8, "event_time": 1732886400000, "start_time": 1732886000000,
                 "end_time": 1732886399000, "approvals": [], "tenant_name": None}
    deserialized = AvroDeserializer(client, json.dumps(SCHEMA_JSON))(
        serialize(v2, topic, plausible), SerializationContext(topic, MessageField.VALUE))
    assert deserialized is not None and deserialized["instance_id"] == 8 and "tenant_name" not in deserialized
    with pytest.raises(DecodeError) as info:
        decoder.approved(confluent_frame(99999, encode(SPEC)))
    assert info.value.code == "UnknownSchemaId" and "99999" in info.value.message


def window() -> list[str]:
    now = datetime.now(UTC)
    return ["--from", (now - timedelta(hours=1)).isoformat(), "--to", (now + timedelta(hours=1)).isoformat()]


def erp_sync(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ERP_SYNC, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.kafka
def test_run_replay_and_dlq_replay_read_v1_v2_and_new_statuses_through_the_registry(
        broker: Broker, apicurio: Registry, erp: Any, stub: Any, tmp_path: Path) -> None:
    topic, group = unique("sr"), unique("group-sr")
    create_topic(broker, topic)
    create_topic(broker, topic + ".dlq")
    registry = apicurio
    client = SchemaRegistryClient({"url": registry.url})
    v1, v2, micros = (serializer(client, s) for s in (SCHEMA_JSON, v2_schema(), micros_schema()))
    import io

    import fastavro

    from consumer.decode.schema import parse_plain_schema
    out = io.BytesIO()
    fastavro.schemaless_writer(out, parse_plain_schema(v3_schema()), {**SPEC, "instance_id": 6, "tenant_name": None,
                                                                      "region": "eu"})
    values = {
        1: serialize(v1, topic, {**SPEC, "instance_id": 1}),
        2: serialize(v2, topic, {**SPEC, "instance_id": 2, "tenant_name": "acme"}),
        3: serialize(v2, topic, {**SPEC, "instance_id": 3, "status": "AUTO_APPROVED", "tenant_name": None}),
        4: serialize(v2, topic, {**SPEC, "instance_id": 4, "status": "REJECTED", "tenant_name": None}),
        5: serialize(micros, topic, {**SPEC, "instance_id": 5}),
    }
    v2_id, micros_id = schema_id(values[2]), schema_id(values[5])
    # the next id does not exist yet: a producer ahead of the registry (v3 is registered after the run)
    v3_id = max(schema_id(v) for v in values.values()) + 1
    values[6] = confluent_frame(v3_id, out.getvalue())
    values[7] = encode({**SPEC, "instance_id": 7})  # bare v1 still works beside the framed ones
    produce(broker, topic, [(str(iid).encode(), v) for iid, v in values.items()])
    env = consumer_env(broker, topic, group, erp.url, ERP_SYNC_SCHEMA_REGISTRY_URL=registry.url,
                       ERP_SYNC_COMMIT_INTERVAL_SECONDS="0.2")
    log = run_until_idle(env, tmp_path / "run.log", idle_s=1.5, timeout=90).log()

    # run: v1, v2 and bare v1 approved records arrive byte-exact, the v1 body
    pushed = {r["instance_id"]: r["body"].encode() for r in stub.requests() if r["code"] == "OK"}
    assert pushed == {iid: body_of(iid) for iid in (1, 2, 7)}, log[-3000:]
    letters = {int(m.key()): (header_map(m)[H_CLASS], header_map(m)[H_CODE], m.value())
               for m in read_all(broker, topic + ".dlq")}
    assert {iid: letter[:2] for iid, letter in letters.items()} == {
        3: ("validation", "UnknownStatus"), 5: ("decode", "IncompatibleSchema"), 6: ("decode", "UnknownSchemaId")}
    assert all(letters[iid][2] == values[iid] for iid in letters)  # the original bytes, replayable
    assert committed(broker, group, topic) == high_watermarks(broker, topic)
    events = log_events(log)
    unknown = [e for e in events if e.get("event") == "unknown_status"]
    assert len(unknown) == 1 and unknown[0]["status"] == "AUTO_APPROVED" and unknown[0]["schema_id"] == v2_id
    stopped = next(e for e in events if e.get("event") == "stopped")["message"]
    assert stopped.startswith("stopped: 3 pushed, 0 duplicates, 1 skipped, 3 dead-lettered"), stopped
    assert "end_time: long (timestamp-micros)" in next(e for e in events if e.get("event") == "incompatible_schema")[
        "message"]
    run_paths = {"pushed": sorted(pushed), "skipped": [4], "dead-lettered": sorted(letters)}

    # the registry learns the next id (v3); the operator decides AUTO_APPROVED is to be skipped
    assert serialize(serializer(client, v3_schema()), topic, {**SPEC, "tenant_name": None, "region": None})[:5] \
        == confluent_frame(v3_id, b"")
    replay_env = {**env, "ERP_SYNC_UNKNOWN_STATUS": "skip"}
    first = erp_sync(replay_env, "dlq", "replay")
    assert first.returncode == 1, first.stdout + first.stderr  # the incompatible writer fails again
    assert (f"3 dead letters: 1 accepted, 0 duplicates, 1 skipped, 0 failed again (back on {topic}.dlq), 1 still "
            "failing for the same reason (left in place)") in first.stdout, first.stdout
    allowed = erp_sync({**replay_env, "ERP_SYNC_SCHEMA_REGISTRY_ALLOW_INCOMPATIBLE": str(micros_id)}, "dlq", "replay")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "1 dead letter: 1 accepted" in allowed.stdout, allowed.stdout
    after_dlq = Counter(r["instance_id"] for r in stub.requests() if r["code"] == "OK")
    assert after_dlq == Counter({1: 1, 2: 1, 7: 1, 6: 1, 5: 1})

    # replay reads the framed values as run does (same registry settings, same decoder)
    replay = erp_sync(env, "replay", *window())
    assert replay.returncode == 1, replay.stdout + replay.stderr  # 3 (UnknownStatus) and 5 fail: listed
    assert "pushed: 4" in replay.stdout and "skipped (status not APPROVED): 1" in replay.stdout, replay.stdout
    assert "validation UnknownStatus" in replay.stdout and "decode IncompatibleSchema" in replay.stdout
    replayed = Counter(r["instance_id"] for r in stub.requests() if r["code"] == "OK") - after_dlq
    assert replayed == Counter({1: 1, 2: 1, 6: 1, 7: 1})
    for r in stub.requests():
        assert r["body"].encode() == body_of(r["instance_id"])
    print(f"\nrecords per path: run {run_paths}; dlq replay (skip policy) accepted [6] skipped [3] still failing [5]; "
          f"dlq replay (allow id {micros_id}) accepted [5]; replay pushed {sorted(replayed)} skipped [4] failed [3, 5]")


@pytest.mark.kafka
def test_registry_tls_client_certificate_and_basic_auth_pass_through_and_stay_secret(
        broker: Broker, erp: Any, stub: Any, tmp_path: Path) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca.configure_trust(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED  # a client certificate is required
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client_cert = ca.issue_cert("erp-sync@example.com")
    client_cert.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    client_cert.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    secret = "sr-pa55-XYZ"
    (tmp_path / "user-info").write_text(f"erp-sync:{secret}\n")
    with RegistryStub(user_info=f"erp-sync:{secret}", tls=server_ctx) as registry:
        sr_conf = {"url": registry.url, "ssl.ca.location": str(tmp_path / "ca.pem"),
                   "ssl.certificate.location": str(tmp_path / "client.pem"),
                   "ssl.key.location": str(tmp_path / "client.key"), "basic.auth.user.info": f"erp-sync:{secret}"}
        topic, group = unique("sr-tls"), unique("group-sr-tls")
        create_topic(broker, topic)
        create_topic(broker, topic + ".dlq")
        value = serialize(serializer(SchemaRegistryClient(sr_conf), SCHEMA_JSON), topic, {**SPEC, "instance_id": 11})
        produce(broker, topic, [(b"11", value)])
        env = consumer_env(broker, topic, group, erp.url, ERP_SYNC_SCHEMA_REGISTRY_URL=registry.url,
                           ERP_SYNC_SCHEMA_REGISTRY_CA_BUNDLE=str(tmp_path / "ca.pem"),
                           ERP_SYNC_SCHEMA_REGISTRY_CLIENT_CERT=str(tmp_path / "client.pem"),
                           ERP_SYNC_SCHEMA_REGISTRY_CLIENT_KEY=str(tmp_path / "client.key"),
                           ERP_SYNC_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO_FILE=str(tmp_path / "user-info"))
        log = run_until_idle(env, tmp_path / "run.log", idle_s=1.0, timeout=60).log()
        assert [r["instance_id"] for r in stub.requests()] == [11], log[-3000:]
        assert secret not in log
        checked = erp_sync(env, "check-config", "--connect", "--connect-timeout", "5")
        assert secret not in checked.stdout + checked.stderr
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "ok      schema registry" in checked.stderr, checked.stderr
        inline = {k: v for k, v in env.items() if k != "ERP_SYNC_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO_FILE"}
        printed = erp_sync({**inline, "ERP_SYNC_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": f"erp-sync:{secret}"},
                           "check-config")
        assert printed.returncode == 0, printed.stderr
        assert secret not in printed.stdout + printed.stderr
        shown = json.loads(printed.stdout)
        assert shown["ERP_SYNC_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO"] == "**********"
        assert shown["ERP_SYNC_SCHEMA_REGISTRY_CLIENT_CERT"] == str(tmp_path / "client.pem")
        # without the client certificate the registry refuses the handshake: a configuration problem, not the
        # record's: the partition is held at the record (no dead letter, no silent skip) until the setting is fixed
        no_cert = {k: v for k, v in env.items() if "CLIENT_" not in k}
        produce(broker, topic, [(b"12", serialize(serializer(SchemaRegistryClient(sr_conf), copy.deepcopy(v2_schema())),
                                                   topic, {**SPEC, "instance_id": 12, "tenant_name": None}))])
        held = start_consumer(no_cert, tmp_path / "run2.log")
        try:
            wait_until(lambda: any(e.get("event") == "registry_unavailable" for e in log_events(held.log())), 30,
                       "the partition held")
        finally:
            assert stop_consumer(held) == 0
        line = next(e for e in log_events(held.log()) if e.get("event") == "registry_unavailable")
        assert line["message"].startswith("the schema registry did not answer for schema id ") and (
            f"{topic}[0] held at offset 1" in line["message"]), line["message"]
        assert read_all(broker, topic + ".dlq") == [] and committed(broker, group, topic) == {0: 1}
        assert [r["instance_id"] for r in stub.requests()] == [11]


@pytest.mark.kafka
def test_a_registry_outage_holds_the_partition_and_dead_letters_nothing(
        broker: Broker, erp: Any, stub: Any, tmp_path: Path) -> None:
    """Before: asked 3 times, 1 s apart, in the poll loop, then dead-lettered UnknownSchemaId."""
    with RegistryStub() as registry:
        topic, group = unique("sr-down"), unique("group-sr-down")
        create_topic(broker, topic)
        create_topic(broker, topic + ".dlq")
        framed = serialize(serializer(SchemaRegistryClient({"url": registry.url}), SCHEMA_JSON), topic,
                           {**SPEC, "instance_id": 21})
        registry.unavailable = True  # the schema is registered; the registry stops answering
        produce(broker, topic, [(b"20", encode({**SPEC, "instance_id": 20})), (b"21", framed),
                                (b"22", encode({**SPEC, "instance_id": 22}))])
        env = consumer_env(broker, topic, group, erp.url, ERP_SYNC_SCHEMA_REGISTRY_URL=registry.url,
                           ERP_SYNC_COMMIT_INTERVAL_SECONDS="0.2")
        consumer = start_consumer(env, tmp_path / "run.log")
        try:
            wait_until(lambda: any(e.get("event") == "registry_unavailable" for e in log_events(consumer.log())), 30,
                       "the partition held")
            wait_until(lambda: sum(c.startswith("GET /schemas/ids/") for c in registry.calls) >= 2, 15,
                       "the registry asked again")
            accepted = [r["instance_id"] for r in stub.requests() if r["code"] == "OK"]
            assert accepted == [20], consumer.log()[-3000:]
            assert committed(broker, group, topic) == {0: 1}
            assert read_all(broker, topic + ".dlq") == []
            line = next(e for e in log_events(consumer.log()) if e.get("event") == "registry_unavailable")
            assert line["message"].startswith(
                "the schema registry answered HTTP 503 for schema id 1: Service Unavailable (stub.unavailable): "
                f"{topic}[0] held at offset 1, asked again every 5 s"), line["message"]
            registry.unavailable = False
            wait_until(lambda: [r["instance_id"] for r in stub.requests() if r["code"] == "OK"] == [20, 21, 22], 30,
                       "delivered once the registry answers")
            wait_until(lambda: committed(broker, group, topic) == {0: 3}, 15, "committed to the end")
        finally:
            assert stop_consumer(consumer) == 0
        assert read_all(broker, topic + ".dlq") == []
        for r in stub.requests():
            assert r["body"].encode() == body_of(r["instance_id"])


def test_the_registry_lookup_tells_an_unknown_id_from_a_registry_that_does_not_answer() -> None:
    from consumer.errors import RegistryUnavailable
    from dev.harness import free_port

    with RegistryStub() as registry:
        client = SchemaRegistryClient({"url": registry.url})
        known = schema_id(serialize(serializer(client, SCHEMA_JSON), unique("wf"), SPEC))
        decoder = Decoder(writer_schema_lookup=registry_lookup(registry.url))
        with pytest.raises(DecodeError) as unknown:  # the registry answers 404: the id itself
            decoder.approved(confluent_frame(known + 1, encode(SPEC)))
        assert unknown.value.code == "UnknownSchemaId"
        registry.unavailable = True  # 503
        before = len(registry.calls)
        with pytest.raises(RegistryUnavailable) as down:
            decoder.approved(confluent_frame(known, encode(SPEC)))
        assert registry.calls[before:] == [f"GET /schemas/ids/{known}"]  # asked once: no retry blocks the loop
        assert str(down.value) == (f"the schema registry answered HTTP 503 for schema id {known}: "
                                   "Service Unavailable (stub.unavailable)")
    refused = Decoder(writer_schema_lookup=registry_lookup(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(RegistryUnavailable) as nobody:
        refused.approved(confluent_frame(1, encode(SPEC)))
    # httpx's ConnectError (confluent-kafka 2.7+) or requests' ConnectionError (before): the refusal is named
    assert str(nobody.value).startswith("the schema registry did not answer for schema id 1: Connect")
    assert "Connection refused" in str(nobody.value)
