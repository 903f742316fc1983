"""Who may do what: the one permission matrix, the caller (``Principal``), and the
``requires`` dependency every route declares.

A permission is ``<area>:<action>``. People get permissions from their role (the matrix
below); API keys from their scopes, which are permissions too, limited to what the kind
of key may ever hold. Merchant principals (merchant keys, merchant staff) additionally
see only their own merchant's objects: services filter by ``principal.merchant_id`` and
answer 404 for anything else, so other tenants' ids never leak.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from clearhouse.kit.errors import ClearhouseError

PUBLIC = "public"
"""Declared by routes that answer without a key or a session (probes, login, inbound
channel notifications that carry their own signatures)."""
SESSION = "session"
"""Declared by routes a signed-in person uses on their own session (``/v1/auth/me``, TOTP
set-up, logout): any role, also before TOTP set-up; API keys are refused (403)."""

PERMISSIONS: dict[str, str] = {
    "ledger:read": "Read ledger accounts, balances, entries, transfers; verify the ledger",
    "ledger:write": "Open and close ledger accounts; create, post and void transfers",
    "merchants:read": "Read merchants (merchant callers: their own)",
    "merchants:create": "Create merchants",
    "merchants:write": "Change a merchant's settings, status and KYC status",
    "api_keys:read": "List API keys (never their secrets)",
    "api_keys:write": "Create and revoke API keys (live and platform keys need an approval)",
    "users:read": "List people and their roles",
    "users:write": "Create and disable people; change roles (needs an approval)",
    "approvals:read": "List actions waiting for a second person",
    "approvals:decide": "Approve or reject another person's held action",
    "audit:read": "Read and verify the audit trail",
    "vault:read": "Read vaulted cards and bank accounts (masked)",
    "vault:write": "Tokenize card and bank account numbers",
    "payments:read": "Read payments and refunds",
    "payments:write": "Create, capture, cancel and refund payments; sell card codes",
    "webhooks:read": "Read webhook endpoints and their delivery log",
    "webhooks:write": "Add, change and remove webhook endpoints; redeliver events",
    "routing:read": "Read routing rules and channel health",
    "routing:write": "Change routing rules (merchant callers: their own)",
    "settlement:read": "Read settlements and payouts",
    "settlement:write": "Run settlements, create payout batches",
    "recon:read": "Read reconciliations and cases",
    "recon:write": "Upload statements, resolve reconciliation cases",
    "risk:read": "Read risk rules, lists and reviews",
    "risk:write": "Change risk rules and lists, decide reviews",
    "reports:read": "Read reports and exports",
    "metrics:read": "Read Prometheus metrics when they are not public",
}

_ALL = frozenset(PERMISSIONS)
_READS = frozenset(p for p in PERMISSIONS if p.endswith(":read"))

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": _ALL,
    "operator": frozenset({
        "ledger:read", "merchants:read", "merchants:write", "api_keys:read", "users:read", "approvals:read",
        "approvals:decide", "vault:read", "payments:read", "payments:write", "settlement:read", "recon:read",
        "recon:write", "risk:read", "reports:read", "metrics:read", "webhooks:read", "webhooks:write",
        "routing:read", "routing:write",
    }),
    "finance": frozenset({
        "ledger:read", "ledger:write", "merchants:read", "approvals:read", "approvals:decide", "payments:read",
        "settlement:read", "settlement:write", "recon:read", "recon:write", "reports:read",
    }),
    "risk_analyst": frozenset({
        "merchants:read", "payments:read", "risk:read", "risk:write", "approvals:read", "reports:read",
    }),
    # Reads everything, the audit trail included, and changes nothing.
    "auditor": _READS,
    "merchant_admin": frozenset({
        "merchants:read", "api_keys:read", "api_keys:write", "users:read", "users:write", "approvals:read",
        "approvals:decide", "vault:read", "vault:write", "payments:read", "payments:write", "settlement:read",
        "reports:read", "webhooks:read", "webhooks:write", "routing:read", "routing:write",
    }),
    "merchant_viewer": frozenset({
        "merchants:read", "api_keys:read", "users:read", "vault:read", "payments:read", "settlement:read",
        "reports:read", "webhooks:read", "routing:read",
    }),
}

MFA_REQUIRED_ROLES = frozenset({"admin", "finance"})
"""Roles that must set up TOTP before a session may do anything else."""

MERCHANT_KEY_SCOPES = frozenset({
    "merchants:read", "vault:read", "vault:write", "payments:read", "payments:write", "settlement:read",
    "reports:read", "webhooks:read", "webhooks:write", "routing:read", "routing:write",
})
"""All a merchant's API key may ever hold (its default scope list)."""
PLATFORM_KEY_SCOPES = _ALL - {"users:write", "approvals:decide"}
"""Deciding approvals and managing people are for people, not for machines."""


