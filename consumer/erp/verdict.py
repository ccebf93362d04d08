"""The verdict on one push, decided from HTTP status AND body (ERP-INTERFACE.md decision 6). Pure.

=========================================  ==========  ==============================
response                                   outcome     code
=========================================  ==========  ==============================
2xx, ``Response`` object, no ``Error``     accepted    ``OK``
2xx, ``Response.Error.Code`` empty         accepted    ``OK``
2xx, code in the duplicate list            accepted    the code (``duplicate=True``)
2xx, code in the retry list                retry       the code
2xx, any other code                        reject      the code
2xx, body not ``{"Response": {…}}``        retry       ``InvalidResponse``
408, 425, 429, 5xx                         retry       ``HTTP_<status>``
timeouts, connection errors                retry       the error's name (``Timeout``…)
any other status (1xx, 3xx, 4xx)           reject      ``HTTP_<status>``
=========================================  ==========  ==============================

A list entry matches a code when it equals the code or is a prefix of it ending at a dot
(``InternalError`` matches ``InternalError.DbError``); the duplicate list is checked first.
``Retry-After`` (seconds or an HTTP date) is read on every retry verdict.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

DEFAULT_RETRY_CODES: tuple[str, ...] = (
    "InternalError",
    "RequestLimitExceeded",
    "ResourceUnavailable",
    "ResourceInsufficient",
    "ServiceUnavailable",
    "AuthFailure",
    "UnauthorizedOperation",
    "IpNotInWhitelist",
)
"""Error-code families that mean "the endpoint is not ready: retry" (decision 6)."""

RETRY_STATUSES = frozenset({408, 425, 429})
MAX_MESSAGE_CHARS = 500


class Outcome(enum.Enum):
    """The three outcomes of a push (decision 6)."""

    ACCEPTED = "accepted"
    RETRY = "retry"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the ERP said about one push.

    Attributes:
        outcome: accepted / retry / reject.
        code: ``OK``, the ERP error code, ``HTTP_<status>``, ``InvalidResponse`` or a transport
            error name.
        message: the ERP's message or a description (at most 500 characters).
        request_id: ``Response.RequestId`` when the ERP gave one.
        retry_after_s: the ``Retry-After`` delay in seconds, when given with a retry.
        duplicate: True when accepted because the code is in the "already done" list.
        transport: True when no HTTP answer came (timeout, refused, reset…).
    """

    outcome: Outcome
    code: str
    message: str = ""
    request_id: str | None = None
    retry_after_s: float | None = None
    duplicate: bool = False
    transport: bool = False


ENDPOINT_WIDE_CODES: tuple[str, ...] = (
    *(code for code in DEFAULT_RETRY_CODES if code != "InternalError"),  # InternalError: may be this record's
    "HTTP_401",
    "HTTP_403",
    "HTTP_429",
    "HTTP_502",
    "HTTP_503",
    "HTTP_504",
)
"""Retry answers that speak for the whole endpoint (limits, outages, credentials), not for one record."""


def speaks_for_endpoint(verdict: Verdict) -> bool:
    """Whether a *retry* answer says the endpoint is not ready for anyone (not just for this record).

    Yes for no answer at all (timeouts, refused or reset connections), for a ``Retry-After``, and for
    :data:`ENDPOINT_WIDE_CODES`. ``InternalError``, ``InvalidResponse``, HTTP 500 and the other retry
    answers may concern one body only: the push routine lets that record back off alone, and the
    shared backoff opens only when such answers come in a row from several records.
    """
    return verdict.transport or verdict.retry_after_s is not None or code_matches(verdict.code, ENDPOINT_WIDE_CODES)


def code_matches(code: str, entries: Iterable[str]) -> bool:
    """Return True if an entry equals ``code`` or is a dot-ended prefix of it (decision 6)."""
    return any(code == e or code.startswith(e + ".") for e in entries if e)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Parse ``Retry-After``: delay seconds or an HTTP date (RFC 9110 §10.2.3).

    Returns:
        The delay in seconds (≥ 0), or None when absent or unparsable.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        seconds = when - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


def verdict(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    retry_codes: Iterable[str] = DEFAULT_RETRY_CODES,
    duplicate_codes: Iterable[str] = (),
    retry_statuses: frozenset[int] = frozenset(),
) -> Verdict:
    """Decide the outcome of one HTTP response (decision 6).

    Args:
        status: the HTTP status code.
        headers: response headers; a case-insensitive mapping (httpx.Headers) or lower-case keys.
        body: the raw response body.
        retry_codes: code families that mean retry.
        duplicate_codes: codes that mean "already done" (accepted).
        retry_statuses: more non-2xx statuses that mean retry (an operator's choice, e.g. 401 and
            403 while credentials are rotated); the contract's default makes them *reject*.

    Returns:
        The :class:`Verdict`.
    """
    retry_after = parse_retry_after(headers.get("retry-after") or headers.get("Retry-After"))
    if not 200 <= status < 300:
        retry = status in RETRY_STATUSES or 500 <= status < 600 or status in retry_statuses
        outcome = Outcome.RETRY if retry else Outcome.REJECT
        parsed = _parse_response(body)
        request_id = parsed[0].get("RequestId") if parsed is not None else None
        message = _error_message(parsed[1]) if parsed is not None else _truncate(_body_snippet(body))
        return Verdict(
            outcome,
            f"HTTP_{status}",
            message or f"HTTP status {status}",
            request_id if isinstance(request_id, str) else None,
            retry_after if outcome is Outcome.RETRY else None,
        )
    parsed = _parse_response(body)
    if parsed is None:
        return Verdict(
            Outcome.RETRY,
            "InvalidResponse",
            _truncate(f"HTTP {status} with a body that is not {{\"Response\": {{…}}}}: {_body_snippet(body)}"),
            None,
            retry_after,
        )
    response, error = parsed
    request_id = response.get("RequestId")
    rid = request_id if isinstance(request_id, str) and request_id else None
    if error is None:
        return Verdict(Outcome.ACCEPTED, "OK", "", rid)
    code = error.get("Code")
    if code is None or code == "":
        return Verdict(Outcome.ACCEPTED, "OK", "", rid)
    if not isinstance(code, str):
        return Verdict(Outcome.RETRY, "InvalidResponse", f"Response.Error.Code is not a string: {code!r}"[:500], rid,
                       retry_after)
    message = _error_message(error)
    if code_matches(code, duplicate_codes):
        return Verdict(Outcome.ACCEPTED, code, message, rid, None, duplicate=True)
    if code_matches(code, retry_codes):
        return Verdict(Outcome.RETRY, code, message, rid, retry_after)
    return Verdict(Outcome.REJECT, code, message, rid)


def _error_message(error: Mapping[str, Any] | None) -> str:
    if not error:
        return ""
    message = error.get("Message")
    return _truncate(message if isinstance(message, str) else repr(message))


def _body_snippet(body: bytes) -> str:
    if not body:
        return "(empty body)"
    return body[:200].decode("utf-8", "replace").replace("\n", " ")


def _parse_response(body: bytes) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    """Return ``(Response, Error or None)``, or None when the body is not the contract's shape."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    response = doc.get("Response")
    if not isinstance(response, dict):
        return None
    error = response.get("Error")
    if error is None:
        return response, None
    if not isinstance(error, dict):
        return None
    return response, error


def transport_failure_verdict(code: str, message: str) -> Verdict:
    """Verdict for a request that got no HTTP answer, named by :mod:`consumer.erp.http`: always retry."""
    return Verdict(Outcome.RETRY, code, _truncate(message or code), transport=True)

