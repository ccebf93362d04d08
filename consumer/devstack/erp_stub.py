"""A real HTTP server playing the customer's ERP, for the demo, integration tests and benchmarks.

The stub speaks the contract of ERP-INTERFACE.md: any ``POST`` to a path outside ``/_stub/`` is a
push. By default it answers like a real ERP, in the Tencent Cloud API 3.0 style (HTTP 200, verdict in
the body): it validates the body and answers ``{"Response": {"RequestId": …, "Data": {}}}`` or
``{"Response": {"RequestId": …, "Error": {"Code": "MissingParameter.FlowCode", "Message": …}}}``.
Validation, first failure wins (:func:`validate_body`): ``FlowCode``, ``InstanceId``, ``StartTime``
(optional) and ``EndTime`` are JSON integers in the Long range (``null`` counts as the wrong type:
decision 2 says omit, never null); ``StartUser`` is an object with a non-empty string ``SourceUid``
and a string ``TenantUid``; ``VariableInfos``, when present, maps names to ``{Type, Value}``.

Tests drive every other path through a small JSON control API under ``/_stub/``:

==============================  ===========================================================
``POST /_stub/behaviour``       replace the behaviour (latency, script, rules, default, …)
``GET /_stub/behaviour``        the current behaviour (remaining script, rule counters)
``GET /_stub/requests?since=N`` the recorded pushes with ``seq > N`` (optional ``limit``)
``DELETE /_stub/requests``      forget the records and the seen idempotency keys
``GET /_stub/stats``            counters: received, by_code, distinct_keys, concurrency, latency
``DELETE /_stub/stats``         reset the counters only
``POST /_stub/reset``           behaviour, records and counters back to the start state
``GET /_stub/health``           200
``POST /_stub/oauth2``          require OAuth2 bearer tokens: ``{"clients": {id: secret}, "expires_in": s}``
                                (``{"clients": null}`` turns it off)
``POST /_stub/oauth2/revoke``   forget every token issued (the next push with one gets 401)
``GET /_stub/oauth2``           token endpoint counters: issued, refused, valid tokens, 401 pushes
==============================  ===========================================================

OAuth2 client credentials (RFC 6749 §4.4): ``POST /oauth/token`` is the token endpoint. With
clients registered, it answers ``grant_type=client_credentials`` from a registered client
(``Authorization: Basic`` or ``client_id``/``client_secret`` form fields) with
``{"access_token", "token_type": "Bearer", "expires_in"}`` (and ``scope`` when asked), else 401
``invalid_client`` / 400 ``unsupported_grant_type``; and every push must carry a valid unexpired
``Authorization: Bearer <token>``, else it is answered 401 ``invalid_token`` (recorded, code
``HTTP_401``) before any rule or script is consulted.

Behaviour (``POST /_stub/behaviour``; an omitted field takes its start value)::

    {"latency_ms": 0, "default": null, "script": [], "rules": [], "duplicate_code": null,
     "close_idle_after_s": null, "capacity": null}

A push is answered by, in order: the first rule that matches (``instance_id`` and/or
``idempotency_key``; a rule with neither matches every push) and has ``times`` left; else the next
``script`` item (FIFO, one per push); else, if ``duplicate_code`` is set and the push's
``Idempotency-Key`` was already answered with success, the error ``duplicate_code`` (message
``"duplicate"``); else ``default``; else the validating answer.

A ResponseSpec is ``{"status": 200, "code": …, "message": …, "request_id": …, "body": "<raw>",
"headers": {…}, "latency_ms": N, "close": true, "hang_s": N, "accept": true}``: with ``code`` the
body is the Tencent error shape; with ``body`` the text is sent as is; with neither (or
``"accept": true``) the validating answer is sent, at ``status``. ``close`` closes the TCP connection
without a response; ``hang_s`` sleeps that many seconds first (client time-outs).

Each record carries a ``code`` labelled the way the consumer's verdict module labels answers
(``OK``, the Error code, ``InvalidResponse`` for a 2xx body outside the contract, ``HTTP_<status>``
for a non-2xx status, ``CLOSED`` for a connection closed without an answer). The answer is decided
when the request arrives, so a record exists while its answer is still delayed.

**Capacity.** ``capacity`` (a positive integer, or null for unlimited: the start value unless
``--capacity`` says otherwise) is how many pushes the ERP serves at once. A push beyond it waits in
one FIFO queue for a slot, then is served: its answer comes after the queue wait plus its latency
(``latency_ms``, a spec's ``latency_ms`` and ``hang_s``), so an ERP at its limit answers more slowly
instead of faster. A slot is held from the end of the wait to the answer; a new ``capacity`` applies
to the queue at once. Every push's server-side latency (arrival → answer, queue wait included) is
recorded (``served_ms`` and ``queued_ms`` in its record) and summarised in ``GET /_stub/stats``:
``latency_ms`` and ``queue_ms`` (``count``, ``mean``, ``p50``, ``p90``, ``p99``, ``max``;
nearest-rank percentiles over the pushes answered since the last counter reset), ``max_serving``
(peak pushes served at once, ≤ capacity), ``max_queue`` (peak queue length), ``current_queue``,
``capacity``. ``max_concurrency`` counts pushes in the handler, queued ones included.

``seq`` starts at 1 and keeps counting across ``DELETE /_stub/requests`` (so ``since`` cursors stay
valid); only ``POST /_stub/reset`` restarts it.

Everything runs on one event loop with no per-request disk I/O; records live in memory (about 0.7 KB
each for a 300-byte body: 1,000,000 records ≈ 0.7 GB), bounded (oldest dropped first). For
benchmarks, run the stub in its own process (``python -m consumer.devstack.erp_stub --port 8080``) so that it
does not share a GIL with the consumer.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import decimal
import itertools
import json
import logging
import math
import secrets
import signal
import threading
import time
import uuid
from array import array
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import unquote_plus, urlsplit

import httpx
import orjson
from aiohttp import web

from ..cli import float_at_least, int_in
from ..delivery.dispatch import new_event_loop
from ..erp.verdict import verdict
from ..transform import INT64_MAX, INT64_MIN, VARIABLE_TYPES

logger = logging.getLogger(__name__)

TOKEN_PATH = "/oauth/token"
"""The OAuth2 token endpoint (client credentials); see the module docstring."""
PUSH_PATH = "/erp/push"
"""The path of :attr:`ErpStub.url`; any path outside ``/_stub/`` is accepted as a push."""
CONTROL_PREFIX = "/_stub/"
DEFAULT_MAX_RECORDS = 1_000_000
_LONG_FIELDS = ("FlowCode", "InstanceId", "StartTime", "EndTime")
_JSON = "application/json"


class BehaviourError(ValueError):
    """A behaviour or ResponseSpec sent to ``POST /_stub/behaviour`` is invalid (answered with 400)."""


# --------------------------------------------------------------------------------------------------
# Behaviour


@dataclass(frozen=True, slots=True)
class ResponseSpec:
    """How to answer one push (see the module docstring).

    Attributes:
        status: HTTP status (200-599).
        code: the Tencent ``Response.Error.Code`` to answer with; None for no error.
        message: the error's ``Message`` (only with ``code``).
        request_id: ``Response.RequestId``; None for a fresh uuid4 per answer.
        body: raw response text that replaces the JSON body completely (HTML, garbage, ``""``).
        headers: extra response headers (``{"Retry-After": "2"}``); may override Content-Type.
        latency_ms: delay before answering, in ms; None for the behaviour's ``latency_ms``.
        close: close the TCP connection without sending any response.
        hang_s: extra delay before answering, in s (to provoke client time-outs).
        accept: the validating answer (success when the body is valid); excludes code and body.
    """

    status: int = 200
    code: str | None = None
    message: str | None = None
    request_id: str | None = None
    body: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    latency_ms: float | None = None
    close: bool = False
    hang_s: float = 0.0
    accept: bool = False

    @classmethod
    def parse(cls, raw: Any, where: str) -> ResponseSpec:
        """Build a spec from its JSON form.

        Args:
            raw: the decoded JSON object.
            where: where it came from, for error messages (``"script[2]"``).

        Raises:
            BehaviourError: unknown keys or wrong types.
        """
        if not isinstance(raw, dict):
            raise BehaviourError(f"{where}: a ResponseSpec must be a JSON object, got {raw!r}")
        unknown = set(raw) - _SPEC_KEYS
        if unknown:
            raise BehaviourError(f"{where}: unknown ResponseSpec keys {sorted(unknown)}")
        status = raw.get("status", 200)
        if type(status) is not int or not 200 <= status <= 599:
            raise BehaviourError(f"{where}.status must be an integer in [200, 599], got {status!r}")
        code = _opt_str(raw, "code", where)
        body = _opt_str(raw, "body", where)
        accept = bool(raw.get("accept", False))
        if accept and (code is not None or body is not None):
            raise BehaviourError(f"{where}: 'accept' cannot be combined with 'code' or 'body'")
        headers = raw.get("headers") or {}
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str | int | float) for k, v in headers.items()
        ):
            raise BehaviourError(f"{where}.headers must be an object of name → string")
        return cls(
            status=status,
            code=code,
            message=_opt_str(raw, "message", where),
            request_id=_opt_str(raw, "request_id", where),
            body=body,
            headers=tuple((k, str(v)) for k, v in headers.items()),
            latency_ms=_opt_number(raw, "latency_ms", where),
            close=bool(raw.get("close", False)),
            hang_s=_opt_number(raw, "hang_s", where) or 0.0,
            accept=accept,
        )

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form (only the keys that differ from the defaults)."""
        out: dict[str, Any] = {}
        for name, default in _SPEC_DEFAULTS.items():
            value = getattr(self, name)
            if value != default:
                out[name] = dict(value) if name == "headers" else value
        return out