MODES = {"live": True, "test": False}
"""A merchant key's mode as the ``livemode`` of the objects it makes and may see."""


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request."""

    kind: str  # "api_key" | "user"
    id: str  # the API key id or the user id
    role: str  # a user's role; "merchant_key" or "platform_key" for keys
    merchant_id: str | None
    permissions: frozenset[str]
    session_id: str | None = None
    mode: str | None = None  # an API key's mode: test | live | platform
    mfa_pending: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def idempotency_scope(self) -> str:
        """api.md: Idempotency-Keys are scoped to the caller's merchant; a test key's to its merchant's test
        mode, so a test key neither learns which keys the live integration used nor takes one first."""
        if not self.merchant_id:
            return "platform"
        return f"merchant:{self.merchant_id}" + (":test" if self.livemode is False else "")

    def can(self, permission: str) -> bool:
        return permission in self.permissions

    def sees(self, merchant_id: str | None) -> bool:
        """Whether an object owned by ``merchant_id`` is visible (platform callers see all)."""
        return self.merchant_id is None or self.merchant_id == merchant_id

    @property
    def livemode(self) -> bool | None:
        """The mode this caller is held to: a live key sees and touches live objects only, a test key
        test objects only; platform keys and people see both (None). identity.md, "Test and live"."""
        return MODES.get(self.mode or "")

    @property
    def creates_livemode(self) -> bool:
        """The mode of what this caller creates: test for a test key, live for everyone else."""
        return self.livemode is not False

    def sees_object(self, merchant_id: str | None, livemode: bool) -> bool:
        """Whether an object of a merchant and a mode (a payment, a card, an endpoint...) is visible."""
        return within(self.merchant_id, self.livemode, merchant_id, livemode)

    def listed_modes(self, asked: bool | None) -> tuple[bool, ...]:
        """The modes a list of this caller holds, ``asked`` being the list's own ``livemode`` filter: a key's own
        (none when it asks for the other), else what was asked, else both."""
        own = (True, False) if self.livemode is None else (self.livemode,)
        return own if asked is None else tuple(mode for mode in own if mode == asked)

    def listing(self, table: Any, merchant_id: str | None, livemode: bool | None = None) -> list[Any] | None:
        """The conditions that keep a list of ``table`` (with ``merchant_id`` and ``livemode`` columns)
        to what this caller may see, ``merchant_id`` and ``livemode`` being the list's own filters; None
        when a filter names another merchant than a merchant caller's own, or a key asks for the other
        mode (the list is empty)."""
        modes = self.listed_modes(livemode)
        if not modes or (self.merchant_id and merchant_id and merchant_id != self.merchant_id):
            return None
        owner = self.merchant_id or merchant_id
        conditions = [table.c.merchant_id == owner] if owner else []
        if len(modes) == 1:
            conditions.append(table.c.livemode == modes[0])
        return conditions


def within(merchant_id: str | None, livemode: bool | None, object_merchant_id: str | None,
           object_livemode: bool) -> bool:
    """Whether an object of ``object_merchant_id`` in ``object_livemode`` is within the scope of
    ``merchant_id`` and ``livemode`` (None: any merchant, either mode): what a caller sees
    (``Principal.sees_object``), and what a service called without a principal may touch (the
    vault's ``reveal_*`` for a payment or a payout)."""
    return merchant_id in (None, object_merchant_id) and livemode in (None, object_livemode)


class AuthenticationRequired(ClearhouseError):
    """Every route but the public ones needs a signed request or a session."""

    code = "authentication_required"
    status = 401
    title = "Authentication required"


class Forbidden(ClearhouseError):
    """The caller is authenticated but its role or scopes do not include the permission."""

    code = "forbidden"
    status = 403
    title = "Forbidden"


class MfaEnrollmentRequired(ClearhouseError):
    """This role must set up two-factor authentication before doing anything else."""

    code = "mfa_enrollment_required"
    status = 403
    title = "Two-factor set-up required"


def role_permissions(role: str) -> frozenset[str]:
    return ROLE_PERMISSIONS[role]


def key_permissions(mode: str, scopes: list[str]) -> frozenset[str]:
    allowed = PLATFORM_KEY_SCOPES if mode == "platform" else MERCHANT_KEY_SCOPES
    return frozenset(scopes) & allowed


def principal_of(request: Any) -> Principal:
    """The caller of a request that passed authentication (every non-public route)."""
    principal = getattr(request.state, "principal", None)
    if principal is None:
        raise AuthenticationRequired("sign the request with an API key or sign in")
    return principal


class _Requirement:
    """The callable behind ``requires``; the permission stays readable on it, so the
    route walk (tests) and the OpenAPI document (``x-permission``) can see what each
    route needs."""

    def __init__(self, permission: str):
        if permission not in PERMISSIONS and permission not in (PUBLIC, SESSION):
            raise ValueError(f"unknown permission {permission!r}")
        self.permission = permission

    def __call__(self, request: Any) -> Principal | None:
        if self.permission == PUBLIC:
            return getattr(request.state, "principal", None)
        principal = principal_of(request)
        if self.permission == SESSION:
            if principal.kind != "user" or principal.session_id is None:
                raise Forbidden("this is for a signed-in person's session, not an API key")
            return principal
        if principal.mfa_pending:
            raise MfaEnrollmentRequired("set up two-factor authentication first (POST /v1/auth/totp/setup)")
        if not principal.can(self.permission):
            raise Forbidden(f"this needs the {self.permission} permission")
        return principal


def requires(permission: str) -> Any:
    """A route dependency: ``dependencies=[requires("ledger:write")]``."""
    from fastapi import Depends

    requirement = _Requirement(permission)

    # async: FastAPI would run a plain function in the thread pool, a thread hop per request.
    async def check(request: Request) -> Principal | None:
        return requirement(request)

    check.permission = permission  # type: ignore[attr-defined]
    return Depends(check)


def route_permission(route: Any) -> str | None:
    """The permission a FastAPI route declared through ``requires`` (None: undeclared)."""
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return None
    for dependency in dependant.dependencies:
        permission = getattr(dependency.call, "permission", None)
        if permission is not None:
            return permission
    return None


def actor_of(request: Any) -> Any:
    """The audit trail's view of who made this request (principal, source address, request id)."""
    from clearhouse.audit.service import actor_of as audit_actor

    return audit_actor(principal_of(request), request)
