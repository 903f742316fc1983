"""A locked account and a locked address without an account answer the same Retry-After, at any
fraction of a second (the security tester of session 18: the unknown address's lock ended on a
whole second, the account's did not, so 61 meant "no account")."""

from __future__ import annotations

import pytest

from tests.identity.people.test_login import LOGIN


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.999])
def test_retry_after_is_the_same_for_an_account_and_an_unknown_address(app, browser, make_user, frozen_clock,
                                                                        fraction):
    user = make_user("operator")
    client = browser()
    frozen_clock.tick(seconds=fraction)
    answers = {}
    for email in (user.email, "nobody-here@example.com"):
        for _ in range(app.state.settings.login_lockout_threshold):
            client.post(LOGIN, json={"email": email, "password": "Wrong-password-123"})
        locked = client.post(LOGIN, json={"email": email, "password": "Wrong-password-123"})
        answers[email] = (locked.status_code, locked.json()["code"], locked.headers["retry-after"])
    assert answers[user.email] == answers["nobody-here@example.com"]
    assert answers[user.email][:2] == (401, "account_locked")