_SPEC_DEFAULTS = {f: getattr(ResponseSpec(), f) for f in ResponseSpec.__slots__}
_SPEC_KEYS = frozenset(_SPEC_DEFAULTS)


@dataclass(slots=True)
class Rule:
    """A rule: answer pushes matching ``instance_id`` / ``idempotency_key`` with ``response``.

    Attributes:
        response: the answer.
        instance_id: match the body's ``InstanceId`` (exact int); None matches any.
        idempotency_key: match the ``Idempotency-Key`` header; None matches any.
        times: how many more pushes the rule answers; None for unlimited.
    """

    response: ResponseSpec
    instance_id: int | None = None
    idempotency_key: str | None = None
    times: int | None = None

    def matches(self, instance_id: int | None, key: str | None) -> bool:
        """Return True when the rule applies to a push and has uses left."""
        if self.times is not None and self.times <= 0:
            return False
        if self.instance_id is not None and self.instance_id != instance_id:
            return False
        return self.idempotency_key is None or self.idempotency_key == key


@dataclass(slots=True)
class Behaviour:
    """The stub's current behaviour (see the module docstring).

    Attributes:
        latency_ms: delay before every answer, in ms.
        default: the answer when no rule or script item applies; None for the validating answer.
        script: answers consumed one per push, first in first out.
        rules: answers by instance id / idempotency key, checked before the script.
        duplicate_code: when set, a push whose key was already answered with success gets this code.
        close_idle_after_s: when set, keep-alive connections idle longer than this (s) are closed
            silently (no ``Connection: close``), like a server or load balancer dropping pooled
            connections.
        capacity: pushes served at once; further pushes wait in a FIFO queue; None for unlimited.
    """

    latency_ms: float = 0.0
    default: ResponseSpec | None = None
    script: deque[ResponseSpec] = field(default_factory=deque)
    rules: list[Rule] = field(default_factory=list)
    duplicate_code: str | None = None
    close_idle_after_s: float | None = None
    capacity: int | None = None

    @classmethod
    def parse(cls, raw: Any, base_latency_ms: float = 0.0, base_capacity: int | None = None) -> Behaviour:
        """Build a behaviour from the JSON body of ``POST /_stub/behaviour``.

        Args:
            raw: the decoded JSON object.
            base_latency_ms: ``latency_ms`` when omitted, in ms.
            base_capacity: ``capacity`` when omitted (None: unlimited).

        Raises:
            BehaviourError: unknown keys or wrong types.
        """
        if not isinstance(raw, dict):
            raise BehaviourError("the behaviour must be a JSON object")
        unknown = set(raw) - _BEHAVIOUR_KEYS
        if unknown:
            raise BehaviourError(
                f"unknown behaviour keys {sorted(unknown)}; known: {sorted(_BEHAVIOUR_KEYS)}"
            )
        latency = _opt_number(raw, "latency_ms", "behaviour")
        default = raw.get("default")
        script = raw.get("script") or []
        rules = raw.get("rules") or []
        if not isinstance(script, list):
            raise BehaviourError("behaviour.script must be a list of ResponseSpec")
        if not isinstance(rules, list):
            raise BehaviourError("behaviour.rules must be a list of rules")
        parsed_rules = []
        for i, rule in enumerate(rules):
            where = f"rules[{i}]"
            if not isinstance(rule, dict) or "response" not in rule:
                raise BehaviourError(f"{where}: a rule is an object with a 'response'")
            unknown = set(rule) - {"instance_id", "idempotency_key", "times", "response"}
            if unknown:
                raise BehaviourError(f"{where}: unknown rule keys {sorted(unknown)}")
            instance_id, times = rule.get("instance_id"), rule.get("times")
            if instance_id is not None and type(instance_id) is not int:
                raise BehaviourError(f"{where}.instance_id must be an integer")
            if times is not None and (type(times) is not int or times < 0):
                raise BehaviourError(f"{where}.times must be a non-negative integer")
            parsed_rules.append(
                Rule(
                    response=ResponseSpec.parse(rule["response"], f"{where}.response"),
                    instance_id=instance_id,
                    idempotency_key=_opt_str(rule, "idempotency_key", where),
                    times=times,
                )
            )
        idle = _opt_number(raw, "close_idle_after_s", "behaviour")
        if idle is not None and idle <= 0:
            raise BehaviourError("behaviour.close_idle_after_s must be > 0 (or null)")
        capacity = raw.get("capacity", base_capacity)
        if capacity is not None and (type(capacity) is not int or capacity < 1):
            raise BehaviourError(f"behaviour.capacity must be a positive integer (or null), got {capacity!r}")
        return cls(
            latency_ms=base_latency_ms if latency is None else latency,
            default=None if default is None else ResponseSpec.parse(default, "default"),
            script=deque(ResponseSpec.parse(s, f"script[{i}]") for i, s in enumerate(script)),
            rules=parsed_rules,
            duplicate_code=_opt_str(raw, "duplicate_code", "behaviour"),
            close_idle_after_s=idle,
            capacity=capacity,
        )

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form, with the script still to come and the rules' remaining ``times``."""
        return {
            "latency_ms": self.latency_ms,
            "default": None if self.default is None else self.default.to_json(),
            "script": [s.to_json() for s in self.script],
            "rules": [
                {"instance_id": r.instance_id, "idempotency_key": r.idempotency_key, "times": r.times,
                 "response": r.response.to_json()}
                for r in self.rules
            ],
            "duplicate_code": self.duplicate_code,
            "close_idle_after_s": self.close_idle_after_s,
            "capacity": self.capacity,
        }


