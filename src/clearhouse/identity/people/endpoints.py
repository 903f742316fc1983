"""Sign-in, sessions, two-factor set-up and user management over HTTP: parse, call the
service in one transaction, render."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Request, Response
from sqlalchemy.orm import Session

from clearhouse.audit.service import actor_of
from clearhouse.identity import ratelimit
from clearhouse.identity.people import service
from clearhouse.identity.people.schemas import (
    LoginIn,
    LoginOut,
    LogoutAllOut,
    MeOut,
    PasswordChangeIn,
    Role,
    RoleChangeIn,
    SessionOut,
    TotpConfirmIn,
    TotpConfirmOut,
    TotpSetupOut,
    UserCreate,
    UserOut,
    UserPatch,
    user_out,
)
from clearhouse.identity.permissions import PUBLIC, SESSION, Forbidden, Principal, principal_of, requires
from clearhouse.identity.schemas import ApprovalOut
from clearhouse.kit.api import Page, PrefixRouter
from clearhouse.kit.db import transact
from clearhouse.kit.errors import ClearhouseError

router = PrefixRouter(prefix="/v1")

_NO_SESSION = "`authentication_required`: no session cookie, or the session has ended"
_SESSION_ONLY = "`forbidden` for API keys (these routes are for a person's own session)"
_CSRF = "`csrf_failed`: the session's CSRF token is missing or wrong; " + _SESSION_ONLY


def _answers(**by_status: str) -> dict[int | str, dict[str, Any]]:
    """An auth route's error answers, each with the codes it can send (``_401="..."``)."""
    return {int(status.lstrip("_")): {"description": text} for status, text in by_status.items()}


_LOGIN_ERRORS = _answers(
    _401="`invalid_credentials`, `account_locked` (with Retry-After), `totp_required`, `totp_invalid`",
    _403="`merchant_suspended`: the person's merchant is suspended",
    _422="`validation_error`", _429="`rate_limited`: too many sign-ins from this address (with Retry-After)")
_SESSION_WRITE_ERRORS = _answers(_401=_NO_SESSION, _403=_CSRF)
_ME_ERRORS = _answers(_401=_NO_SESSION, _403=_SESSION_ONLY)
_TOTP_SETUP_ERRORS = _answers(_401=_NO_SESSION, _403=_CSRF, _409="`totp_already_enabled`")
_TOTP_CONFIRM_ERRORS = _answers(
    _401=f"{_NO_SESSION}; `totp_invalid`: the code does not match", _403=_CSRF,
    _409="`totp_already_enabled`, `totp_not_set_up` (call `/v1/auth/totp/setup` first)", _422="`validation_error`")
_PASSWORD_ERRORS = _answers(
    _401=_NO_SESSION, _403=_CSRF,
    _422="`validation_error`, `weak_password` (with `reason`), `invalid_current_password`")
_USER_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "`user_not_found` (also for another merchant's users)"},
    409: {"description": "`email_taken`, `cannot_disable_self`"},
    422: {"description": "`validation_error`, `weak_password`, `invalid_email`, `role_not_allowed`, "
          "`merchant_not_found`"},
}


def _engine(request: Request) -> Any:
    return request.app.state.engine


def _settings(request: Request) -> Any:
    return request.app.state.settings


def _cipher(request: Request) -> Any:
    return getattr(request.app.state, "cipher", None)


def _source_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def _session_of(request: Request) -> Principal:
    """The signed-in person; API keys have no session, password or second factor to manage."""
    principal = principal_of(request)
    if principal.kind != "user" or principal.session_id is None:
        raise Forbidden("this is for a signed-in person's session, not an API key")
    return principal


def _no_store(response: Response) -> None:
    # Session tokens, CSRF tokens, TOTP seeds and recovery codes must not sit in any cache.
    response.headers["Cache-Control"] = "no-store"


def _cookie_flags(request: Request) -> dict[str, Any]:
    return {"path": "/", "secure": request.url.scheme == "https", "httponly": True, "samesite": "strict"}


@router.post("/auth/login", response_model=LoginOut, tags=["auth"], responses=_LOGIN_ERRORS,
             dependencies=[requires(PUBLIC)])
