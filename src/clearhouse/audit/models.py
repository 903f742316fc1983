"""Audit tables: the append-only, hash-chained event log and the head of its chain.

Each event's ``hash`` covers its predecessor's hash and every field of the event, so
a changed, removed or re-ordered row breaks the chain from that point on; ``verify``
finds it. Events are never updated or deleted (database triggers refuse it, see the
migration 0004_audit).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from clearhouse.kit.models import Base
from clearhouse.kit.types import UTCDateTime

GENESIS_HASH = "0" * 64
# On SQLite an INTEGER PRIMARY KEY is the rowid itself: no second index to maintain.
SEQ = BigInteger().with_variant(Integer(), "sqlite")

# Column widths; record() shortens longer values (caller-supplied headers such as a
# request id must never make the audited change fail).
ACTOR_TYPE_MAX = 16
ACTOR_ID_MAX = 64
ROLE_MAX = 32
MERCHANT_ID_MAX = 40
ACTION_MAX = 64
OBJECT_TYPE_MAX = 64
OBJECT_ID_MAX = 128
SOURCE_IP_MAX = 64
REQUEST_ID_MAX = 128


class AuditChain(Base):
    """The head of the audit chain: one row, locked by every writer of an event."""

    __tablename__ = "audit_chain"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class AuditEvent(Base):
    """One state change: who (actor, role, merchant), what (action on an object), when,
    from where (source address, request id), and the change itself, masked."""

    __tablename__ = "audit_events"
    __table_args__ = (
        CheckConstraint("seq >= 1", name="seq_positive"),
        CheckConstraint("actor_type IN ('api_key', 'user', 'system')", name="actor_type"),
        Index("ix_audit_events_actor_seq", "actor_id", "seq"),
        Index("ix_audit_events_object_seq", "object_id", "seq"),
        Index("ix_audit_events_merchant_seq", "merchant_id", "seq"),
        Index("ix_audit_events_action_seq", "action", "seq"),
    )

    seq: Mapped[int] = mapped_column(SEQ, primary_key=True, autoincrement=False)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor_type: Mapped[str] = mapped_column(String(ACTOR_TYPE_MAX))
    actor_id: Mapped[str] = mapped_column(String(ACTOR_ID_MAX))
    actor_role: Mapped[str | None] = mapped_column(String(ROLE_MAX))
    merchant_id: Mapped[str | None] = mapped_column(String(MERCHANT_ID_MAX))
    action: Mapped[str] = mapped_column(String(ACTION_MAX))
    object_type: Mapped[str] = mapped_column(String(OBJECT_TYPE_MAX))
    object_id: Mapped[str] = mapped_column(String(OBJECT_ID_MAX))
    source_ip: Mapped[str | None] = mapped_column(String(SOURCE_IP_MAX))
    request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_MAX))
    changes_json: Mapped[str] = mapped_column(Text, default="{}")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


chain = AuditChain.__table__
events = AuditEvent.__table__