_BEHAVIOUR_KEYS = frozenset(
    {"latency_ms", "default", "script", "rules", "duplicate_code", "close_idle_after_s", "capacity"}
)


def _opt_str(raw: Mapping[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise BehaviourError(f"{where}.{key} must be a string, got {value!r}")
    return value


def _opt_number(raw: Mapping[str, Any], key: str, where: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise BehaviourError(f"{where}.{key} must be a non-negative number, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------------------------------
# Validation of a push body, like a real ERP


def validate_body(body: bytes) -> tuple[str, str, int | None]:
    """Validate a push body against the ERP contract, as the stub's ERP does.

    Args:
        body: the raw request body.

    Returns:
        ``(code, message, instance_id)``: code ``"OK"`` (message ``""``) when valid, else
        ``InvalidParameter``, ``MissingParameter.<Field>`` or ``InvalidParameter.<Field>``
        (nested fields dotted: ``InvalidParameter.StartUser.SourceUid``); ``instance_id`` is the
        body's ``InstanceId`` as an exact int when it is a JSON integer, else None.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson also refuses valid JSON whose numbers overflow a double (a 400-digit integer)
        try:
            doc = _loads_exact(body)
        except ValueError:
            return "InvalidParameter", "body is not a JSON object", None
    if not isinstance(doc, dict):
        return "InvalidParameter", "body is not a JSON object", None
    if any(type(doc.get(name)) is float for name in _LONG_FIELDS):
        # orjson turns an integer beyond 64 bits into a float: re-read with exact integers.
        with contextlib.suppress(ValueError):
            doc = _loads_exact(body)
    raw_id = doc.get("InstanceId")
    code, message = _check_fields(doc)
    return code, message, raw_id if type(raw_id) is int else None


def _check_fields(doc: Mapping[str, Any]) -> tuple[str, str]:
    """Check a parsed body's fields; return ``("OK", "")`` or the first error's code and message."""
    for name in _LONG_FIELDS:
        if name not in doc:
            if name == "StartTime":
                continue
            return f"MissingParameter.{name}", f"the required parameter {name} is missing"
        value = doc[name]
        if type(value) is not int:
            return f"InvalidParameter.{name}", f"{name} must be an integer (Long), got {_kind(value)}"
        if not INT64_MIN <= value <= INT64_MAX:
            return f"InvalidParameter.{name}", f"{name} {value} is outside the Long range"
    if "StartUser" not in doc:
        return "MissingParameter.StartUser", "the required parameter StartUser is missing"
    user = doc["StartUser"]
    if not isinstance(user, dict):
        return "InvalidParameter.StartUser", f"StartUser must be an object, got {_kind(user)}"
    for name in ("SourceUid", "TenantUid"):
        field_name = f"StartUser.{name}"
        if name not in user:
            return f"MissingParameter.{field_name}", f"the required parameter {field_name} is missing"
        value = user[name]
        if not isinstance(value, str):
            return f"InvalidParameter.{field_name}", f"{field_name} must be a string, got {_kind(value)}"
        if name == "SourceUid" and value == "":
            return f"InvalidParameter.{field_name}", f"{field_name} must not be empty"
    if "VariableInfos" in doc:
        variables = doc["VariableInfos"]
        if not isinstance(variables, dict):
            return "InvalidParameter.VariableInfos", f"VariableInfos is {_kind(variables)}, not an object"
        for key, var in variables.items():
            if not isinstance(var, dict) or var.get("Type") not in VARIABLE_TYPES or "Value" not in var:
                return (f"InvalidParameter.VariableInfos.{key}",
                        f"VariableInfos.{key} must be an object with a known Type and a Value")
    return "OK", ""


def _loads_exact(body: bytes) -> Any:
    """The stdlib parser with every integer exact (beyond 4,300 digits as a ``Decimal``)."""
    return json.loads(body, parse_constant=_reject_constant,
                      parse_int=lambda text: int(text) if len(text) <= 4000 else decimal.Decimal(text))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction or exponent"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _label_raw(status: int, text: str) -> str:
    """The label of a raw (scripted) answer: the code the consumer's verdict gives it (OK, an Error code…)."""
    return verdict(status, {}, text.encode("utf-8"), retry_codes=(), duplicate_codes=()).code


# --------------------------------------------------------------------------------------------------
# Records and state


class _Record:
    """One received push; headers and body are kept raw and rendered on demand."""

    __slots__ = ("seq", "time", "path", "raw_headers", "body", "idempotency_key", "instance_id",
                 "peer_port", "status", "code", "request_id", "queued_ms", "served_ms")

    def __init__(self, seq: int, when: float, path: str, raw_headers: bytes, body: bytes,
                 idempotency_key: str | None, instance_id: int | None, peer_port: int | None,
                 status: int | None, code: str, request_id: str | None) -> None:
        self.seq = seq
        self.time = when
        self.path = path
        self.raw_headers = raw_headers  # "name:value" lines joined by CRLF: one object, ~half the memory
        self.body = body
        self.idempotency_key = idempotency_key
        self.instance_id = instance_id
        self.peer_port = peer_port
        self.status = status
        self.code = code
        self.request_id = request_id
        self.queued_ms: float | None = None  # set when a slot is granted
        self.served_ms: float | None = None  # arrival → answer, set when answered

    def to_json(self) -> dict[str, Any]:
        headers: dict[str, str] = {}
        for line in self.raw_headers.split(b"\r\n") if self.raw_headers else ():
            raw_name, _, raw_value = line.partition(b":")
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("utf-8", "replace")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        instance_id: Any = self.instance_id
        if instance_id is not None and not INT64_MIN <= instance_id < 2**64:
            instance_id = orjson.Fragment(str(instance_id))  # orjson stops at 64 bits; keep it exact
        return {
            "seq": self.seq,
            "time": self.time,
            "path": self.path,
            "headers": headers,
            "body": self.body.decode("utf-8", "replace"),
            "idempotency_key": self.idempotency_key,
            "instance_id": instance_id,
            "peer_port": self.peer_port,
            "status": self.status,
            "code": self.code,
            "request_id": self.request_id,
            "queued_ms": self.queued_ms,
            "served_ms": self.served_ms,
        }


class _Connection:
    """Per-connection bookkeeping for ``close_idle_after_s`` and ``peer_port``."""

    __slots__ = ("in_flight", "last_active", "peer_port")

    def __init__(self, peer_port: int | None, now: float) -> None:
        self.in_flight = 0
        self.last_active = now
        self.peer_port = peer_port


class _Gate:
    """The ERP's capacity: at most ``capacity`` pushes served at once, the others wait first in, first out."""

    def __init__(self) -> None:
        self.serving = 0
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.max_serving = 0
        self.max_queue = 0

    async def acquire(self, capacity: int | None) -> None:
        """Wait for a slot (at once when one is free and nobody is queued)."""
        if not self.waiters and (capacity is None or self.serving < capacity):
            self._take()
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        self.max_queue = max(self.max_queue, len(self.waiters))
        try:
            await waiter  # the slot is taken for us by admit()
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(capacity)  # granted, then cancelled: hand the slot on
            else:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
            raise

    def _take(self) -> None:
        self.serving += 1
        self.max_serving = max(self.max_serving, self.serving)

    def release(self, capacity: int | None) -> None:
        """Free a slot and admit the next waiters."""
        self.serving -= 1
        self.admit(capacity)

    def admit(self, capacity: int | None) -> None:
        """Grant free slots to the oldest waiters (also after ``capacity`` changed)."""
        while self.waiters and (capacity is None or self.serving < capacity):
            waiter = self.waiters.popleft()
            if waiter.done():
                continue
            self._take()
            waiter.set_result(None)

    def reset_peaks(self) -> None:
        self.max_serving = self.serving
        self.max_queue = len(self.waiters)


def _summary(values: array[float]) -> dict[str, Any]:
    """count, mean, nearest-rank p50/p90/p99 and max of a series of milliseconds (None when empty)."""
    if not values:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)
    n = len(ordered)

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * n) - 1)], 3)

    return {"count": n, "mean": round(sum(ordered) / n, 3), "p50": rank(0.50), "p90": rank(0.90),
            "p99": rank(0.99), "max": round(ordered[-1], 3)}


