"""Routes: which ERP endpoint each record goes to (``ERP_SYNC_ROUTES_FILE``).

The specification leaves the ERP address to each customer ("接口地址：客户确认"), and one customer
often has several systems behind it. A routes file (YAML) lists routes; the first whose ``match``
fits a record takes it; a route without ``match`` is the default::

    routes:
      - name: hr
        match:
          flow_codes: [1425737370216521773]   # and/or topics: [...], header: {name: value}
        url: https://hr.example.com/erp/approval
        timeout_seconds: 10
      - name: finance                         # no match: the default route
        url: https://finance.example.com/erp/approval

Endpoint settings are named as their ``ERP_SYNC_ERP_*`` variables, lower-case, without the prefix
(``url``, ``timeout_seconds``, ``retry_codes``, ``duplicate_codes``, ``retry_http_statuses``,
``max_requests_per_second``, ``auth_header_name``, ``auth_header_value_file``, ``hmac_secret_file``,
``signature_header``, ``tls_verify``, ``ca_bundle``, ``client_cert``, ``client_key``, ``oauth2_token_url``,
``oauth2_client_id`` / ``oauth2_client_id_file``, ``oauth2_client_secret_file``, ``oauth2_scope``,
``oauth2_client_auth``…: each route has its own OAuth2 client and token), plus the
per-route delivery settings ``max_in_flight``, ``park_after_seconds``, ``retry_deadline_seconds``,
``retry_backoff_initial_seconds``, ``retry_backoff_max_seconds``, ``retry_after_max_seconds``. The
``ERP_SYNC_*`` values are each route's defaults. Secrets come from files only (``*_file``).

Without a routes file, ``ERP_SYNC_ERP_URL`` is the one default route (named ``default``). With
one, ``ERP_SYNC_ERP_URL`` is optional: when set and the file has no default route, it becomes the
default route ``default``; records that match no route and find no default are dead-lettered
(class ``validation``, code ``NoRoute``).

The file is checked at start; every error names the file, the route and the field, and stops the
start (exit code 2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import errors
from .errors import ConfigError
from .settings import ENV_PREFIX, Settings, read_text_file
from .transform import INT64_MAX, INT64_MIN

ROUTE_DELIVERY_KEYS = ("max_in_flight", "park_after_seconds", "retry_deadline_seconds",
                       "retry_backoff_initial_seconds", "retry_backoff_max_seconds", "retry_after_max_seconds")
"""Route keys that are not endpoint settings but ``ERP_SYNC_<KEY>`` delivery settings."""
INLINE_SECRETS = ("auth_header_value", "hmac_secret", "oauth2_client_secret")
"""Secrets a routes file must not hold inline: it names a file (``*_file``) instead."""
DEFAULT_ROUTE = "default"


def route_keys() -> dict[str, str]:
    """Every route key and the :class:`~consumer.settings.Settings` field it sets."""
    keys = {name[len("erp_"):]: name for name, field in Settings.model_fields.items()
            if name.startswith("erp_") and not field.exclude}
    keys.update({name: name for name in ROUTE_DELIVERY_KEYS})
    for secret in INLINE_SECRETS:
        keys.pop(secret, None)
    return keys


class Match(BaseModel):
    """Which records a route takes: all of the given conditions must hold."""

    model_config = ConfigDict(extra="forbid")

    topics: list[str] | None = None
    flow_codes: list[int] | None = None
    header: dict[str, str] | None = None

    @field_validator("topics", "flow_codes", "header")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if value is not None and len(value) == 0:
            raise ValueError("empty: this route would match nothing (leave the key out to match any)")
        return value

    @field_validator("flow_codes")
    @classmethod
    def _int64(cls, value: list[int] | None) -> list[int] | None:
        for code in value or ():
            if not INT64_MIN <= code <= INT64_MAX:
                raise ValueError(f"{code} is outside a FlowCode's range (a 64-bit signed integer): it would match "
                                 "no record")
        return value


class RouteSpec(BaseModel):
    """One entry of ``routes:`` as written: a name, an optional match, endpoint overrides."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    match: Match | None = None


