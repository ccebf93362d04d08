"""Decoding and encoding of the v1 ``WorkflowCompleted`` event (consumer/decode/, EVENT-CONTRACT.md)."""

from __future__ import annotations

import copy
import io
from typing import Any

import fastavro
import pytest

from consumer.decode import READER_SCHEMA, SCHEMA_JSON, STATUSES, Decoder, decode
from consumer.decode.schema import parse_plain_schema, schema_path
from consumer.devstack.events import confluent_frame, encode, spec_example_event
from consumer.errors import DecodeError, RecordError

SPEC_EVENT = spec_example_event()
SPEC_BYTES = encode(SPEC_EVENT)

# Byte layout of SPEC_BYTES: event_id = 1 length byte + 36 ASCII bytes; event_time (6 bytes),
# flow_code (9), instance_id (9) as zig-zag varints; then the status enum index.
STATUS_POS = 1 + 36 + 6 + 9 + 9
START_TIME_UNION_POS = STATUS_POS + 1


def decode_error(value: bytes | None, **kwargs: Any) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode(value, **kwargs)
    assert info.value.error_class == "decode"
    assert info.value.code
    assert info.value.message
    return info.value


def patched(data: bytes, pos: int, byte: int) -> bytes:
    out = bytearray(data)
    out[pos] = byte
    return bytes(out)


def test_layout_assumptions() -> None:
    assert len(SPEC_BYTES) == 208
    assert SPEC_BYTES[0] == 72  # zig-zag 36
    assert SPEC_BYTES[1:37] == SPEC_EVENT["event_id"].encode()
    assert SPEC_BYTES[STATUS_POS] == 0  # APPROVED is symbol 0
    assert SPEC_BYTES[START_TIME_UNION_POS] == 2  # union branch 1: long
    assert encode({**SPEC_EVENT, "status": "UNKNOWN"})[STATUS_POS] == 8  # symbol 4


def test_statuses_are_the_schema_symbols() -> None:
    assert STATUSES == ("APPROVED", "REJECTED", "WITHDRAWN", "TERMINATED", "UNKNOWN")


def test_round_trip_spec_event() -> None:
    decoded = decode(SPEC_BYTES)
    assert decoded == SPEC_EVENT
    assert encode(decoded) == SPEC_BYTES


@pytest.mark.parametrize("status", ["APPROVED", "REJECTED", "WITHDRAWN", "TERMINATED", "UNKNOWN"])
def test_round_trip_every_status(status: str) -> None:
    event = {**SPEC_EVENT, "status": status}
    assert decode(encode(event))["status"] == status


def test_longs_stay_int() -> None:
    decoded = decode(SPEC_BYTES)
    assert type(decoded["event_time"]) is int and decoded["event_time"] == 1732886400000
    assert type(decoded["start_time"]) is int and decoded["start_time"] == 1427811121259155459
    assert type(decoded["end_time"]) is int and decoded["end_time"] == 1427811121259155459
    assert type(decoded["approvals"][0]["acted_at"]) is int and decoded["approvals"][0]["acted_at"] == 1732886300000
    assert type(decoded["flow_code"]) is int and decoded["flow_code"] == 1425737370216521773


@pytest.mark.parametrize("value", [-(2**63), -1, 0, 2**63 - 1])
def test_time_longs_at_bounds_stay_int(value: int) -> None:
    event = copy.deepcopy(SPEC_EVENT)
    event["event_time"] = event["start_time"] = event["end_time"] = value
    event["approvals"][0]["acted_at"] = value
    decoded = decode(encode(event))
    assert decoded == event
    for v in (decoded["event_time"], decoded["start_time"], decoded["end_time"], decoded["approvals"][0]["acted_at"]):
        assert type(v) is int and v == value


def test_start_time_null_and_defaults_round_trip() -> None:
    event = {**SPEC_EVENT, "start_time": None, "variables": {}, "approvals": []}
    assert decode(encode(event)) == event


def test_unicode_round_trip() -> None:
    event = copy.deepcopy(SPEC_EVENT)
    event["start_user"] = {"source_uid": "企业微信-张三", "tenant_uid": "😀"}
    event["variables"] = {"请假天数": {"type": "integer", "value": "3"}}
    assert decode(encode(event)) == event


def test_schema_has_no_logical_types_when_decoding_but_file_keeps_them() -> None:
    assert '"logicalType": "timestamp-millis"' in schema_path().read_text(encoding="utf-8")
    assert "logicalType" not in repr(READER_SCHEMA)
    assert SCHEMA_JSON["name"] == "WorkflowCompleted"


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, b""])
def test_missing_value(value: bytes | None) -> None:
    err = decode_error(value)
    assert err.code == "MissingValue"
    assert err.message == "the record has no value (empty or tombstone)"


