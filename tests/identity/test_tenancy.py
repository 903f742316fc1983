"""Tenant isolation: merchant A's key and A's staff never read, list or act on merchant B's
objects or the platform's. Another tenant's object answers 404 (exactly as an object that
does not exist) or is missing from lists; never a 403 that would confirm it exists, and never
B's data. A permission the caller lacks is a 403 ``forbidden`` whatever the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import CARD_EXP_YEAR, Credentials, make_merchant

MISSING_MERCHANT = "mch_00000000000000000000000000"
MISSING_KEY = "ck_test_00000000000000000000000000"
MISSING_APPROVAL = "apr_00000000000000000000000000"
B_NAME = "Bravo Secret Trading Ltd"


@pytest.fixture
def app(app):
    """Several people sign in from the test client's one address in each test."""
    app.state.settings = app.state.settings.model_copy(update={"login_rate_limit_per_minute": 1000})
    return app


@dataclass
class Tenants:
    a: Credentials
    b: Credentials
    b_other_key: dict
    b_approval: dict
    platform_approval: dict
    platform_key: Credentials


@pytest.fixture
def tenants(app, client, platform_key) -> Tenants:
    """Merchants A and B; B has a second key and a held live key; the platform has a held key."""
    a, b = make_merchant(app, "Alpha Shop"), make_merchant(app, B_NAME)
    b_other = client.post(f"/v1/merchants/{b.merchant_id}/api_keys", json={"name": "bravo backend"})
    assert b_other.status_code == 201, b_other.text
    b_approval = client.post(f"/v1/merchants/{b.merchant_id}/api_keys", json={"mode": "live", "name": "bravo live"})
    assert b_approval.status_code == 202, b_approval.text
    platform_approval = client.post("/v1/api_keys", json={"name": "ops robot", "scopes": ["ledger:read"]})
    assert platform_approval.status_code == 202, platform_approval.text
    return Tenants(a, b, b_other.json(), b_approval.json(), platform_approval.json(), platform_key)


def not_found(response: httpx.Response, *leaks: str) -> None:
    assert response.status_code == 404, response.text
    assert response.json()["code"].endswith("not_found"), response.json()  # not_found, user_not_found, ...
    for leak in leaks:
        assert leak not in response.text


