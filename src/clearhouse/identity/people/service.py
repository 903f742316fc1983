"""People who sign in to the console: accounts, passwords, TOTP, sessions and lockout.

Secrets never rest in the clear: passwords are argon2id hashes, the TOTP seed is
encrypted with the field cipher under the context ``users.totp:<user id>``, session
tokens and recovery codes are kept only as SHA-256 digests of high-entropy values.

Login is the one place where a refused request must still leave a trace (the failed
login counter and the audit event), so ``login`` and ``change_password`` return the
error instead of raising it: the caller commits, then raises.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pyotp
import segno
import structlog
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from clearhouse.audit.service import Actor, actor_of, record
from clearhouse.identity import approvals
from clearhouse.identity.models import (
    MERCHANT_ROLES,
    ROLES,
    Merchant,
    RateLimitCounter,
    RecoveryCode,
    User,
    UserSession,
)
from clearhouse.identity.permissions import MFA_REQUIRED_ROLES, ROLE_PERMISSIONS, Principal
from clearhouse.identity.service import MerchantSuspended
from clearhouse.kit import clock
from clearhouse.kit.errors import ClearhouseError, NotFound
from clearhouse.kit.ids import new_id
from clearhouse.kit.settings import Settings, get_settings

SESSION_COOKIE = "clearhouse_session"
TOTP_STEP_SECONDS = 30
TOTP_DIGITS = 6
TOTP_ISSUER = "Clearhouse"
RECOVERY_CODE_COUNT = 10
MAX_LOCK_SECONDS = 3600
"""However many failures, an account is locked for at most an hour at a time."""
LAST_SEEN_RESOLUTION = timedelta(minutes=1)
"""``last_seen_at`` is written at most once a minute: a read-heavy console must not turn
every request into a row update."""
PASSWORD_MIN_LENGTH = 12
PASSWORD_MAX_LENGTH = 256

@functools.cache
def _hasher() -> PasswordHasher:
    """argon2id; by default the library's RFC 9106 low-memory profile (t=3, 64 MiB, p=4).
    Hashes made under other parameters are re-made at the next sign-in."""
    settings = get_settings()
    return PasswordHasher(time_cost=settings.password_hash_time_cost,
                          memory_cost=settings.password_hash_memory_kib,
                          parallelism=settings.password_hash_parallelism)
_RECOVERY_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, no i, l, o, u
_DOMAIN_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_EMAIL_SHAPE = re.compile(rf"^[^@\s\x00-\x1f\x7f]{{1,64}}@{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})+$")

# Passwords (and password stems) that attackers try first. Short on purpose: the length rule
# already stops most of the lists; these are the long ones people still pick.
COMMON_PASSWORDS = frozenset({
    "password", "passw0rd", "p@ssw0rd", "p@ssword", "qwerty", "qwertyuiop", "qwertyuiopasdf", "asdfghjkl",
    "zxcvbnm", "letmein", "welcome", "iloveyou", "admin", "administrator", "changeme", "default", "secret",
    "monkey", "dragon", "football", "baseball", "basketball", "sunshine", "princess", "superman", "batman",
    "trustno1", "master", "shadow", "starwars", "whatever", "clearhouse", "abc", "abcdef", "abcdefgh",
    "abcdefghijkl", "1q2w3e4r", "1q2w3e4r5t", "1q2w3e4r5t6y", "q1w2e3r4t5y6", "1qaz2wsx", "1qaz2wsx3edc",
    "zaq12wsx", "123456789012", "1234567890", "12345678910", "123123123123", "111111111111", "000000000000",
    "passwordpassword", "password1234", "password12345", "password123456", "qwerty123456", "iloveyou1234",
    "letmein12345", "welcome12345", "correcthorsebatterystaple", "summer", "winter", "spring", "autumn",
})


class PeopleError(ClearhouseError):
    """Base of the errors this module raises."""


class WeakPassword(PeopleError):
    """A password must be 12 to 256 characters, not mostly one character, not contain the
    email's local part, and not be (or be built on) a commonly used password."""

    code = "weak_password"
    status = 422
    title = "Password too weak"


class InvalidEmail(PeopleError):
    """An email address must look like one (local part @ a domain with a dot)."""

    code = "invalid_email"
    status = 422
    title = "Invalid email address"


class EmailTaken(PeopleError):
    """One person, one address: emails are unique, compared lower-cased."""

    code = "email_taken"
    status = 409
    title = "Email already in use"


class RoleNotAllowed(PeopleError):
    """Merchant roles belong to a merchant's staff and platform roles to nobody's; merchant
    admins may only hand out merchant roles."""

    code = "role_not_allowed"
    status = 422
    title = "Role not allowed here"


