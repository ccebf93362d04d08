"""Filter and transform (consumer/transform.py) against ERP-INTERFACE.md decisions 1-5.

Every expectation is an exact byte string or an exact error code: the ERP receives these bytes.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer import transform
from consumer.decode import SCHEMA_JSON, STATUSES, decode
from consumer.devstack.events import confluent_frame, encode, spec_example_event
from consumer.errors import RecordError, ValidationError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

SPEC_BODY = (
    b'{"FlowCode":1425737370216521773,"InstanceId":1427810976874430514,'
    b'"StartTime":1427811121259155459,"EndTime":1427811121259155459,'
    b'"StartUser":{"SourceUid":"1427811121259155459","TenantUid":"1427811121259155459"},'
    b'"VariableInfos":{"LevelInfo":{"Type":"object","Value":{"Name":"1425736144334716972","Days":3}}}}'
)
SPEC_KEY = "1425737370216521773-1427810976874430514"

# The example of ERP-INTERFACE.md, as printed there.
SPEC_EXAMPLE_TEXT = """
{
  "FlowCode": 1425737370216521773,
  "InstanceId": 1427810976874430514,
  "StartTime": 1427811121259155459,
  "EndTime": 1427811121259155459,
  "StartUser": {"SourceUid": "1427811121259155459", "TenantUid": "1427811121259155459"},
  "VariableInfos": {
    "LevelInfo": {"Type": "object", "Value": {"Name": "1425736144334716972", "Days": 3}}
  }
}
"""

VARIABLE_TYPES = ("object", "objectList", "boolean", "string", "integer", "long", "double", "jsonSchema")


def make_event(variables: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A small APPROVED event; ``fields`` override top-level fields."""
    event: dict[str, Any] = {
        "event_id": "e-1",
        "event_time": 0,
        "flow_code": 1,
        "instance_id": 2,
        "status": "APPROVED",
        "start_time": 3,
        "end_time": 4,
        "start_user": {"source_uid": "s", "tenant_uid": "t"},
        "variables": variables or {},
        "approvals": [],
    }
    event.update(fields)
    return event


VAR_PREFIX = b'{"FlowCode":1,"InstanceId":2,"StartTime":3,"EndTime":4,"StartUser":{"SourceUid":"s","TenantUid":"t"},'


def emitted_value(var_type: str, text: str) -> bytes:
    """The exact bytes emitted as ``Value`` for one variable ``v`` of ``var_type`` with JSON ``text``."""
    body, key = transform.erp_request(make_event({"v": {"type": var_type, "value": text}}))
    assert key == "1-2"
    head = VAR_PREFIX + b'"VariableInfos":{"v":{"Type":"' + var_type.encode() + b'","Value":'
    assert body.startswith(head), body
    assert body.endswith(b"}}}"), body
    return body[len(head):-3]


def rejected_code(var_type: str, text: str) -> str:
    """The ValidationError code of a single-variable event (fails the test if it is accepted)."""
    with pytest.raises(ValidationError) as info:
        transform.erp_request(make_event({"v": {"type": var_type, "value": text}}))
    assert info.value.error_class == "validation"
    # the message names the variable, or (encoder failures) says the body cannot be encoded
    assert info.value.message.startswith(("variable 'v': ", "body cannot be encoded as JSON: "))
    return info.value.code


# --- the specification's example ------------------------------------------------------------


def test_spec_example_exact_bytes_and_key() -> None:
    body, key = transform.erp_request(spec_example_event())
    assert body == SPEC_BODY
    assert key == SPEC_KEY


def test_spec_example_parses_to_the_spec_document_with_exact_ints() -> None:
    body, _ = transform.erp_request(spec_example_event())
    parsed = json.loads(body)
    expected = json.loads(SPEC_EXAMPLE_TEXT)
    assert parsed == expected
    assert parsed["FlowCode"] == 1425737370216521773
    assert type(parsed["FlowCode"]) is int
    assert parsed["VariableInfos"]["LevelInfo"]["Value"]["Days"] == 3
    assert list(parsed) == ["FlowCode", "InstanceId", "StartTime", "EndTime", "StartUser", "VariableInfos"]
    assert list(parsed["StartUser"]) == ["SourceUid", "TenantUid"]


