"""Maker-checker: a sensitive action is held, with its exact content, until a second
person with the needed permission approves it; then it runs, in the approver's
transaction, exactly as it was held.

Each kind of action registers an executor (``register``); the domain that owns the
action decides what "run it" means. The maker can never approve their own action,
an approval expires after ``approval_ttl_hours``, and a decision is final.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import Row, select, update
from sqlalchemy.orm import Session

from clearhouse.audit import service as audit
from clearhouse.identity.models import ApiKey, Approval, User
from clearhouse.identity.permissions import Forbidden, Principal
from clearhouse.kit import clock
from clearhouse.kit.db import after_rollback, transact
from clearhouse.kit.errors import ClearhouseError, NotFound
from clearhouse.kit.ids import new_id

approvals = Approval.__table__

Executor = Callable[[Session, dict[str, Any], Principal], dict[str, Any]]
_EXECUTORS: dict[str, Executor] = {}
DEFAULT_TTL = timedelta(hours=24)


class SelfApprovalRefused(ClearhouseError):
    """Four eyes: the person who asked for an action cannot approve it."""

    code = "self_approval_refused"
    status = 403
    title = "You cannot approve your own request"


class ApprovalNotPending(ClearhouseError):
    """An approval is decided once; an approved, rejected or expired one stays so."""

    code = "approval_not_pending"
    status = 409
    title = "Approval already decided"


class ApprovalExpired(ClearhouseError):
    """A held action waits ``approval_ttl_hours`` at most; after that the maker must ask again."""

    code = "approval_expired"
    status = 409
    title = "Approval expired"


class ApprovalStale(ApprovalExpired):
    """What was held no longer fits the world (the person's role changed, an account was disabled, the maker
    was disabled or their key revoked): approving it is refused and the approval ends as expired, with the
    reason, so the maker asks again for what they now mean. Raised by ``decide`` or by an executor."""


SEALED = "_sealed"
"""A payload key kept with the held action for its executor but never shown nor audited (a password hash)."""


def register(action: str, executor: Executor) -> None:
    """Say how a held ``action`` runs once approved (called at import by the owning module)."""
    _EXECUTORS[action] = executor


def hold(session: Session, principal: Principal, *, action: str, payload: dict[str, Any], summary: str,
         permission: str, merchant_id: str | None, actor: audit.Actor | None = None,
         ttl: timedelta = DEFAULT_TTL, sealed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hold ``action`` for a second person; returns the approval as the API shows it. ``sealed`` is given to
    the executor with the payload but never shown in the approval nor recorded in the audit trail."""
    if action not in _EXECUTORS:
        raise ValueError(f"no executor registered for {action!r}")
    now = clock.now()
    approval_id = new_id("apr")
    session.execute(approvals.insert().values(
        id=approval_id, action=action, summary=summary[:500],
        payload_json=orjson.dumps({**payload, SEALED: sealed} if sealed else payload).decode(),
        permission=permission, merchant_id=merchant_id, maker_type=principal.kind, maker_id=principal.id,
        status="pending", created_at=now, expires_at=now + ttl,
    ))
    audit.record(session, actor or _actor(principal), "approval.request", "approval", approval_id,
                 changes={"action": action, "summary": summary, "payload": payload}, merchant_id=merchant_id)
    return as_dict(_row(session, approval_id))


def _actor(principal: Principal) -> audit.Actor:
    return audit.Actor(type=principal.kind, id=principal.id, role=principal.role, merchant_id=principal.merchant_id)


def _row(session: Session, approval_id: str, *, lock: bool = False) -> Row:
    query = select(approvals).where(approvals.c.id == approval_id)
    row = session.execute(query.with_for_update() if lock else query).first()
    if row is None:
        raise NotFound(f"no approval {approval_id}")
    return row


def status_of(row: Row) -> str:
    """A pending approval past its expiry reads as expired even before the worker marks it."""
    if row.status == "pending" and row.expires_at <= clock.now():
        return "expired"
    return row.status