class _StubState:
    """All mutable state of one stub; only ever touched from the stub's event loop thread."""

    def __init__(self, max_records: int, latency_ms: float, capacity: int | None = None) -> None:
        self.max_records = max_records
        self.base_latency_ms = latency_ms
        self.base_capacity = capacity
        self.behaviour = Behaviour(latency_ms=latency_ms, capacity=capacity)
        self.records: deque[_Record] = deque(maxlen=max_records)
        self.connections: dict[asyncio.BaseTransport, _Connection] = {}
        self.gate = _Gate()
        self.seq = 0
        self.in_flight = 0
        self.oauth2: _OAuth2 | None = None
        self.reset_stats()
        self.clear_records()

    def set_behaviour(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.gate.admit(behaviour.capacity)

    def reset_stats(self) -> None:
        self.received = 0
        self.by_code: dict[str, int] = {}
        self.max_concurrency = self.in_flight
        self.served_ms: array[float] = array("d")  # 8 bytes per answered push
        self.queued_ms: array[float] = array("d")
        self.gate.reset_peaks()

    def clear_records(self) -> None:
        self.records.clear()
        self.seen_keys: set[str] = set()
        self.success_keys: set[str] = set()
        self.dropped = 0

    def stats(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "by_code": dict(self.by_code),
            "distinct_keys": len(self.seen_keys),
            "max_concurrency": self.max_concurrency,
            "current_concurrency": self.in_flight,
            "recorded": len(self.records),
            "dropped": self.dropped,
            "last_seq": self.seq,
            "max_records": self.max_records,
            "capacity": self.behaviour.capacity,
            "max_serving": self.gate.max_serving,
            "current_serving": self.gate.serving,
            "max_queue": self.gate.max_queue,
            "current_queue": len(self.gate.waiters),
            "latency_ms": _summary(self.served_ms),
            "queue_ms": _summary(self.queued_ms),
        }

    def records_since(self, since: int, limit: int | None) -> list[_Record]:
        if not self.records:
            return []
        start = max(0, since - self.records[0].seq + 1)
        stop = None if limit is None else start + limit
        return list(itertools.islice(self.records, start, stop))

    def decide(self, instance_id: int | None, key: str | None) -> ResponseSpec | None:
        behaviour = self.behaviour
        for rule in behaviour.rules:
            if rule.matches(instance_id, key):
                if rule.times is not None:
                    rule.times -= 1
                return rule.response
        if behaviour.script:
            return behaviour.script.popleft()
        if behaviour.duplicate_code is not None and key is not None and key in self.success_keys:
            return ResponseSpec(code=behaviour.duplicate_code, message="duplicate")
        return behaviour.default


@dataclass
class _OAuth2:
    """The token endpoint's clients and the tokens it issued (token → expiry, monotonic seconds)."""

    clients: dict[str, str]
    expires_in: float = 3600.0
    tokens: dict[str, float] = field(default_factory=dict)
    issued: int = 0
    refused: int = 0
    unauthorized_pushes: int = 0

    def valid(self, authorization: str | None) -> bool:
        if not authorization or not authorization.lower().startswith("bearer "):
            return False
        expiry = self.tokens.get(authorization[7:].strip())
        return expiry is not None and time.monotonic() < expiry

    def to_json(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"enabled": True, "clients": sorted(self.clients), "expires_in": self.expires_in,
                "issued": self.issued, "refused": self.refused, "unauthorized_pushes": self.unauthorized_pushes,
                "valid_tokens": sum(1 for expiry in self.tokens.values() if expiry > now)}


def _oauth2_error(status: int, error: str, description: str) -> web.Response:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = f'Basic realm="erp-stub", error="{error}"'
    return web.Response(body=orjson.dumps({"error": error, "error_description": description}), status=status,
                        content_type=_JSON, headers=headers)


def _error_body(request_id: str, code: str, message: str) -> bytes:
    return orjson.dumps({"Response": {"RequestId": request_id, "Error": {"Code": code, "Message": message}}})


# --------------------------------------------------------------------------------------------------
# The aiohttp server


class _StubServer:
    """The aiohttp low-level server, its handler and the idle-connection sweeper (one event loop)."""

    def __init__(self, state: _StubState) -> None:
        self.state = state
        self.runner: web.ServerRunner | None = None
        self.sweeper: asyncio.Task[None] | None = None
        self.host = ""
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        server = web.Server(self.handle, access_log=None)
        self.runner = web.ServerRunner(server, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, backlog=1024, reuse_address=True)
        await site.start()
        self.host, self.port = host, int(self.runner.addresses[0][1])
        self.sweeper = asyncio.get_running_loop().create_task(self._sweep_idle())

    async def stop(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.sweeper
        if self.runner is not None:
            await self.runner.cleanup()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path.startswith(CONTROL_PREFIX) or path == CONTROL_PREFIX.rstrip("/"):
            return await self.control(request, path[len(CONTROL_PREFIX):])
        if request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST"}, text="the ERP only accepts POST")
        if path == TOKEN_PATH:
            return await self.token(request)
        return await self.push(request, path)

    async def token(self, request: web.BaseRequest) -> web.StreamResponse:
        """The OAuth2 token endpoint: client credentials grant (RFC 6749 §4.4), client auth basic or post."""
        oauth2 = self.state.oauth2
        form = await request.post()
        if oauth2 is None:
            return _oauth2_error(400, "unauthorized_client", "this ERP stub has no OAuth2 clients "
                                                             "(POST /_stub/oauth2 registers some)")
        client_id, secret = form.get("client_id"), form.get("client_secret")
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:].strip()).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                user, password = "", ""
            client_id, secret = unquote_plus(user), unquote_plus(password)
        if not isinstance(client_id, str) or oauth2.clients.get(client_id) != secret:
            oauth2.refused += 1
            return _oauth2_error(401, "invalid_client", "unknown client or wrong secret")
        if form.get("grant_type") != "client_credentials":
            oauth2.refused += 1
            return _oauth2_error(400, "unsupported_grant_type", "only client_credentials")
        token = secrets.token_urlsafe(24)
        oauth2.tokens[token] = time.monotonic() + oauth2.expires_in
        oauth2.issued += 1
        doc: dict[str, Any] = {"access_token": token, "token_type": "Bearer", "expires_in": int(oauth2.expires_in)}
        if form.get("scope"):
            doc["scope"] = form["scope"]
        return web.Response(body=orjson.dumps(doc), content_type=_JSON, headers={"Cache-Control": "no-store"})

    async def push(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        state = self.state
        arrived = time.perf_counter()
        body = await request.read()
        now = time.time()
        transport = request.transport
        conn = state.connections.get(transport) if transport is not None else None
        if conn is None:
            peer = transport.get_extra_info("peername") if transport is not None else None
            peer_port = peer[1] if isinstance(peer, tuple) and len(peer) >= 2 else None
            conn = _Connection(peer_port, time.monotonic())
            if transport is not None:
                state.connections[transport] = conn
        conn.in_flight += 1
        state.in_flight += 1
        if state.in_flight > state.max_concurrency:
            state.max_concurrency = state.in_flight
        try:
            key = request.headers.get("Idempotency-Key")
            valid_code, valid_message, instance_id = validate_body(body)
            if state.oauth2 is not None and not state.oauth2.valid(request.headers.get("Authorization")):
                state.oauth2.unauthorized_pushes += 1
                return self._unauthorized(request, path, body, key, instance_id, conn.peer_port, now)
            spec = state.decide(instance_id, key)
            request_id = (spec.request_id if spec is not None else None) or str(uuid.uuid4())
            status = 200 if spec is None else spec.status
            headers: dict[str, str] = {"Content-Type": _JSON}
            if spec is not None and spec.close:
                code, payload, answer_status = "CLOSED", b"", None
            elif spec is not None and spec.body is not None:
                payload = spec.body.encode("utf-8")
                code, answer_status = _label_raw(status, spec.body), status
            elif spec is not None and spec.code is not None:
                payload = _error_body(request_id, spec.code, spec.message or f"simulated error {spec.code}")
                code, answer_status = spec.code, status
            elif valid_code == "OK":
                payload = orjson.dumps({"Response": {"RequestId": request_id, "Data": {}}})
                code, answer_status = "OK", status
            else:
                payload = _error_body(request_id, valid_code, valid_message)
                code, answer_status = valid_code, status
            if answer_status is not None and not 200 <= answer_status < 300:
                code = f"HTTP_{answer_status}"
            if spec is not None:
                headers.update(spec.headers)
            state.seq += 1
            if len(state.records) == state.max_records:
                state.dropped += 1
            raw_headers = b"\r\n".join([name + b":" + value for name, value in request.raw_headers])
            record = _Record(state.seq, now, path, raw_headers, body, key, instance_id, conn.peer_port,
                             answer_status, code, None if answer_status is None else request_id)
            state.records.append(record)
            state.received += 1
            state.by_code[code] = state.by_code.get(code, 0) + 1
            if key is not None:
                state.seen_keys.add(key)
                if code == "OK":
                    state.success_keys.add(key)
            if spec is None or spec.latency_ms is None:
                delay_s = state.behaviour.latency_ms / 1000.0
            else:
                delay_s = spec.latency_ms / 1000.0
            if spec is not None:
                delay_s += spec.hang_s
            gate = state.gate
            await gate.acquire(state.behaviour.capacity)
            try:
                queued_ms = (time.perf_counter() - arrived) * 1000.0
                record.queued_ms = queued_ms
                state.queued_ms.append(queued_ms)
                if delay_s > 0:
                    await asyncio.sleep(delay_s)
            finally:
                gate.release(state.behaviour.capacity)
            served_ms = (time.perf_counter() - arrived) * 1000.0
            record.served_ms = served_ms
            state.served_ms.append(served_ms)
            if answer_status is None:
                if transport is not None:
                    transport.close()  # no response at all: the client sees the connection drop
                return web.Response(status=200)  # never written: the transport is closed
            return web.Response(body=payload, status=answer_status, headers=headers)
        finally:
            conn.in_flight -= 1
            conn.last_active = time.monotonic()
            state.in_flight -= 1

    def _unauthorized(self, request: web.BaseRequest, path: str, body: bytes, key: str | None,
                      instance_id: int | None, peer_port: int | None, now: float) -> web.Response:
        """A push without a valid bearer token: recorded (``HTTP_401``), answered 401 ``invalid_token``."""
        state = self.state
        state.seq += 1
        raw_headers = b"\r\n".join([name + b":" + value for name, value in request.raw_headers])
        state.records.append(_Record(state.seq, now, path, raw_headers, body, key, instance_id, peer_port, 401,
                                     "HTTP_401", None))
        state.received += 1
        state.by_code["HTTP_401"] = state.by_code.get("HTTP_401", 0) + 1
        return web.Response(body=orjson.dumps({"error": "invalid_token"}), status=401, content_type=_JSON,
                            headers={"WWW-Authenticate": 'Bearer realm="erp-stub", error="invalid_token"'})

    async def control(self, request: web.BaseRequest, name: str) -> web.StreamResponse:
        state = self.state
        method = request.method
        try:
            if name == "health" and method == "GET":
                return _json_response({"status": "ok"})
            if name == "behaviour" and method == "POST":
                text = await request.text()
                try:
                    raw = json.loads(text) if text.strip() else {}
                except ValueError as exc:
                    raise BehaviourError(f"the behaviour is not JSON: {exc}") from exc
                state.set_behaviour(Behaviour.parse(raw, state.base_latency_ms, state.base_capacity))
                logger.debug("ERP stub behaviour set: %s", raw)
                return _json_response({"behaviour": state.behaviour.to_json()})
            if name == "behaviour" and method == "GET":
                return _json_response({"behaviour": state.behaviour.to_json()})
            if name == "requests" and method == "GET":
                since = int(request.query.get("since", "0"))
                limit_text = request.query.get("limit")
                records = state.records_since(since, int(limit_text) if limit_text else None)
                return _json_response({"requests": [r.to_json() for r in records], "last_seq": state.seq})
            if name == "requests" and method == "DELETE":
                state.clear_records()
                return _json_response({"cleared": True, "last_seq": state.seq})
            if name == "stats" and method == "GET":
                return _json_response(state.stats())
            if name == "stats" and method == "DELETE":
                state.reset_stats()
                return _json_response(state.stats())
            if name == "oauth2" and method == "POST":
                raw = json.loads(await request.text() or "{}")
                clients = raw.get("clients") if isinstance(raw, dict) else None
                if clients is None:
                    state.oauth2 = None
                    return _json_response({"enabled": False})
                if not isinstance(clients, dict) or not all(isinstance(v, str) for v in clients.values()):
                    raise BehaviourError("oauth2.clients must be an object of client id → secret")
                expires_in = _opt_number(raw, "expires_in", "oauth2")
                state.oauth2 = _OAuth2(dict(clients), 3600.0 if expires_in is None else expires_in)
                return _json_response(state.oauth2.to_json())
            if name == "oauth2/revoke" and method == "POST":
                if state.oauth2 is not None:
                    state.oauth2.tokens.clear()
                return _json_response({"revoked": True})
            if name == "oauth2" and method == "GET":
                return _json_response(state.oauth2.to_json() if state.oauth2 is not None else {"enabled": False})
            if name == "reset" and method == "POST":
                state.set_behaviour(Behaviour(latency_ms=state.base_latency_ms, capacity=state.base_capacity))
                state.clear_records()
                state.reset_stats()
                state.seq = 0
                state.oauth2 = None
                return _json_response({"reset": True})
        except (BehaviourError, ValueError) as exc:
            return _json_response({"error": str(exc)}, status=400)
        return _json_response({"error": f"no control endpoint {method} /_stub/{name}"}, status=404)

    async def _sweep_idle(self) -> None:
        """Close keep-alive connections idle longer than ``close_idle_after_s``, silently."""
        state = self.state
        while True:
            idle_s = state.behaviour.close_idle_after_s
            await asyncio.sleep(0.25 if idle_s is None else min(0.25, max(0.01, idle_s / 5)))
            now = time.monotonic()
            idle_s = state.behaviour.close_idle_after_s
            for transport, conn in list(state.connections.items()):
                if transport.is_closing():
                    del state.connections[transport]
                elif idle_s is not None and conn.in_flight == 0 and now - conn.last_active > idle_s:
                    logger.debug("ERP stub closing idle connection from port %s", conn.peer_port)
                    transport.close()  # a FIN, no "Connection: close": the client's pool goes stale
                    del state.connections[transport]


def _json_response(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type=_JSON)


# --------------------------------------------------------------------------------------------------
# Public API


class ErpStub:
    """The ERP stub running in a background thread with its own event loop.

    Example:
        ``with ErpStub() as stub: httpx.post(stub.url, content=body); StubClient(stub.base_url)…``

    Args:
        max_records: how many pushes to keep in memory; the oldest are dropped beyond it.
        latency_ms: the start (and reset) value of the behaviour's ``latency_ms``, in ms.
        capacity: the start (and reset) value of the behaviour's ``capacity``; None for unlimited.
    """

    def __init__(self, max_records: int = DEFAULT_MAX_RECORDS, latency_ms: float = 0.0,
                 capacity: int | None = None) -> None:
        if max_records < 1:
            raise ValueError("max_records must be >= 1")
        if capacity is not None and capacity < 1:
            raise ValueError("capacity must be >= 1 (or None for unlimited)")
        self._state = _StubState(max_records, latency_ms, capacity)
        self._server = _StubServer(self._state)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start serving in a background thread.

        Args:
            host: the address to listen on.
            port: the TCP port; 0 picks a free one.

        Returns:
            The base URL, like ``"http://127.0.0.1:PORT"``.

        Raises:
            RuntimeError: already started, or the server could not start (port in use…).
        """
        if self._thread is not None:
            raise RuntimeError("the ERP stub is already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._server.start(host, port))
            except BaseException as exc:  # reported to start()'s caller
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._server.stop())
                loop.close()

        thread = threading.Thread(target=run, name="erp-stub", daemon=True)
        thread.start()
        ready.wait(30)
        if failure or not ready.is_set():
            thread.join(5)
            reason = failure[0] if failure else "timed out"
            raise RuntimeError(f"the ERP stub could not start on {host}:{port}: {reason}")
        self._loop, self._thread = loop, thread
        self._base_url = f"http://{_url_host(host)}:{self._server.port}"
        logger.info("ERP stub listening on %s; push URL %s", self._base_url, self.url)
        return self._base_url

    def stop(self) -> None:
        """Stop the server (pending delayed answers are cancelled within about 0.5 s); idempotent."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread, self._loop = None, None

    def __enter__(self) -> ErpStub:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """The base URL ``http://host:port`` (control endpoints live under ``/_stub/``)."""
        if self._base_url is None:
            raise RuntimeError("the ERP stub is not started")
        return self._base_url

    @property
    def url(self) -> str:
        """The push URL: base URL + ``/erp/push``."""
        return self.base_url + PUSH_PATH

    @property
    def port(self) -> int:
        """The TCP port the stub listens on."""
        if self._base_url is None:
            raise RuntimeError("the ERP stub is not started")
        return self._server.port

    def client(self, timeout_s: float = 10.0) -> StubClient:
        """Return a :class:`StubClient` for this stub (close it when done).

        Args:
            timeout_s: HTTP timeout of the control requests, in s.
        """
        return StubClient(self.base_url, timeout_s=timeout_s)


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class StubClient:
    """Synchronous client of the stub's control API (httpx).

    Args:
        base_url: the stub's base URL; only scheme, host and port are used, so the push URL works too.
        timeout_s: HTTP timeout of each control request, in s.
    """

    def __init__(self, base_url: str, *, timeout_s: float = 10.0) -> None:
        parts = urlsplit(base_url)
        if not parts.scheme or not parts.netloc:
            raise ValueError(f"not an http URL: {base_url!r}")
        self.base_url = f"{parts.scheme}://{parts.netloc}"
        # The stub speaks plain HTTP; not loading the CA bundle saves ~50 ms per client.
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s, verify=parts.scheme == "https")

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> StubClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, CONTROL_PREFIX + path, **kwargs)
        if response.status_code == 400:
            raise ValueError(f"ERP stub refused {method} /_stub/{path}: {response.json().get('error')}")
        response.raise_for_status()
        return json.loads(response.content)  # the stdlib parser keeps every integer exact

    def oauth2(self, clients: dict[str, str] | None, expires_in: float = 3600.0) -> dict[str, Any]:
        """Require OAuth2 bearer tokens issued by ``/oauth/token`` to these clients (None: stop requiring)."""
        result: dict[str, Any] = self._call("POST", "oauth2", content=json.dumps(
            {"clients": clients, "expires_in": expires_in}), headers={"Content-Type": _JSON})
        return result

    def oauth2_revoke(self) -> None:
        """Forget every issued token: the next push carrying one is answered 401."""
        self._call("POST", "oauth2/revoke")

    def oauth2_stats(self) -> dict[str, Any]:
        """The token endpoint's counters (``issued``, ``refused``, ``valid_tokens``, ``unauthorized_pushes``)."""
        result: dict[str, Any] = self._call("GET", "oauth2")
        return result

    def behaviour(self, **fields: Any) -> dict[str, Any]:
        """Replace the behaviour; omitted fields take their start values (see the module docstring).

        Args:
            **fields: ``latency_ms`` (ms), ``default``, ``script``, ``rules``, ``duplicate_code``,
                ``close_idle_after_s`` (s), ``capacity`` (pushes served at once; None: unlimited).

        Returns:
            The behaviour now in force, as JSON.

        Raises:
            ValueError: the stub refused the behaviour (unknown key, wrong type…).
        """
        result: dict[str, Any] = self._call(
            "POST", "behaviour", content=json.dumps(fields), headers={"Content-Type": _JSON}
        )["behaviour"]
        return result

    def current_behaviour(self) -> dict[str, Any]:
        """Return the behaviour in force (remaining script items, rules' remaining ``times``)."""
        result: dict[str, Any] = self._call("GET", "behaviour")["behaviour"]
        return result

    def requests(self, since: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Return the recorded pushes with ``seq > since``, oldest first.

        Args:
            since: the last sequence number already seen (0 for all).
            limit: at most this many records.
        """
        params: dict[str, Any] = {"since": since}
        if limit is not None:
            params["limit"] = limit
        records: list[dict[str, Any]] = self._call("GET", "requests", params=params)["requests"]
        return records

    def clear(self) -> None:
        """Forget the records and the seen idempotency keys (counters and ``seq`` keep counting)."""
        self._call("DELETE", "requests")

    def reset(self) -> None:
        """Reset behaviour, records, counters and ``seq``."""
        self._call("POST", "reset")

    def stats(self) -> dict[str, Any]:
        """Return the counters (``received``, ``by_code``, ``distinct_keys``, ``max_concurrency``…).

        ``recorded`` is the number of records held, ``last_seq`` the last sequence number given;
        ``latency_ms`` and ``queue_ms`` summarise the server-side latencies (count, mean, p50, p90,
        p99, max), ``max_serving`` / ``max_queue`` are the peaks of the capacity model.
        """
        result: dict[str, Any] = self._call("GET", "stats")
        return result

    def reset_stats(self) -> dict[str, Any]:
        """Reset the counters only (received, by_code, peaks, latencies); returns the new stats."""
        result: dict[str, Any] = self._call("DELETE", "stats")
        return result

    def health(self) -> bool:
        """Return True when the stub answers ``GET /_stub/health`` with 200."""
        try:
            return self._http.get(CONTROL_PREFIX + "health").status_code == 200
        except httpx.TransportError:
            return False

    def wait_for(self, count: int, timeout_s: float = 10.0, poll_s: float = 0.02) -> list[dict[str, Any]]:
        """Wait until at least ``count`` pushes are recorded, then return all records.

        Args:
            count: the number of records to wait for.
            timeout_s: how long to wait, in s.
            poll_s: the polling interval, in s.

        Raises:
            TimeoutError: fewer than ``count`` records after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            stats = self.stats()
            if stats["recorded"] >= count:
                return self.requests()
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"ERP stub at {self.base_url}: expected at least {count} recorded pushes within "
                    f"{timeout_s} s, got {stats['recorded']} (answers so far: {stats['by_code'] or 'none'})"
                )
            time.sleep(poll_s)