def test_spec_example_through_avro() -> None:
    decoded = decode(encode(spec_example_event()))
    assert transform.erp_request(decoded) == (SPEC_BODY, SPEC_KEY)


def test_spec_example_through_confluent_framing() -> None:
    framed = confluent_frame(42, encode(spec_example_event()))
    decoded = decode(framed, writer_schema_lookup=lambda _id: SCHEMA_JSON)
    assert transform.erp_request(decoded) == (SPEC_BODY, SPEC_KEY)


def test_to_erp_body_key_order() -> None:
    body = transform.to_erp_body(spec_example_event())
    assert list(body) == ["FlowCode", "InstanceId", "StartTime", "EndTime", "StartUser", "VariableInfos"]


# --- is_pushed -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "pushed"),
    [("APPROVED", True), ("REJECTED", False), ("WITHDRAWN", False), ("TERMINATED", False),
     ("UNKNOWN", False), ("approved", False), ("", False), (None, False)],
)
def test_is_pushed_only_approved(status: str | None, pushed: bool) -> None:
    assert transform.is_pushed(make_event(status=status)) is pushed


def test_is_pushed_missing_status() -> None:
    event = make_event()
    del event["status"]
    assert transform.is_pushed(event) is False


def test_is_pushed_covers_every_schema_status() -> None:
    assert {s: transform.is_pushed(make_event(status=s)) for s in STATUSES} == {
        "APPROVED": True, "REJECTED": False, "WITHDRAWN": False, "TERMINATED": False, "UNKNOWN": False,
    }


# --- 64-bit Longs, digit for digit ---------------------------------------------------------

BOUNDARIES = [INT64_MIN, -1, 0, 2**53 - 1, 2**53, 2**53 + 1, INT64_MAX]


def expected_body(fc: int, iid: int, start: int | None, end: int) -> bytes:
    start_part = f'"StartTime":{start},' if start is not None else ""
    return (
        f'{{"FlowCode":{fc},"InstanceId":{iid},{start_part}"EndTime":{end},'
        '"StartUser":{"SourceUid":"s","TenantUid":"t"}}'
    ).encode()


@pytest.mark.parametrize("value", BOUNDARIES)
@pytest.mark.parametrize("field", ["flow_code", "instance_id", "start_time", "end_time"])
def test_long_boundaries_pass_digit_for_digit(field: str, value: int) -> None:
    event = make_event(**{field: value})
    args = {"flow_code": 1, "instance_id": 2, "start_time": 3, "end_time": 4, field: value}
    want = expected_body(args["flow_code"], args["instance_id"], args["start_time"], args["end_time"])
    body, key = transform.erp_request(event)
    assert body == want
    assert str(value).encode() in body
    assert key == f"{args['flow_code']}-{args['instance_id']}"
    # and through Avro: the long never becomes a float or a datetime
    assert transform.erp_request(decode(encode(event))) == (want, key)


longs = st.integers(INT64_MIN, INT64_MAX)


@settings(max_examples=150, deadline=None)
@given(fc=longs, iid=longs, start=st.none() | longs, end=longs)
def test_longs_exact_property(fc: int, iid: int, start: int | None, end: int) -> None:
    event = make_event(flow_code=fc, instance_id=iid, start_time=start, end_time=end)
    want = expected_body(fc, iid, start, end)
    body, key = transform.erp_request(decode(encode(event)))
    assert body == want
    assert key == f"{fc}-{iid}"
    parsed = json.loads(body)
    assert (parsed["FlowCode"], parsed["InstanceId"], parsed["EndTime"]) == (fc, iid, end)
    assert parsed.get("StartTime") == start


def test_spec_example_idempotency_key_helper() -> None:
    assert transform.idempotency_key(spec_example_event()) == SPEC_KEY
    assert transform.idempotency_key(make_event(flow_code=INT64_MIN, instance_id=-1)) == (
        "-9223372036854775808--1"
    )


# --- decision 2: optional fields omitted --------------------------------------------------


def test_start_time_none_is_omitted() -> None:
    body, _ = transform.erp_request(make_event(start_time=None))
    assert body == b'{"FlowCode":1,"InstanceId":2,"EndTime":4,"StartUser":{"SourceUid":"s","TenantUid":"t"}}'
    assert b"StartTime" not in body
    assert b"null" not in body