def forbidden(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "forbidden"


def same_answer(caller, method: str, path_for, *targets: str, json: dict | None = None, auth=None) -> int:
    """The caller gets the same status and code for each target (another tenant's object and
    one that does not exist): the answer says nothing about whether the object exists."""
    answers = set()
    for target in targets:
        response = caller.request(method, path_for(target), json=json, **({"auth": auth} if auth else {}))
        answers.add((response.status_code, response.json().get("code") if response.content else None))
    assert len(answers) == 1, answers
    return answers.pop()[0]


# --------------------------------------------------------------------------------- merchant keys


class TestMerchantKeyAgainstAnotherMerchant:
    def test_reading_b_is_404_and_listing_shows_only_a(self, tenants, anonymous_client):
        a, b = tenants.a, tenants.b
        not_found(anonymous_client.get(f"/v1/merchants/{b.merchant_id}", auth=a.auth), B_NAME)
        listed = anonymous_client.get("/v1/merchants", auth=a.auth)
        assert [m["id"] for m in listed.json()["data"]] == [a.merchant_id]
        paged = anonymous_client.get("/v1/merchants", params={"starting_after": "mch_", "limit": 500}, auth=a.auth)
        assert [m["id"] for m in paged.json()["data"]] == [a.merchant_id]
        assert B_NAME not in listed.text + paged.text
        assert anonymous_client.get(f"/v1/merchants/{a.merchant_id}", auth=a.auth).status_code == 200

    def test_acting_on_b_gets_the_answer_a_missing_merchant_gets(self, tenants, anonymous_client, client):
        a, b = tenants.a, tenants.b
        for method, path_for, body in (
            ("PATCH", lambda m: f"/v1/merchants/{m}", {"status": "suspended"}),
            ("GET", lambda m: f"/v1/merchants/{m}/api_keys", None),
            ("POST", lambda m: f"/v1/merchants/{m}/api_keys", {"name": "intruder"}),
            ("POST", lambda m: f"/v1/merchants/{m}/api_keys/{tenants.b_other_key['id']}/revoke", None),
            ("POST", lambda m: f"/v1/merchants/{m}/api_keys/{tenants.b_other_key['id']}/secret", None),
        ):
            status = same_answer(anonymous_client, method, path_for, b.merchant_id, MISSING_MERCHANT, json=body,
                                 auth=a.auth)
            assert status in (403, 404), (method, status)
        # Nothing of B changed: still active, its key still works, nothing was made for it.
        assert client.get(f"/v1/merchants/{b.merchant_id}").json()["status"] == "active"
        assert anonymous_client.get(f"/v1/merchants/{b.merchant_id}", auth=b.auth).status_code == 200
        names = [k["name"] for k in client.get(f"/v1/merchants/{b.merchant_id}/api_keys").json()["data"]]
        assert "intruder" not in names

    def test_bs_approvals_and_the_platforms_are_out_of_reach(self, tenants, anonymous_client, client):
        a = tenants.a
        for suffix in ("", "/approve", "/reject"):
            method = "GET" if not suffix else "POST"
            same_answer(anonymous_client, method, lambda i, s=suffix: f"/v1/approvals/{i}{s}",
                        tenants.b_approval["id"], tenants.platform_approval["id"], MISSING_APPROVAL, auth=a.auth)
        listed = anonymous_client.get("/v1/approvals", auth=a.auth)
        assert listed.status_code in (200, 403), listed.text
        if listed.status_code == 200:
            assert listed.json()["data"] == []
        assert client.get(f"/v1/approvals/{tenants.b_approval['id']}").json()["status"] == "pending"

    @pytest.mark.parametrize("method,path,body", [
        ("GET", "/v1/ledger/verify", None),
        ("GET", "/v1/ledger/accounts/acct_x", None),
        ("POST", "/v1/ledger/accounts", {"id": "acct_tenant", "type": "asset", "currency": "CNY", "code": "t"}),
        ("POST", "/v1/ledger/transfers", {}),
        ("POST", "/v1/api_keys", {"scopes": ["ledger:read"]}),
        ("GET", "/v1/api_keys", None),
        ("GET", "/v1/audit/events", None),
        ("GET", "/v1/audit/verify", None),
        ("POST", "/v1/merchants", {"name": "Merchant-made merchant"}),
        ("GET", "/v1/users", None),
    ])
    def test_platform_only_routes_are_forbidden_to_a_merchant_key(self, tenants, anonymous_client, method, path,
                                                                    body):
        forbidden(anonymous_client.request(method, path, json=body, auth=tenants.a.auth))

    def test_the_platforms_keys_are_out_of_reach(self, tenants, anonymous_client, client):
        a, platform = tenants.a, tenants.platform_key
        for suffix in ("revoke", "secret"):
            response = anonymous_client.post(f"/v1/api_keys/{platform.key_id}/{suffix}", auth=a.auth)
            assert response.status_code in (403, 404), response.text
        assert client.get("/v1/merchants").status_code == 200  # the platform key still works

    def test_the_same_idempotency_key_in_two_tenants_is_two_requests(self, tenants, anonymous_client):
        card = {"number": "4111111111111111", "exp_month": 12, "exp_year": CARD_EXP_YEAR}
        headers = {"Idempotency-Key": "order-1"}
        first = anonymous_client.post("/v1/vault/cards", json=card, headers=headers, auth=tenants.a.auth)
        second = anonymous_client.post("/v1/vault/cards", json=card, headers=headers, auth=tenants.b.auth)
        assert first.status_code == 201 and second.status_code == 201, (first.text, second.text)
        assert "idempotent-replayed" not in second.headers
        assert first.json()["merchant_id"] == tenants.a.merchant_id
        assert second.json()["merchant_id"] == tenants.b.merchant_id
        assert first.json()["id"] != second.json()["id"]


# --------------------------------------------------------------------------------- merchant staff


@pytest.fixture
def a_admin(user_client_factory, tenants):
    return user_client_factory("merchant_admin", tenants.a.merchant_id)


@pytest.fixture
def a_viewer(user_client_factory, tenants):
    return user_client_factory("merchant_viewer", tenants.a.merchant_id)


class TestMerchantStaffAgainstAnotherMerchant:
    @pytest.mark.parametrize("role", ["merchant_admin", "merchant_viewer"])
    def test_reading_and_listing_b(self, user_client_factory, tenants, role):
        staff = user_client_factory(role, tenants.a.merchant_id)
        b = tenants.b
        not_found(staff.get(f"/v1/merchants/{b.merchant_id}"), B_NAME)
        assert [m["id"] for m in staff.get("/v1/merchants").json()["data"]] == [tenants.a.merchant_id]
        not_found(staff.get(f"/v1/merchants/{b.merchant_id}/api_keys"), tenants.b_other_key["id"], b.key_id)
        own = staff.get(f"/v1/merchants/{tenants.a.merchant_id}/api_keys")
        assert own.status_code == 200 and [k["id"] for k in own.json()["data"]] == [tenants.a.key_id]
        # Platform keys: an empty list, not B's and not the platform's.
        platform_keys = staff.get("/v1/api_keys")
        assert platform_keys.status_code == 200, platform_keys.text
        assert platform_keys.json()["data"] == []

    def test_a_merchant_admin_cannot_act_on_bs_keys_through_any_path(self, a_admin, tenants, client,
                                                                      anonymous_client):
        a, b, b_key = tenants.a, tenants.b, tenants.b_other_key["id"]
        for path in (f"/v1/merchants/{b.merchant_id}/api_keys/{b_key}/revoke",
                     f"/v1/merchants/{a.merchant_id}/api_keys/{b_key}/revoke",  # B's key under A's path
                     f"/v1/merchants/{b.merchant_id}/api_keys/{b_key}/secret",
                     f"/v1/merchants/{a.merchant_id}/api_keys/{b_key}/secret",
                     f"/v1/merchants/{MISSING_MERCHANT}/api_keys/{MISSING_KEY}/revoke"):
            not_found(a_admin.post(path))
        not_found(a_admin.post(f"/v1/merchants/{b.merchant_id}/api_keys", json={"name": "intruder"}), B_NAME)
        not_found(a_admin.post(f"/v1/merchants/{b.merchant_id}/api_keys", json={"mode": "live"}), B_NAME)
        keys = client.get(f"/v1/merchants/{b.merchant_id}/api_keys").json()["data"]
        assert all(k["revoked_at"] is None for k in keys)
        assert "intruder" not in [k["name"] for k in keys]
        assert anonymous_client.get(f"/v1/merchants/{b.merchant_id}", auth=b.auth).status_code == 200

    def test_a_merchant_admin_cannot_touch_platform_keys(self, a_admin, tenants, client):
        platform = tenants.platform_key
        not_found(a_admin.post(f"/v1/api_keys/{platform.key_id}/revoke"))
        not_found(a_admin.post(f"/v1/api_keys/{platform.key_id}/secret"))
        # ... nor a merchant's key through the platform path.
        not_found(a_admin.post(f"/v1/api_keys/{tenants.a.key_id}/revoke"))
        made = a_admin.post("/v1/api_keys", json={"scopes": ["ledger:read"]})
        assert made.status_code in (403, 404), made.text
        assert client.get("/v1/merchants").status_code == 200
        pending = client.get("/v1/approvals", params={"status": "pending"}).json()["data"]
        assert len(pending) == 2  # B's and the platform's, nothing new

    def test_bs_approvals_are_404_and_absent_from_lists(self, a_admin, tenants, client):
        for approval in (tenants.b_approval, tenants.platform_approval):
            not_found(a_admin.get(f"/v1/approvals/{approval['id']}"), B_NAME)
            not_found(a_admin.post(f"/v1/approvals/{approval['id']}/approve"))
            not_found(a_admin.post(f"/v1/approvals/{approval['id']}/reject"))
        for status in (None, "pending", "approved", "rejected", "expired"):
            params = {"status": status} if status else {}
            assert a_admin.get("/v1/approvals", params=params).json()["data"] == []
        for approval in (tenants.b_approval, tenants.platform_approval):
            assert client.get(f"/v1/approvals/{approval['id']}").json()["status"] == "pending"

    def test_own_approvals_are_seen_and_decided_by_another_admin_of_the_same_merchant(
            self, user_client_factory, a_admin, tenants):
        held = a_admin.post(f"/v1/merchants/{tenants.a.merchant_id}/api_keys", json={"mode": "live"})
        assert held.status_code == 202, held.text
        assert [x["id"] for x in a_admin.get("/v1/approvals").json()["data"]] == [held.json()["id"]]
        b_admin = user_client_factory("merchant_admin", tenants.b.merchant_id)
        not_found(b_admin.post(f"/v1/approvals/{held.json()['id']}/approve"))
        colleague = user_client_factory("merchant_admin", tenants.a.merchant_id)
        approved = colleague.post(f"/v1/approvals/{held.json()['id']}/approve")
        assert approved.status_code == 200, approved.text

    def test_a_viewer_cannot_act_even_on_its_own_merchant(self, a_viewer, tenants):
        a = tenants.a
        forbidden(a_viewer.post(f"/v1/merchants/{a.merchant_id}/api_keys", json={}))
        forbidden(a_viewer.post(f"/v1/merchants/{a.merchant_id}/api_keys/{a.key_id}/revoke"))
        forbidden(a_viewer.patch(f"/v1/merchants/{a.merchant_id}", json={"name": "Renamed"}))
        forbidden(a_viewer.post(f"/v1/approvals/{tenants.b_approval['id']}/approve"))

    @pytest.mark.parametrize("method,path", [
        ("GET", "/v1/ledger/verify"), ("GET", "/v1/audit/events"), ("GET", "/v1/audit/verify"),
        ("POST", "/v1/merchants"),
    ])
    @pytest.mark.parametrize("role", ["merchant_admin", "merchant_viewer"])
    def test_platform_only_routes_are_forbidden_to_merchant_staff(self, user_client_factory, tenants, role,
                                                                    method, path):
        staff = user_client_factory(role, tenants.a.merchant_id)
        forbidden(staff.request(method, path, json={"name": "x"} if method == "POST" else None))

    def test_bs_people_are_not_listed_or_readable(self, user_client_factory, a_admin, tenants):
        b_person = user_client_factory("merchant_viewer", tenants.b.merchant_id)
        listed = a_admin.get("/v1/users", params={"limit": 500})
        assert listed.status_code == 200, listed.text
        assert b_person.user.email not in listed.text
        not_found(a_admin.get(f"/v1/users/{b_person.user.id}"), b_person.user.email)

    def test_a_viewer_repeating_its_admins_key_creation_gets_no_secret(self, a_admin, a_viewer, tenants):
        """Found by this suite: both people share the merchant's idempotency scope, and a repeat
        was answered before the permission check, so the viewer (no api_keys:write) read the
        secret of the key its admin made (fixed in 473eb30)."""
        path = f"/v1/merchants/{tenants.a.merchant_id}/api_keys"
        headers = {"Idempotency-Key": "staff-key-1", "Content-Type": "application/json"}
        made = a_admin.post(path, content=b'{"name":"till"}', headers=headers)
        assert made.status_code == 201, made.text
        repeat = a_viewer.post(path, content=b'{"name":"till"}', headers=headers)
        assert made.json()["secret"] not in repeat.text
        assert repeat.status_code == 409, repeat.text  # another caller: a different request under a used key
        assert repeat.json()["code"] == "idempotency_key_reused"
