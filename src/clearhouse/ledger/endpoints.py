"""Ledger HTTP endpoints: parse, call the service inside one transaction, render."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Annotated, Any

import orjson
from fastapi import Body, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter
from sqlalchemy import Row
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from clearhouse.audit import service as audit
from clearhouse.identity import approvals
from clearhouse.identity.permissions import actor_of, principal_of, requires
from clearhouse.identity.schemas import ApprovalOut
from clearhouse.kit.api import Page, PrefixRouter, QueryTime, json_body, query_time, validate
from clearhouse.kit.db import transact
from clearhouse.kit.errors import problem_response
from clearhouse.kit.idempotency import derived_id
from clearhouse.kit.ids import new_id
from clearhouse.kit.metrics import ledger_transfers
from clearhouse.ledger import errors, service
from clearhouse.ledger.schemas import (
    AccountBalanceOut,
    AccountCreate,
    AccountOut,
    BatchOut,
    BatchResult,
    EntryCreate,
    EntryLine,
    PostPending,
    TransferBatch,
    TransferCreate,
    TransferOut,
    VerifyOut,
    VoidPending,
)
from clearhouse.ledger.verify import verify

router = PrefixRouter(prefix="/v1/ledger", tags=["ledger"])
_READ = [requires("ledger:read")]
_WRITE = [requires("ledger:write")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed JSON (`malformed_request`)"},
    404: {"description": "Unknown object (`not_found`, `transfer_not_found`)"},
    409: {"description": "Conflict with current state (`insufficient_funds`, `exceeds_credit_limit`, "
          "`account_closed`, `transfer_exists_with_different_fields`, `pending_transfer_already_posted`, ...)"},
    422: {"description": "A rule is broken (`validation_error`, `currency_mismatch`, `account_not_found`, "
          "`entry_not_balanced`, `batch_too_large`, `linked_batch_failed`, ...)"},
}


def _engine(request: Request) -> Any:
    return request.app.state.engine


def _account_out(row: Row) -> AccountOut:
    balance = service.balance_of(row.type, row.debits_posted, row.credits_posted, row.debits_pending,
                                 row.credits_pending)
    return AccountOut(
        id=row.id, type=row.type, currency=row.currency, code=row.code, owner_id=row.owner_id,
        flags={"debits_must_not_exceed_credits": row.debits_must_not_exceed_credits,
               "credits_must_not_exceed_debits": row.credits_must_not_exceed_debits},
        overdraft_limit=row.overdraft_limit, closed=row.closed, metadata=orjson.loads(row.metadata_json),
        created_at=row.created_at, balance=_as_dict(balance),
    )


def _as_dict(balance: service.Balance) -> dict[str, int]:
    return dataclasses.asdict(balance)


@router.post("/accounts", status_code=201, response_model=AccountOut, dependencies=_WRITE, responses={
    200: {"model": AccountOut, "description": "The account existed with the same fields: returned as it is"},
    **_ERRORS})
def create_account(body: AccountCreate, request: Request, response: Response) -> AccountOut:
    """Open an account. An id that exists with the same fields returns it with 200."""

    actor = actor_of(request)

    def work(session: Session) -> tuple[Row, bool]:
        row, created = service.create_account(
            session, id=body.id or derived_id(request, "acct"), type=body.type, currency=body.currency,
            code=body.code, owner_id=body.owner_id,
            debits_must_not_exceed_credits=body.flags.debits_must_not_exceed_credits,
            credits_must_not_exceed_debits=body.flags.credits_must_not_exceed_debits,
            overdraft_limit=body.overdraft_limit, metadata=body.metadata,
        )
        if created:
            audit.record(session, actor, "ledger.account.create", "ledger_account", row.id,
                         changes=body.model_dump(mode="json", exclude_none=True))
        return row, created

    row, created = transact(_engine(request), work, retry_integrity=True)
    if not created:
        response.status_code = 200
    return _account_out(row)


@router.get("/accounts", response_model=Page[AccountOut], dependencies=_READ)
def list_accounts(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    starting_after: str | None = None,
    owner_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
) -> Page[AccountOut]:
    rows, more = transact(
        _engine(request),
        lambda s: service.list_accounts(s, limit=limit, starting_after=starting_after, owner_id=owner_id),
    )
    return Page(data=[_account_out(r) for r in rows], has_more=more, next_cursor=rows[-1].id if more else None)


@router.get("/accounts/{account_id}", response_model=AccountOut, responses=_ERRORS, dependencies=_READ)
def get_account(account_id: str, request: Request) -> AccountOut:
    return _account_out(transact(_engine(request), lambda s: service.get_account(s, account_id)))


@router.post("/accounts/{account_id}/close", response_model=AccountOut, responses=_ERRORS, dependencies=_WRITE)
def close_account(account_id: str, request: Request) -> AccountOut:
    """Close an account whose balances are all zero; it takes no new entries afterwards."""
    actor = actor_of(request)

    def work(session: Session) -> Row:
        row = service.close_account(session, account_id)
        audit.record(session, actor, "ledger.account.close", "ledger_account", account_id)
        return row

    return _account_out(transact(_engine(request), work))


@router.get("/accounts/{account_id}/balance", response_model=AccountBalanceOut, responses=_ERRORS, dependencies=_READ)
def get_balance(
    account_id: str, request: Request, as_of: QueryTime = None
) -> AccountBalanceOut:
    """The balance now, or exactly as it stood at ``as_of`` (RFC 3339)."""
    as_of_utc = query_time(as_of, "as_of")

    def work(session: Session) -> AccountBalanceOut:
        row, balance = service.account_balance(session, account_id, as_of_utc)
        return AccountBalanceOut(account_id=account_id, currency=row.currency, as_of=as_of_utc, **_as_dict(balance))

    return transact(_engine(request), work)


@router.get("/accounts/{account_id}/entries", response_model=Page[EntryLine], responses=_ERRORS, dependencies=_READ)
def list_entries(
    account_id: str,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    starting_after: str | None = None,
    as_of: QueryTime = None,
) -> Page[EntryLine]:
    """The postings behind the balance, oldest first (``as_of`` stops the history there)."""
    as_of_utc = query_time(as_of, "as_of")
    rows, more = transact(
        _engine(request),
        lambda s: service.account_entries(s, account_id, limit=limit, starting_after=starting_after, as_of=as_of_utc),
    )
    lines = [
        EntryLine(cursor=f"{r.seq}:{r.idx}", transfer_id=r.transfer_id, seq=r.seq, direction=r.direction,
                  kind=r.kind, amount=r.amount, currency=r.currency, code=r.code, reference=r.reference,
                  created_at=r.created_at)
        for r in rows
    ]
    return Page(data=lines, has_more=more, next_cursor=lines[-1].cursor if more else None)


_TRANSFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/TransferCreate"},
                        {"$ref": "#/components/schemas/EntryCreate"},
                        {"$ref": "#/components/schemas/TransferBatch"},
                    ]
                }
            }
        },
    }
}
BODY_MODELS = [TransferCreate, EntryCreate, TransferBatch]
"""What ``_TRANSFER_BODY`` refers to: defined in the OpenAPI components by the app."""
_transfer_adapter = TypeAdapter(TransferCreate)
_entry_adapter = TypeAdapter(EntryCreate)


def _request_of(item: Any, at: tuple[Any, ...] = ()) -> service.EntryRequest:
    if isinstance(item, dict) and "postings" in item:
        entry: EntryCreate = _validate_at(_entry_adapter, item, at)
        return service.EntryRequest(
            id=entry.id, code=entry.code, reference=entry.reference, metadata=entry.metadata,
            pending=entry.pending, timeout_seconds=entry.timeout_seconds,
            postings=[service.PostingRequest(p.account_id, p.direction, p.amount, p.currency)
                      for p in entry.postings],
        )
    transfer: TransferCreate = _validate_at(_transfer_adapter, item, at)
    return service.EntryRequest.transfer(
        transfer.debit_account_id, transfer.credit_account_id, transfer.amount, transfer.currency,
        id=transfer.id, code=transfer.code, reference=transfer.reference, metadata=transfer.metadata,
        pending=transfer.pending, timeout_seconds=transfer.timeout_seconds,
    )


def _validate_at(adapter: TypeAdapter[Any], item: Any, at: tuple[Any, ...]) -> Any:
    try:
        return validate(adapter, item)
    except RequestValidationError as error:
        raise RequestValidationError(
            [{**e, "loc": ("body", *at, *tuple(e["loc"])[1:])} for e in error.errors()]
        ) from None


@router.post(
    "/transfers",
    status_code=201,
    openapi_extra=_TRANSFER_BODY,
    responses={
        200: {"model": TransferOut | BatchOut,
              "description": "A batch: one result per transfer; or a single transfer that existed with the same"
                             " fields, returned as it is"},
        202: {"model": ApprovalOut, "description": "Sent by a person: checked and held for a second person's"
                                                   " approval"},
        **_ERRORS},
    response_model=TransferOut,
    dependencies=_WRITE,
)
async def create_transfers(request: Request) -> Any:
    """One transfer, one multi-leg entry, or a batch of up to 8190 (``linked`` for all-or-none).

    Sent by a person (a console session) this is a manual ledger adjustment: it is checked,
    then held with its exact content for a second person's approval (202) and written when
    approved. Systems (API keys) post directly.
    """
    body = await json_body(request)
    engine = _engine(request)
    if principal_of(request).kind == "user":
        return await _hold_adjustment(request, body)
    requests, linked, is_batch = _parse_entries(body)
    if is_batch:
        for index, entry in enumerate(requests):
            entry.id = entry.id or derived_id(request, "tr", index)
        actor = actor_of(request)

        def write_batch(session: Session) -> list[service.Outcome]:
            outcomes = service.create_transfers(session, requests, linked=linked)
            created = [o.id for o in outcomes if o.status == "created"]
            if created:
                # One event per batch, not per transfer: the ledger's own hash chain holds each
                # transfer; this says who wrote them.
                audit.record(session, actor, "ledger.transfers.create", "ledger_transfer_batch", created[0],
                             changes={"created": len(created), "first_id": created[0], "last_id": created[-1],
                                      "linked": linked})
            return outcomes

        outcomes = await _run(engine, write_batch)
        results = [BatchResult(index=o.index, id=o.id, status=o.status, code=o.code, detail=o.detail)
                   for o in outcomes]
        _count(outcomes)
        if linked and any(o.status == "failed" for o in outcomes):
            failure = next(o for o in outcomes if o.code != errors.LINKED_EVENT_FAILED)
            return problem_response(errors.LinkedBatchFailed(
                f"transfer {failure.index} failed with {failure.code}; nothing was written",
                results=[r.model_dump() for r in results],
            ))
        return JSONResponse(BatchOut(results=results).model_dump(mode="json"), status_code=200)
    entry = requests[0]
    entry.id = entry.id or derived_id(request, "tr")

    actor = actor_of(request)

    def work(session: Session) -> tuple[dict[str, Any], bool]:
        transfer_id, created = service.create_transfer(session, entry)
        view = service.get_transfer(session, transfer_id)
        if created:
            # What moved, not only who moved it: the trail is read without the ledger beside it.
            audit.record(session, actor, "ledger.transfer.create", "ledger_transfer", transfer_id,
                         changes={"postings": view["postings"], "pending": view["pending"], "entry_code": view["code"]})
        return view, created

    try:
        view, created = await _run(engine, work)
    except errors.LedgerError:
        ledger_transfers.labels("failed").inc()
        raise
    ledger_transfers.labels("created" if created else "exists").inc()
    return JSONResponse(TransferOut(**view).model_dump(mode="json"), status_code=201 if created else 200)


def _parse_entries(body: Any) -> tuple[list[service.EntryRequest], bool, bool]:
    """(entry requests, linked, is a batch), validated as ``create_transfers`` validates them."""
    if isinstance(body, dict) and "transfers" in body:
        batch: TransferBatch = validate(TransferBatch, body)
        if len(batch.transfers) > service.MAX_BATCH:
            raise errors.BatchTooLarge(f"a batch holds at most {service.MAX_BATCH} transfers")
        return [_request_of(item, ("transfers", i)) for i, item in enumerate(batch.transfers)], batch.linked, True
    return [_request_of(body)], True, False


async def _hold_adjustment(request: Request, body: Any) -> JSONResponse:

    entries, _linked, is_batch = _parse_entries(body)
    # Ids fixed now, so what is approved is exactly what will be written.
    items = body["transfers"] if is_batch else [body]
    fixed = [{**item, "id": entry.id or new_id("tr")} for item, entry in zip(items, entries, strict=True)]
    held_body = {**body, "transfers": fixed} if is_batch else fixed[0]
    principal, actor = principal_of(request), actor_of(request)
    ttl = timedelta(hours=request.app.state.settings.approval_ttl_hours)
    summary = (f"ledger adjustment: {len(fixed)} transfers" if is_batch else
               f"ledger adjustment {fixed[0]['id']}")
    checked, _linked, _is_batch = _parse_entries(held_body)

    def hold(session: Session) -> dict[str, Any]:
        _check_adjustment(session, checked, is_batch)
        return approvals.hold(session, principal, action="ledger.adjustment", payload={"body": held_body},
                              summary=summary, permission="ledger:write", merchant_id=None, actor=actor, ttl=ttl)

    approval = await run_in_threadpool(transact, _engine(request), hold)
    return JSONResponse(ApprovalOut(**approval).model_dump(mode="json"), status_code=202)


def _check_adjustment(session: Session, entries: list[service.EntryRequest], is_batch: bool) -> None:
    """A held adjustment is checked as it would be written now (accounts, currencies, limits against
    today's balances), then undone: an approver is never asked to approve what cannot run. It may still
    fail at approval, if balances have moved in between."""
    savepoint = session.begin_nested()
    try:
        outcomes = service.create_transfers(session, entries, linked=True)
    finally:
        savepoint.rollback()
    _refuse_failed(outcomes, is_batch)


def _refuse_failed(outcomes: list[service.Outcome], is_batch: bool) -> None:
    """An adjustment is all or nothing: the first failure, as a single transfer's error or the batch's."""
    failed = [o for o in outcomes if o.status == "failed" and o.code != errors.LINKED_EVENT_FAILED]
    if not failed:
        return
    if not is_batch:
        service.raise_failed(failed[0])
    raise errors.LinkedBatchFailed(
        f"transfer {failed[0].index} failed with {failed[0].code}; nothing was written",
        results=[{"index": o.index, "id": o.id, "status": o.status, "code": o.code} for o in outcomes])


def _apply_adjustment(session: Session, payload: dict[str, Any], checker: Any) -> dict[str, Any]:
    """The approved adjustment, written in the approver's transaction; all of it or nothing (a batch is
    written linked, whatever its ``linked`` says: the approver approved the whole of it)."""
    entries, _linked, is_batch = _parse_entries(payload["body"])
    outcomes = service.create_transfers(session, entries, linked=True)
    _refuse_failed(outcomes, is_batch)
    _count(outcomes)
    return {"transfer_ids": [o.id for o in outcomes]}


approvals.register("ledger.adjustment", _apply_adjustment)


def _count(outcomes: list[service.Outcome]) -> None:
    for outcome in outcomes:
        ledger_transfers.labels(outcome.status).inc()


async def _run(engine: Any, work: Any) -> Any:
    return await run_in_threadpool(transact, engine, work, retry_integrity=True)


@router.get("/transfers/{transfer_id}", response_model=TransferOut, responses=_ERRORS, dependencies=_READ)
def get_transfer(transfer_id: str, request: Request) -> Any:
    return TransferOut(**transact(_engine(request), lambda s: service.get_transfer(s, transfer_id)))


def _resolve(request: Request, transfer_id: str, resolution: str, amount: int | None, entry_id: str | None) -> Any:
    actor = actor_of(request)

    def work(session: Session) -> dict[str, Any]:
        _entry_id, created = service.resolve_pending(session, transfer_id, resolution, amount=amount, id=entry_id)
        if created:
            audit.record(session, actor, f"ledger.transfer.{resolution}", "ledger_transfer", transfer_id,
                         changes={"amount": amount} if amount is not None else None)
        return service.get_transfer(session, transfer_id)

    return TransferOut(**transact(_engine(request), work, retry_integrity=True))


# The body may be left out, not be null (refused 400 like any body that is not an object):
# ``PostPending | None`` would make the OpenAPI document say ``anyOf [PostPending, null]``.
@router.post("/transfers/{transfer_id}/post", response_model=TransferOut, responses=_ERRORS, dependencies=_WRITE)
def post_pending(transfer_id: str, request: Request, body: Annotated[PostPending, Body()] = None) -> Any:
    """Post a pending transfer, fully or partly (``amount``); returns the pending transfer, now posted."""
    body = body or PostPending()
    entry_id = body.id or derived_id(request, "tr", "post", transfer_id)
    return _resolve(request, transfer_id, "post", body.amount, entry_id)


@router.post("/transfers/{transfer_id}/void", response_model=TransferOut, responses=_ERRORS, dependencies=_WRITE)
def void_pending(transfer_id: str, request: Request, body: Annotated[VoidPending, Body()] = None) -> Any:
    """Void a pending transfer, releasing what it reserved; returns it, now voided."""
    body = body or VoidPending()
    return _resolve(request, transfer_id, "void", None, body.id or derived_id(request, "tr", "void", transfer_id))


@router.get("/verify", response_model=VerifyOut, dependencies=_READ)
def verify_ledger(request: Request) -> Any:
    """Recompute the hash chain, zero-sum per currency, every limit, and every balance."""
    return VerifyOut(**transact(_engine(request), lambda s: verify(s).as_dict()))
