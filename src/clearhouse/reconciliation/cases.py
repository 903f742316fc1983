"""Cases: every discrepancy, worked by people (or a rule) from open to resolved or written off.

A case moves ``open`` -> ``investigating`` (someone took it) -> ``resolved`` or ``written_off``;
the last two are final. Resolving may post one adjusting ledger entry (docs/accounting.md,
recipe 9) between the channel's clearing account and a counter-account, for the case's
``delta`` (what the channel holds for us by its statement minus by our ledger). The
statement's side is ``channel_clearing:C`` for a channel's statement; a bank statement's line
(MT940, camt.053, imported under C) brought its money to ``bank:<account>`` on import, its delta
to ``suspense`` (``_statement_account``), and its resolution moves it on from there:

- ``accept``: the difference is explained and needs no entry (a timing case, a known quirk);
- ``adjust``: Dr ``channel_clearing:C`` / Cr ``suspense`` for a surplus (the reverse for a
  shortfall), or against ``channel_cost:C`` when the channel's fee is the difference;
- ``write_off``: the difference is lost (or found) for good, against ``losses:writeoff``.

An entry larger than ``recon_approval_threshold`` waits for a second person
(identity.approvals, action ``recon.resolve``); the entry id is the case's, so a resolution
is written once whatever retries. Timing cases resolve themselves when the other side
arrives in a later statement, and a channel's ``auto_resolve`` rules settle known patterns.
Every resolution, whoever made it, is a ``recon.case.resolve`` audit event (the automatic ones
by ``system``/``reconciliation``, the approved ones by the approver), and a case closed while a
resolution of it waits for approval ends that approval (``expired``, with the reason).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Row, exists, or_, select, update
from sqlalchemy.orm import Session

from clearhouse.audit import service as audit
from clearhouse.identity import approvals
from clearhouse.identity.models import Approval
from clearhouse.identity.permissions import Principal
from clearhouse.kit import clock
from clearhouse.kit.db import bulk_insert
from clearhouse.kit.ids import new_ids
from clearhouse.ledger import service as ledger
from clearhouse.ledger.chart import account_for
from clearhouse.payments import postings
from clearhouse.reconciliation.errors import CaseNotFound, CaseStateConflict
from clearhouse.reconciliation.models import (
    OPEN_STATES,
    ReconCase,
    ReconCaseEvent,
    Reconciliation,
    ReconPaidLine,
    ReconStatement,
)
from clearhouse.reconciliation.service import (
    ACCOUNT_EVENT,
    BANK_FORMATS,
    SUSPENSE_KEY,
    SYSTEM,
    UNEXPLAINED_ACCOUNT,
    new_event,
    statement_account_name,
)

cases = ReconCase.__table__
case_events = ReconCaseEvent.__table__
approval_table = Approval.__table__
runs = Reconciliation.__table__
statements = ReconStatement.__table__
paid_lines = ReconPaidLine.__table__

ACTIONS = ("accept", "adjust", "write_off")
COUNTER_ACCOUNTS = {
    "suspense": lambda channel: UNEXPLAINED_ACCOUNT,
    "channel_cost": postings.channel_cost,
    "losses:writeoff": lambda channel: ("losses:writeoff", "expense"),
}
APPROVAL_ACTION = "recon.resolve"
REVERSED_EVENT = "reversed"
"""A case's event saying its entry was reversed (``_reverse``): the entry is then no longer in the ledger."""
SYSTEM_ACTOR = audit.Actor(type="system", id="reconciliation")  # who the audit trail says resolved automatically


def _select_cases() -> Any:
    """Cases with their class also as ``class_`` (``class`` is a Python keyword), and their statement's format as
    ``statement_format`` (``difference_of``)."""
    statement_format = (select(statements.c.format).join(runs, runs.c.statement_id == statements.c.id)
                        .where(runs.c.id == cases.c.reconciliation_id).scalar_subquery())
    return select(*cases.c, cases.c["class"].label("class_"), statement_format.label("statement_format"))


def _who(actor: audit.Actor) -> str:
    return f"{actor.type}:{actor.id}"


