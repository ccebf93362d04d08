"""Configuration from environment variables (12-factor), optionally from a file.

Every setting is ``ERP_SYNC_<NAME>``; ``ERP_SYNC_CONFIG_FILE`` may name a dotenv-style file with
the same names (the environment wins over the file). Lists are comma-separated.

librdkafka pass-through: ``ERP_SYNC_KAFKA_<KEY>`` sets librdkafka property ``<key>`` for both the
consumer and the dead-letter producer, ``ERP_SYNC_KAFKA_CONSUMER_<KEY>`` /
``ERP_SYNC_KAFKA_PRODUCER_<KEY>`` for one of them. ``<KEY>`` is the property upper-cased with
``.`` written ``_`` and ``_`` written ``__`` (``ERP_SYNC_KAFKA_SASL_MECHANISM`` →
``sasl.mechanism``), as Confluent's images do.

Secrets (``SecretStr``) never appear in ``repr``, logs or :meth:`Settings.redacted`; each secret can
also be read from a file named by ``<NAME>_FILE`` (a mounted Kubernetes Secret).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .erp.verdict import DEFAULT_RETRY_CODES
from .errors import ConfigError

ENV_PREFIX = "ERP_SYNC_"
KAFKA_PREFIX = ENV_PREFIX + "KAFKA_"
_SECRET_KEY = re.compile(
    r"password|secret|token|credential|key\.pem|ssl_key|private|jaas|oauthbearer\.config|sasl\.username",
    re.IGNORECASE,
)
"""Properties whose values are never printed (librdkafka's own "sensitive" list and more)."""

CommaList = Annotated[tuple[str, ...], NoDecode]


def _comma_list(value: str) -> list[str]:
    """``"a, b,,c"`` → ``["a", "b", "", "c"]`` (empty parts kept: callers decide whether they are errors)."""
    return [part.strip() for part in value.split(",")]


_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]+")


def topic_name_problem(name: str) -> str:
    """Why Kafka would refuse ``name`` as a topic name, or ``""`` (Kafka's ``Topic.validate`` rules)."""
    if name in (".", ".."):
        return "'.' and '..' are not allowed"
    if len(name) > 249:
        return f"{len(name)} characters, at most 249"
    if not _TOPIC_NAME.fullmatch(name):
        bad = sorted({c for c in name if not _TOPIC_NAME.fullmatch(c)})
        return f"only ASCII letters, digits, '.', '_' and '-' (not {' '.join(repr(c) for c in bad)})"
    return ""


def _joined(value: Any, empty: str, twice: str | None = None) -> Any:
    """A comma-separated list, its parts stripped and joined again.

    Raises:
        ValueError: ``empty`` when a part is empty; ``twice`` (when given) when a part is listed twice.
    """
    if not isinstance(value, str):
        return value
    parts = _comma_list(value)
    if not all(parts):
        raise ValueError(empty)
    if twice is not None and len(set(parts)) != len(parts):
        raise ValueError(twice)
    return ",".join(parts)


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part for part in _comma_list(value) if part)
    return value


def env_to_librdkafka(suffix: str) -> str:
    """``SASL_MECHANISM`` → ``sasl.mechanism`` (``__`` → ``_``, ``_`` → ``.``, lower case)."""
    return suffix.lower().replace("__", "\0").replace("_", ".").replace("\0", "_")


def librdkafka_to_env(key: str, prefix: str = KAFKA_PREFIX) -> str:
    """``sasl.mechanism`` → ``ERP_SYNC_KAFKA_SASL_MECHANISM``."""
    return prefix + key.replace("_", "__").replace(".", "_").upper()


def is_secret_key(key: str) -> bool:
    """True for librdkafka keys (or variable names) whose value must never be printed."""
    return bool(_SECRET_KEY.search(key))


