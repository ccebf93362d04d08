"""Schema evolution through a registry (issue 12): statuses by name, writers that change a field's meaning,
one decoder for run and replays. No network: the registry is a dict of schema id → writer schema JSON."""

from __future__ import annotations

import copy
import io
import logging
from typing import Any

import fastavro
import pytest

from consumer.decode import SCHEMA_JSON, STATUSES, Decoder, decoder_for, registry_client_config
from consumer.decode import decoder as decoder_module
from consumer.decode import factory as factory_module
from consumer.decode.compat import incompatibilities, writer_status_symbols
from consumer.decode.schema import parse_plain_schema
from consumer.delivery.dead_letters import H_CLASS, H_CODE
from consumer.devstack.events import confluent_frame, encode, spec_example_event
from consumer.errors import DecodeError, ValidationError
from consumer.settings import load_settings
from consumer.transform import erp_request
from tests.unit.test_pipeline_loop import TOPIC, Loop

SPEC = spec_example_event()
SPEC_BODY, SPEC_KEY = erp_request(SPEC)


def v2_schema(*, extra_status: bool = True, new_field: bool = True) -> dict[str, Any]:
    """v1 plus an optional field and the status symbol AUTO_APPROVED (what aPaaS announced)."""
    schema = copy.deepcopy(SCHEMA_JSON)
    if new_field:
        schema["fields"].append({"name": "tenant_name", "type": ["null", "string"], "default": None})
    if extra_status:
        for f in schema["fields"]:
            if f["name"] == "status":
                f["type"]["symbols"].append("AUTO_APPROVED")
    return schema


def micros_schema() -> dict[str, Any]:
    schema = copy.deepcopy(SCHEMA_JSON)
    for f in schema["fields"]:
        if f["name"] == "end_time":
            f["type"] = {"type": "long", "logicalType": "timestamp-micros"}
    return schema


def framed(schema_id: int, schema: dict[str, Any], event: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, parse_plain_schema(schema), event)
    return confluent_frame(schema_id, out.getvalue())


REGISTRY = {1: SCHEMA_JSON, 2: v2_schema(), 3: micros_schema()}


class Lookup:
    def __init__(self, schemas: dict[int, Any] | None = None) -> None:
        self.schemas = dict(REGISTRY if schemas is None else schemas)
        self.asked: list[int] = []

    def __call__(self, schema_id: int) -> Any:
        self.asked.append(schema_id)
        if schema_id not in self.schemas:
            raise LookupError(f"Schema {schema_id} not found (404)")
        return self.schemas[schema_id]


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    decoder_module._warned_statuses.clear()


# ---------------------------------------------------------------- statuses by name


def test_the_writers_status_symbol_is_reported_not_v1s_default() -> None:
    """Before: fastavro resolved AUTO_APPROVED to v1's default UNKNOWN and the record was skipped silently."""
    decoder = Decoder(writer_schema_lookup=Lookup(), unknown_status="skip")
    value = framed(2, v2_schema(), {**SPEC, "status": "AUTO_APPROVED", "tenant_name": "acme"})
    assert decoder.approved(value) == "AUTO_APPROVED"
    assert decoder(value)["status"] == "AUTO_APPROVED"


@pytest.mark.parametrize("status", STATUSES[1:])
def test_skipped_records_report_their_status_on_both_paths(status: str) -> None:
    decoder = Decoder(writer_schema_lookup=Lookup())
    assert decoder.approved(encode({**SPEC, "status": status})) == status
    assert decoder.approved(framed(2, v2_schema(), {**SPEC, "status": status, "tenant_name": None})) == status


def test_an_unknown_status_is_a_validation_dead_letter_by_default_and_warned_once(
        caplog: pytest.LogCaptureFixture) -> None:
    decoder = Decoder(writer_schema_lookup=Lookup())
    value = framed(2, v2_schema(), {**SPEC, "status": "AUTO_APPROVED", "tenant_name": None})
    with caplog.at_level(logging.WARNING, logger="consumer.decode.decoder"):
        for _ in range(3):
            with pytest.raises(ValidationError) as info:
                decoder.approved(value)
            assert (info.value.error_class, info.value.code) == ("validation", "UnknownStatus")
            assert "AUTO_APPROVED" in info.value.message and "schema id 2" in info.value.message
        with pytest.raises(ValidationError):
            decoder(value)  # the replay tools' call applies the same policy
    warnings = [r for r in caplog.records if getattr(r, "event", None) == "unknown_status"]
    assert len(warnings) == 1
    assert (warnings[0].status, warnings[0].schema_id) == ("AUTO_APPROVED", 2)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- writers that change a field's meaning


