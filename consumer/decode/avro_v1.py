"""Schema-specialised reader of bare v1 ``WorkflowCompleted`` values: the consumer's hot path.

fastavro's generic reader walks the parsed schema for every value and reads through a file
object; on the benchmark's 300-byte events that costs about 35 µs per record on the 2-core
machine, above the 20 µs budget of decode + filter + transform + encode (issue "Fast", Targets).
This module reads the one schema the contract defines (``schemas/workflow_completed.v1.avsc``)
field by field from the bytes. It is plain typed Python; the wheel build compiles it with mypyc
(``[tool.hatch.build.targets.wheel.hooks.mypyc]`` in pyproject.toml) and the interpreted source
gives the same results where no C compiler is present (:data:`COMPILED` tells which runs).

fastavro stays the reference: ``tests/test_avro_v1.py`` checks that both readers give equal
events for generated records and fail together on corrupt ones. Where they differ, this reader
is the stricter one, on purpose:

* an enum or union index outside the schema (negative included; fastavro wraps ``symbols[-5]``
  around to ``APPROVED``) is an error;
* a varint longer than 10 bytes or beyond 64 bits is an error (fastavro drops the high bits).

Everything here raises ``ValueError`` naming the field (``UnicodeDecodeError``, a subclass, for
a string that is not UTF-8); :func:`consumer.decode.decode` turns both into dead-letter codes.
Field names, order and value shapes are exactly fastavro's: a dict per record, ``None`` for a
null branch, ``int`` for every long, the enum's symbol as ``str``.
"""

from __future__ import annotations

from typing import Any, Final

STATUSES: Final = ("APPROVED", "REJECTED", "WITHDRAWN", "TERMINATED", "UNKNOWN")
"""The ``WorkflowStatus`` symbols in schema order (index 0 is the one pushed)."""
VARIABLE_TYPES: Final = ("object", "objectList", "boolean", "string", "integer", "long", "double", "jsonSchema")
"""The ``VariableType`` symbols in schema order."""

COMPILED: Final = not __file__.endswith(".py")
"""True when this module runs as a mypyc-compiled extension, False when interpreted."""


def read_long(data: bytes, pos: int, field: str) -> tuple[int, int]:
    """Read one zig-zag varint (an Avro ``int`` or ``long``) at ``pos``.

    Returns:
        ``(value, position after it)``.

    Raises:
        ValueError: the bytes end inside the number, or it is longer than 10 bytes / 64 bits.
    """
    try:
        b = data[pos]
        if b < 0x80:
            return (b >> 1) ^ -(b & 1), pos + 1
        raw = b & 0x7F
        shift = 7
        while True:
            pos += 1
            b = data[pos]
            raw |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
            if shift >= 70:
                raise ValueError(f"{field}: number longer than 10 bytes")
    except IndexError:
        raise ValueError(f"{field}: truncated (the value ends at byte {len(data)})") from None
    if raw >> 64:
        raise ValueError(f"{field}: number beyond 64 bits")
    return (raw >> 1) ^ -(raw & 1), pos + 1


def read_string(data: bytes, pos: int, field: str) -> tuple[str, int]:
    """Read one Avro ``string`` (a length, then UTF-8 bytes) at ``pos``.

    Returns:
        ``(text, position after it)``.

    Raises:
        ValueError: negative length, or fewer bytes left than the length says.
        UnicodeDecodeError: the bytes are not UTF-8 (its reason names the field).
    """
    length, pos = read_long(data, pos, field)
    end = pos + length
    if length < 0:
        raise ValueError(f"{field}: negative length {length}")
    if end > len(data):
        raise ValueError(f"{field}: truncated (needs {length} bytes at byte {pos}, {len(data) - pos} left)")
    try:
        return data[pos:end].decode("utf-8"), end
    except UnicodeDecodeError as exc:
        raise UnicodeDecodeError("utf-8", data, pos + exc.start, pos + exc.end, f"{field}: {exc.reason}") from None


def read_index(data: bytes, pos: int, size: int, field: str) -> tuple[int, int]:
    """Read an enum or union index and check it is in ``[0, size)``.

    Raises:
        ValueError: truncated, or the index is outside the schema.
    """
    index, pos = read_long(data, pos, field)
    if index < 0 or index >= size:
        raise ValueError(f"{field}: index {index} outside [0, {size})")
    return index, pos


def _block_count(data: bytes, pos: int, field: str) -> tuple[int, int]:
    """Read the item count of an array or map block (a negative count is followed by a byte size)."""
    count, pos = read_long(data, pos, field)
    if count < 0:
        count = -count
        _size, pos = read_long(data, pos, field)
    return count, pos