def test_value_too_large() -> None:
    n = len(SPEC_BYTES)
    err = decode_error(SPEC_BYTES, max_bytes=n - 1)
    assert err.code == "ValueTooLarge"
    assert err.message == f"value is {n} bytes, above the limit of {n - 1} bytes"
    assert decode(SPEC_BYTES, max_bytes=n) == SPEC_EVENT


def test_every_strict_prefix_is_invalid_avro() -> None:
    codes = {}
    for cut in range(1, len(SPEC_BYTES)):
        codes[cut] = decode_error(SPEC_BYTES[:cut]).code
    assert set(codes.values()) == {"InvalidAvro"}


def test_every_strict_prefix_of_a_unicode_event_is_a_decode_error() -> None:
    event = {**SPEC_EVENT, "start_user": {"source_uid": "张三", "tenant_uid": "李四"}}
    data = encode(event)
    for cut in range(1, len(data)):
        err = decode_error(data[:cut])
        assert err.code == "InvalidAvro", (cut, err)


@pytest.mark.parametrize(
    ("cut", "fragment"),
    [(1, "event_id: truncated (needs 36 bytes at byte 1, 0 left)"),
     (20, "event_id: truncated (needs 36 bytes at byte 1, 19 left)"),
     (STATUS_POS, "status: truncated (the value ends at byte 61)"),
     (len(SPEC_BYTES) - 1, "approvals: truncated (the value ends at byte 207)")],
)
def test_specific_truncations(cut: int, fragment: str) -> None:
    err = decode_error(SPEC_BYTES[:cut])
    assert err.code == "InvalidAvro"
    assert err.message == "not a v1 WorkflowCompleted record: " + fragment


@pytest.mark.parametrize(("extra", "count"), [(b"\x00", 1), (b"\x00\x01\x02", 3), (SPEC_BYTES, 208)])
def test_trailing_bytes(extra: bytes, count: int) -> None:
    err = decode_error(SPEC_BYTES + extra)
    assert err.code == "TrailingBytes"
    assert err.message == f"{count} bytes after the end of the record (wrong schema or framing)"


def test_confluent_framed_without_registry() -> None:
    err = decode_error(confluent_frame(1, SPEC_BYTES))
    assert err.code == "ConfluentFramed"
    assert "schema id 1" in err.message
    assert "ERP_SYNC_SCHEMA_REGISTRY_URL" in err.message


def test_confluent_frame_layout() -> None:
    assert confluent_frame(0x01020304, b"xy") == b"\x00\x01\x02\x03\x04xy"


def test_confluent_framed_with_registry() -> None:
    asked: list[int] = []

    def lookup(schema_id: int) -> Any:
        asked.append(schema_id)
        return SCHEMA_JSON  # the registry's text, parsed: logical types included

    assert decode(confluent_frame(1, SPEC_BYTES), writer_schema_lookup=lookup) == SPEC_EVENT
    assert decode(confluent_frame(70000, SPEC_BYTES), writer_schema_lookup=lookup) == SPEC_EVENT
    assert asked == [1, 70000]


def test_confluent_unknown_schema_id() -> None:
    def lookup(schema_id: int) -> Any:
        raise KeyError(f"no schema {schema_id}")

    err = decode_error(confluent_frame(9, SPEC_BYTES), writer_schema_lookup=lookup)
    assert err.code == "UnknownSchemaId"
    assert err.message.startswith("schema id 9: ")


def test_confluent_trailing_bytes() -> None:
    err = decode_error(confluent_frame(1, SPEC_BYTES + b"\x00\x00"),
                       writer_schema_lookup=lambda _i: SCHEMA_JSON)
    assert err.code == "TrailingBytes"
    assert err.message.startswith("2 bytes after")


def test_confluent_header_only_is_invalid_avro() -> None:
    err = decode_error(confluent_frame(1, b""), writer_schema_lookup=lambda _i: SCHEMA_JSON)
    assert err.code == "InvalidAvro"


def test_confluent_resolves_an_older_writer_schema() -> None:
    """A writer without ``variables``/``approvals`` resolves to the v1 reader's defaults."""
    writer_json = copy.deepcopy(SCHEMA_JSON)
    writer_json["fields"] = [f for f in writer_json["fields"] if f["name"] not in ("variables", "approvals")]
    writer = parse_plain_schema(writer_json)
    out = io.BytesIO()
    record = {k: v for k, v in SPEC_EVENT.items() if k not in ("variables", "approvals")}
    fastavro.schemaless_writer(out, writer, record)
    decoded = decode(confluent_frame(5, out.getvalue()), writer_schema_lookup=lambda _i: writer_json)
    assert decoded == {**record, "variables": {}, "approvals": []}


