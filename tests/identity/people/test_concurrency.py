"""Attacks made in parallel: one TOTP code sent by several clients at once signs in once,
and simultaneous wrong passwords are all counted (no lost update lets a brute force
slip past the lockout)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from clearhouse.identity.people import service
from clearhouse.kit import clock
from tests.identity.people_support import user_row

LOGIN = "/v1/auth/login"


def _in_parallel(browser, bodies: list[dict]) -> list:
    clients = [browser() for _ in bodies]
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(lambda pair: pair[0].post(LOGIN, json=pair[1]), zip(clients, bodies, strict=True)))


class TestParallelAttempts:
    def test_one_totp_code_sent_at_once_signs_in_once(self, app, browser, make_user):
        user = make_user("admin")
        code = service.totp_code_at(user.totp_secret, service.totp_step(clock.now()) + 1)
        body = {"email": user.email, "password": user.password, "totp_code": code}
        answers = _in_parallel(browser, [body] * 4)
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [200, 401, 401, 401], [a.text for a in answers]
        assert {a.json()["code"] for a in answers if a.status_code == 401} == {"totp_invalid"}

    def test_simultaneous_wrong_passwords_are_all_counted(self, app, browser, make_user):
        threshold = app.state.settings.login_lockout_threshold
        user = make_user("operator")
        body = {"email": user.email, "password": "Wrong-password-123"}
        answers = _in_parallel(browser, [body] * (threshold + 2))
        codes = sorted(a.json()["code"] for a in answers)
        assert codes == ["account_locked"] * 2 + ["invalid_credentials"] * threshold
        row = user_row(app.state.engine, user.id)
        assert row.failed_logins == threshold and row.locked_until is not None
