"""Session 16: a reloaded console page gets its session's CSRF token back from ``/v1/auth/me``
instead of having to sign in again (the token was only in the sign-in answer)."""

from __future__ import annotations

from tests.identity.people_support import CSRF_HEADER, login


def test_me_answers_the_sessions_csrf_token_uncached_and_it_works(browser, make_user):
    user = make_user("risk_analyst")
    page = browser()
    token = login(page, user)
    del page.headers[CSRF_HEADER]  # the reloaded page knows only its cookie
    assert page.post("/v1/auth/logout_all").json()["code"] == "csrf_failed"
    me = page.get("/v1/auth/me")
    assert me.status_code == 200, me.text
    assert me.json()["csrf_token"] == token
    assert me.headers["cache-control"] == "no-store"
    page.headers[CSRF_HEADER] = me.json()["csrf_token"]
    assert page.post("/v1/auth/password", json={"current_password": "wrong", "new_password": "x"}).json()["code"] \
        != "csrf_failed"


def test_another_sessions_token_is_its_own(browser, make_user):
    user = make_user("risk_analyst")
    first, second = browser(), browser()
    login(first, user)
    login(second, user)
    assert first.get("/v1/auth/me").json()["csrf_token"] != second.get("/v1/auth/me").json()["csrf_token"]


def test_without_a_session_there_is_no_token(browser):
    assert browser().get("/v1/auth/me").status_code == 401
