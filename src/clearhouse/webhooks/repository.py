"""Every webhook query."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from clearhouse.kit.db import one_of
from clearhouse.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent

endpoints = WebhookEndpoint.__table__
events = WebhookEvent.__table__
deliveries = WebhookDelivery.__table__
attempts = WebhookAttempt.__table__

# Run inside every payment's transaction (``service.emit``): built once, since SQLAlchemy
# spends more building a statement than the database spends running it.
_INSERT_EVENT = insert(events)
_ENABLED_ENDPOINTS_OF = select(endpoints.c.id, endpoints.c.event_types_json).where(
    endpoints.c.merchant_id == bindparam("merchant_id"), endpoints.c.livemode == bindparam("livemode"),
    endpoints.c.enabled.is_(True),
    endpoints.c.deleted_at.is_(None),
).order_by(endpoints.c.id)


# --- endpoints ---------------------------------------------------------------------------

def insert_endpoint(session: Session, values: dict[str, Any]) -> None:
    session.execute(insert(endpoints).values(**values))


def get_endpoint(session: Session, endpoint_id: str, *, lock: bool = False, deleted: bool = False) -> Row | None:
    """A live endpoint; ``deleted``: or one deleted (whose delivery log is kept)."""
    query = select(endpoints).where(endpoints.c.id == endpoint_id)
    if not deleted:
        query = query.where(endpoints.c.deleted_at.is_(None))
    if lock:
        query = query.with_for_update()
    return session.execute(query).first()


def list_endpoints(session: Session, scope: list[Any], *, limit: int,
                   starting_after: str | None) -> tuple[list[Row], bool]:
    """``scope``: the caller's conditions (``Principal.listing``)."""
    query = (select(endpoints).where(endpoints.c.deleted_at.is_(None), *scope).order_by(endpoints.c.id)
             .limit(limit + 1))
    if starting_after:
        query = query.where(endpoints.c.id > starting_after)
    rows = session.execute(query).all()
    return rows[:limit], len(rows) > limit


def update_endpoint(session: Session, endpoint_id: str, values: dict[str, Any]) -> None:
    session.execute(update(endpoints).where(endpoints.c.id == endpoint_id).values(**values))


def enabled_endpoints_of(session: Session, merchant_id: str, livemode: bool) -> list[Row]:
    """The endpoints an event of this merchant and mode may go to (filters are matched by the caller)."""
    return session.connection().execute(_ENABLED_ENDPOINTS_OF, {"merchant_id": merchant_id,
                                                                "livemode": livemode}).all()


def cancel_pending_deliveries(session: Session, endpoint_id: str) -> int:
    return session.execute(
        update(deliveries).where(deliveries.c.endpoint_id == endpoint_id, deliveries.c.status == "pending")
        .values(status="canceled", next_attempt_at=None)
    ).rowcount


# --- events ------------------------------------------------------------------------------

def insert_event(session: Session, values: dict[str, Any]) -> None:
    session.connection().execute(_INSERT_EVENT, values)


def get_event(session: Session, event_id: str) -> Row | None:
    return session.execute(select(events).where(events.c.id == event_id)).first()


def list_events(session: Session, scope: list[Any], event_type: str | None, *, limit: int,
                starting_after: str | None) -> tuple[list[Row], bool]:
    """``scope``: the caller's conditions (``Principal.listing``)."""
    query = select(events).where(*scope).order_by(events.c.id).limit(limit + 1)
    if event_type is not None:
        query = query.where(events.c.type == event_type)
    if starting_after:
        query = query.where(events.c.id > starting_after)
    rows = session.execute(query).all()
    return rows[:limit], len(rows) > limit


# --- deliveries --------------------------------------------------------------------------

def insert_deliveries(session: Session, rows: list[dict[str, Any]]) -> None:
    if rows:
        session.execute(insert(deliveries), rows)


_DELIVERY_COLUMNS = (*deliveries.c, events.c.type.label("event_type"))


def deliveries_by_ids(session: Session, delivery_ids: Sequence[str]) -> list[Row]:
    if not delivery_ids:
        return []
    return session.execute(
        select(*_DELIVERY_COLUMNS).join(events, events.c.id == deliveries.c.event_id)
        .where(one_of(session, deliveries.c.id, delivery_ids)).order_by(deliveries.c.id)
    ).all()


