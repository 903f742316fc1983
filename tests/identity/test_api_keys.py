"""API keys over HTTP: made, shown once, usable at once, limited by their scopes, refused
when their content breaks a rule, revoked once.

A test key is made at once; a live or platform key waits for a second person (202 and an
approval; tests/identity/test_approvals.py follows it through).
"""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select

from clearhouse.identity.permissions import MERCHANT_KEY_SCOPES, PLATFORM_KEY_SCOPES
from clearhouse.kit import clock
from clearhouse.kit.models import Base
from tests.conftest import CARD_EXP_YEAR, Credentials, make_key, make_merchant

VISA = "4111111111111111"


def rfc3339(delta: timedelta) -> str:
    return clock.rfc3339(clock.now() + delta)


def everything_stored(engine) -> str:
    """Every value of every table, as text: where a leaked secret would show up."""
    chunks: list[str] = []
    with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            for row in connection.execute(select(table)):
                chunks.extend(repr(value) for value in row)
    return "\n".join(chunks)


@pytest.fixture
def shop(app) -> Credentials:
    return make_merchant(app, "Key Shop")


def create_key(client, merchant_id: str, **body) -> httpx.Response:
    return client.post(f"/v1/merchants/{merchant_id}/api_keys", json=body)


def assert_validation_error(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "validation_error", body
    assert any(field in [str(part) for part in error["loc"]] for error in body["errors"]), body


class TestTestKey:
    def test_a_test_key_is_made_at_once_and_its_secret_shown_this_once(self, app, client, shop):
        made = create_key(client, shop.merchant_id, name="checkout server")
        assert made.status_code == 201, made.text
        key = made.json()
        assert key["id"].startswith("ck_test_")
        assert key["mode"] == "test" and key["merchant_id"] == shop.merchant_id and key["name"] == "checkout server"
        assert sorted(key["scopes"]) == sorted(MERCHANT_KEY_SCOPES)
        assert key["secret_collected"] is True and key["revoked_at"] is None
        secret = key["secret"]
        assert secret.startswith("cks_") and len(secret) >= 40

        listed = client.get(f"/v1/merchants/{shop.merchant_id}/api_keys")
        assert listed.status_code == 200
        assert key["id"] in [k["id"] for k in listed.json()["data"]]
        assert all("secret" not in k for k in listed.json()["data"])
        assert secret not in listed.text
        # A second collection is refused: the secret was shown with the key.
        again = client.post(f"/v1/merchants/{shop.merchant_id}/api_keys/{key['id']}/secret")
        assert again.status_code == 409 and again.json()["code"] == "secret_already_collected", again.text
        assert secret not in again.text
        events = client.get("/v1/audit/events", params={"limit": 500})
        assert events.status_code == 200 and key["id"] in events.text
        assert secret not in events.text
        assert secret not in everything_stored(app.state.engine)

    def test_the_new_key_works_at_once_over_real_http(self, client, shop, live_server):
        key = create_key(client, shop.merchant_id).json()
        with httpx.Client(base_url=live_server, timeout=30,
                          auth=Credentials(key["id"], key["secret"], shop.merchant_id).auth) as merchant:
            own = merchant.get(f"/v1/merchants/{shop.merchant_id}")
            assert own.status_code == 200, own.text
            assert own.json()["name"] == "Key Shop"

    def test_several_keys_at_once_each_revocable_alone(self, client, shop, anonymous_client):
        first, second = (create_key(client, shop.merchant_id, name=n).json() for n in ("one", "two"))
        revoked = client.post(f"/v1/merchants/{shop.merchant_id}/api_keys/{first['id']}/revoke")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
        path = f"/v1/merchants/{shop.merchant_id}"
        refused = anonymous_client.get(path, auth=Credentials(first["id"], first["secret"]).auth)
        assert refused.status_code == 401 and refused.json()["code"] == "api_key_revoked"
        assert anonymous_client.get(path, auth=Credentials(second["id"], second["secret"]).auth).status_code == 200
        twice = client.post(f"/v1/merchants/{shop.merchant_id}/api_keys/{first['id']}/revoke")
        assert twice.status_code == 409 and twice.json()["code"] == "api_key_already_revoked", twice.text

    def test_an_expiring_test_key_shows_its_expiry(self, client, shop):
        expires_at = rfc3339(timedelta(days=30))
        made = create_key(client, shop.merchant_id, expires_at=expires_at)
        assert made.status_code == 201, made.text
        assert made.json()["expires_at"] == expires_at


class TestLiveKey:
    def test_a_live_key_is_held_for_approval_and_not_made_yet(self, client, shop):
        held = create_key(client, shop.merchant_id, mode="live", name="production")
        assert held.status_code == 202, held.text
        approval = held.json()
        assert approval["id"].startswith("apr_") and approval["status"] == "pending"
        assert approval["action"] == "api_key.create" and approval["merchant_id"] == shop.merchant_id
        assert approval["payload"]["mode"] == "live" and approval["payload"]["name"] == "production"
        assert "secret" not in held.text
        keys = client.get(f"/v1/merchants/{shop.merchant_id}/api_keys").json()["data"]
        assert [k["mode"] for k in keys] == ["test"]  # only the shop's own test key

    def test_a_platform_key_is_always_held_for_approval(self, client, platform_key):
        held = client.post("/v1/api_keys", json={"name": "reconciler", "scopes": ["recon:write", "ledger:read"]})
        assert held.status_code == 202, held.text
        assert held.json()["payload"]["scopes"] == ["recon:write", "ledger:read"]
        assert [k["id"] for k in client.get("/v1/api_keys").json()["data"]] == [platform_key.key_id]


class TestScopes:
    def test_a_merchant_key_with_only_merchants_read_cannot_vault_a_card(self, app, client, shop, anonymous_client):
        made = create_key(client, shop.merchant_id, scopes=["merchants:read"])
        assert made.status_code == 201, made.text
        reader = Credentials(made.json()["id"], made.json()["secret"]).auth
        assert anonymous_client.get(f"/v1/merchants/{shop.merchant_id}", auth=reader).status_code == 200
        card = {"number": VISA, "exp_month": 12, "exp_year": CARD_EXP_YEAR}
        refused = anonymous_client.post("/v1/vault/cards", json=card, auth=reader)
        assert refused.status_code == 403, refused.text
        assert refused.json()["code"] == "forbidden"
        listing = anonymous_client.get("/v1/vault/cards", auth=reader)
        assert listing.status_code == 403 and listing.json()["code"] == "forbidden"
        # The shop's full test key may.
        allowed = anonymous_client.post("/v1/vault/cards", json=card, auth=shop.auth)
        assert allowed.status_code == 201, allowed.text

    def test_a_platform_key_with_ledger_read_reads_but_cannot_write(self, app, anonymous_client):
        reader = make_key(app, scopes=["ledger:read"]).auth
        assert anonymous_client.get("/v1/ledger/verify", auth=reader).status_code == 200
        account = {"id": "acct_scope_test", "type": "asset", "currency": "CNY", "code": "scope"}
        refused = anonymous_client.post("/v1/ledger/accounts", json=account, auth=reader)
        assert refused.status_code == 403 and refused.json()["code"] == "forbidden", refused.text
        assert anonymous_client.get("/v1/merchants", auth=reader).json()["code"] == "forbidden"

    @pytest.mark.parametrize("scope", sorted(set(PLATFORM_KEY_SCOPES) - MERCHANT_KEY_SCOPES)[:6]
                             + ["users:write", "approvals:decide"])
    def test_a_test_key_cannot_hold_a_scope_outside_merchant_scopes(self, client, shop, scope):
        assert_validation_error(create_key(client, shop.merchant_id, scopes=["merchants:read", scope]), "scopes")

    def test_an_unknown_scope_is_refused(self, client, shop):
        assert_validation_error(create_key(client, shop.merchant_id, scopes=["merchants:reed"]), "scopes")

    @pytest.mark.parametrize("scope", ["ledger:write", "api_keys:write", "approvals:decide"])
    def test_a_live_key_asking_for_a_scope_outside_merchant_scopes_is_refused_at_once(self, client, shop, scope):
        """Found by this suite: a live key's scopes are only checked when an approver runs the
        held action, so the request is accepted (202) and the checker meets a 422 later."""
        response = create_key(client, shop.merchant_id, mode="live", scopes=["merchants:read", scope])
        assert_validation_error(response, "scopes")
        assert client.get("/v1/approvals", params={"status": "pending"}).json()["data"] == []

    @pytest.mark.parametrize("scope", ["users:write", "approvals:decide"])
    def test_a_platform_key_asking_for_a_scope_for_people_only_is_refused_at_once(self, client, scope):
        """Found by this suite: as for live keys, the refusal waits for the approver."""
        assert_validation_error(client.post("/v1/api_keys", json={"scopes": ["ledger:read", scope]}), "scopes")
        assert client.get("/v1/approvals", params={"status": "pending"}).json()["data"] == []

    def test_a_key_with_no_scopes_can_do_nothing(self, client, shop, anonymous_client):
        made = create_key(client, shop.merchant_id, scopes=[])
        if made.status_code == 422:  # refusing an empty list is a fine answer too
            return
        assert made.status_code == 201, made.text
        empty = Credentials(made.json()["id"], made.json()["secret"]).auth
        refused = anonymous_client.get(f"/v1/merchants/{shop.merchant_id}", auth=empty)
        assert refused.status_code == 403 and refused.json()["code"] == "forbidden"


class TestExpiry:
    @pytest.mark.parametrize("delta", [timedelta(seconds=-1), timedelta(days=-400), timedelta(0)])
    def test_a_test_key_expiring_in_the_past_is_refused(self, client, shop, delta):
        assert_validation_error(create_key(client, shop.merchant_id, expires_at=rfc3339(delta)), "expires_at")

    def test_a_live_key_expiring_in_the_past_is_refused_at_once(self, client, shop):
        """Found by this suite: held (202) although it could never be made."""
        response = create_key(client, shop.merchant_id, mode="live", expires_at=rfc3339(timedelta(hours=-1)))
        assert_validation_error(response, "expires_at")

    def test_a_platform_key_expiring_in_the_past_is_refused_at_once(self, client):
        """Found by this suite: held (202) although it could never be made."""
        response = client.post("/v1/api_keys", json={"scopes": ["ledger:read"],
                                                      "expires_at": rfc3339(timedelta(hours=-1))})
        assert_validation_error(response, "expires_at")

    @pytest.mark.parametrize("value", ["2030-01-01T00:00:00", "yesterday", "2030-13-01T00:00:00Z", ""])
    def test_an_expiry_without_a_zone_or_not_a_time_is_refused(self, client, shop, value):
        response = create_key(client, shop.merchant_id, expires_at=value)
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "validation_error"

    def test_an_expiry_given_as_a_unix_number_is_refused(self, client, shop):
        """Found by this suite: api.md says times are RFC 3339 strings in UTC, but kit.api.UtcTime
        (a pydantic datetime) takes 1893456000 as 2030-01-01T00:00:00Z."""
        response = create_key(client, shop.merchant_id, expires_at=1893456000)
        assert response.status_code == 422, response.text


class TestWhoMayMakeKeys:
    def test_a_merchant_key_cannot_make_or_list_keys(self, shop, anonymous_client):
        path = f"/v1/merchants/{shop.merchant_id}/api_keys"
        for response in (anonymous_client.post(path, json={}, auth=shop.auth),
                         anonymous_client.get(path, auth=shop.auth),
                         anonymous_client.post("/v1/api_keys", json={"scopes": ["ledger:read"]}, auth=shop.auth)):
            assert response.status_code == 403, response.text
            assert response.json()["code"] == "forbidden"

    def test_a_key_for_an_unknown_merchant_is_404(self, client):
        response = create_key(client, "mch_does_not_exist")
        assert response.status_code == 404 and response.json()["code"] == "not_found", response.text


class TestIdempotentKeyCreation:
    """api.md: a POST may carry an Idempotency-Key, and a repeat gets the first answer. The
    first answer of a key creation holds the key's secret, so the repeat must not become a
    second way to read it."""

    def test_a_repeat_by_a_caller_without_api_keys_write_is_refused_not_replayed(self, app, client, shop,
                                                                                anonymous_client):
        """Found by this suite: the idempotency middleware answered a repeat before the route's
        permission check, so a ledger:read platform key that sent the same path, body and
        Idempotency-Key got the stored 201, with the new key's secret (fixed in 473eb30)."""
        path, headers = f"/v1/merchants/{shop.merchant_id}/api_keys", {"Idempotency-Key": "make-key-0001"}
        first = client.post(path, content=b"{}", headers={**headers, "Content-Type": "application/json"})
        assert first.status_code == 201, first.text
        reader = make_key(app, scopes=["ledger:read"])
        repeat = anonymous_client.post(path, content=b"{}", auth=reader.auth,
                                       headers={**headers, "Content-Type": "application/json"})
        assert first.json()["secret"] not in repeat.text
        # The fix: the caller is part of what makes two requests the same, so another caller's
        # repeat is a different request under a used key (api.md: keys are scoped to the merchant).
        assert repeat.status_code == 409, repeat.text
        assert repeat.json()["code"] == "idempotency_key_reused"

    def test_a_secret_made_under_an_idempotency_key_is_not_stored_in_clear(self, app, client, shop):
        """Found by this suite: the idempotency record keeps the whole 201 body, secret included,
        as plain text in idempotency_records."""
        made = client.post(f"/v1/merchants/{shop.merchant_id}/api_keys", json={"name": "idem"},
                           headers={"Idempotency-Key": "make-key-0002"})
        assert made.status_code == 201, made.text
        assert made.json()["secret"] not in everything_stored(app.state.engine)


class TestKeyLists:
    def test_a_merchants_keys_are_a_page_newest_first(self, client, shop):
        for n in range(3):
            assert client.post(f"/v1/merchants/{shop.merchant_id}/api_keys", json={"name": f"k{n}"}).status_code == 201
        everything = client.get(f"/v1/merchants/{shop.merchant_id}/api_keys").json()
        assert everything["has_more"] is False and len(everything["data"]) == 4  # the shop's own key too
        created = [k["created_at"] for k in everything["data"]]
        assert created == sorted(created, reverse=True)
        first = client.get(f"/v1/merchants/{shop.merchant_id}/api_keys", params={"limit": 3}).json()
        assert first["has_more"] is True and first["next_cursor"] == first["data"][-1]["id"]
        rest = client.get(f"/v1/merchants/{shop.merchant_id}/api_keys",
                          params={"starting_after": first["next_cursor"]}).json()
        assert [k["id"] for k in first["data"] + rest["data"]] == [k["id"] for k in everything["data"]]
        assert client.get(f"/v1/merchants/{shop.merchant_id}/api_keys", params={"limit": 0}).status_code == 422


class TestMerchantRetry:
    def test_a_merchant_create_retried_after_a_5xx_finds_the_merchant_it_made(self, client, monkeypatch):
        from clearhouse.identity import service

        real, calls = service.merchant_dict, []

        def fails_once(row):
            calls.append(row.id)
            if len(calls) == 1:
                raise RuntimeError("the answer is lost after the commit")
            return real(row)

        monkeypatch.setattr(service, "merchant_dict", fails_once)
        headers = {"Idempotency-Key": "merchant-retry-1"}
        assert client.post("/v1/merchants", json={"name": "Retry Shop"}, headers=headers).status_code == 500
        again = client.post("/v1/merchants", json={"name": "Retry Shop"}, headers=headers)
        assert again.status_code == 201, again.text
        assert again.json()["id"] == calls[0]
        listed = client.get("/v1/merchants", params={"limit": 500}).json()["data"]
        named = [m for m in listed if m["name"] == "Retry Shop"]
        assert len(named) == 1
