"""Session 15, found by the exploratory tester: creating people bypassed maker-checker, non-ASCII digits
in a TOTP code were a 500, stale approvals ran, lockout told which addresses have accounts, a suspended
merchant's staff signed in to a dead session, and no-op role and password changes were accepted."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from clearhouse.audit.models import AuditEvent
from clearhouse.kit.db import transact
from tests.identity.people_support import login, new_password, user_row
from tests.identity.test_approvals import refused

USERS = "/v1/users"


def _events(engine, action: str) -> list[AuditEvent]:
    return transact(engine, lambda s: list(s.execute(
        select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)).scalars()))


def _approve(checker, approval_id: str):
    return checker.post(f"/v1/approvals/{approval_id}/approve")


class TestCreatingPeopleIsHeld:
    def test_a_merchant_admin_cannot_make_a_puppet_to_approve_their_own_live_key(
            self, browser, user_client_factory):
        maker = user_client_factory("merchant_admin")
        merchant_id = maker.user.merchant_id
        password = new_password()
        held = maker.post(USERS, json={"email": "puppet@t.dev", "role": "merchant_admin", "password": password})
        assert held.status_code == 202, held.text
        approval = held.json()
        assert approval["action"] == "user.create" and approval["status"] == "pending"
        assert approval["payload"] == {"email": "puppet@t.dev", "role": "merchant_admin", "merchant_id": merchant_id}
        assert "_sealed" not in str(approval) and "argon2" not in str(approval)
        # No account yet: the puppet cannot sign in, so cannot approve the maker's live key.
        refused(browser().post("/v1/auth/login", json={"email": "puppet@t.dev", "password": password}),
                401, "invalid_credentials")
        assert not any(u["email"] == "puppet@t.dev" for u in maker.get(USERS).json()["data"])
        refused(_approve(maker, approval["id"]), 403, "self_approval_refused")

        checker = user_client_factory("merchant_admin", merchant_id)
        approved = _approve(checker, approval["id"])
        assert approved.status_code == 200, approved.text
        user_id = approved.json()["result"]["user_id"]
        assert maker.get(f"{USERS}/{user_id}").json()["role"] == "merchant_admin"
        signed_in = browser().post("/v1/auth/login", json={"email": "puppet@t.dev", "password": password})
        assert signed_in.status_code == 200, signed_in.text

    def test_an_admin_creating_an_admin_is_held_like_a_role_change(self, app, user_client_factory):
        maker = user_client_factory("admin")
        held = maker.post(USERS, json={"email": "second-admin@t.dev", "role": "admin", "password": new_password()})
        assert held.status_code == 202, held.text
        requested = _events(app.state.engine, "approval.request")
        assert requested and all("argon2" not in e.changes_json for e in requested)
        # The same checks as an immediate creation, up front.
        refused(maker.post(USERS, json={"email": "x@t.dev", "role": "operator", "password": "short"}),
                422, "weak_password")
        checker = user_client_factory("admin")
        approved = _approve(checker, held.json()["id"])
        assert approved.status_code == 200, approved.text
        # Approving it again, or creating the same address again, is refused.
        refused(maker.post(USERS, json={"email": "second-admin@t.dev", "role": "operator",
                                        "password": new_password()}), 409, "email_taken")

    def test_a_held_creation_whose_address_was_taken_meanwhile_ends(self, user_client_factory):
        maker, checker = user_client_factory("admin"), user_client_factory("admin")
        held = maker.post(USERS, json={"email": "dup@t.dev", "role": "operator", "password": new_password()})
        assert held.status_code == 202, held.text
        made = maker.post(USERS, json={"email": "dup@t.dev", "role": "auditor", "password": new_password()})
        assert made.status_code == 201, made.text
        refused(_approve(checker, held.json()["id"]), 409, "approval_expired")
        ended = checker.get(f"/v1/approvals/{held.json()['id']}").json()
        assert ended["status"] == "expired" and "dup@t.dev" in ended["reason"]
        assert checker.get(f"{USERS}/{made.json()['id']}").json()["role"] == "auditor"

    def test_a_role_that_decides_nothing_is_created_at_once(self, user_client_factory):
        admin = user_client_factory("admin")
        made = admin.post(USERS, json={"email": "reader@t.dev", "role": "auditor", "password": new_password()})
        assert made.status_code == 201, made.text
        assert made.json()["role"] == "auditor"


FULL_WIDTH = "\uff11\uff12\uff13\uff14\uff15\uff16"
ARABIC_INDIC = "\u0661\u0662\u0663\u0664\u0665\u0666"


class TestNonAsciiDigits:
    @pytest.mark.parametrize("code", [FULL_WIDTH, ARABIC_INDIC])
    def test_a_totp_code_of_other_digits_is_a_wrong_code_counted_and_audited(self, app, browser, make_user,
                                                                               code):
        person = make_user("operator", with_totp=True)
        response = browser().post("/v1/auth/login", json={"email": person.email, "password": person.password,
                                                          "totp_code": code})
        refused(response, 401, "totp_invalid")
        assert user_row(app.state.engine, person.id).failed_logins == 1
        failures = [e for e in _events(app.state.engine, "user.login_failed") if e.object_id == person.id]
        assert len(failures) == 1

    def test_a_recovery_code_of_other_characters_is_a_wrong_code(self, app, browser, make_user):
        person = make_user("operator", with_totp=True)
        response = browser().post("/v1/auth/login", json={"email": person.email, "password": person.password,
                                                          "recovery_code": "\uff17k2mq-x9d4f"})
        refused(response, 401, "totp_invalid")
        assert user_row(app.state.engine, person.id).failed_logins == 1

    def test_confirming_totp_with_other_digits_is_a_wrong_code(self, browser, make_user):
        person = make_user("operator")
        client = browser()
        login(client, person)
        assert client.post("/v1/auth/totp/setup").status_code == 200
        refused(client.post("/v1/auth/totp/confirm", json={"code": FULL_WIDTH}), 401, "totp_invalid")


class TestStaleApprovals:
    def test_a_second_role_change_held_from_the_old_role_ends_when_the_first_is_applied(
            self, make_user, user_client_factory):
        maker, checker = user_client_factory("admin"), user_client_factory("admin")
        person = make_user("risk_analyst")
        first = maker.post(f"{USERS}/{person.id}/role", json={"role": "auditor"}).json()
        second = maker.post(f"{USERS}/{person.id}/role", json={"role": "operator"}).json()
        assert _approve(checker, first["id"]).status_code == 200
        refused(_approve(checker, second["id"]), 409, "approval_expired")
        ended = checker.get(f"/v1/approvals/{second['id']}").json()
        assert ended["status"] == "expired" and "auditor" in ended["reason"]
        assert checker.get(f"{USERS}/{person.id}").json()["role"] == "auditor"
        refused(_approve(checker, second["id"]), 409, "approval_expired")

    def test_a_role_change_for_a_person_disabled_meanwhile_is_not_applied(self, make_user, user_client_factory):
        maker, checker = user_client_factory("admin"), user_client_factory("admin")
        person = make_user("operator")
        held = maker.post(f"{USERS}/{person.id}/role", json={"role": "admin"}).json()
        assert checker.patch(f"{USERS}/{person.id}", json={"disabled": True}).status_code == 200
        refused(_approve(checker, held["id"]), 409, "approval_expired")
        assert checker.get(f"/v1/approvals/{held['id']}").json()["status"] == "expired"
        assert checker.get(f"{USERS}/{person.id}").json()["role"] == "operator"
        # Nor is a new one asked for while disabled.
        refused(maker.post(f"{USERS}/{person.id}/role", json={"role": "admin"}), 422, "role_not_allowed")

    def test_a_disabled_makers_pending_approvals_end(self, app, client, user_client_factory):
        maker, checker, other = (user_client_factory("admin") for _ in range(3))
        held = maker.post("/v1/api_keys", json={"name": "bot", "scopes": ["ledger:read"]}).json()
        assert other.patch(f"{USERS}/{maker.user.id}", json={"disabled": True}).status_code == 200
        ended = checker.get(f"/v1/approvals/{held['id']}").json()
        assert ended["status"] == "expired" and "disabled" in ended["reason"]
        refused(_approve(checker, held["id"]), 409, "approval_expired")
        assert [e.object_id for e in _events(app.state.engine, "approval.expire")] == [held["id"]]

    def test_a_revoked_maker_keys_pending_approvals_cannot_be_approved(self, client, platform_key,
                                                                      user_client_factory):
        held = client.post("/v1/api_keys", json={"name": "bot", "scopes": ["ledger:read"]})
        assert held.status_code == 202, held.text
        checker = user_client_factory("admin")
        assert checker.post(f"/v1/api_keys/{platform_key.key_id}/revoke").status_code == 200
        refused(_approve(checker, held.json()["id"]), 409, "approval_expired")
        assert checker.get(f"/v1/approvals/{held.json()['id']}").json()["status"] == "expired"


def _answers(browser, email: str, password: str, times: int) -> list[tuple[int, str, str | None]]:
    client = browser()
    out = []
    for _ in range(times):
        response = client.post("/v1/auth/login", json={"email": email, "password": password})
        out.append((response.status_code, response.json()["code"], response.headers.get("retry-after")))
    return out


class TestLockoutSaysNothingOfWhichAddressesExist:
    def test_unknown_disabled_and_known_addresses_answer_alike(self, app, browser, make_user,
                                                              user_client_factory, frozen_clock):
        known = make_user("operator")
        disabled = make_user("operator")
        admin = user_client_factory("admin")
        assert admin.patch(f"{USERS}/{disabled.id}", json={"disabled": True}).status_code == 200
        wrong = new_password()
        expected = _answers(browser, known.email, wrong, 7)
        assert [code for _, code, _ in expected] == ["invalid_credentials"] * 5 + ["account_locked"] * 2
        assert _answers(browser, disabled.email, wrong, 7) == expected
        assert _answers(browser, "Nobody.Here@Example.com", wrong, 7) == expected
        # After the lock, one more failure locks for twice as long, for all three alike.
        frozen_clock.tick(seconds=app.state.settings.login_lockout_seconds + 1)
        again = _answers(browser, known.email, wrong, 2)
        assert again == _answers(browser, disabled.email, wrong, 2)
        assert again == _answers(browser, "nobody.here@example.com", wrong, 2)
        assert again[1][1] == "account_locked"


class TestSuspendedMerchantStaff:
    def test_sign_in_is_refused_with_merchant_suspended(self, client, browser, make_user):
        staff = make_user("merchant_viewer")
        assert client.patch(f"/v1/merchants/{staff.merchant_id}", json={"status": "suspended"}).status_code == 200
        refused(browser().post("/v1/auth/login", json={"email": staff.email, "password": staff.password}),
                403, "merchant_suspended")
        # Only to whoever knows the password.
        refused(browser().post("/v1/auth/login", json={"email": staff.email, "password": new_password()}),
                401, "invalid_credentials")
        assert client.patch(f"/v1/merchants/{staff.merchant_id}", json={"status": "active"}).status_code == 200
        assert browser().post("/v1/auth/login", json={"email": staff.email,
                                                      "password": staff.password}).status_code == 200


class TestNoOpChanges:
    def test_a_role_change_to_the_same_role_is_refused(self, make_user, user_client_factory):
        admin = user_client_factory("admin")
        person = make_user("operator")
        refused(admin.post(f"{USERS}/{person.id}/role", json={"role": "operator"}), 422, "role_not_allowed")
        assert admin.get("/v1/approvals", params={"status": "pending"}).json()["data"] == []

    def test_a_password_change_to_the_current_password_is_refused(self, browser, make_user):
        person = make_user("operator")
        client = browser()
        login(client, person)
        response = client.post("/v1/auth/password", json={"current_password": person.password,
                                                          "new_password": person.password})
        refused(response, 422, "weak_password")
        assert response.json()["reason"] == "same_as_current"
