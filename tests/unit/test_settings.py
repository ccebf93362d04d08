"""Configuration (consumer/settings.py): defaults, pass-through, validation, files and secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from consumer.errors import ConfigError
from consumer.settings import (
    Settings,
    env_to_librdkafka,
    is_secret_key,
    librdkafka_to_env,
    load_settings,
    redact_url,
    validate_kafka_config,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
ERP_SYNC = Path(sys.executable).parent / "erp-sync"

FAMILIES = ("InternalError", "RequestLimitExceeded", "ResourceUnavailable", "ResourceInsufficient",
            "ServiceUnavailable", "AuthFailure", "UnauthorizedOperation", "IpNotInWhitelist")

SECRET_ENV = {
    "ERP_SYNC_ERP_AUTH_HEADER_VALUE": "Bearer sekrit-123",
    "ERP_SYNC_ERP_HMAC_SECRET": "hm4c-sekrit",
    "ERP_SYNC_KAFKA_SASL_PASSWORD": "kafka-sekrit",
    "ERP_SYNC_ERP_URL": "https://erp.example/x?token=qsekrit",  # credentials in userinfo are refused
}
SECRETS = ("sekrit-123", "hm4c-sekrit", "kafka-sekrit", "urlsekrit", "qsekrit")


def config_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    return str(info.value)


# --- defaults -------------------------------------------------------------------------------


def test_defaults() -> None:
    s = load_settings({})
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert s.topic == "apaas.workflow.completed"
    assert s.group_id == "apaas-erp-sync"
    assert s.dead_letter_topic == "apaas.workflow.completed.dlq"
    assert s.schema_registry_url is None
    assert s.erp_url is None
    assert s.erp_timeout_seconds == 10.0
    assert s.erp_retry_codes == FAMILIES
    assert s.erp_duplicate_codes == ()
    assert s.erp_auth_header_name == "Authorization"
    assert s.erp_tls_verify is True
    assert s.retry_backoff_initial_seconds == 0.5
    assert s.retry_backoff_max_seconds == 60.0
    assert s.retry_after_max_seconds == 900.0
    assert s.metrics_port == 8000
    assert (s.max_in_flight, s.adaptive_in_flight, s.in_flight_limit) == ("auto", True, 256)
    assert s.auth_header_value() is None
    assert s.hmac_secret() is None
    assert (s.kafka_config, s.kafka_consumer_config, s.kafka_producer_config) == ({}, {}, {})


def test_dlq_follows_a_custom_topic() -> None:
    assert load_settings({"ERP_SYNC_TOPIC": "t1"}).dead_letter_topic == "t1.dlq"
    s = load_settings({"ERP_SYNC_TOPIC": "t1", "ERP_SYNC_DLQ_TOPIC": "dead"})
    assert s.dead_letter_topic == "dead"
    assert s.redacted()["ERP_SYNC_DLQ_TOPIC"] == "dead"
    assert load_settings({"ERP_SYNC_TOPIC": "t2"}).redacted()["ERP_SYNC_DLQ_TOPIC"] == "t2.dlq"


def test_unrelated_and_lower_case_variables() -> None:
    s = load_settings({"erp_sync_topic": "lower", "OTHER_TOPIC": "x", "ERP_SYNC_NOT_A_SETTING": "y"})
    assert s.topic == "lower"


def test_overrides_win() -> None:
    assert load_settings({"ERP_SYNC_TOPIC": "env"}, topic="cli").topic == "cli"


def test_comma_lists_with_spaces() -> None:
    s = load_settings({"ERP_SYNC_ERP_RETRY_CODES": " InternalError , LimitExceeded ,, FailedOperation.Busy ,",
                       "ERP_SYNC_ERP_DUPLICATE_CODES": "FailedOperation.Duplicate"})
    assert s.erp_retry_codes == ("InternalError", "LimitExceeded", "FailedOperation.Busy")
    assert s.erp_duplicate_codes == ("FailedOperation.Duplicate",)
    assert load_settings({"ERP_SYNC_ERP_RETRY_CODES": ""}).erp_retry_codes == ()
    r = s.redacted()
    assert r["ERP_SYNC_ERP_RETRY_CODES"] == "InternalError,LimitExceeded,FailedOperation.Busy"
    assert r["ERP_SYNC_ERP_DUPLICATE_CODES"] == "FailedOperation.Duplicate"


# --- librdkafka pass-through ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "key"),
    [("SASL_MECHANISM", "sasl.mechanism"), ("SECURITY_PROTOCOL", "security.protocol"),
     ("LOG__LEVEL", "log_level"), ("SSL_KEY_PASSWORD", "ssl.key.password"),
     ("SASL_OAUTHBEARER_CLIENT_ID", "sasl.oauthbearer.client.id"), ("A__B_C", "a_b.c")],
)
def test_env_to_librdkafka(suffix: str, key: str) -> None:
    assert env_to_librdkafka(suffix) == key
    assert librdkafka_to_env(key) == "ERP_SYNC_KAFKA_" + suffix


def test_pass_through_lands_in_client_configs() -> None:
    s = load_settings({
        "ERP_SYNC_KAFKA_SASL_MECHANISM": "PLAIN",
        "ERP_SYNC_KAFKA_LOG__LEVEL": "3",
        "ERP_SYNC_KAFKA_CONSUMER_FETCH_MAX_BYTES": "1000000",
        "ERP_SYNC_KAFKA_PRODUCER_LINGER_MS": "50",
        "ERP_SYNC_KAFKA_BOOTSTRAP_SERVERS": "b1:9092,b2:9092",
    })
    assert s.kafka_bootstrap_servers == "b1:9092,b2:9092"
    assert s.kafka_config == {"sasl.mechanism": "PLAIN", "log_level": "3"}
    assert s.kafka_consumer_config == {"fetch.max.bytes": "1000000"}
    assert s.kafka_producer_config == {"linger.ms": "50"}
    assert s.kafka_config_sources == {
        "sasl.mechanism": "ERP_SYNC_KAFKA_SASL_MECHANISM", "log_level": "ERP_SYNC_KAFKA_LOG__LEVEL",
        "fetch.max.bytes": "ERP_SYNC_KAFKA_CONSUMER_FETCH_MAX_BYTES", "linger.ms": "ERP_SYNC_KAFKA_PRODUCER_LINGER_MS",
    }
    c = s.consumer_config()
    p = s.producer_config()
    assert c["bootstrap.servers"] == p["bootstrap.servers"] == "b1:9092,b2:9092"
    assert c["sasl.mechanism"] == p["sasl.mechanism"] == "PLAIN"
    assert c["log_level"] == p["log_level"] == "3"
    assert c["fetch.max.bytes"] == "1000000" and "fetch.max.bytes" not in p
    assert p["linger.ms"] == "50" and "linger.ms" not in c
    assert c["group.id"] == "apaas-erp-sync"
    assert "bootstrap.servers" not in s.kafka_config


def test_consumer_defaults_and_overrides() -> None:
    c = load_settings({}).consumer_config()
    assert c["auto.offset.reset"] == "earliest"
    assert c["enable.auto.commit"] is False
    assert c["enable.auto.offset.store"] is False
    assert c["isolation.level"] == "read_committed"
    p = load_settings({}).producer_config()
    assert (p["acks"], p["enable.idempotence"], p["linger.ms"]) == ("all", True, 5)
    s = load_settings({"ERP_SYNC_KAFKA_AUTO_OFFSET_RESET": "latest",
                       "ERP_SYNC_KAFKA_CONSUMER_ENABLE_AUTO_COMMIT": "true",
                       "ERP_SYNC_KAFKA_PRODUCER_ACKS": "1"})
    c = s.consumer_config()
    assert (c["auto.offset.reset"], c["enable.auto.commit"]) == ("latest", "true")
    assert s.producer_config()["acks"] == "1"
    # consumer-specific beats the shared pass-through
    s = load_settings({"ERP_SYNC_KAFKA_AUTO_OFFSET_RESET": "latest",
                       "ERP_SYNC_KAFKA_CONSUMER_AUTO_OFFSET_RESET": "error"})
    assert s.consumer_config()["auto.offset.reset"] == "error"


def test_validate_kafka_config_accepts_defaults_and_pass_through() -> None:
    validate_kafka_config(load_settings({"ERP_SYNC_KAFKA_SASL_MECHANISM": "PLAIN",
                                         "ERP_SYNC_KAFKA_CONSUMER_FETCH_MAX_BYTES": "1000000"}))


@pytest.mark.parametrize("var", ["ERP_SYNC_KAFKA_BOGUS_PROPERTY", "ERP_SYNC_KAFKA_CONSUMER_BOGUS_PROPERTY",
                                 "ERP_SYNC_KAFKA_PRODUCER_BOGUS_PROPERTY"])
def test_validate_kafka_config_names_an_unknown_property(var: str) -> None:
    s = load_settings({var: "1"})
    with pytest.raises(ConfigError) as info:
        validate_kafka_config(s)
    assert str(info.value).startswith(var + ": ")
    assert "bogus.property" in str(info.value)


def test_validate_kafka_config_names_an_invalid_value() -> None:
    s = load_settings({"ERP_SYNC_KAFKA_AUTO_OFFSET_RESET": "sometimes"})
    with pytest.raises(ConfigError) as info:
        validate_kafka_config(s)
    assert str(info.value).startswith("ERP_SYNC_KAFKA_AUTO_OFFSET_RESET: ")


# --- bad values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "var"),
    [
        ({"ERP_SYNC_ERP_TIMEOUT_SECONDS": "abc"}, "ERP_SYNC_ERP_TIMEOUT_SECONDS"),
        ({"ERP_SYNC_ERP_TIMEOUT_SECONDS": "0"}, "ERP_SYNC_ERP_TIMEOUT_SECONDS"),
        ({"ERP_SYNC_MAX_IN_FLIGHT": "0"}, "ERP_SYNC_MAX_IN_FLIGHT"),
        ({"ERP_SYNC_MAX_IN_FLIGHT": "many"}, "ERP_SYNC_MAX_IN_FLIGHT"),
        ({"ERP_SYNC_METRICS_PORT": "70000"}, "ERP_SYNC_METRICS_PORT"),
        ({"ERP_SYNC_LOG_LEVEL": "chatty"}, "ERP_SYNC_LOG_LEVEL"),
        ({"ERP_SYNC_ERP_TLS_VERIFY": "perhaps"}, "ERP_SYNC_ERP_TLS_VERIFY"),
        ({"ERP_SYNC_RETRY_BACKOFF_INITIAL_SECONDS": "5", "ERP_SYNC_RETRY_BACKOFF_MAX_SECONDS": "1"},
         "ERP_SYNC_RETRY_BACKOFF_MAX_SECONDS"),
        ({"ERP_SYNC_ERP_URL": "ftp://erp.example/x"}, "ERP_SYNC_ERP_URL"),
        ({"ERP_SYNC_ERP_URL": "erp.example"}, "ERP_SYNC_ERP_URL"),
        ({"ERP_SYNC_ERP_URL": "https://"}, "ERP_SYNC_ERP_URL"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], var: str) -> None:
    assert config_error(env).startswith(var)


def test_two_bad_values_are_both_named() -> None:
    message = config_error({"ERP_SYNC_ERP_TIMEOUT_SECONDS": "abc", "ERP_SYNC_MAX_IN_FLIGHT": "0"})
    assert "ERP_SYNC_ERP_TIMEOUT_SECONDS: " in message
    assert "ERP_SYNC_MAX_IN_FLIGHT: " in message


def test_good_values_are_parsed() -> None:
    s = load_settings({"ERP_SYNC_ERP_TIMEOUT_SECONDS": "2.5", "ERP_SYNC_MAX_IN_FLIGHT": "4",
                       "ERP_SYNC_ERP_URL": "http://127.0.0.1:8080/push", "ERP_SYNC_LOG_LEVEL": "debug",
                       "ERP_SYNC_ERP_TLS_VERIFY": "false", "ERP_SYNC_RETRY_BACKOFF_INITIAL_SECONDS": "1",
                       "ERP_SYNC_RETRY_BACKOFF_MAX_SECONDS": "1"})
    assert (s.erp_timeout_seconds, s.max_in_flight, s.erp_url, s.log_level, s.erp_tls_verify) == (
        2.5, 4, "http://127.0.0.1:8080/push", "DEBUG", False)
    assert (s.adaptive_in_flight, s.in_flight_limit) == (False, 4)
    auto = load_settings({"ERP_SYNC_MAX_IN_FLIGHT": "AUTO", "ERP_SYNC_MAX_IN_FLIGHT_CEILING": "64"})
    assert (auto.adaptive_in_flight, auto.in_flight_limit) == (True, 64)


def test_bad_url_error_does_not_leak_credentials() -> None:
    message = config_error({"ERP_SYNC_ERP_URL": "ftp://user:urlsekrit@erp.example/x?token=qsekrit"})
    assert message.startswith("ERP_SYNC_ERP_URL")
    assert "urlsekrit" not in message
    assert "qsekrit" not in message


# --- config file ----------------------------------------------------------------------------


def test_config_file_and_environment_wins(tmp_path: Path) -> None:
    f = tmp_path / "erp-sync.env"
    f.write_text(
        "# comment\n"
        "\n"
        "ERP_SYNC_TOPIC=from-file\n"
        "export ERP_SYNC_GROUP_ID = 'grp'\n"
        'ERP_SYNC_ERP_URL="https://erp.example/push?a=b"\n'
        "ERP_SYNC_KAFKA_SASL_MECHANISM=SCRAM-SHA-256\n"
        "erp_sync_metrics_port=9100\n",
        encoding="utf-8",
    )
    s = load_settings({"ERP_SYNC_CONFIG_FILE": str(f), "ERP_SYNC_TOPIC": "from-env"})
    assert s.topic == "from-env"
    assert s.group_id == "grp"
    assert s.erp_url == "https://erp.example/push?a=b"
    assert s.metrics_port == 9100
    assert s.kafka_config == {"sasl.mechanism": "SCRAM-SHA-256"}
    assert s.dead_letter_topic == "from-env.dlq"


def test_config_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.env"
    assert config_error({"ERP_SYNC_CONFIG_FILE": str(missing)}).startswith(
        f"ERP_SYNC_CONFIG_FILE: cannot read {missing}")
    bad = tmp_path / "bad.env"
    bad.write_text("ERP_SYNC_TOPIC=x\njust words\n", encoding="utf-8")
    assert config_error({"ERP_SYNC_CONFIG_FILE": str(bad)}) == (
        f"ERP_SYNC_CONFIG_FILE: {bad}:2: expected NAME=value")


# --- secrets --------------------------------------------------------------------------------


def test_credentials_in_the_erp_url_are_refused() -> None:
    message = config_error({"ERP_SYNC_ERP_URL": "https://user:urlsekrit@erp.example/x"})
    assert message.startswith("ERP_SYNC_ERP_URL must not carry credentials")
    assert "urlsekrit" not in message


def test_secrets_are_never_printed() -> None:
    s = load_settings(SECRET_ENV)
    assert s.auth_header_value() == "Bearer sekrit-123"
    assert s.hmac_secret() == b"hm4c-sekrit"
    assert s.consumer_config()["sasl.password"] == "kafka-sekrit"
    assert s.erp_url == SECRET_ENV["ERP_SYNC_ERP_URL"]
    redacted = s.redacted()
    for text in (repr(s), str(s), json.dumps(redacted), repr(redacted)):
        for secret in SECRETS:
            assert secret not in text
    assert redacted["ERP_SYNC_ERP_URL"] == "https://erp.example/x?****"
    assert redacted["ERP_SYNC_ERP_AUTH_HEADER_VALUE"] == "**********"
    assert redacted["ERP_SYNC_ERP_HMAC_SECRET"] == "**********"
    assert redacted["ERP_SYNC_KAFKA_SASL_PASSWORD"] == "**********"


def test_redacted_keeps_plain_pass_through_values() -> None:
    s = load_settings({"ERP_SYNC_KAFKA_SASL_MECHANISM": "PLAIN", "ERP_SYNC_KAFKA_CONSUMER_SSL_KEY_PEM": "---x---",
                       "ERP_SYNC_KAFKA_PRODUCER_SASL_JAAS_CONFIG": "jaas-sekrit"})
    r = s.redacted()
    assert r["ERP_SYNC_KAFKA_SASL_MECHANISM"] == "PLAIN"
    assert r["ERP_SYNC_KAFKA_CONSUMER_SSL_KEY_PEM"] == "**********"
    assert r["ERP_SYNC_KAFKA_PRODUCER_SASL_JAAS_CONFIG"] == "**********"
    assert "jaas-sekrit" not in json.dumps(r) and "---x---" not in json.dumps(r)


@pytest.mark.parametrize(
    ("key", "secret"),
    [("sasl.password", True), ("ssl.key.password", True), ("sasl.oauthbearer.client.secret", True),
     ("ssl.key.pem", True), ("sasl.jaas.config", True), ("ERP_SYNC_ERP_HMAC_SECRET", True),
     ("sasl.mechanism", False), ("bootstrap.servers", False), ("sasl.username", True)],
)
def test_is_secret_key(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


@pytest.mark.parametrize(
    ("url", "expected"),
    [(None, None), ("https://erp.example/x", "https://erp.example/x"),
     ("https://u:p@erp.example/x", "https://****@erp.example/x"),
     ("https://erp.example/x?token=t&b=c", "https://erp.example/x?****"),
     ("http://u:p@h:8080/x?q=1", "http://****@h:8080/x?****")],
)
def test_redact_url(url: str | None, expected: str | None) -> None:
    assert redact_url(url) == expected


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ERP_SYNC_")}
    env.update(extra)
    return env


def test_check_config_prints_no_secret() -> None:
    assert ERP_SYNC.exists()
    proc = subprocess.run([str(ERP_SYNC), "check-config"], env=clean_env(**SECRET_ENV), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    for secret in SECRETS:
        assert secret not in output
    printed = json.loads(proc.stdout)
    assert printed["ERP_SYNC_ERP_URL"] == "https://erp.example/x?****"
    assert printed["ERP_SYNC_KAFKA_SASL_PASSWORD"] == "**********"
    assert printed["ERP_SYNC_ERP_AUTH_HEADER_VALUE"] == "**********"
    assert printed["ERP_SYNC_ERP_HMAC_SECRET"] == "**********"


def test_check_config_missing_secret_file_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-secret"
    proc = subprocess.run([str(ERP_SYNC), "check-config"], cwd=REPO_ROOT, capture_output=True, text=True,
                          env=clean_env(ERP_SYNC_ERP_URL="https://erp.example/x",
                                        ERP_SYNC_ERP_HMAC_SECRET_FILE=str(missing)), timeout=60)
    assert proc.returncode == 2
    assert "ERP_SYNC_ERP_HMAC_SECRET_FILE" in proc.stderr


@pytest.mark.parametrize("command", ["check-config", "run"])
@pytest.mark.parametrize("servers", ["", "  ", "b1:9092,,b2:9092"])
def test_an_empty_bootstrap_server_list_is_refused_by_check_config_and_run(command: str, servers: str) -> None:
    """Issue "on-call defects" 4: check-config accepted it and run idled forever."""
    proc = subprocess.run([str(ERP_SYNC), command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env=clean_env(ERP_SYNC_ERP_URL="https://erp.example/x",
                                        ERP_SYNC_KAFKA_BOOTSTRAP_SERVERS=servers, ERP_SYNC_METRICS_PORT="0"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "erp-sync: configuration error: ERP_SYNC_KAFKA_BOOTSTRAP_SERVERS: no broker address: set it to the "
        "bootstrap brokers, e.g. broker-1:9092,broker-2:9092")


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_check_config_and_run_agree_that_the_erp_url_is_required(command: str) -> None:
    """Issue "on-call defects" 5: check-config warned and exited 0 where run exited 2."""
    proc = subprocess.run([str(ERP_SYNC), command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env=clean_env(ERP_SYNC_METRICS_PORT="0"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "erp-sync: configuration error: ERP_SYNC_ERP_URL: required (the ERP endpoint, e.g. "
        "https://erp.example.com/apaas/push)")


def test_a_mistyped_variable_is_named_with_the_closest_setting() -> None:
    s = load_settings({"ERP_SYNC_MAX_IN_FLIGTH": "8", "ERP_SYNC_ERP_URLS": "x", "ERP_SYNC_TOPIC": "t",
                       "ERP_SYNC_KAFKA_SASL_MECHANISM": "PLAIN", "ERP_SYNC_CONFIG_FILE_X": "y"})
    assert s.unknown_variables == (
        "ERP_SYNC_CONFIG_FILE_X is not a setting: ignored (did you mean ERP_SYNC_CONFIG_FILE?)",
        "ERP_SYNC_ERP_URLS is not a setting: ignored (did you mean ERP_SYNC_ERP_URL?)",
        "ERP_SYNC_MAX_IN_FLIGTH is not a setting: ignored (did you mean ERP_SYNC_MAX_IN_FLIGHT?)")
    env = clean_env(ERP_SYNC_ERP_URL="https://erp.example/x", ERP_SYNC_RETRY_BACKOF_MAX_SECONDS="5")
    proc = subprocess.run([str(ERP_SYNC), "check-config"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["warning: ERP_SYNC_RETRY_BACKOF_MAX_SECONDS is not a setting: ignored "
                                        "(did you mean ERP_SYNC_RETRY_BACKOFF_MAX_SECONDS?)"]


# --- *_FILE secrets -------------------------------------------------------------------------


def test_secret_files_are_read_and_stripped(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    auth.write_text("Bearer from-file\n", encoding="utf-8")
    key = tmp_path / "hmac"
    key.write_text("k3y\r\n", encoding="utf-8")
    s = load_settings({"ERP_SYNC_ERP_AUTH_HEADER_VALUE_FILE": str(auth), "ERP_SYNC_ERP_HMAC_SECRET_FILE": str(key)})
    assert s.auth_header_value() == "Bearer from-file"
    assert s.hmac_secret() == b"k3y"
    r = s.redacted()
    assert r["ERP_SYNC_ERP_AUTH_HEADER_VALUE_FILE"] == str(auth)
    assert r["ERP_SYNC_ERP_HMAC_SECRET_FILE"] == str(key)
    assert "from-file" not in json.dumps(r) and "k3y" not in json.dumps(r)


def test_variable_wins_over_its_file(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    auth.write_text("from-file\n", encoding="utf-8")
    s = load_settings({"ERP_SYNC_ERP_AUTH_HEADER_VALUE": "from-env", "ERP_SYNC_ERP_AUTH_HEADER_VALUE_FILE": str(auth)})
    assert s.auth_header_value() == "from-env"


@pytest.mark.parametrize(
    ("var", "method"),
    [("ERP_SYNC_ERP_AUTH_HEADER_VALUE_FILE", "auth_header_value"), ("ERP_SYNC_ERP_HMAC_SECRET_FILE", "hmac_secret")],
)
def test_missing_secret_file_names_the_variable(tmp_path: Path, var: str, method: str) -> None:
    missing = tmp_path / "absent"
    s = load_settings({var: str(missing)})
    with pytest.raises(ConfigError) as info:
        getattr(s, method)()
    assert str(info.value) == f"{var}: cannot read {missing}: No such file or directory"


def test_settings_model_holds_secretstr() -> None:
    s = load_settings(SECRET_ENV)
    assert isinstance(s.erp_auth_header_value, SecretStr)
    assert isinstance(s.erp_hmac_secret, SecretStr)
    assert isinstance(s, Settings)


# --- settings that used to fail late (found by a fresh-user trial) ---------------------------


@pytest.mark.parametrize(("env", "names"), [
    ({"ERP_SYNC_TOPIC": "t", "ERP_SYNC_DLQ_TOPIC": "t"}, "ERP_SYNC_DLQ_TOPIC must differ from ERP_SYNC_TOPIC"),
    ({"ERP_SYNC_GROUP_ID": ""}, "ERP_SYNC_GROUP_ID"),
    ({"ERP_SYNC_TOPIC": ""}, "ERP_SYNC_TOPIC"),
    ({"ERP_SYNC_ERP_AUTH_HEADER_NAME": "Bad Header"}, "ERP_SYNC_ERP_AUTH_HEADER_NAME is not a valid HTTP header"),
    ({"ERP_SYNC_ERP_URL": "http://exa mple.com/x"}, "ERP_SYNC_ERP_URL must be an http:// or https:// URL"),
    ({"ERP_SYNC_ERP_RETRY_HTTP_STATUSES": "401,abc"}, "ERP_SYNC_ERP_RETRY_HTTP_STATUSES: not HTTP statuses: abc"),
    ({"ERP_SYNC_ERP_TIMEOUT_SECONDS": "inf"}, "ERP_SYNC_ERP_TIMEOUT_SECONDS"),
])
def test_bad_settings_fail_at_start_naming_the_variable(env: dict[str, str], names: str) -> None:
    assert names in config_error(env)


def test_retry_http_statuses_and_dead_letter_producer_size() -> None:
    s = load_settings({"ERP_SYNC_ERP_RETRY_HTTP_STATUSES": "401, 403", "ERP_SYNC_MAX_VALUE_BYTES": "5000000"})
    assert s.retry_http_statuses == frozenset({401, 403})
    # issue "on-call defects" 1: every record the consumer can fetch fits in its dead letter, whatever
    # ERP_SYNC_MAX_VALUE_BYTES (the decode limit) says: it was ERP_SYNC_MAX_VALUE_BYTES + 64 KiB
    assert s.producer_config()["message.max.bytes"] == 100_065_536
    assert load_settings({}).producer_config()["message.max.bytes"] == 100_065_536
    receive = load_settings({"ERP_SYNC_KAFKA_CONSUMER_RECEIVE_MESSAGE_MAX_BYTES": "20000000"})
    assert receive.producer_config()["message.max.bytes"] == 20_065_536
    assert load_settings({"ERP_SYNC_KAFKA_PRODUCER_MESSAGE_MAX_BYTES": "3000000"}).producer_config()[
        "message.max.bytes"] == "3000000"  # an explicit producer setting wins


def test_the_scripts_own_variables_are_not_warned_about() -> None:
    """ERP_SYNC_VENV and the like are read by scripts/ and dev/: exported, they must not read as typos."""
    s = load_settings({"ERP_SYNC_VENV": "/opt/venv", "ERP_SYNC_CACHE_DIR": "/var/cache/erp-sync",
                       "ERP_SYNC_TEST_KAFKA_PORT": "9092", "ERP_SYNC_VENVV": "x"})
    assert s.unknown_variables == ("ERP_SYNC_VENVV is not a setting: ignored (did you mean ERP_SYNC_VENV?)",)


@pytest.mark.parametrize("var", ["ERP_SYNC_ERP_AUTH_HEADER_VALUE_FILE", "ERP_SYNC_ERP_HMAC_SECRET_FILE",
                                 "ERP_SYNC_ROUTES_FILE", "ERP_SYNC_CONFIG_FILE"])
def test_a_file_that_is_not_text_is_one_line_and_exit_2(tmp_path: Path, var: str) -> None:
    """A trial's finding: a binary key file (head -c32 /dev/urandom) gave a UnicodeDecodeError traceback, exit 1."""
    binary = tmp_path / "binary"
    binary.write_bytes(b"\x00\xff\xfe binary key")
    env = clean_env(ERP_SYNC_ERP_URL="https://erp.example/x", **{var: str(binary)})
    proc = subprocess.run([str(ERP_SYNC), "check-config"], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"erp-sync: configuration error: {var}: {binary} is not UTF-8 text (byte 1: 0xff); write it as text (a "
        "binary key as hex or base64)"], proc.stderr