def _case(session: Session, case_id: str, *, lock: bool = False) -> Row:
    query = _select_cases().where(cases.c.id == case_id)
    if lock:
        query = query.with_for_update()
    row = session.execute(query).first()
    if row is None:
        raise CaseNotFound(f"no reconciliation case {case_id}")
    return row


def difference_of(row: Any) -> int:
    """The number a person compares with a tolerance: the fee or amount gap, else the case's delta.

    The amount gap is the one the matching saw: a bank's line that states no fee is the money received, compared
    with our net (``matching._ours_compared``), so its gap is their net - our net."""
    if row.class_ == "fee_mismatch":
        return (row.theirs_fee or 0) - (row.ours_fee or 0)
    if row.class_ == "amount_mismatch":
        net_line = row.theirs_fee is None and getattr(row, "statement_format", None) in BANK_FORMATS
        ours = (row.ours_amount or 0) - ((row.ours_fee or 0) if net_line else 0)
        return (row.theirs_amount or 0) - ours
    return row.delta


def case_view(session: Session, case_id: str, *, with_events: bool = True) -> dict[str, Any]:
    view = _view_of(_case(session, case_id))
    if with_events:
        events = session.execute(select(case_events).where(case_events.c.case_id == case_id)
                                 .order_by(case_events.c.id)).all()
        view["events"] = [{"id": e.id, "type": e.type, "actor": e.actor, "body": e.body,
                           "created_at": e.created_at} for e in events]
    return view


def _view_of(row: Row) -> dict[str, Any]:
    return {
        "id": row.id, "object": "recon_case", "reconciliation_id": row.reconciliation_id, "channel": row.channel,
        "class": row.class_, "state": row.state, "owner": row.owner, "our_id": row.our_id, "our_ref": row.our_ref,
        "channel_ref": row.channel_ref, "line_no": row.line_no, "currency": row.currency,
        "ours": {"amount": row.ours_amount, "fee": row.ours_fee, "status": row.ours_status,
                 "booked_on": row.ours_booked_on},
        "theirs": {"amount": row.theirs_amount, "fee": row.theirs_fee, "status": row.theirs_status,
                   "booked_on": row.theirs_booked_on},
        "difference": difference_of(row), "delta": row.delta, "detail": row.detail, "resolution": row.resolution,
        "resolution_reason": row.resolution_reason, "ledger_entry_id": row.ledger_entry_id,
        "approval_id": row.approval_id, "resolved_by": row.resolved_by, "resolved_at": row.resolved_at,
        "created_at": row.created_at, "updated_at": row.updated_at,
    }


def list_cases(session: Session, *, reconciliation_id: str | None, class_: str | None, state: str | None,
               channel: str | None, limit: int, starting_after: str | None) -> tuple[list[dict[str, Any]], bool]:
    """One page of cases, oldest id first, in one query."""
    query = _select_cases().order_by(cases.c.id).limit(limit + 1)
    if reconciliation_id:
        query = query.where(cases.c.reconciliation_id == reconciliation_id)
    if class_:
        query = query.where(cases.c["class"] == class_)
    if state:
        query = query.where(cases.c.state == state)
    if channel:
        query = query.where(cases.c.channel == channel)
    if starting_after:
        query = query.where(cases.c.id > starting_after)
    rows = session.execute(query).all()
    return [_view_of(row) for row in rows[:limit]], len(rows) > limit


def update_case(session: Session, actor: audit.Actor, case_id: str, *, owner: str | None,
                state: str | None) -> dict[str, Any]:
    """Take a case (owner) or mark it under investigation; a final case no longer changes."""
    row = _case(session, case_id, lock=True)
    if row.state not in OPEN_STATES:
        raise CaseStateConflict(f"case {case_id} is {row.state}")
    values: dict[str, Any] = {}
    if owner is not None and owner != row.owner:
        values["owner"] = owner
    if state is not None and state != row.state:
        values["state"] = state
    if values:
        now = clock.now()
        session.execute(update(cases).where(cases.c.id == case_id).values(**values, updated_at=now))
        new_event(session, case_id, "updated", _who(actor), detail=values, now=now)
        audit.record(session, actor, "recon.case.update", "recon_case", case_id, changes=values)
    return case_view(session, case_id)