def test_a_new_optional_field_is_welcome_and_the_erp_body_is_v1s() -> None:
    decoder = Decoder(writer_schema_lookup=Lookup())
    event = decoder.approved(framed(2, v2_schema(), {**SPEC, "tenant_name": "acme"}))
    assert not isinstance(event, str)
    assert "tenant_name" not in event
    assert erp_request(event) == (SPEC_BODY, SPEC_KEY)


def test_timestamp_micros_end_time_is_refused_naming_the_field_checked_once_per_schema_id() -> None:
    """Before: the microseconds reached the ERP as EndTime, as if they were v1's milliseconds."""
    lookup = Lookup()
    decoder = Decoder(writer_schema_lookup=lookup)
    value = framed(3, micros_schema(), {**SPEC, "end_time": SPEC["end_time"] * 1000 % 2**63})
    for _ in range(3):
        with pytest.raises(DecodeError) as info:
            decoder.approved(value)
        assert info.value.code == "IncompatibleSchema"
        assert "end_time: long (timestamp-micros) in the writer schema where v1 has long (timestamp-millis)" \
            in info.value.message
        assert "ERP_SYNC_SCHEMA_REGISTRY_ALLOW_INCOMPATIBLE=3" in info.value.message
    assert lookup.asked == [3]


@pytest.mark.parametrize("allow", [frozenset({3}), None])
def test_an_operator_can_allow_an_incompatible_schema_id(allow: frozenset[int] | None) -> None:
    decoder = Decoder(writer_schema_lookup=Lookup(), allow_incompatible=allow)
    event = decoder.approved(framed(3, micros_schema(), SPEC))
    assert not isinstance(event, str) and event["end_time"] == SPEC["end_time"]


def test_an_unknown_schema_id_is_not_remembered_so_it_resolves_once_registered() -> None:
    lookup = Lookup({1: SCHEMA_JSON})
    decoder = Decoder(writer_schema_lookup=lookup)
    value = framed(2, v2_schema(extra_status=False), {**SPEC, "tenant_name": None})
    with pytest.raises(DecodeError) as info:
        decoder.approved(value)
    assert info.value.code == "UnknownSchemaId"
    lookup.schemas[2] = v2_schema(extra_status=False)
    assert not isinstance(decoder.approved(value), str)
    decoder.approved(value)
    assert lookup.asked == [2, 2]


def test_a_writer_schema_that_is_not_avro_is_refused() -> None:
    decoder = Decoder(writer_schema_lookup=Lookup({9: {"type": "record", "name": "X", "fields": [{"name": "a"}]}}))
    with pytest.raises(DecodeError) as info:
        decoder.approved(confluent_frame(9, b"\x02a"))
    assert info.value.code == "IncompatibleSchema"


@pytest.mark.parametrize(("change", "problem"), [
    (lambda s: s["fields"][6]["type"].update(logicalType="timestamp-micros"),
     "end_time: long (timestamp-micros) in the writer schema where v1 has long (timestamp-millis)"),
    (lambda s: s["fields"][1].update(type="long"),
     "event_time: long in the writer schema where v1 has long (timestamp-millis)"),
    (lambda s: s["fields"][2].update(type="int"), "flow_code: int in the writer schema where v1 has long"),
    (lambda s: s["fields"][5].update(type=["null", "string"]),
     "start_time: union [null, string] in the writer schema where v1 has union [null, long (timestamp-millis)]"),
    (lambda s: s["fields"][7]["type"]["fields"][0].update(type="bytes"),
     "start_user.source_uid: bytes in the writer schema where v1 has string"),
    (lambda s: s["fields"][9]["type"]["items"]["fields"][4]["type"].update(logicalType="timestamp-micros"),
     "approvals.acted_at: long (timestamp-micros) in the writer schema where v1 has long (timestamp-millis)"),
    (lambda s: s["fields"][8]["type"]["values"]["fields"][0]["type"]["symbols"].append("date"),
     "variables.type: the writer adds the symbols date to enum VariableType"),
    (lambda s: s["fields"].pop(3), "instance_id: missing in the writer schema (v1 has no default for it)"),
    (lambda s: s["fields"][4]["type"].update(name="Status"),
     "status: enum Status in the writer schema where v1 has enum WorkflowStatus"),
])
def test_compat_names_each_change_of_meaning(change: Any, problem: str) -> None:
    schema = copy.deepcopy(SCHEMA_JSON)
    change(schema)
    found = incompatibilities(schema, SCHEMA_JSON)
    assert found and found[0].startswith(problem), found  # (UserInfo is used twice: both places named)


