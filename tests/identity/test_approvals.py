"""Maker-checker through the API: a live or platform key is held until a different person
with the needed permission approves it; then it is made exactly as held, and its secret is
collected once, by the maker.

People sign in over HTTP (``user_client_factory``); admins and finance have TOTP.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import httpx
import pytest
from fastapi.testclient import TestClient

from clearhouse.kit import clock
from tests.conftest import CARD_EXP_YEAR, Credentials, make_merchant
from tests.identity.people_support import CSRF_HEADER, login

APPROVAL_TTL = timedelta(hours=24)


@pytest.fixture
def app(app):
    """Many people sign in from the test client's one address: the login limit has its own tests."""
    app.state.settings = app.state.settings.model_copy(update={"login_rate_limit_per_minute": 1000})
    return app


@pytest.fixture
def shop(app) -> Credentials:
    return make_merchant(app, "Approval Shop")


def hold_live_key(maker, merchant_id: str, **body) -> dict:
    held = maker.post(f"/v1/merchants/{merchant_id}/api_keys", json={"mode": "live", **body})
    assert held.status_code == 202, held.text
    assert held.json()["status"] == "pending"
    return held.json()


def refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["code"] == code, response.json()


def live_keys(client, merchant_id: str) -> list[dict]:
    return [k for k in client.get(f"/v1/merchants/{merchant_id}/api_keys").json()["data"] if k["mode"] == "live"]


class TestWhoMayDecide:
    def test_the_maker_cannot_approve_their_own_request(self, client, user_client_factory, shop):
        maker = user_client_factory("admin")
        approval = hold_live_key(maker, shop.merchant_id)
        refused(maker.post(f"/v1/approvals/{approval['id']}/approve"), 403, "self_approval_refused")
        assert maker.get(f"/v1/approvals/{approval['id']}").json()["status"] == "pending"
        assert live_keys(client, shop.merchant_id) == []

    def test_the_makers_second_session_is_still_the_maker(self, app, client, user_client_factory, shop):
        maker = user_client_factory("admin")
        approval = hold_live_key(maker, shop.merchant_id)
        with TestClient(app, raise_server_exceptions=False) as second_browser:
            login(second_browser, maker.user)
            refused(second_browser.post(f"/v1/approvals/{approval['id']}/approve"), 403, "self_approval_refused")

    @pytest.mark.parametrize("role", ["operator", "finance"])
    def test_a_role_that_decides_approvals_but_lacks_the_held_permission_is_refused(
            self, client, user_client_factory, shop, role):
        maker = user_client_factory("admin")
        approval = hold_live_key(maker, shop.merchant_id)
        checker = user_client_factory(role)
        refused(checker.post(f"/v1/approvals/{approval['id']}/approve"), 403, "forbidden")
        refused(checker.post(f"/v1/approvals/{approval['id']}/reject"), 403, "forbidden")
        assert client.get(f"/v1/approvals/{approval['id']}").json()["status"] == "pending"

    @pytest.mark.parametrize("role", ["auditor", "risk_analyst"])
    def test_a_role_without_approvals_decide_is_refused(self, client, user_client_factory, shop, role):
        approval = hold_live_key(user_client_factory("admin"), shop.merchant_id)
        checker = user_client_factory(role)
        refused(checker.post(f"/v1/approvals/{approval['id']}/approve"), 403, "forbidden")
        assert live_keys(client, shop.merchant_id) == []

    def test_api_keys_cannot_approve_even_with_every_platform_scope(self, client, user_client_factory, shop):
        approval = hold_live_key(client, shop.merchant_id)  # a key may ask ...
        assert approval["maker_type"] == "api_key"
        refused(client.post(f"/v1/approvals/{approval['id']}/approve"), 403, "forbidden")  # ... never decide
        # Nor can the shop's own merchant key.
        refused(client.post(f"/v1/approvals/{approval['id']}/approve", auth=shop.auth), 403, "forbidden")
        # A person may approve what a key asked for.
        approved = user_client_factory("admin").post(f"/v1/approvals/{approval['id']}/approve")
        assert approved.status_code == 200, approved.text


