"""Fuzz of decode → filter → transform → encode: a body, None, or a RecordError; nothing else."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer import transform
from consumer.decode import STATUSES, decode
from consumer.devstack.events import encode, spec_example_event
from consumer.errors import DecodeError, RecordError, ValidationError

SPEC_BYTES = encode(spec_example_event())
VARIABLE_TYPES = ("object", "objectList", "boolean", "string", "integer", "long", "double", "jsonSchema")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_EVENTS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def process(value: bytes | None) -> bytes | None:
    ev = decode(value, max_bytes=2_000_000)
    if not transform.is_pushed(ev):
        return None
    return transform.erp_request(ev)[0]


def check(value: bytes | None) -> bytes | None | RecordError:
    """Run the pipeline; fail on anything but a parseable body, None, or a well-formed RecordError."""
    try:
        body = process(value)
    except RecordError as exc:
        assert isinstance(exc, DecodeError | ValidationError)
        assert exc.code and isinstance(exc.code, str)
        assert exc.message and isinstance(exc.message, str)
        assert exc.error_class in ("decode", "validation")
        return exc
    if body is not None:
        assert isinstance(body, bytes)
        json.loads(body)
    return body


def event_with(**fields: Any) -> dict[str, Any]:
    event = spec_example_event()
    event.update(fields)
    return event


# --- random and mutated bytes ---------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    check(data)


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_confluent_framed(data: bytes) -> None:
    try:
        body = process(b"\x00\x00\x00\x00\x01" + data)
    except DecodeError as exc:
        assert exc.code == "ConfluentFramed"
    else:
        raise AssertionError(f"decoded without a registry: {body!r}")


@FUZZ
@given(pos=st.integers(0, len(SPEC_BYTES) - 1), xor=st.integers(1, 255))
def test_flipped_byte(pos: int, xor: int) -> None:
    data = bytearray(SPEC_BYTES)
    data[pos] ^= xor
    check(bytes(data))


@FUZZ
@given(pos=st.integers(0, len(SPEC_BYTES)), extra=st.binary(min_size=1, max_size=16))
def test_inserted_bytes(pos: int, extra: bytes) -> None:
    check(SPEC_BYTES[:pos] + extra + SPEC_BYTES[pos:])


@FUZZ
@given(start=st.integers(0, len(SPEC_BYTES) - 1), length=st.integers(1, 40))
def test_deleted_bytes(start: int, length: int) -> None:
    check(SPEC_BYTES[:start] + SPEC_BYTES[start + length:])


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(SPEC_BYTES) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_many_mutations(edits: list[tuple[int, int]]) -> None:
    data = bytearray(SPEC_BYTES)
    for pos, byte in edits:
        data[pos] = byte
    check(bytes(data))


# --- generated events -----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=15,
)
value_texts = (
    json_values.map(json.dumps)
    | json_values.map(lambda v: json.dumps(v, ensure_ascii=False))
    | st.text(max_size=40)
    | st.sampled_from(["NaN", "Infinity", "-Infinity", "1e309", "-0", "1.10", "2147483648", "9223372036854775808",
                       '"\\ud800"', '{"a":1,"a":2}', "[{}]", "[{},1]", "null", "", "{", "1 2", "true"])
)
longs = st.integers(-(2**63), 2**63 - 1)


@st.composite
def generated_events(draw: st.DrawFn) -> dict[str, Any]:
    variables = draw(st.dictionaries(
        st.text(max_size=10),
        st.fixed_dictionaries({"type": st.sampled_from(VARIABLE_TYPES), "value": value_texts}),
        max_size=4,
    ))
    return event_with(
        # non-empty: a bare record starting with 0x00 (empty event_id) is read as Confluent-framed
        event_id=draw(st.text(min_size=1, max_size=20)),
        flow_code=draw(longs), instance_id=draw(longs), start_time=draw(st.none() | longs), end_time=draw(longs),
        status=draw(st.sampled_from(STATUSES)),
        start_user={"source_uid": draw(st.text(max_size=10)), "tenant_uid": draw(st.text(max_size=10))},
        variables=variables,
    )


def encodable(event: dict[str, Any]) -> bytes | None:
    """The event's Avro bytes, or None when it cannot be written (also used by test_avro_v1)."""
    try:
        return encode(event)
    except (UnicodeEncodeError, ValueError):  # a lone surrogate in an Avro string cannot be written
        return None


