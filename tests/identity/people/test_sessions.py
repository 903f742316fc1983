"""Sessions after sign-in: idle and absolute timeouts, logout here and everywhere, CSRF,
and a password change that ends the other sessions."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from clearhouse.identity.models import UserSession
from clearhouse.identity.people import service
from clearhouse.kit import clock
from clearhouse.kit.db import transact
from tests.identity.people_support import CSRF_HEADER, login, new_password, user_row

ME = "/v1/auth/me"


def _session_row(engine, user_id: str) -> UserSession:
    return transact(engine, lambda s: s.execute(
        select(UserSession).where(UserSession.user_id == user_id, UserSession.revoked_at.is_(None))).scalar_one())


class TestTimeouts:
    def test_a_session_ends_after_idle_time_but_activity_keeps_it(self, app, browser, make_user, frozen_clock):
        idle = app.state.settings.session_idle_minutes
        user = make_user("operator")
        client = browser()
        login(client, user)
        frozen_clock.tick(minutes=idle - 1)
        assert client.get(ME).status_code == 200
        frozen_clock.tick(minutes=idle - 1)  # idle since the last request, not since sign-in
        assert client.get(ME).status_code == 200
        frozen_clock.tick(minutes=idle + 1)
        ended = client.get(ME)
        assert ended.status_code == 401 and ended.json()["code"] == "authentication_required"

    def test_last_seen_is_written_at_most_once_a_minute(self, app, browser, make_user, frozen_clock):
        user = make_user("operator")
        client = browser()
        login(client, user)
        signed_in_at = clock.now()
        frozen_clock.tick(seconds=30)
        client.get(ME)
        assert _session_row(app.state.engine, user.id).last_seen_at == signed_in_at
        frozen_clock.tick(seconds=31)
        client.get(ME)
        assert _session_row(app.state.engine, user.id).last_seen_at == clock.now()

    def test_a_session_ends_at_its_absolute_time_however_active(self, app, browser, make_user, frozen_clock):
        settings = app.state.settings
        user = make_user("operator")
        client = browser()
        login(client, user)
        ends_at = clock.now() + timedelta(hours=settings.session_absolute_hours)
        while clock.now() + timedelta(minutes=20) < ends_at:
            frozen_clock.tick(minutes=20)
            assert client.get(ME).status_code == 200
        frozen_clock.tick(minutes=20)
        assert client.get(ME).status_code == 401


class TestLogout:
    def test_logout_ends_this_session_only(self, app, browser, make_user):
        user = make_user("operator")
        here, there = browser(), browser()
        login(here, user)
        login(there, user)
        token = here.cookies[service.SESSION_COOKIE]
        response = here.post("/v1/auth/logout")
        assert response.status_code == 204
        assert 'clearhouse_session=""' in response.headers["set-cookie"]
        assert browser(cookies={service.SESSION_COOKIE: token}).get(ME).status_code == 401
        assert there.get(ME).status_code == 200

    def test_logout_everywhere_ends_every_session(self, app, browser, make_user):
        user = make_user("operator")
        clients = [browser() for _ in range(3)]
        for client in clients:
            login(client, user)
        tokens = [c.cookies[service.SESSION_COOKIE] for c in clients]
        response = clients[0].post("/v1/auth/logout_all")
        assert response.status_code == 200 and response.json() == {"sessions_ended": 3}
        for token in tokens:
            assert browser(cookies={service.SESSION_COOKIE: token}).get(ME).status_code == 401
        login(clients[1], user)  # signing in again works
        assert clients[1].get(ME).status_code == 200


class TestCsrf:
    def test_state_changes_need_the_sessions_csrf_token(self, app, browser, make_user):
        user, other = make_user("operator"), make_user("operator")
        client, other_client = browser(), browser()
        login(client, user)
        other_token = login(other_client, other)
        csrf_token = client.headers.pop(CSRF_HEADER)
        missing = client.post("/v1/auth/logout")
        assert missing.status_code == 403 and missing.json()["code"] == "csrf_failed"
        wrong = client.post("/v1/auth/logout", headers={CSRF_HEADER: other_token})
        assert wrong.status_code == 403 and wrong.json()["code"] == "csrf_failed"
        assert client.get(ME).status_code == 200  # reads need no token; the session lives on
        assert client.post("/v1/auth/logout", headers={CSRF_HEADER: csrf_token}).status_code == 204


class TestPasswordChange:
    def test_a_new_password_ends_the_other_sessions(self, app, browser, make_user):
        user = make_user("operator")
        here, there = browser(), browser()
        login(here, user)
        login(there, user)
        replacement = new_password()
        response = here.post("/v1/auth/password", json={"current_password": user.password,
                                                        "new_password": replacement})
        assert response.status_code == 204, response.text
        assert here.get(ME).status_code == 200
        assert there.get(ME).status_code == 401
        old = browser().post("/v1/auth/login", json={"email": user.email, "password": user.password})
        assert old.json()["code"] == "invalid_credentials"
        user.password = replacement
        login(browser(), user)

    def test_a_wrong_current_password_counts_as_a_failed_login(self, app, browser, make_user):
        user = make_user("operator")
        client = browser()
        login(client, user)
        response = client.post("/v1/auth/password", json={"current_password": "Not-my-password-1",
                                                          "new_password": new_password()})
        assert response.status_code == 422 and response.json()["code"] == "invalid_current_password"
        assert user_row(app.state.engine, user.id).failed_logins == 1

    def test_the_new_password_meets_the_policy(self, browser, make_user):
        user = make_user("operator")
        client = browser()
        login(client, user)
        response = client.post("/v1/auth/password", json={"current_password": user.password,
                                                          "new_password": "short"})
        assert response.status_code == 422 and response.json()["code"] == "weak_password"