class Settings(BaseSettings):
    """All settings; see README "Configuration" for the table.

    Durations are in seconds (float) unless the name says otherwise.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", case_sensitive=False)

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = Field(default="apaas.workflow.completed", min_length=1)
    """The source topic, or several, comma-separated (see :attr:`topics`)."""
    group_id: str = Field(default="apaas-erp-sync", min_length=1)
    dlq_topic: str | None = Field(default=None, description="default <topic>.dlq")
    schema_registry_url: str | None = Field(default=None, repr=False)  # may carry credentials
    schema_registry_basic_auth_user_info: SecretStr | None = None
    schema_registry_basic_auth_user_info_file: Path | None = None
    schema_registry_ca_bundle: Path | None = None
    schema_registry_client_cert: Path | None = None
    schema_registry_client_key: Path | None = None
    schema_registry_allow_incompatible: CommaList = ()
    unknown_status: Literal["dead-letter", "skip"] = "dead-letter"

    erp_url: str | None = Field(default=None, repr=False)  # may carry credentials
    erp_timeout_seconds: float = Field(default=10.0, gt=0, le=3600)
    erp_retry_codes: CommaList = DEFAULT_RETRY_CODES
    erp_duplicate_codes: CommaList = ()
    erp_retry_http_statuses: CommaList = ()
    erp_max_requests_per_second: float | None = Field(default=None, gt=0)
    erp_auth_header_name: str = "Authorization"
    erp_auth_header_value: SecretStr | None = None
    erp_auth_header_value_file: Path | None = None
    erp_hmac_secret: SecretStr | None = None
    erp_hmac_secret_file: Path | None = None
    erp_signature_header: str = "X-Erp-Sync-Signature"
    erp_tls_verify: bool = True
    erp_ca_bundle: Path | None = None
    erp_client_cert: Path | None = None
    erp_client_key: Path | None = None
    erp_oauth2_token_url: str | None = None
    erp_oauth2_client_id: str | None = None
    erp_oauth2_client_id_file: Path | None = None
    erp_oauth2_client_secret: SecretStr | None = None
    erp_oauth2_client_secret_file: Path | None = None
    erp_oauth2_scope: str | None = None
    erp_oauth2_client_auth: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"

    retry_backoff_initial_seconds: float = Field(default=0.5, gt=0)
    retry_backoff_max_seconds: float = Field(default=60.0, gt=0)
    retry_after_max_seconds: float = Field(default=900.0, gt=0)

    max_in_flight: int | Literal["auto"] = "auto"
    """Pushes at once per route: ``auto`` finds what the ERP sustains (delivery/concurrency.py); a number fixes it."""
    max_in_flight_ceiling: int = Field(default=256, ge=1, le=4096)
    max_buffered_records: int = Field(default=5000, ge=1)
    max_value_bytes: int = Field(default=1_048_576, ge=1)
    commit_interval_seconds: float = Field(default=0.2, gt=0)
    shutdown_timeout_seconds: float = Field(default=20.0, gt=0, le=3600)
    lag_refresh_seconds: float = Field(default=5.0, gt=0)
    rejoin_timeout_seconds: float = Field(default=90.0, gt=0)

    routes_file: Path | None = None
    park_after_seconds: float = Field(default=60.0, ge=0)
    retry_topic: str | None = Field(default=None, description="default <topic>.retry; 'none': no parking")
    retry_deadline_seconds: float = Field(default=7 * 24 * 3600.0, gt=0)

    metrics_port: int = Field(default=8000, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"
    log_format: Literal["json", "text", "auto"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    kafka_config: dict[str, str] = Field(default_factory=dict, exclude=True, repr=False)
    kafka_consumer_config: dict[str, str] = Field(default_factory=dict, exclude=True, repr=False)
    kafka_producer_config: dict[str, str] = Field(default_factory=dict, exclude=True, repr=False)
    kafka_config_sources: dict[str, str] = Field(default_factory=dict, exclude=True, repr=False)
    unknown_variables: tuple[str, ...] = Field(default=(), exclude=True, repr=False)
    """One warning per ``ERP_SYNC_*`` name that is no setting, with the closest known name (a typo is not silent)."""

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: Any,
                                   *_: Any, **__: Any) -> tuple[Any, ...]:
        """Only the values :func:`load_settings` gathered (it reads the environment and the file)."""
        return (init_settings,)

    _split_lists = field_validator("erp_retry_codes", "erp_duplicate_codes", "erp_retry_http_statuses",
                                   "schema_registry_allow_incompatible", mode="before")(_split)

    @field_validator("max_in_flight", mode="before")
    @classmethod
    def _in_flight(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        if isinstance(value, str | int) and not isinstance(value, bool):
            try:
                number = int(value)
            except ValueError:
                raise ValueError(f"expected auto or a number of pushes from 1 to 1024, got {value!r}") from None
            if not 1 <= number <= 1024:
                raise ValueError(f"expected auto or a number of pushes from 1 to 1024, got {number}")
            return number
        return value

    @field_validator("topic", mode="before")
    @classmethod
    def _topics(cls, value: Any) -> Any:
        return _joined(value, "an empty topic name in the list", twice="a topic is listed twice")

    @field_validator("kafka_bootstrap_servers", mode="before")
    @classmethod
    def _servers(cls, value: Any) -> Any:
        return _joined(value, "no broker address: set it to the bootstrap brokers, e.g. broker-1:9092,broker-2:9092")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.retry_backoff_max_seconds < self.retry_backoff_initial_seconds:
            raise ValueError(
                "ERP_SYNC_RETRY_BACKOFF_MAX_SECONDS must be >= ERP_SYNC_RETRY_BACKOFF_INITIAL_SECONDS"
            )
        if self.erp_url is not None and not re.fullmatch(r"https?://[^/\s]+(/\S*)?", self.erp_url):
            raise ValueError(f"ERP_SYNC_ERP_URL must be an http:// or https:// URL, got {redact_url(self.erp_url)!r}")
        if self.erp_url is not None and re.match(r"^https?://[^/]*@", self.erp_url):
            raise ValueError(
                "ERP_SYNC_ERP_URL must not carry credentials (user:password@): URLs end up in logs; "
                "put them in ERP_SYNC_ERP_AUTH_HEADER_VALUE or ERP_SYNC_ERP_AUTH_HEADER_VALUE_FILE"
            )
        named = [*(("ERP_SYNC_TOPIC", t) for t in self.topics), ("ERP_SYNC_DLQ_TOPIC", self.dead_letter_topic),
                 *(("ERP_SYNC_RETRY_TOPIC", r) for r in self.retry_topics.values())]
        for variable, name in named:
            if problem := topic_name_problem(name):
                raise ValueError(f"{variable}: {name!r} is not a valid Kafka topic name: {problem}")
        if self.dead_letter_topic in self.topics:
            raise ValueError("ERP_SYNC_DLQ_TOPIC must differ from ERP_SYNC_TOPIC (dead letters would be re-read)")
        if self.retry_topic is not None and self.retry_topic.lower() != "none" and len(self.topics) > 1:
            raise ValueError("ERP_SYNC_RETRY_TOPIC names one retry topic, but ERP_SYNC_TOPIC lists several: each "
                             "source topic parks into <topic>.retry (leave ERP_SYNC_RETRY_TOPIC unset, or 'none')")
        if any(r in self.topics or r == self.dead_letter_topic for r in self.retry_topics.values()):
            raise ValueError("ERP_SYNC_RETRY_TOPIC must differ from ERP_SYNC_TOPIC and ERP_SYNC_DLQ_TOPIC")
        for var, header in (("ERP_SYNC_ERP_AUTH_HEADER_NAME", self.erp_auth_header_name),
                            ("ERP_SYNC_ERP_SIGNATURE_HEADER", self.erp_signature_header)):
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", header):
                raise ValueError(f"{var} is not a valid HTTP header name: {header!r}")
        bad = [v for v in self.erp_retry_http_statuses if not (v.isdigit() and 100 <= int(v) <= 599)]
        if bad:
            raise ValueError(f"ERP_SYNC_ERP_RETRY_HTTP_STATUSES: not HTTP statuses: {','.join(bad)}")
        allow = self.schema_registry_allow_incompatible
        bad = [v for v in allow if not v.isdigit() and v.lower() != "all"]
        if bad or ("all" in (v.lower() for v in allow) and len(allow) > 1):
            raise ValueError("ERP_SYNC_SCHEMA_REGISTRY_ALLOW_INCOMPATIBLE: schema ids (e.g. 12,15) or all, got "
                             f"{','.join(allow)!r}")
        if self.schema_registry_client_key and not self.schema_registry_client_cert:
            raise ValueError("ERP_SYNC_SCHEMA_REGISTRY_CLIENT_KEY needs ERP_SYNC_SCHEMA_REGISTRY_CLIENT_CERT")
        if self.schema_registry_url and re.match(r"^https?://[^/]*@", self.schema_registry_url) and (
                self.schema_registry_basic_auth_user_info or self.schema_registry_basic_auth_user_info_file):
            raise ValueError("ERP_SYNC_SCHEMA_REGISTRY_URL carries user:password@ and "
                             "ERP_SYNC_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO is set too: keep one (the variable)")
        self._check_oauth2()
        return self

    def _check_oauth2(self) -> None:
        given = [name for name, value in (
            ("ERP_SYNC_ERP_OAUTH2_CLIENT_ID", self.erp_oauth2_client_id or self.erp_oauth2_client_id_file),
            ("ERP_SYNC_ERP_OAUTH2_CLIENT_SECRET", self.erp_oauth2_client_secret or self.erp_oauth2_client_secret_file),
            ("ERP_SYNC_ERP_OAUTH2_SCOPE", self.erp_oauth2_scope)) if value]
        if self.erp_oauth2_token_url is None:
            if given:
                raise ValueError(f"{given[0]} is set but ERP_SYNC_ERP_OAUTH2_TOKEN_URL is not (the token endpoint)")
            return
        if not re.fullmatch(r"https?://[^/\s@]+(/\S*)?", self.erp_oauth2_token_url):
            raise ValueError("ERP_SYNC_ERP_OAUTH2_TOKEN_URL must be an http:// or https:// URL without "
                             f"user:password@, got {redact_url(self.erp_oauth2_token_url)!r}")
        for name in ("ERP_SYNC_ERP_OAUTH2_CLIENT_ID", "ERP_SYNC_ERP_OAUTH2_CLIENT_SECRET"):
            if name not in given:
                raise ValueError(f"{name} (or {name}_FILE): required with ERP_SYNC_ERP_OAUTH2_TOKEN_URL")
        if self.erp_auth_header_name.lower() == "authorization" and (
                self.erp_auth_header_value or self.erp_auth_header_value_file):
            raise ValueError("ERP_SYNC_ERP_AUTH_HEADER_VALUE sets the Authorization header that OAuth2 "
                             "(ERP_SYNC_ERP_OAUTH2_TOKEN_URL) sets: keep one, or give the static header "
                             "another name (ERP_SYNC_ERP_AUTH_HEADER_NAME)")

    @property
    def incompatible_schemas_allowed(self) -> frozenset[int] | None:
        """Registry schema ids allowed although they change a field's meaning; None: every id (``all``)."""
        if any(v.lower() == "all" for v in self.schema_registry_allow_incompatible):
            return None
        return frozenset(int(v) for v in self.schema_registry_allow_incompatible)

    def schema_registry_user_info(self) -> str | None:
        """The registry's basic auth ``user:password``, from the variable or its ``_FILE`` (stripped)."""
        return _secret_value(self.schema_registry_basic_auth_user_info,
                             self.schema_registry_basic_auth_user_info_file,
                             "ERP_SYNC_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO_FILE")

    def oauth2_client_id(self) -> str | None:
        """The OAuth2 client id toward the ERP, from the variable or its ``_FILE``."""
        if self.erp_oauth2_client_id is not None:
            return self.erp_oauth2_client_id
        return _secret_value(None, self.erp_oauth2_client_id_file, "ERP_SYNC_ERP_OAUTH2_CLIENT_ID_FILE")

    def oauth2_client_secret(self) -> str | None:
        """The OAuth2 client secret toward the ERP, from the variable or its ``_FILE``."""
        return _secret_value(self.erp_oauth2_client_secret, self.erp_oauth2_client_secret_file,
                             "ERP_SYNC_ERP_OAUTH2_CLIENT_SECRET_FILE")

    @property
    def retry_http_statuses(self) -> frozenset[int]:
        """Extra HTTP statuses that mean retry (``ERP_SYNC_ERP_RETRY_HTTP_STATUSES``)."""
        return frozenset(int(v) for v in self.erp_retry_http_statuses)

    @property
    def adaptive_in_flight(self) -> bool:
        """Whether each route finds its concurrency (``ERP_SYNC_MAX_IN_FLIGHT=auto``)."""
        return self.max_in_flight == "auto"

    @property
    def in_flight_limit(self) -> int:
        """The fixed concurrency, or the highest ``auto`` may reach (the connection pool's size)."""
        return self.max_in_flight_ceiling if isinstance(self.max_in_flight, str) else self.max_in_flight

    @property
    def topics(self) -> tuple[str, ...]:
        """The source topics (``ERP_SYNC_TOPIC`` may list several, comma-separated)."""
        return tuple(self.topic.split(","))

    @property
    def primary_topic(self) -> str:
        """The first source topic: it names the default dead-letter topic; the tools read it."""
        return self.topics[0]

    @property
    def dead_letter_topic(self) -> str:
        """The DLQ topic: ``ERP_SYNC_DLQ_TOPIC`` or ``<first topic>.dlq``."""
        return self.dlq_topic or f"{self.primary_topic}.dlq"

    def retry_topic_of(self, topic: str) -> str | None:
        """The retry topic a source topic parks into, or None when parking is off.

        ``<topic>.retry``; ``ERP_SYNC_RETRY_TOPIC`` names it for a single source topic; ``none`` turns
        parking off (records the ERP keeps answering *retry* then wait in place, as before).
        """
        if self.retry_topic is not None and self.retry_topic.lower() == "none":
            return None
        if self.retry_topic is not None and len(self.topics) == 1:
            return self.retry_topic
        return f"{topic}.retry"

    @property
    def retry_topics(self) -> dict[str, str]:
        """Source topic → the retry topic it parks into (empty with ``ERP_SYNC_RETRY_TOPIC=none``)."""
        return {t: r for t in self.topics if (r := self.retry_topic_of(t)) is not None}

    @property
    def dead_letter_max_bytes(self) -> int:
        """The largest dead letter in bytes: any record the consumer can fetch, plus 64 KiB of headers.

        That is the consumer's ``receive.message.max.bytes`` (librdkafka's default 100,000,000) + 65,536,
        within librdkafka's limit of 10**9.
        """
        receive = int(self.consumer_config().get("receive.message.max.bytes", 100_000_000))
        return max(1_000_000, min(1_000_000_000, receive + 65_536))

    def require_erp_url(self) -> None:
        """Refuse a start without an ERP endpoint (``run`` and ``check-config`` alike).

        Raises:
            ConfigError: ``ERP_SYNC_ERP_URL`` is not set.
        """
        if not self.erp_url:
            raise ConfigError("ERP_SYNC_ERP_URL: required (the ERP endpoint, e.g. https://erp.example.com/apaas/push)")

    def auth_header_value(self) -> str | None:
        """The static ERP auth header's value, from the variable or its ``_FILE`` (stripped)."""
        return _secret_value(self.erp_auth_header_value, self.erp_auth_header_value_file,
                             "ERP_SYNC_ERP_AUTH_HEADER_VALUE_FILE")

    def hmac_secret(self) -> bytes | None:
        """The HMAC-SHA256 signing key, from the variable or its ``_FILE``."""
        value = _secret_value(self.erp_hmac_secret, self.erp_hmac_secret_file, "ERP_SYNC_ERP_HMAC_SECRET_FILE")
        return value.encode() if value is not None else None

    def consumer_config(self) -> dict[str, Any]:
        """Librdkafka configuration of the consumer: our defaults, then the pass-through."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.kafka_bootstrap_servers,
            "group.id": self.group_id,
            "enable.auto.commit": False,  # we commit, after the verdict
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",  # a new group misses nothing
            "enable.partition.eof": True,  # tells "caught up" (for --exit-when-idle, lag)
            "isolation.level": "read_committed",
            "client.id": f"apaas-erp-sync-{os.uname().nodename}",
            # the prefetch queue (RSS): 2 MB is 0.6 s of records at the fastest rate measured (11,000
            # records/s of 300 bytes) and costs nothing at 5 and 50 ms; against 8 MB it saves 12 MB of
            # peak RSS and about 5 % of the 0 ms rate (bench/, issue 14); librdkafka's default is 64 MB
            "queued.max.messages.kbytes": 2048,
        }
        conf.update(self.kafka_config)
        conf.update(self.kafka_consumer_config)
        return conf

    def producer_config(self) -> dict[str, Any]:
        """Librdkafka configuration of the dead-letter producer."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.kafka_bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": 10000,  # a failing dead letter surfaces within 10 s, then retries
            # a dead letter carries any value the consumer can receive, plus headers
            "message.max.bytes": self.dead_letter_max_bytes,
            "topic.metadata.propagation.max.ms": 5000,  # a missing DLQ topic is reported within 5 s
            "client.id": f"apaas-erp-sync-dlq-{os.uname().nodename}",
        }
        conf.update(self.kafka_config)
        conf.update(self.kafka_producer_config)
        return conf

    def redacted(self) -> dict[str, Any]:
        """Every setting with secrets masked, for ``check-config`` and the start-up log line."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            field = type(self).model_fields.get(name)
            if field is not None and field.exclude:
                continue
            if isinstance(value, SecretStr) or (value is not None and is_secret_key(name) and "file" not in name):
                value = "**********" if value is not None else None
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = ",".join(value)
            out[ENV_PREFIX + name.upper()] = value
        out[ENV_PREFIX + "DLQ_TOPIC"] = self.dead_letter_topic
        out[ENV_PREFIX + "RETRY_TOPIC"] = ",".join(self.retry_topics.values()) or "none"  # resolved, as DLQ_TOPIC
        out["ERP_SYNC_ERP_URL"] = redact_url(self.erp_url)
        out["ERP_SYNC_SCHEMA_REGISTRY_URL"] = redact_url(self.schema_registry_url)
        out["ERP_SYNC_ERP_OAUTH2_TOKEN_URL"] = redact_url(self.erp_oauth2_token_url)  # a URL, not a token
        for source, conf in (("", self.kafka_config), ("CONSUMER_", self.kafka_consumer_config),
                             ("PRODUCER_", self.kafka_producer_config)):
            for key, val in conf.items():
                out[librdkafka_to_env(key, KAFKA_PREFIX + source)] = "**********" if is_secret_key(key) else val
        return out


def redact_url(url: str | None) -> str | None:
    """Mask any userinfo (``scheme://user:password@host``, ``scheme://token@host``) and query string."""
    if url is None:
        return None
    url = re.sub(r"://[^/@]*@", "://****@", url)
    return re.sub(r"\?.*$", "?****", url)


def read_text_file(path: str | Path, variable: str) -> str:
    """The text of a file a setting names (UTF-8).

    Raises:
        ConfigError: naming ``variable`` and the file: it cannot be read (missing, a directory, no
            permission) or is not UTF-8 text (a binary key: write it as text, hex or base64).
    """
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{variable}: {path} is not UTF-8 text (byte {exc.start}: 0x{exc.object[exc.start]:02x}); "
                          "write it as text (a binary key as hex or base64)") from None