def test_start_time_absent_key_is_omitted() -> None:
    event = make_event()
    del event["start_time"]
    body, _ = transform.erp_request(event)
    assert body == b'{"FlowCode":1,"InstanceId":2,"EndTime":4,"StartUser":{"SourceUid":"s","TenantUid":"t"}}'


@pytest.mark.parametrize("variables", [{}, None])
def test_no_variables_omits_variable_infos(variables: dict[str, Any] | None) -> None:
    event = make_event()
    event["variables"] = variables
    body, _ = transform.erp_request(event)
    assert body == (
        b'{"FlowCode":1,"InstanceId":2,"StartTime":3,"EndTime":4,"StartUser":{"SourceUid":"s","TenantUid":"t"}}'
    )


def test_empty_variables_through_avro() -> None:
    body, _ = transform.erp_request(decode(encode(make_event(start_time=None))))
    assert body == b'{"FlowCode":1,"InstanceId":2,"EndTime":4,"StartUser":{"SourceUid":"s","TenantUid":"t"}}'


def test_missing_required_field_is_validation_error() -> None:
    event = make_event()
    del event["start_user"]
    with pytest.raises(ValidationError) as info:
        transform.erp_request(event)
    assert info.value.code == "MissingField"


def test_approvals_event_id_event_time_never_sent() -> None:
    body, _ = transform.erp_request(spec_example_event())
    for word in (b"approv", b"manager", b"u-7", b"event", b"3f1c2a9e", b"1732886"):
        assert word not in body


def test_variable_order_and_unicode() -> None:
    variables = {
        "z": {"type": "string", "value": '"\\u4e2d\\u6587"'},
        "a": {"type": "integer", "value": "7"},
        "m": {"type": "string", "value": '"请假"'},
    }
    body, _ = transform.erp_request(make_event(variables))
    assert body == VAR_PREFIX + (
        '"VariableInfos":{"z":{"Type":"string","Value":"中文"},"a":{"Type":"integer","Value":7},'
        '"m":{"Type":"string","Value":"请假"}}}'
    ).encode()


# --- decision 4: Value matches Type --------------------------------------------------------


@pytest.mark.parametrize(
    ("var_type", "text", "out"),
    [
        ("integer", str(INT32_MIN), str(INT32_MIN).encode()),
        ("integer", str(INT32_MAX), str(INT32_MAX).encode()),
        ("integer", "0", b"0"),
        ("integer", " 42\n", b"42"),
        ("long", str(INT64_MIN), str(INT64_MIN).encode()),
        ("long", str(INT64_MAX), str(INT64_MAX).encode()),
        ("long", str(INT32_MAX + 1), str(INT32_MAX + 1).encode()),
        ("double", "1.10", b"1.10"),
        ("double", "3", b"3"),
        ("double", "-0.0", b"-0.0"),
        ("double", "1e308", b"1e308"),
        ("double", "-1.7976931348623157e308", b"-1.7976931348623157e308"),
        ("double", "1E+2", b"1E+2"),
        ("double", "0.1000000000000000000001", b"0.1000000000000000000001"),
        ("boolean", "true", b"true"),
        ("boolean", "false", b"false"),
        ("string", '"abc"', b'"abc"'),
        ("string", '""', b'""'),
        ("string", '"a\\"b\\\\c\\n"', b'"a\\"b\\\\c\\n"'),
        ("object", "{}", b"{}"),
        ("object", '{"Days": 3, "Name": "x"}', b'{"Days":3,"Name":"x"}'),
        ("objectList", "[]", b"[]"),
        ("objectList", "[{}]", b"[{}]"),
        ("objectList", '[{"a": 1}, {"b": [1, 2]}]', b'[{"a":1},{"b":[1,2]}]'),
        ("jsonSchema", "{}", b"{}"),
        ("jsonSchema", "[]", b"[]"),
        ("jsonSchema", '{"type": "object", "properties": {"a": {"type": "integer"}}}',
         b'{"type":"object","properties":{"a":{"type":"integer"}}}'),
    ],
)
def test_valid_values(var_type: str, text: str, out: bytes) -> None:
    assert emitted_value(var_type, text) == out