def login(body: LoginIn, request: Request, response: Response) -> LoginOut:
    """Sign in with email, password and (when enabled) a TOTP or recovery code; sets the
    session cookie and returns the CSRF token to send with state-changing requests."""
    engine, settings = _engine(request), _settings(request)
    source_ip = _source_ip(request)
    # Counted in its own transaction, so a refused attempt still counts; on the bookkeeping
    # engine when the app has one (a counter need not wait for the disk).
    counters = getattr(request.app.state, "bookkeeping_engine", None) or engine
    wait = transact(counters, lambda s: ratelimit.hit(s, f"login:{source_ip or 'unknown'}",
                                                    settings.login_rate_limit_per_minute, 60))
    if wait is not None:
        raise ratelimit.RateLimited("too many login attempts from this address", retry_after=wait)
    previous_token = request.cookies.get(service.SESSION_COOKIE)

    def work(session: Session) -> service.LoginOutcome | ClearhouseError:
        return service.login(session, settings, _cipher(request), email=body.email, password=body.password,
                             totp_code=body.totp_code, recovery_code=body.recovery_code, source_ip=source_ip,
                             previous_token=previous_token)

    outcome = transact(engine, work)
    if isinstance(outcome, ClearhouseError):
        raise outcome  # after the commit: the failure count and the audit event stay
    response.set_cookie(service.SESSION_COOKIE, outcome.token, max_age=settings.session_absolute_hours * 3600,
                        **_cookie_flags(request))
    _no_store(response)
    return LoginOut(user=user_out(outcome.user), csrf_token=outcome.session.csrf_token,
                    expires_at=outcome.session.expires_at, mfa_enrollment_required=outcome.mfa_enrollment_required)


@router.post("/auth/logout", status_code=204, tags=["auth"], responses=_SESSION_WRITE_ERRORS,
             dependencies=[requires(SESSION)])
def logout(request: Request) -> Response:
    """End this session."""
    principal = _session_of(request)
    actor = actor_of(principal, request)
    transact(_engine(request), lambda s: service.logout(s, actor, principal.id, principal.session_id or ""))
    response = Response(status_code=204)
    response.delete_cookie(service.SESSION_COOKIE, **_cookie_flags(request))
    return response


@router.post("/auth/logout_all", response_model=LogoutAllOut, tags=["auth"], responses=_SESSION_WRITE_ERRORS,
             dependencies=[requires(SESSION)])
def logout_all(request: Request, response: Response) -> LogoutAllOut:
    """End every session of the signed-in person, this one included."""
    principal = _session_of(request)
    actor = actor_of(principal, request)
    ended = transact(_engine(request), lambda s: service.logout_everywhere(s, actor, principal.id))
    response.delete_cookie(service.SESSION_COOKIE, **_cookie_flags(request))
    return LogoutAllOut(sessions_ended=ended)


@router.get("/auth/me", response_model=MeOut, tags=["auth"], responses=_ME_ERRORS,
            dependencies=[requires(SESSION)])
def me(request: Request, response: Response) -> MeOut:
    """The signed-in person, their session, what their role may do, and the session's CSRF token."""
    principal = _session_of(request)
    user, row = transact(_engine(request), lambda s: service.current_session(s, principal))
    _no_store(response)
    # Readable only with the session's cookie, by a page of this origin (no CORS here, and the
    # cookie is SameSite=Strict): what the token guards against, a cross-site form, cannot read it.
    return MeOut(user=user_out(user),
                 session=SessionOut(created_at=row.created_at, expires_at=row.expires_at,
                                    mfa_satisfied=row.mfa_satisfied),
                 permissions=sorted(principal.permissions), mfa_enrollment_required=principal.mfa_pending,
                 csrf_token=row.csrf_token)


@router.post("/auth/totp/setup", response_model=TotpSetupOut, tags=["auth"], responses=_TOTP_SETUP_ERRORS,
             dependencies=[requires(SESSION)])
def totp_setup(request: Request, response: Response) -> TotpSetupOut:
    """A new TOTP seed (as text, otpauth URI and QR code); enabled only by ``/auth/totp/confirm``."""
    principal = _session_of(request)
    actor = actor_of(principal, request)
    provisioning = transact(_engine(request),
                            lambda s: service.begin_totp_setup(s, actor, principal.id, _cipher(request)))
    _no_store(response)
    return TotpSetupOut(secret=provisioning.secret, otpauth_uri=provisioning.otpauth_uri,
                        qr_svg=provisioning.qr_svg)


@router.post("/auth/totp/confirm", response_model=TotpConfirmOut, tags=["auth"], responses=_TOTP_CONFIRM_ERRORS,
             dependencies=[requires(SESSION)])