@FUZZ_EVENTS
@given(generated_events())
def test_generated_events(event: dict[str, Any]) -> None:
    data = encodable(event)
    if data is None:
        return
    result = check(data)
    if event["status"] != "APPROVED":
        assert result is None
    elif isinstance(result, bytes):
        parsed = json.loads(result)
        assert parsed["FlowCode"] == event["flow_code"]
        assert parsed["InstanceId"] == event["instance_id"]
        assert parsed["EndTime"] == event["end_time"]
        assert set(parsed.get("VariableInfos", {})) == set(event["variables"])
    else:
        assert isinstance(result, ValidationError)


@FUZZ_EVENTS
@given(generated_events(), st.integers(0, 10_000), st.integers(1, 255))
def test_generated_events_mutated(event: dict[str, Any], pos: int, xor: int) -> None:
    data = encodable(event)
    if data is None:
        return
    mutated = bytearray(data)
    mutated[pos % len(mutated)] ^= xor
    check(bytes(mutated))


# --- specific hostile records ---------------------------------------------------------------


def test_huge_string_variable() -> None:
    big = "x" * 1_000_000
    data = encode(event_with(variables={"big": {"type": "string", "value": json.dumps(big)}}))
    body = check(data)
    assert isinstance(body, bytes)
    assert json.loads(body)["VariableInfos"]["big"]["Value"] == big


def test_huge_strings_everywhere() -> None:
    big = "y" * 1_000_000
    data = encode(event_with(event_id=big, start_user={"source_uid": big[:400_000], "tenant_uid": "t"}))
    body = check(data)
    assert isinstance(body, bytes)
    assert json.loads(body)["StartUser"]["SourceUid"] == big[:400_000]


def test_value_over_the_limit() -> None:
    data = encode(event_with(event_id="z" * 2_000_001))
    result = check(data)
    assert isinstance(result, DecodeError) and result.code == "ValueTooLarge"


@pytest.mark.parametrize("var_type", ["object", "objectList", "jsonSchema"])
@pytest.mark.parametrize("depth", [10_000, 300])
def test_deep_nesting(var_type: str, depth: int) -> None:
    nested_object = '{"a":' * depth + "1" + "}" * depth
    text = {"object": nested_object, "objectList": "[" + nested_object + "]",
            "jsonSchema": "[" * depth + "]" * depth}[var_type]
    data = encode(event_with(variables={"deep": {"type": var_type, "value": text}}))
    result = check(data)
    assert isinstance(result, ValidationError) and result.code == "InvalidJson"


def test_deep_nesting_within_limits_passes() -> None:
    text = '{"a":' * 50 + "[1.5]" + "}" * 50
    body = check(encode(event_with(variables={"ok": {"type": "object", "value": text}})))
    assert isinstance(body, bytes)
    assert body.endswith(b'"Value":' + text.replace(" ", "").encode() + b"}}}")


@pytest.mark.parametrize("bad", [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf"])
def test_invalid_utf8_in_strings(bad: bytes) -> None:
    marker = "Q" * len(bad)
    for field_event in (event_with(event_id="e" + marker), event_with(
            variables={"v": {"type": "string", "value": json.dumps(marker)}}),
            event_with(start_user={"source_uid": marker, "tenant_uid": "t"})):
        data = encode(field_event)
        pos = data.index(marker.encode())
        result = check(data[:pos] + bad + data[pos + len(bad):])
        assert isinstance(result, DecodeError) and result.code == "InvalidUtf8"


@pytest.mark.parametrize("value", [None, b""])
def test_missing_value(value: bytes | None) -> None:
    result = check(value)
    assert isinstance(result, DecodeError) and result.code == "MissingValue"


def test_not_approved_is_skipped() -> None:
    event = event_with(status="REJECTED", variables={"v": {"type": "integer", "value": "x"}})
    assert check(encode(event)) is None