def test_confluent_incompatible_writer_schema_is_refused() -> None:
    writer_json = copy.deepcopy(SCHEMA_JSON)
    for f in writer_json["fields"]:
        if f["name"] == "flow_code":
            f["type"] = "string"
    writer = parse_plain_schema(writer_json)
    out = io.BytesIO()
    fastavro.schemaless_writer(out, writer, {**SPEC_EVENT, "flow_code": "abc"})
    err = decode_error(confluent_frame(5, out.getvalue()), writer_schema_lookup=lambda _i: writer_json)
    assert err.code == "IncompatibleSchema"
    assert "flow_code: string in the writer schema where v1 has long" in err.message
    allowed = Decoder(writer_schema_lookup=lambda _i: writer_json, allow_incompatible=frozenset({5}))
    with pytest.raises(DecodeError) as info:  # allowed, but a string cannot be read as a long
        allowed(confluent_frame(5, out.getvalue()))
    assert info.value.code == "InvalidAvro"


@pytest.mark.parametrize("index_byte", [0x0A, 0x0C, 0x7E, 0x7F])
def test_status_index_out_of_range(index_byte: int) -> None:
    err = decode_error(patched(SPEC_BYTES, STATUS_POS, index_byte))
    assert err.code == "InvalidAvro"



@pytest.mark.parametrize("index_byte", [0x01, 0x09])
# fastavro wraps negative enum/union indexes around (symbols[-5] == "APPROVED"); decode must refuse them
def test_status_negative_index_is_invalid_avro(index_byte: int) -> None:
    err = decode_error(patched(SPEC_BYTES, STATUS_POS, index_byte))
    assert err.code == "InvalidAvro"



def test_union_negative_index_is_invalid_avro() -> None:
    err = decode_error(patched(SPEC_BYTES, START_TIME_UNION_POS, 0x01))
    assert err.code == "InvalidAvro"



def test_variable_type_negative_index_is_invalid_avro() -> None:
    pos = SPEC_BYTES.index(b"LevelInfo") + len(b"LevelInfo")
    assert SPEC_BYTES[pos] == 0  # "object"
    err = decode_error(patched(SPEC_BYTES, pos, 0x01))
    assert err.code == "InvalidAvro"


def test_variable_type_index_out_of_range() -> None:
    pos = SPEC_BYTES.index(b"LevelInfo") + len(b"LevelInfo")
    err = decode_error(patched(SPEC_BYTES, pos, 0x10))  # index 8; symbols 0..7
    assert err.code == "InvalidAvro"


def test_invalid_utf8_in_event_id() -> None:
    err = decode_error(patched(SPEC_BYTES, 1, 0xFF))
    assert err.code == "InvalidUtf8"
    assert err.message.startswith("a string field is not valid UTF-8: ")


def test_invalid_utf8_in_variable_value() -> None:
    pos = SPEC_BYTES.index(b'{"Name"')
    err = decode_error(patched(SPEC_BYTES, pos + 2, 0xC3))  # 'N' → a lead byte followed by 'a'
    assert err.code == "InvalidUtf8"


def test_invalid_utf8_in_map_key() -> None:
    pos = SPEC_BYTES.index(b"LevelInfo")
    err = decode_error(patched(SPEC_BYTES, pos, 0x80))
    assert err.code == "InvalidUtf8"


def test_truncated_multibyte_sequence_is_invalid_utf8() -> None:
    event = {**SPEC_EVENT, "event_id": "ab\u4e2d"}  # 2 + 3 bytes
    data = bytearray(encode(event))
    assert data[0] == 10
    data[5] = ord("x")  # break the 3rd byte of the CJK character
    err = decode_error(bytes(data))
    assert err.code == "InvalidUtf8"


def test_huge_string_length_is_invalid_avro_not_memory() -> None:
    # event_id length varint claiming ~2^62 bytes
    data = b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f" + SPEC_BYTES[37:]
    assert decode_error(data).code == "InvalidAvro"


def test_empty_event_id_is_taken_for_confluent_framing() -> None:
    """Documented trade-off: a bare record with an empty event_id starts with 0x00, the Confluent magic."""
    data = encode({**SPEC_EVENT, "event_id": ""})
    assert data[0] == 0
    assert decode_error(data).code == "ConfluentFramed"


def test_short_value_starting_with_zero_is_not_confluent() -> None:
    # fewer than 5 bytes: not a Confluent header; read as bare Avro (empty event_id) and truncated
    assert decode_error(b"\x00\x00\x00").code == "InvalidAvro"


def test_errors_are_record_errors() -> None:
    err = decode_error(b"\x02")
    assert isinstance(err, RecordError)
    assert str(err) == f"{err.code}: {err.message}"


def test_encode_rejects_a_dict_not_matching_the_schema() -> None:
    with pytest.raises((ValueError, TypeError)):
        encode({**SPEC_EVENT, "status": "DONE"})