class MerchantNotFound(PeopleError):
    """The merchant named for a new user does not exist (or is not the caller's)."""

    code = "merchant_not_found"
    status = 422
    title = "Unknown merchant"


class UserNotFound(NotFound):
    """No such user (or not one the caller may see)."""

    code = "user_not_found"
    title = "User not found"


class InvalidCredentials(PeopleError):
    """Wrong email or password; the two are not told apart."""

    code = "invalid_credentials"
    status = 401
    title = "Invalid email or password"


class AccountLocked(PeopleError):
    """Too many failed logins in a row: the account refuses logins until ``Retry-After``."""

    code = "account_locked"
    status = 401
    title = "Account temporarily locked"

    def __init__(self, detail: str = "", *, retry_after: int = 1):
        super().__init__(detail)
        self.retry_after = max(1, int(retry_after))

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class TotpRequired(PeopleError):
    """This account has two-factor authentication on: a TOTP or a recovery code is needed."""

    code = "totp_required"
    status = 401
    title = "Two-factor code required"


class TotpInvalid(PeopleError):
    """The TOTP or recovery code is wrong, outside its window, or already used."""

    code = "totp_invalid"
    status = 401
    title = "Invalid two-factor code"


class TotpAlreadyEnabled(PeopleError):
    """Two-factor authentication is already on; a stolen session must not be able to replace it."""

    code = "totp_already_enabled"
    status = 409
    title = "Two-factor already enabled"


class TotpNotSetUp(PeopleError):
    """Confirming needs a seed from ``POST /v1/auth/totp/setup`` first."""

    code = "totp_not_set_up"
    status = 409
    title = "Two-factor not set up"


class CurrentPasswordWrong(PeopleError):
    """Changing a password needs the current one; wrong guesses count towards the lockout."""

    code = "invalid_current_password"
    status = 422
    title = "Current password is wrong"


class CannotDisableSelf(PeopleError):
    """Nobody disables their own account: the last admin would lock everyone out."""

    code = "cannot_disable_self"
    status = 409
    title = "Cannot disable yourself"


class FieldCipher(Protocol):
    """What this module needs of kit.crypto.FieldCipher."""

    def encrypt(self, plaintext: str, context: str) -> str: ...

    def decrypt(self, token: str, context: str) -> str: ...


# --- small helpers -------------------------------------------------------------------------