def _secret_value(secret: SecretStr | None, path: Path | None, var: str) -> str | None:
    if secret is not None:
        return secret.get_secret_value()
    if path is None:
        return None
    return read_text_file(path, var).strip()


def _read_config_file(path: str) -> dict[str, str]:
    """Read a dotenv-style file: ``NAME=value`` lines, ``#`` comments, optional quotes."""
    values: dict[str, str] = {}
    lines = read_text_file(path, "ERP_SYNC_CONFIG_FILE").splitlines()
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):]
        if "=" not in line:
            raise ConfigError(f"ERP_SYNC_CONFIG_FILE: {path}:{number}: expected NAME=value")
        name, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip().upper()] = value
    return values


_OWN_KAFKA_VARS = {KAFKA_PREFIX + "BOOTSTRAP_SERVERS"}

DEVELOPMENT_VARIABLES = frozenset({
    ENV_PREFIX + "VENV", ENV_PREFIX + "CACHE_DIR",  # scripts/bootstrap.sh, dev/kafka.sh
    ENV_PREFIX + "IMAGE", ENV_PREFIX + "PODMAN", ENV_PREFIX + "POLICY_RC_D",  # scripts/image-check.sh, bootstrap.sh
    ENV_PREFIX + "TEST_KAFKA", ENV_PREFIX + "TEST_KAFKA_IMAGE", ENV_PREFIX + "TEST_KAFKA_PORT",  # the tests' broker
    ENV_PREFIX + "TEST_SESSION",
})
"""``ERP_SYNC_*`` names the project's scripts and tests read: not settings, never warned about."""


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings` from the environment (and ``ERP_SYNC_CONFIG_FILE``).

    Args:
        environ: the variables to read; defaults to ``os.environ``.
        overrides: field values that win over everything (command-line options).

    Raises:
        ConfigError: a variable is invalid; the message names it.
    """
    env = {k.upper(): v for k, v in (os.environ if environ is None else environ).items()}
    merged: dict[str, str] = {}
    if env.get(ENV_PREFIX + "CONFIG_FILE"):
        merged.update(_read_config_file(env[ENV_PREFIX + "CONFIG_FILE"]))
    merged.update({k: v for k, v in env.items() if k.startswith(ENV_PREFIX)})

    kafka: dict[str, str] = {}
    consumer: dict[str, str] = {}
    producer: dict[str, str] = {}
    sources: dict[str, str] = {}
    fields: dict[str, Any] = {}
    for name, value in merged.items():
        if name in _OWN_KAFKA_VARS or not name.startswith(KAFKA_PREFIX):
            short = name[len(ENV_PREFIX):].lower()
            if short in Settings.model_fields and not Settings.model_fields[short].exclude:
                fields[short] = value
            continue
        suffix = name[len(KAFKA_PREFIX):]
        if suffix.startswith("CONSUMER_"):
            target, key = consumer, env_to_librdkafka(suffix[len("CONSUMER_"):])
        elif suffix.startswith("PRODUCER_"):
            target, key = producer, env_to_librdkafka(suffix[len("PRODUCER_"):])
        else:
            target, key = kafka, env_to_librdkafka(suffix)
        target[key] = value
        sources[key] = name
    fields.update(overrides)
    try:
        settings = Settings(
            **{**fields, "kafka_config": kafka, "kafka_consumer_config": consumer,
               "kafka_producer_config": producer, "kafka_config_sources": sources,
               "unknown_variables": _unknown(merged)}
        )
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None
    return settings


def known_variables() -> list[str]:
    """Every ``ERP_SYNC_*`` name that is a setting (the ``ERP_SYNC_KAFKA_*`` pass-through aside)."""
    names = [ENV_PREFIX + name.upper() for name, field in Settings.model_fields.items() if not field.exclude]
    return [*names, ENV_PREFIX + "CONFIG_FILE"]


def _unknown(variables: Mapping[str, str]) -> tuple[str, ...]:
    """``ERP_SYNC_*`` names that mean nothing, as ``"NAME is not a setting: ignored (did you mean CLOSEST?)"``."""
    known = known_variables()
    out = []
    for name in sorted(variables):
        if name in known or name in DEVELOPMENT_VARIABLES or (name.startswith(KAFKA_PREFIX)
                                                             and name not in _OWN_KAFKA_VARS):
            continue
        close = difflib.get_close_matches(name, [*known, *DEVELOPMENT_VARIABLES], n=1, cutoff=0.6)
        out.append(f"{name} is not a setting: ignored" + (f" (did you mean {close[0]}?)" if close else ""))
    return tuple(out)


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = err.get("loc") or ()
        name = ENV_PREFIX + str(loc[0]).upper() if loc else "configuration"
        message = err.get("msg", "invalid").removeprefix("Value error, ")
        parts.append(f"{name}: {message}" if loc else message)
    return "; ".join(parts)


def validate_kafka_config(settings: Settings) -> None:
    """Check every librdkafka property by building (and closing) a client, without connecting.

    Raises:
        ConfigError: naming the variable of an unknown or invalid property.
    """
    from confluent_kafka import Consumer, KafkaException, Producer

    for build, conf in ((Consumer, settings.consumer_config()), (Producer, settings.producer_config())):
        conf = {**conf, "log_level": 0}  # validation only: no connection noise
        try:
            client = build(conf)
        except (KafkaException, ValueError, TypeError) as exc:
            arg = exc.args[0] if exc.args else exc
            text = arg.str() if hasattr(arg, "str") else str(arg)
            match = re.search(r'property:? "?([a-zA-Z0-9._-]+)"?', text)
            key = match.group(1) if match else None
            var = settings.kafka_config_sources.get(key or "", librdkafka_to_env(key) if key else "ERP_SYNC_KAFKA_*")
            raise ConfigError(f"{var}: {text}") from None
        if isinstance(client, Consumer):
            client.close()