def comment(session: Session, actor: audit.Actor, case_id: str, body: str) -> dict[str, Any]:
    _case(session, case_id)
    new_event(session, case_id, "comment", _who(actor), body=body)
    audit.record(session, actor, "recon.case.comment", "recon_case", case_id)
    return case_view(session, case_id)


# -- resolution ----------------------------------------------------------------------------------------------------


def _sides(session: Session, row: Any, action: str, account: str) -> tuple[tuple[str, str], tuple[str, str]] | None:
    """The (name, type) of the two accounts a resolution's entry moves the case's delta between: the statement's
    side (``_statement_account``) and the counter-account; None when it posts nothing (an ``accept``, a delta of
    0, or a bank line's case settled to ``suspense``, where its import put the money already)."""
    if action == "accept" or row.delta == 0:
        return None
    counter = COUNTER_ACCOUNTS["losses:writeoff" if action == "write_off" else account](row.channel)
    side = _statement_account(session, row)
    return None if side == counter else (side, counter)


def _entry(session: Session, row: Any, action: str, account: str, reason: str) -> ledger.EntryRequest | None:
    """The adjusting entry of a resolution, or None when nothing is to be posted; it carries the resolution's
    reason, so the ledger says why the money moved without a look at the case."""
    sides = _sides(session, row, action, account)
    if sides is None:
        return None
    statement_side = account_for(session, *sides[0], row.currency)
    other = account_for(session, *sides[1], row.currency)
    debit, credit = (statement_side, other) if row.delta > 0 else (other, statement_side)
    return ledger.EntryRequest.transfer(
        debit, credit, abs(row.delta), row.currency, id=f"tr_{row.id}", code="recon_adjustment", reference=row.id,
        metadata={"case_id": row.id, "class": row.class_, "action": action, "channel": row.channel,
                  "reason": reason[:500]})


def _approval_pending(session: Session, approval_id: str) -> bool:
    """A rejected or expired approval frees its case for another resolution."""
    row = session.execute(select(approval_table).where(approval_table.c.id == approval_id)).first()
    return row is not None and approvals.status_of(row) == "pending"


def _statement_account(session: Session, row: Any) -> tuple[str, str]:
    """Where the case's money is, as (name, type): the channel's clearing account for a channel's statement and
    for a bank statement's case without a line of its own (one of ours the bank has not received: still the
    channel's, the adjustment moves it from there). A bank statement's line is on its bank account, and its
    import posted what paired with none of ours to ``suspense`` (recipe 9): resolving moves it from there. A
    bank statement imported before that (its run has no ``SUSPENSE_KEY``) posted nothing of it: resolving
    moves the delta from the bank account, ``bank:<account>``. In a file with statements of several accounts,
    a case on another account than the file's first says which in its ``account`` event
    (``service.save_cases``)."""
    found = session.execute(select(statements.c.format, statements.c.account, runs.c.clearing_json)
                            .join(runs, runs.c.statement_id == statements.c.id)
                            .where(runs.c.id == row.reconciliation_id)).one()
    if found.format not in BANK_FORMATS or row.line_no is None:
        return postings.clearing(row.channel)
    if SUSPENSE_KEY in orjson.loads(found.clearing_json).get(row.currency, {}):
        return UNEXPLAINED_ACCOUNT
    own = session.execute(select(case_events.c.detail_json).where(
        case_events.c.case_id == row.id, case_events.c.type == ACCOUNT_EVENT)).first()
    account = orjson.loads(own.detail_json)["account"] if own is not None else found.account
    return statement_account_name(found.format, account, row.channel), "asset"


