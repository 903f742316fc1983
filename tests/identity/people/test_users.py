"""Managing people: the password policy, creating and listing, tenant rules for merchant
admins, disabling, role changes through a second person's approval, and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import select

from clearhouse.identity.models import User
from clearhouse.identity.people import service
from clearhouse.kit.db import transact
from tests.conftest import ROOT
from tests.identity.people_support import login, new_password, user_row

USERS = "/v1/users"


def _signed_in(browser, user):
    client = browser()
    login(client, user)
    return client


class TestPasswordPolicy:
    @pytest.mark.parametrize(("password", "reason"), [
        ("Short-1", "too_short"),
        ("x" * 257, "too_long"),
        ("aaaaaaaaaaaaaaaaaab1", "repetitive"),
        ("abababababababab", "repetitive"),
        ("grace.hopper-2026!", "contains_email"),
        ("Password1234!", "common"),
        ("qwertyuiop123", "common"),
        ("!!Welcome!!2026", "common"),
        ("1234567890123", "common"),
    ])
    def test_weak_passwords_are_refused_with_the_reason(self, password, reason):
        with pytest.raises(service.WeakPassword) as refused:
            service.check_password_policy(password, "grace.hopper@example.com")
        assert refused.value.extra["reason"] == reason

    @pytest.mark.parametrize("password", ["Tidal-Harbour-7c1f", "correct horse battery stapler", "é" * 6 + "ñandú12"])
    def test_reasonable_passwords_pass(self, password):
        service.check_password_policy(password, "grace.hopper@example.com")

    def test_the_api_answers_422_weak_password(self, browser, make_user):
        admin = _signed_in(browser, make_user("admin"))
        response = admin.post(USERS, json={"email": "grace.hopper@example.com", "role": "operator",
                                           "password": "grace.hopper-2026!"})
        assert response.status_code == 422
        assert response.json()["code"] == "weak_password" and response.json()["reason"] == "contains_email"


class TestCreate:
    def test_an_admin_creates_a_person_who_can_sign_in(self, app, browser, make_user):
        admin = _signed_in(browser, make_user("admin"))
        password = new_password()
        response = admin.post(USERS, json={"email": "Ada.Lovelace@Example.com", "role": "risk_analyst",
                                           "password": password})
        assert response.status_code == 201, response.text
        created = response.json()
        assert created["email"] == "ada.lovelace@example.com" and created["role"] == "risk_analyst"
        assert created["merchant_id"] is None and created["totp_enabled"] is False
        assert "password" not in response.text and password not in response.text
        assert user_row(app.state.engine, created["id"]).password_hash.startswith("$argon2id$")
        signed_in = browser().post("/v1/auth/login", json={"email": "ADA.LOVELACE@example.com", "password": password})
        assert signed_in.status_code == 200
        assert admin.get(f"{USERS}/{created['id']}").json()["email"] == "ada.lovelace@example.com"

    def test_an_email_is_taken_once_whatever_its_case(self, browser, make_user):
        admin = _signed_in(browser, make_user("admin"))
        first = admin.post(USERS, json={"email": "ops@example.com", "role": "risk_analyst", "password": new_password()})
        assert first.status_code == 201
        again = admin.post(USERS, json={"email": "OPS@example.com", "role": "auditor", "password": new_password()})
        assert again.status_code == 409 and again.json()["code"] == "email_taken"

    @pytest.mark.parametrize(("body", "code"), [
        ({"email": "not-an-address", "role": "operator"}, "invalid_email"),
        ({"email": "a@b", "role": "operator"}, "invalid_email"),
        ({"email": "shop@example.com", "role": "merchant_viewer"}, "role_not_allowed"),
        ({"email": "ops@example.com", "role": "operator", "merchant_id": "mch_nope"}, "role_not_allowed"),
        ({"email": "shop@example.com", "role": "merchant_viewer", "merchant_id": "mch_nope"}, "merchant_not_found"),
        ({"email": "x@example.com", "role": "superuser"}, "validation_error"),
    ])
    def test_bad_requests_are_422(self, browser, make_user, body, code):
        admin = _signed_in(browser, make_user("admin"))
        response = admin.post(USERS, json={**body, "password": new_password()})
        assert response.status_code == 422 and response.json()["code"] == code

    def test_without_users_write_nobody_creates_people(self, browser, make_user):
        operator = _signed_in(browser, make_user("operator"))
        response = operator.post(USERS, json={"email": "x@example.com", "role": "auditor",
                                              "password": new_password()})
        assert response.status_code == 403 and response.json()["code"] == "forbidden"

    def test_listing_pages_in_creation_order(self, browser, make_user):
        admin_user = make_user("admin")
        made = [make_user("auditor").id for _ in range(3)]
        admin = _signed_in(browser, admin_user)
        first = admin.get(USERS, params={"limit": 2, "role": "auditor"}).json()
        assert [u["id"] for u in first["data"]] == made[:2] and first["has_more"]
        rest = admin.get(USERS, params={"limit": 2, "role": "auditor",
                                        "starting_after": first["next_cursor"]}).json()
        assert [u["id"] for u in rest["data"]] == made[2:] and not rest["has_more"]


class TestMerchantAdmins:
    def test_a_merchant_admin_manages_only_its_own_merchants_staff(self, app, browser, make_user):
        shop_a_admin = make_user("merchant_admin")
        shop_b_viewer = make_user("merchant_viewer")
        platform_person = make_user("operator")
        client = _signed_in(browser, shop_a_admin)

        created = client.post(USERS, json={"email": "clerk@shop-a.example", "role": "merchant_viewer",
                                           "password": new_password()})
        assert created.status_code == 201, created.text
        assert created.json()["merchant_id"] == shop_a_admin.merchant_id

        listed = client.get(USERS).json()["data"]
        assert {u["merchant_id"] for u in listed} == {shop_a_admin.merchant_id}
        assert client.get(USERS, params={"merchant_id": shop_b_viewer.merchant_id}).json()["data"] == []
        for stranger in (shop_b_viewer, platform_person):
            assert client.get(f"{USERS}/{stranger.id}").status_code == 404
            assert client.patch(f"{USERS}/{stranger.id}", json={"disabled": True}).status_code == 404
            assert client.post(f"{USERS}/{stranger.id}/role", json={"role": "merchant_admin"}).status_code == 404
        assert user_row(app.state.engine, shop_b_viewer.id).disabled is False

    @pytest.mark.parametrize("role", ["admin", "operator", "auditor"])
    def test_a_merchant_admin_hands_out_only_merchant_roles(self, browser, make_user, role):
        client = _signed_in(browser, make_user("merchant_admin"))
        response = client.post(USERS, json={"email": "boss@example.com", "role": role, "password": new_password()})
        assert response.status_code == 422 and response.json()["code"] == "role_not_allowed"

    def test_a_merchant_admin_cannot_create_staff_for_another_merchant(self, browser, make_user):
        client = _signed_in(browser, make_user("merchant_admin"))
        other_shop = make_user("merchant_viewer").merchant_id
        response = client.post(USERS, json={"email": "spy@example.com", "role": "merchant_viewer",
                                            "merchant_id": other_shop, "password": new_password()})
        assert response.status_code == 422 and response.json()["code"] == "merchant_not_found"

    def test_a_merchant_viewer_only_reads(self, browser, make_user):
        viewer = make_user("merchant_viewer")
        client = _signed_in(browser, viewer)
        assert client.get(USERS).status_code == 200
        response = client.post(USERS, json={"email": "x@example.com", "role": "merchant_viewer",
                                            "password": new_password()})
        assert response.status_code == 403


class TestDisable:
    def test_disabling_ends_the_sessions_and_sign_ins(self, app, browser, make_user):
        admin = _signed_in(browser, make_user("admin"))
        person = make_user("operator")
        their_client = _signed_in(browser, person)
        response = admin.patch(f"{USERS}/{person.id}", json={"disabled": True})
        assert response.status_code == 200 and response.json()["disabled"] is True
        assert their_client.get("/v1/auth/me").status_code == 401
        refused = browser().post("/v1/auth/login", json={"email": person.email, "password": person.password})
        assert refused.json()["code"] == "invalid_credentials"
        assert admin.patch(f"{USERS}/{person.id}", json={"disabled": False}).json()["disabled"] is False
        login(browser(), person)

    def test_nobody_disables_themselves(self, browser, make_user):
        admin_user = make_user("admin")
        admin = _signed_in(browser, admin_user)
        response = admin.patch(f"{USERS}/{admin_user.id}", json={"disabled": True})
        assert response.status_code == 409 and response.json()["code"] == "cannot_disable_self"


class TestRoleChange:
    def test_a_role_change_waits_for_a_second_person(self, app, browser, make_user):
        maker_user, checker_user = make_user("admin"), make_user("admin")
        maker, checker = _signed_in(browser, maker_user), _signed_in(browser, checker_user)
        person = make_user("operator")
        their_client = _signed_in(browser, person)

        held = maker.post(f"{USERS}/{person.id}/role", json={"role": "finance"})
        assert held.status_code == 202, held.text
        approval = held.json()
        assert approval["status"] == "pending" and approval["action"] == "user.role_change"
        assert approval["payload"] == {"user_id": person.id, "role": "finance", "previous_role": "operator"}
        assert user_row(app.state.engine, person.id).role == "operator"

        own = maker.post(f"/v1/approvals/{approval['id']}/approve", json={})
        assert own.status_code == 403
        approved = checker.post(f"/v1/approvals/{approval['id']}/approve", json={})
        assert approved.status_code == 200, approved.text
        assert approved.json()["result"] == {"user_id": person.id, "role": "finance", "previous_role": "operator"}
        assert user_row(app.state.engine, person.id).role == "finance"
        assert their_client.get("/v1/auth/me").status_code == 401  # sessions end with the old role

    def test_a_role_must_fit_the_person(self, browser, make_user):
        admin = _signed_in(browser, make_user("admin"))
        platform_person, merchant_person = make_user("operator"), make_user("merchant_viewer")
        for person, role in ((platform_person, "merchant_admin"), (merchant_person, "admin")):
            response = admin.post(f"{USERS}/{person.id}/role", json={"role": role})
            assert response.status_code == 422 and response.json()["code"] == "role_not_allowed"


class TestCli:
    def _run(self, database_url: str, stdin: str, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "CLEARHOUSE_DATABASE_URL": database_url, "CLEARHOUSE_MASTER_KEY_FILE": "/nonexistent"}
        env.pop("CLEARHOUSE_MASTER_KEY", None)
        code = "from clearhouse.identity.people.commands import app; app()"
        return subprocess.run([sys.executable, "-c", code, "create", *args], input=stdin, capture_output=True,
                              text=True, env=env, cwd=ROOT, timeout=120)

    def test_users_create_reads_the_password_from_stdin(self, engine, database_url):
        password = new_password()
        done = self._run(database_url, password + "\n", "--email", "First.Admin@Example.com", "--role", "admin",
                         "--json")
        assert done.returncode == 0, done.stderr
        import json

        user_id = json.loads(done.stdout)["user_id"]
        row = transact(engine, lambda s: s.execute(select(User).where(User.id == user_id)).scalar_one())
        assert row.email == "first.admin@example.com" and row.role == "admin"
        assert password not in done.stdout + done.stderr

    def test_users_create_applies_the_policy(self, engine, database_url):
        done = self._run(database_url, "short\n", "--email", "ops@example.com", "--role", "operator")
        assert done.returncode == 1 and "weak_password" in done.stderr
