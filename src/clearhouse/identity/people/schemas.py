"""Request and response shapes for sign-in, sessions, two-factor set-up and user management."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, StrictBool

from clearhouse.identity.models import ROLES
from clearhouse.kit.api import Model, UtcTime

Role = Literal[ROLES]  # type: ignore[valid-type]

# Bounds on input only; the password policy itself (12..256) is checked by the service,
# so a login with an over-long password is an ordinary wrong password, not a 422 that
# tells an attacker anything.
Email = Field(min_length=1, max_length=320)
Password = Field(min_length=1, max_length=1024)


class LoginIn(Model):
    email: str = Email
    password: str = Password
    totp_code: str | None = Field(default=None, max_length=16)
    recovery_code: str | None = Field(default=None, max_length=64)


class UserOut(BaseModel):
    id: str
    email: str
    role: str
    merchant_id: str | None
    totp_enabled: bool
    disabled: bool
    locked_until: UtcTime | None
    created_at: UtcTime
    updated_at: UtcTime


class LoginOut(BaseModel):
    user: UserOut
    csrf_token: str = Field(description="Send as X-CSRF-Token with every POST, PUT, PATCH and DELETE")
    expires_at: UtcTime = Field(description="The session's absolute end; it also ends after idle time")
    mfa_enrollment_required: bool = Field(
        description="True for admin and finance without TOTP: only /v1/auth/* answers until it is set up")


class SessionOut(BaseModel):
    created_at: UtcTime
    expires_at: UtcTime
    mfa_satisfied: bool


class MeOut(BaseModel):
    user: UserOut
    session: SessionOut
    permissions: list[str]
    mfa_enrollment_required: bool
    csrf_token: str = Field(description="The session's token for X-CSRF-Token, again: a console page that was "
                                        "reloaded has lost the one the sign-in answered")


class LogoutAllOut(BaseModel):
    sessions_ended: int


class TotpSetupOut(BaseModel):
    secret: str = Field(description="Base32 seed for manual entry; shown this once")
    otpauth_uri: str
    qr_svg: str = Field(description="The otpauth URI as an inline SVG QR code")


class TotpConfirmIn(Model):
    code: str = Field(min_length=1, max_length=16)


class TotpConfirmOut(BaseModel):
    recovery_codes: list[str] = Field(description="Ten single-use codes, shown this once")


class PasswordChangeIn(Model):
    current_password: str = Password
    new_password: str = Password


class UserCreate(Model):
    email: str = Email
    role: Role
    merchant_id: str | None = Field(default=None, min_length=1, max_length=40)
    password: str = Password


class UserPatch(Model):
    disabled: StrictBool | None = None


class RoleChangeIn(Model):
    role: Role


def user_out(user: object) -> UserOut:
    return UserOut.model_validate(user, from_attributes=True)