def shown_payload(row: Row) -> dict[str, Any]:
    payload = orjson.loads(row.payload_json)
    payload.pop(SEALED, None)
    return payload


def as_dict(row: Row) -> dict[str, Any]:
    return {
        "id": row.id, "action": row.action, "summary": row.summary, "payload": shown_payload(row),
        "permission": row.permission, "merchant_id": row.merchant_id, "maker_type": row.maker_type,
        "maker_id": row.maker_id, "status": status_of(row), "created_at": row.created_at,
        "expires_at": row.expires_at, "checker_id": row.checker_id, "decided_at": row.decided_at,
        "reason": row.reason, "result": orjson.loads(row.result_json) if row.result_json else None,
    }


def get(session: Session, principal: Principal, approval_id: str) -> dict[str, Any]:
    row = _row(session, approval_id)
    if not principal.sees(row.merchant_id):
        raise NotFound(f"no approval {approval_id}")
    return as_dict(row)


def list_approvals(session: Session, principal: Principal, *, status: str | None, limit: int,
                   starting_after: str | None) -> tuple[list[dict[str, Any]], bool]:
    query = select(approvals).order_by(approvals.c.id).limit(limit + 1)
    if principal.merchant_id is not None:
        query = query.where(approvals.c.merchant_id == principal.merchant_id)
    if starting_after:
        query = query.where(approvals.c.id > starting_after)
    now = clock.now()
    if status == "pending":
        query = query.where(approvals.c.status == "pending", approvals.c.expires_at > now)
    elif status == "expired":
        query = query.where((approvals.c.status == "expired")
                            | ((approvals.c.status == "pending") & (approvals.c.expires_at <= now)))
    elif status is not None:
        query = query.where(approvals.c.status == status)
    rows = session.execute(query).all()
    return [as_dict(r) for r in rows[:limit]], len(rows) > limit


def decide(session: Session, checker: Principal, approval_id: str, *, approve: bool, reason: str | None,
           actor: audit.Actor | None = None) -> dict[str, Any]:
    """Approve (and run) or reject a held action."""
    # The row lock makes two checkers deciding at once take turns; the second sees a decision.
    row = _row(session, approval_id, lock=True)
    if not checker.sees(row.merchant_id):
        raise NotFound(f"no approval {approval_id}")
    if checker.kind != "user":
        raise Forbidden("approvals are decided by people, not API keys")
    if checker.id in _people_behind(session, row.maker_id):
        raise SelfApprovalRefused("a different person must approve this (a request made with an API key "
                                  "is its makers', and the person who asked for that key may not approve it)")
    if not checker.can(row.permission):
        raise Forbidden(f"approving this needs the {row.permission} permission")
    status = status_of(row)
    if status == "expired":
        raise ApprovalExpired(f"approval {approval_id} expired at {clock.rfc3339(row.expires_at)}")
    if status != "pending":
        raise ApprovalNotPending(f"approval {approval_id} is already {status}")
    now = clock.now()
    actor = actor or _actor(checker)
    result = None
    if approve:
        try:
            _check_maker_active(session, row)
            # The held action runs in this request: what it records names the approver, from this request's
            # address and request id (the executor is given the checker's principal, not the request).
            with audit.on_behalf_of(actor):
                result = _EXECUTORS[row.action](session, orjson.loads(row.payload_json), checker)
        except ApprovalStale as stale:
            # This transaction is rolled back (the executor may have written); the approval ends after that,
            # in a transaction of its own, so the 409 leaves it expired with the reason.
            engine, reason = session.get_bind(), stale.detail

            def end_it() -> None:
                transact(engine, lambda s: end(s, approval_id, reason=reason, actor=actor))

            after_rollback(session, end_it)
            raise
    session.execute(update(approvals).where(approvals.c.id == approval_id).values(
        status="approved" if approve else "rejected", checker_id=checker.id, decided_at=now, reason=reason,
        result_json=orjson.dumps(result).decode() if result is not None else None,
    ))
    audit.record(session, actor, "approval.approve" if approve else "approval.reject",
                 "approval", approval_id, changes={"action": row.action, "reason": reason},
                 merchant_id=row.merchant_id)
    return as_dict(_row(session, approval_id))