def token_digest(value: str) -> str:
    """The SHA-256 hex digest under which a session token or recovery code is stored."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def request_id() -> str | None:
    """The id of the HTTP request being served, if any (bound by the request-logging middleware)."""
    return structlog.contextvars.get_contextvars().get("request_id")


def _audit(session: Session, actor: Actor, action: str, user: User, changes: dict[str, Any] | None = None) -> None:
    record(session, actor, action, "user", user.id, changes=changes, merchant_id=user.merchant_id)


def _totp_context(user_id: str) -> str:
    return f"users.totp:{user_id}"


# --- emails and passwords ------------------------------------------------------------------


def normalize_email(email: str) -> str:
    """Lower-cased and trimmed, or 422 ``invalid_email``."""
    value = email.strip().lower()
    if len(value) > 320 or not _EMAIL_SHAPE.match(value):
        raise InvalidEmail("give an address like name@example.com")
    return value


def check_password_policy(password: str, email: str) -> None:
    """Raise 422 ``weak_password`` with the reason, or return."""
    if len(password) < PASSWORD_MIN_LENGTH:
        raise WeakPassword(f"a password needs at least {PASSWORD_MIN_LENGTH} characters", reason="too_short")
    if len(password) > PASSWORD_MAX_LENGTH:
        raise WeakPassword(f"a password has at most {PASSWORD_MAX_LENGTH} characters", reason="too_long")
    most_common = max(password.count(c) for c in set(password))
    if most_common * 2 >= len(password) or len(set(password)) < 4:
        raise WeakPassword("the password is mostly one character", reason="repetitive")
    lowered = password.lower()
    local_part = email.split("@", 1)[0].lower()
    if len(local_part) >= 3 and local_part in lowered:
        raise WeakPassword("the password contains the email address's name", reason="contains_email")
    stem = re.sub(r"^[\W\d_]+|[\W\d_]+$", "", lowered)
    if lowered in COMMON_PASSWORDS or stem in COMMON_PASSWORDS or not stem.strip():
        raise WeakPassword("the password is a commonly used one", reason="common")


def hash_password(password: str) -> str:
    return _hasher().hash(password)


@functools.cache
def _dummy_hash() -> str:
    """A hash to check unknown emails against, so they cost what a known one costs
    (made on first use: every CLI command need not pay for it)."""
    return _hasher().hash("not a real password: for timing only")


def _password_matches(password_hash: str, password: str) -> bool:
    try:
        return _hasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


# --- users ---------------------------------------------------------------------------------


def _check_role_and_tenant(session: Session, role: str, merchant_id: str | None) -> None:
    if role not in ROLES:
        raise RoleNotAllowed(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    if role in MERCHANT_ROLES and merchant_id is None:
        raise RoleNotAllowed(f"the role {role} belongs to a merchant's staff: give merchant_id")
    if role not in MERCHANT_ROLES and merchant_id is not None:
        raise RoleNotAllowed(f"the role {role} is a platform role: it takes no merchant_id")
    if merchant_id is not None and session.get(Merchant, merchant_id) is None:
        raise MerchantNotFound(f"no merchant {merchant_id}")


def _check_new_user(session: Session, *, email: str, role: str, merchant_id: str | None,
                    password: str | None) -> str:
    """The normalized email, once the role, tenant, password (when given) and address are fine."""
    email = normalize_email(email)
    _check_role_and_tenant(session, role, merchant_id)
    if password is not None:
        check_password_policy(password, email)
    if session.execute(select(User.id).where(User.email == email)).first() is not None:
        raise EmailTaken(f"{email} already has an account")
    return email


def create_user(session: Session, actor: Actor, *, email: str, role: str, merchant_id: str | None,
                password: str) -> User:
    """A new account (no tenant rules: see ``create_user_as`` for a caller's request; nothing held: this is
    also ``clearhouse users create``, which bootstraps the first admin)."""
    email = _check_new_user(session, email=email, role=role, merchant_id=merchant_id, password=password)
    return _insert_user(session, actor, email=email, role=role, merchant_id=merchant_id,
                        password_hash=hash_password(password))


def _insert_user(session: Session, actor: Actor, *, email: str, role: str, merchant_id: str | None,
                 password_hash: str, changes: dict[str, Any] | None = None) -> User:
    now = clock.now()
    user = User(id=new_id("usr"), email=email, role=role, merchant_id=merchant_id,
                password_hash=password_hash, totp_secret_ciphertext=None, totp_enabled=False,
                totp_last_step=None, failed_logins=0, locked_until=None, disabled=False, created_at=now,
                updated_at=now)
    try:
        # Two requests creating one address at once: the unique index decides, in a savepoint.
        with session.begin_nested():
            session.add(user)
            session.flush()
    except IntegrityError:
        raise EmailTaken(f"{email} already has an account") from None
    _forget_unknown(session, email)
    _audit(session, actor, "user.create", user,
           {"email": email, "role": role, "merchant_id": merchant_id, **(changes or {})})
    return user


USER_CREATE_ACTION = "user.create"
HELD_CREATE_PERMISSIONS = frozenset({"approvals:decide", "users:write"})
"""A new person whose role holds one of these could decide (or make people who decide) the maker's own held
actions: such a creation is held for a second person, as every role change is."""


def creation_is_held(role: str) -> bool:
    return bool(ROLE_PERMISSIONS.get(role, frozenset()) & HELD_CREATE_PERMISSIONS)


def create_user_as(session: Session, principal: Principal, actor: Actor, *, email: str, role: str,
                   merchant_id: str | None, password: str) -> User | dict[str, Any]:
    """Create a user on behalf of ``principal``: merchant staff create only their merchant's
    staff, in merchant roles. A role that could decide approvals (``creation_is_held``) is held for a
    second person with ``users:write``: the answer is then the approval, and the user is made when approved."""
    if principal.merchant_id is not None:
        if role not in MERCHANT_ROLES:
            raise RoleNotAllowed(f"merchant staff may only be given {' or '.join(MERCHANT_ROLES)}")
        if merchant_id not in (None, principal.merchant_id):
            raise MerchantNotFound(f"no merchant {merchant_id}")
        merchant_id = principal.merchant_id
    if not creation_is_held(role):
        return create_user(session, actor, email=email, role=role, merchant_id=merchant_id, password=password)
    email = _check_new_user(session, email=email, role=role, merchant_id=merchant_id, password=password)
    payload = {"email": email, "role": role, "merchant_id": merchant_id}
    # The password's hash travels sealed: the executor gets it, the approval and the audit trail never show it.
    return approvals.hold(session, principal, action=USER_CREATE_ACTION, payload=payload,
                          summary=f"create {email} as {role}" + (f" of {merchant_id}" if merchant_id else ""),
                          permission="users:write", merchant_id=merchant_id, actor=actor,
                          ttl=timedelta(hours=get_settings().approval_ttl_hours),
                          sealed={"password_hash": hash_password(password)})


def apply_user_create(session: Session, payload: dict[str, Any], checker: Principal) -> dict[str, Any]:
    """The approved creation: the same checks again (the address may have been taken meanwhile)."""
    email, role, merchant_id = payload["email"], payload["role"], payload["merchant_id"]
    if not checker.sees(merchant_id):
        raise MerchantNotFound(f"no merchant {merchant_id}")
    try:
        _check_new_user(session, email=email, role=role, merchant_id=merchant_id, password=None)
        user = _insert_user(session, actor_of(checker), email=email, role=role, merchant_id=merchant_id,
                            password_hash=payload[approvals.SEALED]["password_hash"], changes={"approved": True})
    except EmailTaken:
        raise approvals.ApprovalStale(f"{email} got an account since this was asked") from None
    return {"user_id": user.id, "email": email, "role": role, "merchant_id": merchant_id}


def visible_user(session: Session, principal: Principal, user_id: str, *, for_update: bool = False) -> User:
    """The user, if ``principal`` may see it; otherwise 404, as if it did not exist."""
    statement = select(User).where(User.id == user_id)
    if for_update:
        statement = statement.with_for_update()
    user = session.execute(statement).scalar_one_or_none()
    if user is None or not principal.sees(user.merchant_id):
        raise UserNotFound(f"no user {user_id}")
    return user


def list_users(session: Session, principal: Principal, *, limit: int, starting_after: str | None = None,
               merchant_id: str | None = None, role: str | None = None) -> tuple[Sequence[User], bool]:
    """Users in id (creation) order; merchant staff see only their merchant's."""
    statement = select(User).order_by(User.id).limit(limit + 1)
    if principal.merchant_id is not None:
        statement = statement.where(User.merchant_id == principal.merchant_id)
    if merchant_id is not None:
        statement = statement.where(User.merchant_id == merchant_id)
    if role is not None:
        statement = statement.where(User.role == role)
    if starting_after is not None:
        statement = statement.where(User.id > starting_after)
    rows = session.execute(statement).scalars().all()
    return rows[:limit], len(rows) > limit