def list_deliveries(session: Session, endpoint_id: str, *, status: str | None, limit: int,
                    starting_after: str | None) -> tuple[list[Row], bool]:
    """Newest first: the delivery log is read for what just happened."""
    query = (
        select(*_DELIVERY_COLUMNS).join(events, events.c.id == deliveries.c.event_id)
        .where(deliveries.c.endpoint_id == endpoint_id).order_by(deliveries.c.id.desc()).limit(limit + 1)
    )
    if status is not None:
        query = query.where(deliveries.c.status == status)
    if starting_after:
        query = query.where(deliveries.c.id < starting_after)
    rows = session.execute(query).all()
    return rows[:limit], len(rows) > limit


def attempts_of(session: Session, delivery_ids: Sequence[str]) -> dict[str, list[Row]]:
    found: dict[str, list[Row]] = {delivery_id: [] for delivery_id in delivery_ids}
    if not delivery_ids:
        return found
    rows = session.execute(
        select(attempts).where(one_of(session, attempts.c.delivery_id, delivery_ids))
        .order_by(attempts.c.delivery_id, attempts.c.attempt_number, attempts.c.id)
    ).all()
    for row in rows:
        found[row.delivery_id].append(row)
    return found


def claim_due(session: Session, *, now: datetime, limit: int, per_endpoint: int, lease_until: datetime) -> list[Row]:
    """Take up to ``limit`` due deliveries of enabled endpoints, at most ``per_endpoint`` of any
    one endpoint (a dead endpoint's backlog cannot fill a run), and lease them: their
    ``next_attempt_at`` moves to ``lease_until`` and ``attempt_count`` goes up by one, so no
    other worker takes them until the lease ends. Returns what sending needs."""
    rank = func.row_number().over(
        partition_by=deliveries.c.endpoint_id, order_by=(deliveries.c.next_attempt_at, deliveries.c.id)
    ).label("rank")
    due = (deliveries.c.status == "pending") & (deliveries.c.next_attempt_at <= now)
    ranked = (
        select(deliveries.c.id, deliveries.c.next_attempt_at, rank)
        .join(endpoints, endpoints.c.id == deliveries.c.endpoint_id)
        .where(due, endpoints.c.enabled.is_(True), endpoints.c.deleted_at.is_(None))
        .subquery()
    )
    candidates = (
        select(ranked.c.id).where(ranked.c.rank <= per_endpoint)
        .order_by(ranked.c.next_attempt_at, ranked.c.id).limit(limit)
    )
    # PostgreSQL: FOR UPDATE SKIP LOCKED, so concurrent workers split the due rows instead of
    # queueing on each other; the row locks are re-checked against `due`, so a row another
    # worker leased meanwhile drops out. (A window function may not sit in a FOR UPDATE query
    # itself, hence the subquery.) SQLite ignores the clause: BEGIN IMMEDIATE already
    # serializes the whole claim.
    claimed = session.execute(
        select(deliveries.c.id).where(deliveries.c.id.in_(candidates), due)
        .order_by(deliveries.c.id).with_for_update(skip_locked=True)
    ).scalars().all()
    if not claimed:
        return []
    session.execute(
        update(deliveries).where(one_of(session, deliveries.c.id, claimed))
        .values(next_attempt_at=lease_until, attempt_count=deliveries.c.attempt_count + 1)
    )
    return session.execute(
        select(
            deliveries.c.id, deliveries.c.attempt_count, deliveries.c.created_at, deliveries.c.event_id,
            deliveries.c.endpoint_id, events.c.type.label("event_type"), events.c.payload_json,
            events.c.created_at.label("event_created_at"), endpoints.c.url, endpoints.c.secret_ciphertext,
            endpoints.c.previous_secret_ciphertext, endpoints.c.previous_secret_expires_at,
        )
        .join(events, events.c.id == deliveries.c.event_id)
        .join(endpoints, endpoints.c.id == deliveries.c.endpoint_id)
        .where(one_of(session, deliveries.c.id, claimed))
        .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
    ).all()


def insert_attempts(session: Session, rows: list[dict[str, Any]]) -> None:
    if rows:
        session.execute(insert(attempts), rows)


def finish_attempt(session: Session, delivery_id: str, attempt_number: int, values: dict[str, Any]) -> int:
    """Record an attempt's outcome on its delivery, unless the delivery moved on meanwhile
    (canceled, or its lease ran out and another worker made a newer attempt)."""
    return session.execute(
        update(deliveries).where(
            deliveries.c.id == delivery_id, deliveries.c.attempt_count == attempt_number,
            deliveries.c.status == "pending",
        ).values(**values)
    ).rowcount