def totp_confirm(body: TotpConfirmIn, request: Request, response: Response) -> TotpConfirmOut:
    """Turn TOTP on with a code from the app; returns ten recovery codes, shown this once."""
    principal = _session_of(request)
    actor = actor_of(principal, request)
    codes = transact(_engine(request), lambda s: service.confirm_totp(
        s, actor, principal.id, principal.session_id, body.code, _cipher(request)))
    _no_store(response)
    return TotpConfirmOut(recovery_codes=codes)


@router.post("/auth/password", status_code=204, tags=["auth"], responses=_PASSWORD_ERRORS,
             dependencies=[requires(SESSION)])
def change_password(body: PasswordChangeIn, request: Request) -> Response:
    """A new password; every other session of the person ends."""
    principal = _session_of(request)
    actor = actor_of(principal, request)
    refused = transact(_engine(request), lambda s: service.change_password(
        s, _settings(request), actor, principal.id, principal.session_id,
        current_password=body.current_password, new_password=body.new_password))
    if refused is not None:
        raise refused
    return Response(status_code=204)


@router.post("/users", status_code=201, response_model=UserOut | ApprovalOut, tags=["users"],
             responses={**_USER_ERRORS, 202: {"model": ApprovalOut, "description": "held for a second person: "
                                              "a role that may decide approvals (admin, operator, finance, "
                                              "merchant_admin)"}},
             dependencies=[requires("users:write")])
def create_user(body: UserCreate, request: Request, response: Response) -> UserOut | ApprovalOut:
    """A new person. Merchant admins create their own merchant's staff, in merchant roles. A person who could
    decide approvals is held, as a role change is: `202` with the approval, the user made when approved."""
    principal = principal_of(request)
    actor = actor_of(principal, request)
    made = transact(_engine(request), lambda s: service.create_user_as(
        s, principal, actor, email=body.email, role=body.role, merchant_id=body.merchant_id,
        password=body.password))
    if isinstance(made, dict):
        response.status_code = 202
        return ApprovalOut(**made)
    return user_out(made)


@router.get("/users", response_model=Page[UserOut], tags=["users"], dependencies=[requires("users:read")])
def list_users(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    starting_after: Annotated[str | None, Query(max_length=40)] = None,
    merchant_id: Annotated[str | None, Query(max_length=40)] = None,
    role: Role | None = None,
) -> Page[UserOut]:
    """People in creation order (merchant staff see only their merchant's)."""
    principal = principal_of(request)
    users, more = transact(_engine(request), lambda s: service.list_users(
        s, principal, limit=limit, starting_after=starting_after, merchant_id=merchant_id, role=role))
    return Page(data=[user_out(u) for u in users], has_more=more, next_cursor=users[-1].id if more else None)


@router.get("/users/{user_id}", response_model=UserOut, tags=["users"], responses=_USER_ERRORS,
            dependencies=[requires("users:read")])
def get_user(user_id: str, request: Request) -> UserOut:
    principal = principal_of(request)
    return user_out(transact(_engine(request), lambda s: service.visible_user(s, principal, user_id)))


@router.patch("/users/{user_id}", response_model=UserOut, tags=["users"], responses=_USER_ERRORS,
              dependencies=[requires("users:write")])
def update_user(user_id: str, body: UserPatch, request: Request) -> UserOut:
    """Disable (ending every session) or re-enable a person."""
    principal = principal_of(request)
    actor = actor_of(principal, request)

    def work(session: Session) -> Any:
        if body.disabled is None:
            return service.visible_user(session, principal, user_id)
        return service.set_disabled(session, principal, actor, user_id, body.disabled)

    return user_out(transact(_engine(request), work))


@router.post("/users/{user_id}/role", status_code=202, response_model=ApprovalOut, tags=["users"],
             responses=_USER_ERRORS, dependencies=[requires("users:write")])
def change_role(user_id: str, body: RoleChangeIn, request: Request) -> ApprovalOut:
    """Ask for a role change; it is held until a different person with users:write approves it
    (``POST /v1/approvals/{id}/approve``), then applied and the person's sessions end."""
    principal = principal_of(request)
    actor = actor_of(principal, request)
    approval = transact(_engine(request), lambda s: service.request_role_change(
        s, principal, actor, user_id, body.role))
    return ApprovalOut(**approval)
