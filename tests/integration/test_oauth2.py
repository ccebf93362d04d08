"""OAuth2 client credentials toward the ERP (issue 12), against a real token endpoint on the local stack.

The ERP stub (consumer/devstack/erp_stub.py) serves ``POST /oauth/token`` (client credentials, client
authentication by HTTP Basic or form fields) and, once clients are registered, answers 401
``invalid_token`` to every push without a valid bearer token. The consumer's side is Authlib's
``AsyncOAuth2Client`` for the token (consumer/erp/auth.py) and our ``httpx.Request`` for the push.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from consumer import transform
from consumer.devstack.erp_stub import TOKEN_PATH, ErpStub, StubClient
from consumer.devstack.events import encode, spec_example_event
from consumer.erp.client import ErpClient
from consumer.erp.verdict import Outcome
from consumer.errors import ConfigError
from consumer.settings import load_settings
from dev.harness import (
    BlockingErp,
    Broker,
    committed,
    consumer_env,
    create_topic,
    high_watermarks,
    produce,
    run_until_idle,
    unique,
)

CLIENT_ID, CLIENT_SECRET = "erp-sync", "oauth-s3cret-XYZ"
BODY, KEY = transform.erp_request(spec_example_event())


def oauth_env(erp: ErpStub, tmp_path: Path, secret: str = CLIENT_SECRET, **extra: str) -> dict[str, str]:
    (tmp_path / "client-id").write_text(CLIENT_ID + "\n")
    (tmp_path / "client-secret").write_text(secret + "\n")
    return {"ERP_SYNC_ERP_URL": erp.url, "ERP_SYNC_ERP_OAUTH2_TOKEN_URL": erp.base_url + TOKEN_PATH,
            "ERP_SYNC_ERP_OAUTH2_CLIENT_ID_FILE": str(tmp_path / "client-id"),
            "ERP_SYNC_ERP_OAUTH2_CLIENT_SECRET_FILE": str(tmp_path / "client-secret"),
            "ERP_SYNC_ERP_OAUTH2_SCOPE": "erp.push", **extra}


def client(env: dict[str, str]) -> BlockingErp:
    return BlockingErp(ErpClient(load_settings(env)))


@pytest.mark.parametrize("auth", ["client_secret_basic", "client_secret_post"])
def test_token_fetched_once_cached_and_sent_as_bearer(erp: ErpStub, stub: StubClient, tmp_path: Path,
                                                      auth: str) -> None:
    stub.oauth2({CLIENT_ID: CLIENT_SECRET})
    erp_client = client(oauth_env(erp, tmp_path, ERP_SYNC_ERP_OAUTH2_CLIENT_AUTH=auth))
    try:
        verdicts = [erp_client.post(BODY, KEY) for _ in range(3)]
        verdicts += erp_client.post_many([(BODY, KEY)] * 5)  # concurrent pushes share one token
    finally:
        erp_client.close()
    assert [v.outcome for v in verdicts] == [Outcome.ACCEPTED] * 8
    stats = stub.oauth2_stats()
    assert (stats["issued"], stats["unauthorized_pushes"]) == (1, 0)
    tokens = {r["headers"]["authorization"] for r in stub.requests()}
    assert len(tokens) == 1 and next(iter(tokens)).startswith("Bearer ")


def test_a_401_gets_one_refresh_and_one_retry(erp: ErpStub, stub: StubClient, tmp_path: Path) -> None:
    stub.oauth2({CLIENT_ID: CLIENT_SECRET})
    erp_client = client(oauth_env(erp, tmp_path))
    try:
        assert erp_client.post(BODY, KEY).outcome is Outcome.ACCEPTED
        stub.oauth2_revoke()  # the ERP forgets the token (rotated keys, a restart)
        assert erp_client.post(BODY, KEY).outcome is Outcome.ACCEPTED
        # An ERP that keeps answering 401 to fresh tokens: one refresh and retry, then the verdict (reject).
        stub.behaviour(script=[{"status": 401, "body": "{}"}, {"status": 401, "body": "{}"}])
        final = erp_client.post(BODY, KEY)
    finally:
        erp_client.close()
    assert (final.outcome, final.code) == (Outcome.REJECT, "HTTP_401")
    assert [r["code"] for r in stub.requests()] == ["OK", "HTTP_401", "OK", "HTTP_401", "HTTP_401"]
    stats = stub.oauth2_stats()
    assert (stats["issued"], stats["unauthorized_pushes"]) == (3, 1)


def test_a_token_about_to_expire_is_refreshed_before_the_erp_refuses_it(erp: ErpStub, stub: StubClient,
                                                                        tmp_path: Path) -> None:
    stub.oauth2({CLIENT_ID: CLIENT_SECRET}, expires_in=62)  # "expired" for us 60 s early: after ~2 s
    erp_client = client(oauth_env(erp, tmp_path))
    try:
        assert erp_client.post(BODY, KEY).outcome is Outcome.ACCEPTED
        time.sleep(3.1)
        assert erp_client.post(BODY, KEY).outcome is Outcome.ACCEPTED
    finally:
        erp_client.close()
    stats = stub.oauth2_stats()
    assert (stats["issued"], stats["unauthorized_pushes"]) == (2, 0)
    assert len({r["headers"]["authorization"] for r in stub.requests()}) == 2


def test_a_refused_client_is_a_retry_verdict_with_an_auth_code_and_no_push(erp: ErpStub, stub: StubClient,
                                                                          tmp_path: Path) -> None:
    stub.oauth2({CLIENT_ID: CLIENT_SECRET})
    erp_client = client(oauth_env(erp, tmp_path, secret="bad-s3cret-123"))
    try:
        result = erp_client.post(BODY, KEY)
    finally:
        erp_client.close()
    assert (result.outcome, result.code) == (Outcome.RETRY, "AuthFailure.OAuth2Token")
    assert "invalid_client" in result.message and "bad-s3cret-123" not in result.message
    assert stub.requests() == []
    assert stub.oauth2_stats()["refused"] == 1


@pytest.mark.parametrize(("env", "message"), [
    ({"ERP_SYNC_ERP_OAUTH2_TOKEN_URL": "https://idp.test/token"}, "ERP_SYNC_ERP_OAUTH2_CLIENT_ID"),
    ({"ERP_SYNC_ERP_OAUTH2_CLIENT_ID": "x"}, "ERP_SYNC_ERP_OAUTH2_TOKEN_URL"),
    ({"ERP_SYNC_ERP_OAUTH2_TOKEN_URL": "https://u:p@idp.test/token", "ERP_SYNC_ERP_OAUTH2_CLIENT_ID": "x",
      "ERP_SYNC_ERP_OAUTH2_CLIENT_SECRET": "y"}, "without user:password@"),
    ({"ERP_SYNC_ERP_OAUTH2_TOKEN_URL": "https://idp.test/token", "ERP_SYNC_ERP_OAUTH2_CLIENT_ID": "x",
      "ERP_SYNC_ERP_OAUTH2_CLIENT_SECRET": "y", "ERP_SYNC_ERP_AUTH_HEADER_VALUE": "Bearer static"},
     "keep one"),
])
def test_oauth2_settings_are_checked(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert message in str(info.value)


def test_oauth2_secret_is_redacted() -> None:
    settings = load_settings({"ERP_SYNC_ERP_OAUTH2_TOKEN_URL": "https://idp.test/token?tenant=1",
                              "ERP_SYNC_ERP_OAUTH2_CLIENT_ID": "x", "ERP_SYNC_ERP_OAUTH2_CLIENT_SECRET": CLIENT_SECRET})
    shown = json.dumps(settings.redacted())
    assert CLIENT_SECRET not in shown
    assert settings.redacted()["ERP_SYNC_ERP_OAUTH2_TOKEN_URL"] == "https://idp.test/token?****"


@pytest.mark.kafka
def test_erp_sync_run_delivers_with_oauth2_and_survives_a_revoked_token(broker: Broker, erp: ErpStub,
                                                                         stub: StubClient, tmp_path: Path) -> None:
    topic, group = unique("oauth2"), unique("group-oauth2")
    create_topic(broker, topic)
    create_topic(broker, topic + ".dlq")
    events = [{**spec_example_event(), "instance_id": 5_100_000 + i} for i in range(6)]
    produce(broker, topic, [(str(e["instance_id"]).encode(), encode(e)) for e in events[:3]])
    stub.oauth2({CLIENT_ID: CLIENT_SECRET})
    env = consumer_env(broker, topic, group, erp.url, **{k: v for k, v in oauth_env(erp, tmp_path).items()
                                                         if k != "ERP_SYNC_ERP_URL"})
    log = run_until_idle(env, tmp_path / "run1.log", idle_s=1.0, timeout=60).log()
    assert CLIENT_SECRET not in log
    stub.oauth2_revoke()
    produce(broker, topic, [(str(e["instance_id"]).encode(), encode(e)) for e in events[3:]])
    run_until_idle(env, tmp_path / "run2.log", idle_s=1.0, timeout=60)
    reqs = stub.requests()
    accepted = sorted(r["instance_id"] for r in reqs if r["code"] == "OK")
    assert accepted == [e["instance_id"] for e in events]
    assert all(r["headers"]["authorization"].startswith("Bearer ") for r in reqs)
    assert committed(broker, group, topic) == high_watermarks(broker, topic)
    assert stub.oauth2_stats()["issued"] == 2  # one per process


def test_a_routes_file_refuses_an_inline_oauth2_secret(tmp_path: Path) -> None:
    from consumer.routes import load_routes

    (tmp_path / "routes.yaml").write_text(
        "routes:\n  - name: hr\n    url: https://hr.test/push\n    oauth2_token_url: https://idp.test/token\n"
        "    oauth2_client_id: x\n    oauth2_client_secret: inline\n")
    with pytest.raises(ConfigError) as info:
        load_routes(load_settings({"ERP_SYNC_ROUTES_FILE": str(tmp_path / "routes.yaml")}))
    assert "oauth2_client_secret: secrets are read from a file: use oauth2_client_secret_file" in str(info.value)


@pytest.mark.kafka
def test_each_route_has_its_own_oauth2_client_and_token(broker: Broker, tmp_path: Path) -> None:
    """Two ERPs, each with its own token endpoint and client: a route's token never goes to the other ERP."""
    hr_event = {**spec_example_event(), "instance_id": 5_200_001, "flow_code": 111}
    fin_event = {**spec_example_event(), "instance_id": 5_200_002, "flow_code": 222}
    with ErpStub() as hr, ErpStub() as fin, StubClient(hr.base_url) as hr_ctl, StubClient(fin.base_url) as fin_ctl:
        hr_ctl.oauth2({"hr-client": "hr-s3cret"})
        fin_ctl.oauth2({"fin-client": "fin-s3cret"})
        for name in ("hr", "fin"):
            (tmp_path / f"{name}-secret").write_text(f"{name}-s3cret\n")
        (tmp_path / "routes.yaml").write_text(
            f"routes:\n"
            f"  - name: hr\n    match: {{flow_codes: [111]}}\n    url: {hr.url}\n"
            f"    oauth2_token_url: {hr.base_url}{TOKEN_PATH}\n    oauth2_client_id: hr-client\n"
            f"    oauth2_client_secret_file: {tmp_path / 'hr-secret'}\n"
            f"  - name: finance\n    url: {fin.url}\n"
            f"    oauth2_token_url: {fin.base_url}{TOKEN_PATH}\n    oauth2_client_id: fin-client\n"
            f"    oauth2_client_secret_file: {tmp_path / 'fin-secret'}\n")
        topic, group = unique("oauth2-routes"), unique("group-oauth2-routes")
        create_topic(broker, topic)
        create_topic(broker, topic + ".dlq")
        create_topic(broker, topic + ".retry")
        produce(broker, topic, [(b"hr", encode(hr_event)), (b"fin", encode(fin_event))])
        env = consumer_env(broker, topic, group, hr.url, ERP_SYNC_ROUTES_FILE=str(tmp_path / "routes.yaml"))
        env.pop("ERP_SYNC_ERP_URL")
        log = run_until_idle(env, tmp_path / "run.log", idle_s=1.0, timeout=60).log()
        assert [(r["instance_id"], r["code"]) for r in hr_ctl.requests()] == [(5_200_001, "OK")], log[-3000:]
        assert [(r["instance_id"], r["code"]) for r in fin_ctl.requests()] == [(5_200_002, "OK")], log[-3000:]
        assert hr_ctl.oauth2_stats()["issued"] == fin_ctl.oauth2_stats()["issued"] == 1
        assert "hr-s3cret" not in log and "fin-s3cret" not in log
