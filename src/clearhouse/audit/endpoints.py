"""Audit HTTP endpoints: read and verify the trail (nothing here writes to it)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import Query, Request
from sqlalchemy import Row

from clearhouse.audit import service
from clearhouse.audit.schemas import AuditEventOut, AuditVerifyOut
from clearhouse.identity.permissions import principal_of, requires
from clearhouse.kit.api import Page, PrefixRouter, QueryTime, query_time
from clearhouse.kit.db import transact

router = PrefixRouter(prefix="/v1/audit", tags=["audit"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"description": "A filter or cursor is invalid (`validation_error`)"},
}


def _event_out(row: Row) -> AuditEventOut:
    return AuditEventOut(
        id=row.id, seq=row.seq, occurred_at=_stored_time(row.occurred_at), actor_type=row.actor_type,
        actor_id=row.actor_id, actor_role=row.actor_role, merchant_id=row.merchant_id, action=row.action,
        object_type=row.object_type, object_id=row.object_id, source_ip=row.source_ip, request_id=row.request_id,
        changes=_changes(row.changes_json), prev_hash=row.prev_hash, hash=row.hash,
    )


def _changes(stored: Any) -> dict[str, Any] | str:
    """The stored change as an object; if it is not a JSON object (only a write behind the
    application's back stores that), the stored text itself, as a string (bytes as their repr),
    so the event is still listed; ``verify`` reports the row."""
    if isinstance(stored, str):
        try:
            changes = orjson.loads(stored)
        except orjson.JSONDecodeError:
            return stored
        return changes if isinstance(changes, dict) else stored
    return repr(stored)


def _stored_time(stored: Any) -> datetime | str:
    """``occurred_at``; a stored value that is not a time (SQLite keeps any text) as its text."""
    return stored if isinstance(stored, datetime) else str(stored)


@router.get("/events", response_model=Page[AuditEventOut], responses=_ERRORS,
            dependencies=[requires("audit:read")])
def list_events(
    request: Request,
    actor_id: str | None = None,
    object_id: str | None = None,
    object_type: str | None = None,
    action: str | None = None,
    merchant_id: str | None = None,
    since: QueryTime = None,
    until: QueryTime = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    starting_after: Annotated[str | None, Query(description="The id of the last event of the previous page")] = None,
) -> Page[AuditEventOut]:
    """Recorded state changes in the order they happened, filtered (``since``: at or after that
    time, ``until``: before it); a merchant caller sees only its own merchant's events."""
    since_utc, until_utc = query_time(since, "since"), query_time(until, "until")
    tenant = principal_of(request).merchant_id
    rows, more = transact(
        request.app.state.engine,
        lambda s: service.list_events(
            s, limit=limit, starting_after=starting_after, tenant=tenant, actor_id=actor_id, object_id=object_id,
            object_type=object_type, action=action, merchant_id=merchant_id, since=since_utc, until=until_utc,
        ),
    )
    return Page(data=[_event_out(r) for r in rows], has_more=more, next_cursor=rows[-1].id if more else None)


@router.get("/verify", response_model=AuditVerifyOut, dependencies=[requires("audit:read")])
def verify_trail(request: Request) -> AuditVerifyOut:
    """Recompute the whole hash chain and report the first break, if any."""
    report = transact(request.app.state.engine, service.verify)
    return AuditVerifyOut(ok=report.ok, events_checked=report.events_checked, first_failure=report.first_failure,
                          chain_head=report.chain_head)
