"""Routes (consumer/routes.py): the routes file, its checks, and which route takes a record."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.errors import ConfigError
from consumer.routes import load_routes
from consumer.settings import load_settings

HR_FLOW = 1425737370216521773
EXAMPLE = f"""
routes:
  - name: hr
    match:
      flow_codes: [{HR_FLOW}]
    url: https://hr.example.com/erp/approval
    timeout_seconds: 10
    retry_codes: [InternalError, ServiceUnavailable]
    max_in_flight: 8
  - name: by-header
    match:
      topics: [orders]
      header: {{tenant: acme}}
    url: https://acme.example.com/push
  - name: finance
    url: https://finance.example.com/erp/approval
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def table(tmp_path: Path, text: str, **env: str):  # type: ignore[no-untyped-def]
    return load_routes(load_settings({"ERP_SYNC_ROUTES_FILE": str(write(tmp_path, text)), **env}))


def test_the_example_routes_file(tmp_path: Path) -> None:
    routes = table(tmp_path, EXAMPLE, ERP_SYNC_ERP_TIMEOUT_SECONDS="3", ERP_SYNC_MAX_IN_FLIGHT="32")
    assert [r.name for r in routes.routes] == ["hr", "by-header", "finance"]
    hr, acme, finance = routes.routes
    assert (hr.settings.erp_url, hr.settings.erp_timeout_seconds, hr.settings.max_in_flight) == (
        "https://hr.example.com/erp/approval", 10.0, 8)
    assert hr.settings.erp_retry_codes == ("InternalError", "ServiceUnavailable")
    assert (finance.settings.erp_timeout_seconds, finance.settings.max_in_flight) == (3.0, 32)  # the defaults
    assert finance.is_default and not hr.is_default
    assert routes.route("wf", HR_FLOW) is hr
    assert routes.route("wf", 7) is finance
    assert routes.route("orders", 7, {"tenant": b"acme"}) is acme
    assert routes.route("orders", 7, {"tenant": b"other"}) is finance
    assert routes.route("wf", 7, {"tenant": b"acme"}) is finance  # topic does not match
    assert routes.needs_headers


def test_without_a_routes_file_the_erp_url_is_the_default_route() -> None:
    routes = load_routes(load_settings({"ERP_SYNC_ERP_URL": "https://erp.example.com/push"}))
    assert [(r.name, r.settings.erp_url, r.is_default) for r in routes.routes] == [
        ("default", "https://erp.example.com/push", True)]
    with pytest.raises(ConfigError, match="^ERP_SYNC_ERP_URL: required"):
        load_routes(load_settings({}))


def test_the_erp_url_is_the_default_route_when_the_file_has_none(tmp_path: Path) -> None:
    only_hr = f"routes:\n  - name: hr\n    match: {{flow_codes: [{HR_FLOW}]}}\n    url: https://hr.example.com/x\n"
    routes = table(tmp_path, only_hr, ERP_SYNC_ERP_URL="https://erp.example.com/push")
    assert [(r.name, r.settings.erp_url) for r in routes.routes] == [
        ("hr", "https://hr.example.com/x"), ("default", "https://erp.example.com/push")]
    assert routes.route("wf", 1).name == "default"  # type: ignore[union-attr]
    no_default = table(tmp_path, only_hr)
    assert no_default.route("wf", 1) is None  # dead-lettered: validation NoRoute


@pytest.mark.parametrize(("text", "message"), [
    ("routes:\n  - name: hr\n    url: https://h.example/x\n    timeout: 3\n",
     "route 'hr': timeout: unknown field (known: "),
    ("routes:\n  - name: a\n    url: https://h.example/x\n    match: {topics: [t]}\n"
     "  - name: a\n    url: https://h.example/y\n",
     "route 'a': name: used by an earlier route (names must be unique)"),
    ("routes:\n  - name: hr\n    match: {flow_codes: []}\n    url: https://h.example/x\n",
     "route 'hr': match.flow_codes: empty: this route would match nothing"),
    ("routes:\n  - name: hr\n    match: {flow_codes: [9223372036854775808]}\n    url: https://h.example/x\n",
     "route 'hr': match.flow_codes: 9223372036854775808 is outside a FlowCode's range (a 64-bit signed integer)"),
    ("routes:\n  - name: hr\n    match: {flow_codes: [-9223372036854775809]}\n    url: https://h.example/x\n",
     "route 'hr': match.flow_codes: -9223372036854775809 is outside a FlowCode's range"),
    ("routes:\n  - name: hr\n    url: ftp://h.example/x\n",
     "route 'hr': url must be an http:// or https:// URL, got 'ftp://h.example/x'"),
    ("routes:\n  - name: hr\n    url: https://h.example/x\n    timeout_seconds: -1\n",
     "route 'hr': timeout_seconds: Input should be greater than 0"),
    ("routes:\n  - name: all\n    url: https://h.example/x\n  - name: late\n    match: {topics: [t]}\n"
     "    url: https://h.example/y\n",
     "route 'late': unreachable: the default route 'all' (no match) before it takes every record"),
    ("routes:\n  - name: hr\n    url: https://h.example/x\n    auth_header_value: Bearer t0k3n\n",
     "route 'hr': auth_header_value: secrets are read from a file: use auth_header_value_file"),
    ("routes:\n  - name: hr\n    match: {topics: [t]}\n", "route 'hr': url: required"),
    ("routes:\n  - name: hr\n    match: {flowcodes: [1]}\n    url: https://h.example/x\n",
     "route 'hr': match.flowcodes: Extra inputs are not permitted"),
    ("routes:\n  - url: https://h.example/x\n", "route #1: name: Field required"),
    ("routes: []\n", "routes: List should have at least 1 item"),
    ("routes:\n  - name: [unclosed\n", "not YAML"),
    ("routes:\n  - name: hr\n    match: {topics: [t]}\n    url: https://h.example/x\n    max_in_flight: 0\n",
     "route 'hr': max_in_flight: expected auto or a number of pushes from 1 to 1024, got 0"),
])
def test_a_bad_routes_file_is_refused_naming_file_route_and_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        table(tmp_path, text)
    assert str(caught.value).startswith(f"ERP_SYNC_ROUTES_FILE: {tmp_path / 'routes.yaml'}: ")
    assert message in str(caught.value)
    assert "t0k3n" not in str(caught.value)


def test_a_missing_routes_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^ERP_SYNC_ROUTES_FILE: cannot read .*nope.yaml: No such file"):
        load_routes(load_settings({"ERP_SYNC_ROUTES_FILE": str(tmp_path / "nope.yaml")}))