def revoke_sessions(session: Session, user_id: str, *, except_session_id: str | None = None) -> int:
    """End every live session of a user (but ``except_session_id``); returns how many."""
    statement = update(UserSession).where(UserSession.user_id == user_id, UserSession.revoked_at.is_(None))
    if except_session_id is not None:
        statement = statement.where(UserSession.id != except_session_id)
    return session.execute(statement.values(revoked_at=clock.now())).rowcount or 0


def set_disabled(session: Session, principal: Principal, actor: Actor, user_id: str, disabled: bool) -> User:
    """Disable (ending its sessions and the pending approvals it made or that change its role) or re-enable
    an account."""
    moot: list[str] = []
    if disabled:
        # Approvals' rows are locked before the user's, as ``approvals.decide`` does (it locks the approval,
        # then the executor the user).
        visible_user(session, principal, user_id)
        moot = sorted(set(approvals.pending_of(session, maker_id=user_id))
                      | set(approvals.pending_of(session, action=ROLE_CHANGE_ACTION,
                                                 payload_match={"user_id": user_id})))
        for approval_id in moot:
            approvals.lock(session, approval_id)
    user = visible_user(session, principal, user_id, for_update=True)
    if disabled and principal.kind == "user" and principal.id == user.id:
        raise CannotDisableSelf("ask another administrator")
    if user.disabled != disabled:
        user.disabled = disabled
        user.updated_at = clock.now()
        if disabled:
            revoke_sessions(session, user.id)
        session.flush()
        _audit(session, actor, "user.disable" if disabled else "user.enable", user, {"disabled": disabled})
        for approval_id in moot:
            approvals.end(session, approval_id, actor=actor, reason=f"{user.email} was disabled")
    return user


ROLE_CHANGE_ACTION = "user.role_change"


def _check_role_fits(user: User, role: str) -> None:
    if role not in ROLES:
        raise RoleNotAllowed(f"unknown role {role!r}")
    if (role in MERCHANT_ROLES) != (user.merchant_id is not None):
        kind = "merchant" if user.merchant_id is not None else "platform"
        raise RoleNotAllowed(f"{user.id} is {kind} staff: give a {kind} role")