def _check_resolvable(session: Session, row: Any, action: str, account: str, *, approving: bool = False) -> None:
    """``approving``: the resolution waiting for approval is the one being run, not another."""
    if row.state not in OPEN_STATES:
        raise CaseStateConflict(f"case {row.id} is {row.state}")
    if not approving and row.approval_id is not None and _approval_pending(session, row.approval_id):
        raise CaseStateConflict(f"case {row.id} has a resolution waiting for approval ({row.approval_id})")
    if action not in ACTIONS:
        raise CaseStateConflict(f"unknown action {action}")
    if account not in COUNTER_ACCOUNTS:
        raise CaseStateConflict(f"unknown counter account {account}")
    if action == "accept" or not row.delta or row.our_id is None:
        return
    if _statement_account(session, row) != postings.clearing(row.channel):
        return
    paid_by = session.scalar(select(paid_lines.c.reconciliation_id).where(paid_lines.c.our_id == row.our_id))
    if paid_by is not None:
        raise CaseStateConflict(f"case {row.id}: a bank statement paid its line {row.our_id} (reconciliation "
                                f"{paid_by}), so what the channel's clearing account holds for it is settled; a "
                                "difference is that statement's case: only accept is possible")
    moved = session.execute(select(cases.c.id, cases.c.ledger_entry_id).where(
        cases.c.channel == row.channel, cases.c.our_id == row.our_id, cases.c.id != row.id,
        cases.c.ledger_entry_id.is_not(None), ~_reversed()).order_by(cases.c.id)).all()
    for other in moved:
        if _statement_account(session, _case(session, other.id)) == postings.clearing(row.channel):
            raise CaseStateConflict(f"case {row.id}: case {other.id} moved this line's money in the channel's "
                                    f"clearing account already (entry {other.ledger_entry_id}); a second entry "
                                    "would move it twice: only accept is possible")


def _reversed() -> Any:
    """Whether a case's entry was reversed (``_reverse``): then it is no longer in the ledger."""
    return exists().where(case_events.c.case_id == cases.c.id, case_events.c.type == REVERSED_EVENT)


Expired = list[tuple[str, dict[str, Any] | None]]
"""Approvals a resolution ended, as (approval id, ``approval.expire`` change), for the caller to record."""


def _apply(session: Session, row: Any, *, action: str, reason: str, account: str, actor: audit.Actor,
           now: datetime, resolution: str | None = None, approving: bool = False,
           expired: Expired | None = None) -> dict[str, Any]:
    """Write the resolution (and its entry); ``resolution`` names who decided when it was not a person.

    Returns the change as the caller records it in the audit trail (``recon.case.resolve``). A resolution
    held for a second person that is still pending ends here as expired, since a closed case can never
    run it (added to ``expired``, for the caller to record); ``approving``: this resolution is that
    approval's, being run."""
    resolution, by = resolution or action, _who(actor)
    entry = _entry(session, row, action, account, reason)
    entry_id = ledger.create_transfer(session, entry)[0] if entry is not None else None
    state = "written_off" if action == "write_off" else "resolved"
    session.execute(update(cases).where(cases.c.id == row.id).values(
        state=state, resolution=resolution, resolution_reason=reason[:500], ledger_entry_id=entry_id,
        approval_id=None, resolved_by=by, resolved_at=now, updated_at=now))
    detail: dict[str, Any] = {"resolution": resolution, "account": account, "ledger_entry_id": entry_id}
    if row.approval_id is not None and not approving:
        ended = approvals.expire(
            session, row.approval_id,
            reason=f"case {row.id} was {state} otherwise ({resolution} by {by}) before this was decided")
        if ended is not None:
            detail["approval_expired"] = row.approval_id
            if expired is not None:
                expired.append((row.approval_id, ended))
    new_event(session, row.id, state, by, body=reason, detail=detail, now=now)
    # The audit trail records the counter-account the entry posts to: a write-off's is always losses:writeoff.
    return {"action": action, "reason": reason, **detail,
            "account": "losses:writeoff" if action == "write_off" else account}


def _needs_second_person(action: str, delta: int, threshold: int) -> bool:
    """A resolution whose entry exceeds ``threshold`` waits for a second person (``accept`` posts nothing)."""
    return action != "accept" and abs(delta) > threshold


