"""Filter and transform: a decoded event → the ERP request body. Pure: no Kafka, no HTTP.

Rules (EVENT-CONTRACT.md "Mapping to the ERP body"; ERP-INTERFACE.md "Request body" and decisions
1-4):

* only ``status == APPROVED`` is pushed (:func:`is_pushed`);
* ``FlowCode``, ``InstanceId``, ``StartTime``, ``EndTime`` are the event's Longs, emitted as JSON
  integers digit for digit (never through a float or a date);
* ``StartTime`` is omitted when null, ``VariableInfos`` when the event has no variables;
* each variable's JSON text is parsed and checked against its ``Type``; numbers inside a value are
  re-emitted exactly as written (``1.10`` stays ``1.10``, a 30-digit integer stays 30 digits);
  ``null`` is sent as ``"Value": null``; a mismatch raises :class:`~consumer.errors.ValidationError`
  and the whole record is dead-lettered;
* ``NaN``/``Infinity`` are never emitted (they are not JSON and are rejected on input).

The body is serialized with orjson; keys come in the order of the spec's table.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import orjson

from .decode.schema import VARIABLE_TYPES as _SCHEMA_VARIABLE_TYPES
from .errors import ValidationError

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
VARIABLE_TYPES = frozenset(_SCHEMA_VARIABLE_TYPES)
"""The ``VariableType`` symbols of the v1 schema (:data:`consumer.decode.schema.VARIABLE_TYPES`), as a set."""
PUSHED_STATUS = "APPROVED"


def is_pushed(event: Mapping[str, Any]) -> bool:
    """Return True when the event must be pushed: its status is ``APPROVED`` (spec "推送条件")."""
    return event.get("status") == PUSHED_STATUS


_MAX_INT64_DIGITS = 19
"""Digits of 2**63: a literal with more digits is outside 64 bits whatever they are."""


def _parse_int(text: str) -> int | orjson.Fragment:
    """Parse a JSON integer literal; outside 64 bits keep the exact text (orjson emits ≤ 64 bits).

    Literals longer than 64 bits are never converted to ``int`` (Python refuses to convert more
    than 4,300 digits, and there is no need: the text is re-emitted as written).
    """
    if len(text) - text.startswith("-") > _MAX_INT64_DIGITS:
        return orjson.Fragment(text)
    value = int(text)
    if INT64_MIN <= value <= INT64_MAX and (value != 0 or text == "0"):
        return value
    return orjson.Fragment(text)  # "-0" and big integers: re-emitted byte for byte


def _parse_float(text: str) -> orjson.Fragment:
    """Keep a JSON number with a fraction or an exponent as its exact text (``1.10`` stays ``1.10``)."""
    return orjson.Fragment(text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _pairs_to_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate object key {dup!r}")
    return obj


_VALUE_DECODER = json.JSONDecoder(
    object_pairs_hook=_pairs_to_object,
    parse_int=_parse_int,
    parse_float=_parse_float,
    parse_constant=_reject_constant,
)


_JSON_WS = " \t\n\r"
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_SLOW = object()


def _scalar(text: str) -> Any:
    """Parse a scalar JSON text fast (most form fields are scalars); ``_SLOW`` for anything else.

    Same results as the full decoder: strings via orjson, numbers as in :func:`_parse_int` /
    :func:`_parse_float`.
    """
    t = text.strip(_JSON_WS)
    if not t:
        return _SLOW
    first = t[0]
    if first == '"':
        try:
            value = orjson.loads(t)
        except orjson.JSONDecodeError:
            return _SLOW  # the full decoder produces the precise error
        return value if isinstance(value, str) else _SLOW
    if first == "-" or "0" <= first <= "9":
        if _NUMBER.fullmatch(t) is None:
            return _SLOW
        return _parse_int(t) if _is_integer_text(t) else _parse_float(t)
    if t == "true":
        return True
    if t == "false":
        return False
    if t == "null":
        return None
    return _SLOW


def _is_integer_text(text: str) -> bool:
    return not any(c in text for c in ".eE")


def parse_variable_value(name: str, var_type: str, text: str) -> Any:
    """Parse one variable's JSON text and check it against its type (ERP-INTERFACE.md decision 4).

    Args:
        name: the variable's api key (for messages).
        var_type: one of :data:`VARIABLE_TYPES`.
        text: the Avro ``value`` string, JSON text.

    Returns:
        The value ready for orjson: dicts, lists, str, bool, None, ``int`` (within 64 bits) or
        ``orjson.Fragment`` holding a number's exact text.

    Raises:
        ValidationError: ``UnknownType``, ``InvalidJson``, ``InvalidString``, ``TypeMismatch`` or
            ``OutOfRange``.
    """
    # Fast paths for the common scalar fields; anything unusual (null, spaces inside, a wrong kind)
    # falls through to the full parser below, which gives the same value or the precise error.
    if var_type == "integer" or var_type == "long":
        t = text.strip(_JSON_WS)
        if _is_json_integer(t):
            number = _integer_in_range(name, var_type, t)
            return number if t != "-0" else orjson.Fragment(t)
    elif var_type == "string":
        t = text.strip(_JSON_WS)
        if t.startswith('"'):
            try:
                value = orjson.loads(t)
            except orjson.JSONDecodeError:
                value = None
            if isinstance(value, str):
                return value
    elif var_type == "boolean":
        t = text.strip(_JSON_WS)
        if t == "true" or t == "false":
            return t == "true"
    return _parse_checked(name, var_type, text)


def _integer_in_range(name: str, var_type: str, t: str) -> int:
    """The value of the integer literal ``t``; ``OutOfRange`` unless it fits ``var_type`` (32 or 64 bits).

    A literal of more than 19 digits is out of range without being converted (``int()`` refuses
    more than 4,300 digits).
    """
    low, high = (INT32_MIN, INT32_MAX) if var_type == "integer" else (INT64_MIN, INT64_MAX)
    digits = len(t) - t.startswith("-")
    number = int(t) if digits <= _MAX_INT64_DIGITS else None
    if number is None or not low <= number <= high:
        raise ValidationError("OutOfRange", f"variable {name!r}: {_abbreviated(t, f'{digits} digits')} is outside "
                                            f"the {var_type} range [{low}, {high}]")
    return number


def _abbreviated(text: str, size: str) -> str:
    """``text`` itself, or its first 20 and last 8 characters and ``size`` when it is longer than 40."""
    return text if len(text) <= 40 else f"{text[:20]}…{text[-8:]} ({size})"


def _is_json_integer(t: str) -> bool:
    """True for a JSON integer literal: an optional ``-``, then ``0`` or ASCII digits not led by ``0``."""
    digits = t[1:] if t.startswith("-") else t
    return digits.isascii() and digits.isdigit() and (digits[0] != "0" or digits == "0")


def _parse_checked(name: str, var_type: str, text: str) -> Any:
    """The full parser and type check behind :func:`parse_variable_value` (same contract)."""
    if var_type not in VARIABLE_TYPES:
        raise ValidationError("UnknownType", f"variable {name!r}: unknown Type {var_type!r}")
    try:
        value = _scalar(text)
        if value is _SLOW:
            value = _VALUE_DECODER.decode(text)
    except RecursionError as exc:
        raise ValidationError("InvalidJson", f"variable {name!r}: value nested too deeply") from exc
    except ValueError as exc:  # json.JSONDecodeError is a ValueError; so are our hooks' errors
        raise ValidationError("InvalidJson", f"variable {name!r}: value is not JSON: {exc}") from exc
    if value is None:
        return None  # decision 3: an empty form field is sent as "Value": null
    ok: bool
    if var_type == "object":
        ok = isinstance(value, dict)
    elif var_type == "objectList":
        ok = isinstance(value, list) and all(isinstance(v, dict) for v in value)
    elif var_type == "boolean":
        ok = isinstance(value, bool)
    elif var_type == "string":
        ok = isinstance(value, str)
    elif var_type == "jsonSchema":
        ok = isinstance(value, (dict, list))
    elif var_type in ("integer", "long"):
        stripped = text.strip()
        ok = isinstance(value, (int, orjson.Fragment)) and not isinstance(value, bool) and _is_integer_text(stripped)
        if ok:
            _integer_in_range(name, var_type, stripped)
    else:  # double
        ok = isinstance(value, (int, orjson.Fragment)) and not isinstance(value, bool)
        if ok and not math.isfinite(float(text.strip())):
            t = text.strip()
            raise ValidationError(
                "OutOfRange", f"variable {name!r}: {_abbreviated(t, f'{len(t)} characters')} is not a finite double")
    if not ok:
        raise ValidationError(
            "TypeMismatch", f"variable {name!r}: Type is {var_type} but Value is {_json_kind(value)}"
        )
    return value


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array" if all(isinstance(v, dict) for v in value) else "an array with non-object elements"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, orjson.Fragment)):
        return "a number"
    return type(value).__name__


def to_erp_body(event: Mapping[str, Any]) -> dict[str, Any]:
    """Map a decoded event to the ERP request body (EVENT-CONTRACT.md "Mapping to the ERP body").

    Args:
        event: a decoded v1 event (see :func:`consumer.decode.decode`).

    Returns:
        The body as a dict in the spec's key order, ready for :func:`encode_body`.

    Raises:
        ValidationError: a variable breaks decision 4, or a required field is missing.
    """
    try:
        user = event["start_user"]
        body: dict[str, Any] = {"FlowCode": event["flow_code"], "InstanceId": event["instance_id"]}
        if event.get("start_time") is not None:
            body["StartTime"] = event["start_time"]
        body["EndTime"] = event["end_time"]
        body["StartUser"] = {"SourceUid": user["source_uid"], "TenantUid": user["tenant_uid"]}
    except (KeyError, TypeError) as exc:
        raise ValidationError("MissingField", f"event lacks a required field: {exc}") from exc
    variables = event.get("variables") or {}
    if variables:
        body["VariableInfos"] = {
            name: {"Type": var["type"], "Value": parse_variable_value(name, var["type"], var["value"])}
            for name, var in variables.items()
        }
    return body


def encode_body(body: Mapping[str, Any]) -> bytes:
    r"""Serialize a body to compact UTF-8 JSON bytes, numbers exact.

    Raises:
        ValidationError: ``InvalidString`` (a lone surrogate from a ``\\ud800`` escape cannot be
            UTF-8) or ``InvalidJson`` (nesting deeper than orjson's 255 levels).
    """
    try:
        encoded = orjson.dumps(body)
    except (orjson.JSONEncodeError, TypeError) as exc:
        text = str(exc)
        code = "InvalidString" if "surrogates" in text or "UTF-8" in text else "InvalidJson"
        raise ValidationError(code, f"body cannot be encoded as JSON: {text}") from exc
    # orjson hands back its whole output buffer (4 KB from the allocator for a 300-byte body) and
    # every body waits in memory until its push: keep an exact-size copy (RSS, issue 14)
    return bytes(memoryview(encoded))


def erp_request(event: Mapping[str, Any]) -> tuple[bytes, str]:
    """Transform and encode in one step.

    Returns:
        ``(body_bytes, idempotency_key)``; the key is ``"<FlowCode>-<InstanceId>"`` (decision 5).

    Raises:
        ValidationError: see :func:`to_erp_body` and :func:`encode_body`.
    """
    body = to_erp_body(event)
    return encode_body(body), idempotency_key(event)


def idempotency_key(event: Mapping[str, Any]) -> str:
    """Return ``"<FlowCode>-<InstanceId>"``, the ``Idempotency-Key`` header (decision 5)."""
    return f"{event['flow_code']}-{event['instance_id']}"