def request_role_change(session: Session, principal: Principal, actor: Actor, user_id: str,
                        role: str) -> dict[str, Any]:
    """Hold a role change for a second person's approval; returns the approval."""
    user = visible_user(session, principal, user_id)
    _check_role_fits(user, role)
    if role == user.role:
        raise RoleNotAllowed(f"{user.email} is already {role}")
    if user.disabled:
        raise RoleNotAllowed(f"{user.email} is disabled: enable the account first")
    payload = {"user_id": user.id, "role": role, "previous_role": user.role}
    approval = approvals.hold(session, principal, action=ROLE_CHANGE_ACTION, payload=payload,
                              summary=f"change {user.email} from {user.role} to {role}",
                              permission="users:write", merchant_id=user.merchant_id, actor=actor,
                              ttl=timedelta(hours=get_settings().approval_ttl_hours))
    _audit(session, actor, "user.role_change_requested", user,
           {"role": role, "previous_role": user.role, "approval_id": approval.get("id")})
    return approval


def apply_role_change(session: Session, payload: dict[str, Any], checker: Principal) -> dict[str, Any]:
    """The approved role change: set the role and end the user's sessions, so the new
    permissions (and, for admin and finance, the TOTP requirement) apply from the next login."""
    user = visible_user(session, checker, payload["user_id"], for_update=True)
    role = payload["role"]
    # Held "from X to Y": run only if the person is still X and still enabled, or it would do what no one asked.
    if user.disabled:
        raise approvals.ApprovalStale(f"{user.email} was disabled since this was asked")
    if payload.get("previous_role") is not None and user.role != payload["previous_role"]:
        raise approvals.ApprovalStale(f"{user.email} is {user.role} now, not {payload['previous_role']} "
                                      "as when this was asked")
    _check_role_fits(user, role)
    previous = user.role
    user.role = role
    user.updated_at = clock.now()
    revoke_sessions(session, user.id)
    session.flush()
    _audit(session, actor_of(checker), "user.role_change_applied", user, {"role": role, "previous_role": previous})
    return {"user_id": user.id, "role": role, "previous_role": previous}


# --- TOTP ----------------------------------------------------------------------------------


def totp_step(at: datetime) -> int:
    return int(at.timestamp()) // TOTP_STEP_SECONDS


def totp_code_at(seed: str, step: int) -> str:
    return pyotp.TOTP(seed, digits=TOTP_DIGITS, interval=TOTP_STEP_SECONDS).generate_otp(step)


def _accept_totp(user: User, seed: str, code: str) -> bool:
    """Accept a code of the previous, current or next step, but never a step at or before
    the last one accepted: a code observed once (shoulder, phishing proxy) is worthless."""
    code = code.strip().replace(" ", "")
    # ASCII digits only: \d would also take full-width or Arabic-Indic digits, which compare_digest refuses.
    if not re.fullmatch(rf"[0-9]{{{TOTP_DIGITS}}}", code):
        return False
    current = totp_step(clock.now())
    for step in (current + 1, current, current - 1):
        if hmac.compare_digest(totp_code_at(seed, step), code):
            if user.totp_last_step is not None and step <= user.totp_last_step:
                return False
            user.totp_last_step = step
            return True
    return False


def _normalize_recovery_code(code: str) -> str:
    """Case, spaces and the dash do not matter; anything but ASCII letters and digits never matches."""
    return re.sub(r"[\s-]", "", code).lower()


def _recovery_code_shape(code: str) -> bool:
    return re.fullmatch(r"[0-9a-z]{10}", _normalize_recovery_code(code)) is not None


def _use_recovery_code(session: Session, user: User, code: str) -> bool:
    """Spend one recovery code; the conditional update makes a code good for exactly one login."""
    if not _recovery_code_shape(code):
        return False
    digest = token_digest(_normalize_recovery_code(code))
    spent = session.execute(
        update(RecoveryCode)
        .where(RecoveryCode.user_id == user.id, RecoveryCode.code_hash == digest, RecoveryCode.used_at.is_(None))
        .values(used_at=clock.now())
    )
    return spent.rowcount == 1


def _new_recovery_codes(session: Session, user: User) -> list[str]:
    session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    codes = []
    for _ in range(RECOVERY_CODE_COUNT):
        raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(10))  # 50 bits each
        codes.append(f"{raw[:5]}-{raw[5:]}")
        session.add(RecoveryCode(user_id=user.id, code_hash=token_digest(raw), used_at=None))
    session.flush()
    return codes


@dataclass(frozen=True)
class TotpProvisioning:
    secret: str
    otpauth_uri: str
    qr_svg: str


def begin_totp_setup(session: Session, actor: Actor, user_id: str, cipher: FieldCipher) -> TotpProvisioning:
    """A fresh seed, stored encrypted but not yet enabled (``confirm_totp`` enables it)."""
    user = session.execute(select(User).where(User.id == user_id).with_for_update()).scalar_one()
    if user.totp_enabled:
        raise TotpAlreadyEnabled("two-factor authentication is already on for this account")
    seed = pyotp.random_base32()  # 160 bits
    user.totp_secret_ciphertext = cipher.encrypt(seed, _totp_context(user.id))
    user.totp_last_step = None
    user.updated_at = clock.now()
    session.flush()
    uri = pyotp.TOTP(seed, digits=TOTP_DIGITS, interval=TOTP_STEP_SECONDS).provisioning_uri(
        name=user.email, issuer_name=TOTP_ISSUER)
    return TotpProvisioning(secret=seed, otpauth_uri=uri, qr_svg=segno.make(uri, error="m").svg_inline(scale=4))