def format_summary(records: Sequence[Mapping[str, Any]]) -> str:
    """Render received pushes as a readable table, then the raw body of the first one.

    Args:
        records: records as returned by :meth:`StubClient.requests`.

    Returns:
        Multi-line text (no trailing newline).
    """
    if not records:
        return "The ERP received no pushes."
    rows = [("seq", "InstanceId", "Idempotency-Key", "answer")]
    for r in records:
        answer = "connection closed, no answer" if r.get("status") is None else f"{r['status']} {r['code']}"
        instance = r.get("instance_id")
        rows.append((str(r.get("seq", "")), "?" if instance is None else str(instance),
                     r.get("idempotency_key") or "-", answer))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    accepted = sum(1 for r in records if r.get("status") is not None and r.get("code") == "OK")
    others = len(records) - accepted
    lines = [f"The ERP received {len(records)} push{'es' if len(records) != 1 else ''}: {accepted} answered OK"
             + (f", {others} not (an error code is a reject, dead-lettered, or a retry code, pushed again; "
                "a closed connection is pushed again)" if others else "") + ":"]
    for row in rows:
        cells = "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
        lines.append(f"  {cells}  {row[3]}")
    first = records[0]
    lines.append(f"Body of the first push (seq {first.get('seq')}, POST {first.get('path', PUSH_PATH)}):")
    lines.append(first.get("body", ""))
    return "\n".join(lines)