def resolve(session: Session, principal: Principal, actor: audit.Actor, case_id: str, *, action: str, reason: str,
            account: str = "suspense", threshold: int, ttl: Any = approvals.DEFAULT_TTL) -> tuple[dict[str, Any], bool]:
    """Resolve now, or hold it for a second person when its entry exceeds ``threshold``; (view, held)."""
    row = _case(session, case_id, lock=True)
    _check_resolvable(session, row, action, account)
    if _needs_second_person(action, row.delta, threshold) and _sides(session, row, action, account) is not None:
        approval = approvals.hold(
            session, principal, action=APPROVAL_ACTION,
            payload={"case_id": case_id, "action": action, "reason": reason, "account": account,
                     "delta": row.delta, "currency": row.currency},
            summary=f"{action} reconciliation case {case_id}: {row.delta} {row.currency} minor units",
            permission="recon:write", merchant_id=None, actor=actor, ttl=ttl)
        now = clock.now()
        session.execute(update(cases).where(cases.c.id == case_id).values(approval_id=approval["id"],
                                                                          updated_at=now))
        new_event(session, case_id, "approval_requested", _who(actor), body=reason,
                  detail={"approval_id": approval["id"], "action": action, "account": account}, now=now)
        return {**case_view(session, case_id), "approval": approval}, True
    expired: Expired = []
    change = _apply(session, row, action=action, reason=reason, account=account, actor=actor, now=clock.now(),
                    expired=expired)
    audit.record(session, actor, "recon.case.resolve", "recon_case", case_id, changes=change)
    audit.record_many(session, actor, "approval.expire", "approval", expired)
    return case_view(session, case_id), False


def _apply_approved(session: Session, payload: dict[str, Any], checker: Principal) -> dict[str, Any]:
    """The approved resolution, exactly as held, in the approver's transaction."""
    row = _case(session, payload["case_id"], lock=True)
    _check_resolvable(session, row, payload["action"], payload["account"], approving=True)
    if row.delta != payload["delta"]:
        raise CaseStateConflict(f"case {row.id} changed since the resolution was asked for")
    # The checker resolves it, as for every approved action; the maker is the approval's (approval.request).
    actor = audit.Actor(type=checker.kind, id=checker.id, role=checker.role, merchant_id=checker.merchant_id)
    change = _apply(session, row, action=payload["action"], reason=payload["reason"], account=payload["account"],
                    actor=actor, now=clock.now(), approving=True)
    audit.record(session, actor, "recon.case.resolve", "recon_case", row.id,
                 changes={**change, "approval_id": row.approval_id})
    return {"case_id": row.id, "ledger_entry_id": change["ledger_entry_id"]}


approvals.register(APPROVAL_ACTION, _apply_approved)


# -- automatic resolutions ------------------------------------------------------------------------------------------


Resolved = list[tuple[str, dict[str, Any] | None]]
"""Automatic resolutions as (case id, audit change), for ``record_resolutions``."""


def settle_timing(session: Session, run_id: str, channel: str, with_lines: Callable[[list[str]], set[str]],
                  now: datetime, expired: Expired) -> Resolved:
    """Close timing cases whose other side is now here; returns them, for ``record_resolutions``.

    A timing pair found in this run (both sides present, booked on different days) is
    resolved at once; an open timing case of an earlier run is resolved when this run's
    statement brings its line (``with_lines``: those of our ids a line of this run paired; a
    ``duplicate`` repeats one of ours paired elsewhere, it is not that line arriving)."""
    settled_pairs = (cases.c.reconciliation_id == run_id, cases.c["class"] == "timing", cases.c.state == "open",
                     cases.c.line_no.is_not(None), cases.c.our_id.is_not(None), cases.c.delta == 0)
    pairs = session.execute(select(cases.c.id, cases.c.ours_booked_on, cases.c.theirs_booked_on)
                            .where(*settled_pairs)).all()
    pair_reason = "both sides present, a day apart"
    if pairs:
        # Nothing to post for these (delta 0): one UPDATE and one batch of events, not one of each per case.
        session.execute(update(cases).where(*settled_pairs).values(
            state="resolved", resolution="auto_timing", resolution_reason=pair_reason,
            resolved_by=SYSTEM, resolved_at=now, updated_at=now))
        bulk_insert(session, case_events, ("id", "case_id", "type", "actor", "body", "detail_json", "created_at"), [
            (event_id, p.id, "resolved", SYSTEM,
             f"both sides present: booked {p.ours_booked_on} by us, {p.theirs_booked_on} by the channel",
             '{"resolution": "auto_timing"}', now) for event_id, p in zip(sorted(new_ids("rce", len(pairs))), pairs,
                                                                            strict=True)])
    # One audit change shared by every pair (record_many serializes it once).
    pair_change = {"resolution": "auto_timing", "action": "accept", "reason": pair_reason, "account": "suspense",
                   "ledger_entry_id": None}
    resolved: Resolved = [(p.id, pair_change) for p in pairs]
    for row in session.execute(_select_cases().where(
            cases.c.reconciliation_id == run_id, cases.c["class"] == "timing", cases.c.state == "open",
            cases.c.line_no.is_not(None), cases.c.our_id.is_not(None))).all():
        reason = f"both sides present: booked {row.ours_booked_on} by us, {row.theirs_booked_on} by the channel"
        resolved.append((row.id, _apply(session, row, action="accept", resolution="auto_timing", account="suspense",
                                        actor=SYSTEM_ACTOR, now=now, reason=reason, expired=expired)))
    waiting = session.execute(_select_cases().where(
        cases.c.channel == channel, cases.c["class"] == "timing", cases.c.state.in_(OPEN_STATES),
        cases.c.reconciliation_id != run_id, cases.c.line_no.is_(None))).all()
    if waiting:
        arrived = with_lines([w.our_id for w in waiting])
        for row in waiting:
            if row.our_id not in arrived:
                continue
            # Read again under its lock (a person may have resolved it since), and an approval waiting on
            # it locked first: the order ``approvals.decide`` takes them in.
            if row.approval_id is not None:
                approvals.lock(session, row.approval_id)
            current = _case(session, row.id, lock=True)
            if current.state not in OPEN_STATES:
                continue
            resolved.append((row.id, _apply(
                session, current, action="accept", resolution="auto_timing", account="suspense",
                actor=SYSTEM_ACTOR, now=now, reason=f"the channel's line arrived in reconciliation {run_id}",
                expired=expired)))
    return resolved


