"""Reconciliation tables: per-channel rules, imported statements, reconciliation runs, and cases.

A statement is stored by the SHA-256 of its bytes (unique), so the same file can never be
imported twice; a bank statement also by its figures and by its bank's number (each unique), so
it is imported once in whatever bytes. Matched lines are not stored one by one (a day can hold
millions): the run keeps counts and amounts per class, and every discrepancy becomes a case that
people (or a rule) work to resolution. A case's resolution may post an adjusting ledger entry, whose id
the case keeps.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime

from sqlalchemy import BigInteger, CheckConstraint, Date, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from clearhouse.kit.models import Base, sql_list
from clearhouse.kit.types import UTCDateTime

CLASSES = ("matched", "missing_in_ledger", "missing_in_statement", "amount_mismatch", "fee_mismatch",
           "status_mismatch", "duplicate", "timing")
DISCREPANCIES = CLASSES[1:]
CASE_STATES = ("open", "investigating", "resolved", "written_off")
OPEN_STATES = ("open", "investigating")
RESOLUTIONS = ("accept", "adjust", "write_off", "auto_timing", "rule", "auto_paid")


class ReconRules(Base):
    """A channel's matching rules and its CSV mapping, as data (``rules.MatchRules``, ``formats.CsvMapping``)."""

    __tablename__ = "recon_rules"

    channel: Mapped[str] = mapped_column(String(40), primary_key=True)
    rules_json: Mapped[str] = mapped_column(Text)
    mapping_json: Mapped[str | None] = mapped_column(Text)
    """A CSV mapping that replaces the channel's built-in one (null: the built-in)."""
    updated_by: Mapped[str] = mapped_column(String(80))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


def statement_fingerprint(*, account: str | None, currency: str | None, opening_balance: int | None,
                          closing_balance: int | None, first_day: date | None, last_day: date | None, lines: int,
                          net: dict[str, int], statement_date: date) -> str:
    """A bank statement's ``fingerprint``: the SHA-256 (hex) of what the bank's file says of it and an import
    keeps, in one canonical form. Its (first) account, currency, opening and closing balances, the first and
    last day of its lines, how many lines it has and their net per currency (currencies of net 0 left out);
    for a statement without lines, the day it is imported for as well (an account's empty statements of
    consecutive days are otherwise alike). The same statement in other bytes (CR LF or LF, MT940 or camt.053)
    has the same one."""
    canonical = {"v": 1, "account": account, "currency": currency, "opening_balance": opening_balance,
                 "closing_balance": closing_balance, "first_day": first_day and first_day.isoformat(),
                 "last_day": last_day and last_day.isoformat(), "lines": lines,
                 "net": {code: int(amount) for code, amount in sorted(net.items()) if amount},
                 "statement_date": None if lines else statement_date.isoformat()}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


FINGERPRINT_INDEX = "ix_recon_statements_fingerprint"
BANK_STATEMENT_INDEX = "ix_recon_statements_bank_statement"


class ReconStatement(Base):
    """An imported statement file. A bank statement (MT940, camt.053) is imported once, whatever its bytes: the
    database refuses a second row with its ``fingerprint`` (what the bank says of it: account, currency,
    balances, days, lines and net per currency) or with its bank's number (``bank_account``,
    ``bank_statement_number``, ``bank_statement_sequence``, ``bank_statement_closed_on``; migration 0015)."""

    __tablename__ = "recon_statements"
    __table_args__ = (
        Index(FINGERPRINT_INDEX, "fingerprint", unique=True,
              sqlite_where=text("fingerprint IS NOT NULL"), postgresql_where=text("fingerprint IS NOT NULL")),
        Index(BANK_STATEMENT_INDEX, "bank_account", "bank_statement_number", "bank_statement_sequence",
              "bank_statement_closed_on", unique=True, sqlite_where=text("bank_statement_number IS NOT NULL"),
              postgresql_where=text("bank_statement_number IS NOT NULL")),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    channel: Mapped[str] = mapped_column(String(40))
    format: Mapped[str] = mapped_column(String(16))
    mapping: Mapped[str | None] = mapped_column(String(64))
    file_name: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    line_count: Mapped[int] = mapped_column(Integer)
    statement_date: Mapped[date] = mapped_column(Date)
    first_day: Mapped[date | None] = mapped_column(Date)
    last_day: Mapped[date | None] = mapped_column(Date)
    account: Mapped[str | None] = mapped_column(String(64))
    currency: Mapped[str | None] = mapped_column(String(3))
    opening_balance: Mapped[int | None] = mapped_column(BigInteger)
    closing_balance: Mapped[int | None] = mapped_column(BigInteger)
    imported_by: Mapped[str] = mapped_column(String(80))
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime)
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    """A bank statement's SHA-256 of its figures (``statement_fingerprint``); null for a channel's statement, and
    for a bank statement imported twice before migration 0015 (on every row of it but the first)."""
    bank_account: Mapped[str | None] = mapped_column(String(64))
    """The bank's identity of the (first) statement (``frames.BankStatementIdentity``): all four, or none (a
    channel's statement, one without a statement number, or one imported before migration 0015)."""
    bank_statement_number: Mapped[str | None] = mapped_column(String(35))
    bank_statement_sequence: Mapped[str | None] = mapped_column(String(16))
    bank_statement_closed_on: Mapped[date | None] = mapped_column(Date)