def _check_maker_active(session: Session, row: Row) -> None:
    """A held action speaks for its maker: once the maker is disabled (or the maker key revoked) it can't run."""
    if row.maker_type == "user":
        disabled = session.scalar(select(User.disabled).where(User.id == row.maker_id))
        if disabled is None or disabled:
            raise ApprovalStale(f"its maker {row.maker_id} was disabled since asking")
    elif row.maker_type == "api_key":
        key = session.execute(select(ApiKey.revoked_at, ApiKey.expires_at).where(ApiKey.id == row.maker_id)).first()
        now = clock.now()
        if key is None or key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
            raise ApprovalStale(f"its maker key {row.maker_id} was revoked or expired since asking")


def end(session: Session, approval_id: str, *, reason: str, actor: audit.Actor) -> bool:
    """``expire`` and record it in the audit trail (``approval.expire``); True if it was pending."""
    ended = expire(session, approval_id, reason=reason)
    if ended is None:
        return False
    audit.record(session, actor, "approval.expire", "approval", approval_id, changes=ended,
                 merchant_id=_row(session, approval_id).merchant_id)
    return True


def pending_of(session: Session, *, maker_id: str | None = None, action: str | None = None,
               payload_match: dict[str, Any] | None = None) -> list[str]:
    """Ids of pending approvals (not past their expiry) made by ``maker_id`` and/or of ``action`` whose payload
    has the ``payload_match`` items, in id order (the order to lock them in)."""
    query = select(approvals.c.id, approvals.c.payload_json).where(
        approvals.c.status == "pending", approvals.c.expires_at > clock.now()).order_by(approvals.c.id)
    if maker_id is not None:
        query = query.where(approvals.c.maker_id == maker_id)
    if action is not None:
        query = query.where(approvals.c.action == action)
    ids = []
    for row in session.execute(query):
        payload = orjson.loads(row.payload_json)
        if all(payload.get(k) == v for k, v in (payload_match or {}).items()):
            ids.append(row.id)
    return ids


MAX_KEY_CHAIN = 16
"""Keys made by keys made by keys: followed this far back (no real chain is anywhere near it)."""


def _people_behind(session: Session, maker_id: str) -> set[str]:
    """The maker and, when it is an API key, whoever asked for that key, and so on back: none of
    them may approve, or one person holding a key could approve their own request through it."""
    behind = {maker_id}
    current = maker_id
    for _ in range(MAX_KEY_CHAIN):
        created_by = session.scalar(select(ApiKey.created_by).where(ApiKey.id == current))
        if created_by is None or created_by in behind:
            break
        behind.add(created_by)
        current = created_by
    return behind


def expire_overdue(session: Session) -> int:
    """Mark pending approvals past their expiry as expired (run by the worker); returns how many."""
    result = session.execute(update(approvals).where(
        approvals.c.status == "pending", approvals.c.expires_at <= clock.now()).values(status="expired"))
    return result.rowcount or 0


def lock(session: Session, approval_id: str) -> None:
    """Lock the approval's row, as ``decide`` does first: a domain that may end an approval takes this lock
    before its own rows' (``decide`` runs the held action, which locks them, while holding it)."""
    _row(session, approval_id, lock=True)


def expire(session: Session, approval_id: str, *, reason: str) -> dict[str, Any] | None:
    """End a pending approval that can no longer run (the domain did the thing another way), as expired from
    now, with ``reason``. Returns the ``approval.expire`` change for the caller to record in the audit trail
    (last, with its own events: the chain's lock after every other), or None if it was not pending. One that
    has already passed its expiry is left to the worker."""
    now = clock.now()
    result = session.execute(update(approvals).where(
        approvals.c.id == approval_id, approvals.c.status == "pending", approvals.c.expires_at > now,
    ).values(status="expired", expires_at=now, reason=reason))
    if not result.rowcount:
        return None
    return {"action": _row(session, approval_id).action, "reason": reason}