def supersede(session: Session, run_id: str, channel: str, statement_date: Any, now: datetime,
              expired: Expired) -> Resolved:
    """Close the open cases of the earlier channel statements this one re-issues; returns them, for
    ``record_resolutions``.

    A channel's statement speaks for the channel's whole day, so an earlier one of the same channel and day is
    replaced by it (bank statements are not: two of one day may be two accounts', and they add up): this
    import's cases are the day's cases now, and it raised again whatever is still wrong. So an earlier case
    still open is accepted, posting nothing, with the reason; a resolution of it waiting for a second person
    ends as expired. Cases resolved before stay as they are, and
    one of this import's cases that repeats one of them already posted for (the same class, lines and delta)
    is accepted too, naming that case and its entry: the difference is in the ledger once, not twice. An entry
    an earlier re-issue reversed is in the ledger no more: a case that repeats its discrepancy stays open, and
    it is not reversed a second time."""
    replaced = list(session.scalars(
        select(runs.c.id).join(statements, statements.c.id == runs.c.statement_id)
        .where(runs.c.channel == channel, runs.c.id != run_id, runs.c.statement_date == statement_date,
               statements.c.format.not_in(BANK_FORMATS))))
    if not replaced:
        return []
    reason = f"replaced by the re-issued statement of reconciliation {run_id}, which reports the day anew"
    resolved: Resolved = []
    for row in session.execute(_select_cases().where(cases.c.reconciliation_id.in_(replaced),
                                                   cases.c.state.in_(OPEN_STATES))).all():
        # Read again under its lock, an approval waiting on it locked first (``approvals.decide``'s order).
        if row.approval_id is not None:
            approvals.lock(session, row.approval_id)
        current = _case(session, row.id, lock=True)
        if current.state not in OPEN_STATES:
            continue
        resolved.append((row.id, _apply(session, current, action="accept", account="suspense", actor=SYSTEM_ACTOR,
                                        now=now, reason=reason, expired=expired)))
    # Only entries still in the ledger count: one an earlier re-issue reversed is no longer there, so it is not
    # reversed twice (its ``_reversed`` id is taken), and a discrepancy reported again is booked nowhere: its case
    # stays open for a person.
    reversed_already = exists().where(case_events.c.case_id == cases.c.id, case_events.c.type == REVERSED_EVENT)
    same = (cases.c["class"], cases.c.our_id, cases.c.our_ref, cases.c.channel_ref, cases.c.currency, cases.c.delta)
    posted = {tuple(row[:-2]): row[-2:] for row in session.execute(
        select(*same, cases.c.id, cases.c.ledger_entry_id)
        .where(cases.c.reconciliation_id.in_(replaced), cases.c.ledger_entry_id.is_not(None),
               ~reversed_already))}
    if not posted:
        return resolved
    repeated = set()
    for row in session.execute(_select_cases().where(cases.c.reconciliation_id == run_id)).all():
        key = (row.class_, row.our_id, row.our_ref, row.channel_ref, row.currency, row.delta)
        earlier_case = posted.get(key)
        if earlier_case is None:
            continue
        repeated.add(key)
        if row.state == "open":
            resolved.append((row.id, _apply(
                session, row, action="accept", account="suspense", actor=SYSTEM_ACTOR, now=now, expired=expired,
                reason=f"posted already: case {earlier_case[0]} of the statement this one re-issues was resolved "
                       f"with ledger entry {earlier_case[1]}")))
    for key, (case_id, entry_id) in sorted(posted.items(), key=lambda item: item[1][0]):
        if key not in repeated:
            resolved.append((case_id, _reverse(
                session, case_id, entry_id, run_id, now,
                f"the re-issued statement of reconciliation {run_id} no longer reports this discrepancy")))
    return resolved


