"""Making people and signing them in, for tests anywhere in the suite.

``create_user`` goes straight through the people service in one transaction (what
``clearhouse users create`` does, plus TOTP for the roles that need it); ``login`` signs
in over HTTP and sets the ``X-CSRF-Token`` header on the client, so the client then acts
like a browser of that person.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from clearhouse.audit.service import SYSTEM
from clearhouse.identity.models import MERCHANT_ROLES, User
from clearhouse.identity.people import service
from clearhouse.identity.permissions import MFA_REQUIRED_ROLES
from clearhouse.kit import clock
from clearhouse.kit.db import transact

CSRF_HEADER = "X-CSRF-Token"


@dataclass
class TestUser:
    __test__ = False  # not a pytest test class

    id: str
    email: str
    password: str
    role: str
    merchant_id: str | None = None
    totp_secret: str | None = None
    last_totp_step: int | None = None
    """The last TOTP step this helper handed out: the server refuses a step twice."""


def new_password() -> str:
    """A password that meets the policy (digits after the words: no email name of letters can hide in it)."""
    return f"Tidal-Harbour-{secrets.randbelow(10**12):012d}"


def create_user(engine: Engine, role: str, merchant_id: str | None = None, *, email: str | None = None,
                password: str | None = None, with_totp: bool | None = None, cipher: Any = None) -> TestUser:
    """A new person of ``role`` (a merchant role without ``merchant_id`` gets a new merchant).

    TOTP is set up and enabled for the roles that require it unless ``with_totp`` says otherwise
    (that needs ``cipher``, the app's FieldCipher: ``app.state.cipher``).
    """
    email = email or f"{role.replace('_', '-')}-{secrets.token_hex(5)}@example.com"
    password = password or new_password()
    with_totp = role in MFA_REQUIRED_ROLES if with_totp is None else with_totp
    if with_totp and cipher is None:
        raise ValueError("a user with TOTP needs the field cipher (pass cipher=app.state.cipher)")

    def work(session: Session) -> TestUser:
        merchant = merchant_id
        if role in MERCHANT_ROLES and merchant is None:
            from clearhouse.identity import service as identity

            merchant = identity.create_merchant(session, SYSTEM, name="People test shop").id
        user = service.create_user(session, SYSTEM, email=email, role=role, merchant_id=merchant,
                                   password=password)
        secret = None
        if with_totp:
            secret = service.begin_totp_setup(session, SYSTEM, user.id, cipher).secret
            # Enabled directly: confirming would spend the current TOTP step, and tests sign
            # in right after. The confirmation flow has its own tests.
            user.totp_enabled = True
            session.flush()
        return TestUser(id=user.id, email=user.email, password=password, role=role, merchant_id=merchant,
                        totp_secret=secret)

    return transact(engine, work)


def next_totp_code(user: TestUser) -> str:
    """A code the server accepts now and has not seen: the current step, or the next one
    (inside the one-step window) when the current one was used. With a real clock, waits
    for the next step when both are used; with a frozen clock, tick it instead."""
    assert user.totp_secret is not None, f"{user.email} has no TOTP"
    while True:
        current = service.totp_step(clock.now())
        step = current if user.last_totp_step is None else max(current, user.last_totp_step + 1)
        if step <= current + 1:
            break
        if clock._frozen is not None:  # noqa: SLF001 - test support reads the test clock
            raise RuntimeError("both usable TOTP steps were spent under a frozen clock: tick it 30 s")
        time.sleep(service.TOTP_STEP_SECONDS - clock.now().timestamp() % service.TOTP_STEP_SECONDS + 0.05)
    user.last_totp_step = step
    return service.totp_code_at(user.totp_secret, step)


def login(client: Any, user: TestUser, **extra: Any) -> str:
    """Sign in over HTTP; sets the CSRF header on the client and returns the CSRF token."""
    body: dict[str, Any] = {"email": user.email, "password": user.password, **extra}
    if user.totp_secret is not None and "totp_code" not in extra and "recovery_code" not in extra:
        body["totp_code"] = next_totp_code(user)
    response = client.post("/v1/auth/login", json=body)
    if response.status_code != 200:
        raise AssertionError(f"login of {user.email} failed: {response.status_code} {response.text}")
    csrf_token = response.json()["csrf_token"]
    client.headers[CSRF_HEADER] = csrf_token
    return csrf_token


def user_row(engine: Engine, user_id: str) -> User:
    """The stored user, read fresh."""
    return transact(engine, lambda s: s.execute(select(User).where(User.id == user_id)).scalar_one())
