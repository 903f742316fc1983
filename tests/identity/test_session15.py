"""Session 15, found by the identity tester: one person could approve their own request by
making it through an API key they had asked for, and a key could ask for keys holding scopes
it did not hold itself."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.conftest import Credentials, make_merchant
from tests.identity.test_approvals import refused


@pytest.fixture
def app(app):
    """Several people sign in from the test client's one address: the login limit has its own tests."""
    app.state.settings = app.state.settings.model_copy(update={"login_rate_limit_per_minute": 1000})
    return app


def _platform_key(maker, checker, scopes: list[str]) -> Credentials:
    held = maker.post("/v1/api_keys", json={"name": "bot", "scopes": scopes})
    assert held.status_code == 202, held.text
    approved = checker.post(f"/v1/approvals/{held.json()['id']}/approve")
    assert approved.status_code == 200, approved.text
    key_id = approved.json()["result"]["api_key_id"]
    collected = maker.post(f"/v1/api_keys/{key_id}/secret")
    assert collected.status_code == 200, collected.text
    return Credentials(key_id, collected.json()["secret"])


def test_a_person_cannot_approve_what_a_key_they_asked_for_requested(app, user_client_factory):
    admin, other_admin, third_admin = (user_client_factory("admin") for _ in range(3))
    bot = _platform_key(admin, other_admin, ["api_keys:write", "api_keys:read"])
    with TestClient(app, raise_server_exceptions=False) as robot:
        robot.auth = bot.auth
        held = robot.post("/v1/api_keys", json={"name": "bot of bot", "scopes": ["api_keys:read"]})
        assert held.status_code == 202, held.text
        approval = held.json()["id"]
        refused(admin.post(f"/v1/approvals/{approval}/approve"), 403, "self_approval_refused")
        refused(admin.post(f"/v1/approvals/{approval}/reject"), 403, "self_approval_refused")
        assert third_admin.get(f"/v1/approvals/{approval}").json()["status"] == "pending"
        assert third_admin.post(f"/v1/approvals/{approval}/approve").status_code == 200


def test_a_key_made_by_a_key_still_leads_back_to_its_person(app, user_client_factory):
    admin, other_admin, third_admin = (user_client_factory("admin") for _ in range(3))
    bot = _platform_key(admin, other_admin, ["api_keys:write", "api_keys:read"])
    with TestClient(app, raise_server_exceptions=False) as robot:
        robot.auth = bot.auth
        held = robot.post("/v1/api_keys", json={"name": "grandchild", "scopes": ["api_keys:write", "api_keys:read"]})
        key_id = third_admin.post(f"/v1/approvals/{held.json()['id']}/approve").json()["result"]["api_key_id"]
        secret = robot.post(f"/v1/api_keys/{key_id}/secret").json()["secret"]
    with TestClient(app, raise_server_exceptions=False) as grandchild:
        grandchild.auth = Credentials(key_id, secret).auth
        held = grandchild.post("/v1/api_keys", json={"name": "again", "scopes": ["api_keys:read"]})
        assert held.status_code == 202, held.text
        refused(admin.post(f"/v1/approvals/{held.json()['id']}/approve"), 403, "self_approval_refused")
        assert other_admin.post(f"/v1/approvals/{held.json()['id']}/approve").status_code == 200


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/api_keys", {"name": "wider", "scopes": ["api_keys:write", "ledger:write"]}),
    # a merchant's test key, made at once, with every merchant scope (no scopes given)
    ("/v1/merchants/{merchant}/api_keys", {"mode": "test", "name": "every scope"}),
])
def test_a_key_asks_only_for_scopes_it_holds(app, user_client_factory, path, body):
    admin, other_admin = user_client_factory("admin"), user_client_factory("admin")
    shop = make_merchant(app, "Scoped Shop")
    bot = _platform_key(admin, other_admin, ["api_keys:write", "api_keys:read", "merchants:read"])
    with TestClient(app, raise_server_exceptions=False) as robot:
        robot.auth = bot.auth
        before = robot.get(f"/v1/merchants/{shop.merchant_id}/api_keys").json()["data"]
        refused(robot.post(path.format(merchant=shop.merchant_id), json=body), 403, "forbidden")
        assert robot.get(f"/v1/merchants/{shop.merchant_id}/api_keys").json()["data"] == before
        assert other_admin.get("/v1/approvals").json()["data"][0]["status"] == "approved"  # nothing new held


def test_a_nonce_outlives_the_last_second_its_timestamp_is_accepted(app, anonymous_client, platform_key,
                                                                      monkeypatch):
    """A request stamped a whole tolerance ahead of the server is accepted until the server's
    whole-second clock is a tolerance past it; its nonce must still be known then (the tester
    replayed one 600.2 s after it was first seen, and it was accepted)."""
    import time
    from datetime import timedelta

    from clearhouse.identity import middleware
    from clearhouse.identity import service as identity
    from clearhouse.identity.signing import signed_headers
    from clearhouse.kit import clock
    from clearhouse.kit.db import transact

    tolerance = app.state.settings.signature_tolerance_seconds
    ttl = app.state.settings.nonce_ttl_seconds
    assert ttl == 2 * tolerance
    now = int(time.time())
    headers = signed_headers(platform_key.key_id, platform_key.secret, "GET", "/v1/merchants",
                             timestamp=now + tolerance)
    assert anonymous_client.get("/v1/merchants", headers=headers).status_code == 200
    with clock.frozen(clock.now() + timedelta(seconds=ttl, milliseconds=500)):
        transact(app.state.engine, lambda s: identity.purge_nonces(s, ttl))
    monkeypatch.setattr(middleware, "_now_seconds", lambda: now + ttl)  # still within the tolerance
    replayed = anonymous_client.get("/v1/merchants", headers=headers)
    refused(replayed, 401, "signature_replayed")


def test_a_key_with_no_scopes_is_refused_not_made(app, client):
    shop = make_merchant(app, "Empty Scopes")
    before = client.get(f"/v1/merchants/{shop.merchant_id}/api_keys").json()["data"]
    answer = client.post(f"/v1/merchants/{shop.merchant_id}/api_keys", json={"mode": "test", "scopes": []})
    refused(answer, 422, "validation_error")
    assert answer.json()["errors"][0]["loc"] == ["body", "scopes"]
    assert client.get(f"/v1/merchants/{shop.merchant_id}/api_keys").json()["data"] == before


def test_answers_carrying_a_secret_are_not_cached(app, client, user_client_factory):
    shop = make_merchant(app, "No Store")
    made = client.post(f"/v1/merchants/{shop.merchant_id}/api_keys", json={"mode": "test"})
    assert made.status_code == 201 and "secret" in made.json()
    assert made.headers["cache-control"] == "no-store"
    maker, checker = user_client_factory("admin"), user_client_factory("admin")
    held = maker.post("/v1/api_keys", json={"name": "cached?", "scopes": ["ledger:read"]})
    key_id = checker.post(f"/v1/approvals/{held.json()['id']}/approve").json()["result"]["api_key_id"]
    collected = maker.post(f"/v1/api_keys/{key_id}/secret")
    assert collected.status_code == 200 and collected.headers["cache-control"] == "no-store"
