"""The verdict on one push (consumer/erp/verdict.py) against ERP-INTERFACE.md decision 6."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.erp.verdict import (
    DEFAULT_RETRY_CODES,
    MAX_MESSAGE_CHARS,
    Outcome,
    Verdict,
    code_matches,
    parse_retry_after,
    speaks_for_endpoint,
    transport_failure_verdict,
    verdict,
)

FAMILIES = ("InternalError", "RequestLimitExceeded", "ResourceUnavailable", "ResourceInsufficient",
            "ServiceUnavailable", "AuthFailure", "UnauthorizedOperation", "IpNotInWhitelist")


def error_body(code: object, message: object = "msg", request_id: str | None = None) -> bytes:
    response: dict[str, object] = {"Error": {"Code": code, "Message": message}}
    if request_id is not None:
        response["RequestId"] = request_id
    return json.dumps({"Response": response}).encode()


def test_default_retry_codes_are_the_eight_families() -> None:
    assert DEFAULT_RETRY_CODES == FAMILIES


# --- accepted -------------------------------------------------------------------------------


def test_plain_success() -> None:
    assert verdict(200, {}, b'{"Response":{"Data":{}}}') == Verdict(Outcome.ACCEPTED, "OK", "", None, None, False)


def test_tencent_success_with_empty_error_code_keeps_request_id() -> None:
    body = b'{"Response": {"RequestId": "req-123", "Error": {"Code": "", "Message": ""}, "Data": {}}}'
    assert verdict(200, {}, body) == Verdict(Outcome.ACCEPTED, "OK", "", "req-123")


def test_error_without_code_is_accepted() -> None:
    v = verdict(200, {}, b'{"Response": {"RequestId": "r1", "Error": {"Message": "nothing"}}}')
    assert v == Verdict(Outcome.ACCEPTED, "OK", "", "r1")


def test_error_null_is_accepted() -> None:
    assert verdict(200, {}, b'{"Response": {"Error": null}}').outcome is Outcome.ACCEPTED


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_every_2xx_reads_the_body(status: int) -> None:
    assert verdict(status, {}, b'{"Response":{}}') == Verdict(Outcome.ACCEPTED, "OK")
    assert verdict(status, {}, error_body("InvalidParameter")).outcome is Outcome.REJECT
    assert verdict(status, {}, b"").code == "InvalidResponse"


def test_empty_request_id_is_none() -> None:
    assert verdict(200, {}, b'{"Response":{"RequestId":""}}').request_id is None
    assert verdict(200, {}, b'{"Response":{"RequestId":7}}').request_id is None


# --- 2xx with an error code -----------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("suffix", ["", ".DbError", ".A.B"])
def test_default_retry_families(family: str, suffix: str) -> None:
    code = family + suffix
    v = verdict(200, {"retry-after": "3"}, error_body(code, "try later", "rid-9"))
    assert v == Verdict(Outcome.RETRY, code, "try later", "rid-9", 3.0, False)


@pytest.mark.parametrize("code", ["InternalErrorX", "InternalError_DbError", "Internal", "internalerror",
                                  "XInternalError", "AuthFailureX.Y", "InvalidParameter",
                                  "InvalidParameter.FlowCode", "MissingParameter", "ResourceNotFound",
                                  "ResourceNotFound.Instance", "FailedOperation", "Whatever.InternalError",
                                  "UnknownCode"])
def test_other_codes_reject(code: str) -> None:
    v = verdict(200, {"Retry-After": "9"}, error_body(code, "bad", "rid-1"))
    assert v == Verdict(Outcome.REJECT, code, "bad", "rid-1", None, False)


def test_duplicate_list_checked_first() -> None:
    body = error_body("InternalError.AlreadyDone", "done", "rid-2")
    v = verdict(200, {"retry-after": "5"}, body, duplicate_codes=("InternalError.AlreadyDone",))
    assert v == Verdict(Outcome.ACCEPTED, "InternalError.AlreadyDone", "done", "rid-2", None, True)
    v = verdict(200, {}, error_body("InternalError"), duplicate_codes=("InternalError",))
    assert (v.outcome, v.duplicate, v.code) == (Outcome.ACCEPTED, True, "InternalError")


def test_duplicate_family_matches_dotted_codes() -> None:
    dup = ("FailedOperation.Duplicate",)
    v = verdict(200, {}, error_body("FailedOperation.Duplicate.Instance"), duplicate_codes=dup)
    assert (v.outcome, v.duplicate) == (Outcome.ACCEPTED, True)
    v = verdict(200, {}, error_body("FailedOperation.DuplicateX"), duplicate_codes=dup)
    assert (v.outcome, v.duplicate) == (Outcome.REJECT, False)


def test_custom_retry_list_replaces_defaults() -> None:
    custom = ("LimitExceeded", "FailedOperation.Busy")
    assert verdict(200, {}, error_body("InternalError"), retry_codes=custom).outcome is Outcome.REJECT
    assert verdict(200, {}, error_body("LimitExceeded.Qps"), retry_codes=custom).outcome is Outcome.RETRY
    assert verdict(200, {}, error_body("FailedOperation.Busy"), retry_codes=custom).outcome is Outcome.RETRY
    assert verdict(200, {}, error_body("FailedOperation"), retry_codes=custom).outcome is Outcome.REJECT
    assert verdict(200, {}, error_body("InternalError"), retry_codes=()).outcome is Outcome.REJECT


def test_non_string_code_is_invalid_response() -> None:
    v = verdict(200, {"retry-after": "2"}, error_body(123, "m", "r"))
    assert v == Verdict(Outcome.RETRY, "InvalidResponse", "Response.Error.Code is not a string: 123", "r", 2.0)


def test_non_string_message_is_repr() -> None:
    assert verdict(200, {}, error_body("InvalidParameter", {"a": 1})).message == "{'a': 1}"


def test_message_truncated_to_500_chars() -> None:
    v = verdict(200, {}, error_body("InvalidParameter", "x" * 600))
    assert len(v.message) == MAX_MESSAGE_CHARS == 500
    assert v.message == "x" * 499 + "…"
    assert verdict(200, {}, error_body("InvalidParameter", "y" * 500)).message == "y" * 500


def test_message_truncated_on_http_error() -> None:
    v = verdict(400, {}, b"z" * 1000)
    assert v.message == "z" * 200  # body snippet is 200 bytes
    v = verdict(400, {}, error_body("InvalidParameter", "m" * 1000))
    assert v.message == "m" * 499 + "…"


# --- 2xx not in the contract's shape --------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"", b"<html><body>502 Bad Gateway</body></html>", b"not json", b"[]", b"null", b"1", b'"x"',
     b'{"Response": 1}', b'{"Response": []}', b'{"Response": null}', b'{"Data": {}}', b"{}",
     b'{"Response": {"Error": "boom"}}', b'{"Response": {"Error": []}}', b"\xff\xfe", b'{"Response":{}'],
)
@pytest.mark.parametrize("status", [200, 201, 204])
def test_2xx_invalid_shape_is_retry(status: int, body: bytes) -> None:
    v = verdict(status, {"retry-after": "4"}, body)
    assert (v.outcome, v.code, v.retry_after_s, v.request_id, v.duplicate) == (
        Outcome.RETRY, "InvalidResponse", 4.0, None, False)
    assert v.message.startswith(f"HTTP {status} with a body that is not ")


def test_invalid_response_message_for_empty_body() -> None:
    assert verdict(200, {}, b"").message == 'HTTP 200 with a body that is not {"Response": {…}}: (empty body)'


# --- HTTP status ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 599])
def test_retry_statuses(status: int) -> None:
    v = verdict(status, {"Retry-After": "7"}, b"")
    assert v == Verdict(Outcome.RETRY, f"HTTP_{status}", "(empty body)", None, 7.0)


@pytest.mark.parametrize("status", [100, 300, 301, 302, 304, 400, 401, 403, 404, 405, 409, 413, 422, 600])
def test_reject_statuses_ignore_retry_after(status: int) -> None:
    v = verdict(status, {"retry-after": "7"}, b"")
    assert v == Verdict(Outcome.REJECT, f"HTTP_{status}", "(empty body)", None, None)


def test_http_error_keeps_request_id_and_message() -> None:
    v = verdict(500, {}, error_body("InternalError", "db down", "rid-5"))
    assert v == Verdict(Outcome.RETRY, "HTTP_500", "db down", "rid-5", None)
    v = verdict(400, {}, b'{"Response": {"RequestId": "rid-6"}}')
    assert v == Verdict(Outcome.REJECT, "HTTP_400", "HTTP status 400", "rid-6", None)


def test_http_error_with_body_snippet() -> None:
    assert verdict(404, {}, b"Not\nFound").message == "Not Found"


def test_headers_case() -> None:
    assert verdict(503, httpx.Headers({"RETRY-AFTER": "11"}), b"").retry_after_s == 11.0
    assert verdict(503, {"Retry-After": "12"}, b"").retry_after_s == 12.0
    assert verdict(503, {"retry-after": "13"}, b"").retry_after_s == 13.0
    assert verdict(503, {}, b"").retry_after_s is None


# --- Retry-After ----------------------------------------------------------------------------

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [("7", 7.0), (" 7 ", 7.0), ("0", 0.0), ("1.5", 1.5), ("-3", 0.0), (None, None), ("", None),
     ("garbage", None), ("nan", None), ("Mon, 99 Foo 2024 xx:yy:zz GMT", None)],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_http_date() -> None:
    when = datetime.fromtimestamp(NOW + 120, tz=UTC)
    header = format_datetime(when, usegmt=True)
    assert header.endswith(" GMT")
    assert parse_retry_after(header, now=NOW) == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 30) == 30.0


def test_parse_retry_after_date_in_the_past_is_zero() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=NOW) == 0.0


def test_verdict_uses_http_date() -> None:
    header = format_datetime(datetime.fromtimestamp(NOW + 60, tz=UTC), usegmt=True)
    v = verdict(429, {"retry-after": header}, b"")
    assert v.outcome is Outcome.RETRY
    assert v.retry_after_s is not None and 0.0 <= v.retry_after_s  # relative to the real clock: past → 0


# --- transport errors -----------------------------------------------------------------------


def test_transport_verdicts() -> None:
    assert transport_failure_verdict("ConnectError", "x") == Verdict(Outcome.RETRY, "ConnectError", "x", transport=True)
    assert transport_failure_verdict("Timeout", "") == Verdict(Outcome.RETRY, "Timeout", "Timeout", transport=True)
    assert transport_failure_verdict("ReadError", "e" * 900).message == "e" * 499 + "…"


# --- code_matches ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "entries", "expected"),
    [
        ("InternalError", ["InternalError"], True),
        ("InternalError.DbError", ["InternalError"], True),
        ("InternalError.DbError.X", ["InternalError.DbError"], True),
        ("InternalError.DbErrorX", ["InternalError.DbError"], False),
        ("InternalErrorX", ["InternalError"], False),
        ("InternalError", ["InternalError.DbError"], False),
        ("Internal", ["InternalError"], False),
        ("internalerror", ["InternalError"], False),
        ("", ["InternalError"], False),
        ("", [""], False),
        ("InternalError", [""], False),
        ("A.B", ["X", "A"], True),
        ("A.B", [], False),
    ],
)
def test_code_matches(code: str, entries: list[str], expected: bool) -> None:
    assert code_matches(code, entries) is expected


# --- property -------------------------------------------------------------------------------

codes = (
    st.text(st.characters(exclude_categories=["Cs"]), max_size=30)
    | st.sampled_from(FAMILIES).map(lambda f: f + ".X")
    | st.sampled_from(FAMILIES)
    | st.sampled_from(["Dup", "Dup.Y", "InternalError.Done", "InternalError.Done.Z", "X", ""])
)


@settings(max_examples=150, deadline=None)
@given(code=codes, duplicates=st.lists(st.sampled_from(["Dup", "InternalError.Done", "X"]), max_size=3),
       status=st.sampled_from([200, 201, 204]))
def test_any_code_has_one_of_three_outcomes(code: str, duplicates: list[str], status: int) -> None:
    v = verdict(status, {}, error_body(code), duplicate_codes=duplicates)
    assert v.outcome in (Outcome.ACCEPTED, Outcome.RETRY, Outcome.REJECT)
    if v.outcome is Outcome.ACCEPTED:
        assert code == "" or code_matches(code, duplicates)
    if code == "":
        assert (v.outcome, v.code, v.duplicate) == (Outcome.ACCEPTED, "OK", False)
    elif code_matches(code, duplicates):
        assert (v.outcome, v.code, v.duplicate) == (Outcome.ACCEPTED, code, True)
    elif code_matches(code, FAMILIES):
        assert (v.outcome, v.code, v.duplicate) == (Outcome.RETRY, code, False)
    else:
        assert (v.outcome, v.code, v.duplicate) == (Outcome.REJECT, code, False)


def test_body_with_lone_surrogate_escape_is_invalid_response() -> None:
    # orjson refuses a lone surrogate escape: the body is treated as not the contract's shape
    v = verdict(200, {}, b'{"Response": {"Error": {"Code": "Bad\\ud800"}}}')
    assert (v.outcome, v.code) == (Outcome.RETRY, "InvalidResponse")


def test_operator_retry_statuses_turn_a_reject_into_a_retry() -> None:
    assert verdict(401, {}, b"Unauthorized").outcome is Outcome.REJECT
    v = verdict(401, {"retry-after": "3"}, b"Unauthorized", retry_statuses=frozenset({401, 403}))
    assert (v.outcome, v.code, v.retry_after_s) == (Outcome.RETRY, "HTTP_401", 3.0)
    assert verdict(404, {}, b"", retry_statuses=frozenset({401})).outcome is Outcome.REJECT


@pytest.mark.parametrize(("verdict", "endpoint"), [
    (Verdict(Outcome.RETRY, "Timeout", transport=True), True),
    (Verdict(Outcome.RETRY, "InternalError", retry_after_s=5.0), True),
    (Verdict(Outcome.RETRY, "RequestLimitExceeded.UinLimit"), True),
    (Verdict(Outcome.RETRY, "AuthFailure.SignatureExpire"), True),
    (Verdict(Outcome.RETRY, "HTTP_429"), True),
    (Verdict(Outcome.RETRY, "HTTP_503"), True),
    (Verdict(Outcome.RETRY, "HTTP_401"), True),  # retried only when configured so: open the circuit at once
    (Verdict(Outcome.RETRY, "HTTP_403"), True),
    (Verdict(Outcome.RETRY, "InternalError"), False),
    (Verdict(Outcome.RETRY, "InternalError.DbError"), False),
    (Verdict(Outcome.RETRY, "InvalidResponse"), False),
    (Verdict(Outcome.RETRY, "HTTP_500"), False),
    (Verdict(Outcome.RETRY, "HTTP_408"), False),
])
def test_which_retry_answers_speak_for_the_whole_endpoint(verdict: Verdict, endpoint: bool) -> None:
    assert speaks_for_endpoint(verdict) is endpoint
