"""Ledger tables: accounts, the hash-chained journal of entries, and their postings.

A journal entry (``ledger_transfers``) has two or more postings (legs). A two-leg entry
whose first leg is the debit and second the credit (every plain transfer, a pending
one, and the void of one) keeps both legs on its own row: ``debit_account`` and
``credit_account`` (account numbers), ``amount``, ``currency`` and ``kind``; no posting
rows. Any other entry keeps its legs as ``ledger_postings`` rows, as before.
A leg's ``kind`` says which balance it moves:

- ``posted``: debits_posted / credits_posted
- ``pending``: debits_pending / credits_pending (a two-phase transfer's reservation)
- ``release``: takes a pending reservation back out (written when it is posted or voided)

Entries and postings are never updated or deleted (database triggers refuse it);
accounts carry running balances that ``verify`` proves equal to their postings.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from clearhouse.kit.models import Base
from clearhouse.kit.types import UTCDateTime

GENESIS_HASH = "0" * 64
# The history indexes lead with ``seq / BLOCK`` (migration 0011): rows land in the current
# block only, so a batch touches few index pages. Queries must use the same expression.
BLOCK = 16384
SEQ = BigInteger().with_variant(Integer(), "sqlite")


class Account(Base):
    __tablename__ = "ledger_accounts"
    __table_args__ = (
        CheckConstraint(
            "type IN ('asset', 'liability', 'equity', 'revenue', 'expense')", name="type"
        ),
        CheckConstraint(
            "NOT (debits_must_not_exceed_credits AND credits_must_not_exceed_debits)",
            name="one_limit_flag",
        ),
        CheckConstraint("overdraft_limit IS NULL OR overdraft_limit >= 0", name="overdraft"),
        CheckConstraint(
            "debits_posted >= 0 AND credits_posted >= 0 AND debits_pending >= 0 AND credits_pending >= 0",
            name="balances_non_negative",
        ),
        Index("ix_ledger_accounts_owner", "owner_id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The account's number: what the journal's history indexes hold (migration 0011).
    num: Mapped[int] = mapped_column(BigInteger, unique=True)
    type: Mapped[str] = mapped_column(String(16))
    currency: Mapped[str] = mapped_column(String(3))
    code: Mapped[str] = mapped_column(String(128))
    owner_id: Mapped[str | None] = mapped_column(String(128))
    metadata_json: Mapped[str] = mapped_column(Text, default="{}")
    debits_must_not_exceed_credits: Mapped[bool] = mapped_column(Boolean, default=False)
    credits_must_not_exceed_debits: Mapped[bool] = mapped_column(Boolean, default=False)
    overdraft_limit: Mapped[int | None] = mapped_column(BigInteger)
    closed: Mapped[bool] = mapped_column(Boolean, default=False)
    debits_posted: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_posted: Mapped[int] = mapped_column(BigInteger, default=0)
    debits_pending: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_pending: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Chain(Base):
    """The head of the journal's hash chain: one row, locked by every ledger write."""

    __tablename__ = "ledger_chain"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class Entry(Base):
    """One journal entry; ``id`` is the transfer id clients see (and may choose)."""

    __tablename__ = "ledger_transfers"
    __table_args__ = (
        CheckConstraint("(pending_id IS NULL) = (resolution IS NULL)", name="resolution"),
        CheckConstraint("resolution IS NULL OR resolution IN ('post', 'void')", name="resolution_kind"),
        CheckConstraint("NOT (pending AND pending_id IS NOT NULL)", name="pending_not_resolution"),
        CheckConstraint("timeout_seconds IS NULL OR timeout_seconds > 0", name="timeout"),
        CheckConstraint("seq >= 1", name="seq_positive"),
        Index("ix_ledger_transfers_created_at", "created_at"),
        Index("ix_ledger_transfers_timeout_at", "timeout_at", sqlite_where=text("pending"),
              postgresql_where=text("pending")),
        # At most one entry resolves a pending entry: this unique index makes "post or
        # void once" hold under any concurrency.
        Index("uq_ledger_transfers_pending_id", "pending_id", unique=True,
              sqlite_where=text("pending_id IS NOT NULL"), postgresql_where=text("pending_id IS NOT NULL")),
    )

    seq: Mapped[int] = mapped_column(SEQ, primary_key=True, autoincrement=False)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    pending: Mapped[bool] = mapped_column(Boolean, default=False)
    pending_id: Mapped[str | None] = mapped_column(String(64))
    resolution: Mapped[str | None] = mapped_column(String(8))
    timeout_seconds: Mapped[int | None] = mapped_column(Integer)
    timeout_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    code: Mapped[str | None] = mapped_column(String(128))
    reference: Mapped[str | None] = mapped_column(String(256))
    metadata_json: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    hash: Mapped[str] = mapped_column(String(64))
    # The two legs of a debit-then-credit entry; all NULL when the legs are posting rows.
    debit_account: Mapped[int | None] = mapped_column(BigInteger)
    credit_account: Mapped[int | None] = mapped_column(BigInteger)
    amount: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(String(3))
    kind: Mapped[str | None] = mapped_column(String(8))


class Posting(Base):
    __tablename__ = "ledger_postings"
    __table_args__ = (
        CheckConstraint("direction IN ('debit', 'credit')", name="direction"),
        CheckConstraint("kind IN ('posted', 'pending', 'release')", name="kind"),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("seq >= 1 AND idx >= 0", name="position"),
        Index("ix_ledger_postings_account_seq", "account_id", "seq"),
        {"sqlite_with_rowid": False},
    )

    # No foreign keys, by design: see the migration 0001_ledger for why.
    seq: Mapped[int] = mapped_column(SEQ, primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    account_id: Mapped[str] = mapped_column(String(64))
    direction: Mapped[str] = mapped_column(String(6))
    kind: Mapped[str] = mapped_column(String(8))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))


accounts = Account.__table__
chain = Chain.__table__
entries = Entry.__table__
postings = Posting.__table__
