"""Signing in: sessions and their cookie, one answer for every bad credential, lockout with
backoff, and the per-address rate limit."""

from __future__ import annotations

import hashlib
import time
from http.cookies import SimpleCookie

import orjson
from sqlalchemy import select, update

from clearhouse.audit.models import AuditEvent
from clearhouse.identity.models import User, UserSession
from clearhouse.identity.people import service
from clearhouse.kit.db import transact
from tests.identity.people_support import login, user_row

LOGIN = "/v1/auth/login"


def _cookie(response) -> SimpleCookie:
    cookie = SimpleCookie()
    cookie.load(response.headers["set-cookie"])
    return cookie


def _events(engine, action: str) -> list[AuditEvent]:
    return transact(engine, lambda s: list(s.execute(
        select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)).scalars()))


class TestSignIn:
    def test_the_right_password_opens_a_session_usable_by_cookie(self, app, browser, make_user):
        user = make_user("operator")
        client = browser()
        response = client.post(LOGIN, json={"email": "  " + user.email.upper(), "password": user.password})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["user"]["id"] == user.id and body["user"]["role"] == "operator"
        assert body["mfa_enrollment_required"] is False
        assert body["csrf_token"] and body["expires_at"].endswith("Z")
        assert response.headers["cache-control"] == "no-store"
        me = client.get("/v1/auth/me")
        assert me.status_code == 200, me.text
        assert me.json()["user"]["email"] == user.email
        assert "users:read" in me.json()["permissions"]

    def test_session_cookie_is_httponly_strict_and_secure_over_tls(self, app, browser, make_user):
        user = make_user("auditor")
        plain = browser().post(LOGIN, json={"email": user.email, "password": user.password})
        morsel = _cookie(plain)[service.SESSION_COOKIE]
        assert morsel["httponly"] and morsel["path"] == "/" and morsel["samesite"].lower() == "strict"
        assert not morsel["secure"]
        assert int(morsel["max-age"]) == app.state.settings.session_absolute_hours * 3600
        tls = browser(base_url="https://testserver").post(LOGIN, json={"email": user.email,
                                                                       "password": user.password})
        assert _cookie(tls)[service.SESSION_COOKIE]["secure"]

    def test_only_the_tokens_digest_is_stored(self, app, browser, make_user):
        user = make_user("auditor")
        response = browser().post(LOGIN, json={"email": user.email, "password": user.password})
        token = _cookie(response)[service.SESSION_COOKIE].value
        ids = transact(app.state.engine, lambda s: list(s.execute(
            select(UserSession.id).where(UserSession.user_id == user.id)).scalars()))
        assert ids == [hashlib.sha256(token.encode()).hexdigest()]

    def test_every_sign_in_gets_a_new_session_and_the_old_one_ends(self, app, browser, make_user):
        user = make_user("operator")
        client = browser()
        login(client, user)
        first = client.cookies[service.SESSION_COOKIE]
        login(client, user)
        second = client.cookies[service.SESSION_COOKIE]
        assert first != second
        stale = browser(cookies={service.SESSION_COOKIE: first})
        assert stale.get("/v1/auth/me").status_code == 401
        assert client.get("/v1/auth/me").status_code == 200

    def test_a_planted_cookie_is_not_adopted(self, app, browser, make_user):
        """Session fixation: a token chosen by an attacker never becomes a session."""
        user = make_user("operator")
        client = browser(cookies={service.SESSION_COOKIE: "attacker-chosen-token"})
        response = client.post(LOGIN, json={"email": user.email, "password": user.password})
        assert _cookie(response)[service.SESSION_COOKIE].value != "attacker-chosen-token"
        assert browser(cookies={service.SESSION_COOKIE: "attacker-chosen-token"}).get("/v1/auth/me").status_code \
            == 401


