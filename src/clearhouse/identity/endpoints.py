"""Merchants, API keys and approvals over HTTP: parse, call the service in one transaction, render."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from clearhouse.identity import approvals, service
from clearhouse.identity.permissions import actor_of, principal_of, requires
from clearhouse.identity.schemas import (
    ApiKeyCreate,
    ApiKeyOut,
    ApiKeyWithSecret,
    ApprovalDecision,
    ApprovalOut,
    MerchantCreate,
    MerchantOut,
    MerchantUpdate,
    PlatformKeyCreate,
)
from clearhouse.kit.api import Page, PrefixRouter
from clearhouse.kit.db import transact
from clearhouse.kit.idempotency import derived_id

router = PrefixRouter(prefix="/v1")

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Not authenticated (`authentication_required`, `signature_invalid`, ...)"},
    403: {"description": "Not allowed (`forbidden`, `self_approval_refused`)"},
    404: {"description": "Unknown, or not the caller's (`not_found`)"},
    409: {"description": "Conflict with current state (`approval_not_pending`, `approval_expired`, "
          "`api_key_already_revoked`, `secret_already_collected`)"},
    422: {"description": "A rule is broken (`validation_error`)"},
}
_HELD = {202: {"model": ApprovalOut, "description": "Held for a second person's approval"}}


def _engine(request: Request) -> Any:
    return request.app.state.engine


def _cipher(request: Request) -> Any:
    return request.app.state.cipher


def _ttl(request: Request) -> timedelta:
    return timedelta(hours=request.app.state.settings.approval_ttl_hours)


def _json(model: Any, status: int) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status)


SECRET_HEADERS = {"Cache-Control": "no-store"}
"""An answer carrying an API key's secret must not sit in any cache (a proxy's, a browser's)."""