def settle_paid(session: Session, run_id: str, channel: str, paid_ids: set[str], now: datetime,
                expired: Expired) -> Resolved:
    """The cases of earlier statements of ``channel`` about lines of ours this bank statement pays now
    (``paid_ids``) whose money is in the channel's clearing account: a channel statement's (it reported the
    line missing, or another amount or fee) and a bank statement's case without a line (the bank had not
    received it). Returns them, for ``record_resolutions``.

    The bank's payment settles what the clearing account holds for the line (recipe 4: the payout takes our net
    out of it), and any difference left is this statement's own case, in ``suspense``. So:

    - one still open is accepted, posting nothing (a line-less ``timing`` case is ``settle_timing``'s, which ran
      before);
    - one resolved with an entry (adjusted, written off: our money moved in or out of the clearing account) has
      that entry reversed, since the payout takes the line's net out of the clearing account: without the
      reversal the line's money would leave it twice, or part of it never."""
    if not paid_ids:
        return []
    reason = f"paid by the bank statement of reconciliation {run_id}"
    resolved: Resolved = []
    channel_runs = select(runs.c.id).join(statements, statements.c.id == runs.c.statement_id).where(
        runs.c.channel == channel, statements.c.format.not_in(BANK_FORMATS))
    on_clearing = or_(cases.c.reconciliation_id.in_(channel_runs), cases.c.line_no.is_(None))
    for row in session.execute(_select_cases().where(
            cases.c.channel == channel, cases.c.reconciliation_id != run_id, cases.c.our_id.is_not(None),
            on_clearing, cases.c.state.in_(OPEN_STATES) | (cases.c.ledger_entry_id.is_not(None) & ~_reversed()))
            .order_by(cases.c.id)).all():
        if row.our_id not in paid_ids:
            continue
        if row.state not in OPEN_STATES:
            resolved.append((row.id, _reverse(session, row.id, row.ledger_entry_id, run_id, now, reason)))
            continue
        if row.class_ == "timing":
            continue  # ``settle_timing`` decided it
        # Read again under its lock, an approval waiting on it locked first (``approvals.decide``'s order).
        if row.approval_id is not None:
            approvals.lock(session, row.approval_id)
        current = _case(session, row.id, lock=True)
        if current.state in OPEN_STATES:
            resolved.append((row.id, _apply(session, current, action="accept", resolution="auto_paid",
                                            account="suspense", actor=SYSTEM_ACTOR, now=now, reason=reason,
                                            expired=expired)))
    return resolved