@pytest.mark.parametrize(
    ("var_type", "text", "code"),
    [
        ("integer", str(INT32_MIN - 1), "OutOfRange"),
        ("integer", str(INT32_MAX + 1), "OutOfRange"),
        ("long", str(INT64_MIN - 1), "OutOfRange"),
        ("long", str(INT64_MAX + 1), "OutOfRange"),
        ("long", "1" + "0" * 30, "OutOfRange"),
        ("double", "1e309", "OutOfRange"),
        ("double", "-1e309", "OutOfRange"),
        ("double", "NaN", "InvalidJson"),
        ("double", "Infinity", "InvalidJson"),
        ("double", "-Infinity", "InvalidJson"),
        ("double", "true", "TypeMismatch"),
        ("double", '"1.5"', "TypeMismatch"),
        ("boolean", "0", "TypeMismatch"),
        ("boolean", "1", "TypeMismatch"),
        ("boolean", '"true"', "TypeMismatch"),
        ("string", "3", "TypeMismatch"),
        ("string", "{}", "TypeMismatch"),
        ("object", "[]", "TypeMismatch"),
        ("object", '"x"', "TypeMismatch"),
        ("objectList", "[{}, 1]", "TypeMismatch"),
        ("objectList", "[[]]", "TypeMismatch"),
        ("objectList", "{}", "TypeMismatch"),
        ("jsonSchema", '"x"', "TypeMismatch"),
        ("jsonSchema", "1", "TypeMismatch"),
        ("jsonSchema", "true", "TypeMismatch"),
    ],
)
def test_invalid_values(var_type: str, text: str, code: str) -> None:
    assert rejected_code(var_type, text) == code


@pytest.mark.parametrize("var_type", ["integer", "long"])
@pytest.mark.parametrize("text", ["3.0", "1e2", "1E2", "true", '"3"', "[3]", "{}"])
def test_integer_types_reject_non_integers(var_type: str, text: str) -> None:
    assert rejected_code(var_type, text) == "TypeMismatch"


@pytest.mark.parametrize("var_type", VARIABLE_TYPES)
@pytest.mark.parametrize("text", ["null", " null\n"])
def test_null_for_every_type_is_sent_as_null(var_type: str, text: str) -> None:
    assert emitted_value(var_type, text) == b"null"


def test_unknown_type() -> None:
    assert rejected_code("date", '"2024-01-01"') == "UnknownType"
    assert rejected_code("Object", "{}") == "UnknownType"


@pytest.mark.parametrize("var_type", VARIABLE_TYPES)
@pytest.mark.parametrize("text", ["{", "", "abc", "1 2", "[1,]", "{'a': 1}", "\ufeff{}", "01"])
def test_not_json(var_type: str, text: str) -> None:
    assert rejected_code(var_type, text) == "InvalidJson"


@pytest.mark.parametrize(
    ("var_type", "text"),
    [("object", '{"a": 1, "a": 2}'), ("object", '{"x": {"b": 1, "b": 1}}'),
     ("objectList", '[{"k": 1}, {"k": 2, "k": 3}]'), ("jsonSchema", '[{"a": null, "a": null}]')],
)
def test_duplicate_keys_are_invalid_json(var_type: str, text: str) -> None:
    assert rejected_code(var_type, text) == "InvalidJson"


@pytest.mark.parametrize(("var_type", "text"), [("string", '"\\ud800"'), ("object", '{"a": "x\\udc00y"}'),
                                                 ("object", '{"\\ud83d": 1}')])
def test_lone_surrogate_is_invalid_string(var_type: str, text: str) -> None:
    with pytest.raises(ValidationError) as info:
        transform.erp_request(make_event({"v": {"type": var_type, "value": text}}))
    assert info.value.code == "InvalidString"


def test_paired_surrogates_are_fine() -> None:
    assert emitted_value("string", '"\\ud83d\\ude00"') == '"😀"'.encode()


