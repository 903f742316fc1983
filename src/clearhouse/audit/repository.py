"""Every query of the audit trail."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Row, insert, select, type_coerce, update
from sqlalchemy.orm import Session

from clearhouse.audit.models import chain, events
from clearhouse.kit.db import bulk_insert
from clearhouse.kit.verification import StoredTime, read_all

VERIFY_BATCH = 2000  # rows fetched per round trip while verify walks the chain


def lock_chain(session: Session) -> tuple[int, str]:
    """Lock the head of the audit chain (SELECT ... FOR UPDATE; SQLite transactions already
    hold the database's write lock): writers append one at a time, in chain order."""
    row = session.execute(select(chain.c.seq, chain.c.hash).where(chain.c.id == 1).with_for_update()).one()
    return row.seq, row.hash


def advance_chain(session: Session, seq: int, hash_: str) -> None:
    session.execute(update(chain).where(chain.c.id == 1).values(seq=seq, hash=hash_))


def insert_event(session: Session, values: dict[str, Any]) -> None:
    session.execute(insert(events).values(**values))


EVENT_COLUMNS = ("seq", "id", "occurred_at", "actor_type", "actor_id", "actor_role", "merchant_id", "action",
                 "object_type", "object_id", "source_ip", "request_id", "changes_json", "prev_hash", "hash")


def insert_events(session: Session, rows: list[tuple]) -> None:
    """Many events, each a tuple in ``EVENT_COLUMNS`` order, in one bulk insert (``COPY`` on PostgreSQL)."""
    bulk_insert(session, events, EVENT_COLUMNS, rows)


# Events as the readers (verify, the events list) fetch them: whatever a tamperer wrote in
# the time column must not stop the read.
_EVENTS = select(*(type_coerce(column, StoredTime()).label(column.name) if column.name == "occurred_at" else column
                   for column in events.c))


def chain_head(session: Session) -> tuple[Any, Any] | None:
    """The chain head as stored, or None when its row is gone."""
    rows = read_all(session, select(chain.c.seq, chain.c.hash).where(chain.c.id == 1))
    return (rows[0].seq, rows[0].hash) if rows else None


def events_in_chain_order(session: Session) -> Iterator[Row]:
    """All events at seq 1 and above, by seq, fetched in batches by keyset, so memory stays
    flat however long the trail is."""
    after = 0
    while True:
        rows = read_all(session, _EVENTS.where(events.c.seq > after).order_by(events.c.seq).limit(VERIFY_BATCH))
        yield from rows
        if len(rows) < VERIFY_BATCH:
            return
        after = rows[-1].seq


def events_before_the_chain(session: Session) -> list[Row]:
    """Rows at seq 0 or below (refused by a CHECK; read in case the CHECK was dropped), by seq."""
    return read_all(session, select(events.c.seq, events.c.id).where(events.c.seq < 1).order_by(events.c.seq))


def _filtered(query: Any, *, actor_id: str | None = None, object_id: str | None = None,
              object_type: str | None = None, action: str | None = None, merchant_id: str | None = None,
              since: datetime | None = None, until: datetime | None = None) -> Any:
    """``query`` narrowed to the events the filters of the events list keep."""
    for column, value in (
        (events.c.actor_id, actor_id), (events.c.object_id, object_id), (events.c.object_type, object_type),
        (events.c.action, action), (events.c.merchant_id, merchant_id),
    ):
        if value is not None:
            query = query.where(column == value)
    if since is not None:
        query = query.where(events.c.occurred_at >= since)
    if until is not None:
        query = query.where(events.c.occurred_at < until)
    return query


def seq_of(session: Session, event_id: str, **filters: Any) -> int | None:
    """The seq of ``event_id`` if it is one of the events the filters keep, else None."""
    return session.scalar(_filtered(select(events.c.seq).where(events.c.id == event_id), **filters))


def list_events(
    session: Session,
    *,
    limit: int,
    after_seq: int | None = None,
    actor_id: str | None = None,
    object_id: str | None = None,
    object_type: str | None = None,
    action: str | None = None,
    merchant_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[Row]:
    """Events in chain order, filtered; one more than ``limit`` tells the caller there are more."""
    query = _filtered(_EVENTS.order_by(events.c.seq).limit(limit + 1), actor_id=actor_id, object_id=object_id,
                      object_type=object_type, action=action, merchant_id=merchant_id, since=since, until=until)
    if after_seq is not None:
        query = query.where(events.c.seq > after_seq)
    return read_all(session, query)