def confirm_totp(session: Session, actor: Actor, user_id: str, session_id: str | None, code: str,
                 cipher: FieldCipher) -> list[str]:
    """Turn TOTP on once the person shows a code from their app; returns the recovery codes
    (shown this once) and marks the current session as having passed two-factor set-up."""
    user = session.execute(select(User).where(User.id == user_id).with_for_update()).scalar_one()
    if user.totp_enabled:
        raise TotpAlreadyEnabled("two-factor authentication is already on for this account")
    if user.totp_secret_ciphertext is None:
        raise TotpNotSetUp("call POST /v1/auth/totp/setup first")
    seed = cipher.decrypt(user.totp_secret_ciphertext, _totp_context(user.id))
    if not _accept_totp(user, seed, code):
        raise TotpInvalid("the code does not match; check the device's clock")
    user.totp_enabled = True
    user.updated_at = clock.now()
    if session_id is not None:
        session.execute(update(UserSession).where(UserSession.id == session_id).values(mfa_satisfied=True))
    codes = _new_recovery_codes(session, user)
    _audit(session, actor, "user.totp_enabled", user)
    return codes


# --- login and sessions --------------------------------------------------------------------


@dataclass(frozen=True)
class LoginOutcome:
    user: User
    token: str
    """The session cookie's value: shown to the browser once, stored only as its digest."""
    session: UserSession
    mfa_enrollment_required: bool


def _lock_seconds(failures: int, settings: Settings) -> int | None:
    """How long ``failures`` failures in a row lock an account for (None: not locked)."""
    threshold = settings.login_lockout_threshold
    if threshold <= 0 or failures < threshold:
        return None
    doublings = min(failures - threshold, 30)
    cap = max(MAX_LOCK_SECONDS, settings.login_lockout_seconds)
    return min(settings.login_lockout_seconds * 2**doublings, cap)


def _register_failure(user: User, settings: Settings, now: datetime) -> None:
    """Count a failed attempt; from the threshold on, lock for a doubling time (capped)."""
    user.failed_logins += 1
    seconds = _lock_seconds(user.failed_logins, settings)
    if seconds is not None:
        # Ends on a whole second, as an unknown address's lock does (it is kept in epoch seconds), so the
        # Retry-After of the two is the same number: 61 only ever said "no account" (security tester).
        user.locked_until = datetime.fromtimestamp(math.ceil(now.timestamp() + seconds), UTC)
    user.updated_at = now


UNKNOWN_LOGIN_BUCKET = "login_unknown:"
"""``rate_limit_counters`` row counting failed sign-ins to an address without an account (its SHA-256):
``count`` is the failures, ``window_start`` until when (epoch seconds) it is locked, or the last failure."""


def _unknown_bucket(email: str) -> str:
    return UNKNOWN_LOGIN_BUCKET + token_digest(email.strip().lower())


def _unknown_locked_until(session: Session, email: str, now: datetime) -> int | None:
    """Seconds an unknown address is still "locked" for, as an account would be, else None."""
    row = session.execute(select(RateLimitCounter.window_start, RateLimitCounter.count)
                          .where(RateLimitCounter.bucket == _unknown_bucket(email))
                          .order_by(RateLimitCounter.count.desc()).limit(1).with_for_update()).first()
    if row is None:
        return None
    wait = row.window_start - now.timestamp()
    return math.ceil(wait) if wait > 0 else None


def _register_unknown_failure(session: Session, email: str, settings: Settings, now: datetime) -> None:
    """Count a failure to an address without an account the way ``_register_failure`` counts one to an
    account, so lockout (its answer, its Retry-After, its skipped hash) does not tell the two apart.
    Old rows are purged with the rate-limit windows, an hour after the last failure or lock."""
    bucket = _unknown_bucket(email)
    row = session.execute(select(RateLimitCounter).where(RateLimitCounter.bucket == bucket)
                          .order_by(RateLimitCounter.count.desc()).limit(1).with_for_update()).scalar_one_or_none()
    failures = (row.count if row is not None else 0) + 1
    seconds = _lock_seconds(failures, settings)
    until = math.ceil(now.timestamp() + seconds) if seconds is not None else int(now.timestamp())
    if row is None:
        try:
            with session.begin_nested():
                session.add(RateLimitCounter(bucket=bucket, window_start=until, count=failures))
                session.flush()
        except IntegrityError:
            pass  # the same address, at the same second, from another attempt: it counted
    else:
        session.execute(update(RateLimitCounter).where(RateLimitCounter.bucket == bucket,
                                                       RateLimitCounter.window_start == row.window_start)
                        .values(window_start=until, count=failures))
        session.expire(row)