def test_nested_numbers_keep_their_text() -> None:
    text = (
        '{"a": 1.10, "b": -0, "c": 123456789012345678901234567890, "d": 1E+2, "e": -0.0, '
        '"f": [1.0e-7, -123456789012345678901234567890, 18446744073709551616], "g": 0, '
        '"h": -9223372036854775809, "i": 9223372036854775807}'
    )
    assert emitted_value("object", text) == (
        b'{"a":1.10,"b":-0,"c":123456789012345678901234567890,"d":1E+2,"e":-0.0,'
        b'"f":[1.0e-7,-123456789012345678901234567890,18446744073709551616],"g":0,'
        b'"h":-9223372036854775809,"i":9223372036854775807}'
    )


def test_nested_numbers_in_object_list_and_json_schema() -> None:
    assert emitted_value("objectList", '[{"x": 2.50}, {"y": 1e-3}]') == b'[{"x":2.50},{"y":1e-3}]'
    assert emitted_value("jsonSchema", "[1.000, -0, 0.5e1]") == b"[1.000,-0,0.5e1]"


def test_nesting_depth() -> None:
    assert emitted_value("jsonSchema", "[" * 100 + "]" * 100) == b"[" * 100 + b"]" * 100
    assert rejected_code("jsonSchema", "[" * 300 + "]" * 300) == "InvalidJson"
    assert rejected_code("jsonSchema", "[" * 10_000 + "]" * 10_000) == "InvalidJson"
    assert rejected_code("object", '{"a":' * 10_000 + "1" + "}" * 10_000) == "InvalidJson"


def test_one_invalid_variable_rejects_the_record() -> None:
    variables = {
        "good1": {"type": "integer", "value": "1"},
        "bad": {"type": "integer", "value": '"one"'},
        "good2": {"type": "string", "value": '"x"'},
    }
    with pytest.raises(ValidationError) as info:
        transform.erp_request(make_event(variables))
    assert info.value.code == "TypeMismatch"
    assert info.value.message.startswith("variable 'bad': ")
    assert isinstance(info.value, RecordError)


def test_one_invalid_variable_rejects_the_record_through_avro() -> None:
    variables = {"ok": {"type": "object", "value": "{}"}, "bad": {"type": "double", "value": "1e999"}}
    decoded = decode(encode(make_event(variables)))
    with pytest.raises(ValidationError) as info:
        transform.erp_request(decoded)
    assert info.value.code == "OutOfRange"


# --- properties ----------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.integers(INT32_MIN - 10, INT32_MAX + 10))
def test_integer_range_property(n: int) -> None:
    if INT32_MIN <= n <= INT32_MAX:
        assert emitted_value("integer", str(n)) == str(n).encode()
    else:
        assert rejected_code("integer", str(n)) == "OutOfRange"


@settings(max_examples=100, deadline=None)
@given(st.integers(INT64_MIN - 2**70, INT64_MAX + 2**70))
def test_long_range_property(n: int) -> None:
    if INT64_MIN <= n <= INT64_MAX:
        assert emitted_value("long", str(n)) == str(n).encode()
    else:
        assert rejected_code("long", str(n)) == "OutOfRange"