@pytest.mark.parametrize(("env", "message"), [
    ({"ERP_SYNC_TOPIC": "a b"}, "ERP_SYNC_TOPIC: 'a b' is not a valid Kafka topic name: only ASCII letters, digits, "
                                "'.', '_' and '-' (not ' ')"),
    ({"ERP_SYNC_TOPIC": "ok,wf/x"}, "ERP_SYNC_TOPIC: 'wf/x' is not a valid Kafka topic name"),
    ({"ERP_SYNC_TOPIC": ".."}, "ERP_SYNC_TOPIC: '..' is not a valid Kafka topic name: '.' and '..' are not allowed"),
    ({"ERP_SYNC_DLQ_TOPIC": "dlq:1"}, "ERP_SYNC_DLQ_TOPIC: 'dlq:1' is not a valid Kafka topic name"),
    ({"ERP_SYNC_RETRY_TOPIC": "wf retry"}, "ERP_SYNC_RETRY_TOPIC: 'wf retry' is not a valid Kafka topic name"),
    ({"ERP_SYNC_TOPIC": "t" * 244}, f"ERP_SYNC_RETRY_TOPIC: '{'t' * 244}.retry' is not a valid Kafka topic name: "
                                    "250 characters, at most 249"),
])
def test_topic_names_kafka_refuses_are_refused_at_start(env: dict[str, str], message: str) -> None:
    """A trial's finding: ERP_SYNC_TOPIC='a b' passed check-config, and run waited forever."""
    with pytest.raises(ConfigError) as info:
        load_settings({"ERP_SYNC_ERP_URL": "https://erp.example/x", **env})
    assert message in str(info.value)


@pytest.mark.parametrize(("env", "expected"), [
    ({"ERP_SYNC_TOPIC": "wf"}, "wf.retry"),
    ({"ERP_SYNC_TOPIC": "wf,orders"}, "wf.retry,orders.retry"),
    ({"ERP_SYNC_TOPIC": "wf", "ERP_SYNC_RETRY_TOPIC": "wf-parked"}, "wf-parked"),
    ({"ERP_SYNC_TOPIC": "wf", "ERP_SYNC_RETRY_TOPIC": "none"}, "none"),
])
def test_check_config_shows_the_retry_topics_parking_uses(env: dict[str, str], expected: str) -> None:
    """A new user's trial: check-config printed "ERP_SYNC_RETRY_TOPIC": null while parking used wf.retry."""
    assert load_settings(env).redacted()["ERP_SYNC_RETRY_TOPIC"] == expected
