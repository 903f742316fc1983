"""Reconciliation HTTP endpoints: statement upload, runs, cases and their workflow, rules, clearing."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.orm import Session

from clearhouse.identity.permissions import actor_of, principal_of, requires
from clearhouse.kit import clock
from clearhouse.kit.api import Page, PrefixRouter, parse_json, validate
from clearhouse.kit.db import transact
from clearhouse.kit.errors import ClearhouseError, MalformedRequest
from clearhouse.reconciliation import cases, clearing, service
from clearhouse.reconciliation.schemas import (
    CaseComment,
    CaseOut,
    CaseResolve,
    CaseUpdate,
    ChannelName,
    ClearingReportOut,
    DryRunOut,
    ReconciliationOut,
    RulesIn,
    RulesOut,
)

router = PrefixRouter(prefix="/v1", tags=["reconciliation"])
_READ = [requires("recon:read")]
_WRITE = [requires("recon:write")]
_STATEMENT_ERRORS: dict[int | str, dict[str, Any]] = {  # what a statement file can be refused for
    413: {"description": "`statement_too_large`"},
    422: {"description": "`statement_invalid` (names the line), `statement_format_unknown`, `validation_error`"},
}
_IMPORT_ERRORS: dict[int | str, dict[str, Any]] = {
    **_STATEMENT_ERRORS,
    409: {"description": "`statement_already_imported`; a bank statement's payout entry the ledger refuses: its "
                         "own code (`account_closed`, ...), nothing imported"},
    422: {"description": "`statement_invalid` (names the line), `statement_format_unknown`, `validation_error`; "
                         "a payout entry the ledger refuses (`currency_mismatch`, ...)"},
}
_RUN_ERRORS: dict[int | str, dict[str, Any]] = {404: {"description": "`reconciliation_not_found`"}}
_CASE_ERRORS: dict[int | str, dict[str, Any]] = {404: {"description": "`recon_case_not_found`"}}
_CASE_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    **_CASE_ERRORS,
    409: {"description": "`recon_case_state_conflict` (the case is closed, or its resolution awaits approval)"},
    422: {"description": "`validation_error`"},
}
_RULES_ERRORS: dict[int | str, dict[str, Any]] = {422: {"description": "`validation_error` (names the rule)"}}
Limit = Annotated[int, Query(ge=1, le=500)]
Cursor = Annotated[str | None, Query(max_length=64)]
# Names checked by the parsers, not here: an unknown one is 422 statement_format_unknown, as in the CLI.
Format = Annotated[str, Form(max_length=32, description="csv, mt940 or camt053")]
ClassName = Literal["missing_in_ledger", "missing_in_statement", "amount_mismatch", "fee_mismatch",
                    "status_mismatch", "duplicate", "timing"]
StateName = Literal["open", "investigating", "resolved", "written_off"]
MappingName = Annotated[str | None, Form(max_length=64, description="A built-in CSV mapping's name")]


class StatementTooLarge(ClearhouseError):
    code = "statement_too_large"
    status = 413
    title = "Statement file is too large"


def _engine(request: Request) -> Any:
    return request.app.state.engine


def _page(rows: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    return {"data": rows, "has_more": more, "next_cursor": rows[-1]["id"] if more else None}


@contextlib.contextmanager
def _spooled(request: Request, upload: UploadFile) -> Iterator[Path]:
    """The upload in a temporary file (the parsers stream from disk), removed afterwards."""
    limit = request.app.state.settings.recon_upload_max_bytes
    handle, name = tempfile.mkstemp(prefix="statement-", suffix=Path(upload.filename or "").suffix[:16])
    path = Path(name)
    try:
        with os.fdopen(handle, "wb") as out:
            size = 0
            while chunk := upload.file.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise StatementTooLarge(f"the largest statement accepted is {limit} bytes")
                out.write(chunk)
        yield path
    finally:
        path.unlink(missing_ok=True)


@router.post("/reconciliations", status_code=201, response_model=ReconciliationOut, responses=_IMPORT_ERRORS,
             dependencies=_WRITE)
def create_reconciliation(
    request: Request,
    file: Annotated[UploadFile, File(description="The statement file")],
    format: Format,
    channel: Annotated[ChannelName, Form()],
    statement_date: Annotated[date, Form()],
    mapping: MappingName = None,
) -> Any:
    """Import a statement and reconcile it against the ledger; every discrepancy becomes a case.

    The whole file is checked before anything is written: a malformed file is 422
    ``statement_invalid`` naming its first bad line, and the same file twice, or a bank
    statement imported already (in other bytes, or under the same bank's number), is 409
    ``statement_already_imported``. A bank statement's lines that paired with ours post the channel's payout
    (Dr ``bank:<account>``, Cr ``channel_clearing:C``) in the same transaction."""
    with _spooled(request, file) as path:
        view = service.reconcile_file(_engine(request), channel=channel, path=path, fmt=format,
                                      statement_date=statement_date, mapping=mapping, actor=actor_of(request),
                                      file_name=file.filename or path.name,
                                      approval_threshold=request.app.state.settings.recon_approval_threshold)
    return view


@router.get("/reconciliations", response_model=Page[ReconciliationOut], dependencies=_READ)
def list_reconciliations(request: Request, limit: Limit = 50, starting_after: Cursor = None,
                         channel: Annotated[str | None, Query(max_length=40)] = None) -> Any:
    """Newest first."""
    def work(session: Session) -> Any:
        ids, more = service.list_runs(session, channel=channel, limit=limit, starting_after=starting_after)
        return {"data": [service.run_view(session, i) for i in ids], "has_more": more,
                "next_cursor": ids[-1] if more else None}

    return transact(_engine(request), work)


@router.get("/reconciliations/{reconciliation_id}", response_model=ReconciliationOut, responses=_RUN_ERRORS,
            dependencies=_READ)
def get_reconciliation(reconciliation_id: str, request: Request) -> Any:
    """Counts and amounts per class, the clearing figures, and how many cases are in each state."""
    return transact(_engine(request), lambda s: service.run_view(s, reconciliation_id))


@router.get("/reconciliations/{reconciliation_id}/cases", response_model=Page[CaseOut], responses=_RUN_ERRORS,
            dependencies=_READ, response_model_by_alias=True)
def list_run_cases(reconciliation_id: str, request: Request, limit: Limit = 100, starting_after: Cursor = None,
                   class_: Annotated[ClassName | None, Query(alias="class")] = None,
                   state: StateName | None = None) -> Any:
    def work(session: Session) -> Any:
        service.run_view(session, reconciliation_id)  # 404 for an unknown run
        return cases.list_cases(session, reconciliation_id=reconciliation_id, class_=class_, state=state,
                                channel=None, limit=limit, starting_after=starting_after)

    rows, more = transact(_engine(request), work)
    return _page(rows, more)


@router.get("/recon_cases", response_model=Page[CaseOut], dependencies=_READ, response_model_by_alias=True)
def list_all_cases(request: Request, limit: Limit = 100, starting_after: Cursor = None,
                   class_: Annotated[ClassName | None, Query(alias="class")] = None,
                   state: StateName | None = None,
                   channel: Annotated[str | None, Query(max_length=40)] = None) -> Any:
    """Cases across runs, oldest first: the work queue (``state=open``)."""
    rows, more = transact(_engine(request), lambda s: cases.list_cases(
        s, reconciliation_id=None, class_=class_, state=state, channel=channel, limit=limit,
        starting_after=starting_after))
    return _page(rows, more)


@router.get("/recon_cases/{case_id}", response_model=CaseOut, responses=_CASE_ERRORS, dependencies=_READ,
            response_model_by_alias=True)
def get_case(case_id: str, request: Request) -> Any:
    """The case with both sides, its delta, and its history."""
    return transact(_engine(request), lambda s: cases.case_view(s, case_id))


@router.patch("/recon_cases/{case_id}", response_model=CaseOut, responses=_CASE_WRITE_ERRORS, dependencies=_WRITE,
              response_model_by_alias=True)
def update_case(case_id: str, body: CaseUpdate, request: Request) -> Any:
    """Take a case (``owner``) or mark it ``investigating``."""
    actor = actor_of(request)
    return transact(_engine(request), lambda s: cases.update_case(s, actor, case_id, owner=body.owner,
                                                                    state=body.state))


@router.post("/recon_cases/{case_id}/comments", response_model=CaseOut, status_code=201, responses=_CASE_WRITE_ERRORS,
             dependencies=_WRITE, response_model_by_alias=True)
def comment_case(case_id: str, body: CaseComment, request: Request) -> Any:
    actor = actor_of(request)
    return transact(_engine(request), lambda s: cases.comment(s, actor, case_id, body.body))


@router.post("/recon_cases/{case_id}/resolve", response_model=CaseOut, responses={
    **_CASE_WRITE_ERRORS, 202: {"description": "Held for a second person: the answer carries the `approval`"}},
    dependencies=_WRITE, response_model_by_alias=True)
def resolve_case(case_id: str, body: CaseResolve, request: Request) -> Any:
    """Resolve a case: ``accept`` (no entry), ``adjust`` or ``write_off`` (one adjusting ledger entry).

    An entry above ``recon_approval_threshold`` is held for a second person (202)."""
    settings = request.app.state.settings
    principal, actor = principal_of(request), actor_of(request)
    view, held = transact(_engine(request), lambda s: cases.resolve(
        s, principal, actor, case_id, action=body.action, reason=body.reason, account=body.account,
        threshold=settings.recon_approval_threshold, ttl=timedelta(hours=settings.approval_ttl_hours)),
        retry_integrity=True)
    answer = CaseOut.model_validate(view).model_dump(mode="json", by_alias=True)
    return JSONResponse(answer, status_code=202 if held else 200)


@router.get("/recon_rules/{channel}", response_model=RulesOut, dependencies=_READ)
def get_rules(channel: ChannelName, request: Request) -> Any:
    """The channel's matching rules (defaults until changed) and its CSV mapping override."""
    return transact(_engine(request), lambda s: service.rules_view(s, channel))


def _rules_and_mapping(body: RulesIn, channel: str) -> tuple[Any, dict[str, Any] | None]:
    from clearhouse.reconciliation.formats.csvmap import CsvMapping
    from clearhouse.reconciliation.rules import MatchRules

    defaults = service.default_rules(channel).model_dump(mode="json")
    rules = validate(MatchRules, {**defaults, **body.rules}, ("body", "rules"))
    mapping = None
    if body.mapping is not None:
        mapping = validate(CsvMapping, body.mapping, ("body", "mapping")).model_dump(mode="json")
    return rules, mapping


@router.put("/recon_rules/{channel}", response_model=RulesOut, responses=_RULES_ERRORS, dependencies=_WRITE)
def put_rules(channel: ChannelName, body: RulesIn, request: Request) -> Any:
    """Replace the channel's rules (fields left out take their defaults) and mapping; used by the next import."""
    rules, mapping = _rules_and_mapping(body, channel)
    actor = actor_of(request)

    def work(session: Session) -> Any:
        service.put_rules(session, actor, channel, rules, mapping)
        return service.rules_view(session, channel)

    return transact(_engine(request), work)


@router.post("/recon_rules/{channel}/dry_run", response_model=DryRunOut, responses=_STATEMENT_ERRORS,
             dependencies=_READ)
def dry_run(
    channel: ChannelName,
    request: Request,
    file: Annotated[UploadFile, File()],
    format: Format,
    statement_date: Annotated[date, Form()],
    rules: Annotated[str | None, Form(max_length=20_000, description="RulesIn as JSON; default: the saved rules")]
    = None,
    mapping: MappingName = None,
) -> Any:
    """What the given (or saved) rules would make of this statement. Nothing is saved."""
    if rules is None:
        chosen, custom = transact(_engine(request), lambda s: service.rules_for(s, channel))
    else:
        try:  # read as strictly as a JSON body: a key named twice is refused, not last-one-wins
            raw = parse_json(rules.encode())
        except MalformedRequest as error:
            raise MalformedRequest(error.detail.replace("the body", "the rules field")) from None
        body = validate(RulesIn, raw, ("body", "rules"))
        chosen, custom = _rules_and_mapping(body, channel)
    with _spooled(request, file) as path:
        return service.dry_run(_engine(request), channel=channel, path=path, fmt=format,
                               statement_date=statement_date, rules=chosen,
                               mapping=mapping if mapping is not None else custom)


@router.get("/clearing/daily", response_model=ClearingReportOut, dependencies=_READ, responses={
    200: {"content": {"text/csv": {}, "text/html": {}, "image/svg+xml": {}}}})
def clearing_report(request: Request, date_: Annotated[date | None, Query(alias="date")] = None,
                    channel: Annotated[ChannelName | None, Query()] = None,
                    format: Literal["json", "csv", "html", "svg"] = "json") -> Any:
    """Per channel and currency for one day (default: today, UTC): expected (ledger), reported (channel),
    received (bank), net position and the clearing account's balance; as JSON, CSV, an HTML page with a chart,
    or the chart."""
    day = date_ or clock.now().date()
    report = transact(_engine(request), lambda s: clearing.daily_report(s, day, channel=channel))
    if format == "csv":
        return Response(clearing.as_csv(report), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="clearing-{day}.csv"'})
    if format == "html":
        return HTMLResponse(clearing.as_html(report))
    if format == "svg":
        return Response(clearing.chart_svg(report), media_type="image/svg+xml")
    return report