class TestDecisions:
    def test_approval_makes_the_key_exactly_as_held_and_the_maker_collects_the_secret_once(
            self, client, user_client_factory, shop, live_server):
        maker, checker = user_client_factory("admin"), user_client_factory("admin")
        expires_at = clock.rfc3339(clock.now() + timedelta(days=90))
        approval = hold_live_key(maker, shop.merchant_id, name="production", expires_at=expires_at,
                                 scopes=["payments:write", "merchants:read"])
        assert approval["maker_id"] == maker.user.id and approval["permission"] == "api_keys:write"

        approved = checker.post(f"/v1/approvals/{approval['id']}/approve", json={"reason": "ticket OPS-7"})
        assert approved.status_code == 200, approved.text
        decided = approved.json()
        assert decided["status"] == "approved" and decided["checker_id"] == checker.user.id
        assert decided["reason"] == "ticket OPS-7" and decided["decided_at"] is not None
        key_id = decided["result"]["api_key_id"]
        assert key_id.startswith("ck_live_")

        [key] = live_keys(client, shop.merchant_id)
        assert key["id"] == key_id and key["name"] == "production" and key["merchant_id"] == shop.merchant_id
        assert sorted(key["scopes"]) == ["merchants:read", "payments:write"]
        assert key["expires_at"] == expires_at
        assert key["created_by"] == maker.user.id and key["secret_collected"] is False
        assert "secret" not in approved.text

        secret_path = f"/v1/merchants/{shop.merchant_id}/api_keys/{key_id}/secret"
        refused(checker.post(secret_path), 403, "forbidden")  # the checker never sees it
        refused(client.post(secret_path), 403, "forbidden")  # nor does a platform key
        collected = maker.post(secret_path)
        assert collected.status_code == 200, collected.text
        secret = collected.json()["secret"]
        assert collected.json()["secret_collected"] is True
        refused(maker.post(secret_path), 409, "secret_already_collected")
        refused(checker.post(secret_path), 403, "forbidden")
        assert all("secret" not in k for k in client.get(f"/v1/merchants/{shop.merchant_id}/api_keys").json()["data"])

        with httpx.Client(base_url=live_server, timeout=30, auth=Credentials(key_id, secret).auth) as live:
            assert live.get(f"/v1/merchants/{shop.merchant_id}").status_code == 200
            # Held without vault:write, made without it.
            card = {"number": "4111111111111111", "exp_month": 12, "exp_year": CARD_EXP_YEAR}
            refused(live.post("/v1/vault/cards", json=card), 403, "forbidden")

    def test_a_platform_key_is_made_on_approval_and_collected_by_its_maker(self, user_client_factory, live_server):
        maker, checker = user_client_factory("admin"), user_client_factory("admin")
        held = maker.post("/v1/api_keys", json={"name": "recon robot", "scopes": ["ledger:read"]})
        assert held.status_code == 202, held.text
        approved = checker.post(f"/v1/approvals/{held.json()['id']}/approve")
        assert approved.status_code == 200, approved.text
        key_id = approved.json()["result"]["api_key_id"]
        assert key_id.startswith("ck_platform_")
        refused(checker.post(f"/v1/api_keys/{key_id}/secret"), 403, "forbidden")
        collected = maker.post(f"/v1/api_keys/{key_id}/secret")
        assert collected.status_code == 200, collected.text
        refused(maker.post(f"/v1/api_keys/{key_id}/secret"), 409, "secret_already_collected")
        with httpx.Client(base_url=live_server, timeout=30,
                          auth=Credentials(key_id, collected.json()["secret"]).auth) as robot:
            assert robot.get("/v1/ledger/verify").status_code == 200
            refused(robot.post("/v1/ledger/accounts", json={"id": "acct_robot", "type": "asset",
                                                            "currency": "CNY", "code": "robot"}), 403, "forbidden")

    def test_a_repeat_of_the_makers_collection_does_not_show_the_secret_to_the_checker(
            self, client, user_client_factory, shop):
        """Found by this suite: the maker collects with an Idempotency-Key (api.md invites it on
        POSTs); the checker sent the same POST with the same key and the idempotency middleware
        replayed the maker's 200, secret included, before the route checked who was asking
        (fixed in 473eb30)."""
        maker, checker = user_client_factory("admin"), user_client_factory("admin")
        approval = hold_live_key(maker, shop.merchant_id)
        key_id = checker.post(f"/v1/approvals/{approval['id']}/approve").json()["result"]["api_key_id"]
        secret_path = f"/v1/merchants/{shop.merchant_id}/api_keys/{key_id}/secret"
        collected = maker.post(secret_path, headers={"Idempotency-Key": "collect-0001"})
        assert collected.status_code == 200, collected.text
        repeat = checker.post(secret_path, headers={"Idempotency-Key": "collect-0001"})
        assert collected.json()["secret"] not in repeat.text
        # The caller is part of what makes two requests the same: another person's repeat is a
        # different request under a used key.
        refused(repeat, 409, "idempotency_key_reused")

    def test_reject_makes_nothing_and_is_final(self, client, user_client_factory, shop):
        maker, checker = user_client_factory("admin"), user_client_factory("admin")
        approval = hold_live_key(maker, shop.merchant_id)
        rejected = checker.post(f"/v1/approvals/{approval['id']}/reject", json={"reason": "not needed"})
        assert rejected.status_code == 200, rejected.text
        assert rejected.json()["status"] == "rejected" and rejected.json()["result"] is None
        assert rejected.json()["reason"] == "not needed"
        assert live_keys(client, shop.merchant_id) == []
        third = user_client_factory("admin")
        refused(third.post(f"/v1/approvals/{approval['id']}/approve"), 409, "approval_not_pending")
        refused(third.post(f"/v1/approvals/{approval['id']}/reject"), 409, "approval_not_pending")
        assert live_keys(client, shop.merchant_id) == []

    def test_an_approved_action_is_not_decided_again(self, client, user_client_factory, shop):
        maker, checker, third = (user_client_factory("admin") for _ in range(3))
        approval = hold_live_key(maker, shop.merchant_id)
        assert checker.post(f"/v1/approvals/{approval['id']}/approve").status_code == 200
        refused(third.post(f"/v1/approvals/{approval['id']}/approve"), 409, "approval_not_pending")
        refused(checker.post(f"/v1/approvals/{approval['id']}/approve"), 409, "approval_not_pending")
        refused(third.post(f"/v1/approvals/{approval['id']}/reject"), 409, "approval_not_pending")
        assert len(live_keys(client, shop.merchant_id)) == 1

    def test_two_checkers_approving_at_once_make_one_key(self, client, user_client_factory, shop, live_server):
        maker = user_client_factory("admin")
        approval = hold_live_key(maker, shop.merchant_id)
        checkers = [user_client_factory("admin") for _ in range(4)]
        statuses: list[int] = []
        start = threading.Barrier(len(checkers))

        def approve(checker) -> None:
            cookies = {"clearhouse_session": checker.cookies.get("clearhouse_session")}
            with httpx.Client(base_url=live_server, timeout=60, cookies=cookies,
                              headers={CSRF_HEADER: checker.headers[CSRF_HEADER]}) as browser:
                start.wait()
                statuses.append(browser.post(f"/v1/approvals/{approval['id']}/approve").status_code)

        threads = [threading.Thread(target=approve, args=(c,)) for c in checkers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(statuses) == [200] + [409] * (len(checkers) - 1), statuses
        assert len(live_keys(client, shop.merchant_id)) == 1

    def test_approvals_are_listed_by_status(self, client, user_client_factory, shop):
        maker, checker = user_client_factory("admin"), user_client_factory("admin")
        pending = hold_live_key(maker, shop.merchant_id, name="p")
        done = hold_live_key(maker, shop.merchant_id, name="d")
        checker.post(f"/v1/approvals/{done['id']}/approve")

        def ids(status: str) -> list[str]:
            return [a["id"] for a in checker.get("/v1/approvals", params={"status": status}).json()["data"]]

        assert ids("pending") == [pending["id"]]
        assert ids("approved") == [done["id"]]
        assert ids("rejected") == []


class TestExpiry:
    def test_an_expired_approval_is_refused_and_makes_nothing(self, client, user_client_factory, shop):
        with clock.frozen(clock.now()) as frozen:
            maker = user_client_factory("admin")
            approval = hold_live_key(maker, shop.merchant_id)
            frozen.tick(seconds=APPROVAL_TTL.total_seconds())
            checker = user_client_factory("admin")  # signs in now: a session from before would have ended
            refused(checker.post(f"/v1/approvals/{approval['id']}/approve"), 409, "approval_expired")
            refused(checker.post(f"/v1/approvals/{approval['id']}/reject"), 409, "approval_expired")
            assert checker.get(f"/v1/approvals/{approval['id']}").json()["status"] == "expired"
            listed = checker.get("/v1/approvals", params={"status": "expired"}).json()["data"]
            assert [a["id"] for a in listed] == [approval["id"]]
            assert checker.get("/v1/approvals", params={"status": "pending"}).json()["data"] == []
        assert live_keys(client, shop.merchant_id) == []

    def test_an_approval_one_second_before_expiry_still_runs(self, client, user_client_factory, shop):
        with clock.frozen(clock.now()) as frozen:
            maker = user_client_factory("admin")
            approval = hold_live_key(maker, shop.merchant_id)
            frozen.tick(seconds=APPROVAL_TTL.total_seconds() - 1)
            checker = user_client_factory("admin")
            approved = checker.post(f"/v1/approvals/{approval['id']}/approve")
            assert approved.status_code == 200, approved.text
        assert len(live_keys(client, shop.merchant_id)) == 1