class Reconciliation(Base):
    """One statement matched against our lines: the counts and amounts of every class."""

    __tablename__ = "reconciliations"
    __table_args__ = (Index("ix_reconciliations_channel_day", "channel", "statement_date"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    statement_id: Mapped[str] = mapped_column(String(40), ForeignKey("recon_statements.id"), unique=True)
    channel: Mapped[str] = mapped_column(String(40))
    statement_date: Mapped[date] = mapped_column(Date)
    rules_json: Mapped[str] = mapped_column(Text)
    """The rules the run used, as they were."""
    classes_json: Mapped[str] = mapped_column(Text)
    """``{class: {"count": n, "amount": minor units, "amounts": {currency: minor units}}}`` for every class, matched
    included: ``amount`` adds every currency's (as it always has), ``amounts`` (runs imported since 2026-11-25) keeps
    them apart."""
    statement_lines: Mapped[int] = mapped_column(Integer)
    internal_lines: Mapped[int] = mapped_column(Integer)
    case_count: Mapped[int] = mapped_column(Integer)
    clearing_json: Mapped[str] = mapped_column(Text)
    """Per currency: expected (our net), reported (the statement's net), difference."""
    duration_ms: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ReconPaidLine(Base):
    """A line of ours (a payment or a refund) that a bank statement paid: the channel's payout was posted for it
    (recipe 4, ``service.post_payouts``). Its primary key is the line, so no line is paid out twice, however many
    statements carry it or race to import it; a later statement's line that pays it again is a ``duplicate``."""

    __tablename__ = "recon_paid_lines"

    our_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    reconciliation_id: Mapped[str] = mapped_column(String(40), ForeignKey("reconciliations.id"))
    line_no: Mapped[int] = mapped_column(Integer)
    """The statement line that paid it (a batch credit's line for each line of ours it paid)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ReconBankOpening(Base):
    """Where reconciliation took up a bank account in one currency: the earliest of its bank statements imported,
    whose opening balance was posted to ``bank:<account>`` against ``opening_balances`` (``service.take_up``).
    An earlier statement imported later moves it back. One row per account and currency: two imports taking up
    one account at once meet at the primary key."""

    __tablename__ = "recon_bank_openings"

    account: Mapped[str] = mapped_column(String(128), primary_key=True)
    """The ledger account's name, ``bank:<account>``."""
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    statement_id: Mapped[str] = mapped_column(String(40), ForeignKey("recon_statements.id"))
    opening_balance: Mapped[int] = mapped_column(BigInteger)
    """The statement's opening balance, signed minor units (positive: money at the bank)."""
    opened_on: Mapped[date | None] = mapped_column(Date)
    """The day of that opening balance."""
    entry_id: Mapped[str | None] = mapped_column(String(64))
    """The last entry that posted to ``opening_balances`` for it (null: the ledger held exactly the balance)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ReconCase(Base):
    """One discrepancy: what we booked beside what the statement says, and what people did about it."""

    __tablename__ = "recon_cases"
    __table_args__ = (
        CheckConstraint(f"class IN ({sql_list(DISCREPANCIES)})", name="class"),
        CheckConstraint(f"state IN ({sql_list(CASE_STATES)})", name="state"),
        CheckConstraint(f"resolution IS NULL OR resolution IN ({sql_list(RESOLUTIONS)})", name="resolution"),
        Index("ix_recon_cases_reconciliation", "reconciliation_id", "class", "id"),
        Index("ix_recon_cases_state", "state", "channel", "id"),
        Index("ix_recon_cases_our_id", "our_id", "state"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    reconciliation_id: Mapped[str] = mapped_column(String(40), ForeignKey("reconciliations.id"))
    channel: Mapped[str] = mapped_column(String(40))
    class_: Mapped[str] = mapped_column("class", String(24))
    state: Mapped[str] = mapped_column(String(16))
    owner: Mapped[str | None] = mapped_column(String(80))
    our_id: Mapped[str | None] = mapped_column(String(64))
    our_ref: Mapped[str | None] = mapped_column(String(128))
    channel_ref: Mapped[str | None] = mapped_column(String(128))
    line_no: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    ours_amount: Mapped[int | None] = mapped_column(BigInteger)
    theirs_amount: Mapped[int | None] = mapped_column(BigInteger)
    ours_fee: Mapped[int | None] = mapped_column(BigInteger)
    theirs_fee: Mapped[int | None] = mapped_column(BigInteger)
    ours_status: Mapped[str | None] = mapped_column(String(16))
    theirs_status: Mapped[str | None] = mapped_column(String(16))
    ours_booked_on: Mapped[date | None] = mapped_column(Date)
    theirs_booked_on: Mapped[date | None] = mapped_column(Date)
    delta: Mapped[int] = mapped_column(BigInteger)
    """What the channel holds for us by its statement minus by our ledger (net of fees): the
    correction an adjustment posts to the channel's clearing account."""
    detail: Mapped[str] = mapped_column(String(500))
    resolution: Mapped[str | None] = mapped_column(String(16))
    resolution_reason: Mapped[str | None] = mapped_column(String(500))
    ledger_entry_id: Mapped[str | None] = mapped_column(String(64))
    approval_id: Mapped[str | None] = mapped_column(String(40))
    """A resolution held for a second person (above the approval threshold)."""
    resolved_by: Mapped[str | None] = mapped_column(String(80))
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ReconCaseEvent(Base):
    """A case's history: comments, assignment, state changes, resolutions, in order."""

    __tablename__ = "recon_case_events"
    __table_args__ = (Index("ix_recon_case_events_case", "case_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(40), ForeignKey("recon_cases.id"))
    type: Mapped[str] = mapped_column(String(24))
    actor: Mapped[str] = mapped_column(String(80))
    body: Mapped[str | None] = mapped_column(Text)
    detail_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