def _reverse(session: Session, case_id: str, entry_id: str, run_id: str, now: datetime, reason: str) -> dict[str, Any]:
    """Reverse the entry a case posted, its discrepancy gone (a re-issued statement no longer reports it, a bank
    statement paid the line): the ledger is as before the adjustment. A new entry, never a change:
    ``<entry>_reversed``, posted once."""
    original = ledger.get_transfer(session, entry_id)
    reversal = ledger.EntryRequest(
        postings=[ledger.PostingRequest(p["account_id"], ledger.CREDIT if p["direction"] == ledger.DEBIT
                                        else ledger.DEBIT, p["amount"], p["currency"]) for p in original["postings"]],
        id=f"{entry_id}_reversed", code="recon_adjustment_reversal", reference=case_id,
        metadata={"case_id": case_id, "reverses": entry_id, "reconciliation_id": run_id, "reason": reason})
    reversal_id = ledger.create_transfer(session, reversal)[0]
    detail = {"ledger_entry_id": reversal_id, "reverses": entry_id, "reconciliation_id": run_id}
    new_event(session, case_id, REVERSED_EVENT, SYSTEM, body=f"{reason}: entry {reversal_id} reverses {entry_id}",
              detail=detail, now=now)
    return {"action": "reverse", "reason": reason, **detail}


def apply_rules(session: Session, run_id: str, rules: Any, now: datetime, threshold: int | None = None,
                expired: Expired | None = None) -> Resolved:
    """Resolve this run's open cases that a channel rule explains; returns them, for ``record_resolutions``.

    A rule's ``max_difference_minor`` bounds the case's delta too (``AutoResolveRule.applies``): a case whose
    class difference fits it but whose net does not stays open for people, with an event saying so. A rule is
    nobody's second pair of eyes either: a case whose entry would post more than ``threshold``
    (``recon_approval_threshold``; None: the configured one) stays open for people, with an event
    saying which rule matched and why it was not applied."""
    from clearhouse.reconciliation.rules import auto_resolution

    if not rules.auto_resolve:
        return []
    if threshold is None:
        from clearhouse.kit.settings import get_settings

        threshold = get_settings().recon_approval_threshold
    settled: Resolved = []
    for row in session.execute(_select_cases().where(cases.c.reconciliation_id == run_id,
                                                   cases.c.state == "open")).all():
        difference = difference_of(row)
        rule = auto_resolution(rules, row.class_, difference, row.delta)
        if rule is None:
            beyond = next((r for r in rules.auto_resolve if r.fits(row.class_, difference)), None)
            if beyond is not None:
                new_event(session, row.id, "rule_held", SYSTEM,
                          body=f"rule ({beyond.action}): {beyond.reason}: not applied, the case's difference is"
                               f" {difference} but it moves {abs(row.delta)} {row.currency} minor units net"
                               f" (fees included), beyond the rule's {beyond.max_difference_minor}:"
                               " a person resolves it",
                          detail={"action": beyond.action, "reason": beyond.reason, "delta": row.delta,
                                  "max_difference_minor": beyond.max_difference_minor}, now=now)
            continue
        account = getattr(rule, "account", None) or "suspense"
        if _needs_second_person(rule.action, row.delta, threshold) and _sides(session, row, rule.action,
                                                                              account) is not None:
            new_event(session, row.id, "rule_held", SYSTEM,
                      body=f"rule ({rule.action}): {rule.reason}: not applied, its entry of {abs(row.delta)}"
                           f" {row.currency} minor units is above the approval threshold of {threshold}:"
                           f" a person resolves it (and a second person approves)",
                      detail={"action": rule.action, "reason": rule.reason, "delta": row.delta,
                              "threshold": threshold}, now=now)
            continue
        settled.append((row.id, _apply(session, row, action=rule.action, resolution="rule", account=account,
                                       actor=SYSTEM_ACTOR, now=now, reason=f"rule ({rule.action}): {rule.reason}",
                                       expired=expired)))
    return settled


def record_resolutions(session: Session, resolved: Resolved, expired: Expired) -> None:
    """The audit events of the import's automatic resolutions (``settle_timing``, ``apply_rules``) and of
    the approvals they ended, in one batch each. Called last, after every ledger entry of the import: the
    audit chain's lock is then taken after the ledger's, as everywhere else, and held only to the commit."""
    audit.record_many(session, SYSTEM_ACTOR, "recon.case.resolve", "recon_case", resolved)
    audit.record_many(session, SYSTEM_ACTOR, "approval.expire", "approval", expired)