def _forget_unknown(session: Session, email: str) -> None:
    """An address that now has an account starts from its own count."""
    session.execute(delete(RateLimitCounter).where(RateLimitCounter.bucket == _unknown_bucket(email)))


def open_session(session: Session, user: User, settings: Settings, *, source_ip: str | None,
                 mfa_satisfied: bool) -> tuple[str, UserSession]:
    """A brand-new session (never a reused id, so a planted cookie is worthless after login)."""
    now = clock.now()
    token = secrets.token_urlsafe(32)
    row = UserSession(id=token_digest(token), user_id=user.id, csrf_token=secrets.token_urlsafe(32),
                      mfa_satisfied=mfa_satisfied, source_ip=(source_ip or None) and source_ip[:64],
                      created_at=now, last_seen_at=now,
                      expires_at=now + timedelta(hours=settings.session_absolute_hours), revoked_at=None)
    session.add(row)
    session.flush()
    return token, row


def login(session: Session, settings: Settings, cipher: FieldCipher | None, *, email: str, password: str,
          totp_code: str | None = None, recovery_code: str | None = None, source_ip: str | None = None,
          previous_token: str | None = None) -> LoginOutcome | ClearhouseError:
    """Check the credentials; return the new session, or the error to answer with once the
    failed-login counter and the audit event are committed."""
    now = clock.now()
    try:
        address = normalize_email(email)
    except InvalidEmail:
        address = None
    # The row lock serializes attempts on one account, so the failure count and the last
    # TOTP step are read and written by one attempt at a time.
    user = None
    if address is not None:
        user = session.execute(select(User).where(User.email == address).with_for_update()).scalar_one_or_none()

    def failed(user: User | None, reason: str) -> None:
        actor = Actor(type="user", id=user.id if user else "anonymous", role=user.role if user else None,
                      merchant_id=user.merchant_id if user else None, source_ip=source_ip, request_id=request_id())
        record(session, actor, "user.login_failed", "user", user.id if user else "unknown",
               changes={"reason": reason}, merchant_id=user.merchant_id if user else None)

    # An unknown address and a disabled account answer as a known one with a wrong password would: the same
    # refusals (locked from the same count on, for the same time), after the same work (a hash, or none
    # while locked), so no answer and no timing says which addresses have accounts.
    if user is None:
        wait = _unknown_locked_until(session, email, now)
        if wait is not None:
            failed(None, "locked")
            return AccountLocked(f"too many failed logins; try again in {wait} s", retry_after=wait)
        _password_matches(_dummy_hash(), password)  # the same time
        _register_unknown_failure(session, email, settings, now)
        failed(None, "unknown_email")
        return InvalidCredentials("wrong email or password")
    if user.locked_until is not None and user.locked_until > now:
        failed(user, "locked")
        wait = math.ceil((user.locked_until - now).total_seconds())
        return AccountLocked(f"too many failed logins; try again in {wait} s", retry_after=wait)
    if user.disabled:
        _password_matches(user.password_hash, password)  # the same time
        _register_failure(user, settings, now)
        failed(user, "disabled")
        return InvalidCredentials("wrong email or password")
    if not _password_matches(user.password_hash, password):
        _register_failure(user, settings, now)
        failed(user, "wrong_password")
        return InvalidCredentials("wrong email or password")

    second_factor = "none"
    if user.totp_enabled:
        if recovery_code:
            accepted, second_factor = _use_recovery_code(session, user, recovery_code), "recovery"
        elif totp_code:
            if cipher is None:
                raise RuntimeError("the field cipher is needed to check TOTP codes")
            seed = cipher.decrypt(user.totp_secret_ciphertext or "", _totp_context(user.id))
            accepted, second_factor = _accept_totp(user, seed, totp_code), "totp"
        else:
            failed(user, "second_factor_missing")
            return TotpRequired("give totp_code (or a recovery_code)")
        if not accepted:
            _register_failure(user, settings, now)
            failed(user, f"{second_factor}_rejected")
            return TotpInvalid("the two-factor code is wrong or was already used")
    if user.merchant_id is not None and session.execute(
            select(Merchant.status).where(Merchant.id == user.merchant_id)).scalar_one() != "active":
        # Said only to whoever knows the password (and second factor): a session would be refused at once.
        failed(user, "merchant_suspended")
        return MerchantSuspended(f"merchant {user.merchant_id} is suspended: its staff cannot sign in")

    user.failed_logins = 0
    user.locked_until = None
    if _hasher().check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    user.updated_at = now
    if previous_token:
        session.execute(update(UserSession).where(UserSession.id == token_digest(previous_token),
                                                  UserSession.revoked_at.is_(None)).values(revoked_at=now))
    enrollment_required = user.role in MFA_REQUIRED_ROLES and not user.totp_enabled
    token, row = open_session(session, user, settings, source_ip=source_ip,
                              mfa_satisfied=not enrollment_required)
    record(session, Actor(type="user", id=user.id, role=user.role, merchant_id=user.merchant_id,
                          source_ip=source_ip, request_id=request_id()),
           "user.login", "user", user.id, changes={"second_factor": second_factor}, merchant_id=user.merchant_id)
    return LoginOutcome(user=user, token=token, session=row, mfa_enrollment_required=enrollment_required)