async def _serve_forever(host: str, port: int, latency_ms: float, max_records: int,
                         capacity: int | None = None) -> None:
    server = _StubServer(_StubState(max_records, latency_ms, capacity))
    await server.start(host, port)
    base = f"http://{_url_host(host)}:{server.port}"
    logger.info("ERP stub listening on %s; push URL %s", base, base + PUSH_PATH)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
    finally:
        logger.info("ERP stub stopping")
        await server.stop()


def main(
    port: int, host: str = "127.0.0.1", latency_ms: float = 0, max_records: int = DEFAULT_MAX_RECORDS,
    capacity: int | None = None,
) -> None:
    """Run the stub in the foreground until SIGTERM or SIGINT.

    Args:
        port: the TCP port (0 picks a free one; the start-up log line shows it).
        host: the address to listen on.
        latency_ms: the start value of the behaviour's ``latency_ms``, in ms.
        max_records: how many pushes to keep in memory.
        capacity: the start value of the behaviour's ``capacity`` (pushes served at once); None: unlimited.
    """
    if capacity is not None and capacity < 1:
        raise ValueError("capacity must be >= 1 (or None for unlimited)")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # libuv's loop, as the consumer's push loop: less CPU per push, so on a shared benchmark machine
    # the stub takes less of the cores the consumers are measured on (bench/, issue 14)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(_serve_forever(host, port, latency_ms, max_records, capacity))


def _cli(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m consumer.devstack.erp_stub", description="Run the ERP stub.")
    parser.add_argument("--port", type=int_in(0, 65535), default=8080)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--latency-ms", type=float_at_least(0), default=0.0, help="delay before every answer (ms)")
    parser.add_argument("--max-records", type=int_in(1), default=DEFAULT_MAX_RECORDS)
    parser.add_argument("--capacity", type=int_in(1), default=None,
                        help="pushes served at once, the rest wait in a FIFO queue (default: unlimited)")
    args = parser.parse_args(argv)
    main(args.port, args.host, args.latency_ms, args.max_records, args.capacity)


if __name__ == "__main__":
    _cli()


__all__ = [
    "Behaviour",
    "BehaviourError",
    "ErpStub",
    "ResponseSpec",
    "Rule",
    "StubClient",
    "format_summary",
    "main",
    "validate_body",
]