def _with_secret(result: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse(ApiKeyWithSecret(**result).model_dump(mode="json"), status_code=status,
                        headers=SECRET_HEADERS)


# --- merchants -----------------------------------------------------------------------------


@router.post("/merchants", status_code=201, response_model=MerchantOut, tags=["merchants"], responses=_ERRORS,
             dependencies=[requires("merchants:create")])
def create_merchant(body: MerchantCreate, request: Request) -> MerchantOut:
    """Create a merchant (a tenant). Its API keys are made under ``/v1/merchants/{id}/api_keys``."""
    actor = actor_of(request)
    row = transact(_engine(request), lambda s: service.create_merchant(
        s, actor, merchant_id=derived_id(request, "mch"), **body.model_dump(exclude_none=True)),
        retry_integrity=True)
    return MerchantOut(**service.merchant_dict(row))


@router.get("/merchants", response_model=Page[MerchantOut], tags=["merchants"],
            dependencies=[requires("merchants:read")])
def list_merchants(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    starting_after: Annotated[str | None, Query(max_length=64)] = None,
) -> Page[MerchantOut]:
    principal = principal_of(request)
    rows, more = transact(_engine(request), lambda s: service.list_merchants(
        s, principal, limit=limit, starting_after=starting_after))
    return Page(data=[MerchantOut(**service.merchant_dict(r)) for r in rows], has_more=more,
                next_cursor=rows[-1].id if more else None)


@router.get("/merchants/{merchant_id}", response_model=MerchantOut, tags=["merchants"], responses=_ERRORS,
            dependencies=[requires("merchants:read")])
def get_merchant(merchant_id: str, request: Request) -> MerchantOut:
    principal = principal_of(request)
    row = transact(_engine(request), lambda s: service.get_merchant(s, principal, merchant_id))
    return MerchantOut(**service.merchant_dict(row))


@router.patch("/merchants/{merchant_id}", response_model=MerchantOut, tags=["merchants"], responses=_ERRORS,
              dependencies=[requires("merchants:write")])
def update_merchant(merchant_id: str, body: MerchantUpdate, request: Request) -> MerchantOut:
    """Change settings, status or KYC status; only the fields given change."""
    principal, actor = principal_of(request), actor_of(request)
    row = transact(_engine(request), lambda s: service.update_merchant(
        s, actor, principal, merchant_id, body.model_dump(exclude_unset=True)))
    return MerchantOut(**service.merchant_dict(row))


# --- API keys ------------------------------------------------------------------------------


def _create_key(request: Request, merchant_id: str | None, mode: str, body: Any) -> JSONResponse:
    principal, actor, cipher = principal_of(request), actor_of(request), _cipher(request)

    def work(session: Session) -> tuple[str, dict[str, Any]]:
        return service.request_api_key(
            session, cipher, principal, actor, merchant_id=merchant_id, mode=mode, name=body.name,
            scopes=body.scopes, expires_at=body.expires_at, approval_ttl=_ttl(request))

    outcome, result = transact(_engine(request), work)
    if outcome == "held":
        return _json(ApprovalOut(**result), 202)
    return _with_secret(result, 201)


@router.post("/merchants/{merchant_id}/api_keys", status_code=201, response_model=ApiKeyWithSecret,
             tags=["api keys"], responses={**_ERRORS, **_HELD}, dependencies=[requires("api_keys:write")])
def create_merchant_key(merchant_id: str, body: ApiKeyCreate, request: Request) -> Any:
    """A test key is made at once and its secret shown this once; a live key is held for approval (202)."""
    return _create_key(request, merchant_id, body.mode, body)


@router.get("/merchants/{merchant_id}/api_keys", response_model=Page[ApiKeyOut], tags=["api keys"],
            responses=_ERRORS, dependencies=[requires("api_keys:read")])
def list_merchant_keys(merchant_id: str, request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                       starting_after: str | None = None) -> Page[ApiKeyOut]:
    """The merchant's keys, newest first, without secrets."""
    return _key_page(request, merchant_id, limit, starting_after)


def _key_page(request: Request, merchant_id: str | None, limit: int, starting_after: str | None) -> Page[ApiKeyOut]:
    principal = principal_of(request)
    rows, more = transact(_engine(request), lambda s: service.list_api_keys(
        s, principal, merchant_id, limit=limit, starting_after=starting_after))
    return Page(data=[ApiKeyOut(**service.key_dict(r)) for r in rows], has_more=more,
                next_cursor=rows[-1].id if more else None)


@router.post("/merchants/{merchant_id}/api_keys/{key_id}/revoke", response_model=ApiKeyOut, tags=["api keys"],
             responses=_ERRORS, dependencies=[requires("api_keys:write")])
def revoke_merchant_key(merchant_id: str, key_id: str, request: Request) -> ApiKeyOut:
    """Revoke at once, in every server process: the next request signed with it is a 401."""
    principal, actor = principal_of(request), actor_of(request)
    row = transact(_engine(request), lambda s: service.revoke_api_key(s, actor, principal, merchant_id, key_id))
    return ApiKeyOut(**service.key_dict(row))


@router.post("/merchants/{merchant_id}/api_keys/{key_id}/secret", response_model=ApiKeyWithSecret,
             tags=["api keys"], responses=_ERRORS, dependencies=[requires("api_keys:write")])
def collect_merchant_key_secret(merchant_id: str, key_id: str, request: Request) -> Any:
    """The secret of an approved live key, once, to the person who asked for the key."""
    principal, actor, cipher = principal_of(request), actor_of(request), _cipher(request)
    result = transact(_engine(request), lambda s: service.collect_secret(
        s, cipher, actor, principal, merchant_id, key_id))
    return _with_secret(result)


@router.post("/api_keys", status_code=202, response_model=ApprovalOut, tags=["api keys"], responses=_ERRORS,
             dependencies=[requires("api_keys:write")])
def create_platform_key(body: PlatformKeyCreate, request: Request) -> Any:
    """A platform key for the operator's own systems; always held for a second person's approval."""
    return _create_key(request, None, "platform", body)


@router.get("/api_keys", response_model=Page[ApiKeyOut], tags=["api keys"],
            dependencies=[requires("api_keys:read")])
def list_platform_keys(request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                       starting_after: str | None = None) -> Page[ApiKeyOut]:
    """The platform's keys, newest first, without secrets."""
    return _key_page(request, None, limit, starting_after)


@router.post("/api_keys/{key_id}/revoke", response_model=ApiKeyOut, tags=["api keys"], responses=_ERRORS,
             dependencies=[requires("api_keys:write")])
def revoke_platform_key(key_id: str, request: Request) -> ApiKeyOut:
    principal, actor = principal_of(request), actor_of(request)
    row = transact(_engine(request), lambda s: service.revoke_api_key(s, actor, principal, None, key_id))
    return ApiKeyOut(**service.key_dict(row))


@router.post("/api_keys/{key_id}/secret", response_model=ApiKeyWithSecret, tags=["api keys"], responses=_ERRORS,
             dependencies=[requires("api_keys:write")])
def collect_platform_key_secret(key_id: str, request: Request) -> Any:
    principal, actor, cipher = principal_of(request), actor_of(request), _cipher(request)
    result = transact(_engine(request), lambda s: service.collect_secret(s, cipher, actor, principal, None, key_id))
    return _with_secret(result)


# --- approvals -----------------------------------------------------------------------------


@router.get("/approvals", response_model=Page[ApprovalOut], tags=["approvals"],
            dependencies=[requires("approvals:read")])
def list_approvals(
    request: Request,
    status: Literal["pending", "approved", "rejected", "expired"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    starting_after: Annotated[str | None, Query(max_length=64)] = None,
) -> Page[ApprovalOut]:
    principal = principal_of(request)
    items, more = transact(_engine(request), lambda s: approvals.list_approvals(
        s, principal, status=status, limit=limit, starting_after=starting_after))
    return Page(data=[ApprovalOut(**i) for i in items], has_more=more, next_cursor=items[-1]["id"] if more else None)


@router.get("/approvals/{approval_id}", response_model=ApprovalOut, tags=["approvals"], responses=_ERRORS,
            dependencies=[requires("approvals:read")])
def get_approval(approval_id: str, request: Request) -> ApprovalOut:
    principal = principal_of(request)
    return ApprovalOut(**transact(_engine(request), lambda s: approvals.get(s, principal, approval_id)))


def _decide(request: Request, approval_id: str, approve: bool, body: ApprovalDecision | None) -> ApprovalOut:
    principal, actor = principal_of(request), actor_of(request)
    reason = body.reason if body else None
    return ApprovalOut(**transact(_engine(request), lambda s: approvals.decide(
        s, principal, approval_id, approve=approve, reason=reason, actor=actor)))


@router.post("/approvals/{approval_id}/approve", response_model=ApprovalOut, tags=["approvals"], responses=_ERRORS,
             dependencies=[requires("approvals:decide")])
def approve(approval_id: str, request: Request, body: ApprovalDecision | None = None) -> ApprovalOut:
    """Approve another person's held action; it runs now, exactly as held."""
    return _decide(request, approval_id, True, body)


@router.post("/approvals/{approval_id}/reject", response_model=ApprovalOut, tags=["approvals"], responses=_ERRORS,
             dependencies=[requires("approvals:decide")])
def reject(approval_id: str, request: Request, body: ApprovalDecision | None = None) -> ApprovalOut:
    return _decide(request, approval_id, False, body)
