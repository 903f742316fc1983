"""Two-factor sign-in: required for admin and finance, replay-proof, recovery codes once,
and the enrolment-only session of a role that has not set it up yet."""

from __future__ import annotations

import hashlib
import urllib.parse

import pyotp
import pytest
from sqlalchemy import select

from clearhouse.identity.models import RecoveryCode
from clearhouse.identity.people import service
from clearhouse.kit import clock
from clearhouse.kit.db import transact
from tests.identity.people_support import login, next_totp_code, user_row

LOGIN = "/v1/auth/login"


def _code_at(user, step_offset: int) -> str:
    return service.totp_code_at(user.totp_secret, service.totp_step(clock.now()) + step_offset)


def _enrol(client) -> tuple[str, list[str]]:
    """Set up and confirm TOTP through HTTP; returns (seed, recovery codes)."""
    setup = client.post("/v1/auth/totp/setup")
    assert setup.status_code == 200, setup.text
    secret = setup.json()["secret"]
    code = pyotp.TOTP(secret).generate_otp(service.totp_step(clock.now()))
    confirm = client.post("/v1/auth/totp/confirm", json={"code": code})
    assert confirm.status_code == 200, confirm.text
    return secret, confirm.json()["recovery_codes"]


class TestRequired:
    @pytest.mark.parametrize("role", ["admin", "finance"])
    def test_a_password_alone_does_not_sign_in(self, browser, make_user, role):
        user = make_user(role)
        client = browser()
        missing = client.post(LOGIN, json={"email": user.email, "password": user.password})
        assert missing.status_code == 401 and missing.json()["code"] == "totp_required"
        wrong = client.post(LOGIN, json={"email": user.email, "password": user.password, "totp_code": "000000"})
        assert wrong.status_code == 401 and wrong.json()["code"] == "totp_invalid"
        login(client, user)
        assert client.get("/v1/auth/me").json()["session"]["mfa_satisfied"] is True

    def test_optional_for_other_roles_but_required_once_enabled(self, browser, make_user):
        plain = make_user("operator")
        assert browser().post(LOGIN, json={"email": plain.email, "password": plain.password}).status_code == 200
        guarded = make_user("operator", with_totp=True)
        response = browser().post(LOGIN, json={"email": guarded.email, "password": guarded.password})
        assert response.json()["code"] == "totp_required"

    def test_wrong_codes_count_towards_the_lockout(self, app, browser, make_user):
        user = make_user("finance")
        client = browser()
        for _ in range(app.state.settings.login_lockout_threshold):
            client.post(LOGIN, json={"email": user.email, "password": user.password, "totp_code": "123456"})
        locked = client.post(LOGIN, json={"email": user.email, "password": user.password,
                                          "totp_code": next_totp_code(user)})
        assert locked.json()["code"] == "account_locked"


class TestReplay:
    def test_a_code_is_accepted_once(self, browser, make_user, frozen_clock):
        user = make_user("admin")
        code = _code_at(user, 0)
        first = browser().post(LOGIN, json={"email": user.email, "password": user.password, "totp_code": code})
        assert first.status_code == 200, first.text
        again = browser().post(LOGIN, json={"email": user.email, "password": user.password, "totp_code": code})
        assert again.status_code == 401 and again.json()["code"] == "totp_invalid"
        frozen_clock.tick(seconds=10)  # still inside the same step and its window
        again = browser().post(LOGIN, json={"email": user.email, "password": user.password, "totp_code": code})
        assert again.json()["code"] == "totp_invalid"

    def test_an_older_code_is_refused_after_a_newer_one(self, browser, make_user, frozen_clock):
        user = make_user("admin")
        previous, current = _code_at(user, -1), _code_at(user, 0)
        assert browser().post(LOGIN, json={"email": user.email, "password": user.password,
                                           "totp_code": current}).status_code == 200
        older = browser().post(LOGIN, json={"email": user.email, "password": user.password, "totp_code": previous})
        assert older.json()["code"] == "totp_invalid"

    def test_the_window_is_one_step_either_side(self, browser, make_user, frozen_clock):
        user = make_user("admin")
        too_old, too_new = _code_at(user, -2), _code_at(user, 2)
        for code in (too_old, too_new):
            response = browser().post(LOGIN, json={"email": user.email, "password": user.password,
                                                   "totp_code": code})
            assert response.json()["code"] == "totp_invalid"
        assert browser().post(LOGIN, json={"email": user.email, "password": user.password,
                                           "totp_code": _code_at(user, 1)}).status_code == 200

    def test_two_sign_ins_in_one_window_need_two_codes(self, app, browser, make_user, frozen_clock):
        user = make_user("finance")
        login(browser(), user)
        login(browser(), user)  # the next step's code, still inside the window
        assert user_row(app.state.engine, user.id).totp_last_step == service.totp_step(clock.now()) + 1