class RoutesFile(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid")

    routes: list[RouteSpec] = Field(min_length=1)


@dataclass(frozen=True)
class Route:
    """A route at run time: its match and the settings its endpoint is built from.

    Attributes:
        name: the route's name (metric label ``route``; header ``erp_sync.route`` of parked records).
        settings: the process settings with this route's overrides (``erp_url`` and the rest).
        topics, flow_codes, header: the match; None matches any.
    """

    name: str
    settings: Settings
    topics: frozenset[str] | None = None
    flow_codes: frozenset[int] | None = None
    header: tuple[tuple[str, bytes], ...] | None = None

    @property
    def is_default(self) -> bool:
        """A route without match."""
        return self.topics is None and self.flow_codes is None and self.header is None

    def matches(self, topic: str, flow_code: int, headers: Mapping[str, bytes | None] | None) -> bool:
        """Whether a record of ``topic`` with ``flow_code`` and these headers goes to this route."""
        if self.topics is not None and topic not in self.topics:
            return False
        if self.flow_codes is not None and flow_code not in self.flow_codes:
            return False
        if self.header is not None:
            return headers is not None and all(headers.get(k) == v for k, v in self.header)
        return True


class RouteTable:
    """The routes in order; :meth:`route` picks a record's route (first match wins)."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)
        self.by_name = {r.name: r for r in self.routes}
        self.needs_headers = any(r.header is not None for r in self.routes)

    def route(self, topic: str, flow_code: int, headers: Mapping[str, bytes | None] | None = None) -> Route | None:
        """The first route that matches, or None (no route and no default: dead letter ``NoRoute``)."""
        for route in self.routes:
            if route.matches(topic, flow_code, headers):
                return route
        return None

    def require(self, topic: str, flow_code: int, headers: Mapping[str, bytes | None] | None = None) -> Route:
        """The first route that matches.

        Raises:
            consumer.errors.ValidationError: ``NoRoute``: no route matches and there is no default route.
        """
        matched = self.route(topic, flow_code, headers)
        if matched is None:
            raise errors.ValidationError(
                "NoRoute", f"no route matches it (topic {topic}, FlowCode {flow_code}) and there is no default route "
                           "(ERP_SYNC_ROUTES_FILE)")
        return matched


def _where(path: Path, index: int, name: str | None) -> str:
    return f"{ENV_PREFIX}ROUTES_FILE: {path}: route {name!r}" if name else \
        f"{ENV_PREFIX}ROUTES_FILE: {path}: route #{index + 1}"


def _overrides(spec: RouteSpec, keys: Mapping[str, str], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (spec.model_extra or {}).items():
        if key in INLINE_SECRETS:
            raise ConfigError(f"{where}: {key}: secrets are read from a file: use {key}_file")
        if key not in keys:
            raise ConfigError(f"{where}: {key}: unknown field (known: {', '.join(sorted(keys))})")
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        out[keys[key]] = value
    return out


def _route_settings(base: Settings, overrides: Mapping[str, Any], where: str) -> Settings:
    fields = {name: getattr(base, name) for name in Settings.model_fields}
    fields.update(overrides)
    try:
        return Settings(**fields)
    except ValidationError as exc:
        reverse = {v: k for k, v in route_keys().items()}
        problems = []
        for err in exc.errors():
            loc = err.get("loc") or ()
            field = reverse.get(str(loc[0]), str(loc[0])) if loc else ""
            message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            for name, key in reverse.items():  # model-level messages name the ERP_SYNC_ERP_* variable
                message = message.replace(ENV_PREFIX + name.upper(), key)
            problems.append(f"{field}: {message}" if field else message)
        raise ConfigError(f"{where}: {'; '.join(problems)}") from None


def load_routes(settings: Settings) -> RouteTable:
    """The routes of this process: from ``ERP_SYNC_ROUTES_FILE``, or the one default route.

    Raises:
        ConfigError: the file cannot be read or breaks a rule; the message names the file, the route
            and the field. Without a file, a missing ``ERP_SYNC_ERP_URL``.
    """
    if settings.routes_file is None:
        settings.require_erp_url()
        return RouteTable([Route(DEFAULT_ROUTE, settings)])
    path = settings.routes_file
    text = read_text_file(path, f"{ENV_PREFIX}ROUTES_FILE")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{ENV_PREFIX}ROUTES_FILE: {path}: not YAML: {exc}".replace("\n", " ")) from None
    try:
        parsed = RoutesFile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = list(err.get("loc") or ())
        where = f"{ENV_PREFIX}ROUTES_FILE: {path}"
        if len(loc) >= 2 and loc[0] == "routes" and isinstance(loc[1], int):
            entries = raw.get("routes") if isinstance(raw, dict) else None
            entry = entries[loc[1]] if isinstance(entries, list) and loc[1] < len(entries) else None
            name = entry.get("name") if isinstance(entry, dict) else None
            where = _where(path, loc[1], name if isinstance(name, str) else None)
            loc = loc[2:]
        field = ".".join(str(part) for part in loc)
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        raise ConfigError(f"{where}: {field}: {message}" if field else f"{where}: {message}") from None
    keys = route_keys()
    routes: list[Route] = []
    seen: set[str] = set()
    default: str | None = None
    for index, spec in enumerate(parsed.routes):
        where = _where(path, index, spec.name)
        if spec.name in seen:
            raise ConfigError(f"{where}: name: used by an earlier route (names must be unique)")
        seen.add(spec.name)
        if default is not None:
            raise ConfigError(f"{where}: unreachable: the default route {default!r} (no match) before it takes "
                              "every record (put the default route last)")
        route_settings = _route_settings(settings, _overrides(spec, keys, where), where)
        if not route_settings.erp_url:
            raise ConfigError(f"{where}: url: required (no url in the route and ERP_SYNC_ERP_URL is not set)")
        m = spec.match
        routes.append(Route(spec.name, route_settings,
                            frozenset(m.topics) if m and m.topics is not None else None,
                            frozenset(m.flow_codes) if m and m.flow_codes is not None else None,
                            tuple((k, v.encode()) for k, v in m.header.items()) if m and m.header is not None
                            else None))
        if routes[-1].is_default:
            default = spec.name
    if default is None and settings.erp_url:
        if DEFAULT_ROUTE in seen:
            raise ConfigError(f"{ENV_PREFIX}ROUTES_FILE: {path}: route {DEFAULT_ROUTE!r}: name: reserved for the "
                              "default route ERP_SYNC_ERP_URL makes (rename the route, or give it no match)")
        routes.append(Route(DEFAULT_ROUTE, settings))
    return RouteTable(routes)
