"""The schema-specialised v1 reader (consumer/decode/avro_v1.py) against fastavro, the reference.

Every test runs on the compiled module (when the install compiled it with mypyc) and on the
interpreted source, so both give the same answers.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.decode import READER_SCHEMA, SCHEMA_JSON, STATUSES, avro_v1, decode, decode_approved
from consumer.devstack.events import encode, spec_example_event
from consumer.errors import DecodeError
from tests.unit.test_fuzz_decode import encodable

SOURCE = Path(avro_v1.__file__).with_name("avro_v1.py")


def _interpreted() -> ModuleType:
    spec = importlib.util.spec_from_file_location("avro_v1_interpreted", SOURCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


INTERPRETED = _interpreted()
READERS = [pytest.param(INTERPRETED, id="interpreted")]
if avro_v1.COMPILED:
    READERS.insert(0, pytest.param(avro_v1, id="compiled"))

SPEC_EVENT = spec_example_event()
SPEC_BYTES = encode(SPEC_EVENT)
STATUS_POS = 1 + 36 + 6 + 9 + 9
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def fastavro_read(data: bytes) -> Any:
    body = io.BytesIO(data)
    event = fastavro.schemaless_reader(body, READER_SCHEMA)
    if body.tell() != len(data):
        raise ValueError("trailing bytes")
    return event


def zigzag(n: int) -> bytes:
    raw = (n << 1) ^ (n >> 63)
    out = bytearray()
    while raw >= 0x80:
        out.append((raw & 0x7F) | 0x80)
        raw >>= 7
    out.append(raw)
    return bytes(out)


def read(module: ModuleType, data: bytes, approved_only: bool = False) -> Any:
    """Read one whole record; bytes after its end are a refusal (decode's TrailingBytes), as in fastavro_read."""
    event, end = module.read_event(data, 0, approved_only)
    if end != len(data):
        raise ValueError(f"trailing bytes: record ends at {end} of {len(data)}")
    return event


def test_constants_are_the_schema_symbols() -> None:
    fields = {f["name"]: f for f in SCHEMA_JSON["fields"]}
    assert avro_v1.STATUSES == tuple(fields["status"]["type"]["symbols"]) == STATUSES
    variable_type = fields["variables"]["type"]["values"]["fields"][0]["type"]
    assert avro_v1.VARIABLE_TYPES == tuple(variable_type["symbols"])
    assert [f["name"] for f in SCHEMA_JSON["fields"]] == [
        "event_id", "event_time", "flow_code", "instance_id", "status", "start_time", "end_time", "start_user",
        "variables", "approvals"]


def test_compiled_module_is_built_from_the_current_source() -> None:
    if not avro_v1.COMPILED:
        pytest.skip("consumer.decode.avro_v1 runs interpreted (built without the mypyc hook)")
    built = Path(avro_v1.__file__).stat().st_mtime
    assert built >= SOURCE.stat().st_mtime, "consumer/decode/avro_v1.py changed after it was compiled: run bootstrap.sh"


@pytest.mark.parametrize("module", READERS)
def test_spec_example(module: ModuleType) -> None:
    assert read(module, SPEC_BYTES) == SPEC_EVENT == fastavro_read(SPEC_BYTES)
    assert list(read(module, SPEC_BYTES)) == list(SPEC_EVENT)  # same key order as fastavro


@pytest.mark.parametrize("module", READERS)
@pytest.mark.parametrize("status", ["REJECTED", "WITHDRAWN", "TERMINATED", "UNKNOWN"])
def test_approved_only_skips_without_building(module: ModuleType, status: str) -> None:
    data = encode({**SPEC_EVENT, "status": status})
    assert module.read_event(data, 0, True) == (status, len(data))
    assert module.read_event(data, 0, False) == ({**SPEC_EVENT, "status": status}, len(data))
    assert module.read_event(SPEC_BYTES, 0, True) == (SPEC_EVENT, len(SPEC_BYTES))


@pytest.mark.parametrize("module", READERS)
@pytest.mark.parametrize(
    "value",
    [0, 1, -1, 63, -64, 64, -65, 2**31 - 1, -(2**31), 2**31, 2**53 + 1, 1427810976874430514,
     INT64_MAX, INT64_MIN, INT64_MAX - 1, INT64_MIN + 1],
)
def test_every_long_field_keeps_64_bit_values(module: ModuleType, value: int) -> None:
    event = {**SPEC_EVENT, "event_time": value, "flow_code": value, "instance_id": value, "start_time": value,
             "end_time": value,
             "approvals": [{**SPEC_EVENT["approvals"][0], "acted_at": value}]}
    data = encode(event)
    assert read(module, data) == event == fastavro_read(data)


@pytest.mark.parametrize("module", READERS)
def test_ten_byte_varint_beyond_64_bits(module: ModuleType) -> None:
    # flow_code as 10 bytes whose last byte sets bit 64: fastavro silently drops it
    over = b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x03"
    data = SPEC_BYTES[:43] + over + SPEC_BYTES[52:]
    with pytest.raises(ValueError, match=r"^flow_code: number beyond 64 bits$"):
        module.read_event(data, 0, False)
    assert isinstance(fastavro_read(data)["flow_code"], int)  # the reference reads *something*
    err = _decode_error(data)
    assert (err.code, err.message) == (
        "InvalidAvro", "not a v1 WorkflowCompleted record: flow_code: number beyond 64 bits")


@pytest.mark.parametrize("module", READERS)
def test_eleven_byte_varint(module: ModuleType) -> None:
    data = SPEC_BYTES[:43] + b"\xff" * 10 + b"\x01" + SPEC_BYTES[52:]
    with pytest.raises(ValueError, match=r"^flow_code: number longer than 10 bytes$"):
        module.read_event(data, 0, False)


@pytest.mark.parametrize("module", READERS)
def test_ten_byte_varints_at_the_edges(module: ModuleType) -> None:
    assert zigzag(INT64_MIN) == b"\xff" * 9 + b"\x01"
    assert module.read_long(zigzag(INT64_MIN), 0, "x") == (INT64_MIN, 10)
    assert module.read_long(zigzag(INT64_MAX), 0, "x") == (INT64_MAX, 10)
    assert module.read_long(b"\x80" * 9 + b"\x00", 0, "x") == (0, 10)  # over-long but in range: valid Avro


@pytest.mark.parametrize("module", READERS)
@pytest.mark.parametrize(
    ("pos_of", "byte", "message"),
    [
        (STATUS_POS, 0x01, "status: index -1 outside [0, 5)"),
        (STATUS_POS, 0x09, "status: index -5 outside [0, 5)"),
        (STATUS_POS, 0x0A, "status: index 5 outside [0, 5)"),
        (STATUS_POS + 1, 0x01, "start_time: index -1 outside [0, 2)"),
        (STATUS_POS + 1, 0x04, "start_time: index 2 outside [0, 2)"),
    ],
)
def test_index_outside_the_schema(module: ModuleType, pos_of: int, byte: int, message: str) -> None:
    data = bytearray(SPEC_BYTES)
    data[pos_of] = byte
    with pytest.raises(ValueError) as info:
        module.read_event(bytes(data), 0, False)
    assert str(info.value) == message
    with pytest.raises(ValueError) as info:
        module.read_event(bytes(data), 0, True)
    assert str(info.value) == message


@pytest.mark.parametrize("module", READERS)
def test_corrupt_tail_of_a_skipped_record_is_an_error(module: ModuleType) -> None:
    valid = encode({**SPEC_EVENT, "status": "REJECTED"})
    data = bytearray(valid)
    pos = valid.index(b"LevelInfo") + len(b"LevelInfo")
    data[pos] = 0x01  # variables.type index -1
    with pytest.raises(ValueError, match=r"^variables\.type: index -1 outside \[0, 8\)$"):
        module.read_event(bytes(data), 0, True)
    with pytest.raises(ValueError, match=r"^approvals: truncated \(the value ends at byte 207\)$"):
        module.read_event(valid[:-1], 0, True)


@pytest.mark.parametrize("module", READERS)
def test_utf8_error_names_the_field(module: ModuleType) -> None:
    data = bytearray(SPEC_BYTES)
    pos = bytes(data).index(b"manager")
    data[pos] = 0xFF
    with pytest.raises(UnicodeDecodeError) as info:
        module.read_event(bytes(data), 0, False)
    assert info.value.reason == "approvals.node_id: invalid start byte"
    assert (info.value.start, info.value.end) == (pos, pos + 1)
    with pytest.raises(UnicodeDecodeError):
        module.read_event(bytes(data), 0, True)  # skipped records are checked too
    err = _decode_error(bytes(data))
    assert (err.code, err.message) == (
        "InvalidUtf8", "a string field is not valid UTF-8: approvals.node_id: invalid start byte")


@pytest.mark.parametrize("module", READERS)
def test_negative_block_counts_with_byte_sizes(module: ModuleType) -> None:
    """Writers may split maps and arrays into blocks with a negative count and a byte size."""
    variables = {"a": {"type": "integer", "value": "1"}, "b": {"type": "string", "value": '"x"'}}
    event = {**SPEC_EVENT, "variables": variables}
    plain = encode(event)
    head = plain[: plain.index(b"\x04\x02a")]  # up to the variables map (count 2, key "a")
    a = b"\x02a" + b"\x08" + b"\x021"
    b = b"\x02b" + b"\x06" + b'\x06"x"'
    tail = plain[len(head) + 1 + len(a) + len(b) + 1:]  # after the single block and its 0 end
    blocked = head + zigzag(-1) + zigzag(len(a)) + a + zigzag(-1) + zigzag(len(b)) + b + b"\x00" + tail
    assert read(module, blocked) == event == fastavro_read(blocked)


@pytest.mark.parametrize("module", READERS)
def test_every_prefix_is_an_error_in_both_modes(module: ModuleType) -> None:
    skipped = encode({**SPEC_EVENT, "status": "WITHDRAWN"})
    for data in (SPEC_BYTES, skipped):
        for cut in range(len(data)):
            for approved_only in (False, True):
                with pytest.raises(ValueError):
                    module.read_event(data[:cut], 0, approved_only)


def _decode_error(data: bytes) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode(data)
    return info.value


# --- differential: generated events and mutations -------------------------------------------

longs = st.integers(INT64_MIN, INT64_MAX)
texts = st.text(max_size=12)
approval = st.fixed_dictionaries({
    "node_id": texts,
    "approver": st.fixed_dictionaries({"source_uid": texts, "tenant_uid": texts}),
    "action": texts,
    "comment": st.none() | texts,
    "acted_at": longs,
})
generated = st.fixed_dictionaries({
    "event_id": st.text(min_size=1, max_size=40),
    "event_time": longs,
    "flow_code": longs,
    "instance_id": longs,
    "status": st.sampled_from(STATUSES),
    "start_time": st.none() | longs,
    "end_time": longs,
    "start_user": st.fixed_dictionaries({"source_uid": texts, "tenant_uid": texts}),
    "variables": st.dictionaries(
        texts, st.fixed_dictionaries({"type": st.sampled_from(avro_v1.VARIABLE_TYPES), "value": texts}), max_size=5),
    "approvals": st.lists(approval, max_size=4),
})


@SETTINGS
@given(generated)
def test_generated_events_read_as_fastavro_reads_them(event: dict[str, Any]) -> None:
    data = encodable(event)
    if data is None or data[0] == 0:
        return
    expected = fastavro_read(data)
    for module in (INTERPRETED, avro_v1):
        assert read(module, data) == expected == event
        assert read(module, data, approved_only=True) == (expected if event["status"] == "APPROVED"
                                                          else event["status"])


def _compare_with_fastavro(data: bytes) -> None:
    """Both readers accept with equal events, or ours refuses (fastavro may accept what we refuse)."""
    try:
        ours = read(INTERPRETED, data)
    except ValueError as exc:  # UnicodeDecodeError included
        ours = exc
    try:
        compiled = read(avro_v1, data)
    except ValueError as exc:
        compiled = exc
    if isinstance(ours, Exception):
        assert isinstance(compiled, Exception) and type(compiled) is type(ours) and str(compiled) == str(ours)
    else:
        assert compiled == ours
        assert fastavro_read(data) == ours  # whatever we accept, the reference reads the same
        try:
            skipped = read(INTERPRETED, data, approved_only=True)
        except ValueError as exc:
            raise AssertionError(f"approved_only refused a record the full read accepts: {exc}") from exc
        assert skipped == (ours if ours["status"] == "APPROVED" else ours["status"])
        return
    try:
        reference = fastavro_read(data)
    except Exception:  # noqa: BLE001 - any fastavro failure is an agreement
        return
    # fastavro accepted what we refused: only our stricter rules may explain it
    message = str(ours)
    assert "outside [0," in message or "64 bits" in message or "10 bytes" in message, (message, reference)


def test_a_mutation_that_ends_the_record_early_is_a_refusal_both_readers_share() -> None:
    """Found by hypothesis: an approvals count set to 0 ends the record 30 bytes early (trailing bytes)."""
    data = bytearray(SPEC_BYTES)
    data[177] = 0
    with pytest.raises(ValueError, match="trailing bytes: record ends at 178 of 208"):
        read(INTERPRETED, bytes(data))
    _compare_with_fastavro(bytes(data))


@SETTINGS
@given(pos=st.integers(0, len(SPEC_BYTES) - 1), byte=st.integers(0, 255))
def test_mutated_byte_agrees_with_fastavro(pos: int, byte: int) -> None:
    data = bytearray(SPEC_BYTES)
    data[pos] = byte
    if data[0] != 0:
        _compare_with_fastavro(bytes(data))


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, len(SPEC_BYTES) - 1), st.integers(0, 255)), min_size=1, max_size=6))
def test_many_mutations_agree_with_fastavro(edits: list[tuple[int, int]]) -> None:
    data = bytearray(SPEC_BYTES)
    for pos, byte in edits:
        data[pos] = byte
    if data[0] != 0:
        _compare_with_fastavro(bytes(data))


@SETTINGS
@given(st.binary(min_size=1, max_size=300))
def test_random_bytes_agree_with_fastavro(data: bytes) -> None:
    if data[0] != 0:
        _compare_with_fastavro(data)


def test_decode_approved_equals_decode_for_pushed_records() -> None:
    values = [encode({**SPEC_EVENT, "status": s, "instance_id": i}) for i, s in enumerate(STATUSES)]
    assert [decode_approved(v) for v in values] == [decode(values[0]), *STATUSES[1:]]
    assert json.dumps(decode(values[0])) == json.dumps({**SPEC_EVENT, "instance_id": 0})


def test_decode_takes_bytearray_and_memoryview() -> None:
    assert decode(bytearray(SPEC_BYTES)) == SPEC_EVENT
    assert decode(memoryview(SPEC_BYTES)) == SPEC_EVENT  # type: ignore[arg-type]