def test_compat_welcomes_added_fields_dropped_defaults_new_statuses_and_references() -> None:
    schema = v2_schema()
    schema["fields"] = [f for f in schema["fields"] if f["name"] not in ("variables", "approvals", "start_time")]
    schema["fields"][-1]["type"] = ["null", {"type": "record", "name": "Tenant", "fields": [
        {"name": "owner", "type": "UserInfo"}]}]  # a reference to a named type defined earlier
    assert incompatibilities(schema, SCHEMA_JSON) == []
    assert writer_status_symbols(schema) == [*STATUSES, "AUTO_APPROVED"]
    assert incompatibilities(SCHEMA_JSON, SCHEMA_JSON) == []


# ---------------------------------------------------------------- the one factory, the settings


def test_decoder_for_passes_the_registry_settings_through(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "user-info").write_text("sr-user:sr-pass\n")
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("-----\n")
    settings = load_settings({
        "ERP_SYNC_ERP_URL": "http://erp.test/push", "ERP_SYNC_SCHEMA_REGISTRY_URL": "https://registry.test:8081",
        "ERP_SYNC_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO_FILE": str(tmp_path / "user-info"),
        "ERP_SYNC_SCHEMA_REGISTRY_CA_BUNDLE": str(tmp_path / "ca.pem"),
        "ERP_SYNC_SCHEMA_REGISTRY_CLIENT_CERT": str(tmp_path / "client.pem"),
        "ERP_SYNC_SCHEMA_REGISTRY_CLIENT_KEY": str(tmp_path / "client.key"),
        "ERP_SYNC_SCHEMA_REGISTRY_ALLOW_INCOMPATIBLE": "3,7", "ERP_SYNC_UNKNOWN_STATUS": "skip",
        "ERP_SYNC_MAX_VALUE_BYTES": "5000"})
    assert registry_client_config(settings) == {
        "url": "https://registry.test:8081", "basic.auth.user.info": "sr-user:sr-pass",
        "ssl.ca.location": str(tmp_path / "ca.pem"), "ssl.certificate.location": str(tmp_path / "client.pem"),
        "ssl.key.location": str(tmp_path / "client.key")}
    built: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(factory_module, "registry_lookup",
                        lambda url, conf: built.append((url, conf)) or Lookup())  # type: ignore[func-returns-value]
    decoder = decoder_for(settings)
    assert built == [("https://registry.test:8081", {k: v for k, v in registry_client_config(settings).items()
                                                      if k != "url"})]
    assert (decoder.max_value_bytes, decoder.unknown_status, decoder.allow_incompatible) == (5000, "skip",
                                                                                            frozenset({3, 7}))
    shown = settings.redacted()
    assert shown["ERP_SYNC_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO"] is None
    assert "sr-pass" not in repr(shown)
    assert load_settings({"ERP_SYNC_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "u:secret"}).redacted()[
        "ERP_SYNC_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO"] == "**********"
    assert load_settings({"ERP_SYNC_SCHEMA_REGISTRY_ALLOW_INCOMPATIBLE": "all"}).incompatible_schemas_allowed is None


@pytest.mark.parametrize("variable", ["CA_BUNDLE", "CLIENT_CERT", "CLIENT_KEY"])
def test_registry_files_that_do_not_load_are_configuration_errors(tmp_path: Any, variable: str) -> None:
    from consumer.errors import ConfigError

    (tmp_path / "present.pem").write_text("-----\n")
    env = {"ERP_SYNC_SCHEMA_REGISTRY_URL": "https://registry.test",
           "ERP_SYNC_SCHEMA_REGISTRY_CLIENT_CERT": str(tmp_path / "present.pem"),
           f"ERP_SYNC_SCHEMA_REGISTRY_{variable}": str(tmp_path / "missing.pem")}
    with pytest.raises(ConfigError) as info:
        decoder_for(load_settings(env))
    assert str(info.value) == (f"ERP_SYNC_SCHEMA_REGISTRY_{variable}: cannot read {tmp_path / 'missing.pem'}: "
                               "No such file or directory")


@pytest.mark.parametrize(("env", "message"), [
    ({"ERP_SYNC_UNKNOWN_STATUS": "push"}, "ERP_SYNC_UNKNOWN_STATUS"),
    ({"ERP_SYNC_SCHEMA_REGISTRY_ALLOW_INCOMPATIBLE": "3,x"}, "ERP_SYNC_SCHEMA_REGISTRY_ALLOW_INCOMPATIBLE"),
    ({"ERP_SYNC_SCHEMA_REGISTRY_CLIENT_KEY": "/k"}, "ERP_SYNC_SCHEMA_REGISTRY_CLIENT_CERT"),
])
def test_bad_registry_settings_are_refused_naming_the_variable(env: dict[str, str], message: str) -> None:
    from consumer.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert message in str(info.value)


# ---------------------------------------------------------------- the pipeline: skipped by status, the policy


def loop_with_registry(monkeypatch: pytest.MonkeyPatch, **env: str) -> Loop:
    monkeypatch.setattr(factory_module, "registry_lookup", lambda url, conf: Lookup())
    return Loop(ERP_SYNC_SCHEMA_REGISTRY_URL="http://registry.test", **env)


def sample(loop: Loop, name: str, **labels: str) -> float:
    return loop.p.metrics.registry.get_sample_value(name, {"topic": TOPIC, **labels}) or 0.0


@pytest.mark.parametrize("policy", ["dead-letter", "skip"])
def test_the_pipeline_counts_skipped_records_by_status_and_applies_the_unknown_status_policy(
        monkeypatch: pytest.MonkeyPatch, policy: str) -> None:
    loop = loop_with_registry(monkeypatch, ERP_SYNC_UNKNOWN_STATUS=policy)
    try:
        values = [
            framed(1, SCHEMA_JSON, {**SPEC, "instance_id": 1}),
            framed(2, v2_schema(), {**SPEC, "instance_id": 2, "tenant_name": "acme"}),
            framed(2, v2_schema(), {**SPEC, "instance_id": 3, "status": "AUTO_APPROVED", "tenant_name": None}),
            framed(2, v2_schema(), {**SPEC, "instance_id": 4, "status": "REJECTED", "tenant_name": None}),
            encode({**SPEC, "instance_id": 5, "status": "WITHDRAWN"}),
            framed(3, micros_schema(), {**SPEC, "instance_id": 6}),
        ]
        for v in values:
            loop.cluster.append(TOPIC, 0, v)
        loop.consumer.assign([(TOPIC, 0)])
        loop.until(lambda: loop.consumer.committed_offsets().get((TOPIC, 0)) == len(values), what="all committed")
        bodies = {r["instance_id"]: r["body"] for r in loop.erp.received}
        assert sorted(bodies) == [1, 2]
        for iid in (1, 2):
            assert bodies[iid] == erp_request({**SPEC, "instance_id": iid})[0]
        letters = {(h[H_CLASS], h[H_CODE]): v for v, h in ((m["value"], dict(m["headers"]))
                                                          for m in loop.producer.written)}
        assert letters.get((b"decode", b"IncompatibleSchema")) == values[5]
        assert sample(loop, "erp_sync_skipped_total", status="REJECTED") == 1
        assert sample(loop, "erp_sync_skipped_total", status="WITHDRAWN") == 1
        assert sample(loop, "erp_sync_unknown_status_records_total", policy=policy) == 1
        if policy == "dead-letter":
            assert letters.get((b"validation", b"UnknownStatus")) == values[2]  # the original bytes
            assert sample(loop, "erp_sync_skipped_total", status="other") == 0
            assert (loop.p.stats.pushed, loop.p.stats.skipped, loop.p.stats.dead_lettered) == (2, 2, 2)
        else:
            assert (b"validation", b"UnknownStatus") not in letters
            assert sample(loop, "erp_sync_skipped_total", status="other") == 1
            assert (loop.p.stats.pushed, loop.p.stats.skipped, loop.p.stats.dead_lettered) == (2, 3, 1)
    finally:
        loop.close()