def read_event(data: bytes, start: int, approved_only: bool) -> tuple[dict[str, Any] | str, int]:
    """Read one v1 ``WorkflowCompleted`` record from ``data[start:]``.

    Args:
        data: the value bytes.
        start: where the record starts (0 for a bare value).
        approved_only: when the status is not ``APPROVED``, check the rest of the record without
            building it and return the status symbol for the event (the pipeline skips such records,
            counted by status).

    Returns:
        ``(event or status symbol, position after the record)``; the caller checks for trailing bytes.

    Raises:
        ValueError: the bytes are not a v1 record (the message names the field).
        UnicodeDecodeError: a string is not UTF-8.
    """
    event_id, pos = read_string(data, start, "event_id")
    event_time, pos = read_long(data, pos, "event_time")
    flow_code, pos = read_long(data, pos, "flow_code")
    instance_id, pos = read_long(data, pos, "instance_id")
    status, pos = read_index(data, pos, 5, "status")
    if approved_only and status != 0:
        return STATUSES[status], _skip_after_status(data, pos)
    branch, pos = read_index(data, pos, 2, "start_time")
    start_time: int | None = None
    if branch == 1:
        start_time, pos = read_long(data, pos, "start_time")
    end_time, pos = read_long(data, pos, "end_time")
    source_uid, pos = read_string(data, pos, "start_user.source_uid")
    tenant_uid, pos = read_string(data, pos, "start_user.tenant_uid")
    variables: dict[str, Any] = {}
    count, pos = _block_count(data, pos, "variables")
    while count:
        for _ in range(count):
            name, pos = read_string(data, pos, "variables key")
            var_type, pos = read_index(data, pos, 8, "variables.type")
            value, pos = read_string(data, pos, "variables.value")
            variables[name] = {"type": VARIABLE_TYPES[var_type], "value": value}
        count, pos = _block_count(data, pos, "variables")
    approvals: list[Any] = []
    count, pos = _block_count(data, pos, "approvals")
    while count:
        for _ in range(count):
            node_id, pos = read_string(data, pos, "approvals.node_id")
            approver_source, pos = read_string(data, pos, "approvals.approver.source_uid")
            approver_tenant, pos = read_string(data, pos, "approvals.approver.tenant_uid")
            action, pos = read_string(data, pos, "approvals.action")
            branch, pos = read_index(data, pos, 2, "approvals.comment")
            comment: str | None = None
            if branch == 1:
                comment, pos = read_string(data, pos, "approvals.comment")
            acted_at, pos = read_long(data, pos, "approvals.acted_at")
            approvals.append({
                "node_id": node_id,
                "approver": {"source_uid": approver_source, "tenant_uid": approver_tenant},
                "action": action,
                "comment": comment,
                "acted_at": acted_at,
            })
        count, pos = _block_count(data, pos, "approvals")
    return {
        "event_id": event_id,
        "event_time": event_time,
        "flow_code": flow_code,
        "instance_id": instance_id,
        "status": STATUSES[status],
        "start_time": start_time,
        "end_time": end_time,
        "start_user": {"source_uid": source_uid, "tenant_uid": tenant_uid},
        "variables": variables,
        "approvals": approvals,
    }, pos


def _skip_after_status(data: bytes, pos: int) -> int:
    """Check the fields after ``status`` as :func:`read_event` would, building nothing kept.

    A skipped record is held to the same rules as a pushed one (a corrupt record is dead-lettered
    whatever its status), only faster. Returns the position after the record.
    """
    branch, pos = read_index(data, pos, 2, "start_time")
    if branch == 1:
        pos = read_long(data, pos, "start_time")[1]
    pos = read_long(data, pos, "end_time")[1]
    pos = read_string(data, pos, "start_user.source_uid")[1]
    pos = read_string(data, pos, "start_user.tenant_uid")[1]
    count, pos = _block_count(data, pos, "variables")
    while count:
        for _ in range(count):
            pos = read_string(data, pos, "variables key")[1]
            pos = read_index(data, pos, 8, "variables.type")[1]
            pos = read_string(data, pos, "variables.value")[1]
        count, pos = _block_count(data, pos, "variables")
    count, pos = _block_count(data, pos, "approvals")
    while count:
        for _ in range(count):
            pos = read_string(data, pos, "approvals.node_id")[1]
            pos = read_string(data, pos, "approvals.approver.source_uid")[1]
            pos = read_string(data, pos, "approvals.approver.tenant_uid")[1]
            pos = read_string(data, pos, "approvals.action")[1]
            branch, pos = read_index(data, pos, 2, "approvals.comment")
            if branch == 1:
                pos = read_string(data, pos, "approvals.comment")[1]
            pos = read_long(data, pos, "approvals.acted_at")[1]
        count, pos = _block_count(data, pos, "approvals")
    return pos