def session_principal(session: Session, token: str, settings: Settings) -> tuple[Principal, str] | None:
    """(the principal, the session's csrf token) for a live session, else None (unknown, expired by idle or
    absolute timeout, revoked, user disabled or locked, merchant suspended). Touches last_seen_at at most
    once a minute."""
    if not token or len(token) > 256:
        return None
    row = session.get(UserSession, token_digest(token))
    now = clock.now()
    if row is None or row.revoked_at is not None or now >= row.expires_at:
        return None
    if now - row.last_seen_at > timedelta(minutes=settings.session_idle_minutes):
        return None
    user = session.get(User, row.user_id)
    if user is None or user.disabled or (user.locked_until is not None and user.locked_until > now):
        return None
    if user.merchant_id is not None and session.execute(
            select(Merchant.status).where(Merchant.id == user.merchant_id)).scalar_one() != "active":
        return None  # a suspended merchant's staff are out, as its API keys are
    if now - row.last_seen_at >= LAST_SEEN_RESOLUTION:
        row.last_seen_at = now
        session.flush()
    principal = Principal(kind="user", id=user.id, role=user.role, merchant_id=user.merchant_id,
                          permissions=ROLE_PERMISSIONS[user.role], session_id=row.id,
                          mfa_pending=not row.mfa_satisfied)
    return principal, row.csrf_token


def current_session(session: Session, principal: Principal) -> tuple[User, UserSession]:
    user = session.execute(select(User).where(User.id == principal.id)).scalar_one()
    row = session.execute(select(UserSession).where(UserSession.id == principal.session_id)).scalar_one()
    return user, row


def logout(session: Session, actor: Actor, user_id: str, session_id: str) -> None:
    """End this session."""
    session.execute(update(UserSession).where(UserSession.id == session_id, UserSession.revoked_at.is_(None))
                    .values(revoked_at=clock.now()))
    user = session.execute(select(User).where(User.id == user_id)).scalar_one()
    _audit(session, actor, "user.logout", user)


def logout_everywhere(session: Session, actor: Actor, user_id: str) -> int:
    """End every session of the user (a lost laptop, a shared computer); returns how many."""
    ended = revoke_sessions(session, user_id)
    user = session.execute(select(User).where(User.id == user_id)).scalar_one()
    _audit(session, actor, "user.logout_all", user, {"sessions_ended": ended})
    return ended


def change_password(session: Session, settings: Settings, actor: Actor, user_id: str, session_id: str | None, *,
                    current_password: str, new_password: str) -> None | PeopleError:
    """Set a new password (after the current one) and end the user's other sessions.

    A wrong current password counts as a failed login (a stolen session must not become a
    password-guessing oracle); returned, not raised, so the count is committed."""
    user = session.execute(select(User).where(User.id == user_id).with_for_update()).scalar_one()
    now = clock.now()
    if not _password_matches(user.password_hash, current_password):
        _register_failure(user, settings, now)
        record(session, actor, "user.password_change_failed", "user", user.id, merchant_id=user.merchant_id)
        return CurrentPasswordWrong("the current password is wrong")
    check_password_policy(new_password, user.email)
    if new_password == current_password:
        raise WeakPassword("the new password is the current one", reason="same_as_current")
    user.password_hash = hash_password(new_password)
    user.updated_at = now
    ended = revoke_sessions(session, user.id, except_session_id=session_id)
    session.flush()
    _audit(session, actor, "user.password_changed", user, {"other_sessions_ended": ended})
    return None


approvals.register(ROLE_CHANGE_ACTION, apply_role_change)
approvals.register(USER_CREATE_ACTION, apply_user_create)