@settings(max_examples=100, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_double_text_kept_property(x: float) -> None:
    text = json.dumps(x)
    assert emitted_value("double", text) == text.encode()


def _reject_constant(name: str) -> Any:
    raise AssertionError(f"{name} in the output")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(value=json_values, var_type=st.sampled_from(["object", "objectList", "jsonSchema"]))
def test_random_json_round_trips_or_is_rejected(value: Any, var_type: str) -> None:
    wrapped: Any = {"k": value} if var_type == "object" else [{"k": value}] if var_type == "objectList" else [value]
    original = json.dumps(wrapped)
    try:
        body, _ = transform.erp_request(make_event({"v": {"type": var_type, "value": original}}))
    except ValidationError as exc:
        assert exc.code in {"InvalidJson", "InvalidString"}
        return
    parsed = json.loads(body, parse_constant=_reject_constant)
    assert parsed["VariableInfos"]["v"] == {"Type": var_type, "Value": json.loads(original)}


@settings(max_examples=60, deadline=None)
@given(value=json_values)
def test_random_json_never_emits_non_json(value: Any) -> None:
    original = json.dumps([value], ensure_ascii=False)
    try:
        body, _ = transform.erp_request(make_event({"v": {"type": "jsonSchema", "value": original}}))
    except ValidationError as exc:
        assert exc.code in {"InvalidJson", "InvalidString"}
        return
    assert json.loads(body, parse_constant=_reject_constant)["VariableInfos"]["v"]["Value"] == json.loads(original)


# --- the scalar fast paths give what the full parser gives -----------------------------------

_fast_texts = (
    st.integers(-(2**70), 2**70).map(str)
    | st.sampled_from(["-0", "00", "01", "-", "", " 7 ", "\t-3\n", "1.0", "1e3", "+1", "٣", "１", "0x1", "null",
                       "true", "false", " true", "True", '"x"', ' "a\\u00e9" ', '"\\ud800"', '"unterminated',
                       '"a" "b"', "2147483647", "2147483648", "-2147483648", "-2147483649",
                       "9223372036854775807", "9223372036854775808", "-9223372036854775808", "9" * 5000,
                       "-" + "1" * 4400, "1" * 19, "1" * 20, "-" + "9" * 19])
    | st.text(max_size=12)
    | st.text(max_size=12).map(json.dumps)
)


def _outcome(fn: Any, *args: str) -> tuple[str, str]:
    try:
        value = fn(*args)
    except ValidationError as exc:
        return ("error", f"{exc.code}: {exc.message}")
    try:
        return ("value", orjson.dumps(value).decode())
    except TypeError:  # a lone surrogate: encode_body refuses it later, the same way for both
        return ("unencodable", repr(value))


@settings(max_examples=400, deadline=None)
@given(var_type=st.sampled_from(sorted(transform.VARIABLE_TYPES)), text=_fast_texts)
def test_fast_paths_agree_with_the_full_parser(var_type: str, text: str) -> None:
    fast = _outcome(transform.parse_variable_value, "v", var_type, text)
    assert fast == _outcome(transform._parse_checked, "v", var_type, text)


BIG = "9" * 5000  # beyond Python's 4,300-digit limit of int(str)


@pytest.mark.parametrize(("var_type", "text", "message"), [
    ("long", BIG, f"variable 'X': {'9' * 20}…{'9' * 8} (5000 digits) is outside the long range "
                  f"[{INT64_MIN}, {INT64_MAX}]"),
    ("integer", "-" + BIG, f"variable 'X': -{'9' * 19}…{'9' * 8} (5000 digits) is outside the integer range "
                           f"[{INT32_MIN}, {INT32_MAX}]"),
    ("long", " " + BIG + " ", f"variable 'X': {'9' * 20}…{'9' * 8} (5000 digits) is outside the long range "
                              f"[{INT64_MIN}, {INT64_MAX}]"),
    ("double", BIG, f"variable 'X': {'9' * 20}…{'9' * 8} (5000 characters) is not a finite double"),
])
def test_integers_beyond_python_digit_limit_are_out_of_range(var_type: str, text: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        transform.parse_variable_value("X", var_type, text)
    assert (info.value.code, info.value.message) == ("OutOfRange", message)


def test_huge_integer_inside_an_object_is_sent_digit_for_digit() -> None:
    event = spec_example_event()
    event["variables"] = {"X": {"type": "object", "value": '{"a": ' + BIG + ', "b": -' + BIG + "}"}}
    body, _ = transform.erp_request(event)
    assert body.endswith(b'"VariableInfos":{"X":{"Type":"object","Value":{"a":' + BIG.encode()
                         + b',"b":-' + BIG.encode() + b"}}}}")


def test_an_encoded_body_holds_no_more_memory_than_its_bytes() -> None:
    """orjson returns its whole 4 KB output buffer for a 300-byte body; every approved record keeps its
    body until its push (ERP_SYNC_MAX_BUFFERED_RECORDS of them): 20 MB at 5,000 (issue 14, RSS)."""
    import tracemalloc

    body = transform.to_erp_body(spec_example_event())
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [transform.encode_body(body) for _ in range(1000)]
        per_body = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert kept[0] == orjson.dumps(body)
    assert len(kept[0]) == 305
    assert per_body < len(kept[0]) + 100, f"{per_body:.0f} bytes held per {len(kept[0])}-byte body"