class TestBadCredentials:
    def test_wrong_password_and_unknown_email_get_the_same_answer(self, app, browser, make_user):
        user = make_user("operator")
        client = browser()
        wrong = client.post(LOGIN, json={"email": user.email, "password": user.password + "x"})
        unknown = client.post(LOGIN, json={"email": "nobody@example.com", "password": user.password})
        malformed = client.post(LOGIN, json={"email": "not an address", "password": user.password})
        for response in (wrong, unknown, malformed):
            assert response.status_code == 401
            assert "set-cookie" not in response.headers
        assert wrong.json() == unknown.json() == malformed.json()
        assert wrong.json()["code"] == "invalid_credentials"

    def test_an_unknown_email_costs_a_password_hash_too(self, app, browser, make_user, monkeypatch):
        """An unknown address is checked against a dummy hash made with the same argon2 cost as a
        real one, so it answers no faster. Checked by what is computed, not by timing it (a timed
        comparison of medians failed CI runs under load)."""
        user = make_user("operator")
        client = browser()
        verified: list[str] = []
        real_matches = service._password_matches

        def counting(password_hash: str, password: str) -> bool:
            verified.append(password_hash)
            return real_matches(password_hash, password)

        monkeypatch.setattr(service, "_password_matches", counting)
        for email in (user.email, "nobody@example.com", "NOBODY@example.com"):
            assert client.post(LOGIN, json={"email": email, "password": "Wrong-password-123"}).status_code == 401
        # Each attempt checked one real argon2 hash: the user's, then the dummy one.
        assert len(verified) == 3 and all(h.startswith("$argon2id$") for h in verified)
        real, dummy = verified[0], verified[1]
        assert dummy != real and verified[2] == dummy, "an unknown address is checked against the dummy hash"
        # The same algorithm, version and cost (memory, iterations, lanes): the same work.
        assert dummy.split("$")[:4] == real.split("$")[:4]

    def test_disabled_people_get_the_same_answer(self, app, browser, make_user):
        user = make_user("operator")
        transact(app.state.engine, lambda s: s.execute(update(User).where(User.id == user.id).values(disabled=True)))
        response = browser().post(LOGIN, json={"email": user.email, "password": user.password})
        assert response.status_code == 401 and response.json()["code"] == "invalid_credentials"

    def test_sign_ins_are_audited_without_secrets(self, app, browser, make_user):
        user = make_user("operator")
        client = browser()
        client.post(LOGIN, json={"email": user.email, "password": "Not-the-password-1"})
        login(client, user)
        failed = _events(app.state.engine, "user.login_failed")
        succeeded = _events(app.state.engine, "user.login")
        assert [e.object_id for e in failed] == [user.id] and [e.object_id for e in succeeded] == [user.id]
        assert orjson.loads(failed[0].changes_json) == {"reason": "wrong_password"}
        assert failed[0].source_ip == "testclient"
        for event in failed + succeeded:
            assert user.password not in event.changes_json and "Not-the-password-1" not in event.changes_json


class TestLockout:
    def test_locked_after_the_threshold_even_with_the_right_password(self, app, browser, make_user, frozen_clock):
        user = make_user("operator")
        client = browser()
        threshold = app.state.settings.login_lockout_threshold
        for _ in range(threshold):
            response = client.post(LOGIN, json={"email": user.email, "password": "Wrong-password-123"})
            assert response.json()["code"] == "invalid_credentials"
        locked = client.post(LOGIN, json={"email": user.email, "password": user.password})
        assert locked.status_code == 401 and locked.json()["code"] == "account_locked"
        assert locked.headers["retry-after"] == str(app.state.settings.login_lockout_seconds)
        # The refused attempts were committed although each answered 401.
        assert user_row(app.state.engine, user.id).failed_logins == threshold
        frozen_clock.tick(seconds=app.state.settings.login_lockout_seconds + 1)
        login(client, user)
        row = user_row(app.state.engine, user.id)
        assert row.failed_logins == 0 and row.locked_until is None

    def test_each_further_failure_doubles_the_lock_up_to_an_hour(self, app, browser, make_user, frozen_clock):
        user = make_user("operator")
        client = browser()
        settings = app.state.settings
        base = settings.login_lockout_seconds
        for _ in range(settings.login_lockout_threshold):
            client.post(LOGIN, json={"email": user.email, "password": "Wrong-password-123"})
        waits = []
        for _ in range(3):
            frozen_clock.tick(seconds=waits[-1] + 1 if waits else base + 1)
            client.post(LOGIN, json={"email": user.email, "password": "Wrong-password-123"})
            locked = client.post(LOGIN, json={"email": user.email, "password": user.password})
            assert locked.json()["code"] == "account_locked"
            waits.append(int(locked.headers["retry-after"]))
        assert waits == [base * 2, base * 4, base * 8]
        transact(app.state.engine, lambda s: s.execute(
            update(User).where(User.id == user.id).values(failed_logins=60, locked_until=None)))
        client.post(LOGIN, json={"email": user.email, "password": "Wrong-password-123"})
        capped = client.post(LOGIN, json={"email": user.email, "password": user.password})
        assert capped.headers["retry-after"] == str(service.MAX_LOCK_SECONDS)

    def test_a_locked_account_has_no_live_session(self, app, browser, make_user, frozen_clock):
        user = make_user("operator")
        signed_in = browser()
        login(signed_in, user)
        attacker = browser()
        for _ in range(app.state.settings.login_lockout_threshold):
            attacker.post(LOGIN, json={"email": user.email, "password": "Wrong-password-123"})
        assert signed_in.get("/v1/auth/me").status_code == 401


class TestRateLimit:
    def _wait_for_a_fresh_window(self) -> None:
        # The counter's window is the wall-clock minute: do not straddle two.
        if time.time() % 60 > 50:
            time.sleep(61 - time.time() % 60)

    def test_too_many_attempts_from_one_address_get_429(self, app, browser, make_user):
        user = make_user("operator")
        app.state.settings = app.state.settings.model_copy(update={"login_rate_limit_per_minute": 3})
        client, elsewhere = browser(client=("203.0.113.7", 40000)), browser(client=("203.0.113.8", 40000))
        self._wait_for_a_fresh_window()
        codes = [client.post(LOGIN, json={"email": user.email, "password": "Wrong-password-123"}).status_code
                 for _ in range(3)]
        assert codes == [401, 401, 401]
        limited = client.post(LOGIN, json={"email": user.email, "password": user.password})
        assert limited.status_code == 429 and limited.json()["code"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 61
        # Another address is counted apart.
        login(elsewhere, user)