class TestEnrolment:
    def test_a_role_that_needs_totp_gets_an_enrolment_only_session(self, app, browser, make_user):
        user = make_user("admin", with_totp=False)
        client = browser()
        body = client.post(LOGIN, json={"email": user.email, "password": user.password}).json()
        assert body["mfa_enrollment_required"] is True
        client.headers["X-CSRF-Token"] = body["csrf_token"]
        blocked = client.get("/v1/users")
        assert blocked.status_code == 403 and blocked.json()["code"] == "mfa_enrollment_required"
        assert client.get("/v1/auth/me").status_code == 200
        secret, codes = _enrol(client)
        assert client.get("/v1/users").status_code == 200  # this session passed enrolment
        assert len(codes) == 10 and len(set(codes)) == 10
        row = user_row(app.state.engine, user.id)
        assert row.totp_enabled and secret not in (row.totp_secret_ciphertext or "")

    def test_setup_gives_a_uri_and_a_qr_code_and_stores_the_seed_encrypted(self, app, browser, make_user):
        user = make_user("operator")
        client = browser()
        login(client, user)
        body = client.post("/v1/auth/totp/setup").json()
        uri = urllib.parse.urlparse(body["otpauth_uri"])
        query = urllib.parse.parse_qs(uri.query)
        assert uri.scheme == "otpauth" and uri.netloc == "totp"
        assert query["secret"] == [body["secret"]] and query["issuer"] == ["Clearhouse"]
        assert user.email in urllib.parse.unquote(uri.path)
        assert body["qr_svg"].startswith("<svg") and "</svg>" in body["qr_svg"]
        stored = user_row(app.state.engine, user.id).totp_secret_ciphertext
        assert stored and body["secret"] not in stored
        assert app.state.cipher.decrypt(stored, f"users.totp:{user.id}") == body["secret"]
        assert user_row(app.state.engine, user.id).totp_enabled is False

    def test_confirm_needs_a_right_code_and_a_setup(self, browser, make_user):
        user = make_user("operator")
        client = browser()
        login(client, user)
        early = client.post("/v1/auth/totp/confirm", json={"code": "123456"})
        assert early.status_code == 409 and early.json()["code"] == "totp_not_set_up"
        client.post("/v1/auth/totp/setup")
        wrong = client.post("/v1/auth/totp/confirm", json={"code": "123456"})
        assert wrong.json()["code"] == "totp_invalid"

    def test_an_enabled_seed_cannot_be_replaced(self, browser, make_user):
        """A stolen session must not be able to swap the second factor for the thief's."""
        user = make_user("admin")
        client = browser()
        login(client, user)
        again = client.post("/v1/auth/totp/setup")
        assert again.status_code == 409 and again.json()["code"] == "totp_already_enabled"

    def test_api_keys_have_no_totp_to_set_up(self, client):
        response = client.post("/v1/auth/totp/setup")
        assert response.status_code == 403 and response.json()["code"] == "forbidden"


class TestRecoveryCodes:
    def test_each_code_signs_in_once_and_is_stored_hashed(self, app, browser, make_user):
        user = make_user("operator")
        client = browser()
        login(client, user)
        _secret, codes = _enrol(client)
        stored = transact(app.state.engine, lambda s: set(s.execute(
            select(RecoveryCode.code_hash).where(RecoveryCode.user_id == user.id)).scalars()))
        assert stored == {hashlib.sha256(c.replace("-", "").encode()).hexdigest() for c in codes}
        first = browser().post(LOGIN, json={"email": user.email, "password": user.password,
                                            "recovery_code": codes[0]})
        assert first.status_code == 200, first.text
        again = browser().post(LOGIN, json={"email": user.email, "password": user.password,
                                            "recovery_code": codes[0]})
        assert again.status_code == 401 and again.json()["code"] == "totp_invalid"
        # Typed with capitals and without the dash, the next code still works.
        relaxed = codes[1].replace("-", "").upper()
        assert browser().post(LOGIN, json={"email": user.email, "password": user.password,
                                           "recovery_code": relaxed}).status_code == 200

    def test_another_persons_code_does_not_work(self, browser, make_user):
        owner, other = make_user("operator"), make_user("operator", with_totp=True)
        client = browser()
        login(client, owner)
        _secret, codes = _enrol(client)
        response = browser().post(LOGIN, json={"email": other.email, "password": other.password,
                                               "recovery_code": codes[0]})
        assert response.json()["code"] == "totp_invalid"
